/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "str.h"
#include "buffer.h"
#include "hex-binary.h"
#include "base64.h"
#include "mkdir-parents.h"
#include "write-full.h"
#include "popvault-crypt-keys.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>
#include <sodium.h>

#define KEYFILE_MAGIC "popvault-keypair 1"
#define KEYFILE_SUFFIX ".key"
#define CURRENT_NAME "current"
#define WRAP_KIND_MASTER "master-v1"
#define WRAP_INFO "popvault v1 master-wrap"
#define WRAP_SALT_SIZE 16
#define WRAP_NONCE_SIZE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define WRAP_CT_SIZE (POPVAULT_SK_SIZE + \
		      crypto_aead_xchacha20poly1305_ietf_ABYTES)
/* key files and the master key file are tiny; refuse anything large */
#define SMALL_FILE_MAX 65536

struct keyfile {
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE];
	/* the master-v1 wrap, when present */
	bool have_master_wrap;
	unsigned char salt[WRAP_SALT_SIZE];
	unsigned char nonce[WRAP_NONCE_SIZE];
	unsigned char ct[WRAP_CT_SIZE];
};

static int read_small_file(const char *path, string_t *str,
			   const char **error_r)
{
	unsigned char buf[4096];
	ssize_t ret;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return errno == ENOENT ? 0 : -1;
	}
	while ((ret = read(fd, buf, sizeof(buf))) > 0) {
		if (str_len(str) + ret > SMALL_FILE_MAX) {
			*error_r = t_strdup_printf("%s: file too large", path);
			i_close_fd(&fd);
			return -1;
		}
		str_append_data(str, buf, ret);
	}
	if (ret < 0) {
		*error_r = t_strdup_printf("read(%s) failed: %m", path);
		i_close_fd(&fd);
		return -1;
	}
	sodium_memzero(buf, sizeof(buf));
	i_close_fd(&fd);
	return 1;
}

int popvault_master_key_read(const char *setting,
			     unsigned char key_r[POPVAULT_MASTER_KEY_SIZE],
			     const char **error_r)
{
	const char *path = setting[0] == '<' ? setting + 1 : setting;
	string_t *str = t_str_new(128);
	buffer_t *dec;
	const char *text;
	size_t len;
	int ret;

	if (path[0] == '\0') {
		*error_r = "popvault_master_key: empty path";
		return -1;
	}
	ret = read_small_file(path, str, error_r);
	if (ret <= 0) {
		*error_r = t_strdup_printf("master key %s", *error_r);
		return -1;
	}
	text = t_str_trim(str_c(str), " \t\r\n");
	len = strlen(text);
	dec = t_buffer_create(64);
	if (len == POPVAULT_MASTER_KEY_SIZE * 2 &&
	    hex_to_binary(text, dec) == 0) {
		/* hex */
	} else {
		buffer_set_used_size(dec, 0);
		if (base64_decode(text, len, NULL, dec) < 0)
			buffer_set_used_size(dec, 0);
	}
	if (dec->used != POPVAULT_MASTER_KEY_SIZE) {
		*error_r = t_strdup_printf("master key %s: not 32 bytes as "
			"64 hex digits or base64 (e.g. openssl rand -hex 32)",
			path);
		ret = -1;
	} else {
		memcpy(key_r, dec->data, POPVAULT_MASTER_KEY_SIZE);
		ret = 0;
	}
	sodium_memzero(buffer_get_modifiable_data(dec, NULL), dec->used);
	sodium_memzero(str_c_modifiable(str), str_len(str));
	return ret;
}

/* KEK = HKDF-SHA256(salt, master, "popvault v1 master-wrap" 0 user 0
   key_id_hex) */
