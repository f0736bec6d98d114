/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "var-expand.h"
#include "mail-user.h"
#include "mail-storage-settings.h"
#include "mail-storage-service.h"
#include "popvault-user.h"
#include "popvault-action.h"
#include "popvault-retention.h"
#include "popvault-dict.h"
#include "popvault-ledger.h"
#include "popvault-crypt.h"

struct popvault_user_module popvault_user_module =
	MODULE_CONTEXT_INIT(&mail_user_module_register);

struct event_category event_category_popvault = {
	.name = "popvault",
};

/* A user's plugin {} settings as in plugin_envs: a flat key, value, key,
   value ... array of expanded values */
struct user_envs {
	struct mail_user *user;
	const char *const *kv;
	unsigned int count;
};

const char *popvault_user_userdb_field(struct mail_user *user,
				       const char *name)
{
	const char *const *field;
	size_t len = strlen(name);

	if (user->userdb_fields == NULL)
		return NULL;
	for (field = user->userdb_fields; *field != NULL; field++) {
		if (strncmp(*field, name, len) != 0)
			continue;
		if ((*field)[len] == '\0')
			return "";
		if ((*field)[len] == '=')
			return *field + len + 1;
	}
	return NULL;
}

static const char *user_envs_get(const struct user_envs *envs,
				 const char *name)
{
	unsigned int i;

	for (i = 0; i + 1 < envs->count; i += 2) {
		if (strcmp(envs->kv[i], name) == 0)
			return envs->kv[i + 1];
	}
	return NULL;
}

static const char *user_setting_lookup(const char *name, void *context)
{
	const struct user_envs *envs = context;
	const char *value = user_envs_get(envs, name);
	const char *field;

	/* Dovecot treats an empty plugin setting as unset */
	if (value == NULL || value[0] == '\0')
		return NULL;
	/* An empty %w (a lookup without a login: LMTP, doveadm; a SASL
	   mechanism that never shows the password) reaches us as a
	   userdb field without a value, which Dovecot turns into "yes":
	   that is no password. Another value came from doveadm -o. */
	if (strcmp(name, POPVAULT_SETTING_PREFIX "key_password") == 0 &&
	    strcmp(value, "yes") == 0 &&
	    (field = popvault_user_userdb_field(envs->user, name)) != NULL &&
	    field[0] == '\0') {
		e_debug(envs->user->event, "popvault: %s is empty in this "
			"userdb reply (no login password here): unset", name);
		return NULL;
	}
	return value;
}

static void
user_setting_iter(void *context,
		  void (*cb)(const char *name, void *cb_context),
		  void *cb_context)
{
	const struct user_envs *envs = context;
	const char *const *kv = envs->kv;
	unsigned int i, count = envs->count;

	for (i = 0; i + 1 < count; i += 2) {
		if (str_begins(kv[i], POPVAULT_SETTING_PREFIX))
			cb(kv[i], cb_context);
	}
}

/* The owner of a shared folder (user->creator is the logged-in user) is a
   mail_user that Dovecot's shared storage allocates with the logged-in
   user's settings, that user's userdb fields included: its plugin {}
   values say what the reader's userdb says. The owner's own popvault
   settings are the configuration plus the owner's userdb fields, so they
   are looked up as for a login of the owner (without its password).
   Returns 1 with the expanded popvault_* pairs in envs_r, 0 when the
   owner does not exist, -1 with error_r on failure. */
static int
owner_settings_lookup(struct mail_user *owner, struct user_envs *envs_r,
		      const char **error_r)
{
	ARRAY_TYPE(const_string) envs;
	const struct mail_storage_service_input *reader_input;
	struct mail_storage_service_input input;
	struct mail_storage_service_user *service_user;
	const struct mail_user_settings *set;
	const char *const *kv, *home, *key, *value, *error = "unknown error";
	unsigned int i, count;
	string_t *str;
	int ret;

	reader_input = mail_storage_service_user_get_input(owner->_service_user);
	i_zero(&input);
	input.event_parent = owner->event;
	input.module = reader_input->module;
	input.service = reader_input->service;
	input.username = owner->username;
	input.session_id_prefix = owner->session_id;
	input.local_ip = reader_input->local_ip;
	input.remote_ip = reader_input->remote_ip;
	/* settings only: a userdb lookup also where the reader's fields came
	   with its login, no plugins loaded, the log prefix left alone, and
	   no switch back to root (lmtp drops privileges temporarily) */
	input.flags_override_add = MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_NO_PLUGINS |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT;
	input.flags_override_remove = MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP;
	ret = mail_storage_service_lookup(
		mail_storage_service_user_get_service_ctx(owner->_service_user),
		&input, &service_user, &error);
	if (ret <= 0) {
		*error_r = t_strdup_printf("userdb lookup of the shared "
					   "folder's owner: %s", error);
		return ret < 0 ? -1 : 0;
	}

	set = mail_storage_service_user_get_set(service_user)[0];
	p_array_init(&envs, owner->pool, 8);
	if (array_is_created(&set->plugin_envs)) {
		str = t_str_new(128);
		kv = array_get(&set->plugin_envs, &count);
		for (i = 0; i + 1 < count && ret > 0; i += 2) {
			if (!str_begins(kv[i], POPVAULT_SETTING_PREFIX))
				continue;
			/* expanded as mail_user_init() expands plugin {} */
			str_truncate(str, 0);
			if (var_has_key(kv[i + 1], 'h', "home") &&
			    mail_user_get_home(owner, &home) <= 0) {
				*error_r = t_strdup_printf("%s uses %%h, but "
					"the owner has no home", kv[i]);
				ret = -1;
			} else if (var_expand_with_funcs(str, kv[i + 1],
					mail_user_var_expand_table(owner),
					mail_user_var_expand_func_table,
					owner, &error) <= 0) {
				*error_r = t_strdup_printf("Failed to expand "
					"%s: %s", kv[i], error);
				ret = -1;
			} else {
				key = p_strdup(owner->pool, kv[i]);
				value = p_strdup(owner->pool, str_c(str));
				array_push_back(&envs, &key);
				array_push_back(&envs, &value);
			}
		}
	}
	mail_storage_service_user_unref(&service_user);
	envs_r->kv = array_get(&envs, &envs_r->count);
	return ret;
}

