/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* doveadm popvault key generate | list | rotate | password | recovery
   (docs/encryption.md, "Key management"). The key store does the work
   (popvault-crypt-keys.c); this file reads the secrets the admin gives
   and prints. Passwords come from -p/-o/-n or, with -P/-O/-N/-R, one
   line each from stdin (old or recovery first, then new), so they need
   not show up in ps or the shell history. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "iso8601-date.h"
#include "mail-storage.h"
#include "doveadm-print.h"
#include "doveadm-mail.h"
#include "popvault-crypt.h"
#include "popvault-crypt-keys.h"
#include "popvault-secret-stdin.h"
#include "popvault-doveadm.h"

#include <sodium.h>
#include "popvault-compat.h"

/* Only the doveadm binary defines these (see doveadm-popvault.c). */
#pragma weak doveadm_cmd_register_ver2
#pragma weak doveadm_mail_cmd_alloc_size
#pragma weak doveadm_mail_failed_error
#pragma weak doveadm_print
#pragma weak doveadm_print_header_simple
#pragma weak doveadm_print_init
#pragma weak doveadm_print_flush
#pragma weak doveadm_cmd_param_str
#pragma weak doveadm_cmd_param_bool

enum key_op {
	KEY_GENERATE,
	KEY_LIST,
	KEY_ROTATE,
	KEY_PASSWORD,
	KEY_RECOVERY,
};

static const char *const key_op_names[] = {
	"generate", "list", "rotate", "password", "recovery"
};

struct key_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	enum key_op op;
	/* -p: the password that unlocks the keys and locks new ones */
	const char *password;
	/* key password: -o (old) or -r (recovery key), and -n (new) */
	const char *old_password, *new_password;
	bool have_recovery;
	unsigned char recovery[POPVAULT_RECOVERY_KEY_SIZE];
	/* -P, -O, -N, -R: read from stdin in init */
	bool password_stdin, old_stdin, new_stdin, recovery_stdin;
	const char *recovery_text;
};

static void key_print_keys(struct key_cmd_context *cmd,
			   struct mail_user *user, const char *keys_dir,
			   bool current_only)
{
	ARRAY_TYPE(popvault_key_info) keys;
	const struct popvault_key_info *info;
	const char *error, *recovery_id;
	string_t *locks = t_str_new(32);

	t_array_init(&keys, 8);
	if (popvault_keystore_list(keys_dir, pool_datastack_create(), &keys,
				   &recovery_id, &error) < 0) {
		e_error(user->event, "popvault key: user %s: %s",
			user->username, error);
		return;
	}
	array_foreach(&keys, info) {
		if (current_only && !info->current)
			continue;
		str_truncate(locks, 0);
		if (info->master)
			str_append(locks, ",master");
		if (info->password)
			str_append(locks, ",password");
		if (info->recovery)
			str_append(locks, ",recovery");
		popvault_doveadm_print_user(&cmd->ctx, user->username);
		doveadm_print(info->key_id);
		doveadm_print(info->created == 0 ? "-" :
			      iso8601_date_create(info->created));
		doveadm_print(info->current ? "yes" : "no");
		doveadm_print(str_len(locks) == 0 ? "-" : str_c(locks) + 1);
	}
}

static int key_fail(struct key_cmd_context *cmd, struct mail_user *user,
		    enum mail_error error_code, const char *error)
{
	e_error(user->event, "popvault key %s: user %s: %s",
		key_op_names[cmd->op], user->username, error);
	doveadm_mail_failed_error(&cmd->ctx, error_code);
	return -1;
}

static int key_cmd_run(struct doveadm_mail_cmd_context *_ctx,
		       struct mail_user *user)
{
	struct key_cmd_context *cmd =
		container_of(_ctx, struct key_cmd_context, ctx);
	struct popvault_key_secrets secrets;
	unsigned char pk[POPVAULT_PK_SIZE];
	unsigned char recovery[POPVAULT_RECOVERY_KEY_SIZE];
	const char *keys_dir, *error, *recovery_id;
	int ret;

	if (popvault_crypt_user_key_store(user, &keys_dir, &secrets,
					  &error) < 0)
		return key_fail(cmd, user, MAIL_ERROR_NOTPOSSIBLE, error);
	/* only what the admin gave on this command line unlocks */
	secrets.password = cmd->password;

