/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Cache entries made at delivery (popvault-crypt-delivered.h,
   docs/encryption.md "Entries made at delivery").

   File dovecot.popvault.delivered in the mailbox's index directory:
   magic, then records: id (16 bytes: BLAKE2b of the message's GUID, a
   maildir file name, which is on the disk in the clear anyway), length
   (32 bits), and a PVLT container made with the user's public key whose
   plaintext is: version, the GUID, the raw header as delivered, and
   BODYSTRUCTURE as Dovecot's own save parse computed it.

   The file only grows by whole appends of one write each; a record cut
   short by a crash ends the parse there. It is replaced (temporary
   file, rename) or removed, never rewritten in place. Losing it, or a
   record of it, costs only speed: the message's first open then
   decrypts and parses it, as it did without this file. */

#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "hostpid.h"
#include "write-full.h"
#include "mail-storage-private.h"
#include "popvault-container.h"
#include "popvault-crypt-delivered.h"

#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sodium.h>

#define DELIVERED_FILE_NAME "dovecot.popvault.delivered"
#define DELIVERED_MAGIC "PVDLVR01"
#define DELIVERED_MAGIC_SIZE 8
#define DELIVERED_ID_SIZE 16
#define DELIVERED_REC_HDR_SIZE (DELIVERED_ID_SIZE + 4)
#define DELIVERED_ENTRY_VERSION 1
/* a header or structure of megabytes is not worth an entry */
#define DELIVERED_ENTRY_MAX (4 * 1024 * 1024)
#define DELIVERED_REC_MAX (DELIVERED_ENTRY_MAX + 1024)
/* Deliveries stop adding beyond this: a user who never opens the
   folder with IMAP (POP3 only) keeps at most this much. */
#define DELIVERED_FILE_MAX (32 * 1024 * 1024)

struct delivered_record {
	unsigned char id[DELIVERED_ID_SIZE];
	/* of the record (its id) in the mapped file */
	size_t offset;
	uint32_t len;
	bool used;
};
ARRAY_DEFINE_TYPE(delivered_record, struct delivered_record);

struct popvault_delivered {
	struct mailbox *box;
	popvault_delivered_decrypt_func_t *decrypt;
	char *path;
	const unsigned char *map;
	size_t map_size;
	/* sorted by id */
	ARRAY_TYPE(delivered_record) records;
	unsigned int used_count;
	/* a container's plaintext, wiped after each */
	buffer_t *plain;
	bool warned;
};

static void delivered_id(const char *guid,
			 unsigned char id_r[DELIVERED_ID_SIZE])
{
	static const unsigned char label[] = "popvault delivered entry";
	crypto_generichash_state state;

	crypto_generichash_init(&state, NULL, 0, DELIVERED_ID_SIZE);
	crypto_generichash_update(&state, label, sizeof(label));
	crypto_generichash_update(&state, (const unsigned char *)guid,
				  strlen(guid));
	crypto_generichash_final(&state, id_r, DELIVERED_ID_SIZE);
}

static void put32(buffer_t *buf, uint32_t v)
{
	unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v };

	buffer_append(buf, b, sizeof(b));
}

static uint32_t get32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
		((uint32_t)p[2] << 8) | p[3];
}

static const char *delivered_path(struct mailbox *box)
{
	const char *dir;

	if (mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_INDEX, &dir) <= 0)
		return NULL;
	return t_strconcat(dir, "/" DELIVERED_FILE_NAME, NULL);
}

/* ---- delivery ---- */

/* Creates path holding data (the magic and the first record) in one
   step, so that no reader or other delivery sees it without its magic:
   written to a temporary file and linked. 1 when created, 0 when it
   existed, -1 on error. */
static int delivered_create(const char *path, const buffer_t *data)
{
	const char *tmp = t_strdup_printf("%s.%s.tmp", path, my_pid);
	int fd, ret = 1;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1)
		return -1;
	if (write_full(fd, data->data, data->used) < 0) {
		i_close_fd(&fd);
		i_unlink(tmp);
		return -1;
	}
	i_close_fd(&fd);
	if (link(tmp, path) < 0)
		ret = errno == EEXIST ? 0 : -1;
	i_unlink(tmp);
	return ret;
}

