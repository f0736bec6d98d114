/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* The encrypted cache (docs/encryption.md, "Encrypted cache").

   Dovecot's dovecot.index.cache is off for users whose mail may be
   encrypted (it would hold headers in plaintext), so without this every
   folder view decrypts and parses every message again. Here each
   message gets one entry, made the first time an IMAP session needs any
   of its fields: the header fields (split as Dovecot's header filter
   outputs them, without the bulky trace fields such as Received),
   BODYSTRUCTURE, the Date header's time and zone, INTERNALDATE, the save
   date and both sizes, exactly as Dovecot computed them from the
   decrypted message; ENVELOPE and BODY are built from them.
   BODYSTRUCTURE (a parse of the whole message) is added only when a
   request needs it: the list view's header fetch fills the rest alone.
   Entries are sealed (AES-256-GCM) with the user's cache key,
   bound to the key's generation, the file's place, UIDVALIDITY and the
   UID; an IMAP UID names one immutable message for as long as its
   UIDVALIDITY lasts, so an entry never goes stale: encrypt and decrypt
   save new UIDs, a rebuild that loses UIDs changes UIDVALIDITY.

   File: header (magic, key generation id, place id, UIDVALIDITY),
   then records (UID, length, nonce, ciphertext). New records are
   appended at mailbox close; a file with a wrong header, a damaged
   record or entries of expunged messages is rewritten (temporary file,
   rename). An entry that does not authenticate is never served: the
   message is read the normal way and the file rebuilt. */

#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "hash.h"
#include "hostpid.h"
#include "istream.h"
#include "istream-header-filter.h"
#include "message-date.h"
#include "message-header-parser.h"
#include "message-size.h"
#include "write-full.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "module-dir.h"
#include "index-mail.h"
#include "imap-bodystructure.h"
#include "str.h"
#include "popvault-compat.h"
#include "popvault-crypt-cache.h"
#include "popvault-crypt-delivered.h"

#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ctype.h>
#include <sodium.h>
#include <openssl/evp.h>

#define CACHE_FILE_NAME "dovecot.popvault.cache"
#define CACHE_MAGIC "PVCACHE2"
#define CACHE_MAGIC_SIZE 8
#define CACHE_PLACE_SIZE 16
#define CACHE_HDR_SIZE (CACHE_MAGIC_SIZE + 16 + CACHE_PLACE_SIZE + 4 + 4)
/* AES-256-GCM with a random 96-bit nonce per record */
#define CACHE_NONCE_SIZE 12
#define CACHE_TAG_SIZE 16
#define CACHE_REC_HDR_SIZE (4 + 4 + CACHE_NONCE_SIZE)
#define CACHE_AD_SIZE (16 + CACHE_PLACE_SIZE + 4 + 4)
/* an entry larger than this is not kept (a header of megabytes) */
#define CACHE_ENTRY_MAX (4 * 1024 * 1024)
#define CACHE_FILE_MAX ((off_t)1024 * 1024 * 1024)
/* an entry with every field; one without BODYSTRUCTURE (filled by a
   request that needs only the header, dates or sizes: the body is not
   parsed until a request asks for the structure) */
#define CACHE_ENTRY_VERSION 2
#define CACHE_ENTRY_VERSION_NO_BODY 3
/* how an entry keeps the header */
#define CACHE_HDR_RAW 0
#define CACHE_HDR_SPLIT 1

/* Fields index-mail would parse the message for ahead of the request
   (to prefetch): served here, so they are taken out of wanted_fields. */
#define CACHE_STRIP_FIELDS (MAIL_FETCH_DATE | MAIL_FETCH_IMAP_ENVELOPE | \
	MAIL_FETCH_IMAP_BODY | MAIL_FETCH_IMAP_BODYSTRUCTURE)

/* Fields kept out of split entries: trace and signature fields, often
   most of a header and never in a folder view. A request that names one
   is answered from the message. */
static const char *const cache_dropped_fields[] = {
	"Received", "DKIM-Signature", "ARC-Seal", "ARC-Message-Signature",
	"ARC-Authentication-Results", "Authentication-Results",
	"Received-SPF", "X-Received", "X-Google-DKIM-Signature", NULL
};

/* One header field as Dovecot's header filter outputs it (each line's
   name, middle and value, CRLF), continuation lines included. */
struct cache_hdr_field {
	const unsigned char *data;
	size_t size;
	/* data starts with the name (never empty) */
	unsigned int name_len;
};

struct cache_entry {
	uint32_t uid;
	time_t sent_date, received_date, save_date;
	int sent_tz, save_date_ret;
	uoff_t virtual_size, physical_size;
	/* NULL until a request needs it (CACHE_ENTRY_VERSION_NO_BODY); not
	   NUL-terminated in an opened entry (it points into the plaintext) */
	const char *bodystructure;
	size_t bodystructure_len;
	/* CACHE_HDR_SPLIT: the fields, and the names of those dropped.
	   CACHE_HDR_RAW (a header the split cannot reproduce exactly, e.g.
	   without its empty line): the raw header block. */
	unsigned int hdr_form;
	const unsigned char *hdr;
	size_t hdr_size;
	/* as serialized (entry_serialize_split()), read with
	   cache_split_next() and cache_dropped_next(): an opened entry
	   needs no arrays of its own */
	const unsigned char *fields, *dropped;
	size_t fields_size, dropped_size;
	unsigned int field_count, dropped_count;
};

struct cache_mailbox {
	union mailbox_module_context module_ctx;
	bool loaded, unusable, rewrite, existed, filling;
	/* Dovecot's mail_cache_fields names BODYSTRUCTURE (2.4's default):
	   Dovecot would have parsed every message for it at delivery, and
	   a client of such a server asks for it next, so an entry gets it
	   with its first fill (one decryption) */
	bool body_ahead;
	/* this session expunged messages: their records go at close */
	bool expunged;
	const struct popvault_cache_key *key;
	/* entries made at delivery not yet moved into this file, or NULL */
	struct popvault_delivered *delivered;
	/* AES-256-GCM with the cache key, set up once per mailbox open (a
	   record only sets its nonce): XChaCha20-Poly1305 in libsodium took
	   3.7 ms for a warm open's 2000 entries, this 1.1 ms */
	EVP_CIPHER_CTX *seal_ctx, *open_ctx;
	unsigned char ad_prefix[16 + CACHE_PLACE_SIZE + 4];
	const char *path;

	/* The records: offsets below new_from are the file's (mapped, after
	   its header), the others this session's (in records, from
	   new_from on). Mapped, not read: a read copies megabytes into
	   fresh memory on every folder open. */
	const unsigned char *map;
	size_t map_size;
	buffer_t *records;
	size_t new_from;
	/* uid -> offset+1 */
	HASH_TABLE(void *, void *) uids;

	/* entries opened in this session: uid -> struct cache_entry */
	pool_t entry_pool;
	/* opened entries' memory (cache_arena_alloc()): used, and the most
	   ever used (wiped at close) */
	unsigned char *arena;
	size_t arena_used, arena_high;
	bool arena_failed;
	HASH_TABLE(void *, struct cache_entry *) entries;
	unsigned int auth_failures;

	/* Filling: the raw header, its split fields and dropped names, and
	   a record's plaintext are built here, reused for every message,
	   and only what an entry keeps is copied into entry_pool. Fresh
	   memory per message (the pool's zeroed blocks, sized for the
	   whole header) cost a page fault per 4 KB: 3200 more than plain
	   Dovecot in a first open of 2000 messages. Wiped at close. */
	buffer_t *hdr_buf, *split_buf, *dropped_buf, *plain_buf;
	/* random record nonces drawn 256 at a time: one getrandom() per
	   record was 4000 system calls in a first open of 2000 messages */
	unsigned char nonces[CACHE_NONCE_SIZE * 256];
	unsigned int nonces_left;
};

struct cache_mail {
	union mail_module_context module_ctx;
	struct istream *hdr_stream;
	/* computes entries (decrypting): one per mail, not per message */
	struct mail *fill_mail;
};

