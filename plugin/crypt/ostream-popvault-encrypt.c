/* popvault: encrypting ostream (writes PVLT v2). */

#include "lib.h"
#include "ostream-private.h"
#include "popvault-crypt-stream.h"

#include <sodium.h>

struct popvault_ostream {
	struct ostream_private ostream;
	struct popvault_msg_cipher *mc;

	size_t chunk_size;
	uint64_t chunk_idx;

	/* One buffer of chunk_size + tag, in one of two states. Filling:
	   pbuf_used bytes of plaintext of the chunk (held back until we
	   know whether it's the last one). Draining: obuf_used bytes of
	   header or sealed chunk waiting for the parent. A chunk is sealed
	   in place, so its ciphertext overwrites every byte of its
	   plaintext: only pbuf_used bytes can hold plaintext at any time,
	   and no wipe is needed (that wipe was 20 k instructions of every
	   20 KB delivery). */
	unsigned char *buf;
	size_t pbuf_used;
	size_t obuf_offset, obuf_used;

	bool final_written:1;
};

static void o_stream_popvault_close(struct iostream_private *stream,
				    bool close_parent)
{
	struct popvault_ostream *pstream =
		container_of(stream, struct popvault_ostream, ostream.iostream);

	if (close_parent)
		o_stream_close(pstream->ostream.parent);
}

/* One message's chunk buffer is kept for the next message of the
   process (an LMTP session delivers many). Allocated and freed per
   message, buffers of 128 KiB sat on top of the heap: each free let
   glibc trim the heap, and the next delivery faulted all of it in again,
   40 page faults of about 10 us each per delivery on the benchmark's
   machine (docs/performance.md, "Delivery and the heap"). Only a buffer
   without plaintext is kept. */
static struct {
	unsigned char *buf;
	size_t chunk_size;
} spare;

static void pv_buffer_get(struct popvault_ostream *pstream)
{
	if (spare.buf != NULL && spare.chunk_size == pstream->chunk_size) {
		pstream->buf = spare.buf;
		i_zero(&spare);
		return;
	}
	pstream->buf = popvault_malloc_unzeroed(
		pstream->chunk_size + POPVAULT_TAG_SIZE);
}

static void pv_buffer_put(struct popvault_ostream *pstream)
{
	if (pstream->buf == NULL)
		return;
	/* the plaintext not sealed yet (a stream destroyed unfinished) */
	sodium_memzero(pstream->buf, pstream->pbuf_used);
	if (spare.buf == NULL) {
		spare.buf = pstream->buf;
		spare.chunk_size = pstream->chunk_size;
	} else {
		free(pstream->buf);
	}
	pstream->buf = NULL;
}

void popvault_ostream_encrypt_deinit(void)
{
	free(spare.buf);
	i_zero(&spare);
}

static void o_stream_popvault_destroy(struct iostream_private *stream)
{
	struct popvault_ostream *pstream =
		container_of(stream, struct popvault_ostream, ostream.iostream);

	popvault_msg_cipher_free(&pstream->mc);
	pv_buffer_put(pstream);
	o_stream_unref(&pstream->ostream.parent);
}

/* Returns 1 if obuf is empty, 0 if parent can't take more now, -1 error. */
static int o_stream_popvault_send_obuf(struct popvault_ostream *pstream)
{
	ssize_t ret;
	size_t size;

	if (pstream->obuf_used == 0)
		return 1;
	size = pstream->obuf_used - pstream->obuf_offset;
	i_assert(size > 0);
	/* Back-pressure comes from the parent accepting only part of the
	   data (non-blocking parents). o_stream_flush_parent_if_needed() is
	   not used because it never succeeds with ostream-buffer parents. */
	ret = o_stream_send(pstream->ostream.parent,
			    pstream->buf + pstream->obuf_offset, size);
	if (ret < 0) {
		o_stream_copy_error_from_parent(&pstream->ostream);
		return -1;
	}
	if ((size_t)ret != size) {
		pstream->obuf_offset += ret;
		return 0;
	}
	pstream->obuf_offset = 0;
	pstream->obuf_used = 0;
	return 1;
}

/* Encrypt the plaintext in buf as chunk_idx, in place. */
static int o_stream_popvault_seal(struct popvault_ostream *pstream, bool final)
{
	i_assert(pstream->obuf_used == 0);
	i_assert(!pstream->final_written);

	if (popvault_chunk_encrypt(pstream->mc, pstream->chunk_idx, final,
				   pstream->buf, pstream->pbuf_used,
				   pstream->buf) < 0) {
		/* the plaintext may be half overwritten: gone either way */
		sodium_memzero(pstream->buf, pstream->pbuf_used);
		pstream->pbuf_used = 0;
		io_stream_set_error(&pstream->ostream.iostream,
			"popvault: chunk %"PRIu64" encryption failed",
			pstream->chunk_idx);
		pstream->ostream.ostream.stream_errno = EIO;
		return -1;
	}
	pstream->obuf_used = pstream->pbuf_used + POPVAULT_TAG_SIZE;
	pstream->obuf_offset = 0;
	pstream->pbuf_used = 0;
	pstream->chunk_idx++;
	if (final)
		pstream->final_written = TRUE;
	return 0;
}

