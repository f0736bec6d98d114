/* popvault: PVLT container format and crypto (libsodium + libcrypto).
   Writes v2, reads v1 and v2; docs/encryption.md has both layouts. */

#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "ioloop.h"
#include "hex-binary.h"
#include "popvault-container.h"

#include <sodium.h>
#include <openssl/evp.h>

#define HASH_SIZE 32
/* v1 chunk AAD: SHA-256(header) || final flag */
#define AAD_V1_SIZE (HASH_SIZE + 1)
/* v2 chunk AAD: header || final flag */
#define AAD_V2_SIZE (POPVAULT_HEADER_SIZE + 1)
#define GCM_NONCE_SIZE 12
#define XCHACHA_NONCE_SIZE 24
#define NONCE_MAX_SIZE XCHACHA_NONCE_SIZE

/* The epoch secret is the same in both versions. v1 derives a KEK per
   message from it and the header's salt; v2 derives one KEK per epoch
   and uses the header's salt as the key wrap's random nonce. */
#define INFO_EPOCH "popvault v1 epoch"
#define INFO_KEK "popvault v1 kek"
#define INFO_KEK_V2 "popvault v2 epoch kek"

/* v2 wraps every data key of an epoch under one KEK with a random
   nonce: AES-GCM allows 2^32 random 96-bit nonces per key (NIST SP
   800-38D); the sender stays far below that whatever the rotation is
   set to. */
#define EPOCH_MAX_MESSAGES_LIMIT (1U << 20)

/* 0x89 is not a valid first byte of an RFC 5322 header line (8-bit, and not
   printable US-ASCII), so no legacy plaintext message can start with it. */
const unsigned char popvault_magic[POPVAULT_MAGIC_SIZE] = {
	0x89, 'P', 'V', 'L', 'T', '\r', '\n', 0x1a
};

struct popvault_msg_cipher {
	uint8_t cipher;
	uint8_t chunk_log2;
	bool encrypt;
	unsigned char key[POPVAULT_DK_SIZE];
	/* the chunk AAD (see AAD_V1_SIZE, AAD_V2_SIZE); its last byte is
	   the final-chunk flag */
	unsigned char aad[AAD_V2_SIZE];
	unsigned int aad_size;
	EVP_CIPHER_CTX *evp; /* AES-GCM only */
	/* AES-GCM key wraps, when the CPU has AES-NI and PCLMUL (else evp):
	   libsodium keys in a tenth of the instructions of an EVP re-key
	   and opens a 32-byte wrap in under half of EVP's, the same
	   AES-GCM bytes. Bulk chunks stay with OpenSSL, which is faster
	   per byte. */
	crypto_aead_aes256gcm_state *gcm_state;
	/* evp has no cipher yet (a new context) */
	bool evp_fresh;
	/* the key goes into evp together with the first nonce */
	bool key_pending;
	/* the receiver whose spare contexts evp goes back to, or NULL */
	struct popvault_receiver *owner;
	/* in a struct guarded_cipher */
	bool guarded;
};

/* A key wrap cipher that lives as long as an epoch (a sender's, or a
   receiver's cached v2 epoch) holds the epoch's KEK or its AES key
   schedule: it and its libsodium AES-GCM state share one guarded
   allocation (sodium_malloc: own pages, wiped by sodium_free). Per
   message ciphers stay on the heap, wiped when freed: a guarded
   allocation costs system calls. */
struct guarded_cipher {
	crypto_aead_aes256gcm_state gcm_state;
	struct popvault_msg_cipher mc;
};

struct popvault_sender {
	uint8_t cipher;
	uint8_t chunk_log2;
	unsigned char user_pk[POPVAULT_PK_SIZE];
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];

	unsigned int max_messages, max_secs;
	unsigned int epoch_count;
	/* current epoch */
	bool epoch_valid;
	unsigned int epoch_messages;
	time_t epoch_started;
	unsigned char eph_pk[POPVAULT_PK_SIZE];
	/* keyed with the epoch's v2 KEK: wraps each message's data key */
	struct popvault_msg_cipher *epoch_wrap;
};

struct popvault_receiver_key {
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	unsigned char sk[POPVAULT_SK_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE];
};

struct popvault_epoch_cache {
	bool used;
	uint64_t last_use;
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	unsigned char eph_pk[POPVAULT_PK_SIZE];
	unsigned char epoch_secret[HASH_SIZE];
	unsigned char kek_v2[POPVAULT_DK_SIZE];
	/* keyed with kek_v2 for the cipher of the first v2 message read
	   from this epoch, so that unwrapping costs no key schedule */
	struct popvault_msg_cipher *wrap_v2;
};

/* Spare AES-GCM decryption contexts kept by a receiver. Reading a
   message needs two (key unwrap, then the data key); creating and
   freeing them per message (EVP_CIPHER_CTX_new(), the provider's context
   allocation, EVP_CIPHER_CTX_free()) cost more than a key change on a
   context that already has its cipher. A spare still holds the key
   schedule of its last use: it lives only as long as the receiver (the
   session), and EVP_CIPHER_CTX_free() cleanses it. */
#define RECEIVER_SPARE_CTX_MAX 4

/* Key rotation adds a key pair per rotation; a receiver holds them all
   in its own locked pages, so there is a fixed upper bound. */
#define RECEIVER_KEYS_MAX 256

struct popvault_receiver {
	/* sodium_allocarray(): the private keys sit in their own pages,
	   mlock()ed (kept out of swap where the system allows), guarded,
	   and wiped by sodium_free() */
	struct popvault_receiver_key *keys;
	unsigned int keys_count;
	/* the epoch secrets and KEKs live as long as the session: in
	   guarded pages too (POPVAULT_RECEIVER_CACHE_SIZE entries) */
	struct popvault_epoch_cache *cache;
	uint64_t use_counter;
	uint64_t x25519_count;
	EVP_CIPHER_CTX *spare_ctx[RECEIVER_SPARE_CTX_MAX];
	unsigned int spare_ctx_count;
};

/* OpenSSL 3 looks an algorithm up in its provider tables on every
   EVP_aes_256_gcm()/EVP_sha256() init. Fetched once per process, reading
   a message no longer pays for that (callgrind: ~13 k instructions per
   message). The digest context is reset after each digest, so no
   hash state of key material stays in it (pv_sha256_parts). */