#define CACHE_BOX_CONTEXT(obj) \
	MODULE_CONTEXT(obj, popvault_cache_storage_module)
#define CACHE_MAIL_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, popvault_cache_mail_module)

static MODULE_CONTEXT_DEFINE_INIT(popvault_cache_storage_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(popvault_cache_mail_module,
				  &mail_module_register);

static popvault_cache_key_func_t *cache_get_key;
static popvault_cache_wanted_func_t *cache_wanted;
static popvault_delivered_decrypt_func_t *cache_decrypt;

void popvault_cache_key_set_id(struct popvault_cache_key *key)
{
	static const unsigned char label[] = "popvault cache generation";

	crypto_generichash(key->id, sizeof(key->id), label, sizeof(label),
			   key->key, sizeof(key->key));
}

/* ---- entries ---- */

static void put32(buffer_t *buf, uint32_t v)
{
	unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v };

	buffer_append(buf, b, sizeof(b));
}

static void put64(buffer_t *buf, uint64_t v)
{
	put32(buf, v >> 32);
	put32(buf, v & 0xffffffffU);
}

static void put_blob(buffer_t *buf, const void *data, size_t size)
{
	put32(buf, size);
	buffer_append(buf, data, size);
}

static void put16(buffer_t *buf, uint16_t v)
{
	unsigned char b[2] = { v >> 8, v };

	buffer_append(buf, b, sizeof(b));
}

static uint32_t get32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
		((uint32_t)p[2] << 8) | p[3];
}

struct reader {
	const unsigned char *p, *end;
	bool fail;
};

static uint64_t read_n(struct reader *r, unsigned int bytes)
{
	uint64_t v = 0;

	if ((size_t)(r->end - r->p) < bytes) {
		r->fail = TRUE;
		return 0;
	}
	for (unsigned int i = 0; i < bytes; i++)
		v = (v << 8) | *r->p++;
	return v;
}

static const unsigned char *read_blob(struct reader *r, size_t *size_r)
{
	const unsigned char *data;

	*size_r = read_n(r, 4);
	if (r->fail || (size_t)(r->end - r->p) < *size_r) {
		r->fail = TRUE;
		return NULL;
	}
	data = r->p;
	r->p += *size_r;
	return data;
}

/* Limits of the split form's lengths (larger: the raw form) */
#define CACHE_FIELD_NAME_MAX 255
#define CACHE_FIELD_SIZE_MAX 65535
#define CACHE_FIELDS_MAX 65535
#define CACHE_DROPPED_MAX 255

/* The next field of the serialized fields (name length (1), length (2),
   bytes); FALSE at their end or when damaged. */
static bool cache_split_next(const unsigned char **pos,
			     const unsigned char *end,
			     struct cache_hdr_field *field_r)
{
	const unsigned char *p = *pos;

	if (end - p < 3)
		return FALSE;
	field_r->name_len = p[0];
	field_r->size = ((size_t)p[1] << 8) | p[2];
	field_r->data = p + 3;
	if ((size_t)(end - field_r->data) < field_r->size ||
	    field_r->name_len == 0 || field_r->name_len > field_r->size)
		return FALSE;
	*pos = field_r->data + field_r->size;
	return TRUE;
}

/* Whether a field's name is name (of name_len), as the header filter
   compares them: strcasecmp() of the parser's NUL-terminated name. The
   first letters are compared first: most of a header's fields are not
   the one wanted, and strncasecmp() for each of them was 4% of a warm
   folder open's instructions. */
static bool cache_field_name_is(const struct cache_hdr_field *field,
				const char *name, size_t name_len)
{
	return field->name_len >= name_len && name_len > 0 &&
		i_toupper(field->data[0]) == i_toupper(name[0]) &&
		strncasecmp((const char *)field->data, name, name_len) == 0 &&
		(field->name_len == name_len || field->data[name_len] == '\0');
}

/* The next of the serialized dropped names (length (1), name). */
static bool cache_dropped_next(const unsigned char **pos,
			       const unsigned char *end,
			       const unsigned char **name_r, size_t *len_r)
{
	const unsigned char *p = *pos;

	if (end - p < 1 || (size_t)(end - p - 1) < p[0])
		return FALSE;
	*len_r = p[0];
	*name_r = p + 1;
	*pos = p + 1 + p[0];
	return TRUE;
}

static void entry_serialize_split(const struct cache_entry *e, buffer_t *buf)
{
	put16(buf, e->field_count);
	buffer_append(buf, e->fields, e->fields_size);
	buffer_append_c(buf, e->dropped_count);
	buffer_append(buf, e->dropped, e->dropped_size);
}

/* The split form, pointing into the entry's plaintext (in pool). */
static void entry_parse_split(struct reader *r, struct cache_entry *e)
{
	struct cache_hdr_field field;
	const unsigned char *name;
	size_t len;
	unsigned int i;

	e->field_count = read_n(r, 2);
	e->fields = r->p;
	for (i = 0; i < e->field_count && !r->fail; i++) {
		if (!cache_split_next(&r->p, r->end, &field))
			r->fail = TRUE;
	}
	e->fields_size = r->p - e->fields;
	e->dropped_count = read_n(r, 1);
	e->dropped = r->p;
	for (i = 0; i < e->dropped_count && !r->fail; i++) {
		if (!cache_dropped_next(&r->p, r->end, &name, &len))
			r->fail = TRUE;
	}
	e->dropped_size = r->p - e->dropped;
}

static void entry_serialize(const struct cache_entry *e, buffer_t *buf)
{
	buffer_append_c(buf, e->bodystructure != NULL ? CACHE_ENTRY_VERSION :
			CACHE_ENTRY_VERSION_NO_BODY);
	put64(buf, (int64_t)e->sent_date);
	put32(buf, (uint32_t)e->sent_tz);
	put64(buf, (int64_t)e->received_date);
	put64(buf, (int64_t)e->save_date);
	put32(buf, (uint32_t)e->save_date_ret);
	put64(buf, e->virtual_size);
	put64(buf, e->physical_size);
	if (e->bodystructure != NULL)
		put_blob(buf, e->bodystructure, e->bodystructure_len);
	buffer_append_c(buf, e->hdr_form);
	if (e->hdr_form == CACHE_HDR_SPLIT)
		entry_serialize_split(e, buf);
	else
		put_blob(buf, e->hdr, e->hdr_size);
}

/* data must stay: the entry points into it */
static int entry_parse(const unsigned char *data, size_t size,
		       struct cache_entry *e)
{
	struct reader r = { .p = data, .end = data + size };
	unsigned int version = read_n(&r, 1);

	if (version != CACHE_ENTRY_VERSION &&
	    version != CACHE_ENTRY_VERSION_NO_BODY)
		return -1;
	e->sent_date = (time_t)(int64_t)read_n(&r, 8);
	e->sent_tz = (int)(int32_t)read_n(&r, 4);
	e->received_date = (time_t)(int64_t)read_n(&r, 8);
	e->save_date = (time_t)(int64_t)read_n(&r, 8);
	e->save_date_ret = (int)(int32_t)read_n(&r, 4);
	e->virtual_size = read_n(&r, 8);
	e->physical_size = read_n(&r, 8);
	e->bodystructure = version == CACHE_ENTRY_VERSION_NO_BODY ? NULL :
		(const char *)read_blob(&r, &e->bodystructure_len);
	e->hdr_form = read_n(&r, 1);
	if (e->hdr_form == CACHE_HDR_SPLIT)
		entry_parse_split(&r, e);
	else if (e->hdr_form == CACHE_HDR_RAW)
		e->hdr = read_blob(&r, &e->hdr_size);
	else
		r.fail = TRUE;
	return r.fail || r.p != r.end ? -1 : 0;
}

static void cache_ad(struct cache_mailbox *cbox, uint32_t uid,
		     unsigned char ad[CACHE_AD_SIZE])
{
	memcpy(ad, cbox->ad_prefix, sizeof(cbox->ad_prefix));
	ad[CACHE_AD_SIZE - 4] = uid >> 24;
	ad[CACHE_AD_SIZE - 3] = uid >> 16;
	ad[CACHE_AD_SIZE - 2] = uid >> 8;
	ad[CACHE_AD_SIZE - 1] = uid;
}

