#ifndef POPVAULT_CAPA_H
#define POPVAULT_CAPA_H

#include "popvault-settings.h"

/* RFC 2449 EXPIRE value for a user: "0" when mail leaves the POP3 view at
   download (after_retr delete, hide or move), "NEVER" when nothing on the
   server removes it, else the smallest retention in whole days, rounded
   down. */
const char *popvault_capa_expire(const struct popvault_settings *set);

/* The import_environment variables that give pop3-login's CAPA (the
   login plugin) its EXPIRE and LOGIN-DELAY values; pop3 sees them too. */
#define POPVAULT_LOGIN_EXPIRE_ENV "POPVAULT_LOGIN_EXPIRE"
#define POPVAULT_LOGIN_DELAY_ENV "POPVAULT_LOGIN_DELAY"

/* The CAPA lines popvault adds for a user after login, each ending in
   CRLF: "EXPIRE ...", and "LOGIN-DELAY ..." when the user has a delay or
   delay_advertised (pop3-login announced LOGIN-DELAY, so RFC 2449 wants
   every user's value after login, 0 included). */
const char *popvault_capa_lines(const struct popvault_settings *set,
				bool delay_advertised);

#endif
