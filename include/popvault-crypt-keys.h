#ifndef POPVAULT_CRYPT_KEYS_H
#define POPVAULT_CRYPT_KEYS_H

#include "popvault-container.h"

/* A user's key store: <home>/.popvault/keys/ (see docs/encryption.md).

     current          the key id (16 hex digits) new mail is encrypted to
     <key_id>.key     one file per key pair: public key in the clear, and
                      one "private <kind> ..." line per wrapped copy of
                      the private key: master-v1 (master key),
                      password-v1 (Argon2id of the user's password),
                      recovery-v1 (sealed to a recovery public key)
     recovery         the recovery public key new key pairs are sealed to

     .lock            held (fcntl) by whoever creates a key pair or adds
                      a wrap, so racing first deliveries and logins make
                      one key pair

   Files are written to a temporary name, fsync()ed, then renamed, mode
   0600 in a 0700 directory; a key file is complete on disk before
   "current" names it, and none is removed, so readers need no lock. */

#define POPVAULT_KEYS_SUBDIR ".popvault/keys"
#define POPVAULT_MASTER_KEY_SIZE 32
#define POPVAULT_RECOVERY_KEY_SIZE 32

/* What may wrap or unwrap private keys; every member may be NULL.
   Unwrapping tries master, then recovery, then password (the slow one). */
struct popvault_key_secrets {
	const unsigned char *master;		/* POPVAULT_MASTER_KEY_SIZE */
	const char *password;
	const unsigned char *recovery;		/* POPVAULT_RECOVERY_KEY_SIZE */
};

/* Argon2id cost for new password wraps (each wrap stores its own). */
struct popvault_pwhash_params {
	unsigned long long opslimit;
	size_t memlimit;
};
/* The unit tests lower these; everything else keeps the defaults. */
extern struct popvault_pwhash_params popvault_pwhash_params;

struct popvault_key_info {
	const char *key_id;
	time_t created;
	bool current;
	bool master, password, recovery;
};
ARRAY_DEFINE_TYPE(popvault_key_info, struct popvault_key_info);

/* setting is popvault_master_key: the key itself (32 bytes as 64 hex
   digits or base64, surrounding whitespace ignored: what Dovecot's
   config parser makes of `popvault_master_key = </path`), or the path of
   a file holding it ("<path" or "path", as a userdb field gives it).
   Returns 0, or -1 with error_r naming the setting and, when it looks
   like one, the file: never the value or the file's content. */
int popvault_master_key_read(const char *setting,
			     unsigned char key_r[POPVAULT_MASTER_KEY_SIZE],
			     const char **error_r);
/* The key text alone (len bytes, no NUL needed). Returns 0, or -1 with
   key_r zeroed; the caller names the source in its error. */
int popvault_master_key_parse(const char *text, size_t len,
			      unsigned char key_r[POPVAULT_MASTER_KEY_SIZE]);

/* TRUE when keys_dir has a current key pair (-1 on an I/O error). */
int popvault_keystore_exists(const char *keys_dir, const char **error_r);

/* The public key new mail is encrypted to. When there is no current key
   pair yet, creates one wrapped with every secret given (needs master or
   password, else fails); created_r tells. With secrets->master the
   current public key must carry a master-key wrap that opens (else -1:
   a key pair planted without the master key gets no mail). Returns 0,
   or -1 with error_r. */
int popvault_keystore_get_current(const char *keys_dir, const char *username,
				  const struct popvault_key_secrets *secrets,
				  unsigned char pk_r[POPVAULT_PK_SIZE],
				  bool *created_r, const char **error_r);

/* Creates the first key pair under the store's lock. Returns 1 when it
   did, 0 when there was one already (*pk_r is then its public key,
   unverified), -1 with error_r. */
int popvault_keystore_create(const char *keys_dir, const char *username,
			     const struct popvault_key_secrets *secrets,
			     unsigned char pk_r[POPVAULT_PK_SIZE],
			     const char **error_r);

/* Adds to every key pair the wrap it lacks for the master key or the
   password, unlocking it with the other one: a key pair made by LMTP in
   master+password mode gets the password wrap at the user's login, one
   made in password mode before a master key was set gets the master
   wrap. Needs both secrets (else does nothing); a password that does
   not open the existing password wraps adds none. added_r = key pairs
   changed. Returns 0 / -1. */