static EVP_CIPHER *pv_aes_gcm;
static EVP_MD *pv_sha256;
static EVP_MD_CTX *pv_md_ctx;
static bool pv_sodium_gcm;

int popvault_crypto_init(void)
{
	if (sodium_init() < 0)
		return -1;
	pv_sodium_gcm = crypto_aead_aes256gcm_is_available() != 0;
	if (pv_aes_gcm == NULL)
		pv_aes_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	if (pv_sha256 == NULL)
		pv_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (pv_md_ctx == NULL)
		pv_md_ctx = EVP_MD_CTX_new();
	/* AES-GCM is required; SHA-256 falls back to libsodium */
	return pv_aes_gcm == NULL ? -1 : 0;
}

bool popvault_crypto_set_sodium_aes(bool enable)
{
	bool old = pv_sodium_gcm;

	pv_sodium_gcm = enable && crypto_aead_aes256gcm_is_available() != 0;
	return old;
}

void popvault_crypto_deinit(void)
{
	EVP_MD_CTX_free(pv_md_ctx);
	pv_md_ctx = NULL;
	EVP_MD_free(pv_sha256);
	pv_sha256 = NULL;
	EVP_CIPHER_free(pv_aes_gcm);
	pv_aes_gcm = NULL;
}

struct pv_bytes {
	const unsigned char *data;
	size_t size;
};

/* SHA-256 of the concatenated parts. OpenSSL's assembly is about twice as
   fast as libsodium's portable C here; libsodium (same function, same
   result) covers an OpenSSL failure so callers cannot fail. */
static void pv_sha256_parts(const struct pv_bytes *parts, unsigned int count,
			    unsigned char out[HASH_SIZE])
{
	crypto_hash_sha256_state st;
	unsigned int i;
	bool ret;

	if (pv_sha256 != NULL && pv_md_ctx != NULL &&
	    EVP_DigestInit_ex2(pv_md_ctx, pv_sha256, NULL) == 1) {
		for (i = 0; i < count; i++) {
			if (EVP_DigestUpdate(pv_md_ctx, parts[i].data,
					     parts[i].size) != 1)
				break;
		}
		ret = i == count &&
			EVP_DigestFinal_ex(pv_md_ctx, out, NULL) == 1;
		/* the context keeps the last chaining value, which for the
		   outer hash of an HMAC is the HKDF output (a KEK, an epoch
		   secret): resetting frees the state with OPENSSL_clear_free */
		(void)EVP_MD_CTX_reset(pv_md_ctx);
		if (ret)
			return;
	}
	crypto_hash_sha256_init(&st);
	for (i = 0; i < count; i++)
		crypto_hash_sha256_update(&st, parts[i].data, parts[i].size);
	crypto_hash_sha256_final(&st, out);
	sodium_memzero(&st, sizeof(st));
}

#define SHA256_BLOCK_SIZE 64

/* RFC 2104 HMAC-SHA256 over msg parts (at most 3). */
static void pv_hmac_sha256(const unsigned char *key, size_t key_len,
			   const struct pv_bytes *msg, unsigned int msg_count,
			   unsigned char out[HASH_SIZE])
{
	unsigned char k[SHA256_BLOCK_SIZE], pad[SHA256_BLOCK_SIZE];
	unsigned char inner[HASH_SIZE];
	struct pv_bytes parts[4];
	unsigned int i;

	i_assert(msg_count < N_ELEMENTS(parts));
	memset(k, 0, sizeof(k));
	if (key_len > sizeof(k)) {
		parts[0].data = key; parts[0].size = key_len;
		pv_sha256_parts(parts, 1, k);
	} else {
		memcpy(k, key, key_len);
	}
	for (i = 0; i < sizeof(pad); i++)
		pad[i] = k[i] ^ 0x36;
	parts[0].data = pad; parts[0].size = sizeof(pad);
	for (i = 0; i < msg_count; i++)
		parts[i + 1] = msg[i];
	pv_sha256_parts(parts, msg_count + 1, inner);

	for (i = 0; i < sizeof(pad); i++)
		pad[i] = k[i] ^ 0x5c;
	parts[1].data = inner; parts[1].size = sizeof(inner);
	pv_sha256_parts(parts, 2, out);

	sodium_memzero(k, sizeof(k));
	sodium_memzero(pad, sizeof(pad));
	sodium_memzero(inner, sizeof(inner));
}

bool popvault_container_is_encrypted(const unsigned char *data, size_t size)
{
	return size >= POPVAULT_MAGIC_SIZE &&
		memcmp(data, popvault_magic, POPVAULT_MAGIC_SIZE) == 0;
}

int popvault_header_parse(const unsigned char *data, size_t size,
			  struct popvault_header *hdr_r, const char **error_r)
{
	const unsigned char *p = data;

	i_zero(hdr_r);
	if (data == NULL || size < POPVAULT_MAGIC_SIZE ||
	    memcmp(data, popvault_magic, POPVAULT_MAGIC_SIZE) != 0) {
		*error_r = "bad magic";
		return -1;
	}
	if (size < POPVAULT_HEADER_SIZE) {
		*error_r = "truncated header";
		return -1;
	}
	p += POPVAULT_MAGIC_SIZE;
	hdr_r->version = *p++;
	hdr_r->cipher = *p++;
	hdr_r->chunk_log2 = *p++;
	hdr_r->flags = *p++;
	memcpy(hdr_r->key_id, p, sizeof(hdr_r->key_id)); p += sizeof(hdr_r->key_id);
	memcpy(hdr_r->eph_pk, p, sizeof(hdr_r->eph_pk)); p += sizeof(hdr_r->eph_pk);
	memcpy(hdr_r->salt, p, sizeof(hdr_r->salt)); p += sizeof(hdr_r->salt);
	memcpy(hdr_r->wrapped_dk, p, sizeof(hdr_r->wrapped_dk));
	p += sizeof(hdr_r->wrapped_dk);
	i_assert((size_t)(p - data) == POPVAULT_HEADER_SIZE);

