/* Unit tests for the popvault PVLT container (v2 written, v1 read) and
   its streams. */

#include "lib.h"
#include "buffer.h"
#include "ioloop.h"
#include "str.h"
#include "istream.h"
#include "ostream.h"
#include "istream-private.h"
#include "test-common.h"
#include "popvault-container.h"
#include "popvault-crypt-stream.h"
#include "hex-binary.h"
#include "pvlt-v1-fixtures.h"

#include <sodium.h>
#include "popvault-compat.h"

#define SMALL_LOG2 12
#define SMALL_CHUNK (1U << SMALL_LOG2)
#define FULL_CT (SMALL_CHUNK + POPVAULT_TAG_SIZE)

static const enum popvault_cipher ciphers[] = {
	POPVAULT_CIPHER_AES256GCM,
	POPVAULT_CIPHER_XCHACHA20POLY1305,
};

static unsigned char user_pk[32], user_sk[32];
static unsigned char other_pk[32], other_sk[32];

static unsigned char *random_data(size_t size)
{
	unsigned char *data = i_malloc(I_MAX(size, 1));

	randombytes_buf(data, size);
	return data;
}

/* Encrypt via the ostream, writing in pseudo-random piece sizes. */
static buffer_t *
encrypt_stream(struct popvault_sender *sender, const unsigned char *data,
	       size_t size)
{
	buffer_t *buf = buffer_create_dynamic(default_pool, size + 1024);
	struct ostream *output, *enc;
	size_t pos = 0, n;

	output = o_stream_create_buffer(buf);
	enc = o_stream_create_popvault_encrypt(output, sender);
	while (pos < size) {
		/* note: I_MIN() evaluates its arguments twice */
		n = 1 + randombytes_uniform(3 * SMALL_CHUNK);
		n = I_MIN(size - pos, n);
		o_stream_nsend(enc, data + pos, n);
		pos += n;
	}
	if (o_stream_finish(enc) <= 0) {
		i_error("finish failed: %s", o_stream_get_error(enc));
		test_assert(FALSE);
	}
	o_stream_destroy(&enc);
	o_stream_destroy(&output);
	return buf;
}

/* Read the whole istream; returns 0 on clean EOF, -1 on error. */
static int read_all(struct istream *input, buffer_t *out)
{
	const unsigned char *data;
	size_t size;
	ssize_t ret;

	while ((ret = i_stream_read_more(input, &data, &size)) > 0) {
		buffer_append(out, data, size);
		i_stream_skip(input, size);
	}
	test_assert(ret == -1);
	return input->stream_errno == 0 ? 0 : -1;
}

static void test_hkdf_rfc5869(void)
{
	/* RFC 5869 test case 1 */
	unsigned char ikm[22], salt[13], info[10], okm[42];
	static const unsigned char expected[42] = {
		0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43,
		0x4f, 0x64, 0xd0, 0x36, 0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90,
		0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56, 0xec, 0xc4,
		0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18,
		0x58, 0x65
	};
	unsigned int i;

	test_begin("popvault hkdf-sha256 rfc5869");
	memset(ikm, 0x0b, sizeof(ikm));
	for (i = 0; i < sizeof(salt); i++) salt[i] = i;
	for (i = 0; i < sizeof(info); i++) info[i] = 0xf0 + i;
	popvault_hkdf_sha256(salt, sizeof(salt), ikm, sizeof(ikm),
			     info, sizeof(info), okm, sizeof(okm));
	test_assert(memcmp(okm, expected, sizeof(okm)) == 0);
	test_end();
}

static void test_plain_size(void)
{
	static const struct {
		uoff_t total;
		uint8_t log2;
		int ret;
		uoff_t plain;
	} tests[] = {
		{ 0, 12, -1, 0 },
		{ POPVAULT_HEADER_SIZE, 12, -1, 0 },
		{ POPVAULT_HEADER_SIZE + 15, 12, -1, 0 },
		{ POPVAULT_HEADER_SIZE + 16, 12, 0, 0 },
		{ POPVAULT_HEADER_SIZE + 17, 12, 0, 1 },
		{ POPVAULT_HEADER_SIZE + 4095 + 16, 12, 0, 4095 },
		{ POPVAULT_HEADER_SIZE + 4096 + 16, 12, 0, 4096 },
		{ POPVAULT_HEADER_SIZE + 4112 + 16, 12, -1, 0 }, /* empty last */
		{ POPVAULT_HEADER_SIZE + 4112 + 8, 12, -1, 0 },  /* short last */
		{ POPVAULT_HEADER_SIZE + 4112 + 17, 12, 0, 4097 },
		{ POPVAULT_HEADER_SIZE + 3 * 4112, 12, 0, 3 * 4096 },
		{ POPVAULT_HEADER_SIZE + 65536 + 16, 16, 0, 65536 },
		{ POPVAULT_HEADER_SIZE + 65552 + 1000 + 16, 16, 0, 66536 },
		{ POPVAULT_HEADER_SIZE + 16, 11, -1, 0 }, /* bad log2 */
		{ POPVAULT_HEADER_SIZE + 16, 21, -1, 0 },
		{ POPVAULT_HEADER_SIZE + (1ULL << 20) + 16, 20, 0, 1ULL << 20 },
	};
	unsigned int i;
	uoff_t plain;

	test_begin("popvault plain_size table");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		plain = 12345;
		int ret = popvault_container_plain_size(tests[i].total,
							tests[i].log2, &plain);
		test_assert_idx(ret == tests[i].ret, i);
		if (ret == 0) {
			test_assert_idx(plain == tests[i].plain, i);
			test_assert_idx(popvault_container_encrypted_size(
				plain, tests[i].log2) == tests[i].total, i);
		}
	}
	/* exhaustive consistency for small sizes */
	for (plain = 0; plain < 3 * 4096 + 5; plain++) {
		uoff_t total = popvault_container_encrypted_size(plain, 12), p2;
		test_assert(popvault_container_plain_size(total, 12, &p2) == 0 &&
			    p2 == plain);
	}
	test_end();
}

