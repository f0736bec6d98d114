/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Dovecot 2.4 side of popvault-compat.h: settings through settings_get(),
   dicts as settings filters, 2.4's var_expand. */

#include "lib.h"
#include "str.h"
#include "var-expand.h"
#include "settings.h"
#include "settings-parser.h"
#include "array.h"
#include "fts-settings.h"
#include "dict.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-settings.h"
#include "mail-storage-service.h"
#include "lmtp-common.h"
#include "lmtp-recipient.h"
#include "popvault-settings.h"
#include "popvault-settings-24.h"
#include "popvault-compat.h"

#include <dlfcn.h>

struct user_settings_ctx {
	const struct popvault_24_settings *set;
	/* the userdb fields the settings came from */
	const char *const *userdb_fields;
};

static const char *user_setting_lookup(const char *name, void *context)
{
	struct user_settings_ctx *ctx = context;

	return popvault_24_settings_lookup(name, (void *)ctx->set);
}

/* A user's own dict: the userdb names the popvault_dict filter's settings
   by path, as Dovecot does for any filter (namespace/inbox/...), and
   Dovecot applies them (settings_override_filter_match() in 2.4.1's
   lib-settings/settings.c):
     popvault_dict/dict=redis
     popvault_dict/dict/redis/redis_host=127.0.0.1
   Only these two forms reach the dict; another popvault_dict/ path is
   refused like any unknown popvault_* name. */
#define USER_DICT_FIELD POPVAULT_SETTING_PREFIX"dict/dict"

static bool user_dict_field(const char *name)
{
	const char *suffix;

	return str_begins(name, USER_DICT_FIELD, &suffix) &&
		(suffix[0] == '\0' || suffix[0] == '/');
}

/* Dovecot 2.4 silently ignores a userdb field that names no setting, but
   keeps it in userdb_fields: a typo'd popvault_* field is still refused. */
static void
user_setting_iter(void *context,
		  void (*cb)(const char *name, void *cb_context),
		  void *cb_context)
{
	struct user_settings_ctx *ctx = context;
	const char *const *field;

	if (ctx->userdb_fields == NULL)
		return;
	for (field = ctx->userdb_fields; *field != NULL; field++) {
		const char *name = t_strcut(*field, '=');

		if (str_begins_with(name, POPVAULT_SETTING_PREFIX) &&
		    !user_dict_field(name))
			cb(name, cb_context);
	}
}

/* The owner of a shared folder (user->creator is the logged-in user):
   Dovecot's shared storage creates it without a userdb lookup, on a copy
   of the reader's settings instance, the reader's userdb fields included.
   The owner's own popvault settings are the configuration plus the
   owner's userdb fields, so they come from a lookup as for a login of the
   owner (without its password). 1 with service_user_r, 0 when the owner
   does not exist, -1 with error_r. */
static int
owner_service_user_lookup(struct mail_user *owner,
			  struct mail_storage_service_user **service_user_r,
			  const char **error_r)
{
	const struct mail_storage_service_input *reader_input =
		mail_storage_service_user_get_input(owner->service_user);
	struct mail_storage_service_input input;
	const char *error = "unknown error";
	int ret;

	i_zero(&input);
	input.event_parent = owner->event;
	input.service = reader_input->service;
	input.protocol = reader_input->protocol;
	input.username = owner->username;
	input.session_id_prefix = owner->session_id;
	input.local_ip = reader_input->local_ip;
	input.remote_ip = reader_input->remote_ip;
	/* settings only: a userdb lookup, no plugins loaded, the log prefix
	   left alone, no switch back to root (lmtp drops privileges
	   temporarily) */
	input.flags_override_add = MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_NO_PLUGINS |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT;
	input.flags_override_remove = MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP;
	ret = mail_storage_service_lookup(
		mail_storage_service_user_get_service_ctx(owner->service_user),
		&input, service_user_r, &error);
	if (ret <= 0) {
		*error_r = t_strdup_printf("userdb lookup of the shared "
					   "folder's owner: %s", error);
		return ret < 0 ? -1 : 0;
	}
	return 1;
}

/* 2.4's shared storage sets owner->creator only after the owner's
   mail_user_created hooks ran, so the owner is known there as an
   autocreated user; the other autocreated user is raw storage's (LMTP,
   dovecot-lda), which raw-storage.c names "raw-mail-user". */
bool popvault_compat_user_is_shared_owner(const struct mail_user *user)
{
	if (user->creator != NULL)
		return TRUE;
	return user->autocreated &&
		strcmp(user->username, "raw-mail-user") != 0;
}

/* The popvault_* settings that event sees, checked with the userdb fields
   they came from (typos). */