static int delivered_append(const char *path, const buffer_t *file)
{
	struct stat st;
	int fd, ret;

	fd = open(path, O_WRONLY | O_APPEND);
	if (fd == -1 && errno == ENOENT) {
		ret = delivered_create(path, file);
		if (ret != 0)
			return ret < 0 ? -1 : 0;
		/* another delivery created it meanwhile */
		fd = open(path, O_WRONLY | O_APPEND);
	}
	if (fd == -1)
		return -1;
	if (fstat(fd, &st) < 0) {
		i_close_fd(&fd);
		return -1;
	}
	if (st.st_size > DELIVERED_FILE_MAX) {
		i_close_fd(&fd);
		return 0;
	}
	/* one write: concurrent deliveries' records never interleave */
	ret = write_full(fd, CONST_PTR_OFFSET(file->data, DELIVERED_MAGIC_SIZE),
			 file->used - DELIVERED_MAGIC_SIZE);
	i_close_fd(&fd);
	return ret;
}

void popvault_delivered_add(struct mailbox *box,
			    struct popvault_sender *sender, const char *guid,
			    const unsigned char *hdr, size_t hdr_size,
			    const char *bodystructure)
{
	size_t guid_len = strlen(guid), bs_len = strlen(bodystructure);

	if (guid_len > 255 ||
	    hdr_size + bs_len > DELIVERED_ENTRY_MAX)
		return;
	T_BEGIN {
		const char *path = delivered_path(box), *error;
		buffer_t *plain, *file;
		size_t len_pos;
		int ret;

		plain = t_buffer_create(hdr_size + bs_len + guid_len + 16);
		buffer_append_c(plain, DELIVERED_ENTRY_VERSION);
		buffer_append_c(plain, guid_len);
		buffer_append(plain, guid, guid_len);
		put32(plain, hdr_size);
		buffer_append(plain, hdr, hdr_size);
		put32(plain, bs_len);
		buffer_append(plain, bodystructure, bs_len);

		file = t_buffer_create(plain->used + POPVAULT_HEADER_SIZE + 64);
		buffer_append(file, DELIVERED_MAGIC, DELIVERED_MAGIC_SIZE);
		buffer_append_space_unsafe(file, DELIVERED_ID_SIZE);
		delivered_id(guid, buffer_get_space_unsafe(file,
			DELIVERED_MAGIC_SIZE, DELIVERED_ID_SIZE));
		len_pos = file->used;
		put32(file, 0);
		ret = path == NULL ? 0 :
			popvault_encrypt_buffer(sender, plain->data, plain->used,
						file, &error) < 0 ? -1 : 1;
		sodium_memzero(buffer_get_modifiable_data(plain, NULL),
			       plain->used);
		if (ret > 0) {
			unsigned char *p = buffer_get_space_unsafe(file,
								   len_pos, 4);
			uint32_t len = file->used - len_pos - 4;

			p[0] = len >> 24; p[1] = len >> 16;
			p[2] = len >> 8; p[3] = len;
			if (delivered_append(path, file) < 0) {
				e_warning(box->event, "popvault: cache: "
					  "can't add to %s (the message is "
					  "read at its first open): %m", path);
			}
		} else if (ret < 0) {
			e_warning(box->event, "popvault: cache: no entry "
				  "made at delivery: %s", error);
		}
	} T_END;
}

void popvault_delivered_drop(struct mailbox *box)
{
	T_BEGIN {
		const char *path = delivered_path(box);
		struct stat st;

		/* looked at first: most expunging sessions (POP3's) find
		   none, and then change nothing in the mail store */
		if (path != NULL && stat(path, &st) == 0 &&
		    unlink(path) < 0 && errno != ENOENT) {
			e_error(box->event, "popvault: cache: "
				"unlink(%s) failed: %m", path);
		}
	} T_END;
}

/* ---- the first open ---- */

static int delivered_record_cmp(const struct delivered_record *r1,
				const struct delivered_record *r2)
{
	return memcmp(r1->id, r2->id, DELIVERED_ID_SIZE);
}