static void test_header_parse_garbage(void)
{
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	struct popvault_msg_cipher *mc;
	struct popvault_header hdr;
	unsigned char header[POPVAULT_HEADER_SIZE], garbage[300];
	const char *error;
	unsigned int i, j;
	buffer_t *out;

	test_begin("popvault header parser: garbage and short inputs");
	sender = popvault_sender_create(user_pk, POPVAULT_CIPHER_AES256GCM);
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);
	test_assert(popvault_sender_begin_message(sender, header, &mc, &error) == 0);
	popvault_msg_cipher_free(&mc);

	test_assert(popvault_header_parse(header, sizeof(header), &hdr, &error) == 0);
	test_assert(hdr.version == 2 && hdr.cipher == 1 && hdr.chunk_log2 == 16);
	test_assert(popvault_header_parse(NULL, 0, &hdr, &error) < 0);
	for (i = 0; i < sizeof(header); i++) {
		/* every truncation fails */
		test_assert_idx(popvault_header_parse(header, i, &hdr, &error) < 0, i);
		test_assert_idx(popvault_container_is_encrypted(header, i) ==
				(i >= POPVAULT_MAGIC_SIZE), i);
	}
	static const struct { unsigned int offset; unsigned char value; } bad[] = {
		{ 0, 0x88 }, { 7, 0x00 }, { 8, 0 }, { 8, 3 }, { 9, 0 }, { 9, 3 },
		{ 10, 11 }, { 10, 21 }, { 11, 1 },
	};
	for (i = 0; i < N_ELEMENTS(bad); i++) {
		unsigned char copy[sizeof(header)];
		memcpy(copy, header, sizeof(copy));
		copy[bad[i].offset] = bad[i].value;
		test_assert_idx(popvault_header_parse(copy, sizeof(copy), &hdr, &error) < 0, i);
	}
	test_assert(!popvault_container_is_encrypted((const void *)"From: a\r\n", 9));
	test_assert(!popvault_container_is_encrypted(NULL, 0));

	/* random garbage, with and without a valid magic, through the parser
	   and the whole-container decrypter (fuzz-style smoke test) */
	out = buffer_create_dynamic(default_pool, 256);
	for (i = 0; i < 2000; i++) {
		size_t size = randombytes_uniform(sizeof(garbage) + 1);
		randombytes_buf(garbage, sizeof(garbage));
		if (i % 2 == 0) {
			/* valid header prefix (up to all of it) */
			size_t n = I_MIN(size, 20 + (i % 100));
			memcpy(garbage, header, I_MIN(n, sizeof(header)));
		}
		(void)popvault_header_parse(garbage, size, &hdr, &error);
		buffer_set_used_size(out, 0);
		T_BEGIN {
			test_assert(popvault_decrypt_buffer(receiver, garbage,
				size, out, &error) < 0);
		} T_END;
		test_assert(out->used == 0);
	}
	/* random byte mutations of a valid small container */
	buffer_t *valid = buffer_create_dynamic(default_pool, 256);
	test_assert(popvault_encrypt_buffer(sender, (const void *)"hello", 5,
					    valid, &error) == 0);
	for (i = 0; i < valid->used; i++) {
		for (j = 0; j < 8; j++) {
			buffer_t *copy = buffer_create_dynamic(default_pool, 256);
			buffer_append_buf(copy, valid, 0, SIZE_MAX);
			((unsigned char *)buffer_get_modifiable_data(copy, NULL))[i] ^= 1 << j;
			buffer_set_used_size(out, 0);
			T_BEGIN {
				test_assert_idx(popvault_decrypt_buffer(receiver,
					copy->data, copy->used, out, &error) < 0, i);
			} T_END;
			test_assert_idx(out->used == 0, i);
			buffer_free(&copy);
		}
	}
	buffer_set_used_size(out, 0);
	test_assert(popvault_decrypt_buffer(receiver, valid->data, valid->used,
					    out, &error) == 0);
	test_assert(out->used == 5 && memcmp(out->data, "hello", 5) == 0);
	buffer_free(&valid);
	buffer_free(&out);
	popvault_receiver_free(&receiver);
	popvault_sender_free(&sender);
	test_end();
}