	if (hdr_r->version != POPVAULT_VERSION &&
	    hdr_r->version != POPVAULT_VERSION_V1) {
		*error_r = "unsupported version";
		return -1;
	}
	if (hdr_r->cipher != POPVAULT_CIPHER_AES256GCM &&
	    hdr_r->cipher != POPVAULT_CIPHER_XCHACHA20POLY1305) {
		*error_r = "unknown cipher";
		return -1;
	}
	if (hdr_r->chunk_log2 < POPVAULT_CHUNK_LOG2_MIN ||
	    hdr_r->chunk_log2 > POPVAULT_CHUNK_LOG2_MAX) {
		*error_r = "invalid chunk size";
		return -1;
	}
	if (hdr_r->flags != 0) {
		*error_r = "unknown flags";
		return -1;
	}
	return 0;
}

void popvault_header_serialize(const struct popvault_header *hdr,
			       unsigned char out[POPVAULT_HEADER_SIZE])
{
	unsigned char *p = out;

	memcpy(p, popvault_magic, POPVAULT_MAGIC_SIZE); p += POPVAULT_MAGIC_SIZE;
	*p++ = hdr->version;
	*p++ = hdr->cipher;
	*p++ = hdr->chunk_log2;
	*p++ = hdr->flags;
	memcpy(p, hdr->key_id, sizeof(hdr->key_id)); p += sizeof(hdr->key_id);
	memcpy(p, hdr->eph_pk, sizeof(hdr->eph_pk)); p += sizeof(hdr->eph_pk);
	memcpy(p, hdr->salt, sizeof(hdr->salt)); p += sizeof(hdr->salt);
	memcpy(p, hdr->wrapped_dk, sizeof(hdr->wrapped_dk));
	p += sizeof(hdr->wrapped_dk);
	i_assert((size_t)(p - out) == POPVAULT_HEADER_SIZE);
}

int popvault_container_plain_size(uoff_t total_file_size, uint8_t chunk_log2,
				  uoff_t *plain_r)
{
	uoff_t body, chunk, full, n_full, rem;

	if (chunk_log2 < POPVAULT_CHUNK_LOG2_MIN ||
	    chunk_log2 > POPVAULT_CHUNK_LOG2_MAX)
		return -1;
	if (total_file_size < POPVAULT_HEADER_SIZE + POPVAULT_TAG_SIZE)
		return -1;
	body = total_file_size - POPVAULT_HEADER_SIZE;
	if (body == POPVAULT_TAG_SIZE) {
		/* empty message: one empty final chunk */
		*plain_r = 0;
		return 0;
	}
	chunk = (uoff_t)1 << chunk_log2;
	full = chunk + POPVAULT_TAG_SIZE;
	n_full = body / full;
	rem = body % full;
	if (rem == 0) {
		*plain_r = n_full * chunk;
		return 0;
	}
	if (rem <= POPVAULT_TAG_SIZE) {
		/* last chunk would be empty or shorter than a tag */
		return -1;
	}
	*plain_r = n_full * chunk + (rem - POPVAULT_TAG_SIZE);
	return 0;
}

uoff_t popvault_container_encrypted_size(uoff_t plain_size, uint8_t chunk_log2)
{
	uoff_t chunk = (uoff_t)1 << chunk_log2;
	uoff_t n_chunks = plain_size == 0 ? 1 :
		(plain_size + chunk - 1) / chunk;

	return POPVAULT_HEADER_SIZE + plain_size + n_chunks * POPVAULT_TAG_SIZE;
}

void popvault_key_id(const unsigned char pk[POPVAULT_PK_SIZE],
		     unsigned char key_id_r[POPVAULT_KEY_ID_SIZE])
{
	unsigned char hash[32];

	crypto_generichash(hash, sizeof(hash), pk, POPVAULT_PK_SIZE, NULL, 0);
	memcpy(key_id_r, hash, POPVAULT_KEY_ID_SIZE);
}

void popvault_keypair_generate(unsigned char pk_r[POPVAULT_PK_SIZE],
			       unsigned char sk_r[POPVAULT_SK_SIZE])
{
	crypto_box_keypair(pk_r, sk_r);
}

/* ---- HKDF-SHA256 (RFC 5869) ---- */

void popvault_hkdf_sha256(const unsigned char *salt, size_t salt_len,
			  const unsigned char *ikm, size_t ikm_len,
			  const unsigned char *info, size_t info_len,
			  unsigned char *out, size_t out_len)
{
	static const unsigned char zero_salt[HASH_SIZE] = { 0 };
	unsigned char prk[HASH_SIZE], t[HASH_SIZE];
	struct pv_bytes msg[3];
	size_t done = 0, n;
	unsigned char counter = 1;
	unsigned int count;

	i_assert(out_len <= 255 * HASH_SIZE);
	if (salt == NULL || salt_len == 0) {
		salt = zero_salt;
		salt_len = sizeof(zero_salt);
	}
	/* extract */
	msg[0].data = ikm; msg[0].size = ikm_len;
	pv_hmac_sha256(salt, salt_len, msg, 1, prk);
	/* expand */
	while (done < out_len) {
		count = 0;
		if (counter > 1) {
			msg[count].data = t; msg[count++].size = sizeof(t);
		}
		msg[count].data = info; msg[count++].size = info_len;
		msg[count].data = &counter; msg[count++].size = 1;
		pv_hmac_sha256(prk, sizeof(prk), msg, count, t);
		n = I_MIN(out_len - done, sizeof(t));
		memcpy(out + done, t, n);
		done += n;
		counter++;
	}
	sodium_memzero(prk, sizeof(prk));
	sodium_memzero(t, sizeof(t));
}

static void
derive_epoch_secret(const unsigned char shared[crypto_scalarmult_BYTES],
		    const unsigned char eph_pk[POPVAULT_PK_SIZE],
		    const unsigned char user_pk[POPVAULT_PK_SIZE],
		    unsigned char secret_r[HASH_SIZE])
{
	unsigned char ikm[crypto_scalarmult_BYTES + 2 * POPVAULT_PK_SIZE];

	memcpy(ikm, shared, crypto_scalarmult_BYTES);
	memcpy(ikm + crypto_scalarmult_BYTES, eph_pk, POPVAULT_PK_SIZE);
	memcpy(ikm + crypto_scalarmult_BYTES + POPVAULT_PK_SIZE, user_pk,
	       POPVAULT_PK_SIZE);
	popvault_hkdf_sha256(NULL, 0, ikm, sizeof(ikm),
			     (const unsigned char *)INFO_EPOCH,
			     strlen(INFO_EPOCH), secret_r, HASH_SIZE);
	sodium_memzero(ikm, sizeof(ikm));
}

