#ifndef POPVAULT_COMPAT_MACROS_H
#define POPVAULT_COMPAT_MACROS_H

/* The part of the Dovecot 2.3/2.4 seam (popvault-compat.h) that is only
   renamed Dovecot calls: macros, no code of popvault's, so the settings
   parser in plugin/ uses them without depending on plugin/compat/, which
   sits above it (README.md, "How it is put together"). DOVECOT_PREREQ()
   comes from Dovecot's own headers, so this also works in builds without
   popvault-config.h (fuzz targets). */

#include "lib.h"

#if DOVECOT_PREREQ(2, 4, 0)
#  include "str-parse.h"
/* settings_get_time() moved to lib's str-parse.h */
#  define popvault_parse_interval(str, secs_r, error_r) \
	str_parse_get_interval(str, secs_r, error_r)
/* how messages tell the admin to write the login password and a
   doveadm -o setting */
#  define POPVAULT_HINT_PASSWORD_VAR "%{password}"
#  define POPVAULT_HINT_SETTING_PREFIX ""
/* index-mail keeps the Date header's time in 32 bits: 2.4 clamps it */
#  define popvault_sent_date_time(t) ((time_t)time_to_uint32_trunc(t))
#else
#  include "settings-parser.h"
/* 2.4 spells the two-argument form str_begins_with() */
#  define str_begins_with(str, prefix) str_begins(str, prefix)
#  define popvault_parse_interval(str, secs_r, error_r) \
	settings_get_time(str, secs_r, error_r)
#  define POPVAULT_HINT_PASSWORD_VAR "%w"
#  define POPVAULT_HINT_SETTING_PREFIX "plugin/"
/* index-mail keeps the Date header's time in 32 bits: 2.3 wraps it */
#  define popvault_sent_date_time(t) ((time_t)(uint32_t)(t))
#endif

#endif
