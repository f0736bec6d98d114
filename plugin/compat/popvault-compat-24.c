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
#include "mail-storage-settings.h"
#include "mail-storage-service.h"
#include "popvault-settings.h"
#include "popvault-settings-24.h"
#include "popvault-compat.h"

#include <dlfcn.h>

struct user_settings_ctx {
	const struct popvault_24_settings *set;
	struct mail_user *user;
};

static const char *user_setting_lookup(const char *name, void *context)
{
	struct user_settings_ctx *ctx = context;

	return popvault_24_settings_lookup(name, (void *)ctx->set);
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

	if (ctx->user->userdb_fields == NULL)
		return;
	for (field = ctx->user->userdb_fields; *field != NULL; field++) {
		if (str_begins_with(*field, POPVAULT_SETTING_PREFIX))
			cb(t_strcut(*field, '='), cb_context);
	}
}

int popvault_compat_user_settings(struct mail_user *user,
				  struct popvault_settings *set_r,
				  const char **error_r)
{
	struct user_settings_ctx ctx = { .user = user };
	const char *error;
	int ret;

	/* runs popvault_settings_parse() through the check_func too: an
	   invalid userdb value fails here */
	if (settings_get(user->event, &popvault_setting_parser_info, 0,
			 &ctx.set, &error) < 0) {
		/* settings_get() prefixes the check_func's text; the log
		   line stays the one 2.3 writes (docs, tests) */
		const char *text = strstr(error, "Invalid "
					  POPVAULT_SETTING_PREFIX);

		*error_r = text != NULL ? text : error;
		return -1;
	}
	ret = popvault_settings_parse(user->pool, user_setting_lookup,
				      user_setting_iter, &ctx, set_r, error_r);
	settings_free(ctx.set);
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

const char *popvault_compat_attachment_dir(struct mail_user *user)
{
	const struct mail_storage_settings *set;
	const char *path, *error;

	if (settings_get(user->event, &mail_storage_setting_parser_info, 0,
			 &set, &error) < 0) {
		e_error(user->event, "popvault: %s", error);
		return "";
	}
	path = t_strdup(set->mail_ext_attachment_path);
	settings_free(set);
	return path;
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
