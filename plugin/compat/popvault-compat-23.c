/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Dovecot 2.3 side of popvault-compat.h: settings from plugin {} (userdb
   fields that are no known setting land there too), dicts by URI. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "var-expand.h"
#include "dict.h"
#include "mail-user.h"
#include "mail-storage.h"
#include "mail-storage-settings.h"
#include "mail-storage-service.h"
#include "mdbox-storage.h"
#include "mdbox-map-private.h"
#include "doveadm-mail.h"
#include "smtp-address.h"
#include "lda-settings.h"
#include "lmtp-common.h"
#include "lmtp-recipient.h"
#include "popvault-settings.h"
#include "popvault-compat.h"

/* A user's plugin {} settings as in plugin_envs: a flat key, value, key,
   value ... array of expanded values */
struct user_envs {
	/* NULL for settings read before the user exists (LMTP's RCPT) */
	struct mail_user *user;
	const char *const *kv;
	unsigned int count;
};

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
	    strcmp(value, "yes") == 0 && envs->user != NULL &&
	    (field = popvault_userdb_field(envs->user->userdb_fields,
					   name)) != NULL &&
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
		if (str_begins_with(kv[i], POPVAULT_SETTING_PREFIX))
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
			if (!str_begins_with(kv[i], POPVAULT_SETTING_PREFIX))
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