static int
event_settings(struct event *event, const char *const *userdb_fields,
	       pool_t pool, struct popvault_settings *set_r,
	       const char **error_r)
{
	struct user_settings_ctx ctx = {
		.userdb_fields = userdb_fields,
	};
	const char *error;
	int ret;

	/* runs popvault_settings_parse() through the check_func too: an
	   invalid userdb value fails here */
	if (settings_get(event, &popvault_setting_parser_info, 0,
			 &ctx.set, &error) < 0) {
		/* settings_get() prefixes the check_func's text; the log
		   line stays the one 2.3 writes (docs, tests) */
		const char *text = strstr(error, "Invalid "
					  POPVAULT_SETTING_PREFIX);

		*error_r = text != NULL ? text : error;
		if (str_begins_with(*error_r, "Invalid "POPVAULT_SETTING_PREFIX
				    "dict=")) {
			/* 2.3's dict URI, e.g. an SQL column kept through
			   the upgrade; not echoed, a URI may hold a
			   password */
			*error_r = "Invalid "POPVAULT_SETTING_PREFIX"dict: a "
				"dict URI is Dovecot 2.3's form; on 2.4 the "
				"userdb gives "USER_DICT_FIELD"=<driver> and "
				USER_DICT_FIELD"/<driver>/<setting>=<value>";
		}
		return -1;
	}
	ret = popvault_settings_parse(pool, user_setting_lookup,
				      user_setting_iter, &ctx, set_r, error_r);
	settings_free(ctx.set);
	return ret;
}

int popvault_compat_user_settings(struct mail_user *user,
				  struct popvault_settings *set_r,
				  const char **error_r)
{
	const char *const *userdb_fields = user->userdb_fields;
	struct mail_storage_service_user *owner = NULL;
	struct event *event = user->event;
	int ret;

	if (popvault_compat_user_is_shared_owner(user) && user->service_user != NULL) {
		if ((ret = owner_service_user_lookup(user, &owner,
						     error_r)) <= 0)
			return ret;
		event = mail_storage_service_user_get_event(owner);
		userdb_fields =
			mail_storage_service_user_get_userdb_fields(owner);
	}
	ret = event_settings(event, userdb_fields, user->pool, set_r,
			     error_r);
	if (owner != NULL)
		mail_storage_service_user_unref(&owner);
	return ret < 0 ? -1 : 1;
}

int popvault_compat_lmtp_rcpt_settings(struct mail_storage_service_ctx *service,
				       struct client *client,
				       struct lmtp_recipient *lrcpt,
				       struct popvault_settings *set_r,
				       const char **username_r,
				       const char **error_r)
{
	struct mail_storage_service_input input;
	struct mail_storage_service_user *service_user;
	const char *error;
	int ret;

	i_zero(&input);
	input.service = "lmtp";
	input.username = lrcpt->username;
	input.local_ip = client->local_ip;
	input.remote_ip = client->remote_ip;
	input.local_port = client->local_port;
	input.remote_port = client->remote_port;
	input.session_id = lrcpt->session_id;
	input.local_name = client->local_name;
	input.end_client_tls_secured =
		client->end_client_tls_secured_set ?
		client->end_client_tls_secured :
		smtp_server_connection_is_ssl_secured(client->conn);
	input.forward_fields = lrcpt->forward_fields;
	input.event_parent = lrcpt->rcpt->event;
	if (mail_storage_service_lookup(service, &input, &service_user,
					&error) <= 0)
		return 0;
	*username_r = t_strdup(
		mail_storage_service_user_get_input(service_user)->username);
	ret = event_settings(mail_storage_service_user_get_event(service_user),
			     mail_storage_service_user_get_userdb_fields(service_user),
			     pool_datastack_create(), set_r, error_r);
	mail_storage_service_user_unref(&service_user);
	return ret < 0 ? -1 : 1;
}

int popvault_compat_service_user_set(struct mail_storage_service_user *user,
				     const char *name, const char *value,
				     const char **error_r ATTR_UNUSED)
{
	/* the user's own instance: its settings are read after this */
	settings_override(mail_storage_service_user_get_settings_instance(user),
			  name, value, SETTINGS_OVERRIDE_TYPE_CODE);
	return 0;
}

int popvault_compat_dict_init(struct mail_user *user ATTR_UNUSED,
			      struct event *event,
			      const char *dict_uri ATTR_UNUSED,
			      struct dict **dict_r, const char **error_r)
{
	struct event *dict_event = event_create(event);
	int ret;

	/* popvault_dict { dict <driver> { ... } } */
	settings_event_add_filter_name(dict_event, POPVAULT_SETTING_PREFIX"dict");
	ret = dict_init_auto(dict_event, dict_r, error_r);
	event_unref(&dict_event);
	return ret;
}

