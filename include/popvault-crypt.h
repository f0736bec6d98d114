#ifndef POPVAULT_CRYPT_H
#define POPVAULT_CRYPT_H

/* Encryption at rest (docs/encryption.md): storage hooks that encrypt on
   save and decrypt on read for users with popvault_encrypt,
   popvault_require_encrypted or popvault_master_key set. */

struct module;
struct mail_user;
struct mailbox;
struct popvault_user;

/* For popvault_user_hooks_add(): created validates the user's encryption
   settings and attaches the crypt state to puser (puser->crypt stays NULL
   when encryption is off for the user), failing the user when it must
   (fail closed); deinit_post drops the keys after the storage is gone. */
struct popvault_user_hooks;
extern const struct popvault_user_hooks popvault_crypt_user_hooks;

/* A POP3 login in password mode (popvault_key_password set) unlocks the
   keys at once, so a password that does not unlock them refuses the
   login instead of failing messages one by one (docs/encryption.md).
   -1 when they did not unlock (logged, event popvault_crypt_unlock_failed);
   0 otherwise, also when there is nothing to unlock. */
int popvault_crypt_pop3_unlock(struct popvault_user *puser);

void popvault_crypt_init(struct module *module);

/* Called when a message of a POP3 session's mailbox turns out damaged
   while it is read. Set by the pop3 code, so crypt never calls into pop3:
   it closes the connection before pop3 ends the reply with a "." that
   would make a truncated message look whole. */
typedef void popvault_crypt_damaged_callback_t(struct mailbox *box,
					       const char *reason);
void popvault_crypt_set_damaged_callback(
	popvault_crypt_damaged_callback_t *callback);
void popvault_crypt_deinit(void);

/* For the doveadm tools. Opens the mail's stream (authenticating the
   header and the first chunk of an encrypted message) and says whether
   it is stored as a PVLT container. -1 when the stream can't be opened:
   the cause is in mailbox_get_last_internal_error(); a damaged container
   fails here. */
struct mail;
int popvault_crypt_mail_was_encrypted(struct mail *mail, bool *encrypted_r);
/* doveadm popvault decrypt and verify, before any user: mail of users
   without crypt settings is then read through the crypt hooks too,
   which only tell containers apart (popvault_crypt_mail_was_encrypted()
   says encrypted; reading them fails) instead of handing the ciphertext
   out as the message. Other processes are unaffected. */
void popvault_crypt_see_containers(void);
/* For encrypt/decrypt, before they copy anything: 1 when the user's
   private keys unlock with what this process has (or there is no key
   pair yet: the first save creates one with the same secrets), 0 when
   the user has no crypt settings at all (nothing here opens encrypted
   mail), -1 with error_r when the keys do not unlock. */
int popvault_crypt_user_unlock(struct mail_user *user, const char **error_r);
/* TRUE when new mail of the user is stored encrypted. */
bool popvault_crypt_user_encrypts(struct mail_user *user);

/* For doveadm popvault key: the user's key store and the secrets this
   process has for it (master key when configured, popvault_key_password
   when set). -1 when encryption is off for the user or the master key
   can't be read. */
struct popvault_key_secrets;
int popvault_crypt_user_key_store(struct mail_user *user,
				  const char **keys_dir_r,
				  struct popvault_key_secrets *secrets_r,
				  const char **error_r);

/* Marks a message whose damage was found only mid-reply. */
#define POPVAULT_DAMAGED_KEYWORD "$PopvaultDamaged"

#endif