/* One record's AES-256-GCM: in (in_size) to out, tag written (seal) or
   checked (open). On a failed open out is wiped. Returns 0 / -1. */
static int cache_gcm(EVP_CIPHER_CTX *ctx, bool seal,
		     const unsigned char nonce[CACHE_NONCE_SIZE],
		     const unsigned char ad[CACHE_AD_SIZE],
		     const unsigned char *in, size_t in_size,
		     unsigned char *out, unsigned char tag[CACHE_TAG_SIZE])
{
	int len, final_len;

	if (in_size > INT_MAX ||
	    EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, seal ? 1 : 0,
			       NULL) != 1 ||
	    EVP_CipherUpdate(ctx, NULL, &len, ad, CACHE_AD_SIZE) != 1 ||
	    EVP_CipherUpdate(ctx, out, &len, in, in_size) != 1 ||
	    (!seal && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG,
					  CACHE_TAG_SIZE, tag) != 1) ||
	    EVP_CipherFinal_ex(ctx, out + len, &final_len) != 1 ||
	    (seal && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG,
					 CACHE_TAG_SIZE, tag) != 1)) {
		if (!seal)
			sodium_memzero(out, in_size);
		return -1;
	}
	return 0;
}

static EVP_CIPHER_CTX *cache_gcm_ctx(const struct popvault_cache_key *key,
				     bool seal)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	if (ctx != NULL &&
	    EVP_CipherInit_ex2(ctx, EVP_aes_256_gcm(), key->key, NULL,
			       seal ? 1 : 0, NULL) != 1) {
		EVP_CIPHER_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

/* Wipes the plaintext a fill buffer held */
static void cache_buf_wipe(buffer_t *buf)
{
	sodium_memzero(buffer_get_modifiable_data(buf, NULL), buf->used);
	buffer_set_used_size(buf, 0);
}

/* Seals entry e as a record at the end of cbox->records. */
static void cache_add_record(struct cache_mailbox *cbox,
			     const struct cache_entry *e)
{
	unsigned char ad[CACHE_AD_SIZE], nonce[CACHE_NONCE_SIZE];
	unsigned char tag[CACHE_TAG_SIZE], *ct;
	buffer_t *plain;
	size_t offset;
	void *old;
	int ret;

	if (cbox->seal_ctx == NULL &&
	    (cbox->seal_ctx = cache_gcm_ctx(cbox->key, TRUE)) == NULL)
		return;
	plain = cbox->plain_buf;
	buffer_set_used_size(plain, 0);
	entry_serialize(e, plain);
	if (plain->used > CACHE_ENTRY_MAX) {
		cache_buf_wipe(plain);
		return;
	}
	cache_ad(cbox, e->uid, ad);
	if (cbox->nonces_left == 0) {
		randombytes_buf(cbox->nonces, sizeof(cbox->nonces));
		cbox->nonces_left = sizeof(cbox->nonces) / CACHE_NONCE_SIZE;
	}
	cbox->nonces_left--;
	memcpy(nonce, cbox->nonces + cbox->nonces_left * CACHE_NONCE_SIZE,
	       sizeof(nonce));
	offset = cbox->new_from + cbox->records->used;
	put32(cbox->records, e->uid);
	put32(cbox->records, plain->used + CACHE_TAG_SIZE);
	buffer_append(cbox->records, nonce, sizeof(nonce));
	ct = buffer_append_space_unsafe(cbox->records,
					plain->used + CACHE_TAG_SIZE);
	ret = cache_gcm(cbox->seal_ctx, TRUE, nonce, ad, plain->data,
			plain->used, ct, tag);
	memcpy(ct + plain->used, tag, sizeof(tag));
	cache_buf_wipe(plain);
	if (ret < 0) {
		/* not kept: the message is read again next time */
		buffer_set_used_size(cbox->records, offset - cbox->new_from);
		return;
	}
	old = hash_table_lookup(cbox->uids, POINTER_CAST(e->uid));
	if (old != NULL && POINTER_CAST_TO(old, size_t) - 1 < cbox->new_from) {
		/* a record of the file is superseded (its entry had no
		   BODYSTRUCTURE yet): the file is written anew without it.
		   This session's own superseded records are left out when
		   appending (cache_append()). */
		cbox->rewrite = TRUE;
	}
	hash_table_update(cbox->uids, POINTER_CAST(e->uid),
			  POINTER_CAST(offset + 1));
}

/* Plaintext kept in memory per mailbox open, beyond which the opened
   entries are dropped and opened again when asked for */
#define CACHE_OPEN_ENTRIES_MAX_BYTES (32 * 1024 * 1024)

/* Opened entries are decrypted into this much memory, used again from
   its start when full (entries larger than all of it go in
   entry_pool) */
#define CACHE_ARENA_SIZE (64 * 1024)
#define CACHE_ARENA_ALIGN(size) (((size) + 7) & ~(size_t)7)

static void cache_entries_clear(struct cache_mailbox *cbox)
{
	hash_table_clear(cbox->entries, TRUE);
	p_clear(cbox->entry_pool);
	cbox->arena_used = 0;
}

/* Memory for one more opened entry (the session's table of them). */
static pool_t cache_entry_pool(struct cache_mailbox *cbox)
{
	if (pool_alloconly_get_total_used_size(cbox->entry_pool) +
	    cbox->arena_used > CACHE_OPEN_ENTRIES_MAX_BYTES)
		cache_entries_clear(cbox);
	return cbox->entry_pool;
}

/* The memory of opened entries: a small mapping of their own, used
   again from its start once full (cache_arena_make_room()). A warm open
   opens every message's entry, and each fresh page costs a page fault
   at its first write: on the virtual machines measured here 5-10 us,
   and a huge page 3.5 ms when the host had not backed it yet. The
   2.5 MB of 2000 opened entries kept for the session made the warm
   header fetch move between 1.06x and 1.42x plain from run to run. A
   window of 64 KiB touches 16 pages once (512 KiB were still 185
   faults more than plain's session), and a command that comes back
   to an entry decrypts it again (AES-GCM, about 1 ms for 2000).
   NULL when it can't be had or the entry is larger than all of it:
   then entry_pool serves. */
static void *cache_arena_alloc(struct cache_mailbox *cbox, size_t size)
{
	unsigned char *map, *p;

	size = CACHE_ARENA_ALIGN(size);
	if (cbox->arena == NULL && !cbox->arena_failed) {
		/* reserved, not committed: only what is written is used */
		map = mmap(NULL, CACHE_ARENA_SIZE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (map == MAP_FAILED) {
			cbox->arena_failed = TRUE;
			return NULL;
		}
		cbox->arena = map;
	}
	if (cbox->arena == NULL || CACHE_ARENA_SIZE - cbox->arena_used < size)
		return NULL;
	p = cbox->arena + cbox->arena_used;
	cbox->arena_used += size;
	cbox->arena_high = I_MAX(cbox->arena_high, cbox->arena_used);
	return p;
}

/* Before an entry of size bytes is opened: when the window is full,
   the opened entries are dropped (opened again when asked for) and the
   window is used from its start. Callers hold no entry across this. */
static void cache_arena_make_room(struct cache_mailbox *cbox, size_t size)
{
	if (cbox->arena != NULL && size <= CACHE_ARENA_SIZE &&
	    CACHE_ARENA_SIZE - cbox->arena_used < size)
		cache_entries_clear(cbox);
}

static void cache_arena_free(struct cache_mailbox *cbox)
{
	if (cbox->arena == NULL)
		return;
	/* the plaintext of the opened entries, as far as it ever reached */
	sodium_memzero(cbox->arena, cbox->arena_high);
	if (munmap(cbox->arena, CACHE_ARENA_SIZE) < 0)
		i_error("popvault: cache: munmap() failed: %m");
	cbox->arena = NULL;
	cbox->arena_used = 0;
	cbox->arena_high = 0;
}

/* Opened entry memory: from the arena, else from entry_pool */
static void *cache_open_alloc(struct cache_mailbox *cbox, pool_t pool,
			      size_t size)
{
	void *p = cache_arena_alloc(cbox, size);

	if (p != NULL) {
		memset(p, 0, size);
		return p;
	}
	return p_malloc(pool, size);
}

static const unsigned char *
cache_record(const struct cache_mailbox *cbox, size_t offset)
{
	if (offset < cbox->new_from)
		return cbox->map + CACHE_HDR_SIZE + offset;
	return CONST_PTR_OFFSET(cbox->records->data, offset - cbox->new_from);
}

/* Opens the record at offset into the table of opened entries. NULL
   when it does not authenticate or parse: it is then never served. */
static struct cache_entry *
cache_open_record(struct cache_mailbox *cbox, size_t offset)
{
	const unsigned char *rec = cache_record(cbox, offset);
	uint32_t uid = get32(rec), len = get32(rec + 4);
	size_t plain_len = len - CACHE_TAG_SIZE;
	unsigned char ad[CACHE_AD_SIZE], tag[CACHE_TAG_SIZE], *plain;
	struct cache_entry *e;
	pool_t pool = cache_entry_pool(cbox);

	if (cbox->open_ctx == NULL &&
	    (cbox->open_ctx = cache_gcm_ctx(cbox->key, FALSE)) == NULL)
		return NULL;
	cache_ad(cbox, uid, ad);
	memcpy(tag, rec + CACHE_REC_HDR_SIZE + plain_len, sizeof(tag));
	cache_arena_make_room(cbox, CACHE_ARENA_ALIGN(plain_len + 1) +
			      CACHE_ARENA_ALIGN(sizeof(*e)));
	/* the entry points into its plaintext: no copies of the fields */
	plain = cache_open_alloc(cbox, pool, plain_len + 1);
	if (cache_gcm(cbox->open_ctx, FALSE, rec + 8, ad,
		      rec + CACHE_REC_HDR_SIZE, plain_len, plain, tag) < 0)
		return NULL;
	e = cache_open_alloc(cbox, pool, sizeof(*e));
	if (entry_parse(plain, plain_len, e) < 0)
		return NULL;
	e->uid = uid;
	hash_table_update(cbox->entries, POINTER_CAST(uid), e);
	return e;
}

/* ---- the file ---- */

/* Checks the mapped file's header and indexes its records. */
static void cache_parse_file(struct cache_mailbox *cbox)
{
	const unsigned char *data;
	size_t pos, size;
	uint32_t uid, len;

	cbox->new_from = 0;
	if (cbox->map_size < CACHE_HDR_SIZE ||
	    memcmp(cbox->map, CACHE_MAGIC, CACHE_MAGIC_SIZE) != 0 ||
	    memcmp(cbox->map + CACHE_MAGIC_SIZE, cbox->ad_prefix,
		   sizeof(cbox->ad_prefix)) != 0) {
		/* another key generation, place or UIDVALIDITY */
		cbox->rewrite = TRUE;
		return;
	}
	data = cbox->map + CACHE_HDR_SIZE;
	size = cbox->map_size - CACHE_HDR_SIZE;
	for (pos = 0; pos < size; pos += CACHE_REC_HDR_SIZE + len) {
		if (size - pos < CACHE_REC_HDR_SIZE) {
			cbox->rewrite = TRUE;
			break;
		}
		uid = get32(data + pos);
		len = get32(data + pos + 4);
		if (uid == 0 || len < CACHE_TAG_SIZE ||
		    len > CACHE_ENTRY_MAX + CACHE_TAG_SIZE ||
		    size - pos - CACHE_REC_HDR_SIZE < len) {
			/* a write cut short: the rest is not used */
			cbox->rewrite = TRUE;
			break;
		}
		if (hash_table_lookup(cbox->uids, POINTER_CAST(uid)) != NULL)
			cbox->rewrite = TRUE;
		hash_table_update(cbox->uids, POINTER_CAST(uid),
				  POINTER_CAST(pos + 1));
	}
	cbox->new_from = pos > size ? size : pos;
}

/* Maps the file (read-only, private). It is never truncated in place:
   rewrites rename a new file over it and appends only add. */
static int cache_map_file(struct cache_mailbox *cbox)
{
	struct stat st;
	void *map;
	int fd;

	fd = open(cbox->path, O_RDONLY);
	if (fd == -1)
		return errno == ENOENT ? 0 : -1;
	if (fstat(fd, &st) < 0 || st.st_size > CACHE_FILE_MAX) {
		i_close_fd(&fd);
		return -1;
	}
	if (st.st_size == 0) {
		i_close_fd(&fd);
		return 1;
	}
	map = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	i_close_fd(&fd);
	if (map == MAP_FAILED)
		return -1;
	cbox->map = map;
	cbox->map_size = st.st_size;
	return 1;
}

/* Names the file's place: a file copied into another mailbox's index
   directory does not authenticate there. (Not the mailbox GUID: on
   maildir it is read from dovecot-uidlist, which every folder open would
   then parse in full.) */
static void cache_place_id(const char *path, unsigned char id[CACHE_PLACE_SIZE])
{
	static const unsigned char label[] = "popvault cache place";
	crypto_generichash_state state;

	crypto_generichash_init(&state, NULL, 0, CACHE_PLACE_SIZE);
	crypto_generichash_update(&state, label, sizeof(label));
	crypto_generichash_update(&state, (const unsigned char *)path,
				  strlen(path));
	crypto_generichash_final(&state, id, CACHE_PLACE_SIZE);
}

static void cache_load(struct mailbox *box, struct cache_mailbox *cbox)
{
	struct mailbox_status status;
	const char *dir, *error;
	unsigned char *p;
	int ret;

	cbox->loaded = TRUE;
	cbox->unusable = TRUE;
	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_INDEX, &dir) <= 0) {
		/* in-memory indexes: nowhere to keep it */
		return;
	}
	if (cache_get_key(box, &cbox->key, &error) < 0) {
		e_debug(box->event, "popvault: cache: not used: %s", error);
		return;
	}
	cbox->path = p_strconcat(box->pool, dir, "/" CACHE_FILE_NAME, NULL);
	mailbox_get_open_status(box, STATUS_UIDVALIDITY, &status);
	p = cbox->ad_prefix;
	memcpy(p, cbox->key->id, 16);
	cache_place_id(cbox->path, p + 16);
	p[32] = status.uidvalidity >> 24;
	p[33] = status.uidvalidity >> 16;
	p[34] = status.uidvalidity >> 8;
	p[35] = status.uidvalidity;

	cbox->records = buffer_create_dynamic(default_pool, 65536);
	hash_table_create_direct(&cbox->uids, default_pool, 1024);
	cbox->entry_pool = pool_alloconly_create("popvault cache entries",
						 65536);
	hash_table_create_direct(&cbox->entries, default_pool, 1024);
	cbox->hdr_buf = buffer_create_dynamic(default_pool, 4096);
	cbox->split_buf = buffer_create_dynamic(default_pool, 4096);
	cbox->dropped_buf = buffer_create_dynamic(default_pool, 256);
	cbox->plain_buf = buffer_create_dynamic(default_pool, 4096);
	cbox->unusable = FALSE;
	cbox->delivered = popvault_delivered_open(box, dir, cache_decrypt);

	ret = cache_map_file(cbox);
	if (ret < 0) {
		e_warning(box->event, "popvault: cache: can't read %s "
			  "(rebuilding it): %m", cbox->path);
	}
	cbox->existed = ret > 0;
	if (ret > 0)
		cache_parse_file(cbox);
	else
		cbox->rewrite = TRUE;
}

