/* popvault: decrypting istream (PVLT v1 and v2). */

#include "lib.h"
#include "istream-private.h"
#include "memarea.h"
#include "popvault-crypt-stream.h"

#include <sodium.h>

struct popvault_istream {
	struct istream_private istream;
	struct popvault_receiver *receiver;
	struct popvault_msg_cipher *mc;
	struct popvault_header hdr;

	unsigned char hdrbuf[POPVAULT_HEADER_SIZE];
	size_t hdr_used;

	size_t chunk_size;
	/* Known when the parent is seekable and its size is known: chunk
	   boundaries and the final chunk are then computed arithmetically. */
	uoff_t plain_size;
	uint64_t n_chunks;

	/* ciphertext of the chunk being collected (allocated when first
	   needed: streamed chunks never are) */
	unsigned char *ct;
	size_t ct_alloc_size;
	size_t ct_used;
	uint64_t ct_idx;

	/* Length of the chunk last decrypted. Its plaintext is written into
	   this stream's own buffer after pos, where no reader sees it until
	   pos moves over it, which happens only once it has authenticated. */
	size_t plain_len;

	/* sequential mode: next chunk index in the parent stream, and the
	   end of plaintext once the final chunk is seen */
	uint64_t seq_next_idx;
	uoff_t final_end;

	popvault_decrypt_error_callback_t *error_callback;
	void *error_context;

	/* AES-GCM chunk of a seekable parent: opened where it lies in the
	   parent's buffer, piece by piece (pv_stream_chunk()) */
	bool streaming:1;
	/* a streamed chunk failed: collect it to say why */
	bool no_streaming:1;
	bool header_done:1;
	bool size_known:1;
	bool collecting:1;
	bool final_seen:1;
};

static int ATTR_FORMAT(2, 3)
pv_error(struct popvault_istream *pstream, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	io_stream_set_verror(&pstream->istream.iostream, fmt, args);
	va_end(args);
	pstream->istream.istream.stream_errno = EINVAL;
	if (pstream->error_callback != NULL) {
		popvault_decrypt_error_callback_t *cb = pstream->error_callback;

		/* once: a reader retrying the same chunk reports nothing new */
		pstream->error_callback = NULL;
		cb(i_stream_get_error(&pstream->istream.istream),
		   pstream->error_context);
	}
	return -1;
}

static int pv_parent_error(struct popvault_istream *pstream)
{
	struct istream *parent = pstream->istream.parent;

	pstream->istream.istream.stream_errno = parent->stream_errno;
	io_stream_set_error(&pstream->istream.iostream, "%s",
			    i_stream_get_error(parent));
	return -1;
}

void *popvault_malloc_unzeroed(size_t size)
{
	void *mem = malloc(size);

	if (mem == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "malloc(%zu) failed: %m", size);
	return mem;
}

static void pv_w_buffer_free(void *buf)
{
	free(buf);
}

/* Not i_malloc(): zeroing the buffers per message was the largest cost
   of reading small mail, and only bytes that were written are ever read.
   The stream's own buffer is also allocated here, unzeroed and sized to
   the first chunk, so that a chunk is decrypted straight into it: no
   private plaintext copy, no second copy into the stream buffer.
   istream.c reallocates and frees it like its own (malloc()/realloc()/
   free() through the system pool). Every path that sets header_done
   calls this. */
static void pv_alloc_buffers(struct popvault_istream *pstream, size_t size)
{
	struct istream_private *stream = &pstream->istream;

	i_assert(pstream->ct == NULL);
	pstream->ct_alloc_size = size + POPVAULT_TAG_SIZE;
	if (stream->w_buffer == NULL) {
		i_assert(stream->memarea == NULL && stream->pos == 0);
		stream->buffer_size = I_MAX(size, 1);
		stream->w_buffer =
			popvault_malloc_unzeroed(stream->buffer_size);
		/* memarea_init() takes a const pointer: gcc would warn it
		   reads uninitialized memory (it does not) */
		stream->w_buffer[0] = '\0';
		stream->buffer = stream->w_buffer;
		stream->memarea = memarea_init(stream->w_buffer,
					       stream->buffer_size,
					       pv_w_buffer_free,
					       (void *)stream->w_buffer);
	}
}