/* Read dec while its test_istream parent (of total bytes) hands out a
   few more bytes each time; half_skip consumes half of what is there,
   leaving a skip so that the stream buffer gets compressed. */
static void
read_trickle(struct istream *input, struct istream *dec, size_t total,
	     bool half_skip, buffer_t *out, unsigned int idx)
{
	const unsigned char *rdata;
	size_t avail = 0, rsize;
	ssize_t ret;

	for (;;) {
		avail += 1 + randombytes_uniform(3000);
		avail = I_MIN(avail, total);
		test_istream_set_size(input, avail);
		ret = i_stream_read_more(dec, &rdata, &rsize);
		if (ret > 0) {
			if (half_skip)
				rsize = I_MAX(rsize / 2, 1);
			buffer_append(out, rdata, rsize);
			i_stream_skip(dec, rsize);
		} else if (ret < 0) {
			break;
		} else {
			test_assert_idx(avail < total, idx);
		}
	}
}

static void
check_roundtrip(struct popvault_receiver *receiver, const buffer_t *enc,
		const unsigned char *data, size_t size, unsigned int idx)
{
	struct istream *input, *dec;
	buffer_t *out = buffer_create_dynamic(default_pool, size + 16);
	const struct stat *st;
	uoff_t got_size;
	unsigned int i;

	/* 1) normal full read; stat() before reading */
	input = i_stream_create_from_data(enc->data, enc->used);
	dec = i_stream_create_popvault_decrypt(input, receiver);
	test_assert_idx(i_stream_get_size(dec, TRUE, &got_size) == 1 &&
			got_size == size, idx);
	test_assert_idx(i_stream_stat(dec, TRUE, &st) == 0 &&
			st->st_size == (off_t)size, idx);
	test_assert_idx(dec->seekable, idx);
	test_assert_idx(read_all(dec, out) == 0, idx);
	test_assert_idx(out->used == size &&
			memcmp(out->data, data, size) == 0, idx);

	/* 2) random seeks */
	for (i = 0; i < 30 && size > 0; i++) {
		const unsigned char *rdata;
		size_t rsize;
		uoff_t off = randombytes_uniform(size);
		size_t want = 1 + randombytes_uniform(200);
		want = I_MIN(size - off, want);

		i_stream_seek(dec, off);
		test_assert_idx(i_stream_read_bytes(dec, &rdata, &rsize, want) > 0, idx);
		test_assert_idx(rsize >= want &&
				memcmp(rdata, data + off, want) == 0, idx);
	}
	/* seek to the end -> clean EOF */
	i_stream_seek(dec, size);
	test_assert_idx(i_stream_read(dec) == -1 && dec->stream_errno == 0, idx);
	i_stream_unref(&dec);
	i_stream_unref(&input);

	/* 3) tiny max_buffer_size */
	buffer_set_used_size(out, 0);
	input = i_stream_create_from_data(enc->data, enc->used);
	dec = i_stream_create_popvault_decrypt(input, receiver);
	i_stream_set_max_buffer_size(dec, 7);
	test_assert_idx(read_all(dec, out) == 0, idx);
	test_assert_idx(out->used == size &&
			memcmp(out->data, data, size) == 0, idx);
	i_stream_unref(&dec);
	i_stream_unref(&input);

	/* 4) non-seekable, non-blocking parent delivering bytes slowly */
	buffer_set_used_size(out, 0);
	input = test_istream_create_data(enc->data, enc->used);
	input->seekable = FALSE;
	dec = i_stream_create_popvault_decrypt(input, receiver);
	read_trickle(input, dec, enc->used, FALSE, out, idx);
	test_assert_idx(dec->stream_errno == 0, idx);
	test_assert_idx(!dec->seekable, idx);
	test_assert_idx(out->used == size &&
			memcmp(out->data, data, size) == 0, idx);
	/* seeking (backwards restarts, forwards reads and authenticates) */
	test_istream_set_size(input, enc->used);
	for (i = 0; i < 5 && size > 0; i++) {
		const unsigned char *rdata;
		size_t rsize;
		uoff_t off = randombytes_uniform(size);
		size_t want = 1 + randombytes_uniform(100);

		want = I_MIN(size - off, want);
		i_stream_seek(dec, off);
		test_assert_idx(i_stream_read_bytes(dec, &rdata, &rsize, want) > 0, idx);
		test_assert_idx(rsize >= want &&
				memcmp(rdata, data + off, want) == 0, idx);
	}
	test_assert_idx(dec->stream_errno == 0, idx);
	i_stream_unref(&dec);
	i_stream_unref(&input);

	/* 4b) seekable parent of known size delivering bytes slowly: AES-GCM
	   chunks are opened piecewise from the parent's buffer and must
	   restart cleanly when the parent runs dry mid-chunk, while the
	   reader keeps consuming (the stream buffer moves in between) */
	buffer_set_used_size(out, 0);
	input = test_istream_create_data(enc->data, enc->used);
	dec = i_stream_create_popvault_decrypt(input, receiver);
	read_trickle(input, dec, enc->used, TRUE, out, idx);
	test_assert_idx(dec->stream_errno == 0, idx);
	test_assert_idx(dec->seekable, idx);
	test_assert_idx(out->used == size &&
			memcmp(out->data, data, size) == 0, idx);
	i_stream_unref(&dec);
	i_stream_unref(&input);

	/* 5) one-shot decrypter */
	buffer_set_used_size(out, 0);
	const char *error;
	test_assert_idx(popvault_decrypt_buffer(receiver, enc->data, enc->used,
						out, &error) == 0, idx);
	test_assert_idx(out->used == size &&
			memcmp(out->data, data, size) == 0, idx);
	buffer_free(&out);
}

