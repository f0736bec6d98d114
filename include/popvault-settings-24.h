#ifndef POPVAULT_SETTINGS_24_H
#define POPVAULT_SETTINGS_24_H

/* Dovecot 2.4 only: the settings struct behind popvault-settings-24.c. */

/* room for every name in popvault-settings.c's table */
#define POPVAULT_SETTINGS_MAX 32

struct popvault_24_settings {
	pool_t pool;
	/* indexed like popvault_setting_name(); "" = unset */
	const char *values[POPVAULT_SETTINGS_MAX];
};

extern const struct setting_parser_info popvault_setting_parser_info;

/* A popvault_setting_lookup_t over a struct popvault_24_settings. */
const char *popvault_24_settings_lookup(const char *name, void *context);

#endif
