/* popvault throughput benchmark (not part of the tests).
   Encrypts through the ostream into a buffer, decrypts through the istream,
   for both ciphers, with 20 KB messages and one 100 MB message. */

#include "lib.h"
#include "buffer.h"
#include "istream.h"
#include "ostream.h"
#include "popvault-crypt-stream.h"

#include <sodium.h>
#include <stdio.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void encrypt_one(struct popvault_sender *sender, const unsigned char *data,
			size_t size, buffer_t *out)
{
	struct ostream *output = o_stream_create_buffer(out);
	struct ostream *enc = o_stream_create_popvault_encrypt(output, sender);

	o_stream_nsend(enc, data, size);
	if (o_stream_finish(enc) <= 0)
		i_fatal("encrypt failed: %s", o_stream_get_error(enc));
	o_stream_destroy(&enc);
	o_stream_destroy(&output);
}

static size_t decrypt_one(struct popvault_receiver *receiver, const buffer_t *enc)
{
	struct istream *input = i_stream_create_from_data(enc->data, enc->used);
	struct istream *dec = i_stream_create_popvault_decrypt(input, receiver);
	const unsigned char *data;
	size_t size, total = 0;

	while (i_stream_read_more(dec, &data, &size) > 0) {
		total += size;
		i_stream_skip(dec, size);
	}
	if (dec->stream_errno != 0)
		i_fatal("decrypt failed: %s", i_stream_get_error(dec));
	i_stream_unref(&dec);
	i_stream_unref(&input);
	return total;
}

static void bench(enum popvault_cipher cipher, const char *name,
		  size_t msg_size, unsigned int count, const unsigned char *data,
		  const unsigned char *pk, const unsigned char *sk)
{
	struct popvault_sender *sender = popvault_sender_create(pk, cipher);
	struct popvault_receiver *receiver = popvault_receiver_create();
	buffer_t *enc = buffer_create_dynamic(default_pool, msg_size + 4096);
	double t0, t_enc = 0, t_dec = 0;
	unsigned int i;

	if (popvault_receiver_add_key(receiver, sk) < 0)
		i_fatal("add_key");
	for (i = 0; i < count; i++) {
		buffer_set_used_size(enc, 0);
		t0 = now();
		encrypt_one(sender, data, msg_size, enc);
		t_enc += now() - t0;
		t0 = now();
		if (decrypt_one(receiver, enc) != msg_size)
			i_fatal("size mismatch");
		t_dec += now() - t0;
	}
	double mb = (double)msg_size * count / 1e6;
	printf("%-22s %9zu B x %5u: encrypt %7.1f MB/s (%6.1f us/msg)  decrypt %7.1f MB/s (%6.1f us/msg)  x25519=%llu\n",
	       name, msg_size, count, mb / t_enc, t_enc * 1e6 / count,
	       mb / t_dec, t_dec * 1e6 / count,
	       (unsigned long long)popvault_receiver_get_x25519_count(receiver));
	buffer_free(&enc);
	popvault_receiver_free(&receiver);
	popvault_sender_free(&sender);
}

int main(void)
{
	const size_t big = 100 * 1000 * 1000;
	unsigned char pk[32], sk[32], *data;

	lib_init();
	if (popvault_crypto_init() < 0)
		i_fatal("sodium_init");
	popvault_keypair_generate(pk, sk);
	data = i_malloc(big);
	randombytes_buf(data, big);

	bench(POPVAULT_CIPHER_AES256GCM, "aes-256-gcm", 20 * 1000, 5000, data, pk, sk);
	bench(POPVAULT_CIPHER_XCHACHA20POLY1305, "xchacha20-poly1305", 20 * 1000, 5000, data, pk, sk);
	bench(POPVAULT_CIPHER_AES256GCM, "aes-256-gcm", big, 3, data, pk, sk);
	bench(POPVAULT_CIPHER_XCHACHA20POLY1305, "xchacha20-poly1305", big, 3, data, pk, sk);

	/* cost of the asymmetric part alone */
	unsigned char shared[32], epk[32], esk[32];
	double t0 = now();
	for (unsigned int i = 0; i < 2000; i++) {
		crypto_box_keypair(epk, esk);
		if (crypto_scalarmult(shared, sk, epk) != 0)
			i_fatal("scalarmult");
	}
	printf("X25519 keygen+scalarmult: %.1f us/op\n", (now() - t0) * 1e6 / 2000);
	i_free(data);
	lib_deinit();
	return 0;
}