static void test_roundtrip(void)
{
	const size_t sizes[] = {
		0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1,
		3 * SMALL_CHUNK, 1000 * 1000 + 123,
	};
	/* chunks are sealed in place: AES-GCM through libsodium (where
	   the CPU has it) and through OpenSSL, and XChaCha20-Poly1305 */
	static const struct {
		enum popvault_cipher cipher;
		bool sodium_aes;
	} cases[] = {
		{ POPVAULT_CIPHER_AES256GCM, TRUE },
		{ POPVAULT_CIPHER_AES256GCM, FALSE },
		{ POPVAULT_CIPHER_XCHACHA20POLY1305, FALSE },
	};
	struct popvault_receiver *receiver;
	unsigned int c, i;
	bool orig;

	test_begin("popvault stream round trip");
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, other_sk) == 0);
	test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);
	orig = popvault_crypto_set_sodium_aes(TRUE);
	for (c = 0; c < N_ELEMENTS(cases); c++) {
		(void)popvault_crypto_set_sodium_aes(cases[c].sodium_aes);
		for (i = 0; i < N_ELEMENTS(sizes); i++) {
			struct popvault_sender *sender =
				popvault_sender_create(user_pk,
						       cases[c].cipher);
			/* small chunks for the chunk-relative sizes, the
			   default 64 KiB for the big one */
			if (sizes[i] < 100000)
				test_assert(popvault_sender_set_chunk_log2(sender, SMALL_LOG2) == 0);
			unsigned char *data = random_data(sizes[i]);
			buffer_t *enc = encrypt_stream(sender, data, sizes[i]);
			uint8_t log2 = sizes[i] < 100000 ? SMALL_LOG2 :
				POPVAULT_CHUNK_LOG2_DEFAULT;

			test_assert_idx(enc->used ==
				popvault_container_encrypted_size(sizes[i], log2), i);
			test_assert_idx(popvault_container_is_encrypted(enc->data, enc->used), i);
			check_roundtrip(receiver, enc, data, sizes[i],
					c * 100 + i);
			buffer_free(&enc);
			i_free(data);
			popvault_sender_free(&sender);
		}
	}
	(void)popvault_crypto_set_sodium_aes(orig);
	popvault_receiver_free(&receiver);
	test_end();
}

static void test_ostream_backpressure(void)
{
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	const size_t size = 5 * SMALL_CHUNK + 77;
	unsigned char *data = random_data(size);
	buffer_t *buf, *out;
	struct ostream *output, *enc;
	size_t pos = 0, max_out = 0;
	ssize_t ret;
	int fret;
	const char *error;

	test_begin("popvault ostream with non-blocking parent");
	sender = popvault_sender_create(user_pk, POPVAULT_CIPHER_XCHACHA20POLY1305);
	test_assert(popvault_sender_set_chunk_log2(sender, SMALL_LOG2) == 0);
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);

	struct ioloop *ioloop = io_loop_create();
	buf = buffer_create_dynamic(default_pool, 1024);
	output = test_ostream_create_nonblocking(buf, 100);
	enc = o_stream_create_popvault_encrypt(output, sender);
	while (pos < size) {
		test_ostream_set_max_output_size(output, max_out);
		ret = o_stream_send(enc, data + pos,
				    I_MIN(size - pos, 1000));
		test_assert(ret >= 0);
		if (ret < 0)
			break;
		pos += ret;
		if (ret == 0) {
			/* what the ioloop's flush callback would do */
			test_assert(o_stream_flush(enc) >= 0);
		}
		/* encrypted output is bounded: at most ~1 chunk beyond what
		   the parent accepted */
		test_assert(buf->used <= max_out);
		max_out += 700;
	}
	while ((fret = o_stream_finish(enc)) == 0) {
		max_out += 700;
		test_ostream_set_max_output_size(output, max_out);
	}
	test_assert(fret > 0);
	o_stream_destroy(&enc);
	o_stream_destroy(&output);
	io_loop_destroy(&ioloop);

	out = buffer_create_dynamic(default_pool, size);
	test_assert(popvault_decrypt_buffer(receiver, buf->data, buf->used,
					    out, &error) == 0);
	test_assert(out->used == size && memcmp(out->data, data, size) == 0);
	buffer_free(&out);
	buffer_free(&buf);
	i_free(data);
	popvault_receiver_free(&receiver);
	popvault_sender_free(&sender);
	test_end();
}