bool popvault_compat_user_is_shared_owner(const struct mail_user *user)
{
	return user->creator != NULL;
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

int popvault_compat_user_settings(struct mail_user *user,
				  struct popvault_settings *set_r,
				  const char **error_r)
{
	struct user_envs envs;
	int ret;

	if ((ret = user_settings_source(user, &envs, error_r)) <= 0)
		return ret;
	return popvault_settings_parse(user->pool, user_setting_lookup,
				       user_setting_iter, &envs, set_r,
				       error_r) < 0 ? -1 : 1;
}

int popvault_compat_lmtp_rcpt_settings(struct mail_storage_service_ctx *service,
				       struct client *client,
				       struct lmtp_recipient *lrcpt,
				       struct popvault_settings *set_r,
				       const char **username_r,
				       const char **error_r)
{
	struct smtp_server_recipient *rcpt = lrcpt->rcpt;
	struct mail_storage_service_input input;
	struct mail_storage_service_user *service_user;
	const struct mail_user_settings *set;
	struct user_envs envs;
	const char *username, *detail, *error;
	char delim;
	int ret;

	/* the user name as client_default_cmd_rcpt() derives it */
	smtp_address_detail_parse_temp(
		client->unexpanded_lda_set->recipient_delimiter,
		rcpt->path, &username, &delim, &detail);
	if (*username == '\0')
		return 0;

	i_zero(&input);
	input.module = input.service = "lmtp";
	input.username = username;
	input.local_ip = client->local_ip;
	input.remote_ip = client->remote_ip;
	input.local_port = client->local_port;
	input.remote_port = client->remote_port;
	input.session_id = lrcpt->session_id;
	input.conn_ssl_secured =
		smtp_server_connection_is_ssl_secured(client->conn);
	input.conn_secured = input.conn_ssl_secured ||
		smtp_server_connection_is_trusted(client->conn);
	input.forward_fields = lrcpt->forward_fields;
	input.event_parent = rcpt->event;
	if (mail_storage_service_lookup(service, &input, &service_user,
					&error) <= 0)
		return 0;

	/* plugin {} with the userdb's fields applied, not yet expanded:
	   expansion needs the mail user. The values the caller reads are
	   booleans; a value valid only once expanded fails the parse and
	   so refuses the recipient (docs/encryption.md) */
	set = mail_storage_service_user_get_set(service_user)[0];
	i_zero(&envs);
	if (array_is_created(&set->plugin_envs))
		envs.kv = array_get(&set->plugin_envs, &envs.count);
	*username_r = t_strdup(
		mail_storage_service_user_get_input(service_user)->username);
	ret = popvault_settings_parse(pool_datastack_create(),
				      user_setting_lookup, user_setting_iter,
				      &envs, set_r, error_r);
	mail_storage_service_user_unref(&service_user);
	return ret < 0 ? -1 : 1;
}

int popvault_compat_service_user_set(struct mail_storage_service_user *user,
				     const char *name, const char *value,
				     const char **error_r)
{
	const char *error;

	if (mail_storage_service_user_set_setting(user,
			t_strconcat("plugin/", name, NULL), value,
			&error) <= 0) {
		*error_r = t_strdup_printf("can't set %s: %s", name, error);
		return -1;
	}
	return 0;
}

static int
dict_init_uri(struct mail_user *user, struct event *event, const char *uri,
	      struct dict **dict_r, const char **error_r)
{
	struct dict_settings set;
	const char *error;

	i_zero(&set);
	set.base_dir = user->set->base_dir;
	set.event_parent = event;
	if (dict_init(uri, &set, dict_r, &error) < 0) {
		/* not the URI: it may hold a password */
		*error_r = t_strdup_printf("dict_init() failed: %s", error);
		return -1;
	}
	return 1;
}

int popvault_compat_dict_init(struct mail_user *user, struct event *event,
			      const char *dict_uri, struct dict **dict_r,
			      const char **error_r)
{
	if (dict_uri == NULL)
		return 0;
	return dict_init_uri(user, event, dict_uri, dict_r, error_r);
}

int popvault_compat_dict_init_file(struct mail_user *user,
				   struct event *event, const char *path,
				   struct dict **dict_r, const char **error_r)
{
	/* lock=fcntl: the file dict's default dotlock is the new file
	   itself, created before its content is written; a writer killed
	   in between leaves a lock without a PID that holds every next
	   write (a POP3 login with LOGIN-DELAY) for its 60 s stale timeout.
	   An fcntl lock goes with its process. */
	return dict_init_uri(user, event, t_strconcat("file:", path,
						      ":lock=fcntl", NULL),
			     dict_r, error_r);
}

const char *popvault_compat_pop3_uidl_format(struct mail_user *user)
{
	return mail_user_set_get_storage_set(user)->pop3_uidl_format;
}

bool popvault_compat_storage_caches_field(struct mail_storage *storage,
					  const char *field)
{
	const struct mail_storage_settings *set =
		mail_storage_get_settings(storage);
	const char *const *fields;
	bool found;

	T_BEGIN {
		fields = t_strsplit_spaces(set->mail_cache_fields, " ");
		found = str_array_icase_find(fields, field);
	} T_END;
	return found;
}

const char *popvault_compat_attachment_dir(struct mail_storage *storage)
{
	return storage->set->mail_attachment_dir;
}

bool popvault_compat_uidl_format_uses(const char *format, char short_key,
				      const char *long_key)
{
	const char *var = t_strdup_printf("%%%c", short_key);

	return strstr(format, var) != NULL ||
		strstr(format, t_strconcat(long_key, "}", NULL)) != NULL;
}

int popvault_compat_uidl_expand(string_t *dest, const char *format,
				const struct popvault_uidl_vars *vars,
				const char **error_r)
{
	const struct var_expand_table tab[] = {
		{ 'v', vars->uidvalidity, "uidvalidity" },
		{ 'u', vars->uid, "uid" },
		{ 'm', vars->md5, "md5" },
		{ 'f', vars->filename, "filename" },
		{ 'g', vars->guid, "guid" },
		{ '\0', NULL, NULL }
	};

	return var_expand(dest, format, tab, error_r) <= 0 ? -1 : 0;
}

bool popvault_doveadm_parse_arg_accept(
	struct doveadm_mail_cmd_context *ctx ATTR_UNUSED, int c ATTR_UNUSED)
{
	return TRUE;
}

/* Dovecot's fts plugin attaches itself only when "fts" is one of the
   user's mail_plugins (mail_user_add_plugin_hooks() matches the plain
   name) and does nothing without a backend in the fts setting
   (fts_mailbox_list_created(): "No fts setting - plugin disabled"). */
const char *popvault_compat_fts_backend(struct mail_user *user)
{
	const char *const *plugins, *backend;

	plugins = t_strsplit_spaces(user->set->mail_plugins, ", ");
	if (!str_array_find(plugins, "fts"))
		return NULL;
	backend = mail_user_plugin_getenv(user, "fts");
	return backend == NULL || backend[0] == '\0' ? NULL : backend;
}

int popvault_compat_mdbox_repair_finish(struct mail_storage *storage)
{
	struct mdbox_storage *mstorage = MDBOX_STORAGE(storage);
	struct mdbox_map *map = mstorage->map;
	struct mail_index_sync_ctx *sync_ctx;
	struct mail_index_view *view;
	struct mail_index_transaction *trans;

	if (map->index == NULL || map->view == NULL) {
		/* the resync did not open the map: nothing was rebuilt */
		return 0;
	}
	/* a sync begun now sees the flag the rebuild's fsck wrote (the
	   rebuild's own view predates it, which is why its unset misses
	   it) */
	if (mail_index_sync_begin(map->index, &sync_ctx, &view, &trans,
				  0) < 0) {
		mail_storage_set_index_error(storage, map->index);
		return -1;
	}
	mail_index_unset_fscked(trans);
	mail_index_sync_set_reason(sync_ctx, "popvault: mdbox repaired");
	if (mail_index_sync_commit(&sync_ctx) < 0) {
		mail_storage_set_index_error(storage, map->index);
		return -1;
	}
	(void)mail_index_reset_fscked(map->index);
	return 0;
}