int popvault_keystore_add_wraps(const char *keys_dir, const char *username,
				const struct popvault_key_secrets *secrets,
				unsigned int *added_r, const char **error_r);

/* A new current key pair; the old ones stay so old mail stays readable.
   secrets must unlock the current key pair (so a mistyped password never
   locks the new one); a password-locked current key needs the password.
   Returns 0 / -1. */
int popvault_keystore_rotate(const char *keys_dir, const char *username,
			     const struct popvault_key_secrets *secrets,
			     unsigned char pk_r[POPVAULT_PK_SIZE],
			     const char **error_r);

/* Unwraps every key pair in keys_dir and adds the private keys to
   receiver. A key file that can't be read or unwrapped fails the whole
   call (fail loudly: it is tampering, a wrong master key or a stale
   password). count_r = number of keys added. Returns 0 / -1. */
int popvault_keystore_load_receiver(const char *keys_dir,
				    const char *username,
				    const struct popvault_key_secrets *secrets,
				    struct popvault_receiver *receiver,
				    unsigned int *count_r,
				    const char **error_r);

/* Wraps every private key with new_password (one Argon2id salt for all),
   replacing the old password wraps. secrets unlock them (old password,
   recovery key or master). Resumable: a key already wrapped with
   new_password is accepted. Returns 0 / -1. */
int popvault_keystore_set_password(const char *keys_dir, const char *username,
				   const struct popvault_key_secrets *secrets,
				   const char *new_password,
				   const char **error_r);

/* Creates a recovery key pair, seals every private key to it next to
   the seal to the published recovery key (seals to keys never published
   are dropped) and returns the recovery secret (shown once, never
   stored). Publishes nothing: the previous recovery key stays the one
   new key pairs are sealed to. secrets unlock the keys. Returns 0 / -1. */
int popvault_keystore_set_recovery(const char *keys_dir, const char *username,
				   const struct popvault_key_secrets *secrets,
				   unsigned char recovery_r[POPVAULT_RECOVERY_KEY_SIZE],
				   const char **recovery_id_r,
				   const char **error_r);

/* After the recovery key from popvault_keystore_set_recovery() has been
   shown: checks that every key file is sealed to it, makes it the
   published recovery key and then removes the seals to any other.
   Returns 0 / -1 (nothing published when a key file lacks the seal). */
int popvault_keystore_publish_recovery(const char *keys_dir,
	const unsigned char recovery[POPVAULT_RECOVERY_KEY_SIZE],
	const char **error_r);

/* Every key pair, oldest first; recovery_id_r is NULL without one. */
int popvault_keystore_list(const char *keys_dir, pool_t pool,
			   ARRAY_TYPE(popvault_key_info) *keys_r,
			   const char **recovery_id_r, const char **error_r);

/* "pvrk1-xxxxxxxx-...": 32 bytes in 8 groups of hex; the parser also
   takes it without the prefix or dashes. */
const char *
popvault_recovery_key_format(const unsigned char key[POPVAULT_RECOVERY_KEY_SIZE]);
int popvault_recovery_key_parse(const char *text,
				unsigned char key_r[POPVAULT_RECOVERY_KEY_SIZE],
				const char **error_r);

/* The encrypted cache's key (docs/encryption.md, "Encrypted cache"):
   POPVAULT_CACHE_KEY_SIZE random bytes in <keys_dir>/cache-key, sealed
   (a PVLT container) to the current public key pk, so that only a
   holder of the private keys (receiver) reads it. Missing, sealed to an
   older key pair (after rotation: a new cache generation) or not
   opening: a new key is made and sealed. Returns 0 / -1. */
#define POPVAULT_CACHE_KEY_SIZE 32
int popvault_keystore_get_cache_key(const char *keys_dir,
				    const unsigned char pk[POPVAULT_PK_SIZE],
				    struct popvault_receiver *receiver,
				    unsigned char key_r[POPVAULT_CACHE_KEY_SIZE],
				    const char **error_r);

#endif