enum tamper_type {
	TAMPER_HEADER_FLAG,
	TAMPER_HEADER_VERSION,
	TAMPER_HEADER_SALT,
	TAMPER_HEADER_SWAP,
	TAMPER_HEADER_EPH,
	TAMPER_WRAPPED_KEY,
	TAMPER_MIDDLE_CHUNK,
	TAMPER_LAST_TAG,
	TAMPER_TRUNCATE_BOUNDARY,
	TAMPER_TRUNCATE_MID,
	TAMPER_TRUNCATE_HEADER,
	TAMPER_TRUNCATE_BODY,
	TAMPER_APPEND_BYTE,
	TAMPER_APPEND_CHUNK,
	TAMPER_SWAP_CHUNKS,
	TAMPER_SPLICE,
	TAMPER_WRONG_KEY,
	TAMPER_UNKNOWN_KEY,
};

static void test_tamper(void)
{
	static const struct {
		enum tamper_type type;
		const char *name;
		/* first chunk whose plaintext must NOT be released */
		unsigned int bad_chunk;
		const char *error_substr;
	} tests[] = {
		{ TAMPER_HEADER_FLAG, "header cipher byte", 0, "popvault: " },
		{ TAMPER_HEADER_VERSION, "header version 2 -> 1", 0, "unwrap" },
		{ TAMPER_HEADER_SALT, "header salt", 0, "unwrap" },
		{ TAMPER_HEADER_SWAP, "header of another message, same epoch", 0,
		  "chunk 0 failed authentication" },
		{ TAMPER_HEADER_EPH, "header eph_pk", 0, "popvault: " },
		{ TAMPER_WRAPPED_KEY, "wrapped key", 0, "unwrap" },
		{ TAMPER_MIDDLE_CHUNK, "middle chunk", 2, "chunk 2 failed authentication" },
		{ TAMPER_LAST_TAG, "last tag", 4, "chunk 4 failed authentication" },
		{ TAMPER_TRUNCATE_BOUNDARY, "truncate at chunk boundary", 3, "truncated" },
		{ TAMPER_TRUNCATE_MID, "truncate mid-chunk", 3, "popvault: " },
		{ TAMPER_TRUNCATE_HEADER, "truncate in header", 0, "popvault: " },
		{ TAMPER_TRUNCATE_BODY, "header only", 0, "popvault: " },
		{ TAMPER_APPEND_BYTE, "append byte", 4, "popvault: " },
		{ TAMPER_APPEND_CHUNK, "append copied chunk", 4, "popvault: " },
		{ TAMPER_SWAP_CHUNKS, "swap chunks 1,2", 1, "chunk 1 failed authentication" },
		{ TAMPER_SPLICE, "splice chunk from other message", 1, "chunk 1 failed authentication" },
		{ TAMPER_WRONG_KEY, "wrong private key", 0, "unwrap" },
		{ TAMPER_UNKNOWN_KEY, "unknown key id", 0, "unknown key id" },
	};
	/* 4 full chunks + 1 partial */
	const size_t size = 4 * SMALL_CHUNK + 1000;
	const size_t body = POPVAULT_HEADER_SIZE;
	struct popvault_receiver *receiver, *other_receiver;
	unsigned int c, i, mode;
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];

	test_begin("popvault tamper detection");
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);
	test_assert(popvault_receiver_add_key(receiver, other_sk) == 0);
	other_receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(other_receiver, other_sk) == 0);
	popvault_key_id(other_pk, key_id);

	for (c = 0; c < N_ELEMENTS(ciphers); c++)
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		struct popvault_sender *sender =
			popvault_sender_create(user_pk, ciphers[c]);
		test_assert(popvault_sender_set_chunk_log2(sender, SMALL_LOG2) == 0);
		unsigned char *data = random_data(size);
		buffer_t *enc = encrypt_stream(sender, data, size);
		buffer_t *enc2 = encrypt_stream(sender, data, size);
		unsigned char *p = buffer_get_modifiable_data(enc, NULL);
		struct popvault_receiver *r = receiver;
		unsigned char tmp[FULL_CT];

		switch (tests[i].type) {
		case TAMPER_HEADER_FLAG:
			p[9] ^= 3; /* cipher 1<->2 */
			break;
		case TAMPER_HEADER_VERSION:
			/* v1 would derive a KEK from the salt instead */
			test_assert(p[8] == POPVAULT_VERSION);
			p[8] = POPVAULT_VERSION_V1;
			break;
		case TAMPER_HEADER_SALT:
			p[60] ^= 0x40;
			break;
		case TAMPER_HEADER_SWAP:
			/* unwraps fine (same epoch KEK), but to the other
			   message's data key */
			memcpy(p, enc2->data, body);
			break;
		case TAMPER_HEADER_EPH:
			p[30] ^= 0x01;
			break;
		case TAMPER_WRAPPED_KEY:
			p[POPVAULT_HEADER_WRAP_AAD_SIZE + 5] ^= 0x80;
			break;
		case TAMPER_MIDDLE_CHUNK:
			p[body + 2 * FULL_CT + 100] ^= 0x01;
			break;
		case TAMPER_LAST_TAG:
			p[enc->used - 1] ^= 0x01;
			break;
		case TAMPER_TRUNCATE_BOUNDARY:
			buffer_set_used_size(enc, body + 3 * FULL_CT);
			break;
		case TAMPER_TRUNCATE_MID:
			buffer_set_used_size(enc, body + 3 * FULL_CT + 500);
			break;
		case TAMPER_TRUNCATE_HEADER:
			buffer_set_used_size(enc, 50);
			break;
		case TAMPER_TRUNCATE_BODY:
			buffer_set_used_size(enc, body);
			break;
		case TAMPER_APPEND_BYTE:
			buffer_append_c(enc, 'x');
			break;
		case TAMPER_APPEND_CHUNK:
			/* copy first: appending may reallocate enc */
			memcpy(tmp, p + body + FULL_CT, FULL_CT);
			buffer_append(enc, tmp, FULL_CT);
			break;
		case TAMPER_SWAP_CHUNKS:
			memcpy(tmp, p + body + FULL_CT, FULL_CT);
			memcpy(p + body + FULL_CT, p + body + 2 * FULL_CT, FULL_CT);
			memcpy(p + body + 2 * FULL_CT, tmp, FULL_CT);
			break;
		case TAMPER_SPLICE:
			/* same user, same epoch (same eph_pk), other DK */
			test_assert(memcmp(p + 20, CONST_PTR_OFFSET(enc2->data, 20), 32) == 0);
			memcpy(p + body + FULL_CT,
			       CONST_PTR_OFFSET(enc2->data, body + FULL_CT), FULL_CT);
			break;
		case TAMPER_WRONG_KEY:
			/* header claims other key; receiver has it */
			memcpy(p + 12, key_id, sizeof(key_id));
			r = other_receiver;
			break;
		case TAMPER_UNKNOWN_KEY:
			r = other_receiver;
			break;
		}

		for (mode = 0; mode < 3; mode++) {
			buffer_t *out = buffer_create_dynamic(default_pool, size);
			const char *error = "";
			int ret;

			if (mode < 2) {
				struct istream *input =
					test_istream_create_data(enc->data, enc->used);
				if (mode == 1)
					input->seekable = FALSE;
				struct istream *dec =
					i_stream_create_popvault_decrypt(input, r);
				ret = read_all(dec, out);
				test_assert_idx(dec->stream_errno == EINVAL ||
						ret == 0, i);
				error = t_strdup(i_stream_get_error(dec));
				i_stream_unref(&dec);
				i_stream_unref(&input);
			} else {
				ret = popvault_decrypt_buffer(r, enc->data,
					enc->used, out, &error);
			}
			if (getenv("PV_DEBUG") != NULL) i_info("%s/%u: %s", tests[i].name, mode, error);
			test_assert_idx(ret < 0, c * 100 + i);
			if (ret < 0) {
				test_assert_idx(str_begins_with(error, "popvault: "), i);
				if (strstr(error, tests[i].error_substr) == NULL && mode != 2) {
					i_error("tamper %s mode %u: unexpected error: %s",
						tests[i].name, mode, error);
					test_assert_idx(FALSE, i);
				}
			}
			/* only authenticated chunks before the bad one */
			test_assert_idx(out->used <= tests[i].bad_chunk * SMALL_CHUNK, i);
			test_assert_idx(memcmp(out->data, data, out->used) == 0, i);
			buffer_free(&out);
		}

		/* random-access read of the damaged chunk also fails */
		if (tests[i].bad_chunk > 0 && tests[i].bad_chunk < 4) {
			struct istream *input =
				i_stream_create_from_data(enc->data, enc->used);
			struct istream *dec =
				i_stream_create_popvault_decrypt(input, r);
			const unsigned char *rdata;
			size_t rsize;

			i_stream_seek(dec, tests[i].bad_chunk * SMALL_CHUNK + 10);
			test_assert_idx(i_stream_read_more(dec, &rdata, &rsize) == -1, i);
			test_assert_idx(dec->stream_errno == EINVAL, i);
			i_stream_unref(&dec);
			i_stream_unref(&input);
		}
		buffer_free(&enc);
		buffer_free(&enc2);
		i_free(data);
		popvault_sender_free(&sender);
	}
	popvault_receiver_free(&receiver);
	popvault_receiver_free(&other_receiver);
	test_end();
}