/* The whole file anew: header and every record of a message the
   mailbox still has. */
static void cache_rewrite(struct mailbox *box, struct cache_mailbox *cbox)
{
	struct hash_iterate_context *iter;
	const unsigned char *rec;
	const char *tmp;
	void *key, *value;
	buffer_t *out;
	uint32_t uid, seq;
	int fd;

	out = buffer_create_dynamic(default_pool,
		cbox->new_from + cbox->records->used + 64);
	buffer_append(out, CACHE_MAGIC, CACHE_MAGIC_SIZE);
	buffer_append(out, cbox->ad_prefix, sizeof(cbox->ad_prefix));
	buffer_append_zero(out, 4);
	iter = hash_table_iterate_init(cbox->uids);
	while (hash_table_iterate(iter, cbox->uids, &key, &value)) {
		uid = POINTER_CAST_TO(key, uint32_t);
		if (!mail_index_lookup_seq(box->view, uid, &seq))
			continue;
		rec = cache_record(cbox, POINTER_CAST_TO(value, size_t) - 1);
		buffer_append(out, rec, CACHE_REC_HDR_SIZE + get32(rec + 4));
	}
	hash_table_iterate_deinit(&iter);

	tmp = t_strdup_printf("%s.%s.tmp", cbox->path, my_pid);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1) {
		e_error(box->event, "popvault: cache: open(%s) failed: %m",
			tmp);
	} else if (write_full(fd, out->data, out->used) < 0 ||
		   close(fd) < 0) {
		e_error(box->event, "popvault: cache: write(%s) failed: %m",
			tmp);
		if (fd != -1)
			(void)close(fd);
		i_unlink(tmp);
	} else if (rename(tmp, cbox->path) < 0) {
		e_error(box->event, "popvault: cache: rename(%s, %s) "
			"failed: %m", tmp, cbox->path);
		i_unlink(tmp);
	}
	buffer_free(&out);
}

