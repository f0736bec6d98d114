#ifndef POPVAULT_CRYPT_CACHE_H
#define POPVAULT_CRYPT_CACHE_H

/* The encrypted cache (docs/encryption.md, "Encrypted cache"): for
   users whose mail may be encrypted, Dovecot's dovecot.index.cache is
   off; this per-mailbox file (dovecot.popvault.cache next to the index)
   holds what an IMAP client's folder view needs, each message's entry
   sealed with the user's cache key. */

#include "popvault-crypt-keys.h"
#include "popvault-crypt-delivered.h"

struct mail;
struct mailbox;

struct popvault_cache_key {
	unsigned char key[POPVAULT_CACHE_KEY_SIZE];
	/* names the key's generation in the file without revealing it */
	unsigned char id[16];
};

/* The key of the user whose mail box holds (the owner's, for a shared
   folder); a pointer valid as long as the mailbox. Returns 0 / -1. */
typedef int popvault_cache_key_func_t(struct mailbox *box,
				      const struct popvault_cache_key **key_r,
				      const char **error_r);

/* TRUE for a mailbox that gets the encrypted cache: its owner's mail
   may be encrypted (Dovecot's cache is off) and the session is IMAP. */
typedef bool popvault_cache_wanted_func_t(struct mailbox *box);

/* Fills key->id from key->key. */
void popvault_cache_key_set_id(struct popvault_cache_key *key);

/* Registers the cache's storage hooks; crypt hands over who gets it,
   with which key, and how entries made at delivery are opened. */
void popvault_crypt_cache_init(popvault_cache_key_func_t *get_key,
			       popvault_cache_wanted_func_t *wanted,
			       popvault_delivered_decrypt_func_t *decrypt);
void popvault_crypt_cache_deinit(void);

#endif
