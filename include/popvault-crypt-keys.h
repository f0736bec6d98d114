#ifndef POPVAULT_CRYPT_KEYS_H
#define POPVAULT_CRYPT_KEYS_H

#include "popvault-container.h"

/* A user's key store: <home>/.popvault/keys/ (see docs/encryption.md).

     current          the key id (16 hex digits) new mail is encrypted to
     <key_id>.key     one file per key pair: public key in the clear, one
                      or more "private <kind> ..." lines, each a wrapped
                      copy of the private key (today: "master-v1")

   Files are written to a temporary name, fsync()ed, then renamed (key
   files) or linked (current, so two first deliveries racing agree on one
   key pair), mode 0600 in a 0700 directory. */

#define POPVAULT_KEYS_SUBDIR ".popvault/keys"
#define POPVAULT_MASTER_KEY_SIZE 32

/* setting is popvault_master_key: "<path" or "path". The file holds 32
   bytes as 64 hex digits or base64, surrounding whitespace ignored.
   Returns 0, or -1 with error_r naming the file and the cause. */
int popvault_master_key_read(const char *setting,
			     unsigned char key_r[POPVAULT_MASTER_KEY_SIZE],
			     const char **error_r);

/* The public key new mail is encrypted to. When there is no current key
   pair yet, creates one (needs master, else fails); created_r tells.
   Returns 0, or -1 with error_r. */
int popvault_keystore_get_current(const char *keys_dir, const char *username,
				  const unsigned char *master,
				  unsigned char pk_r[POPVAULT_PK_SIZE],
				  bool *created_r, const char **error_r);

/* Creates a key pair file; when make_current, it becomes "current" unless
   another process made one first (then that one wins, this key pair file
   is removed and *pk_r is the winner's). Returns 0 / -1. */
int popvault_keystore_create(const char *keys_dir, const char *username,
			     const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
			     unsigned char pk_r[POPVAULT_PK_SIZE],
			     const char **error_r);

/* Unwraps every key pair in keys_dir with the master key and adds the
   private keys to receiver. A key file that can't be read or unwrapped
   fails the whole call (fail loudly: it is either tampering or a wrong
   master key). count_r = number of keys added. Returns 0 / -1. */
int popvault_keystore_load_receiver(const char *keys_dir,
				    const char *username,
				    const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
				    struct popvault_receiver *receiver,
				    unsigned int *count_r,
				    const char **error_r);

#endif