int popvault_compat_dict_init_file(struct mail_user *user ATTR_UNUSED,
				   struct event *event, const char *path,
				   struct dict **dict_r, const char **error_r)
{
	struct settings_instance *instance = settings_instance_find(event);
	struct event *dict_event;
	int ret;

	/* the default dict is no configuration: give the file driver its
	   settings as code overrides on a private copy of the instance */
	instance = instance != NULL ? settings_instance_dup(instance) :
		settings_instance_new(settings_root_find(event));
	settings_override(instance, "dict_driver", "file",
			  SETTINGS_OVERRIDE_TYPE_CODE);
	settings_override(instance, "dict_file_path", path,
			  SETTINGS_OVERRIDE_TYPE_CODE);
	/* fcntl, not a dotlock a killed writer leaves behind (see
	   popvault-compat-23.c) */
	settings_override(instance, "dict_file_lock_method", "fcntl",
			  SETTINGS_OVERRIDE_TYPE_CODE);
	dict_event = event_create(event);
	event_set_ptr(dict_event, SETTINGS_EVENT_INSTANCE, instance);
	ret = dict_init_filter_auto(dict_event, "popvault", dict_r, error_r);
	event_unref(&dict_event);
	settings_instance_free(&instance);
	return ret;
}

const char *popvault_compat_pop3_uidl_format(struct mail_user *user)
{
	const struct mail_storage_settings *set;
	const char *format, *error;

	if (settings_get(user->event, &mail_storage_setting_parser_info, 0,
			 &set, &error) < 0) {
		e_error(user->event, "popvault: %s", error);
		return "";
	}
	format = t_strdup(set->pop3_uidl_format);
	settings_free(set);
	return format;
}

bool popvault_compat_storage_caches_field(struct mail_storage *storage,
					  const char *field)
{
	const struct mail_storage_settings *set =
		mail_storage_get_settings(storage);
	const char *name;

	array_foreach_elem(&set->mail_cache_fields, name) {
		if (strcasecmp(name, field) == 0)
			return TRUE;
	}
	return FALSE;
}

const char *popvault_compat_attachment_dir(struct mail_storage *storage)
{
	return storage->set->mail_ext_attachment_path;
}

bool popvault_compat_uidl_format_uses(const char *format,
				      char short_key ATTR_UNUSED,
				      const char *long_key)
{
	return strstr(format, long_key) != NULL;
}

int popvault_compat_uidl_expand(string_t *dest, const char *format,
				const struct popvault_uidl_vars *vars,
				const char **error_r)
{
	const struct var_expand_table table[] = {
		{ .key = "uidvalidity", .value = vars->uidvalidity },
		{ .key = "uid", .value = vars->uid },
		{ .key = "md5", .value = vars->md5 },
		{ .key = "filename", .value = vars->filename },
		{ .key = "guid", .value = vars->guid },
		VAR_EXPAND_TABLE_END
	};
	const struct var_expand_params params = { .table = table };

	return var_expand(dest, format, &params, error_r) < 0 ? -1 : 0;
}

/* The fts plugin attaches itself only when "fts" is one of the user's
   mail_plugins, and indexes nothing without an fts <driver> { } filter
   (fts_mailbox_list_created(): array_is_empty(&set->fts)). Its settings
   are declared by lib20_fts_plugin, which is loaded (RTLD_GLOBAL) when it is
   in mail_plugins; dlsym() finds it whichever module was loaded first. */
const char *popvault_compat_fts_backend(struct mail_user *user)
{
	const struct setting_parser_info *fts_info;
	const struct fts_settings *set;
	const char *const *plugins, *backend, *error;

	plugins = settings_boollist_get(&user->set->mail_plugins);
	if (!str_array_find(plugins, "fts"))
		return NULL;
	fts_info = dlsym(RTLD_DEFAULT, "fts_setting_parser_info");
	if (fts_info == NULL)
		return "(fts plugin settings not found)";
	if (settings_get(user->event, fts_info, 0, &set, &error) < 0) {
		e_error(user->event, "popvault: %s", error);
		return "(fts settings unreadable)";
	}
	if (array_is_empty(&set->fts))
		backend = NULL;
	else
		backend = t_strdup(array_idx_elem(&set->fts, 0));
	settings_free(set);
	return backend;
}

int popvault_compat_mdbox_repair_finish(struct mail_storage *storage
					ATTR_UNUSED)
{
	/* 2.4's sync rebuilds through mdbox_storage_rebuild(), which
	   clears the map's fscked flag itself */
	return 0;
}
