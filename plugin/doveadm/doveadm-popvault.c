/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "iso8601-date.h"
#include "mail-storage.h"
#include "doveadm-print.h"
#include "doveadm-mail.h"
#include "popvault-user.h"
#include "popvault-retention.h"
#include "popvault-action.h"
#include "popvault-ledger.h"
#include "popvault-progress.h"
#include "popvault-doveadm.h"
#include "array.h"
#include "hash.h"
#include "istream.h"
#include "mail-namespace.h"
#include "mail-search-build.h"
#include "mail-storage-settings.h"

#include <fcntl.h>
#include <sysexits.h>
#include "popvault-compat.h"

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
#pragma weak doveadm_cmd_param_str
#pragma weak doveadm_cmd_param_bool
#pragma weak doveadm_print_header
#pragma weak doveadm_mail_help_name

struct popvault_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	bool dry_run, all_users;
	/* sweep -A: users done so far, on a terminal only */
	struct popvault_progress *progress;
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

void popvault_doveadm_header_user(struct doveadm_mail_cmd_context *ctx)
{
	if (ctx->iterate_single_user) {
		doveadm_print_header("username", "Username",
				     DOVEADM_PRINT_HEADER_FLAG_HIDE_TITLE);
	}
}

void popvault_doveadm_print_user(struct doveadm_mail_cmd_context *ctx,
				 const char *username)
{
	/* otherwise doveadm printed it already */
	if (ctx->iterate_single_user)
		doveadm_print(username);
}

/* ---- doveadm popvault status ---- */

/* downloaded / never_downloaded of a user without a retention window; one
   word, so that -f flow stays split by spaces */
#define STATUS_NOT_TRACKED "untracked"

static int
cmd_popvault_status_run(struct doveadm_mail_cmd_context *ctx,
			struct mail_user *user)
{
	struct popvault_user *puser = cmd_get_user(ctx, user);
	const struct popvault_settings *set;
	struct popvault_sweep_stats stats;
	const char *error;

	popvault_doveadm_print_user(ctx, user->username);
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

	if (!popvault_retention_enabled(puser)) {
		/* Downloads are recorded (an index record and the
		   $POP3Downloaded keyword) only for users with a window:
		   recording them for everyone would change every plain
		   user's mailbox. A count would be a misleading 0. */
		doveadm_print(STATUS_NOT_TRACKED);
		doveadm_print(STATUS_NOT_TRACKED);
		doveadm_print("never");
		return 0;
	}
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
	doveadm_print(time_str(stats.next_expiry));
	return 0;
}

static void
cmd_popvault_status_init(struct doveadm_mail_cmd_context *ctx
			 POPVAULT_DOVEADM_INIT_ARGS)
{
	static const char *const fields[] = {
		"state", "after_retr", "on_dele", "list_since",
		"list_window", "retain_downloaded", "retain_unread",
		"expire_action", "login_delay", "encrypt", "downloaded",
		"never_downloaded", "next_expiry",
	};

	popvault_doveadm_header_user(ctx);
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
	struct doveadm_mail_cmd_context *cmd;
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
	popvault_doveadm_print_user(rctx->cmd, rctx->username);
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
		.cmd = _ctx, .username = user->username,
		.dry_run = ctx->dry_run
	};
	struct popvault_sweep_stats stats;
	unsigned int recovered;
	const char *error;

	if (ctx->all_users) {
		if (ctx->progress == NULL) {
			ctx->progress = popvault_progress_begin(
				ctx->dry_run ? "sweep -n" : "sweep", "all users",
				0);
		}
		popvault_progress_step(ctx->progress);
	}
	if (puser == NULL)
		return 0;
	/* moves a killed process cut short are finished first, so the
	   sweep sees every message once */
	if (!ctx->dry_run &&
	    popvault_action_recover_inbox(puser, &recovered, &error) < 0) {
		i_error("popvault sweep %s: %s", user->username, error);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
		return -1;
	}
	if (!popvault_retention_enabled(puser))
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
cmd_popvault_sweep_init(struct doveadm_mail_cmd_context *_ctx
			POPVAULT_DOVEADM_INIT_ARGS)
{
	struct popvault_cmd_context *ctx =
		container_of(_ctx, struct popvault_cmd_context, ctx);
	static const char *const fields[] = {
		"mailbox", "uid", "guid", "reason", "expired", "result",
	};
	(void)doveadm_cmd_param_bool(_ctx->cctx, "dry-run", &ctx->dry_run);
	(void)doveadm_cmd_param_bool(_ctx->cctx, "all-users",
				     &ctx->all_users);
	popvault_doveadm_header_user(_ctx);
	for (unsigned int i = 0; i < N_ELEMENTS(fields); i++)
		doveadm_print_header_simple(fields[i]);
}