	switch (cmd->op) {
	case KEY_GENERATE:
		if ((ret = popvault_keystore_create(keys_dir, user->username,
						    &secrets, pk, &error)) < 0)
			return key_fail(cmd, user, MAIL_ERROR_NOTPOSSIBLE,
					error);
		if (ret == 0) {
			return key_fail(cmd, user, MAIL_ERROR_EXISTS,
				"the user has a key pair already (doveadm "
				"popvault key rotate makes a new one)");
		}
		key_print_keys(cmd, user, keys_dir, TRUE);
		break;
	case KEY_LIST:
		key_print_keys(cmd, user, keys_dir, FALSE);
		break;
	case KEY_ROTATE:
		if (popvault_keystore_rotate(keys_dir, user->username,
					     &secrets, pk, &error) < 0)
			return key_fail(cmd, user, MAIL_ERROR_NOTPOSSIBLE,
					error);
		key_print_keys(cmd, user, keys_dir, TRUE);
		break;
	case KEY_PASSWORD:
		secrets.password = cmd->old_password;
		secrets.recovery = cmd->have_recovery ? cmd->recovery : NULL;
		if (popvault_keystore_set_password(keys_dir, user->username,
						   &secrets, cmd->new_password,
						   &error) < 0)
			return key_fail(cmd, user, MAIL_ERROR_NOTPOSSIBLE,
					error);
		popvault_doveadm_print_user(_ctx, user->username);
		doveadm_print("password changed");
		break;
	case KEY_RECOVERY:
		if (popvault_keystore_set_recovery(keys_dir, user->username,
						   &secrets, recovery,
						   &recovery_id, &error) < 0)
			return key_fail(cmd, user, MAIL_ERROR_NOTPOSSIBLE,
					error);
		popvault_doveadm_print_user(_ctx, user->username);
		doveadm_print(recovery_id);
		/* shown this once; popvault keeps only its public half */
		doveadm_print(popvault_recovery_key_format(recovery));
		/* out before the previous recovery key loses its seals: a
		   run killed before this line leaves that key valid */
		doveadm_print_flush();
		ret = popvault_keystore_publish_recovery(keys_dir, recovery,
							 &error);
		sodium_memzero(recovery, sizeof(recovery));
		if (ret < 0)
			return key_fail(cmd, user, MAIL_ERROR_TEMP, error);
		break;
	}
	return 0;
}

/* the options, read the same way on Dovecot 2.3 and 2.4 */
static void key_cmd_read_options(struct key_cmd_context *cmd)
{
	const struct doveadm_cmd_context *cctx = cmd->ctx.cctx;

	(void)doveadm_cmd_param_str(cctx, "password", &cmd->password);
	(void)doveadm_cmd_param_bool(cctx, "password-stdin",
				     &cmd->password_stdin);
	(void)doveadm_cmd_param_str(cctx, "old-password", &cmd->old_password);
	(void)doveadm_cmd_param_bool(cctx, "old-password-stdin",
				     &cmd->old_stdin);
	(void)doveadm_cmd_param_str(cctx, "new-password", &cmd->new_password);
	(void)doveadm_cmd_param_bool(cctx, "new-password-stdin",
				     &cmd->new_stdin);
	(void)doveadm_cmd_param_str(cctx, "recovery-key", &cmd->recovery_text);
	(void)doveadm_cmd_param_bool(cctx, "recovery-key-stdin",
				     &cmd->recovery_stdin);
}

static void key_cmd_init(struct doveadm_mail_cmd_context *_ctx
			 POPVAULT_DOVEADM_INIT_ARGS)
{
	struct key_cmd_context *cmd =
		container_of(_ctx, struct key_cmd_context, ctx);
	const char *error;

	key_cmd_read_options(cmd);

	/* the order of the stdin lines: unlock first, then new */
	if (cmd->password_stdin)
		cmd->password = popvault_secret_read_stdin(
			_ctx->pool, "password");
	if (cmd->old_stdin)
		cmd->old_password = popvault_secret_read_stdin(
			_ctx->pool, "old password");
	if (cmd->recovery_stdin)
		cmd->recovery_text = popvault_secret_read_stdin(
			_ctx->pool, "recovery key");
	if (cmd->new_stdin)
		cmd->new_password = popvault_secret_read_stdin(
			_ctx->pool, "new password");
	if (cmd->recovery_text != NULL) {
		if (popvault_recovery_key_parse(cmd->recovery_text,
						cmd->recovery, &error) < 0)
			i_fatal_status(EX_USAGE, "popvault key: %s", error);
		cmd->have_recovery = TRUE;
	}
	if (cmd->password != NULL && cmd->password[0] == '\0')
		i_fatal_status(EX_USAGE, "popvault key: empty password");
	if (cmd->op == KEY_PASSWORD) {
		if (cmd->new_password == NULL || cmd->new_password[0] == '\0')
			i_fatal_status(EX_USAGE, "popvault key password: "
				       "the new password (-n or -N) is missing");
		if (cmd->old_password == NULL && !cmd->have_recovery)
			i_fatal_status(EX_USAGE, "popvault key password: "
				"give the old password (-o, -O) or the "
				"recovery key (-r, -R)");
	}

	switch (cmd->op) {
	case KEY_GENERATE:
	case KEY_LIST:
	case KEY_ROTATE:
		popvault_doveadm_header_user(_ctx);
		doveadm_print_header_simple("key_id");
		doveadm_print_header_simple("created");
		doveadm_print_header_simple("current");
		doveadm_print_header_simple("locked_by");
		break;
	case KEY_PASSWORD:
		popvault_doveadm_header_user(_ctx);
		doveadm_print_header_simple("result");
		break;
	case KEY_RECOVERY:
		popvault_doveadm_header_user(_ctx);
		doveadm_print_header_simple("recovery_id");
		doveadm_print_header_simple("recovery_key");
		break;
	}
}

