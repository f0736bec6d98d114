/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Dovecot 2.4's config process loads $moduledir/settings/lib*_settings.so
   and reads <name>_set_infos[]: without this module every popvault_*
   line is an unknown setting. */

#include "lib.h"
#include "settings-parser.h"
#include "popvault-settings-24.h"

extern const char *popvault_settings_version;
extern const struct setting_parser_info *popvault_settings_set_infos[];

const char *popvault_settings_version = DOVECOT_ABI_VERSION;

const struct setting_parser_info *popvault_settings_set_infos[] = {
	&popvault_setting_parser_info,
	NULL
};