static int delivered_id_cmp(const unsigned char *id,
			    const struct delivered_record *r)
{
	return memcmp(id, r->id, DELIVERED_ID_SIZE);
}

/* Indexes the records; a record cut short ends the file there */
static void delivered_parse(struct popvault_delivered *dlv)
{
	const unsigned char *data = dlv->map;
	size_t pos = DELIVERED_MAGIC_SIZE, size = dlv->map_size;
	struct delivered_record *rec;
	uint32_t len;

	while (size - pos >= DELIVERED_REC_HDR_SIZE) {
		len = get32(data + pos + DELIVERED_ID_SIZE);
		if (len < POPVAULT_HEADER_SIZE || len > DELIVERED_REC_MAX ||
		    size - pos - DELIVERED_REC_HDR_SIZE < len)
			break;
		rec = array_append_space(&dlv->records);
		memcpy(rec->id, data + pos, DELIVERED_ID_SIZE);
		rec->offset = pos;
		rec->len = len;
		pos += DELIVERED_REC_HDR_SIZE + len;
	}
	array_sort(&dlv->records, delivered_record_cmp);
}

struct popvault_delivered *
popvault_delivered_open(struct mailbox *box, const char *index_dir,
			popvault_delivered_decrypt_func_t *decrypt)
{
	struct popvault_delivered *dlv;
	const char *path;
	struct stat st;
	void *map;
	int fd;

	path = t_strconcat(index_dir, "/" DELIVERED_FILE_NAME, NULL);
	fd = open(path, O_RDONLY);
	if (fd == -1) {
		if (errno != ENOENT) {
			e_warning(box->event, "popvault: cache: "
				  "open(%s) failed: %m", path);
		}
		return NULL;
	}
	if (fstat(fd, &st) < 0 || st.st_size < DELIVERED_MAGIC_SIZE ||
	    st.st_size > DELIVERED_FILE_MAX + DELIVERED_REC_MAX + 64) {
		i_close_fd(&fd);
		return NULL;
	}
	map = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	i_close_fd(&fd);
	if (map == MAP_FAILED) {
		e_warning(box->event, "popvault: cache: mmap(%s) failed: %m",
			  path);
		return NULL;
	}
	dlv = i_new(struct popvault_delivered, 1);
	dlv->box = box;
	dlv->decrypt = decrypt;
	dlv->path = i_strdup(path);
	dlv->map = map;
	dlv->map_size = st.st_size;
	i_array_init(&dlv->records, 256);
	dlv->plain = buffer_create_dynamic(default_pool, 4096);
	if (memcmp(map, DELIVERED_MAGIC, DELIVERED_MAGIC_SIZE) == 0)
		delivered_parse(dlv);
	return dlv;
}

/* The container's plaintext (dlv->plain) into its parts, checking that
   it is the entry of guid. */
static int delivered_parse_entry(const buffer_t *plain, const char *guid,
				 const unsigned char **hdr_r,
				 size_t *hdr_size_r,
				 const unsigned char **bs_r, size_t *bs_size_r)
{
	const unsigned char *p = plain->data, *end = p + plain->used;
	size_t guid_len = strlen(guid);
	uint32_t len;

	if (end - p < 2 || p[0] != DELIVERED_ENTRY_VERSION ||
	    p[1] != guid_len)
		return -1;
	p += 2;
	if ((size_t)(end - p) < guid_len + 4 || memcmp(p, guid, guid_len) != 0)
		return -1;
	p += guid_len;
	len = get32(p);
	p += 4;
	if ((size_t)(end - p) < (size_t)len + 4)
		return -1;
	*hdr_r = p;
	*hdr_size_r = len;
	p += len;
	len = get32(p);
	p += 4;
	if ((size_t)(end - p) != len || memchr(p, '\0', len) != NULL)
		return -1;
	*bs_r = p;
	*bs_size_r = len;
	return 0;
}