static void cmd_popvault_sweep_deinit(struct doveadm_mail_cmd_context *_ctx)
{
	struct popvault_cmd_context *ctx =
		container_of(_ctx, struct popvault_cmd_context, ctx);

	popvault_progress_end(&ctx->progress);
}

static struct doveadm_mail_cmd_context *cmd_popvault_sweep_alloc(void)
{
	struct popvault_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct popvault_cmd_context);
	popvault_doveadm_getopt(&ctx->ctx, "n");
	ctx->ctx.v.init = cmd_popvault_sweep_init;
	ctx->ctx.v.run = cmd_popvault_sweep_run;
	ctx->ctx.v.deinit = cmd_popvault_sweep_deinit;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return &ctx->ctx;
}

/* ---- doveadm popvault uidl export|import ----
   (the positional parameter must not be called "file": doveadm treats
   that name as an input stream) */

struct uidl_import_line {
	unsigned int line;
	const char *uidl, *ref;
};

struct popvault_uidl_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	ARRAY(struct uidl_import_line) lines;
};

static int inbox_open(struct mail_user *user, struct mailbox **box_r)
{
	struct mail_namespace *ns = mail_namespace_find_inbox(user->namespaces);
	struct mailbox *box = mailbox_alloc(ns->list, "INBOX", 0);

	if (mailbox_open(box) < 0 || mailbox_sync(box, 0) < 0) {
		i_error("Can't open INBOX of %s: %s", user->username,
			mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		return -1;
	}
	*box_r = box;
	return 0;
}

/* Calls cb for every INBOX mail in UID order; -1 on storage errors. The
   changes cb makes are committed only with commit. */
static int
inbox_iter(struct mailbox *box, enum mail_fetch_field fields, bool commit,
	   int (*cb)(struct mail *mail, void *context), void *context)
{
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *ctx;
	struct mail *mail;
	int ret = 0;

	t = mailbox_transaction_begin(box, 0, "popvault uidl");
	args = mail_search_build_init();
	mail_search_build_add_all(args);
	ctx = mailbox_search_init(t, args, NULL, fields, NULL);
	mail_search_args_unref(&args);
	while (ret == 0 && mailbox_search_next(ctx, &mail)) T_BEGIN {
		ret = cb(mail, context);
	} T_END;
	if (mailbox_search_deinit(&ctx) < 0)
		ret = -1;
	if (ret < 0 || !commit)
		mailbox_transaction_rollback(&t);
	else if (mailbox_transaction_commit(&t) < 0) {
		i_error("%s", mailbox_get_last_internal_error(box, NULL));
		ret = -1;
	}
	return ret;
}

struct uidl_export_ctx {
	struct popvault_ledger *ledger;
	const char *format;
	uint32_t uid_validity;
};

static int uidl_export_mail(struct mail *mail, void *context)
{
	struct uidl_export_ctx *ectx = context;
	const char *guid, *uidl, *error;

	if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0)
		return -1;
	uidl = ectx->ledger == NULL ? NULL :
		popvault_ledger_lookup(ectx->ledger, guid);
	if (uidl == NULL &&
	    (mail_get_special(mail, MAIL_FETCH_UIDL_BACKEND, &uidl) < 0 ||
	     uidl[0] == '\0') &&
	    popvault_uidl_default(mail, ectx->format, ectx->uid_validity,
				  &uidl, &error) < 0) {
		i_error("UIDL of uid %u: %s", mail->uid, error);
		return -1;
	}
	doveadm_print(uidl);
	doveadm_print(guid);
	return 0;
}