static void key_cmd_deinit(struct doveadm_mail_cmd_context *_ctx)
{
	struct key_cmd_context *cmd =
		container_of(_ctx, struct key_cmd_context, ctx);

	sodium_memzero(cmd->recovery, sizeof(cmd->recovery));
}

static struct doveadm_mail_cmd_context *key_cmd_alloc(enum key_op op)
{
	static const char *const getopt_args[] = {
		[KEY_GENERATE] = "p:P",
		[KEY_LIST] = "",
		[KEY_ROTATE] = "p:P",
		[KEY_PASSWORD] = "o:Or:Rn:N",
		[KEY_RECOVERY] = "p:P",
	};
	struct key_cmd_context *cmd;

	cmd = doveadm_mail_cmd_alloc(struct key_cmd_context);
	cmd->op = op;
	popvault_doveadm_getopt(&cmd->ctx, getopt_args[op]);
	cmd->ctx.v.init = key_cmd_init;
	cmd->ctx.v.deinit = key_cmd_deinit;
	cmd->ctx.v.run = key_cmd_run;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return &cmd->ctx;
}

static struct doveadm_mail_cmd_context *cmd_key_generate_alloc(void)
{
	return key_cmd_alloc(KEY_GENERATE);
}

static struct doveadm_mail_cmd_context *cmd_key_list_alloc(void)
{
	return key_cmd_alloc(KEY_LIST);
}

static struct doveadm_mail_cmd_context *cmd_key_rotate_alloc(void)
{
	return key_cmd_alloc(KEY_ROTATE);
}

static struct doveadm_mail_cmd_context *cmd_key_password_alloc(void)
{
	return key_cmd_alloc(KEY_PASSWORD);
}

static struct doveadm_mail_cmd_context *cmd_key_recovery_alloc(void)
{
	return key_cmd_alloc(KEY_RECOVERY);
}

#define KEY_USAGE_USERS "[-u <user>|-A] [-S <socket_path>]"
/* stdin first: an argument shows in ps and the shell history */
#define KEY_USAGE_PASSWORD " [-P|-p <password>]"

static struct doveadm_cmd_ver2 popvault_key_commands[] = {
	{
		.name = "popvault key generate",
		.usage = KEY_USAGE_USERS KEY_USAGE_PASSWORD,
		.mail_cmd = cmd_key_generate_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('p', "password", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('P', "password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault key list",
		.usage = KEY_USAGE_USERS,
		.mail_cmd = cmd_key_list_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault key rotate",
		.usage = KEY_USAGE_USERS KEY_USAGE_PASSWORD,
		.mail_cmd = cmd_key_rotate_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('p', "password", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('P', "password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault key password",
		.usage = "[-u <user>] [-S <socket_path>] "
			"(-O|-R|-o <old password>|-r <recovery key>) "
			"(-N|-n <new password>)",
		.mail_cmd = cmd_key_password_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('o', "old-password", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('O', "old-password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('r', "recovery-key", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('R', "recovery-key-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('n', "new-password", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('N', "new-password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault key recovery",
		.usage = "[-u <user>] [-S <socket_path>]" KEY_USAGE_PASSWORD,
		.mail_cmd = cmd_key_recovery_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('p', "password", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('P', "password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
};

/* registered at load time, like doveadm-popvault.c (see there why) */
static void __attribute__((constructor)) popvault_doveadm_keys_register(void)
{
	unsigned int i;

	if (doveadm_cmd_register_ver2 == NULL)
		return;
	for (i = 0; i < N_ELEMENTS(popvault_key_commands); i++)
		doveadm_cmd_register_ver2(&popvault_key_commands[i]);
}