int popvault_delivered_take(struct popvault_delivered *dlv, const char *guid,
			    buffer_t *hdr_r, pool_t pool,
			    const char **bodystructure_r)
{
	unsigned char id[DELIVERED_ID_SIZE];
	const struct delivered_record *found;
	struct delivered_record *rec;
	const unsigned char *hdr, *bs;
	size_t hdr_size, bs_size;
	const char *error = "not this message's entry";
	int ret;

	if (array_count(&dlv->records) == dlv->used_count)
		return 0;
	delivered_id(guid, id);
	/* const on 2.4, modifiable on 2.3: taken const, then by index */
	found = array_bsearch(&dlv->records, id, delivered_id_cmp);
	if (found == NULL)
		return 0;
	rec = array_idx_modifiable(&dlv->records,
				   found - array_front(&dlv->records));
	if (rec->used)
		return 0;
	rec->used = TRUE;
	dlv->used_count++;

	buffer_set_used_size(dlv->plain, 0);
	T_BEGIN {
		ret = dlv->decrypt(dlv->box, dlv->map + rec->offset +
				   DELIVERED_REC_HDR_SIZE, rec->len,
				   dlv->plain, &error);
		if (ret == 0 &&
		    delivered_parse_entry(dlv->plain, guid, &hdr, &hdr_size,
					  &bs, &bs_size) == 0) {
			buffer_set_used_size(hdr_r, 0);
			buffer_append(hdr_r, hdr, hdr_size);
			*bodystructure_r = p_strndup(pool, bs, bs_size);
			ret = 1;
		} else {
			ret = -1;
		}
		if (ret < 0 && !dlv->warned) {
			dlv->warned = TRUE;
			e_warning(dlv->box->event, "popvault: cache: %s: an "
				  "entry made at delivery does not open "
				  "(ignored, the message is read): %s",
				  dlv->path, error);
		}
	} T_END;
	sodium_memzero(buffer_get_modifiable_data(dlv->plain, NULL),
		       dlv->plain->used);
	buffer_set_used_size(dlv->plain, 0);
	return ret;
}

/* The file anew with the records not used */
static void delivered_rewrite(struct popvault_delivered *dlv)
{
	const struct delivered_record *rec;
	buffer_t *out;
	const char *tmp;
	int fd;

	out = buffer_create_dynamic(default_pool, dlv->map_size);
	buffer_append(out, DELIVERED_MAGIC, DELIVERED_MAGIC_SIZE);
	array_foreach(&dlv->records, rec) {
		if (!rec->used) {
			buffer_append(out, dlv->map + rec->offset,
				      DELIVERED_REC_HDR_SIZE + rec->len);
		}
	}
	tmp = t_strdup_printf("%s.%s.tmp", dlv->path, my_pid);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1) {
		e_error(dlv->box->event, "popvault: cache: open(%s) failed: %m",
			tmp);
	} else {
		int ret = write_full(fd, out->data, out->used);

		if (close(fd) < 0)
			ret = -1;
		if (ret < 0) {
			e_error(dlv->box->event, "popvault: cache: "
				"write(%s) failed: %m", tmp);
			i_unlink(tmp);
		} else if (rename(tmp, dlv->path) < 0) {
			e_error(dlv->box->event, "popvault: cache: "
				"rename(%s, %s) failed: %m", tmp, dlv->path);
			i_unlink(tmp);
		}
	}
	buffer_free(&out);
}

void popvault_delivered_close(struct popvault_delivered **_dlv,
			      bool all_filled)
{
	struct popvault_delivered *dlv = *_dlv;

	if (dlv == NULL)
		return;
	*_dlv = NULL;
	T_BEGIN {
		if (all_filled || dlv->used_count == array_count(&dlv->records)) {
			/* the rest belongs to no message of the mailbox
			   (expunged, or a save that was not committed) */
			if (unlink(dlv->path) < 0 && errno != ENOENT) {
				e_error(dlv->box->event, "popvault: cache: "
					"unlink(%s) failed: %m", dlv->path);
			}
		} else if (dlv->used_count > 0) {
			delivered_rewrite(dlv);
		}
	} T_END;
	if (munmap((void *)dlv->map, dlv->map_size) < 0)
		i_error("popvault: cache: munmap(%s) failed: %m", dlv->path);
	array_free(&dlv->records);
	buffer_free(&dlv->plain);
	i_free(dlv->path);
	i_free(dlv);
}
