#ifndef POPVAULT_CRYPT_DELIVERED_H
#define POPVAULT_CRYPT_DELIVERED_H

/* Cache entries made at delivery (docs/encryption.md, "Entries made at
   delivery"). Dovecot parses every message it saves, and where its
   mail_cache_fields name imap.bodystructure (2.4's default) a plain
   user's first folder open then only reads dovecot.index.cache. An
   encrypting user's cache key needs the private key, which delivery
   does not have, so delivery seals what the first open needs (the
   header and BODYSTRUCTURE of that parse) as a PVLT container of its
   own, with the same public key and sender epoch as the message, into
   dovecot.popvault.delivered next to the index. The first IMAP open
   opens it (one X25519 per epoch, as for the messages) instead of
   decrypting each whole message, and moves it into the encrypted
   cache. */

struct mailbox;
struct popvault_sender;

/* Decrypts one PVLT container with the private keys of box's owner into
   out. 0 / -1 with error_r. */
typedef int popvault_delivered_decrypt_func_t(struct mailbox *box,
					      const unsigned char *data,
					      size_t size, buffer_t *out,
					      const char **error_r);

/* ---- delivery ---- */

/* Appends the entry of the message just saved into box under guid (the
   maildir file name popvault gave it, which stays its GUID). Failures
   are logged, never fatal: the first open then reads the message. */
void popvault_delivered_add(struct mailbox *box,
			    struct popvault_sender *sender, const char *guid,
			    const unsigned char *hdr, size_t hdr_size,
			    const char *bodystructure);

/* A session expunged mail from box: the file goes, so that no entry of
   a deleted message outlives it (pending entries of other messages
   are lost; their first open reads them). */
void popvault_delivered_drop(struct mailbox *box);

/* ---- the first open ---- */

struct popvault_delivered;

/* The file of the mailbox whose index is in index_dir, NULL when there
   is none (or it can't be read: logged). */
struct popvault_delivered *
popvault_delivered_open(struct mailbox *box, const char *index_dir,
			popvault_delivered_decrypt_func_t *decrypt);

/* The entry of the message with this GUID: 1 with the raw header in
   hdr_r (replacing its content) and BODYSTRUCTURE in pool, 0 when the
   file has none, -1 when it has one that does not open (logged once;
   never served). Either way the record counts as used. */
int popvault_delivered_take(struct popvault_delivered *dlv, const char *guid,
			    buffer_t *hdr_r, pool_t pool,
			    const char **bodystructure_r);

/* Writes the file back without the used records, or removes it when
   none is left or when every message has its cache entry now
   (all_filled). */
void popvault_delivered_close(struct popvault_delivered **dlv,
			      bool all_filled);

#endif