/* This session's records that are still current: an entry filled
   without BODYSTRUCTURE and then completed left an older record. */
static void cache_live_records(struct cache_mailbox *cbox, buffer_t *out)
{
	const unsigned char *data = cbox->records->data, *rec;
	size_t pos, size;
	void *value;

	for (pos = 0; pos < cbox->records->used; pos += size) {
		rec = data + pos;
		size = CACHE_REC_HDR_SIZE + get32(rec + 4);
		value = hash_table_lookup(cbox->uids,
					  POINTER_CAST(get32(rec)));
		if (value != NULL &&
		    POINTER_CAST_TO(value, size_t) - 1 == cbox->new_from + pos)
			buffer_append(out, rec, size);
	}
}

static void cache_append(struct mailbox *box, struct cache_mailbox *cbox)
{
	buffer_t *live;
	int fd;

	fd = open(cbox->path, O_WRONLY | O_APPEND);
	if (fd == -1) {
		if (errno != ENOENT) {
			e_error(box->event, "popvault: cache: open(%s) "
				"failed: %m", cbox->path);
		}
		return;
	}
	live = buffer_create_dynamic(default_pool, cbox->records->used);
	cache_live_records(cbox, live);
	/* one write: a concurrent session's records never interleave */
	if (write_full(fd, live->data, live->used) < 0) {
		e_error(box->event, "popvault: cache: write(%s) failed: %m",
			cbox->path);
	}
	i_close_fd(&fd);
	buffer_free(&live);
}

/* Records of messages expunged since: the file is rewritten without
   them, so that no header of a deleted message outlives it. */
static bool cache_has_expunged(struct mailbox *box,
			       struct cache_mailbox *cbox)
{
	struct hash_iterate_context *iter;
	void *key, *value;
	uint32_t seq;
	bool found = FALSE;

	iter = hash_table_iterate_init(cbox->uids);
	while (!found && hash_table_iterate(iter, cbox->uids, &key, &value)) {
		if (!mail_index_lookup_seq(box->view,
					   POINTER_CAST_TO(key, uint32_t), &seq))
			found = TRUE;
	}
	hash_table_iterate_deinit(&iter);
	return found;
}

static void cache_flush(struct mailbox *box, struct cache_mailbox *cbox)
{
	if (box->view == NULL)
		return;
	if (!cbox->loaded && cbox->expunged) {
		/* expunges by others go when a session next reads it */
		cache_load(box, cbox);
	}
	if (!cbox->loaded || cbox->unusable)
		return;
	T_BEGIN {
		if (cbox->rewrite || !cbox->existed ||
		    cache_has_expunged(box, cbox))
			cache_rewrite(box, cbox);
		else if (cbox->records->used > 0)
			cache_append(box, cbox);
	} T_END;
	/* Once every message has its entry here, what the delivered file
	   still holds is of messages gone. Counted loosely (a UID expunged
	   since may be counted): a file removed too early only costs a
	   message its first open's decryption. */
	popvault_delivered_close(&cbox->delivered,
		hash_table_count(cbox->uids) >=
		mail_index_view_get_messages_count(box->view));
}

static void cache_free(struct cache_mailbox *cbox)
{
	if (cbox->records != NULL) {
		sodium_memzero(buffer_get_modifiable_data(cbox->records, NULL),
			       cbox->records->used);
		buffer_free(&cbox->records);
		/* OpenSSL wipes the key schedule */
		EVP_CIPHER_CTX_free(cbox->seal_ctx);
		EVP_CIPHER_CTX_free(cbox->open_ctx);
		cbox->seal_ctx = NULL;
		cbox->open_ctx = NULL;
		if (cbox->map != NULL &&
		    munmap((void *)cbox->map, cbox->map_size) < 0)
			i_error("popvault: cache: munmap(%s) failed: %m",
				cbox->path);
		cbox->map = NULL;
		cbox->map_size = 0;
		cbox->new_from = 0;
		popvault_delivered_close(&cbox->delivered, FALSE);
		hash_table_destroy(&cbox->uids);
		hash_table_destroy(&cbox->entries);
		pool_unref(&cbox->entry_pool);
		cache_arena_free(cbox);
		cache_buf_wipe(cbox->hdr_buf);
		cache_buf_wipe(cbox->split_buf);
		cache_buf_wipe(cbox->dropped_buf);
		buffer_free(&cbox->hdr_buf);
		buffer_free(&cbox->split_buf);
		buffer_free(&cbox->dropped_buf);
		buffer_free(&cbox->plain_buf);
	}
	cbox->loaded = FALSE;
	cbox->unusable = FALSE;
	cbox->rewrite = FALSE;
	cbox->existed = FALSE;
	cbox->expunged = FALSE;
	cbox->auth_failures = 0;
	/* a nonce is never used twice, even across opens */
	sodium_memzero(cbox->nonces, sizeof(cbox->nonces));
	cbox->nonces_left = 0;
}

/* ---- filling ---- */

/* The raw header into dest (e->hdr points there until the entry keeps
   it in one form or the other). */
static int cache_read_header(struct mail *mail, buffer_t *dest,
			     struct cache_entry *e)
{
	struct message_size hdr_size;
	struct istream *input;
	const unsigned char *data;
	size_t size;
	ssize_t ret;

	if (mail_get_hdr_stream(mail, &hdr_size, &input) < 0)
		return -1;
	if (hdr_size.physical_size > CACHE_ENTRY_MAX)
		return -1;
	e->hdr_size = hdr_size.physical_size;
	buffer_set_used_size(dest, 0);
	i_stream_seek(input, 0);
	while (dest->used < e->hdr_size &&
	       (ret = i_stream_read_more(input, &data, &size)) > 0) {
		size = I_MIN(size, e->hdr_size - dest->used);
		buffer_append(dest, data, size);
		i_stream_skip(input, size);
	}
	e->hdr = dest->data;
	e->hdr_form = CACHE_HDR_RAW;
	return dest->used == e->hdr_size ? 0 : -1;
}

static bool cache_field_is_dropped(const char *name)
{
	for (unsigned int i = 0; cache_dropped_fields[i] != NULL; i++) {
		if (strcasecmp(cache_dropped_fields[i], name) == 0)
			return TRUE;
	}
	return FALSE;
}

/* Adds name to the serialized dropped names unless there (in any case) */
static void cache_split_add_dropped(buffer_t *dropped, unsigned int *count,
				    const char *name, size_t name_len)
{
	const unsigned char *pos = dropped->data, *old;
	const unsigned char *end = pos + dropped->used;
	size_t len;

	while (cache_dropped_next(&pos, end, &old, &len)) {
		if (len == name_len &&
		    strncasecmp((const char *)old, name, len) == 0)
			return;
	}
	/* the spelling of the message's first one */
	buffer_append_c(dropped, name_len);
	buffer_append(dropped, name, name_len);
	(*count)++;
}