/* Where the user's popvault_* settings come from: 1 with envs_r, 0 when
   the user is a shared folder's owner that does not exist, -1 with
   error_r. */
static int
user_settings_source(struct mail_user *user, struct user_envs *envs_r,
		     const char **error_r)
{
	i_zero(envs_r);
	envs_r->user = user;
	if (user->creator != NULL && user->_service_user != NULL)
		return owner_settings_lookup(user, envs_r, error_r);
	if (array_is_created(&user->set->plugin_envs))
		envs_r->kv = array_get(&user->set->plugin_envs, &envs_r->count);
	return 1;
}

static void popvault_mail_user_deinit(struct mail_user *user)
{
	struct popvault_user *puser = POPVAULT_USER_CONTEXT(user);

	/* like autoexpunge: after the POP3 client has been disconnected, so
	   it never waits for this */
	if (puser->sweep_after_session) {
		unsigned int recovered;
		const char *error;

		if (popvault_action_recover_inbox(puser, &recovered,
						  &error) < 0)
			e_error(puser->event, "move recovery: %s", error);
		popvault_retention_after_session(puser);
	}
	if (puser->ledger != NULL) {
		const char *error;

		if (popvault_ledger_flush(puser->ledger, &error) < 0)
			e_error(puser->event, "UIDL ledger: %s", error);
		popvault_ledger_free(&puser->ledger);
	}
	popvault_dict_deinit(puser);
	puser->module_ctx.super.deinit(user);
	popvault_crypt_user_deinit(puser);
	event_unref(&puser->event);
}

static void popvault_log_settings(struct popvault_user *puser)
{
	const struct popvault_settings *set = &puser->set;

	e_debug(puser->event, "active: after_retr=%s on_dele=%s "
		"retain_downloaded=%s retain_unread=%s login_delay=%s "
		"encrypt=%s",
		popvault_action_to_str(&set->after_retr),
		popvault_action_to_str(&set->on_dele),
		popvault_duration_to_str(set->retain_downloaded),
		popvault_duration_to_str(set->retain_unread),
		popvault_duration_to_str(set->login_delay),
		set->encrypt ? "yes" : "no");
}

void popvault_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	struct popvault_user *puser;
	struct popvault_settings set;
	struct user_envs envs;
	const char *error;
	int ret;

	if ((ret = user_settings_source(user, &envs, &error)) <= 0) {
		if (ret == 0) {
			/* the shared namespace marks it unusable */
			e_debug(user->event, "popvault: %s", error);
			return;
		}
		user->error = p_strdup_printf(user->pool,
			"popvault: user %s: %s", user->username, error);
		return;
	}
	if (popvault_settings_parse(user->pool, user_setting_lookup,
				    user_setting_iter, &envs, &set,
				    &error) < 0) {
		/* Failing the user makes pop3 answer -ERR [SYS/TEMP] and
		   lmtp 4xx: a wrong policy must never run as a guessed one. */
		user->error = p_strdup_printf(user->pool,
			"popvault: user %s: %s", user->username, error);
		return;
	}
	if (!set.any_set) {
		e_debug(user->event, "popvault: no popvault_* settings for "
			"this user: inactive");
		return;
	}

	puser = p_new(user->pool, struct popvault_user, 1);
	puser->user = user;
	puser->set = set;
	puser->event = event_create(user->event);
	event_add_category(puser->event, &event_category_popvault);
	/* a shared folder's owner logs inside the reader's session */
	event_set_append_log_prefix(puser->event, user->creator == NULL ?
		"popvault: " : t_strdup_printf("popvault: owner %s: ",
					       user->username));

	puser->module_ctx.super = *v;
	user->vlast = &puser->module_ctx.super;
	v->deinit = popvault_mail_user_deinit;
	MODULE_CONTEXT_SET(user, popvault_user_module, puser);

	popvault_log_settings(puser);
	if (popvault_crypt_user_created(user, puser, &error) < 0) {
		/* fail closed: never store plaintext for this user */
		user->error = p_strdup_printf(user->pool,
			"popvault: user %s: %s", user->username, error);
	}
}

struct popvault_user *popvault_user_get(struct mail_user *user)
{
	return POPVAULT_USER_CONTEXT(user);
}
