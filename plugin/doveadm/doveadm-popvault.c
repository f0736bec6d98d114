/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "doveadm-print.h"
#include "doveadm-mail.h"
#include "popvault-user.h"

/* The doveadm commands live in the mail plugin itself: doveadm loads
   mail_plugins before it looks the command up, and Dovecot has no setting
   for the doveadm module directory, so a separate doveadm module could not
   be tested from a build tree. Only the doveadm binary defines these
   symbols; weak references keep the module loadable everywhere else. */
#pragma weak doveadm_cmd_register_ver2
#pragma weak doveadm_mail_cmd_alloc_size
#pragma weak doveadm_print
#pragma weak doveadm_print_header_simple
#pragma weak doveadm_print_init

static int
cmd_popvault_status_run(struct doveadm_mail_cmd_context *ctx,
			struct mail_user *user)
{
	struct popvault_user *puser = popvault_user_get(user);
	const struct popvault_settings *set;

	if (puser == NULL) {
		/* a user without popvault_* settings is not an error for
		   -A runs: show that nothing applies */
		doveadm_print("inactive");
		doveadm_print("-"); doveadm_print("-"); doveadm_print("-");
		doveadm_print("-"); doveadm_print("-"); doveadm_print("-");
		doveadm_print("-"); doveadm_print("-");
		return 0;
	}
	(void)ctx;
	set = &puser->set;
	doveadm_print("active");
	doveadm_print(popvault_action_to_str(&set->after_retr));
	doveadm_print(popvault_action_to_str(&set->on_dele));
	doveadm_print(set->list_since == 0 ? "-" :
		      dec2str(set->list_since));
	doveadm_print(popvault_duration_to_str(set->list_window));
	doveadm_print(popvault_duration_to_str(set->retain_downloaded));
	doveadm_print(popvault_duration_to_str(set->retain_unread));
	doveadm_print(popvault_duration_to_str(set->login_delay));
	doveadm_print(set->encrypt ? "yes" : "no");
	return 0;
}

static void
cmd_popvault_status_init(struct doveadm_mail_cmd_context *ctx ATTR_UNUSED,
			 const char *const args[] ATTR_UNUSED)
{
	doveadm_print_header_simple("state");
	doveadm_print_header_simple("after_retr");
	doveadm_print_header_simple("on_dele");
	doveadm_print_header_simple("list_since");
	doveadm_print_header_simple("list_window");
	doveadm_print_header_simple("retain_downloaded");
	doveadm_print_header_simple("retain_unread");
	doveadm_print_header_simple("login_delay");
	doveadm_print_header_simple("encrypt");
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

static struct doveadm_cmd_ver2 popvault_commands[] = {
	{
		.name = "popvault status",
		.usage = "[-u <user>|-A] [-S <socket_path>]",
		.mail_cmd = cmd_popvault_status_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
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