/* The header in the split form: each field as the header filter
   (istream-header-filter.c, read_header()) outputs an included one,
   parsed by the same parser. FALSE when the split could not reproduce
   the filter's output exactly: no end of header (the filter adds one
   depending on the last line), a line without newline, an empty name or
   a continuation without a first line, lengths beyond the form's. */
static bool cache_split_header(struct cache_mailbox *cbox,
			       struct cache_entry *e)
{
	struct message_header_parser_ctx *parser;
	struct message_header_line *hdr;
	struct istream *input;
	buffer_t *out, *dropped;
	unsigned char *p;
	unsigned int fields = 0, dropped_count = 0;
	bool in_field = FALSE, skip = FALSE, eoh = FALSE, ok = TRUE;
	size_t start = 0, size;
	int ret;

	out = cbox->split_buf;
	dropped = cbox->dropped_buf;
	buffer_set_used_size(out, 0);
	buffer_set_used_size(dropped, 0);
	input = i_stream_create_from_data(e->hdr, e->hdr_size);
	parser = message_parse_header_init(input, NULL, 0);
	while (ok && (ret = message_parse_header_next(parser, &hdr)) > 0) {
		if (hdr->eoh) {
			eoh = TRUE;
			break;
		}
		if (hdr->no_newline) {
			ok = FALSE;
			break;
		}
		if (!hdr->continued) {
			/* the previous field ends */
			if (in_field) {
				size = out->used - start - 3;
				if (size > CACHE_FIELD_SIZE_MAX) {
					ok = FALSE;
					break;
				}
				p = buffer_get_space_unsafe(out, start + 1, 2);
				p[0] = size >> 8;
				p[1] = size;
			}
			in_field = FALSE;
			skip = cache_field_is_dropped(hdr->name);
			if (skip) {
				if (hdr->name_len > CACHE_FIELD_NAME_MAX) {
					ok = FALSE;
					break;
				}
				cache_split_add_dropped(dropped, &dropped_count,
							hdr->name,
							hdr->name_len);
				continue;
			}
			if (hdr->name_len == 0 ||
			    hdr->name_len > CACHE_FIELD_NAME_MAX) {
				ok = FALSE;
				break;
			}
			in_field = TRUE;
			fields++;
			start = out->used;
			buffer_append_c(out, hdr->name_len);
			buffer_append_zero(out, 2);
			buffer_append(out, hdr->name, hdr->name_len);
			buffer_append(out, hdr->middle, hdr->middle_len);
		} else if (skip) {
			continue;
		} else if (!in_field) {
			/* continued lines before any first line */
			ok = FALSE;
			break;
		}
		buffer_append(out, hdr->value, hdr->value_len);
		buffer_append(out, "\r\n", 2);
	}
	if (ok && in_field) {
		size = out->used - start - 3;
		if (size > CACHE_FIELD_SIZE_MAX)
			ok = FALSE;
		else {
			p = buffer_get_space_unsafe(out, start + 1, 2);
			p[0] = size >> 8;
			p[1] = size;
		}
	}
	message_parse_header_deinit(&parser);
	i_stream_unref(&input);
	if (!ok || !eoh || fields > CACHE_FIELDS_MAX ||
	    dropped_count > CACHE_DROPPED_MAX)
		return FALSE;

	/* the caller copies them into the entry's pool */
	e->fields = out->data;
	e->fields_size = out->used;
	e->field_count = fields;
	e->dropped = dropped->data;
	e->dropped_size = dropped->used;
	e->dropped_count = dropped_count;
	e->hdr_form = CACHE_HDR_SPLIT;
	e->hdr = NULL;
	e->hdr_size = 0;
	return TRUE;
}

/* The Date header's time as index-mail computes it for mail_get_date()
   (index_mail_cache_sent_date()): the first Date field's value as
   mail_get_first_header() gives it (the line after the colon and its
   blanks, continuation lines joined by LF, the last LF dropped, NULs
   replaced), message_date_parse(), 0 and 0 when absent or invalid, the
   time kept in 32 bits. Taken from the split form, so that filling an
   entry parses the header once, not again through index-mail. */
static void cache_split_date(const struct cache_entry *e, time_t *date_r,
			     int *tz_r)
{
	const unsigned char *pos = e->fields, *end = pos + e->fields_size;
	struct cache_hdr_field field;
	time_t t = 0;
	int tz = 0;

	while (cache_split_next(&pos, end, &field)) {
		if (!cache_field_name_is(&field, "Date", 4))
			continue;
		T_BEGIN {
			const unsigned char *p = field.data + field.name_len;
			const unsigned char *fend = field.data + field.size;
			buffer_t *value = t_buffer_create(field.size);
			const char *str;

			p = memchr(p, ':', fend - p);
			/* the split keeps only lines with a colon */
			i_assert(p != NULL);
			for (p++; p < fend && IS_LWSP(*p); p++) ;
			/* each line ends in the CRLF the split added */
			for (; p < fend; p++) {
				if (*p == '\r' && p + 1 < fend && p[1] == '\n')
					continue;
				buffer_append_c(value, *p);
			}
			if (value->used > 0 &&
			    ((const char *)value->data)[value->used - 1] == '\n')
				buffer_set_used_size(value, value->used - 1);
			str = message_header_strdup(pool_datastack_create(),
						    value->data, value->used);
			if (!message_date_parse((const unsigned char *)str,
						strlen(str), &t, &tz)) {
				t = 0;
				tz = 0;
			}
		} T_END;
		break;
	}
	*date_r = popvault_sent_date_time(t);
	*tz_r = tz;
}

/* p_memdup(), which refuses 0 bytes */
static const unsigned char *cache_memdup(pool_t pool, const void *data,
					 size_t size)
{
	return size == 0 ? (const unsigned char *)"" :
		p_memdup(pool, data, size);
}

static struct mail *cache_fill_mail(struct cache_mailbox *cbox,
				    struct mail *mail)
{
	struct cache_mail *cmail =
		CACHE_MAIL_CONTEXT((struct mail_private *)mail);

	if (cmail->fill_mail == NULL) {
		/* nothing wanted ahead: what a field needs is read when it
		   is asked for, so the body is parsed only for
		   BODYSTRUCTURE */
		cbox->filling = TRUE;
		cmail->fill_mail = mail_alloc(mail->transaction, 0, NULL);
		cbox->filling = FALSE;
	}
	return cmail->fill_mail;
}

/* The rest of a new entry: a split header's fields copied into pool,
   the dates and sizes as fmail gives them (none of which decrypts: the
   file name, the index or stat() hold them), then sealed as a record. */
static struct cache_entry *
cache_fill_finish(struct cache_mailbox *cbox, struct mail *fmail,
		  pool_t pool, struct cache_entry *e)
{
	if (e->hdr_form == CACHE_HDR_SPLIT) {
		e->fields = cache_memdup(pool, e->fields, e->fields_size);
		e->dropped = cache_memdup(pool, e->dropped, e->dropped_size);
	}
	if (mail_get_received_date(fmail, &e->received_date) < 0 ||
	    (e->save_date_ret = mail_get_save_date(fmail, &e->save_date)) < 0 ||
	    mail_get_virtual_size(fmail, &e->virtual_size) < 0 ||
	    mail_get_physical_size(fmail, &e->physical_size) < 0)
		return NULL;
	cache_add_record(cbox, e);
	hash_table_update(cbox->entries, POINTER_CAST(e->uid), e);
	return e;
}

/* A new entry computed the normal way by a mail of its own (decrypting
   the message once): the header, dates and sizes, and BODYSTRUCTURE
   only when with_body (parsing the whole message). */