/* Read and process the header. Returns 1 done, 0 need more, -1 error. */
static int pv_read_header(struct popvault_istream *pstream)
{
	struct istream_private *stream = &pstream->istream;
	struct istream *parent = stream->parent;
	const unsigned char *data;
	const char *error;
	uoff_t parent_size, total;
	size_t size, n;
	int ret;

	if (pstream->header_done)
		return 1;

	if (parent->seekable) {
		i_stream_seek(parent, stream->parent_start_offset +
			      pstream->hdr_used);
	}
	while (pstream->hdr_used < POPVAULT_HEADER_SIZE) {
		ret = i_stream_read_more(parent, &data, &size);
		if (ret == 0)
			return 0;
		if (ret < 0) {
			if (parent->stream_errno != 0)
				return pv_parent_error(pstream);
			if (!popvault_container_is_encrypted(pstream->hdrbuf,
							     pstream->hdr_used) &&
			    pstream->hdr_used >= POPVAULT_MAGIC_SIZE)
				return pv_error(pstream, "popvault: not an encrypted message (bad magic)");
			return pv_error(pstream, "popvault: truncated header "
					"(%zu bytes)", pstream->hdr_used);
		}
		n = I_MIN(size, POPVAULT_HEADER_SIZE - pstream->hdr_used);
		memcpy(pstream->hdrbuf + pstream->hdr_used, data, n);
		pstream->hdr_used += n;
		i_stream_skip(parent, n);
	}

	T_BEGIN {
		ret = popvault_receiver_open(pstream->receiver, pstream->hdrbuf,
					     sizeof(pstream->hdrbuf),
					     &pstream->hdr, &pstream->mc,
					     &error);
		if (ret < 0)
			(void)pv_error(pstream, "%s", error);
	} T_END;
	if (ret < 0)
		return -1;

	pstream->chunk_size = (size_t)1 << pstream->hdr.chunk_log2;
	pstream->header_done = TRUE;

	if (parent->seekable &&
	    i_stream_get_size(parent, TRUE, &parent_size) > 0 &&
	    parent_size >= stream->parent_start_offset) {
		total = parent_size - stream->parent_start_offset;
		if (popvault_container_plain_size(total, pstream->hdr.chunk_log2,
						  &pstream->plain_size) < 0) {
			pv_alloc_buffers(pstream, pstream->chunk_size);
			return pv_error(pstream, "popvault: invalid container "
				"length %"PRIuUOFF_T" (truncated or trailing "
				"data)", total);
		}
		pstream->n_chunks = pstream->plain_size == 0 ? 1 :
			(pstream->plain_size + pstream->chunk_size - 1) /
			pstream->chunk_size;
		pstream->size_known = TRUE;
		stream->cached_stream_size = pstream->plain_size;
	} else {
		/* work sequentially */
		stream->istream.seekable = FALSE;
	}
	/* most mail is smaller than a chunk */
	pv_alloc_buffers(pstream, pstream->size_known ?
			 I_MIN(pstream->chunk_size, pstream->plain_size) :
			 pstream->chunk_size);
	pstream->streaming = pstream->size_known &&
		popvault_msg_cipher_can_stream(pstream->mc);
	return 1;
}

/* Chunk idx, plain_len bytes, authenticated after pos: ready for
   pv_release(). Returns 1. */
static int
pv_chunk_authenticated(struct popvault_istream *pstream, uint64_t idx,
		       bool final, size_t plain_len)
{
	pstream->plain_len = plain_len;
	pstream->collecting = FALSE;
	pstream->ct_used = 0;
	pstream->seq_next_idx = idx + 1;
	if (final) {
		pstream->final_seen = TRUE;
		pstream->final_end = idx * pstream->chunk_size + plain_len;
	}
	return 1;
}

/* Decrypt the collected chunk into the stream buffer after pos without
   moving pos: the caller releases it (pv_release()) or leaves it unseen. */
static int
pv_decrypt_collected(struct popvault_istream *pstream, uint64_t idx,
		     bool final)
{
	size_t plain_len = pstream->ct_used - POPVAULT_TAG_SIZE;
	unsigned char *dest;

	/* a chunk authenticates whole: room for all of it, even past
	   max_buffer_size */
	dest = i_stream_alloc(&pstream->istream, I_MAX(plain_len, 1));
	if (popvault_chunk_decrypt(pstream->mc, idx, final, pstream->ct,
				   pstream->ct_used, dest) < 0) {
		/* Diagnose only: plaintext is never released. */
		if (popvault_chunk_decrypt(pstream->mc, idx, !final,
					   pstream->ct, pstream->ct_used,
					   dest) == 0) {
			sodium_memzero(dest, plain_len);
			if (final) {
				return pv_error(pstream, "popvault: truncated "
					"(missing final chunk after chunk %"
					PRIu64")", idx);
			}
			return pv_error(pstream, "popvault: data after final "
					"chunk %"PRIu64, idx);
		}
		return pv_error(pstream, "popvault: chunk %"PRIu64
				" failed authentication", idx);
	}
	return pv_chunk_authenticated(pstream, idx, final, plain_len);
}

