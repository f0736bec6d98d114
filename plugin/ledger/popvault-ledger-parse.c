/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "popvault-ledger.h"

bool popvault_uidl_is_valid(const char *uidl)
{
	size_t len = strlen(uidl), i;

	if (len == 0 || len > POPVAULT_UIDL_MAX_LEN)
		return FALSE;
	for (i = 0; i < len; i++) {
		if ((unsigned char)uidl[i] < 0x21 ||
		    (unsigned char)uidl[i] > 0x7e)
			return FALSE;
	}
	return TRUE;
}

int popvault_ledger_parse_import_line(const char *line, const char **uidl_r,
				      const char **ref_r,
				      const char **error_r)
{
	const char *p, *uidl, *ref;
	size_t len = strlen(line);

	/* tolerate CRLF files */
	if (len > 0 && line[len-1] == '\r')
		line = t_strndup(line, --len);
	p = strchr(line, ' ');
	if (p == NULL) {
		*error_r = "expected \"<uidl> <message-id or guid>\"";
		return -1;
	}
	uidl = t_strdup_until(line, p);
	while (*p == ' ')
		p++;
	ref = p;
	if (!popvault_uidl_is_valid(uidl)) {
		*error_r = "invalid UIDL (RFC 1939: 1-70 printable characters)";
		return -1;
	}
	if (ref[0] == '\0' || strchr(ref, ' ') != NULL ||
	    strlen(ref) > 998) {
		*error_r = "invalid message-id or guid";
		return -1;
	}
	for (p = ref; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
			*error_r = "invalid character in message-id or guid";
			return -1;
		}
	}
	*uidl_r = uidl;
	*ref_r = ref;
	return 0;
}