static void
derive_kek(const unsigned char epoch_secret[HASH_SIZE],
	   const unsigned char salt[POPVAULT_SALT_SIZE],
	   unsigned char kek_r[POPVAULT_DK_SIZE])
{
	popvault_hkdf_sha256(salt, POPVAULT_SALT_SIZE, epoch_secret, HASH_SIZE,
			     (const unsigned char *)INFO_KEK, strlen(INFO_KEK),
			     kek_r, POPVAULT_DK_SIZE);
}

static void
derive_kek_v2(const unsigned char epoch_secret[HASH_SIZE],
	      unsigned char kek_r[POPVAULT_DK_SIZE])
{
	popvault_hkdf_sha256(NULL, 0, epoch_secret, HASH_SIZE,
			     (const unsigned char *)INFO_KEK_V2,
			     strlen(INFO_KEK_V2), kek_r, POPVAULT_DK_SIZE);
}

/* ---- AEAD primitives ---- */

static size_t nonce_size(uint8_t cipher)
{
	return cipher == POPVAULT_CIPHER_XCHACHA20POLY1305 ?
		XCHACHA_NONCE_SIZE : GCM_NONCE_SIZE;
}

/* chunk nonce: the chunk index, big-endian, zero-padded on the left */
static void make_nonce(uint8_t cipher, uint64_t idx,
		       unsigned char nonce[NONCE_MAX_SIZE])
{
	size_t size = nonce_size(cipher);
	unsigned int i;

	memset(nonce, 0, size - 8);
	for (i = 0; i < 8; i++)
		nonce[size - 1 - i] = (unsigned char)(idx >> (8 * i));
}

/* The key wrap's nonce. v1: chunk index 0 (the KEK was unique per
   message). v2: the header's random salt, its first 12 bytes for
   AES-GCM, all 16 zero-padded to 24 for XChaCha20-Poly1305. */
static void make_wrap_nonce(const struct popvault_header *hdr,
			    unsigned char nonce[NONCE_MAX_SIZE])
{
	if (hdr->version == POPVAULT_VERSION_V1) {
		make_nonce(hdr->cipher, 0, nonce);
		return;
	}
	memset(nonce, 0, NONCE_MAX_SIZE);
	memcpy(nonce, hdr->salt, I_MIN(sizeof(hdr->salt),
				       nonce_size(hdr->cipher)));
}

static struct popvault_msg_cipher *msg_cipher_alloc(bool guarded)
{
	struct guarded_cipher *gc;

	if (!guarded)
		return i_new(struct popvault_msg_cipher, 1);
	gc = sodium_malloc(sizeof(*gc));
	if (gc == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "sodium_malloc() failed: %m");
	memset(gc, 0, sizeof(*gc));
	gc->mc.guarded = TRUE;
	return &gc->mc;
}

static struct popvault_msg_cipher *
msg_cipher_create(uint8_t cipher, uint8_t chunk_log2, bool encrypt,
		  const unsigned char key[POPVAULT_DK_SIZE],
		  const unsigned char header[POPVAULT_HEADER_SIZE],
		  uint8_t version, struct popvault_receiver *owner,
		  bool guarded)
{
	struct popvault_msg_cipher *mc;

	i_assert(owner == NULL || !encrypt);
	mc = msg_cipher_alloc(guarded);
	mc->cipher = cipher;
	mc->chunk_log2 = chunk_log2;
	mc->encrypt = encrypt;
	memcpy(mc->key, key, sizeof(mc->key));
	if (header == NULL)
		;
	else if (version == POPVAULT_VERSION_V1) {
		struct pv_bytes part = { header, POPVAULT_HEADER_SIZE };

		pv_sha256_parts(&part, 1, mc->aad);
		mc->aad_size = AAD_V1_SIZE;
	} else {
		/* GHASH/Poly1305 over 117 bytes costs far less than
		   hashing the header per message did */
		memcpy(mc->aad, header, POPVAULT_HEADER_SIZE);
		mc->aad_size = AAD_V2_SIZE;
	}

	if (cipher != POPVAULT_CIPHER_AES256GCM)
		return mc;
	if (owner != NULL && owner->spare_ctx_count > 0) {
		/* cipher and direction stay from the context's first use:
		   only the key changes */
		mc->evp = owner->spare_ctx[--owner->spare_ctx_count];
	} else {
		mc->evp = EVP_CIPHER_CTX_new();
		if (mc->evp == NULL || pv_aes_gcm == NULL) {
			popvault_msg_cipher_free(&mc);
			return NULL;
		}
		mc->evp_fresh = TRUE;
	}
	mc->key_pending = TRUE;
	mc->owner = owner;
	return mc;
}

/* Sets the nonce of the next AES-GCM operation, and with the first one
   the key (and for a new context the cipher): OpenSSL 3 spends ~0.8 k
   instructions of parameter plumbing on every init call, so a
   one-chunk message makes one call instead of two. The default GCM IV
   length is GCM_NONCE_SIZE (96 bits). */
static int gcm_set_nonce(struct popvault_msg_cipher *mc,
			 const unsigned char nonce[NONCE_MAX_SIZE])
{
	if (EVP_CipherInit_ex2(mc->evp, mc->evp_fresh ? pv_aes_gcm : NULL,
			       mc->key_pending ? mc->key : NULL, nonce,
			       mc->encrypt ? 1 : 0, NULL) != 1)
		return -1;
	mc->evp_fresh = FALSE;
	mc->key_pending = FALSE;
	return 0;
}

/* A cipher for key wraps (no chunk AAD): see gcm_state. Without an
   owner it is an epoch's (v1 keys one per message, with the receiver
   as owner), and guarded (struct guarded_cipher). */
static struct popvault_msg_cipher *
wrap_cipher_create(uint8_t cipher, bool encrypt,
		   const unsigned char key[POPVAULT_DK_SIZE],
		   struct popvault_receiver *owner)
{
	bool guarded = owner == NULL;
	struct popvault_msg_cipher *mc;

