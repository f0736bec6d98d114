/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "str.h"
#include "popvault-capa.h"

#define SECS_PER_DAY (24*3600)

const char *popvault_capa_expire(const struct popvault_settings *set)
{
	unsigned int smallest;

	switch (set->after_retr.kind) {
	case POPVAULT_ACTION_DELETE:
	case POPVAULT_ACTION_HIDE:
	case POPVAULT_ACTION_MOVE:
		return "0";
	case POPVAULT_ACTION_KEEP:
	case POPVAULT_ACTION_EXPUNGE:
		break;
	}
	smallest = I_MIN(set->retain_downloaded, set->retain_unread);
	if (smallest == POPVAULT_NEVER)
		return "NEVER";
	return dec2str(smallest / SECS_PER_DAY);
}

const char *popvault_capa_lines(const struct popvault_settings *set,
				bool delay_advertised)
{
	string_t *str = t_str_new(64);

	str_printfa(str, "EXPIRE %s\r\n", popvault_capa_expire(set));
	if (set->login_delay > 0 || delay_advertised)
		str_printfa(str, "LOGIN-DELAY %u\r\n", set->login_delay);
	return str_c(str);
}
