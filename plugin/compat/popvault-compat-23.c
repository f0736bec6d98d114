/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Dovecot 2.3 side of popvault-compat.h: settings from plugin {} (userdb
   fields that are no known setting land there too), dicts by URI. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "var-expand.h"
#include "dict.h"
#include "mail-user.h"
#include "mail-storage-settings.h"
#include "doveadm-mail.h"
#include "popvault-settings.h"
#include "popvault-compat.h"

static const char *user_setting_lookup(const char *name, void *context)
{
	struct mail_user *user = context;
	const char *value = mail_user_plugin_getenv(user, name);

	/* Dovecot treats an empty plugin setting as unset */
	return value == NULL || value[0] == '\0' ? NULL : value;
}

static void
user_setting_iter(void *context,
		  void (*cb)(const char *name, void *cb_context),
		  void *cb_context)
{
	struct mail_user *user = context;
	const char *const *envs;
	unsigned int i, count;

	if (!array_is_created(&user->set->plugin_envs))
		return;
	/* plugin_envs is a flat key, value, key, value ... array */
	envs = array_get(&user->set->plugin_envs, &count);
	for (i = 0; i + 1 < count; i += 2) {
		if (str_begins_with(envs[i], POPVAULT_SETTING_PREFIX))
			cb(envs[i], cb_context);
	}
}

int popvault_compat_user_settings(struct mail_user *user,
				  struct popvault_settings *set_r,
				  const char **error_r)
{
	return popvault_settings_parse(user->pool, user_setting_lookup,
				       user_setting_iter, user, set_r,
				       error_r);
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
		*error_r = t_strdup_printf("dict_init(%s) failed: %s",
					   uri, error);
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
	return dict_init_uri(user, event, t_strconcat("file:", path, NULL),
			     dict_r, error_r);
}

const char *popvault_compat_pop3_uidl_format(struct mail_user *user)
{
	return mail_user_set_get_storage_set(user)->pop3_uidl_format;
}

const char *popvault_compat_attachment_dir(struct mail_user *user)
{
	return mail_user_set_get_storage_set(user)->mail_attachment_dir;
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