	if (cipher != POPVAULT_CIPHER_AES256GCM || !pv_sodium_gcm) {
		return msg_cipher_create(cipher, 0, encrypt, key, NULL,
					 POPVAULT_VERSION, owner, guarded);
	}
	mc = msg_cipher_alloc(guarded);
	mc->cipher = cipher;
	mc->encrypt = encrypt;
	/* malloc()ed memory is 16-byte aligned, as the state needs, and
	   so is the guarded one (struct guarded_cipher's size is a
	   multiple of the state's alignment) */
	mc->gcm_state = guarded ?
		&(container_of(mc, struct guarded_cipher, mc))->gcm_state :
		i_new(crypto_aead_aes256gcm_state, 1);
	(void)crypto_aead_aes256gcm_beforenm(mc->gcm_state, key);
	return mc;
}

void popvault_msg_cipher_free(struct popvault_msg_cipher **_mc)
{
	struct popvault_msg_cipher *mc = *_mc;
	struct popvault_receiver *owner;

	if (mc == NULL)
		return;
	*_mc = NULL;
	owner = mc->owner;
	/* only a context that has its cipher goes back to the spares */
	if (mc->evp != NULL && !mc->evp_fresh && owner != NULL &&
	    owner->spare_ctx_count < N_ELEMENTS(owner->spare_ctx))
		owner->spare_ctx[owner->spare_ctx_count++] = mc->evp;
	else if (mc->evp != NULL)
		EVP_CIPHER_CTX_free(mc->evp);
	if (mc->guarded) {
		/* wipes the state and the key with the pages */
		sodium_free(container_of(mc, struct guarded_cipher, mc));
		return;
	}
	if (mc->gcm_state != NULL) {
		sodium_memzero(mc->gcm_state, sizeof(*mc->gcm_state));
		i_free(mc->gcm_state);
	}
	sodium_memzero(mc, sizeof(*mc));
	i_free(mc);
}

size_t popvault_msg_cipher_chunk_size(const struct popvault_msg_cipher *mc)
{
	return (size_t)1 << mc->chunk_log2;
}

uint8_t popvault_msg_cipher_chunk_log2(const struct popvault_msg_cipher *mc)
{
	return mc->chunk_log2;
}

static int
aead_seal(struct popvault_msg_cipher *mc,
	  const unsigned char nonce[NONCE_MAX_SIZE],
	  const unsigned char *aad, size_t aad_size,
	  const unsigned char *in, size_t size, unsigned char *out)
{
	if (mc->gcm_state != NULL) {
		return crypto_aead_aes256gcm_encrypt_detached_afternm(
			out, out + size, NULL, in, size, aad, aad_size,
			NULL, nonce, mc->gcm_state) == 0 ? 0 : -1;
	}
	if (mc->cipher == POPVAULT_CIPHER_XCHACHA20POLY1305) {
		if (crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
			out, out + size, NULL, in, size, aad, aad_size,
			NULL, nonce, mc->key) != 0)
			return -1;
		return 0;
	} else {
		int len;

		i_assert(mc->encrypt);
		if (size > INT_MAX)
			return -1;
		if (gcm_set_nonce(mc, nonce) < 0 ||
		    EVP_EncryptUpdate(mc->evp, NULL, &len, aad, (int)aad_size) != 1)
			return -1;
		if (size > 0 &&
		    EVP_EncryptUpdate(mc->evp, out, &len, in, (int)size) != 1)
			return -1;
		if (EVP_EncryptFinal_ex(mc->evp, out + size, &len) != 1 ||
		    EVP_CIPHER_CTX_ctrl(mc->evp, EVP_CTRL_GCM_GET_TAG,
					POPVAULT_TAG_SIZE, out + size) != 1)
			return -1;
		return 0;
	}
}

static int
aead_open(struct popvault_msg_cipher *mc,
	  const unsigned char nonce[NONCE_MAX_SIZE],
	  const unsigned char *aad, size_t aad_size,
	  const unsigned char *in, size_t in_size, unsigned char *out)
{
	size_t size;
	int ret;

	if (in_size < POPVAULT_TAG_SIZE)
		return -1;
	size = in_size - POPVAULT_TAG_SIZE;
	if (mc->gcm_state != NULL) {
		/* verifies before writing any plaintext, too */
		ret = crypto_aead_aes256gcm_decrypt_detached_afternm(
			out, NULL, in, size, in + size, aad, aad_size,
			nonce, mc->gcm_state);
	} else if (mc->cipher == POPVAULT_CIPHER_XCHACHA20POLY1305) {
		/* libsodium verifies before writing any plaintext */
		ret = crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
			out, NULL, in, size, in + size, aad, aad_size,
			nonce, mc->key);
	} else {
		unsigned char tag[POPVAULT_TAG_SIZE];
		int len;

		i_assert(!mc->encrypt);
		if (size > INT_MAX)
			return -1;
		memcpy(tag, in + size, sizeof(tag));
		ret = -1;
		if (gcm_set_nonce(mc, nonce) == 0 &&
		    EVP_DecryptUpdate(mc->evp, NULL, &len, aad,
				      (int)aad_size) == 1 &&
		    (size == 0 || EVP_DecryptUpdate(mc->evp, out, &len, in,
						    (int)size) == 1) &&
		    EVP_CIPHER_CTX_ctrl(mc->evp, EVP_CTRL_GCM_SET_TAG,
					sizeof(tag), tag) == 1 &&
		    EVP_DecryptFinal_ex(mc->evp, out + size, &len) == 1)
			ret = 0;
	}
	if (ret != 0) {
		/* never leave unauthenticated plaintext behind */
		if (size > 0)
			sodium_memzero(out, size);
		return -1;
	}
	return 0;
}

int popvault_chunk_encrypt(struct popvault_msg_cipher *mc, uint64_t idx,
			   bool final, const unsigned char *plain,
			   size_t plain_size, unsigned char *out)
{
	unsigned char nonce[NONCE_MAX_SIZE];

	i_assert(plain_size <= popvault_msg_cipher_chunk_size(mc));
	make_nonce(mc->cipher, idx, nonce);
	mc->aad[mc->aad_size - 1] = final ? 1 : 0;
	return aead_seal(mc, nonce, mc->aad, mc->aad_size,
			 plain, plain_size, out);
}

int popvault_chunk_decrypt(struct popvault_msg_cipher *mc, uint64_t idx,
			   bool final, const unsigned char *ct, size_t ct_size,
			   unsigned char *plain_out)
{
	unsigned char nonce[NONCE_MAX_SIZE];

	if (ct_size < POPVAULT_TAG_SIZE ||
	    ct_size > popvault_msg_cipher_chunk_size(mc) + POPVAULT_TAG_SIZE)
		return -1;
	make_nonce(mc->cipher, idx, nonce);
	mc->aad[mc->aad_size - 1] = final ? 1 : 0;
	return aead_open(mc, nonce, mc->aad, mc->aad_size,
			 ct, ct_size, plain_out);
}

