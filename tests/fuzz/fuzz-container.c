/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* The bytes of a stored message, as a reader meets them: the header
   parser, the whole-container decrypter and the decrypting istream (read
   in small pieces, then seeked into), against a fixed test key so that
   valid seeds reach every chunk and mutations reach every failure path.
   Seeds: gen-container-seeds. */

#include "lib.h"
#include "buffer.h"
#include "istream.h"
#include "test-common.h"
#include "popvault-container.h"
#include "popvault-crypt-stream.h"
#include "fuzz-common.h"

#include "fuzz-key.h"

static struct popvault_receiver *receiver;

int LLVMFuzzerInitialize(int *argc ATTR_UNUSED, char ***argv ATTR_UNUSED)
{
	fuzz_lib_init();
	if (popvault_crypto_init() < 0)
		i_fatal("popvault_crypto_init() failed");
	receiver = popvault_receiver_create();
	if (popvault_receiver_add_key(receiver, fuzz_sk) < 0)
		i_fatal("fuzz key rejected");
	return 0;
}

static void fuzz_istream(const uint8_t *data, size_t size)
{
	struct istream *input, *dec;
	const unsigned char *out;
	size_t out_size;
	uoff_t seek_to;

	/* trickled input exercises the chunk collection across reads */
	input = test_istream_create_data(data, size);
	test_istream_set_size(input, 0);
	dec = i_stream_create_popvault_decrypt(input, receiver);
	for (size_t i = 1; i <= size; i += 1 + size / 7) {
		test_istream_set_size(input, i);
		while (i_stream_read_more(dec, &out, &out_size) > 0)
			i_stream_skip(dec, out_size);
		if (dec->stream_errno != 0)
			break;
	}
	test_istream_set_size(input, size);
	while (i_stream_read_more(dec, &out, &out_size) > 0)
		i_stream_skip(dec, out_size);

	/* a partial fetch: seek somewhere, read a little */
	if (dec->stream_errno == 0 && size > 0) {
		seek_to = data[size - 1] * 97u;
		i_stream_seek(dec, seek_to);
		(void)i_stream_read_more(dec, &out, &out_size);
	}
	i_stream_unref(&dec);
	i_stream_unref(&input);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct popvault_header hdr;
	const char *error;
	buffer_t *out;

	T_BEGIN {
		(void)popvault_header_parse(data, size, &hdr, &error);
		out = buffer_create_dynamic(default_pool, 1024);
		(void)popvault_decrypt_buffer(receiver, data, size, out,
					      &error);
		buffer_free(&out);
		fuzz_istream(data, size);
	} T_END;
	return 0;
}