/* Open chunk idx (need bytes of ciphertext and tag from the parent's
   current offset) without collecting it: each piece is decrypted from
   the parent's buffer into this stream's buffer after pos, the tag
   collected. The plaintext is released only after the tag verified,
   exactly as with a collected chunk. Saves copying every message once
   (about 2 k instructions per 20 KB message, callgrind). Returns 1 ok,
   0 need more (the chunk restarts on the next read: the stream buffer
   may move in between), -1 to collect it instead. */
static int pv_stream_chunk(struct popvault_istream *pstream, uint64_t idx,
			   bool final, size_t need)
{
	struct istream_private *stream = &pstream->istream;
	struct istream *parent = stream->parent;
	const size_t ct_len = need - POPVAULT_TAG_SIZE;
	unsigned char tag[POPVAULT_TAG_SIZE], *dest;
	const unsigned char *data;
	size_t size, n, done = 0;
	int ret;

	dest = i_stream_alloc(stream, I_MAX(ct_len, 1));
	if (popvault_chunk_stream_begin(pstream->mc, idx, final) < 0)
		return -1;
	while (done < need) {
		ret = i_stream_read_more(parent, &data, &size);
		if (ret <= 0) {
			/* EOF, errors: the collecting path reports them */
			return ret == 0 ? 0 : -1;
		}
		n = I_MIN(size, need - done);
		if (done < ct_len) {
			size_t ct_n = I_MIN(n, ct_len - done);

			if (popvault_chunk_stream_update(pstream->mc, data,
					ct_n, dest + done) < 0)
				return -1;
			memcpy(tag, data + ct_n, n - ct_n);
		} else {
			memcpy(tag + (done - ct_len), data, n);
		}
		done += n;
		i_stream_skip(parent, n);
	}
	if (popvault_chunk_stream_finish(pstream->mc, tag) < 0) {
		sodium_memzero(dest, ct_len);
		return -1;
	}
	return pv_chunk_authenticated(pstream, idx, final, ct_len);
}

/* Load and authenticate chunk idx. Returns 1 ok, 0 need more, -1 error. */
static int pv_load_chunk(struct popvault_istream *pstream, uint64_t idx)
{
	struct istream_private *stream = &pstream->istream;
	struct istream *parent = stream->parent;
	const size_t full = pstream->chunk_size + POPVAULT_TAG_SIZE;
	const unsigned char *data;
	size_t size, need, n;
	bool final;
	int ret;

	if (!pstream->collecting || pstream->ct_idx != idx) {
		pstream->collecting = TRUE;
		pstream->ct_idx = idx;
		pstream->ct_used = 0;
	}

	if (pstream->size_known) {
		if (idx >= pstream->n_chunks)
			return pv_error(pstream, "popvault: chunk %"PRIu64
					" beyond end", idx);
		final = idx == pstream->n_chunks - 1;
		need = !final ? full : (size_t)(pstream->plain_size -
			idx * pstream->chunk_size) + POPVAULT_TAG_SIZE;
		if (pstream->streaming && !pstream->no_streaming) {
			i_stream_seek(parent, stream->parent_start_offset +
				      POPVAULT_HEADER_SIZE + idx * full);
			ret = pv_stream_chunk(pstream, idx, final, need);
			if (ret >= 0)
				return ret;
			/* collect it again, for the precise error */
			pstream->no_streaming = TRUE;
			pstream->ct_used = 0;
		}
		if (pstream->ct == NULL)
			pstream->ct = popvault_malloc_unzeroed(
				pstream->ct_alloc_size);
		i_stream_seek(parent, stream->parent_start_offset +
			      POPVAULT_HEADER_SIZE + idx * full +
			      pstream->ct_used);
		while (pstream->ct_used < need) {
			ret = i_stream_read_more(parent, &data, &size);
			if (ret == 0)
				return 0;
			if (ret < 0) {
				if (parent->stream_errno != 0)
					return pv_parent_error(pstream);
				return pv_error(pstream, "popvault: truncated "
						"(chunk %"PRIu64" incomplete)",
						idx);
			}
			n = I_MIN(size, need - pstream->ct_used);
			memcpy(pstream->ct + pstream->ct_used, data, n);
			pstream->ct_used += n;
			i_stream_skip(parent, n);
		}
		return pv_decrypt_collected(pstream, idx, final);
	}

	/* sequential: collect a full chunk or up to EOF, then peek one byte
	   to learn whether this is the final chunk */
	if (pstream->ct == NULL)
		pstream->ct = popvault_malloc_unzeroed(
			pstream->ct_alloc_size);
	final = FALSE;
	for (;;) {
		ret = i_stream_read_more(parent, &data, &size);
		if (ret == 0)
			return 0;
		if (ret < 0) {
			if (parent->stream_errno != 0)
				return pv_parent_error(pstream);
			final = TRUE;
			break;
		}
		if (pstream->ct_used == full)
			break; /* more data follows: not final */
		n = I_MIN(size, full - pstream->ct_used);
		memcpy(pstream->ct + pstream->ct_used, data, n);
		pstream->ct_used += n;
		i_stream_skip(parent, n);
	}
	if (final) {
		if (pstream->ct_used == 0) {
			return pv_error(pstream, "popvault: truncated "
					"(missing final chunk %"PRIu64")", idx);
		}
		if (pstream->ct_used < POPVAULT_TAG_SIZE) {
			return pv_error(pstream, "popvault: truncated "
					"(chunk %"PRIu64" incomplete)", idx);
		}
		if (pstream->ct_used == POPVAULT_TAG_SIZE && idx > 0) {
			return pv_error(pstream, "popvault: empty final chunk "
					"%"PRIu64, idx);
		}
	}
	return pv_decrypt_collected(pstream, idx, final);
}