static void wrap_kek(const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
		     const unsigned char salt[WRAP_SALT_SIZE],
		     const char *username,
		     const unsigned char key_id[POPVAULT_KEY_ID_SIZE],
		     unsigned char kek_r[crypto_aead_xchacha20poly1305_ietf_KEYBYTES])
{
	string_t *info = t_str_new(128);

	str_append(info, WRAP_INFO);
	str_append_c(info, '\0');
	str_append(info, username);
	str_append_c(info, '\0');
	str_append(info, binary_to_hex(key_id, POPVAULT_KEY_ID_SIZE));
	popvault_hkdf_sha256(salt, WRAP_SALT_SIZE,
			     master, POPVAULT_MASTER_KEY_SIZE,
			     str_data(info), str_len(info), kek_r,
			     crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
}

/* AAD binds the wrap to the file format, the user and the public key. */
static buffer_t *wrap_aad(const char *username,
			  const unsigned char key_id[POPVAULT_KEY_ID_SIZE],
			  const unsigned char pk[POPVAULT_PK_SIZE])
{
	buffer_t *aad = t_buffer_create(128);

	buffer_append(aad, KEYFILE_MAGIC, strlen(KEYFILE_MAGIC) + 1);
	buffer_append(aad, username, strlen(username) + 1);
	buffer_append(aad, key_id, POPVAULT_KEY_ID_SIZE);
	buffer_append(aad, pk, POPVAULT_PK_SIZE);
	return aad;
}

static int hex_field(const char *hex, unsigned char *out, size_t size)
{
	buffer_t *buf = t_buffer_create(size);

	if (strlen(hex) != size * 2 || hex_to_binary(hex, buf) < 0 ||
	    buf->used != size)
		return -1;
	memcpy(out, buf->data, size);
	return 0;
}

static int keyfile_parse(const char *path, const char *text,
			 struct keyfile *kf_r, const char **error_r)
{
	const char *const *lines = t_strsplit(text, "\n");
	unsigned char check_id[POPVAULT_KEY_ID_SIZE];
	bool have_id = FALSE, have_pk = FALSE;
	unsigned int i;

	i_zero(kf_r);
	if (lines[0] == NULL || strcmp(lines[0], KEYFILE_MAGIC) != 0) {
		*error_r = t_strdup_printf("%s: not a popvault key file", path);
		return -1;
	}
	for (i = 1; lines[i] != NULL; i++) {
		const char *const *f = t_strsplit(lines[i], " ");

		if (f[0] == NULL || f[0][0] == '\0')
			continue;
		if (strcmp(f[0], "key_id") == 0 && f[1] != NULL) {
			if (hex_field(f[1], kf_r->key_id,
				      POPVAULT_KEY_ID_SIZE) < 0)
				break;
			have_id = TRUE;
		} else if (strcmp(f[0], "public") == 0 && f[1] != NULL) {
			if (hex_field(f[1], kf_r->pk, POPVAULT_PK_SIZE) < 0)
				break;
			have_pk = TRUE;
		} else if (strcmp(f[0], "private") == 0 && f[1] != NULL &&
			   strcmp(f[1], WRAP_KIND_MASTER) == 0) {
			if (str_array_length(f) != 5 ||
			    hex_field(f[2], kf_r->salt, WRAP_SALT_SIZE) < 0 ||
			    hex_field(f[3], kf_r->nonce, WRAP_NONCE_SIZE) < 0 ||
			    hex_field(f[4], kf_r->ct, WRAP_CT_SIZE) < 0)
				break;
			kf_r->have_master_wrap = TRUE;
		}
		/* other lines (created, later wrap kinds) are for other
		   readers and are ignored here */
	}
	if (lines[i] != NULL) {
		*error_r = t_strdup_printf("%s: invalid line %u", path, i + 1);
		return -1;
	}
	if (!have_id || !have_pk) {
		*error_r = t_strdup_printf("%s: key_id or public missing",
					   path);
		return -1;
	}
	popvault_key_id(kf_r->pk, check_id);
	if (memcmp(check_id, kf_r->key_id, sizeof(check_id)) != 0) {
		*error_r = t_strdup_printf("%s: key_id does not match the "
					   "public key", path);
		return -1;
	}
	return 0;
}

static int keyfile_read(const char *keys_dir, const char *key_id_hex,
			struct keyfile *kf_r, const char **error_r)
{
	const char *path = t_strconcat(keys_dir, "/", key_id_hex,
				       KEYFILE_SUFFIX, NULL);
	string_t *str = t_str_new(512);
	int ret;

	if ((ret = read_small_file(path, str, error_r)) <= 0) {
		if (ret == 0)
			*error_r = t_strdup_printf("%s is missing", path);
		return -1;
	}
	return keyfile_parse(path, str_c(str), kf_r, error_r);
}

static int fsync_dir(const char *dir, const char **error_r)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);

	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", dir);
		return -1;
	}
	if (fsync(fd) < 0) {
		*error_r = t_strdup_printf("fsync(%s) failed: %m", dir);
		i_close_fd(&fd);
		return -1;
	}
	i_close_fd(&fd);
	return 0;
}

/* Writes data to a fresh 0600 temporary file in dir and fsyncs it.
   Returns its path, or NULL with error_r. */