static int
cmd_popvault_uidl_export_run(struct doveadm_mail_cmd_context *ctx,
			     struct mail_user *user)
{
	struct popvault_user *puser = cmd_get_user(ctx, user);
	struct uidl_export_ctx ectx;
	struct mailbox_status status;
	struct mailbox *box;
	const char *error;
	int ret;

	i_zero(&ectx);
	ectx.format = popvault_compat_pop3_uidl_format(user);
	if (puser != NULL && puser->set.uidl_ledger &&
	    popvault_ledger_get(puser, &ectx.ledger, &error) < 0) {
		i_error("%s: %s", user->username, error);
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
		return -1;
	}
	if (inbox_open(user, &box) < 0) {
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
		return -1;
	}
	mailbox_get_open_status(box, STATUS_UIDVALIDITY, &status);
	ectx.uid_validity = status.uidvalidity;
	ret = inbox_iter(box, MAIL_FETCH_GUID, FALSE, uidl_export_mail, &ectx);
	mailbox_free(&box);
	if (ret < 0)
		doveadm_mail_failed_error(ctx, MAIL_ERROR_TEMP);
	return ret;
}

static void
cmd_popvault_uidl_export_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED
			      POPVAULT_DOVEADM_INIT_ARGS)
{
	/* plain "<uidl> <guid>" lines, the format import reads back */
	doveadm_print_header("uidl", "uidl", DOVEADM_PRINT_HEADER_FLAG_HIDE_TITLE);
	doveadm_print_header("guid", "guid", DOVEADM_PRINT_HEADER_FLAG_HIDE_TITLE);
}

static struct doveadm_mail_cmd_context *cmd_popvault_uidl_export_alloc(void)
{
	struct doveadm_mail_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct doveadm_mail_cmd_context);
	ctx->v.init = cmd_popvault_uidl_export_init;
	ctx->v.run = cmd_popvault_uidl_export_run;
	doveadm_print_init(DOVEADM_PRINT_TYPE_FLOW);
	return ctx;
}

struct uidl_refs_ctx {
	pool_t pool;
	HASH_TABLE(char *, char *) refs;
};

static int uidl_index_mail(struct mail *mail, void *context)
{
	struct uidl_refs_ctx *rctx = context;
	const char *guid, *msgid;

	if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0)
		return -1;
	guid = p_strdup(rctx->pool, guid);
	hash_table_update(rctx->refs, (char *)guid, (char *)guid);
	if (mail_get_first_header(mail, "Message-ID", &msgid) > 0) {
		hash_table_update(rctx->refs, p_strdup(rctx->pool, msgid),
				  (char *)guid);
	}
	return 0;
}

/* The stored pop3 UIDL is what pop3 hands out first: keep it in step. */
static int uidl_store_mail(struct mail *mail, void *context)
{
	struct popvault_ledger *ledger = context;
	const char *guid, *uidl;

	if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0)
		return -1;
	if ((uidl = popvault_ledger_lookup(ledger, guid)) != NULL)
		mail_update_pop3_uidl(mail, uidl);
	return 0;
}

static int
cmd_popvault_uidl_import_run(struct doveadm_mail_cmd_context *_ctx,
			     struct mail_user *user)
{
	struct popvault_uidl_cmd_context *ctx =
		container_of(_ctx, struct popvault_uidl_cmd_context, ctx);
	struct popvault_user *puser = cmd_get_user(_ctx, user);
	struct popvault_ledger *ledger;
	struct uidl_refs_ctx rctx;
	const struct uidl_import_line *line;
	struct mailbox *box;
	const char *error, *guid;
	int ret;

