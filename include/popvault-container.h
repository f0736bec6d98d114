#ifndef POPVAULT_CONTAINER_H
#define POPVAULT_CONTAINER_H

/* PVLT encrypted-message container: format + crypto.
   See docs/encryption.md for the byte layout and the security argument.
   Depends only on Dovecot's lib (buffer_t etc.), libsodium and libcrypto. */

#define POPVAULT_MAGIC_SIZE 8
/* the version written; POPVAULT_VERSION_V1 stays readable */
#define POPVAULT_VERSION 2
#define POPVAULT_VERSION_V1 1
#define POPVAULT_KEY_ID_SIZE 8
#define POPVAULT_PK_SIZE 32
#define POPVAULT_SK_SIZE 32
#define POPVAULT_SALT_SIZE 16
#define POPVAULT_DK_SIZE 32
#define POPVAULT_TAG_SIZE 16
#define POPVAULT_WRAPPED_DK_SIZE (POPVAULT_DK_SIZE + POPVAULT_TAG_SIZE)
/* magic(8) version(1) cipher(1) chunk_log2(1) flags(1) key_id(8)
   eph_pk(32) salt(16) wrapped_dk(48) */
#define POPVAULT_HEADER_SIZE 116
#define POPVAULT_HEADER_WRAP_AAD_SIZE (POPVAULT_HEADER_SIZE - \
				       POPVAULT_WRAPPED_DK_SIZE)

#define POPVAULT_CHUNK_LOG2_MIN 12
#define POPVAULT_CHUNK_LOG2_MAX 20
#define POPVAULT_CHUNK_LOG2_DEFAULT 16

/* Sender epoch rotation defaults */
#define POPVAULT_EPOCH_MAX_MESSAGES 10000
#define POPVAULT_EPOCH_MAX_SECS 3600

/* Receiver epoch-secret cache size */
#define POPVAULT_RECEIVER_CACHE_SIZE 16

extern const unsigned char popvault_magic[POPVAULT_MAGIC_SIZE];

enum popvault_cipher {
	POPVAULT_CIPHER_AES256GCM = 1,
	POPVAULT_CIPHER_XCHACHA20POLY1305 = 2,
};

struct popvault_header {
	uint8_t version;
	uint8_t cipher;
	uint8_t chunk_log2;
	uint8_t flags;
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	unsigned char eph_pk[POPVAULT_PK_SIZE];
	/* random; v1: HKDF salt of the message's KEK, v2: the key wrap's
	   nonce under the epoch's KEK */
	unsigned char salt[POPVAULT_SALT_SIZE];
	unsigned char wrapped_dk[POPVAULT_WRAPPED_DK_SIZE];
};

struct popvault_sender;
struct popvault_receiver;
/* Per-message AEAD state: data key, header hash, cipher context. */
struct popvault_msg_cipher;

/* Must be called once before anything else (calls sodium_init()).
   Returns 0 on success, -1 on failure. Safe to call many times. */
int popvault_crypto_init(void);
/* Key wraps use libsodium's AES-GCM where the CPU allows (the default
   after popvault_crypto_init()); FALSE makes them use OpenSSL's, for the
   tests of that path. The bytes are the same. Returns the old setting. */
bool popvault_crypto_set_sodium_aes(bool enable);
/* Frees what popvault_crypto_init() fetched from OpenSSL. */
void popvault_crypto_deinit(void);

/* TRUE if data begins with the PVLT magic. size may be < magic size (then
   FALSE unless... never TRUE). */
bool popvault_container_is_encrypted(const unsigned char *data, size_t size);

/* Parse a header. Never crashes on any input (fuzz target). Returns 0 on
   success, -1 with a static error string on failure. */
int popvault_header_parse(const unsigned char *data, size_t size,
			  struct popvault_header *hdr_r, const char **error_r);
void popvault_header_serialize(const struct popvault_header *hdr,
			       unsigned char out[POPVAULT_HEADER_SIZE]);

/* Compute plaintext size from total container size (header included).
   Returns 0 on success, -1 if the length is impossible. */
int popvault_container_plain_size(uoff_t total_file_size, uint8_t chunk_log2,
				  uoff_t *plain_r);
/* Inverse: container size for a given plaintext size. */
uoff_t popvault_container_encrypted_size(uoff_t plain_size, uint8_t chunk_log2);

/* key_id = first 8 bytes of BLAKE2b-256(pk) */
void popvault_key_id(const unsigned char pk[POPVAULT_PK_SIZE],
		     unsigned char key_id_r[POPVAULT_KEY_ID_SIZE]);
void popvault_keypair_generate(unsigned char pk_r[POPVAULT_PK_SIZE],
			       unsigned char sk_r[POPVAULT_SK_SIZE]);

