/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "iso8601-date.h"
#include "mail-storage.h"
#include "doveadm-print.h"
#include "doveadm-mail.h"
#include "popvault-user.h"
#include "popvault-retention.h"

/* The doveadm commands live in the mail plugin itself: Dovecot has no
   setting for the doveadm module directory, so a separate doveadm module
   could not be tested from a build tree. Only the doveadm binary defines
   these symbols; weak references keep the module loadable everywhere
   else. */
#pragma weak doveadm_cmd_register_ver2
#pragma weak doveadm_mail_cmd_alloc_size
#pragma weak doveadm_mail_failed_error
#pragma weak doveadm_print
#pragma weak doveadm_print_header_simple
#pragma weak doveadm_print_init

struct popvault_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	bool dry_run;
};

static const char *time_str(time_t t)
{
	return t == 0 ? "-" : iso8601_date_create(t);
}

static struct popvault_user *
cmd_get_user(struct doveadm_mail_cmd_context *ctx, struct mail_user *user)
{
	struct popvault_user *puser = popvault_user_get(user);

	if (puser == NULL)
		e_debug(user->event, "popvault: not active for this user");
	(void)ctx;
	return puser;
}

/* ---- doveadm popvault status ---- */

static int
cmd_popvault_status_run(struct doveadm_mail_cmd_context *ctx,
			struct mail_user *user)
{
	struct popvault_user *puser = cmd_get_user(ctx, user);
	const struct popvault_settings *set;
	struct popvault_sweep_stats stats;
	const char *error;

	doveadm_print(user->username);
	if (puser == NULL) {
		/* not an error for -A: show that nothing applies */
		doveadm_print("inactive");
		for (unsigned int i = 0; i < 12; i++)
			doveadm_print("-");
		return 0;
	}
	set = &puser->set;
	doveadm_print("active");
	doveadm_print(popvault_action_to_str(&set->after_retr));
	doveadm_print(popvault_action_to_str(&set->on_dele));
	doveadm_print(set->list_since == 0 ? "-" : time_str(set->list_since));
	doveadm_print(popvault_duration_to_str(set->list_window));
	doveadm_print(popvault_duration_to_str(set->retain_downloaded));
	doveadm_print(popvault_duration_to_str(set->retain_unread));
	doveadm_print(popvault_action_to_str(&set->expire_action));
	doveadm_print(popvault_duration_to_str(set->login_delay));
	doveadm_print(set->encrypt ? "yes" : "no");

	/* a dry-run sweep counts what the windows see, changing nothing */
	if (popvault_retention_sweep(puser, TRUE, NULL, NULL, &stats,
				     &error) < 0) {
		i_error("popvault status %s: %s", user->username, error);
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
		doveadm_print("error"); doveadm_print("error");
		doveadm_print("error");
		return -1;
	}
	doveadm_print(dec2str(stats.downloaded));
	doveadm_print(dec2str(stats.never_downloaded));
	doveadm_print(popvault_retention_enabled(puser) ?
		      time_str(stats.next_expiry) : "never");
	return 0;
}

static void
cmd_popvault_status_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED,
			 const char *const args[] ATTR_UNUSED)
{
	static const char *const fields[] = {
		"user", "state", "after_retr", "on_dele", "list_since",
		"list_window", "retain_downloaded", "retain_unread",
		"expire_action", "login_delay", "encrypt", "downloaded",
		"never_downloaded", "next_expiry",
	};
	for (unsigned int i = 0; i < N_ELEMENTS(fields); i++)
		doveadm_print_header_simple(fields[i]);
}

static struct doveadm_mail_cmd_context *cmd_popvault_status_alloc(void)
{
	struct doveadm_mail_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct doveadm_mail_cmd_context);
	ctx->v.init = cmd_popvault_status_init;
	ctx->v.run = cmd_popvault_status_run;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return ctx;
}

/* ---- doveadm popvault sweep ---- */

struct sweep_report_ctx {
	const char *username;
	bool dry_run;
};

static void sweep_report(const char *reason, struct mail *mail,
			 time_t expired_at, void *context)
{
	struct sweep_report_ctx *rctx = context;
	const char *guid;

	if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0)
		guid = "";
	doveadm_print(rctx->username);
	doveadm_print(mailbox_get_vname(mail->box));
	doveadm_print(dec2str(mail->uid));
	doveadm_print(guid);
	doveadm_print(reason);
	doveadm_print(time_str(expired_at));
	doveadm_print(rctx->dry_run ? "would remove" : "removed");
}

static int
cmd_popvault_sweep_run(struct doveadm_mail_cmd_context *_ctx,
		       struct mail_user *user)
{
	struct popvault_cmd_context *ctx =
		container_of(_ctx, struct popvault_cmd_context, ctx);
	struct popvault_user *puser = cmd_get_user(_ctx, user);
	struct sweep_report_ctx rctx = {
		.username = user->username, .dry_run = ctx->dry_run
	};
	struct popvault_sweep_stats stats;
	const char *error;

	if (puser == NULL || !popvault_retention_enabled(puser))
		return 0;
	if (popvault_retention_sweep(puser, ctx->dry_run, sweep_report, &rctx,
				     &stats, &error) < 0) {
		i_error("popvault sweep %s: %s", user->username, error);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
		return -1;
	}
	return 0;
}

static void
cmd_popvault_sweep_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED,
			const char *const args[] ATTR_UNUSED)
{
	static const char *const fields[] = {
		"user", "mailbox", "uid", "guid", "reason", "expired",
		"result",
	};
	for (unsigned int i = 0; i < N_ELEMENTS(fields); i++)
		doveadm_print_header_simple(fields[i]);
}

static bool
cmd_popvault_sweep_parse_arg(struct doveadm_mail_cmd_context *_ctx, int c)
{
	struct popvault_cmd_context *ctx =
		container_of(_ctx, struct popvault_cmd_context, ctx);

	if (c != 'n')
		return FALSE;
	ctx->dry_run = TRUE;
	return TRUE;
}

static struct doveadm_mail_cmd_context *cmd_popvault_sweep_alloc(void)
{
	struct popvault_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct popvault_cmd_context);
	ctx->ctx.getopt_args = "n";
	ctx->ctx.v.parse_arg = cmd_popvault_sweep_parse_arg;
	ctx->ctx.v.init = cmd_popvault_sweep_init;
	ctx->ctx.v.run = cmd_popvault_sweep_run;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return &ctx->ctx;
}

static struct doveadm_cmd_ver2 popvault_commands[] = {
	{
		.name = "popvault status",
		.usage = "[-u <user>|-A] [-S <socket_path>]",
		.mail_cmd = cmd_popvault_status_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault sweep",
		.usage = "[-u <user>|-A] [-S <socket_path>] [-n]",
		.mail_cmd = cmd_popvault_sweep_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('n', "dry-run", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
};

/* doveadm dlopen()s mail_plugins before it looks the command up, but calls
   their init functions only when a mail command starts running. Commands
   must therefore be registered when the module is loaded. */
static void __attribute__((constructor)) popvault_doveadm_register(void)
{
	unsigned int i;

	if (doveadm_cmd_register_ver2 == NULL)
		return;
	for (i = 0; i < N_ELEMENTS(popvault_commands); i++)
		doveadm_cmd_register_ver2(&popvault_commands[i]);
}