static const char *
write_tmp(const char *dir, const char *name, const void *data, size_t size,
	  const char **error_r)
{
	unsigned char rnd[8];
	const char *path;
	int fd;

	randombytes_buf(rnd, sizeof(rnd));
	path = t_strdup_printf("%s/.%s.tmp.%s", dir, name,
			       binary_to_hex(rnd, sizeof(rnd)));
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return NULL;
	}
	if (write_full(fd, data, size) < 0 || fsync(fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m", path);
		i_close_fd(&fd);
		i_unlink(path);
		return NULL;
	}
	if (close(fd) < 0) {
		*error_r = t_strdup_printf("close(%s) failed: %m", path);
		i_unlink(path);
		return NULL;
	}
	return path;
}

static int keys_dir_create(const char *keys_dir, const char **error_r)
{
	if (mkdir_parents(keys_dir, 0700) < 0 && errno != EEXIST) {
		*error_r = t_strdup_printf("mkdir(%s) failed: %m", keys_dir);
		return -1;
	}
	return 0;
}

/* Returns 1 and the key id when "current" exists, 0 when it doesn't. */
static int read_current(const char *keys_dir, const char **key_id_hex_r,
			const char **error_r)
{
	const char *path = t_strconcat(keys_dir, "/" CURRENT_NAME, NULL);
	string_t *str = t_str_new(32);
	unsigned char id[POPVAULT_KEY_ID_SIZE];
	const char *hex;
	int ret;

	if ((ret = read_small_file(path, str, error_r)) <= 0)
		return ret;
	hex = t_str_trim(str_c(str), " \t\r\n");
	if (hex_field(hex, id, sizeof(id)) < 0) {
		*error_r = t_strdup_printf("%s: not a key id", path);
		return -1;
	}
	*key_id_hex_r = hex;
	return 1;
}