/* RFC 5869 HKDF-SHA256 (salt may be NULL/0 => zero salt). out_len <= 8160. */
void popvault_hkdf_sha256(const unsigned char *salt, size_t salt_len,
			  const unsigned char *ikm, size_t ikm_len,
			  const unsigned char *info, size_t info_len,
			  unsigned char *out, size_t out_len);

/* ---- sender (delivery side, public key only) ---- */
/* Returns NULL if pk is invalid (low-order point) or cipher unknown. */
struct popvault_sender *
popvault_sender_create(const unsigned char pk[POPVAULT_PK_SIZE],
		       enum popvault_cipher cipher);
void popvault_sender_free(struct popvault_sender **sender);
/* 12..20; returns -1 if out of range */
int popvault_sender_set_chunk_log2(struct popvault_sender *sender,
				   uint8_t chunk_log2);
/* Override epoch rotation limits (0 = keep default). */
void popvault_sender_set_rotation(struct popvault_sender *sender,
				  unsigned int max_messages,
				  unsigned int max_secs);
/* Number of epochs (ephemeral key pairs) generated so far. */
unsigned int popvault_sender_get_epoch_count(const struct popvault_sender *sender);
/* Start a new message: fills the header bytes and returns the per-message
   cipher state (for encryption). Returns 0 / -1 with error. */
int popvault_sender_begin_message(struct popvault_sender *sender,
				  unsigned char header_r[POPVAULT_HEADER_SIZE],
				  struct popvault_msg_cipher **mc_r,
				  const char **error_r);

/* ---- receiver (read side) ---- */
struct popvault_receiver *popvault_receiver_create(void);
void popvault_receiver_free(struct popvault_receiver **receiver);
/* Add a private key (pk derived from it). Returns 0, or -1 if invalid. */
int popvault_receiver_add_key(struct popvault_receiver *receiver,
			      const unsigned char sk[POPVAULT_SK_SIZE]);
/* Number of X25519 operations done so far (cache misses). */
uint64_t popvault_receiver_get_x25519_count(const struct popvault_receiver *receiver);
/* Parse the header, find the key, unwrap DK. Never crashes on hostile input.
   error_r is a "popvault: ..." message (valid until the next data-stack
   frame ends). Returns 0 / -1. */
int popvault_receiver_open(struct popvault_receiver *receiver,
			   const unsigned char *data, size_t size,
			   struct popvault_header *hdr_r,
			   struct popvault_msg_cipher **mc_r,
			   const char **error_r);

/* ---- per-message chunk AEAD ---- */
size_t popvault_msg_cipher_chunk_size(const struct popvault_msg_cipher *mc);
uint8_t popvault_msg_cipher_chunk_log2(const struct popvault_msg_cipher *mc);
/* out must have room for plain_size + POPVAULT_TAG_SIZE. Returns 0 / -1. */
int popvault_chunk_encrypt(struct popvault_msg_cipher *mc, uint64_t idx,
			   bool final, const unsigned char *plain,
			   size_t plain_size, unsigned char *out);
/* plain_out must have room for ct_size - POPVAULT_TAG_SIZE bytes. On
   failure plain_out is zeroed. Returns 0 / -1 (authentication failure). */
int popvault_chunk_decrypt(struct popvault_msg_cipher *mc, uint64_t idx,
			   bool final, const unsigned char *ct, size_t ct_size,
			   unsigned char *plain_out);
void popvault_msg_cipher_free(struct popvault_msg_cipher **mc);

/* Opening a chunk piecewise, so that a reader can decrypt ciphertext
   where it lies (in its parent stream's buffer) instead of collecting a
   copy first. Only for AES-GCM decryption (OpenSSL's GCM is
   incremental; libsodium's XChaCha20-Poly1305 is not). The plaintext
   written by update() is unauthenticated until finish() returns 0; on
   -1 the caller must wipe and discard all of it. */
bool popvault_msg_cipher_can_stream(const struct popvault_msg_cipher *mc);
int popvault_chunk_stream_begin(struct popvault_msg_cipher *mc, uint64_t idx,
				bool final);
int popvault_chunk_stream_update(struct popvault_msg_cipher *mc,
				 const unsigned char *ct, size_t size,
				 unsigned char *plain_out);
int popvault_chunk_stream_finish(struct popvault_msg_cipher *mc,
				 const unsigned char tag[POPVAULT_TAG_SIZE]);

/* ---- one-shot helpers (tests, bench, fuzzing) ---- */
int popvault_encrypt_buffer(struct popvault_sender *sender,
			    const unsigned char *plain, size_t size,
			    buffer_t *out, const char **error_r);
/* Decrypts and authenticates a whole container. Fuzz target: never crashes.
   On failure out may contain nothing from the failing chunk onwards. */
int popvault_decrypt_buffer(struct popvault_receiver *receiver,
			    const unsigned char *data, size_t size,
			    buffer_t *out, const char **error_r);

#endif