static ssize_t
o_stream_popvault_sendv(struct ostream_private *stream,
			const struct const_iovec *iov, unsigned int iov_count)
{
	struct popvault_ostream *pstream =
		container_of(stream, struct popvault_ostream, ostream);
	ssize_t bytes = 0;
	unsigned int i;
	size_t offset, n;
	int ret;

	if ((ret = o_stream_popvault_send_obuf(pstream)) <= 0)
		return ret;

	for (i = 0; i < iov_count; i++) {
		offset = 0;
		while (offset < iov[i].iov_len) {
			if (pstream->pbuf_used == pstream->chunk_size) {
				/* more data follows the full chunk, so it's
				   not the final one: seal and send it; the
				   buffer takes plaintext again only once the
				   parent has all of it */
				if (o_stream_popvault_seal(pstream, FALSE) < 0)
					return -1;
				ret = o_stream_popvault_send_obuf(pstream);
				if (ret < 0)
					return -1;
				if (ret == 0)
					goto out;
			}
			n = I_MIN(iov[i].iov_len - offset,
				  pstream->chunk_size - pstream->pbuf_used);
			memcpy(pstream->buf + pstream->pbuf_used,
			       CONST_PTR_OFFSET(iov[i].iov_base, offset), n);
			pstream->pbuf_used += n;
			offset += n;
			bytes += n;
		}
	}
out:
	stream->ostream.offset += bytes;
	return bytes;
}

static int o_stream_popvault_flush(struct ostream_private *stream)
{
	struct popvault_ostream *pstream =
		container_of(stream, struct popvault_ostream, ostream);
	int ret;

	if ((ret = o_stream_popvault_send_obuf(pstream)) <= 0)
		return ret;
	if (stream->finished && !pstream->final_written) {
		if (o_stream_popvault_seal(pstream, TRUE) < 0)
			return -1;
		if ((ret = o_stream_popvault_send_obuf(pstream)) <= 0)
			return ret;
	}
	return o_stream_flush_parent(stream);
}

static size_t
o_stream_popvault_get_buffer_used_size(const struct ostream_private *stream)
{
	const struct popvault_ostream *pstream =
		container_of(stream, const struct popvault_ostream, ostream);

	/* plaintext isn't counted: it can only be flushed by more data or
	   by finishing the stream. */
	return (pstream->obuf_used - pstream->obuf_offset) +
		o_stream_get_buffer_used_size(stream->parent);
}

static size_t
o_stream_popvault_get_buffer_avail_size(const struct ostream_private *stream)
{
	const struct popvault_ostream *pstream =
		container_of(stream, const struct popvault_ostream, ostream);

	if (pstream->obuf_used != 0)
		return 0;
	return pstream->chunk_size - pstream->pbuf_used;
}

struct ostream *
o_stream_create_popvault_encrypt(struct ostream *output,
				 struct popvault_sender *sender)
{
	struct popvault_ostream *pstream;
	const char *error;
	int ret;

	pstream = i_new(struct popvault_ostream, 1);
	T_BEGIN {
		unsigned char header[POPVAULT_HEADER_SIZE];

		ret = popvault_sender_begin_message(sender, header,
						    &pstream->mc, &error);
		if (ret == 0) {
			pstream->chunk_size =
				popvault_msg_cipher_chunk_size(pstream->mc);
			pv_buffer_get(pstream);
			i_assert(pstream->chunk_size + POPVAULT_TAG_SIZE >=
				 POPVAULT_HEADER_SIZE);
			memcpy(pstream->buf, header, sizeof(header));
			pstream->obuf_used = sizeof(header);
		}
	} T_END_PASS_STR_IF(ret < 0, &error);

	pstream->ostream.iostream.close = o_stream_popvault_close;
	pstream->ostream.iostream.destroy = o_stream_popvault_destroy;
	pstream->ostream.sendv = o_stream_popvault_sendv;
	pstream->ostream.flush = o_stream_popvault_flush;
	pstream->ostream.get_buffer_used_size =
		o_stream_popvault_get_buffer_used_size;
	pstream->ostream.get_buffer_avail_size =
		o_stream_popvault_get_buffer_avail_size;

	struct ostream *ostream =
		o_stream_create(&pstream->ostream, output,
				o_stream_get_fd(output));
	if (ret < 0) {
		io_stream_set_error(&pstream->ostream.iostream, "%s", error);
		ostream->stream_errno = EIO;
	}
	return ostream;
}
