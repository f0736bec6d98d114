#ifndef POPVAULT_CRYPT_LEAKS_H
#define POPVAULT_CRYPT_LEAKS_H

/* Places where Dovecot itself, not popvault, would write the plaintext of
   an encrypting user's mail: an FTS index, and the temporary files in
   mail_temp_dir (docs/encryption.md, docs/threat-model.md). Each check
   returns -1 with error_r (naming the setting that allows it) when the
   user must be refused, 0 when the user may go on. */

struct mail_user;
struct event;
struct popvault_settings;

/* Whether the settings alone say the user's mail is or may be stored
   encrypted: popvault_encrypt or popvault_require_encrypted. */
bool popvault_crypt_settings_encrypted(const struct popvault_settings *set);

/* Whether the user's mail is or may be stored encrypted: the user
   encrypts new mail, refuses plaintext, or has a key store in keys_dir.
   A user who only inherits a global popvault_master_key and never had a
   key pair has no encrypted mail to leak. */
bool popvault_crypt_user_has_encrypted_mail(const struct popvault_settings *set,
					    const char *keys_dir,
					    struct event *event);

/* FTS on for the user (the fts plugin in mail_plugins and a backend in
   the fts setting) without popvault_allow_fts=yes. With it, one warning. */
int popvault_crypt_check_fts(struct mail_user *user,
			     const struct popvault_settings *set,
			     struct event *event, const char **error_r);

/* mail_temp_dir not on a memory file system (tmpfs, ramfs) without
   popvault_allow_disk_temp=yes. Dovecot spills plaintext there: LMTP and
   dovecot-lda input over 128 KiB, IMAP BINARY conversion over 8 KiB,
   zlib's seekable read copy. With the opt-in, one warning. */
int popvault_crypt_check_temp_dir(struct mail_user *user,
				  const struct popvault_settings *set,
				  struct event *event, const char **error_r);

/* NULL when dir is on a memory file system, otherwise the error text
   that refuses a user with encrypted mail for it (naming dir and
   popvault_allow_disk_temp, as popvault_crypt_check_temp_dir() does). */
const char *popvault_crypt_temp_dir_refusal(const char *dir);

#endif