/* Make the chunk just decrypted after pos visible from its plaintext
   offset off. */
static ssize_t pv_release(struct popvault_istream *pstream, size_t off)
{
	struct istream_private *stream = &pstream->istream;
	size_t n = pstream->plain_len - off;

	if (off > 0) {
		if (stream->pos == stream->skip) {
			/* after a seek the buffer is empty: start it at off */
			stream->skip += off;
			stream->pos += off;
		} else {
			memmove(stream->w_buffer + stream->pos,
				stream->w_buffer + stream->pos + off, n);
		}
	}
	stream->pos += n;
	return n;
}

static ssize_t i_stream_popvault_read(struct istream_private *stream)
{
	struct popvault_istream *pstream =
		container_of(stream, struct popvault_istream, istream);
	uoff_t plain_next;
	uint64_t idx;
	size_t off;
	int ret;

	if ((ret = pv_read_header(pstream)) <= 0)
		return ret;

	if (stream->high_pos > stream->pos) {
		/* i_stream_nonseekable_try_seek() went back inside the
		   buffer: what follows pos there is authenticated data */
		off = stream->high_pos - stream->pos;
		stream->pos = stream->high_pos;
		stream->high_pos = 0;
		return off;
	}
	stream->high_pos = 0;

	plain_next = stream->istream.v_offset + (stream->pos - stream->skip);
	if (pstream->size_known && plain_next >= pstream->plain_size) {
		/* EOF: make sure the final chunk authenticates (detects
		   truncation even when seeking straight to the end) */
		if (!pstream->final_seen) {
			ret = pv_load_chunk(pstream, pstream->n_chunks - 1);
			if (ret <= 0)
				return ret;
		}
		stream->istream.eof = TRUE;
		return -1;
	}
	if (!pstream->size_known && pstream->final_seen &&
	    plain_next >= pstream->final_end) {
		stream->istream.eof = TRUE;
		return -1;
	}
	if (stream->pos - stream->skip >=
	    i_stream_get_max_buffer_size(&stream->istream))
		return -2;

	idx = plain_next >> pstream->hdr.chunk_log2;
	off = (size_t)(plain_next & (pstream->chunk_size - 1));
	if (pstream->size_known) {
		if ((ret = pv_load_chunk(pstream, idx)) <= 0)
			return ret;
	} else {
		/* sequential: authenticate (and discard) chunks before idx */
		if (idx < pstream->seq_next_idx) {
			return pv_error(pstream, "popvault: can't seek "
					"backwards to chunk %"PRIu64, idx);
		}
		while (pstream->seq_next_idx <= idx) {
			if (pstream->final_seen) {
				stream->istream.eof = TRUE;
				return -1;
			}
			ret = pv_load_chunk(pstream, pstream->seq_next_idx);
			if (ret <= 0)
				return ret;
		}
	}
	if (off >= pstream->plain_len) {
		/* only possible at the end of a final chunk */
		if (!pstream->final_seen) {
			return pv_error(pstream, "popvault: internal error "
					"at chunk %"PRIu64, idx);
		}
		stream->istream.eof = TRUE;
		return -1;
	}
	return pv_release(pstream, off);
}