bool popvault_msg_cipher_can_stream(const struct popvault_msg_cipher *mc)
{
	return mc->evp != NULL && !mc->encrypt;
}

int popvault_chunk_stream_begin(struct popvault_msg_cipher *mc, uint64_t idx,
				bool final)
{
	unsigned char nonce[NONCE_MAX_SIZE];
	int len;

	i_assert(popvault_msg_cipher_can_stream(mc));
	make_nonce(mc->cipher, idx, nonce);
	mc->aad[mc->aad_size - 1] = final ? 1 : 0;
	if (gcm_set_nonce(mc, nonce) < 0 ||
	    EVP_DecryptUpdate(mc->evp, NULL, &len, mc->aad,
			      (int)mc->aad_size) != 1)
		return -1;
	return 0;
}

int popvault_chunk_stream_update(struct popvault_msg_cipher *mc,
				 const unsigned char *ct, size_t size,
				 unsigned char *plain_out)
{
	int len;

	if (size == 0)
		return 0;
	if (size > INT_MAX ||
	    EVP_DecryptUpdate(mc->evp, plain_out, &len, ct, (int)size) != 1 ||
	    (size_t)len != size)
		return -1;
	return 0;
}

int popvault_chunk_stream_finish(struct popvault_msg_cipher *mc,
				 const unsigned char tag[POPVAULT_TAG_SIZE])
{
	unsigned char tag_copy[POPVAULT_TAG_SIZE], dummy[1];
	int len;

	memcpy(tag_copy, tag, sizeof(tag_copy));
	if (EVP_CIPHER_CTX_ctrl(mc->evp, EVP_CTRL_GCM_SET_TAG,
				sizeof(tag_copy), tag_copy) != 1 ||
	    EVP_DecryptFinal_ex(mc->evp, dummy, &len) != 1)
		return -1;
	return 0;
}

/* ---- sender ---- */

struct popvault_sender *
popvault_sender_create(const unsigned char pk[POPVAULT_PK_SIZE],
		       enum popvault_cipher cipher)
{
	struct popvault_sender *sender;

	if (cipher != POPVAULT_CIPHER_AES256GCM &&
	    cipher != POPVAULT_CIPHER_XCHACHA20POLY1305)
		return NULL;
	if (popvault_crypto_init() < 0)
		return NULL;
	sender = i_new(struct popvault_sender, 1);
	sender->cipher = cipher;
	sender->chunk_log2 = POPVAULT_CHUNK_LOG2_DEFAULT;
	sender->max_messages = POPVAULT_EPOCH_MAX_MESSAGES;
	sender->max_secs = POPVAULT_EPOCH_MAX_SECS;
	memcpy(sender->user_pk, pk, POPVAULT_PK_SIZE);
	popvault_key_id(pk, sender->key_id);
	return sender;
}

void popvault_sender_free(struct popvault_sender **_sender)
{
	struct popvault_sender *sender = *_sender;

	if (sender == NULL)
		return;
	*_sender = NULL;
	popvault_msg_cipher_free(&sender->epoch_wrap);
	sodium_memzero(sender, sizeof(*sender));
	i_free(sender);
}

int popvault_sender_set_chunk_log2(struct popvault_sender *sender,
				   uint8_t chunk_log2)
{
	if (chunk_log2 < POPVAULT_CHUNK_LOG2_MIN ||
	    chunk_log2 > POPVAULT_CHUNK_LOG2_MAX)
		return -1;
	sender->chunk_log2 = chunk_log2;
	return 0;
}

void popvault_sender_set_rotation(struct popvault_sender *sender,
				  unsigned int max_messages,
				  unsigned int max_secs)
{
	if (max_messages != 0)
		sender->max_messages = I_MIN(max_messages,
					     EPOCH_MAX_MESSAGES_LIMIT);
	if (max_secs != 0)
		sender->max_secs = max_secs;
}

unsigned int popvault_sender_get_epoch_count(const struct popvault_sender *sender)
{
	return sender->epoch_count;
}

static int popvault_sender_new_epoch(struct popvault_sender *sender,
				     const char **error_r)
{
	unsigned char eph_sk[POPVAULT_SK_SIZE];
	unsigned char shared[crypto_scalarmult_BYTES];
	unsigned char secret[HASH_SIZE], kek[POPVAULT_DK_SIZE];
	int ret;

	sender->epoch_valid = FALSE;
	popvault_msg_cipher_free(&sender->epoch_wrap);
	crypto_box_keypair(sender->eph_pk, eph_sk);
	/* fails for low-order user public keys (all-zero output) */
	ret = crypto_scalarmult(shared, eph_sk, sender->user_pk);
	sodium_memzero(eph_sk, sizeof(eph_sk));
	if (ret != 0) {
		sodium_memzero(shared, sizeof(shared));
		*error_r = "popvault: invalid recipient public key";
		return -1;
	}
	derive_epoch_secret(shared, sender->eph_pk, sender->user_pk, secret);
	sodium_memzero(shared, sizeof(shared));
	derive_kek_v2(secret, kek);
	sodium_memzero(secret, sizeof(secret));
	sender->epoch_wrap = wrap_cipher_create(sender->cipher, TRUE, kek,
						NULL);
	sodium_memzero(kek, sizeof(kek));
	if (sender->epoch_wrap == NULL) {
		*error_r = "popvault: cipher initialization failed";
		return -1;
	}
	sender->epoch_valid = TRUE;
	sender->epoch_messages = 0;
	sender->epoch_started = time(NULL);
	sender->epoch_count++;
	return 0;
}