int popvault_keystore_create(const char *keys_dir, const char *username,
			     const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
			     unsigned char pk_r[POPVAULT_PK_SIZE],
			     const char **error_r)
{
	unsigned char sk[POPVAULT_SK_SIZE], pk[POPVAULT_PK_SIZE];
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	unsigned char salt[WRAP_SALT_SIZE], nonce[WRAP_NONCE_SIZE];
	unsigned char ct[WRAP_CT_SIZE];
	unsigned char kek[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
	const char *id_hex, *key_path, *tmp, *cur_path, *winner;
	buffer_t *aad;
	string_t *str;
	struct keyfile kf;

	if (keys_dir_create(keys_dir, error_r) < 0)
		return -1;

	popvault_keypair_generate(pk, sk);
	popvault_key_id(pk, key_id);
	id_hex = binary_to_hex(key_id, sizeof(key_id));
	randombytes_buf(salt, sizeof(salt));
	randombytes_buf(nonce, sizeof(nonce));
	wrap_kek(master, salt, username, key_id, kek);
	aad = wrap_aad(username, key_id, pk);
	crypto_aead_xchacha20poly1305_ietf_encrypt(ct, NULL, sk, sizeof(sk),
		aad->data, aad->used, NULL, nonce, kek);
	sodium_memzero(sk, sizeof(sk));
	sodium_memzero(kek, sizeof(kek));

	str = t_str_new(512);
	str_printfa(str, KEYFILE_MAGIC"\nkey_id %s\ncreated %ld\n"
		    "public %s\nprivate "WRAP_KIND_MASTER" %s %s %s\n",
		    id_hex, (long)time(NULL), binary_to_hex(pk, sizeof(pk)),
		    binary_to_hex(salt, sizeof(salt)),
		    binary_to_hex(nonce, sizeof(nonce)),
		    binary_to_hex(ct, sizeof(ct)));

	key_path = t_strconcat(keys_dir, "/", id_hex, KEYFILE_SUFFIX, NULL);
	tmp = write_tmp(keys_dir, t_strconcat(id_hex, KEYFILE_SUFFIX, NULL),
			str_data(str), str_len(str), error_r);
	if (tmp == NULL)
		return -1;
	if (rename(tmp, key_path) < 0) {
		*error_r = t_strdup_printf("rename(%s, %s) failed: %m",
					   tmp, key_path);
		i_unlink(tmp);
		return -1;
	}

	/* link() fails with EEXIST when another process made its key pair
	   current first: then that one wins and ours is removed. */
	cur_path = t_strconcat(keys_dir, "/" CURRENT_NAME, NULL);
	tmp = write_tmp(keys_dir, CURRENT_NAME, t_strconcat(id_hex, "\n", NULL),
			strlen(id_hex) + 1, error_r);
	if (tmp == NULL)
		return -1;
	if (link(tmp, cur_path) < 0) {
		int link_errno = errno;

		i_unlink(tmp);
		if (link_errno != EEXIST) {
			*error_r = t_strdup_printf("link(%s, %s) failed: %s",
				tmp, cur_path, strerror(link_errno));
			return -1;
		}
		i_unlink(key_path);
		if (read_current(keys_dir, &winner, error_r) <= 0 ||
		    keyfile_read(keys_dir, winner, &kf, error_r) < 0)
			return -1;
		memcpy(pk_r, kf.pk, POPVAULT_PK_SIZE);
		return fsync_dir(keys_dir, error_r);
	}
	i_unlink(tmp);
	memcpy(pk_r, pk, POPVAULT_PK_SIZE);
	return fsync_dir(keys_dir, error_r);
}

int popvault_keystore_get_current(const char *keys_dir, const char *username,
				  const unsigned char *master,
				  unsigned char pk_r[POPVAULT_PK_SIZE],
				  bool *created_r, const char **error_r)
{
	struct keyfile kf;
	const char *id_hex;
	int ret;

	*created_r = FALSE;
	ret = read_current(keys_dir, &id_hex, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0) {
		if (keyfile_read(keys_dir, id_hex, &kf, error_r) < 0)
			return -1;
		memcpy(pk_r, kf.pk, POPVAULT_PK_SIZE);
		return 0;
	}
	if (master == NULL) {
		*error_r = "no key pair yet and no master key to create one";
		return -1;
	}
	if (popvault_keystore_create(keys_dir, username, master, pk_r,
				     error_r) < 0)
		return -1;
	*created_r = TRUE;
	return 0;
}

static int
keyfile_unwrap(const struct keyfile *kf, const char *path,
	       const char *username,
	       const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
	       struct popvault_receiver *receiver, const char **error_r)
{
	unsigned char kek[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
	unsigned char sk[POPVAULT_SK_SIZE];
	buffer_t *aad;
	int ret;

	if (!kf->have_master_wrap) {
		*error_r = t_strdup_printf("%s: no master-wrapped private key",
					   path);
		return -1;
	}
	wrap_kek(master, kf->salt, username, kf->key_id, kek);
	aad = wrap_aad(username, kf->key_id, kf->pk);
	ret = crypto_aead_xchacha20poly1305_ietf_decrypt(sk, NULL, NULL,
		kf->ct, sizeof(kf->ct), aad->data, aad->used, kf->nonce, kek);
	sodium_memzero(kek, sizeof(kek));
	if (ret != 0) {
		*error_r = t_strdup_printf("%s: can't unwrap the private key "
			"(wrong master key, another user's file, or damaged)",
			path);
		return -1;
	}
	ret = popvault_receiver_add_key(receiver, sk);
	sodium_memzero(sk, sizeof(sk));
	if (ret < 0) {
		*error_r = t_strdup_printf("%s: invalid private key", path);
		return -1;
	}
	return 0;
}

int popvault_keystore_load_receiver(const char *keys_dir,
				    const char *username,
				    const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
				    struct popvault_receiver *receiver,
				    unsigned int *count_r,
				    const char **error_r)
{
	struct keyfile kf;
	struct dirent *d;
	DIR *dir;
	const char *name, *path;
	size_t len;
	int ret = 0;

	*count_r = 0;
	dir = opendir(keys_dir);
	if (dir == NULL) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("opendir(%s) failed: %m", keys_dir);
		return -1;
	}
	while (ret == 0 && (d = readdir(dir)) != NULL) {
		name = d->d_name;
		len = strlen(name);
		if (name[0] == '.' || len != POPVAULT_KEY_ID_SIZE * 2 +
		    strlen(KEYFILE_SUFFIX) ||
		    strcmp(name + POPVAULT_KEY_ID_SIZE * 2,
			   KEYFILE_SUFFIX) != 0)
			continue;
		path = t_strconcat(keys_dir, "/", name, NULL);
		if (keyfile_read(keys_dir, t_strndup(name, len -
				 strlen(KEYFILE_SUFFIX)), &kf, error_r) < 0 ||
		    keyfile_unwrap(&kf, path, username, master, receiver,
				   error_r) < 0)
			ret = -1;
		else
			(*count_r)++;
		sodium_memzero(&kf, sizeof(kf));
	}
	if (closedir(dir) < 0 && ret == 0) {
		*error_r = t_strdup_printf("closedir(%s) failed: %m", keys_dir);
		ret = -1;
	}
	return ret;
}
