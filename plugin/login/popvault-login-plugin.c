/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "module-dir.h"
#include "module-context.h"
#include "login-common.h"
#include "client-common.h"
#include "popvault-capa.h"

/* CAPA before login (RFC 2449 6.7): the login process knows no user yet,
   so it advertises the aggregate the admin configures for the service:
   the smallest EXPIRE any user may have and the largest LOGIN-DELAY, with
   "USER" when the value differs per user. Login processes have no plugin
   {} settings; the values come in through import_environment:

     import_environment = $import_environment POPVAULT_LOGIN_EXPIRE=0:USER \
       POPVAULT_LOGIN_DELAY=900:USER
     protocol pop3 { login_plugins = $login_plugins popvault_login }  */

#define ENV_EXPIRE POPVAULT_LOGIN_EXPIRE_ENV
#define ENV_DELAY POPVAULT_LOGIN_DELAY_ENV
#define CAPA_START "+OK\r\nCAPA\r\n"
#define CAPA_END "\r\n.\r\n"

const char *popvault_login_plugin_version = DOVECOT_ABI_VERSION;

void popvault_login_plugin_init(struct module *module);
void popvault_login_plugin_deinit(void);

static struct module *popvault_login_module;
static char *login_capa_lines;
static MODULE_CONTEXT_DEFINE_INIT(popvault_login_client_module,
				  &login_module_register);

/* "<value>[:USER]" -> "<NAME> <value>[ USER]\r\n" */
static const char *
parse_env(const char *name, const char *capa, bool is_expire)
{
	const char *value = getenv(name), *p;
	unsigned int num;
	bool per_user = FALSE;

	if (value == NULL || value[0] == '\0')
		return "";
	p = strchr(value, ':');
	if (p != NULL) {
		if (strcmp(p + 1, "USER") != 0)
			i_fatal("popvault: %s=%s: only \":USER\" may follow "
				"the value", name, value);
		per_user = TRUE;
		value = t_strdup_until(value, p);
	}
	if (!(is_expire && strcmp(value, "NEVER") == 0) &&
	    str_to_uint(value, &num) < 0) {
		i_fatal("popvault: %s=%s: expected %s", name, value,
			is_expire ? "days or NEVER" : "seconds");
	}
	return t_strdup_printf("%s %s%s\r\n", capa, value,
			       per_user ? " USER" : "");
}

static void
popvault_login_send_raw_data(struct client *client, const void *data,
			     size_t size)
{
	union login_client_module_context *ctx =
		MODULE_CONTEXT(client, popvault_login_client_module);
	const char *reply = data;
	size_t start = strlen(CAPA_START), end = strlen(CAPA_END);

	/* the login process writes only its own protocol replies, and the
	   CAPA reply is the only one that begins like this */
	if (size > start + end && memcmp(reply, CAPA_START, start) == 0 &&
	    memcmp(reply + size - end, CAPA_END, end) == 0) T_BEGIN {
		string_t *str = t_str_new(size + 64);

		str_append_data(str, reply, size - 3);
		str_append(str, login_capa_lines);
		str_append(str, ".\r\n");
		ctx->super.send_raw_data(client, str_data(str), str_len(str));
	} T_END;
	else
		ctx->super.send_raw_data(client, data, size);
}

static void popvault_login_client_allocated(struct client *client)
{
	struct client_vfuncs *v = client->vlast;
	union login_client_module_context *ctx;

	ctx = p_new(client->pool, union login_client_module_context, 1);
	ctx->super = *v;
	client->vlast = &ctx->super;
	v->send_raw_data = popvault_login_send_raw_data;
	MODULE_CONTEXT_SET_SELF(client, popvault_login_client_module, ctx);
}

static const struct login_client_hooks popvault_login_hooks = {
	.client_allocated = popvault_login_client_allocated,
};

void popvault_login_plugin_init(struct module *module)
{
	login_capa_lines = i_strconcat(
		parse_env(ENV_EXPIRE, "EXPIRE", TRUE),
		parse_env(ENV_DELAY, "LOGIN-DELAY", FALSE), NULL);
	popvault_login_module = module;
	if (login_capa_lines[0] != '\0')
		login_client_hooks_add(module, &popvault_login_hooks);
}

void popvault_login_plugin_deinit(void)
{
	if (login_capa_lines[0] != '\0')
		login_client_hooks_remove(&popvault_login_hooks);
	i_free_and_null(login_capa_lines);
}