static void pv_reset(struct popvault_istream *pstream)
{
	popvault_msg_cipher_free(&pstream->mc);
	/* ciphertext is not secret: no need to wipe it */
	free(pstream->ct);
	pstream->ct = NULL;
	pstream->hdr_used = 0;
	pstream->header_done = FALSE;
	pstream->streaming = FALSE;
	pstream->no_streaming = FALSE;
	pstream->size_known = FALSE;
	pstream->collecting = FALSE;
	pstream->final_seen = FALSE;
	pstream->ct_used = 0;
	pstream->seq_next_idx = 0;
}

static void i_stream_popvault_seek(struct istream_private *stream,
				   uoff_t v_offset, bool mark ATTR_UNUSED)
{
	struct popvault_istream *pstream =
		container_of(stream, struct popvault_istream, istream);
	uoff_t buf_start = stream->istream.v_offset - stream->skip;

	if (pstream->size_known &&
	    v_offset >= buf_start && v_offset < buf_start + stream->pos) {
		/* back inside the buffer (forward seeks there are skips):
		   it holds only authenticated plaintext */
		stream->skip = v_offset - buf_start;
		stream->istream.v_offset = v_offset;
		return;
	}
	if (pstream->size_known ||
	    (!pstream->header_done && stream->parent->seekable)) {
		/* random access; the next read() finds the chunk */
		stream->istream.v_offset = v_offset;
		stream->skip = stream->pos = 0;
		stream->high_pos = 0;
		pstream->collecting = FALSE;
		pstream->ct_used = 0;
		return;
	}
	if (!i_stream_nonseekable_try_seek(stream, v_offset)) {
		/* restart from the beginning */
		pv_reset(pstream);
		pstream->plain_size = 0;
		if (!i_stream_nonseekable_try_seek(stream, v_offset))
			i_unreached();
	}
}

static int i_stream_popvault_stat(struct istream_private *stream, bool exact)
{
	struct popvault_istream *pstream =
		container_of(stream, struct popvault_istream, istream);
	const struct stat *st;
	int ret;

	if (i_stream_stat(stream->parent, exact, &st) < 0)
		return pv_parent_error(pstream);
	stream->statbuf = *st;
	stream->statbuf.st_size = -1;

	if (!pstream->header_done && stream->parent->seekable) {
		/* reads only the header, not the body */
		ret = pv_read_header(pstream);
		if (ret < 0)
			return -1;
	}
	if (pstream->size_known)
		stream->statbuf.st_size = pstream->plain_size;
	return 0;
}

static void i_stream_popvault_close(struct iostream_private *stream,
				    bool close_parent)
{
	struct popvault_istream *pstream =
		container_of(stream, struct popvault_istream, istream.iostream);

	if (close_parent)
		i_stream_close(pstream->istream.parent);
}

static void i_stream_popvault_destroy(struct iostream_private *stream)
{
	struct popvault_istream *pstream =
		container_of(stream, struct popvault_istream, istream.iostream);

	pv_reset(pstream);
	sodium_memzero(pstream->hdrbuf, sizeof(pstream->hdrbuf));
	i_stream_free_buffer(&pstream->istream);
	i_stream_unref(&pstream->istream.parent);
}

struct istream *
i_stream_create_popvault_decrypt(struct istream *input,
				 struct popvault_receiver *receiver)
{
	struct popvault_istream *pstream;

	pstream = i_new(struct popvault_istream, 1);
	pstream->receiver = receiver;
	pstream->istream.max_buffer_size = input->real_stream->max_buffer_size;
	pstream->istream.iostream.close = i_stream_popvault_close;
	pstream->istream.iostream.destroy = i_stream_popvault_destroy;
	pstream->istream.read = i_stream_popvault_read;
	pstream->istream.seek = i_stream_popvault_seek;
	pstream->istream.stat = i_stream_popvault_stat;

	pstream->istream.istream.readable_fd = FALSE;
	pstream->istream.istream.blocking = input->blocking;
	pstream->istream.istream.seekable = input->seekable;

	return i_stream_create(&pstream->istream, input, -1, 0);
}

void i_stream_popvault_decrypt_set_error_callback(
	struct istream *input, popvault_decrypt_error_callback_t *callback,
	void *context)
{
	struct popvault_istream *pstream =
		container_of(input->real_stream, struct popvault_istream,
			     istream);

	i_assert(input->real_stream->read == i_stream_popvault_read);
	pstream->error_callback = callback;
	pstream->error_context = context;
}
