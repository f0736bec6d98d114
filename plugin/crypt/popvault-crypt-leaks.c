/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* popvault encrypts what it saves, but some of Dovecot's own writers see
   the plaintext of every message they handle. These checks run when the
   user is created, so a combination that would leak refuses the login
   (POP3 -ERR [SYS/TEMP], IMAP NO) and the delivery (LMTP 4xx, dovecot-lda
   75) instead of leaking quietly. */

#include "lib.h"
#include "str.h"
#include "mail-user.h"
#include "popvault-settings.h"
#include "popvault-crypt-leaks.h"

#include <sys/stat.h>

bool popvault_crypt_user_has_encrypted_mail(const struct popvault_settings *set,
					    const char *keys_dir,
					    struct event *event)
{
	struct stat st;

	if (set->encrypt || set->require_encrypted)
		return TRUE;
	if (stat(keys_dir, &st) == 0)
		return TRUE;
	if (errno != ENOENT) {
		/* can't tell: stay on the safe side */
		e_error(event, "crypt: stat(%s) failed: %m", keys_dir);
		return TRUE;
	}
	return FALSE;
}

/* The FTS backend that indexes the user's mail, NULL when FTS is off.
   Dovecot's fts plugin attaches itself only when "fts" is one of the
   user's mail_plugins (mail_user_add_plugin_hooks() matches the plain
   name) and does nothing without a backend in the fts setting
   (fts_mailbox_list_created(): "No fts setting - plugin disabled"). */
static const char *user_fts_backend(struct mail_user *user)
{
	const char *const *plugins, *backend;

	plugins = t_strsplit_spaces(user->set->mail_plugins, ", ");
	if (!str_array_find(plugins, "fts"))
		return NULL;
	backend = mail_user_plugin_getenv(user, "fts");
	return backend == NULL || backend[0] == '\0' ? NULL : backend;
}

int popvault_crypt_check_fts(struct mail_user *user,
			     const struct popvault_settings *set,
			     struct event *event, const char **error_r)
{
	const char *backend = user_fts_backend(user);

	if (backend == NULL)
		return 0;
	if (set->allow_fts) {
		e_warning(event, "crypt: user %s: FTS (fts=%s) indexes the "
			  "words of encrypted mail in plaintext "
			  "(allowed by popvault_allow_fts=yes)",
			  user->username, backend);
		return 0;
	}
	*error_r = t_strdup_printf("FTS (fts=%s) would store the words of "
		"encrypted mail in plaintext in its index: refusing the user "
		"(popvault_allow_fts=yes allows it)", backend);
	return -1;
}
