/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Dovecot 2.4 knows only the settings it has been told about: this file
   declares every popvault_* setting to 2.4's settings system. It is built
   into the plugin and into the settings module that the config process
   loads (libpopvault_settings.so in $moduledir/settings/).

   The names come from the one table in popvault-settings.c, and the
   check_func runs the same popvault_settings_parse() as the plugin, so a
   setting added there is known and validated here without a second list.
   Every value is kept as a string (empty = unset, as on 2.3); the plugin
   parses the strings per user. */

#include "lib.h"
#include "settings-parser.h"
#include "popvault-settings.h"
#include "popvault-settings-24.h"

#define POPVAULT_DICT_FILTER POPVAULT_SETTING_PREFIX"dict"

/* +1: the list end */
static struct setting_define popvault_setting_defines[POPVAULT_SETTINGS_MAX + 1];
static struct popvault_24_settings popvault_default_settings;

const char *popvault_24_settings_lookup(const char *name, void *context)
{
	const struct popvault_24_settings *set = context;
	unsigned int i;

	for (i = 0; popvault_setting_name(i) != NULL; i++) {
		if (strcmp(popvault_setting_name(i), name) == 0)
			break;
	}
	i_assert(i < POPVAULT_SETTINGS_MAX);
	return set->values[i] == NULL || set->values[i][0] == '\0' ?
		NULL : set->values[i];
}

/* Runs in doveconf for every configured value (an invalid global value
   stops Dovecot) and in settings_get() for each user (an invalid userdb
   value fails the login). */
static bool popvault_settings_check(void *_set, pool_t pool,
				    const char **error_r)
{
	struct popvault_settings parsed;

	return popvault_settings_parse(pool, popvault_24_settings_lookup, NULL, _set,
				       &parsed, error_r) == 0;
}

const struct setting_parser_info popvault_setting_parser_info = {
	.name = "popvault",
	.plugin_dependency = "lib20_popvault_plugin",

	.defines = popvault_setting_defines,
	.defaults = &popvault_default_settings,

	.struct_size = sizeof(struct popvault_24_settings),
	.pool_offset1 = 1 + offsetof(struct popvault_24_settings, pool),
	.check_func = popvault_settings_check,
};

/* The table is built from popvault-settings.c's names when the module is
   loaded, before the config process or the plugin reads it. */
static void __attribute__((constructor)) popvault_settings_24_build(void)
{
	unsigned int i, n = 0;
	const char *name;

	for (i = 0; (name = popvault_setting_name(i)) != NULL; i++) {
		struct setting_define *def = &popvault_setting_defines[n++];

		i_assert(i < POPVAULT_SETTINGS_MAX);
		popvault_default_settings.values[i] = "";
		def->key = name;
		def->offset = offsetof(struct popvault_24_settings, values) +
			i * sizeof(const char *);
		if (strcmp(name, POPVAULT_DICT_FILTER) == 0) {
			/* popvault_dict { dict <driver> { ... } }: a 2.4 dict
			   configuration, opened with dict_init_auto() */
			def->type = SET_FILTER_NAME;
			def->offset = 0;
		} else if (strcmp(name, POPVAULT_SETTING_PREFIX"key_password") == 0) {
			/* the passdb's %{password} arrives expanded; a '%' in
			   a password must not be expanded a second time */
			def->type = SET_STR_NOVARS;
		} else {
			def->type = SET_STR;
		}
	}
}