int popvault_sender_begin_message(struct popvault_sender *sender,
				  unsigned char header_r[POPVAULT_HEADER_SIZE],
				  struct popvault_msg_cipher **mc_r,
				  const char **error_r)
{
	struct popvault_header hdr;
	unsigned char dk[POPVAULT_DK_SIZE], nonce[NONCE_MAX_SIZE];
	time_t now = time(NULL);
	int ret;

	if (!sender->epoch_valid ||
	    sender->epoch_messages >= sender->max_messages ||
	    now < sender->epoch_started ||
	    now - sender->epoch_started >= (time_t)sender->max_secs) {
		if (popvault_sender_new_epoch(sender, error_r) < 0)
			return -1;
	}
	sender->epoch_messages++;

	i_zero(&hdr);
	hdr.version = POPVAULT_VERSION;
	hdr.cipher = sender->cipher;
	hdr.chunk_log2 = sender->chunk_log2;
	hdr.flags = 0;
	memcpy(hdr.key_id, sender->key_id, sizeof(hdr.key_id));
	memcpy(hdr.eph_pk, sender->eph_pk, sizeof(hdr.eph_pk));
	randombytes_buf(hdr.salt, sizeof(hdr.salt));
	randombytes_buf(dk, sizeof(dk));
	make_wrap_nonce(&hdr, nonce);

	/* serialize without the wrapped key first: it's the wrap AAD */
	popvault_header_serialize(&hdr, header_r);
	ret = aead_seal(sender->epoch_wrap, nonce, header_r,
			POPVAULT_HEADER_WRAP_AAD_SIZE,
			dk, sizeof(dk), hdr.wrapped_dk);
	if (ret < 0) {
		sodium_memzero(dk, sizeof(dk));
		*error_r = "popvault: key wrapping failed";
		return -1;
	}
	memcpy(header_r + POPVAULT_HEADER_WRAP_AAD_SIZE, hdr.wrapped_dk,
	       sizeof(hdr.wrapped_dk));

	*mc_r = msg_cipher_create(sender->cipher, sender->chunk_log2, TRUE,
				  dk, header_r, POPVAULT_VERSION, NULL, FALSE);
	sodium_memzero(dk, sizeof(dk));
	if (*mc_r == NULL) {
		*error_r = "popvault: cipher initialization failed";
		return -1;
	}
	return 0;
}

/* ---- receiver ---- */

struct popvault_receiver *popvault_receiver_create(void)
{
	struct popvault_receiver *receiver;

	if (popvault_crypto_init() < 0)
		return NULL;
	receiver = i_new(struct popvault_receiver, 1);
	receiver->keys = sodium_allocarray(RECEIVER_KEYS_MAX,
					   sizeof(*receiver->keys));
	receiver->cache = sodium_allocarray(POPVAULT_RECEIVER_CACHE_SIZE,
					    sizeof(*receiver->cache));
	if (receiver->keys == NULL || receiver->cache == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "sodium_allocarray() failed: %m");
	/* sodium_malloc() fills with 0xdb: start from an empty cache */
	memset(receiver->cache, 0, POPVAULT_RECEIVER_CACHE_SIZE *
	       sizeof(*receiver->cache));
	return receiver;
}

void popvault_receiver_free(struct popvault_receiver **_receiver)
{
	struct popvault_receiver *receiver = *_receiver;
	unsigned int i;

	if (receiver == NULL)
		return;
	*_receiver = NULL;
	for (i = 0; i < POPVAULT_RECEIVER_CACHE_SIZE; i++)
		popvault_msg_cipher_free(&receiver->cache[i].wrap_v2);
	/* frees (and cleanses) the last key schedules */
	while (receiver->spare_ctx_count > 0) {
		EVP_CIPHER_CTX_free(
			receiver->spare_ctx[--receiver->spare_ctx_count]);
	}
	sodium_free(receiver->keys);
	sodium_free(receiver->cache);
	sodium_memzero(receiver, sizeof(*receiver));
	i_free(receiver);
}

int popvault_receiver_add_key(struct popvault_receiver *receiver,
			      const unsigned char sk[POPVAULT_SK_SIZE])
{
	struct popvault_receiver_key *key;

	if (receiver->keys_count == RECEIVER_KEYS_MAX)
		return -1;
	key = &receiver->keys[receiver->keys_count];
	memcpy(key->sk, sk, sizeof(key->sk));
	if (crypto_scalarmult_base(key->pk, key->sk) != 0) {
		sodium_memzero(key, sizeof(*key));
		return -1;
	}
	popvault_key_id(key->pk, key->key_id);
	receiver->keys_count++;
	return 0;
}

uint64_t popvault_receiver_get_x25519_count(const struct popvault_receiver *receiver)
{
	return receiver->x25519_count;
}

static struct popvault_epoch_cache *
receiver_get_epoch(struct popvault_receiver *receiver,
		   const struct popvault_receiver_key *key,
		   const unsigned char eph_pk[POPVAULT_PK_SIZE])
{
	struct popvault_epoch_cache *slot = NULL;
	unsigned char shared[crypto_scalarmult_BYTES];
	unsigned int i;
	int ret;

	for (i = 0; i < POPVAULT_RECEIVER_CACHE_SIZE; i++) {
		struct popvault_epoch_cache *c = &receiver->cache[i];

		if (c->used &&
		    memcmp(c->key_id, key->key_id, sizeof(c->key_id)) == 0 &&
		    memcmp(c->eph_pk, eph_pk, sizeof(c->eph_pk)) == 0) {
			c->last_use = ++receiver->use_counter;
			return c;
		}
		if (slot == NULL || !c->used ||
		    (slot->used && c->last_use < slot->last_use))
			slot = c;
	}

	receiver->x25519_count++;
	ret = crypto_scalarmult(shared, key->sk, eph_pk);
	if (ret != 0) {
		sodium_memzero(shared, sizeof(shared));
		return NULL;
	}
	popvault_msg_cipher_free(&slot->wrap_v2);
	derive_epoch_secret(shared, eph_pk, key->pk, slot->epoch_secret);
	sodium_memzero(shared, sizeof(shared));
	derive_kek_v2(slot->epoch_secret, slot->kek_v2);

	/* Cache only after the caller unwrapped successfully would be nicer,
	   but a bogus eph_pk costs the attacker an X25519 either way; we
	   cache unconditionally (LRU) so the cost is bounded per (key,eph). */
	slot->used = TRUE;
	slot->last_use = ++receiver->use_counter;
	memcpy(slot->key_id, key->key_id, sizeof(slot->key_id));
	memcpy(slot->eph_pk, eph_pk, sizeof(slot->eph_pk));
	return slot;
}

/* The KEK-keyed context that unwraps this message's data key: v1 keys a
   spare context per message, v2 reuses the epoch's (*free_r = FALSE). */
