/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* popvault encrypts what it saves, but some of Dovecot's own writers see
   the plaintext of every message they handle. These checks run when the
   user is created, so a combination that would leak refuses the login
   (POP3 -ERR [SYS/TEMP], IMAP BYE) and the delivery (LMTP 4xx, dovecot-lda
   75) instead of leaking quietly. */

#include "lib.h"
#include "str.h"
#include "mail-user.h"
#include "popvault-settings.h"
#include "popvault-compat.h"
#include "popvault-crypt-leaks.h"

#include <sys/stat.h>
#ifdef __linux__
#  include <sys/vfs.h>
#endif

/* statfs() f_type of the memory file systems (linux/magic.h) */
#define POPVAULT_TMPFS_MAGIC 0x01021994
#define POPVAULT_RAMFS_MAGIC 0x858458f6

bool popvault_crypt_settings_encrypted(const struct popvault_settings *set)
{
	return set->encrypt || set->require_encrypted;
}

bool popvault_crypt_user_has_encrypted_mail(const struct popvault_settings *set,
					    const char *keys_dir,
					    struct event *event)
{
	struct stat st;

	if (popvault_crypt_settings_encrypted(set))
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

int popvault_crypt_check_fts(struct mail_user *user,
			     const struct popvault_settings *set,
			     struct event *event, const char **error_r)
{
	const char *backend = popvault_compat_fts_backend(user);

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

/* NULL when dir lives in memory, otherwise why Dovecot's temporary files
   there would hold plaintext (on a disk, or it can't be told). */
static const char *temp_dir_problem(const char *dir)
{
#ifdef __linux__
	struct statfs st;

	if (statfs(dir, &st) < 0)
		return t_strdup_printf("statfs(%s) failed: %m", dir);
	if ((unsigned long)st.f_type == POPVAULT_TMPFS_MAGIC ||
	    (unsigned long)st.f_type == POPVAULT_RAMFS_MAGIC)
		return NULL;
	return t_strdup_printf("mail_temp_dir=%s is on a disk (file system "
		"type 0x%lx), where Dovecot's temporary files (LMTP and "
		"dovecot-lda input over 128 KiB, IMAP BINARY, compressed "
		"mail) would hold plaintext", dir, (unsigned long)st.f_type);
#else
	return t_strdup_printf("can't tell whether %s is in memory on this "
			       "system", dir);
#endif
}

static const char *temp_dir_refusal(const char *problem)
{
	return t_strdup_printf("%s: refusing the user (put mail_temp_dir "
		"on a tmpfs, or popvault_allow_disk_temp=yes allows it)",
		problem);
}

const char *popvault_crypt_temp_dir_refusal(const char *dir)
{
	const char *problem = temp_dir_problem(dir);

	return problem == NULL ? NULL : temp_dir_refusal(problem);
}

/* LMTP spools DATA into the service's mail_temp_dir, not the recipient's:
   a per-user value (a userdb field) can't be checked against the spool. */
static bool user_temp_dir_from_userdb(struct mail_user *user)
{
	const char *const *field;

	if (user->userdb_fields == NULL)
		return FALSE;
	for (field = user->userdb_fields; *field != NULL; field++) {
		if (str_begins_with(*field, "mail_temp_dir="))
			return TRUE;
	}
	return FALSE;
}

int popvault_crypt_check_temp_dir(struct mail_user *user,
				  const struct popvault_settings *set,
				  struct event *event, const char **error_r)
{
	const char *problem;

	if (strcmp(user->service, "lmtp") == 0 &&
	    user_temp_dir_from_userdb(user)) {
		problem = "LMTP spools into the mail_temp_dir of the lmtp "
			"service, a per-user mail_temp_dir does not move it";
	} else {
		problem = temp_dir_problem(user->set->mail_temp_dir);
	}
	if (problem == NULL)
		return 0;
	if (set->allow_disk_temp) {
		e_warning(event, "crypt: user %s: %s (allowed by "
			  "popvault_allow_disk_temp=yes)",
			  user->username, problem);
		return 0;
	}
	*error_r = temp_dir_refusal(problem);
	return -1;
}