	if (puser == NULL || !puser->set.uidl_ledger) {
		i_error("%s: popvault_uidl_ledger is not enabled", user->username);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTPOSSIBLE);
		return -1;
	}
	if (popvault_ledger_get(puser, &ledger, &error) < 0) {
		i_error("%s: %s", user->username, error);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
		return -1;
	}
	if (inbox_open(user, &box) < 0) {
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
		return -1;
	}
	i_zero(&rctx);
	rctx.pool = pool_alloconly_create("uidl import", 4096);
	hash_table_create(&rctx.refs, rctx.pool, 0, str_hash, strcmp);
	ret = inbox_iter(box, MAIL_FETCH_GUID, FALSE, uidl_index_mail, &rctx);
	if (ret == 0) {
		array_foreach(&ctx->lines, line) {
			guid = hash_table_lookup(rctx.refs, line->ref);
			doveadm_print(dec2str(line->line));
			doveadm_print(line->ref);
			if (guid == NULL) {
				doveadm_print("not found");
				continue;
			}
			popvault_ledger_set(ledger, guid, line->uidl);
			doveadm_print("imported");
		}
		if (popvault_ledger_flush(ledger, &error) < 0) {
			i_error("%s: %s", user->username, error);
			ret = -1;
		}
	}
	if (ret == 0)
		ret = inbox_iter(box, MAIL_FETCH_GUID, TRUE, uidl_store_mail,
				 ledger);
	mailbox_free(&box);
	hash_table_destroy(&rctx.refs);
	pool_unref(&rctx.pool);
	if (ret < 0)
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
	return ret;
}

static void
cmd_popvault_uidl_import_init(struct doveadm_mail_cmd_context *_ctx
			      POPVAULT_DOVEADM_INIT_ARGS)
{
	struct popvault_uidl_cmd_context *ctx =
		container_of(_ctx, struct popvault_uidl_cmd_context, ctx);
	struct uidl_import_line *line;
	struct istream *input;
	const char *path, *text, *uidl, *ref, *error;
	unsigned int n = 0;
	int fd;

	if (!doveadm_cmd_param_str(_ctx->cctx, "import-file", &path))
		doveadm_mail_help_name("popvault uidl import");
	fd = open(path, O_RDONLY);
	if (fd == -1)
		i_fatal_status(EX_NOINPUT, "open(%s) failed: %m", path);
	/* the whole file is checked before any user is touched: a file with
	   garbage imports nothing */
	p_array_init(&ctx->lines, _ctx->pool, 64);
	input = i_stream_create_fd_autoclose(&fd, 65536);
	while ((text = i_stream_read_next_line(input)) != NULL) {
		n++;
		if (text[0] == '\0' || text[0] == '#')
			continue;
		if (popvault_ledger_parse_import_line(text, &uidl, &ref,
						      &error) < 0) {
			i_fatal_status(EX_DATAERR, "%s line %u: %s: "
				       "nothing imported", path, n, error);
		}
		line = array_append_space(&ctx->lines);
		line->line = n;
		line->uidl = p_strdup(_ctx->pool, uidl);
		line->ref = p_strdup(_ctx->pool, ref);
	}
	if (input->stream_errno != 0) {
		i_fatal_status(EX_NOINPUT, "read(%s) failed: %s", path,
			       i_stream_get_error(input));
	}
	i_stream_destroy(&input);
	doveadm_print_header_simple("line");
	doveadm_print_header_simple("ref");
	doveadm_print_header_simple("result");
}

static struct doveadm_mail_cmd_context *cmd_popvault_uidl_import_alloc(void)
{
	struct popvault_uidl_cmd_context *ctx;

	ctx = doveadm_mail_cmd_alloc(struct popvault_uidl_cmd_context);
	ctx->ctx.v.init = cmd_popvault_uidl_import_init;
	ctx->ctx.v.run = cmd_popvault_uidl_import_run;
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
	{
		.name = "popvault uidl export",
		.usage = "[-u <user>|-A] [-S <socket_path>]",
		.mail_cmd = cmd_popvault_uidl_export_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault uidl import",
		.usage = "[-u <user>] [-S <socket_path>] <file>",
		.mail_cmd = cmd_popvault_uidl_import_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('\0', "import-file", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
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