static struct popvault_msg_cipher *
receiver_get_wrap(struct popvault_receiver *receiver,
		  struct popvault_epoch_cache *epoch,
		  const struct popvault_header *hdr, bool *free_r)
{
	unsigned char kek[POPVAULT_DK_SIZE];
	struct popvault_msg_cipher *wrap;

	if (hdr->version == POPVAULT_VERSION_V1) {
		derive_kek(epoch->epoch_secret, hdr->salt, kek);
		wrap = wrap_cipher_create(hdr->cipher, FALSE, kek, receiver);
		sodium_memzero(kek, sizeof(kek));
		*free_r = TRUE;
		return wrap;
	}
	if (epoch->wrap_v2 != NULL && epoch->wrap_v2->cipher != hdr->cipher)
		popvault_msg_cipher_free(&epoch->wrap_v2);
	if (epoch->wrap_v2 == NULL) {
		epoch->wrap_v2 = wrap_cipher_create(hdr->cipher, FALSE,
						    epoch->kek_v2, NULL);
	}
	*free_r = FALSE;
	return epoch->wrap_v2;
}

int popvault_receiver_open(struct popvault_receiver *receiver,
			   const unsigned char *data, size_t size,
			   struct popvault_header *hdr_r,
			   struct popvault_msg_cipher **mc_r,
			   const char **error_r)
{
	const struct popvault_receiver_key *found = NULL;
	struct popvault_epoch_cache *epoch;
	unsigned int i;
	struct popvault_msg_cipher *wrap;
	unsigned char dk[POPVAULT_DK_SIZE], nonce[NONCE_MAX_SIZE];
	const char *error;
	bool free_wrap;
	int ret;

	*mc_r = NULL;
	if (popvault_header_parse(data, size, hdr_r, &error) < 0) {
		*error_r = t_strdup_printf("popvault: invalid header: %s",
					   error);
		return -1;
	}
	for (i = 0; i < receiver->keys_count; i++) {
		if (memcmp(receiver->keys[i].key_id, hdr_r->key_id,
			   sizeof(hdr_r->key_id)) == 0) {
			found = &receiver->keys[i];
			break;
		}
	}
	if (found == NULL) {
		*error_r = t_strdup_printf("popvault: unknown key id %s",
			binary_to_hex(hdr_r->key_id, sizeof(hdr_r->key_id)));
		return -1;
	}
	epoch = receiver_get_epoch(receiver, found, hdr_r->eph_pk);
	if (epoch == NULL) {
		*error_r = "popvault: invalid ephemeral public key";
		return -1;
	}
	wrap = receiver_get_wrap(receiver, epoch, hdr_r, &free_wrap);
	if (wrap == NULL) {
		*error_r = "popvault: cipher initialization failed";
		return -1;
	}
	make_wrap_nonce(hdr_r, nonce);
	ret = aead_open(wrap, nonce, data, POPVAULT_HEADER_WRAP_AAD_SIZE,
			hdr_r->wrapped_dk, sizeof(hdr_r->wrapped_dk), dk);
	if (free_wrap)
		popvault_msg_cipher_free(&wrap);
	if (ret < 0) {
		*error_r = "popvault: failed to unwrap data key "
			"(wrong key or corrupted header)";
		return -1;
	}
	*mc_r = msg_cipher_create(hdr_r->cipher, hdr_r->chunk_log2, FALSE,
				  dk, data, hdr_r->version, receiver, FALSE);
	sodium_memzero(dk, sizeof(dk));
	if (*mc_r == NULL) {
		*error_r = "popvault: cipher initialization failed";
		return -1;
	}
	return 0;
}

/* ---- one-shot helpers ---- */

int popvault_encrypt_buffer(struct popvault_sender *sender,
			    const unsigned char *plain, size_t size,
			    buffer_t *out, const char **error_r)
{
	struct popvault_msg_cipher *mc;
	unsigned char header[POPVAULT_HEADER_SIZE];
	size_t chunk, n, pos = 0;
	uint64_t idx = 0;
	bool final;

	if (popvault_sender_begin_message(sender, header, &mc, error_r) < 0)
		return -1;
	chunk = popvault_msg_cipher_chunk_size(mc);
	buffer_append(out, header, sizeof(header));
	do {
		n = I_MIN(size - pos, chunk);
		final = pos + n == size;
		unsigned char *dest = buffer_append_space_unsafe(
			out, n + POPVAULT_TAG_SIZE);
		if (popvault_chunk_encrypt(mc, idx, final, plain + pos, n,
					   dest) < 0) {
			popvault_msg_cipher_free(&mc);
			*error_r = "popvault: encryption failed";
			return -1;
		}
		pos += n;
		idx++;
	} while (!final);
	popvault_msg_cipher_free(&mc);
	return 0;
}

int popvault_decrypt_buffer(struct popvault_receiver *receiver,
			    const unsigned char *data, size_t size,
			    buffer_t *out, const char **error_r)
{
	struct popvault_header hdr;
	struct popvault_msg_cipher *mc;
	size_t chunk, full, pos, n;
	uoff_t plain_size;
	uint64_t idx = 0;
	bool final;

	if (popvault_receiver_open(receiver, data, size, &hdr, &mc,
				   error_r) < 0)
		return -1;
	if (popvault_container_plain_size(size, hdr.chunk_log2,
					  &plain_size) < 0) {
		popvault_msg_cipher_free(&mc);
		*error_r = "popvault: invalid container length (truncated)";
		return -1;
	}
	chunk = (size_t)1 << hdr.chunk_log2;
	full = chunk + POPVAULT_TAG_SIZE;
	pos = POPVAULT_HEADER_SIZE;
	do {
		n = I_MIN(size - pos, full);
		final = pos + n == size;
		unsigned char *dest = buffer_append_space_unsafe(
			out, n - POPVAULT_TAG_SIZE);
		if (popvault_chunk_decrypt(mc, idx, final, data + pos, n,
					   dest) < 0) {
			buffer_set_used_size(out, out->used -
					     (n - POPVAULT_TAG_SIZE));
			popvault_msg_cipher_free(&mc);
			*error_r = t_strdup_printf(
				"popvault: chunk %"PRIu64" failed authentication",
				idx);
			return -1;
		}
		pos += n;
		idx++;
	} while (!final);
	popvault_msg_cipher_free(&mc);
	return 0;
}
