#ifndef POPVAULT_CRYPT_STREAM_H
#define POPVAULT_CRYPT_STREAM_H

#include "popvault-container.h"

struct istream;
struct ostream;

/* malloc() that never returns NULL and, unlike i_malloc(), does not zero:
   for the streams' chunk buffers, of which only written bytes are ever
   read (zeroing 2 x 64 KiB per message was the largest cost of saving
   small mail). Free with free(). */
void *popvault_malloc_unzeroed(size_t size);

/* Encrypting output stream: writes the PVLT v2 header and chunks to output.
   Buffers at most one chunk of plaintext. The last chunk is held back until
   o_stream_finish() (it carries the final flag), so o_stream_flush() alone
   does not push out a partially filled (or exactly full) last chunk.
   The sender must stay alive until the stream is destroyed. */
struct ostream *
o_stream_create_popvault_encrypt(struct ostream *output,
				 struct popvault_sender *sender);
/* Frees the chunk buffers kept for the process's next message. */
void popvault_ostream_encrypt_deinit(void);

/* Decrypting input stream. Seekable if the parent is seekable and its size
   is known; seeking authenticates only the chunk containing the offset.
   Errors: stream_errno=EINVAL, error string "popvault: ...".
   The receiver must stay alive until the stream is destroyed. */
struct istream *
i_stream_create_popvault_decrypt(struct istream *input,
				 struct popvault_receiver *receiver);

/* Called (once) when the decrypt istream fails with a popvault error
   (authentication, truncation, key), with the stream's error string. */
typedef void popvault_decrypt_error_callback_t(const char *error,
					       void *context);
void i_stream_popvault_decrypt_set_error_callback(
	struct istream *input, popvault_decrypt_error_callback_t *callback,
	void *context);

#endif