static struct cache_entry *
cache_fill(struct cache_mailbox *cbox, struct mail *mail, bool with_body)
{
	struct mail *fmail = cache_fill_mail(cbox, mail);
	struct cache_entry *e;
	pool_t pool = cache_entry_pool(cbox);
	const char *bodystructure = NULL;

	e = p_new(pool, struct cache_entry, 1);
	e->uid = mail->uid;
	if (!mail_set_uid(fmail, mail->uid) ||
	    cache_read_header(fmail, cbox->hdr_buf, e) < 0)
		return NULL;
	if (cache_split_header(cbox, e))
		cache_split_date(e, &e->sent_date, &e->sent_tz);
	else if (mail_get_date(fmail, &e->sent_date, &e->sent_tz) < 0)
		return NULL;
	else
		e->hdr = cache_memdup(pool, e->hdr, e->hdr_size);
	if (with_body &&
	    mail_get_special(fmail, MAIL_FETCH_IMAP_BODYSTRUCTURE,
			     &bodystructure) < 0)
		return NULL;
	e->bodystructure = p_strdup(pool, bodystructure);
	e->bodystructure_len = bodystructure == NULL ? 0 : strlen(bodystructure);
	return cache_fill_finish(cbox, fmail, pool, e);
}

/* A new entry from the one delivery made (popvault-crypt-delivered.c):
   its header and BODYSTRUCTURE, without reading the message. Only in
   the split form, which is the same for the header as delivered (CRLF)
   and as stored (maildir's LF): a header the split can't take is read
   from the message. */
static struct cache_entry *
cache_fill_delivered(struct cache_mailbox *cbox, struct mail *mail)
{
	struct mail *fmail = cache_fill_mail(cbox, mail);
	pool_t pool = cache_entry_pool(cbox);
	const char *guid, *bodystructure;
	struct cache_entry *e;

	if (!mail_set_uid(fmail, mail->uid) ||
	    mail_get_special(fmail, MAIL_FETCH_GUID, &guid) < 0 ||
	    popvault_delivered_take(cbox->delivered, guid, cbox->hdr_buf,
				    pool, &bodystructure) <= 0)
		return NULL;
	e = p_new(pool, struct cache_entry, 1);
	e->uid = mail->uid;
	e->hdr = cbox->hdr_buf->data;
	e->hdr_size = cbox->hdr_buf->used;
	e->bodystructure = bodystructure;
	e->bodystructure_len = strlen(bodystructure);
	if (!cache_split_header(cbox, e))
		return NULL;
	cache_split_date(e, &e->sent_date, &e->sent_tz);
	return cache_fill_finish(cbox, fmail, pool, e);
}

/* Completes an entry filled without BODYSTRUCTURE: the message is
   decrypted and parsed now, and a full record supersedes the old one. */
static struct cache_entry *
cache_fill_body(struct cache_mailbox *cbox, struct mail *mail,
		const struct cache_entry *old)
{
	struct mail *fmail = cache_fill_mail(cbox, mail);
	/* not cache_entry_pool(): that may free old's memory */
	pool_t pool = cbox->entry_pool;
	const char *bodystructure;
	struct cache_entry *e;

	if (!mail_set_uid(fmail, mail->uid) ||
	    mail_get_special(fmail, MAIL_FETCH_IMAP_BODYSTRUCTURE,
			     &bodystructure) < 0)
		return NULL;
	e = p_new(pool, struct cache_entry, 1);
	*e = *old;
	e->bodystructure = p_strdup(pool, bodystructure);
	e->bodystructure_len = strlen(bodystructure);
	cache_add_record(cbox, e);
	hash_table_update(cbox->entries, POINTER_CAST(e->uid), e);
	return e;
}

/* A record that does not authenticate or parse: never served, the
   message is read instead and the file rebuilt without it. */
static void cache_record_failed(struct mail *mail, struct cache_mailbox *cbox)
{
	if (cbox->auth_failures++ == 0) {
		e_warning(mail->box->event, "popvault: cache: %s: "
			  "entry of uid %u does not authenticate "
			  "(ignored, the file is rebuilt)",
			  cbox->path, mail->uid);
	}
	hash_table_remove(cbox->uids, POINTER_CAST(mail->uid));
	cbox->rewrite = TRUE;
}

/* The mail's entry, or NULL: then the caller takes Dovecot's path.
   with_body: the entry must have BODYSTRUCTURE. */
static const struct cache_entry *
cache_mail_entry(struct mail *mail, bool with_body)
{
	struct cache_mailbox *cbox = CACHE_BOX_CONTEXT(mail->box);
	struct cache_entry *e;
	void *value;
	size_t offset;

	if (cbox->filling || mail->uid == 0 || mail->saving)
		return NULL;
	if (!cbox->loaded)
		cache_load(mail->box, cbox);
	if (cbox->unusable)
		return NULL;
	e = hash_table_lookup(cbox->entries, POINTER_CAST(mail->uid));
	if (e == NULL) {
		value = hash_table_lookup(cbox->uids, POINTER_CAST(mail->uid));
		if (value != NULL) {
			offset = POINTER_CAST_TO(value, size_t) - 1;
			e = cache_open_record(cbox, offset);
			if (e == NULL)
				cache_record_failed(mail, cbox);
		}
	}
	if (e != NULL && (!with_body || e->bodystructure != NULL))
		return e;
	/* a lookup that must not open the message (search's first pass) */
	if (mail->lookup_abort != MAIL_LOOKUP_ABORT_NEVER)
		return NULL;
	if (e != NULL)
		return cache_fill_body(cbox, mail, e);
	if (cbox->delivered != NULL &&
	    (e = cache_fill_delivered(cbox, mail)) != NULL)
		return e;
	return cache_fill(cbox, mail, with_body || cbox->body_ahead);
}

/* ---- mail vfuncs ---- */

static int cache_get_date(struct mail *_mail, time_t *date_r, int *tz_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e = cache_mail_entry(_mail, FALSE);

	if (e == NULL)
		return cmail->module_ctx.super.get_date(_mail, date_r, tz_r);
	*date_r = e->sent_date;
	*tz_r = e->sent_tz;
	return 0;
}

static int cache_get_received_date(struct mail *_mail, time_t *date_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e = cache_mail_entry(_mail, FALSE);

	if (e == NULL)
		return cmail->module_ctx.super.get_received_date(_mail, date_r);
	*date_r = e->received_date;
	return 0;
}

static int cache_get_save_date(struct mail *_mail, time_t *date_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e = cache_mail_entry(_mail, FALSE);

	if (e == NULL)
		return cmail->module_ctx.super.get_save_date(_mail, date_r);
	*date_r = e->save_date;
	return e->save_date_ret;
}

static int cache_get_virtual_size(struct mail *_mail, uoff_t *size_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e = cache_mail_entry(_mail, FALSE);

	if (e == NULL)
		return cmail->module_ctx.super.get_virtual_size(_mail, size_r);
	*size_r = e->virtual_size;
	return 0;
}

static int cache_get_physical_size(struct mail *_mail, uoff_t *size_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e = cache_mail_entry(_mail, FALSE);

	if (e == NULL)
		return cmail->module_ctx.super.get_physical_size(_mail, size_r);
	*size_r = e->physical_size;
	return 0;
}

/* BODYSTRUCTURE as computed, and BODY from it as index-mail does when
   only BODYSTRUCTURE is in its cache. ENVELOPE goes to index-mail, which
   builds it from the header lookup below, as when its cache has the
   headers but not imap.envelope. */
static int cache_get_special(struct mail *_mail, enum mail_fetch_field field,
			     const char **value_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e;
	const char *error, *bodystructure;
	string_t *str;

	if ((field != MAIL_FETCH_IMAP_BODYSTRUCTURE &&
	     field != MAIL_FETCH_IMAP_BODY) ||
	    (e = cache_mail_entry(_mail, TRUE)) == NULL)
		return cmail->module_ctx.super.get_special(_mail, field, value_r);
	/* the entry may go with the next lookup: the caller's copy */
	bodystructure = p_strndup(mail->data_pool, e->bodystructure,
				  e->bodystructure_len);
	if (field == MAIL_FETCH_IMAP_BODYSTRUCTURE) {
		*value_r = bodystructure;
		return 0;
	}
	str = str_new(mail->data_pool, 128);
	if (imap_body_parse_from_bodystructure(bodystructure, str,
					       &error) < 0)
		return cmail->module_ctx.super.get_special(_mail, field, value_r);
	*value_r = str_c(str);
	return 0;
}

