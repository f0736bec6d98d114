#ifndef POPVAULT_CAPA_H
#define POPVAULT_CAPA_H

#include "popvault-settings.h"

/* RFC 2449 EXPIRE value for a user: "0" when mail leaves the POP3 view at
   download (after_retr delete, hide or move), "NEVER" when nothing on the
   server removes it, else the smallest retention in whole days, rounded
   down. */
const char *popvault_capa_expire(const struct popvault_settings *set);

/* The CAPA lines popvault adds for a user after login, each ending in
   CRLF ("EXPIRE ...", and "LOGIN-DELAY ..." when set). */
const char *popvault_capa_lines(const struct popvault_settings *set);

#endif