static void test_truncation_seek_to_end(void)
{
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	const size_t size = 3 * SMALL_CHUNK;
	unsigned char *data = random_data(size);
	buffer_t *enc;

	test_begin("popvault truncated stream: seek to end still detects");
	sender = popvault_sender_create(user_pk, POPVAULT_CIPHER_AES256GCM);
	test_assert(popvault_sender_set_chunk_log2(sender, SMALL_LOG2) == 0);
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);
	enc = encrypt_stream(sender, data, size);
	buffer_set_used_size(enc, POPVAULT_HEADER_SIZE + 2 * FULL_CT);

	struct istream *input = i_stream_create_from_data(enc->data, enc->used);
	struct istream *dec = i_stream_create_popvault_decrypt(input, receiver);
	uoff_t psize;
	test_assert(i_stream_get_size(dec, TRUE, &psize) == 1 &&
		    psize == 2 * SMALL_CHUNK);
	i_stream_seek(dec, psize);
	test_assert(i_stream_read(dec) == -1);
	test_assert(dec->stream_errno == EINVAL);
	test_assert(strstr(i_stream_get_error(dec), "truncated") != NULL);
	i_stream_unref(&dec);
	i_stream_unref(&input);
	buffer_free(&enc);
	i_free(data);
	popvault_receiver_free(&receiver);
	popvault_sender_free(&sender);
	test_end();
}