static void cache_mail_drop_stream(struct cache_mail *cmail)
{
	i_stream_unref(&cmail->hdr_stream);
}

static bool cache_entry_dropped(const struct cache_entry *e,
				const struct mailbox_header_lookup_ctx *headers)
{
	const unsigned char *pos = e->dropped, *name;
	const unsigned char *end = pos + e->dropped_size;
	size_t len;

	while (cache_dropped_next(&pos, end, &name, &len)) {
		for (unsigned int i = 0; i < headers->count; i++) {
			if (strncasecmp(headers->name[i], (const char *)name,
					len) == 0 &&
			    headers->name[i][len] == '\0')
				return TRUE;
		}
	}
	return FALSE;
}

/* The header filter's output for the wanted fields from the split form:
   the matching fields in their order, then the end of header. In
   data_pool, as index-mail keeps the headers it found in its cache. */
static struct istream *
cache_split_stream(struct mail_private *mail, const struct cache_entry *e,
		   const struct mailbox_header_lookup_ctx *headers)
{
	string_t *out = str_new(mail->data_pool, 256);

	T_BEGIN {
		size_t *lens = t_new(size_t, headers->count);

		for (unsigned int j = 0; j < headers->count; j++)
			lens[j] = strlen(headers->name[j]);
		const unsigned char *pos = e->fields;
		const unsigned char *end = pos + e->fields_size;
		struct cache_hdr_field field;

		while (cache_split_next(&pos, end, &field)) {
			for (unsigned int j = 0; j < headers->count; j++) {
				if (cache_field_name_is(&field,
							headers->name[j],
							lens[j])) {
					buffer_append(out, field.data,
						      field.size);
					break;
				}
			}
		}
	} T_END;
	str_append_data(out, "\r\n", 2);
	return i_stream_create_from_data(str_data(out), str_len(out));
}

/* What index-mail returns for headers it did not find in its cache: the
   header filtered to the wanted fields, over the same header bytes. */
static int cache_get_header_stream(struct mail *_mail,
				   struct mailbox_header_lookup_ctx *headers,
				   struct istream **stream_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	const struct cache_entry *e = cache_mail_entry(_mail, FALSE);
	struct istream *input;

	if (e == NULL ||
	    (e->hdr_form == CACHE_HDR_SPLIT && cache_entry_dropped(e, headers))) {
		/* a field the entry does not keep: from the message */
		return cmail->module_ctx.super.get_header_stream(_mail,
			headers, stream_r);
	}
	cache_mail_drop_stream(cmail);
	if (e->hdr_form == CACHE_HDR_SPLIT) {
		cmail->hdr_stream = cache_split_stream(mail, e, headers);
		*stream_r = cmail->hdr_stream;
		return 0;
	}
	input = i_stream_create_copy_from_data(e->hdr, e->hdr_size);
	cmail->hdr_stream = i_stream_create_header_filter(input,
		HEADER_FILTER_INCLUDE | HEADER_FILTER_ADD_MISSING_EOH |
		HEADER_FILTER_HIDE_BODY, headers->name, headers->count,
		*null_header_filter_callback, NULL);
	i_stream_unref(&input);
	*stream_r = cmail->hdr_stream;
	return 0;
}

static void cache_add_temp_wanted_fields(struct mail *_mail,
					 enum mail_fetch_field fields,
					 struct mailbox_header_lookup_ctx *headers)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);

	cmail->module_ctx.super.add_temp_wanted_fields(_mail,
		fields & ENUM_NEGATE(CACHE_STRIP_FIELDS), headers);
}

static void cache_mail_expunge(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);
	struct cache_mailbox *cbox = CACHE_BOX_CONTEXT(_mail->box);

	cbox->expunged = TRUE;
	cmail->module_ctx.super.expunge(_mail);
}

static void cache_mail_close(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);

	cache_mail_drop_stream(cmail);
	cmail->module_ctx.super.close(_mail);
}

static void cache_mail_free(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mail *cmail = CACHE_MAIL_CONTEXT(mail);

	cache_mail_drop_stream(cmail);
	if (cmail->fill_mail != NULL)
		mail_free(&cmail->fill_mail);
	cmail->module_ctx.super.free(_mail);
}

static void cache_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct cache_mailbox *cbox = CACHE_BOX_CONTEXT(_mail->box);
	struct mail_vfuncs *v = mail->vlast;
	struct index_mail *imail;
	struct cache_mail *cmail;

	if (cbox == NULL || cbox->filling)
		return;
	cmail = p_new(mail->pool, struct cache_mail, 1);
	cmail->module_ctx.super = *v;
	mail->vlast = &cmail->module_ctx.super;
	v->close = cache_mail_close;
	v->free = cache_mail_free;
	v->expunge = cache_mail_expunge;
	v->add_temp_wanted_fields = cache_add_temp_wanted_fields;
	v->get_date = cache_get_date;
	v->get_received_date = cache_get_received_date;
	v->get_save_date = cache_get_save_date;
	v->get_virtual_size = cache_get_virtual_size;
	v->get_physical_size = cache_get_physical_size;
	v->get_special = cache_get_special;
	v->get_header_stream = cache_get_header_stream;
	MODULE_CONTEXT_SET(mail, popvault_cache_mail_module, cmail);

	/* index_mail_set_seq() would otherwise open (decrypt) the message
	   ahead to prefetch them, cached or not */
	imail = INDEX_MAIL(_mail);
	mail->wanted_fields &= ENUM_NEGATE(CACHE_STRIP_FIELDS);
	imail->data.wanted_fields &= ENUM_NEGATE(CACHE_STRIP_FIELDS);
}

/* ---- mailbox ---- */

static void cache_mailbox_close(struct mailbox *box)
{
	struct cache_mailbox *cbox = CACHE_BOX_CONTEXT(box);

	cache_flush(box, cbox);
	cache_free(cbox);
	cbox->module_ctx.super.close(box);
}

static void cache_mailbox_free(struct mailbox *box)
{
	struct cache_mailbox *cbox = CACHE_BOX_CONTEXT(box);

	cache_free(cbox);
	cbox->module_ctx.super.free(box);
}

static void cache_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct cache_mailbox *cbox;
	const char *driver = box->storage->name;

	if (!cache_wanted(box))
		return;
	/* the storages whose mails are index_mails popvault encrypts */
	if (strcmp(driver, "maildir") != 0 && strcmp(driver, "sdbox") != 0 &&
	    strcmp(driver, "mdbox") != 0) {
		e_debug(box->event, "popvault: cache: off (%s storage)", driver);
		return;
	}
	cbox = p_new(box->pool, struct cache_mailbox, 1);
	cbox->body_ahead = popvault_compat_storage_caches_field(box->storage,
							"imap.bodystructure");
	cbox->module_ctx.super = *v;
	box->vlast = &cbox->module_ctx.super;
	v->close = cache_mailbox_close;
	v->free = cache_mailbox_free;
	MODULE_CONTEXT_SET(box, popvault_cache_storage_module, cbox);
	e_debug(box->event, "popvault: cache: on");
}

static struct mail_storage_hooks cache_hooks = {
	.mailbox_allocated = cache_mailbox_allocated,
	.mail_allocated = cache_mail_allocated,
};

/* After lib95_popvault_crypt's mailbox hook, which decides on Dovecot's
   cache; as a mail layer inside the decrypting one, which the entries
   are filled through. */
static struct module cache_module = {
	.path = "lib96_popvault_cache_plugin.so"
};

void popvault_crypt_cache_init(popvault_cache_key_func_t *get_key,
			       popvault_cache_wanted_func_t *wanted,
			       popvault_delivered_decrypt_func_t *decrypt)
{
	cache_get_key = get_key;
	cache_wanted = wanted;
	cache_decrypt = decrypt;
	mail_storage_hooks_add_forced(&cache_module, &cache_hooks);
}

void popvault_crypt_cache_deinit(void)
{
	mail_storage_hooks_remove(&cache_hooks);
}
