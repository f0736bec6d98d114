/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "doveadm-print.h"
#include "doveadm-mail.h"
#include "popvault-user.h"
#include "doveadm-popvault.h"

/* doveadm loads this module after mail_plugins; its references to the
   popvault mail plugin resolve only then, which is why "popvault" must be
   in mail_plugins for these commands to exist. */
const char *doveadm_popvault_plugin_version = DOVECOT_ABI_VERSION;

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

void doveadm_popvault_plugin_init(struct module *module ATTR_UNUSED)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(popvault_commands); i++)
		doveadm_cmd_register_ver2(&popvault_commands[i]);
}

void doveadm_popvault_plugin_deinit(void)
{
}