static void test_x25519_cache(void)
{
	const unsigned int n_msgs = 200;
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	buffer_t *enc, *out;
	const char *error;
	unsigned int i;

	test_begin("popvault one X25519 per epoch");
	sender = popvault_sender_create(user_pk, POPVAULT_CIPHER_AES256GCM);
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);
	enc = buffer_create_dynamic(default_pool, 1024);
	out = buffer_create_dynamic(default_pool, 1024);
	for (i = 0; i < n_msgs; i++) {
		buffer_set_used_size(enc, 0);
		buffer_set_used_size(out, 0);
		test_assert(popvault_encrypt_buffer(sender, (const void *)"msg", 3,
						    enc, &error) == 0);
		test_assert(popvault_decrypt_buffer(receiver, enc->data,
						    enc->used, out, &error) == 0);
	}
	test_assert(popvault_sender_get_epoch_count(sender) == 1);
	test_assert(popvault_receiver_get_x25519_count(receiver) == 1);

	/* rotation every 10 messages -> 1 X25519 per new epoch */
	popvault_sender_set_rotation(sender, 10, 0);
	for (i = 0; i < 100; i++) {
		buffer_set_used_size(enc, 0);
		buffer_set_used_size(out, 0);
		test_assert(popvault_encrypt_buffer(sender, (const void *)"msg", 3,
						    enc, &error) == 0);
		test_assert(popvault_decrypt_buffer(receiver, enc->data,
						    enc->used, out, &error) == 0);
	}
	/* the first epoch had 200 messages, so the very next one rotates */
	test_assert(popvault_sender_get_epoch_count(sender) == 11);
	test_assert(popvault_receiver_get_x25519_count(receiver) == 11);
	buffer_free(&enc);
	buffer_free(&out);
	popvault_receiver_free(&receiver);
	popvault_sender_free(&sender);
	test_end();
}

static void
test_v1_fixture_one(const char *hex, struct popvault_receiver *receiver,
		    const string_t *plain, unsigned int idx)
{
	buffer_t *enc = t_buffer_create(strlen(hex) / 2);
	buffer_t *out = t_buffer_create(str_len(plain));
	struct istream *input, *dec;
	struct popvault_header hdr;
	const unsigned char *rdata;
	unsigned char *p;
	const char *error;
	size_t rsize;

	test_assert_idx(hex_to_binary(hex, enc) == 0, idx);
	test_assert_idx(popvault_header_parse(enc->data, enc->used, &hdr,
					      &error) == 0 &&
			hdr.version == POPVAULT_VERSION_V1, idx);
	test_assert_idx(popvault_decrypt_buffer(receiver, enc->data, enc->used,
						out, &error) == 0, idx);
	test_assert_idx(buffer_cmp(out, plain), idx);

	/* the stream, with a seek into the second chunk */
	buffer_set_used_size(out, 0);
	input = i_stream_create_from_data(enc->data, enc->used);
	dec = i_stream_create_popvault_decrypt(input, receiver);
	test_assert_idx(read_all(dec, out) == 0 && buffer_cmp(out, plain), idx);
	i_stream_seek(dec, SMALL_CHUNK + 7);
	test_assert_idx(i_stream_read_more(dec, &rdata, &rsize) > 0 &&
			memcmp(rdata, str_data(plain) + SMALL_CHUNK + 7,
			       I_MIN(rsize, str_len(plain) - SMALL_CHUNK - 7)) == 0,
			idx);
	i_stream_unref(&dec);
	i_stream_unref(&input);

	/* v1's chunk AAD still binds the header: a flipped bit in the
	   second chunk fails it, a v1 header claiming v2 fails the unwrap */
	p = buffer_get_modifiable_data(enc, NULL);
	p[POPVAULT_HEADER_SIZE + SMALL_CHUNK + POPVAULT_TAG_SIZE + 3] ^= 0x10;
	buffer_set_used_size(out, 0);
	test_assert_idx(popvault_decrypt_buffer(receiver, enc->data, enc->used,
						out, &error) < 0 &&
			strstr(error, "chunk 1 failed") != NULL, idx);
	p[POPVAULT_HEADER_SIZE + SMALL_CHUNK + POPVAULT_TAG_SIZE + 3] ^= 0x10;
	p[8] = POPVAULT_VERSION;
	buffer_set_used_size(out, 0);
	test_assert_idx(popvault_decrypt_buffer(receiver, enc->data, enc->used,
						out, &error) < 0 &&
			strstr(error, "unwrap") != NULL, idx);
}

