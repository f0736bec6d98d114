/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Writes valid containers, encrypted to the fuzz key, as seeds:
   gen-container-seeds <dir>. 4 KiB chunks so that a few KiB already
   make several chunks. */

#include "lib.h"
#include "buffer.h"
#include "popvault-container.h"
#include "fuzz-key.h"

#include <sodium.h>
#include <stdio.h>

static void write_seed(const char *dir, const char *name, const buffer_t *buf)
{
	const char *path = t_strdup_printf("%s/%s", dir, name);
	FILE *f = fopen(path, "w");

	if (f == NULL || fwrite(buf->data, 1, buf->used, f) != buf->used ||
	    fclose(f) != 0)
		i_fatal("write(%s) failed: %m", path);
}

int main(int argc, char *argv[])
{
	static const size_t sizes[] = { 0, 1, 100, 4096, 4097, 9000 };
	static const struct {
		enum popvault_cipher cipher;
		const char *name;
	} ciphers[] = {
		{ POPVAULT_CIPHER_AES256GCM, "aes" },
		{ POPVAULT_CIPHER_XCHACHA20POLY1305, "xchacha" },
	};
	unsigned char pk[POPVAULT_PK_SIZE];
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	const char *error = "";
	unsigned int i, j;

	lib_init();
	if (argc != 2)
		i_fatal("usage: gen-container-seeds <dir>");
	if (popvault_crypto_init() < 0)
		i_fatal("popvault_crypto_init() failed");
	crypto_scalarmult_base(pk, fuzz_sk);
	receiver = popvault_receiver_create();
	if (popvault_receiver_add_key(receiver, fuzz_sk) < 0)
		i_fatal("fuzz key rejected");
	for (i = 0; i < N_ELEMENTS(ciphers); i++) {
		sender = popvault_sender_create(pk, ciphers[i].cipher);
		if (sender == NULL ||
		    popvault_sender_set_chunk_log2(sender, 12) < 0)
			i_fatal("popvault_sender_create() failed");
		for (j = 0; j < N_ELEMENTS(sizes); j++) T_BEGIN {
			buffer_t *plain = t_buffer_create(sizes[j] + 1);
			buffer_t *out = t_buffer_create(sizes[j] + 256);

			for (size_t k = 0; k < sizes[j]; k++)
				buffer_append_c(plain, "Subject: x\r\n.\n"[k % 14]);
			if (popvault_encrypt_buffer(sender, plain->data,
						    plain->used, out,
						    &error) < 0)
				i_fatal("encrypt: %s", error);
			/* a seed that does not decrypt would only cover the
			   failure paths */
			buffer_t *check = t_buffer_create(sizes[j] + 1);
			if (popvault_decrypt_buffer(receiver, out->data,
						    out->used, check,
						    &error) < 0 ||
			    !buffer_cmp(check, plain))
				i_fatal("seed %zu does not decrypt: %s",
					sizes[j], error);
			write_seed(argv[1], t_strdup_printf("seed-%s-%zu",
				ciphers[i].name, sizes[j]), out);
		} T_END;
		popvault_sender_free(&sender);
	}
	popvault_receiver_free(&receiver);
	popvault_crypto_deinit();
	lib_deinit();
	return 0;
}