static void test_v1_fixtures(void)
{
	struct popvault_receiver *receiver;
	unsigned char sk[POPVAULT_SK_SIZE];
	string_t *plain;
	unsigned int i;

	test_begin("popvault reads PVLT v1 written by earlier versions");
	for (i = 0; i < sizeof(sk); i++)
		sk[i] = (unsigned char)(0x40 + i);
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, sk) == 0);
	plain = t_str_new(5100);
	for (i = 0; i < 240; i++)
		str_printfa(plain, "legacy v1 line %04u\r\n", i);
	test_v1_fixture_one(pvlt_v1_fixture_aes256gcm, receiver, plain, 0);
	test_v1_fixture_one(pvlt_v1_fixture_xchacha20poly1305, receiver,
			    plain, 1);
	/* two senders, one epoch each */
	test_assert(popvault_receiver_get_x25519_count(receiver) == 2);
	popvault_receiver_free(&receiver);
	test_end();
}

/* Wraps sealed by libsodium's AES-GCM open with OpenSSL's and back: the
   two paths must produce the same bytes, and each must work alone. */
static void test_wrap_implementations(void)
{
	const size_t size = 3 * SMALL_CHUNK + 5;
	unsigned char *data = random_data(size);
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	buffer_t *enc, *out;
	const char *error;
	bool orig, seal_sodium, open_sodium;
	unsigned char *p;
	unsigned int i;

	test_begin("popvault key wraps: libsodium and OpenSSL AES-GCM agree");
	orig = popvault_crypto_set_sodium_aes(TRUE);
	for (i = 0; i < 4; i++) {
		seal_sodium = (i & 1) != 0;
		open_sodium = (i & 2) != 0;
		(void)popvault_crypto_set_sodium_aes(seal_sodium);
		sender = popvault_sender_create(user_pk,
						POPVAULT_CIPHER_AES256GCM);
		test_assert(popvault_sender_set_chunk_log2(sender, SMALL_LOG2) == 0);
		enc = encrypt_stream(sender, data, size);
		popvault_sender_free(&sender);

		(void)popvault_crypto_set_sodium_aes(open_sodium);
		receiver = popvault_receiver_create();
		test_assert(popvault_receiver_add_key(receiver, user_sk) == 0);
		out = buffer_create_dynamic(default_pool, size);
		test_assert_idx(popvault_decrypt_buffer(receiver, enc->data,
			enc->used, out, &error) == 0, i);
		test_assert_idx(out->used == size &&
				memcmp(out->data, data, size) == 0, i);
		/* a damaged wrap fails on either path */
		buffer_set_used_size(out, 0);
		p = buffer_get_modifiable_data(enc, NULL);
		p[POPVAULT_HEADER_WRAP_AAD_SIZE + 3] ^= 0x04;
		test_assert_idx(popvault_decrypt_buffer(receiver, enc->data,
			enc->used, out, &error) < 0 &&
			strstr(error, "unwrap") != NULL && out->used == 0, i);
		buffer_free(&out);
		buffer_free(&enc);
		popvault_receiver_free(&receiver);
	}
	(void)popvault_crypto_set_sodium_aes(orig);
	i_free(data);
	test_end();
}

static void test_bad_recipient_key(void)
{
	unsigned char zero_pk[32];
	struct popvault_sender *sender;
	buffer_t *enc;
	const char *error;

	test_begin("popvault sender rejects low-order public key");
	memset(zero_pk, 0, sizeof(zero_pk));
	sender = popvault_sender_create(zero_pk, POPVAULT_CIPHER_AES256GCM);
	enc = buffer_create_dynamic(default_pool, 64);
	test_assert(popvault_encrypt_buffer(sender, (const void *)"x", 1,
					    enc, &error) < 0);
	popvault_sender_free(&sender);
	test_assert(popvault_sender_create(user_pk, 7) == NULL);
	buffer_free(&enc);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_hkdf_rfc5869,
		test_plain_size,
		test_header_parse_garbage,
		test_roundtrip,
		test_ostream_backpressure,
		test_tamper,
		test_truncation_seek_to_end,
		test_x25519_cache,
		test_v1_fixtures,
		test_wrap_implementations,
		test_bad_recipient_key,
		NULL
	};
	int ret;

	if (popvault_crypto_init() < 0)
		i_fatal("sodium_init() failed");
	popvault_keypair_generate(user_pk, user_sk);
	popvault_keypair_generate(other_pk, other_sk);
	ret = test_run(test_functions);
	popvault_ostream_encrypt_deinit();
	popvault_crypto_deinit();
	return ret;
}
