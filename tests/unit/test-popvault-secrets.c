/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Secrets in memory (issue 15, item 8): after an operation on a master
   key, a recovery key or a message, the secret's bytes are searched for
   in the process's own writable memory (the heap, with Dovecot's data
   stack, and every anonymous rw mapping but the thread's stack), read
   through /proc/self/mem so that valgrind does not see reads of freed
   blocks. The test keeps its
   own copies of every secret, and of the patterns, in one libsodium
   guarded allocation (the vault) that the scan skips; the code under
   test may keep a secret only in its own guarded allocations, which the
   test frees before scanning. */

#define _GNU_SOURCE /* memmem() */
#include "lib.h"
#include "str.h"
#include "array.h"
#include "strfuncs.h"
#include "safe-memset.h"
#include "unlink-directory.h"
#include "test-common.h"
#include "popvault-container.h"
#include "popvault-crypt-keys.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sodium.h>

#define VAULT_SIZE (512 * 1024)
#define SCAN_BUF_SIZE (256 * 1024)
#define PATTERNS_MAX 96
/* the longest pattern: hex of a 48-byte value */
#define PATTERN_MAX_SIZE 96

struct pattern {
	const char *name;
	unsigned char *data;
	size_t size;
};

static char tmpdir[] = "/tmp/popvault-secrets-test.XXXXXX";
static unsigned char *vault, *vault_next;
static struct pattern patterns[PATTERNS_MAX];
static unsigned int patterns_count;

static void *vault_alloc(size_t size)
{
	void *p = vault_next;

	i_assert(vault_next + size <= vault + VAULT_SIZE - SCAN_BUF_SIZE);
	vault_next += (size + 15) & ~(size_t)15;
	return p;
}

static void vault_reset(void)
{
	sodium_memzero(vault, VAULT_SIZE);
	vault_next = vault;
	patterns_count = 0;
}

static void pattern_add(const char *name, const unsigned char *data,
			size_t size)
{
	struct pattern *p;

	i_assert(patterns_count < PATTERNS_MAX && size <= PATTERN_MAX_SIZE);
	p = &patterns[patterns_count++];
	p->name = name;
	p->data = vault_alloc(size);
	p->size = size;
	memcpy(p->data, data, size);
}

static void hex_into(unsigned char *out, const unsigned char *data,
		     size_t size, bool upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	size_t i;

	for (i = 0; i < size; i++) {
		out[i * 2] = digits[data[i] >> 4];
		out[i * 2 + 1] = digits[data[i] & 0x0f];
	}
}

/* Every form a secret may take in memory: raw (each half too, for
   partial copies), as the native-endian 32-bit words of a SHA-256 state
   (what a digest context keeps of its last output), lower and upper
   case hex, and base64. The encodings are written straight into the
   vault. */
static void secret_add(const char *name, const unsigned char *data,
		       size_t size)
{
	unsigned char *tmp = vault_alloc(PATTERN_MAX_SIZE * 2);
	size_t i;

	pattern_add(name, data, size);
	if (size >= 32) {
		pattern_add(name, data, size / 2);
		pattern_add(name, data + size / 2, size - size / 2);
		for (i = 0; i + 4 <= 32; i += 4) {
			tmp[i] = data[i + 3]; tmp[i + 1] = data[i + 2];
			tmp[i + 2] = data[i + 1]; tmp[i + 3] = data[i];
		}
		pattern_add(t_strconcat(name, " (SHA-256 state)", NULL),
			    tmp, 32);
	}
	hex_into(tmp, data, I_MIN(size, PATTERN_MAX_SIZE / 2), FALSE);
	pattern_add(t_strconcat(name, " (hex)", NULL), tmp,
		    I_MIN(size, PATTERN_MAX_SIZE / 2) * 2);
	hex_into(tmp, data, I_MIN(size, PATTERN_MAX_SIZE / 2), TRUE);
	pattern_add(t_strconcat(name, " (HEX)", NULL), tmp,
		    I_MIN(size, PATTERN_MAX_SIZE / 2) * 2);
	if (size <= 48) {
		sodium_bin2base64((char *)tmp, PATTERN_MAX_SIZE * 2, data, size,
				  sodium_base64_VARIANT_ORIGINAL);
		/* without the padding, which other data may follow */
		pattern_add(t_strconcat(name, " (base64)", NULL), tmp,
			    (size / 3) * 4);
	}
	sodium_memzero(tmp, PATTERN_MAX_SIZE * 2);
}

static bool in_vault(uintptr_t addr)
{
	return addr >= (uintptr_t)vault && addr < (uintptr_t)vault + VAULT_SIZE;
}

struct mapping {
	uintptr_t start, end;
	char perms[5];
	bool anon;
	char line[160];
};

static void mapping_scan(int fd, const struct mapping *m,
			 unsigned int *found)
{
	unsigned char *buf = vault + VAULT_SIZE - SCAN_BUF_SIZE;
	const unsigned char *hit, *from;
	uintptr_t addr, pos;
	size_t n, overlap = PATTERN_MAX_SIZE;
	unsigned int i;
	ssize_t ret;

	for (addr = m->start; addr < m->end; addr += SCAN_BUF_SIZE - overlap) {
		n = I_MIN(m->end - addr, SCAN_BUF_SIZE);
		ret = pread(fd, buf, n, (off_t)addr);
		if (ret <= 0)
			break;
		for (i = 0; i < patterns_count; i++) {
			const struct pattern *p = &patterns[i];

			from = buf;
			while ((hit = memmem(from, buf + ret - from,
					     p->data, p->size)) != NULL) {
				from = hit + 1;
				pos = addr + (hit - buf);
				if (in_vault(pos))
					continue;
				i_warning("secret %s (%zu bytes) found at %p "
					  "in %s", p->name, p->size,
					  (void *)pos, m->line);
				(*found)++;
			}
		}
		if (addr + n >= m->end)
			break;
	}
}

/* Returns the number of patterns found outside the vault, and names
   each (pattern, address, mapping) with i_warning for the reader.
   Scanned: rw-p mappings that are the heap or anonymous (valgrind's own
   mappings are rwx; files' data segments and the stack are not heap),
   except those
   between two PROT_NONE guard pages: libsodium's guarded allocations,
   the one place a secret may stay while it is in use. */
static unsigned int memory_scan(void)
{
	ARRAY(struct mapping) maps;
	const struct mapping *m, *prev, *next;
	struct mapping *new_map;
	char line[512], path[256];
	unsigned int i, count, found = 0;
	FILE *f;
	int fd;

	t_array_init(&maps, 256);
	f = fopen("/proc/self/maps", "r");
	fd = open("/proc/self/mem", O_RDONLY);
	i_assert(f != NULL && fd != -1);
	while (fgets(line, sizeof(line), f) != NULL) {
		new_map = array_append_space(&maps);
		path[0] = '\0';
		if (sscanf(line, "%"SCNxPTR"-%"SCNxPTR" %4s %*s %*s %*s %255s",
			   &new_map->start, &new_map->end, new_map->perms,
			   path) < 3)
			i_fatal("unexpected /proc/self/maps line: %s", line);
		new_map->anon = path[0] == '\0';
		i_assert(strcmp(path, "[heap]") != 0 || !new_map->anon);
		if (strcmp(path, "[heap]") == 0)
			new_map->anon = TRUE;
		i_strocpy(new_map->line, line, sizeof(new_map->line));
	}
	fclose(f);
	m = array_get(&maps, &count);
	for (i = 0; i < count; i++) {
		if (strcmp(m[i].perms, "rw-p") != 0 || !m[i].anon)
			continue;
		/* the stack (valgrind's client stack is not named
		   [stack]): dead frames of libsodium's Argon2id and of the
		   test's own derivations, not heap */
		if ((uintptr_t)&found >= m[i].start &&
		    (uintptr_t)&found < m[i].end)
			continue;
		prev = i > 0 ? &m[i - 1] : NULL;
		next = i + 1 < count ? &m[i + 1] : NULL;
		if (prev != NULL && next != NULL &&
		    prev->end == m[i].start && next->start == m[i].end &&
		    strcmp(prev->perms, "---p") == 0 &&
		    strcmp(next->perms, "---p") == 0)
			continue;
		mapping_scan(fd, &m[i], &found);
	}
	sodium_memzero(vault + VAULT_SIZE - SCAN_BUF_SIZE, SCAN_BUF_SIZE);
	i_close_fd(&fd);
	return found;
}

static const char *write_file(const char *name, const void *data,
			      size_t size)
{
	const char *path = t_strconcat(tmpdir, "/", name, NULL);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	i_assert(fd != -1);
	if (write(fd, data, size) != (ssize_t)size)
		i_fatal("write(%s) failed: %m", path);
	i_close_fd(&fd);
	return path;
}

static void test_master_key_memory(void)
{
	unsigned char *master, *text, *key;
	const char *path, *error;
	size_t len;

	test_begin("secrets in memory: master key (file and value forms)");
	vault_reset();
	master = vault_alloc(POPVAULT_MASTER_KEY_SIZE);
	key = vault_alloc(POPVAULT_MASTER_KEY_SIZE);
	text = vault_alloc(128);
	randombytes_buf(master, POPVAULT_MASTER_KEY_SIZE);
	secret_add("master key", master, POPVAULT_MASTER_KEY_SIZE);

	T_BEGIN {
		/* a file with hex and a newline, read through "<path" */
		hex_into(text, master, POPVAULT_MASTER_KEY_SIZE, FALSE);
		text[64] = '\n';
		path = write_file("master.hex", text, 65);
		test_assert(popvault_master_key_read(
			t_strconcat("<", path, NULL), key, &error) == 0 &&
			memcmp(key, master, POPVAULT_MASTER_KEY_SIZE) == 0);
		/* the value as `<file` delivers it: the key and a newline */
		text[65] = '\0';
		sodium_memzero(key, POPVAULT_MASTER_KEY_SIZE);
		test_assert(popvault_master_key_read((const char *)text, key,
						     &error) == 0 &&
			memcmp(key, master, POPVAULT_MASTER_KEY_SIZE) == 0);
		/* base64 in a file, surrounded by whitespace */
		text[0] = ' ';
		sodium_bin2base64((char *)text + 1, 100, master,
				  POPVAULT_MASTER_KEY_SIZE,
				  sodium_base64_VARIANT_ORIGINAL);
		len = strlen((const char *)text);
		text[len] = '\n';
		path = write_file("master.b64", text, len + 1);
		sodium_memzero(key, POPVAULT_MASTER_KEY_SIZE);
		test_assert(popvault_master_key_read(path, key, &error) == 0 &&
			memcmp(key, master, POPVAULT_MASTER_KEY_SIZE) == 0);
		/* a damaged key (one digit short) fails without a copy */
		hex_into(text, master, POPVAULT_MASTER_KEY_SIZE, FALSE);
		text[63] = '\n';
		text[64] = '\0';
		test_assert(popvault_master_key_read((const char *)text, key,
						     &error) < 0);
		path = write_file("master.short", text, 64);
		test_assert(popvault_master_key_read(path, key, &error) < 0);
		sodium_memzero(text, 128);
	} T_END;
	test_assert(memory_scan() == 0);
	test_end();
}

static void test_recovery_key_memory(void)
{
	unsigned char *recovery, *key, *text;
	const char *formatted, *error;
	size_t len;

	test_begin("secrets in memory: recovery key text");
	vault_reset();
	recovery = vault_alloc(POPVAULT_RECOVERY_KEY_SIZE);
	key = vault_alloc(POPVAULT_RECOVERY_KEY_SIZE);
	text = vault_alloc(128);
	randombytes_buf(recovery, POPVAULT_RECOVERY_KEY_SIZE);
	secret_add("recovery key", recovery, POPVAULT_RECOVERY_KEY_SIZE);
	T_BEGIN {
		/* as doveadm shows it once: the caller wipes what it got */
		formatted = popvault_recovery_key_format(recovery);
		len = strlen(formatted);
		i_assert(len < 120);
		memcpy(text, formatted, len);
		safe_memset((void *)formatted, 0, len);
		/* as an admin types it back: surrounding whitespace */
		text[len] = '\n';
		text[len + 1] = '\0';
		test_assert(popvault_recovery_key_parse((const char *)text,
							key, &error) == 0 &&
			memcmp(key, recovery, POPVAULT_RECOVERY_KEY_SIZE) == 0);
		sodium_memzero(text, 128);
	} T_END;
	test_assert(memory_scan() == 0);
	test_end();
}

static void test_message_keys_memory(uint8_t cipher)
{
	static const char info_epoch[] = "popvault v1 epoch";
	static const char info_kek[] = "popvault v2 epoch kek";
	unsigned char pk[POPVAULT_PK_SIZE], nonce[24];
	unsigned char *sk, *shared, *ikm, *epoch, *kek, *dk;
	struct popvault_header hdr;
	struct popvault_sender *sender;
	struct popvault_receiver *receiver;
	unsigned long long dk_len;
	buffer_t *enc, *dec;
	const char *error;
	int ret;

	test_begin(t_strdup_printf("secrets in memory: message keys (%s)",
		cipher == POPVAULT_CIPHER_AES256GCM ? "aes-256-gcm" :
		"xchacha20-poly1305"));
	vault_reset();
	sk = vault_alloc(POPVAULT_SK_SIZE);
	shared = vault_alloc(crypto_scalarmult_BYTES);
	ikm = vault_alloc(crypto_scalarmult_BYTES + 2 * POPVAULT_PK_SIZE);
	epoch = vault_alloc(32);
	kek = vault_alloc(POPVAULT_DK_SIZE);
	dk = vault_alloc(POPVAULT_DK_SIZE);
	crypto_box_keypair(pk, sk);

	enc = buffer_create_dynamic(default_pool, 1024);
	dec = buffer_create_dynamic(default_pool, 1024);
	sender = popvault_sender_create(pk, cipher);
	test_assert(popvault_encrypt_buffer(sender, (const unsigned char *)
		"Subject: hello\r\n\r\nbody\r\n", 24, enc, &error) == 0);

	/* what the receiver derives, derived here into the vault
	   (docs/encryption.md, format v2) */
	test_assert(popvault_header_parse(enc->data, enc->used, &hdr,
					  &error) == 0);
	test_assert(crypto_scalarmult(shared, sk, hdr.eph_pk) == 0);
	memcpy(ikm, shared, crypto_scalarmult_BYTES);
	memcpy(ikm + crypto_scalarmult_BYTES, hdr.eph_pk, POPVAULT_PK_SIZE);
	memcpy(ikm + crypto_scalarmult_BYTES + POPVAULT_PK_SIZE, pk,
	       POPVAULT_PK_SIZE);
	popvault_hkdf_sha256(NULL, 0, ikm, crypto_scalarmult_BYTES +
			     2 * POPVAULT_PK_SIZE,
			     (const unsigned char *)info_epoch,
			     strlen(info_epoch), epoch, 32);
	popvault_hkdf_sha256(NULL, 0, epoch, 32,
			     (const unsigned char *)info_kek, strlen(info_kek),
			     kek, POPVAULT_DK_SIZE);
	memset(nonce, 0, sizeof(nonce));
	memcpy(nonce, hdr.salt, sizeof(hdr.salt));
	if (cipher == POPVAULT_CIPHER_XCHACHA20POLY1305) {
		ret = crypto_aead_xchacha20poly1305_ietf_decrypt(dk, &dk_len,
			NULL, hdr.wrapped_dk, sizeof(hdr.wrapped_dk), enc->data,
			POPVAULT_HEADER_WRAP_AAD_SIZE, nonce, kek);
	} else {
		ret = crypto_aead_aes256gcm_decrypt(dk, &dk_len, NULL,
			hdr.wrapped_dk, sizeof(hdr.wrapped_dk), enc->data,
			POPVAULT_HEADER_WRAP_AAD_SIZE, nonce, kek);
	}
	test_assert(ret == 0 && dk_len == POPVAULT_DK_SIZE);
	/* what a delivery process and a reading session keep while they
	   live: only in guarded pages. Not checked here: AES-GCM data keys,
	   whose schedules stay in the receiver's spare OpenSSL contexts
	   until the session ends (docs/encryption.md "Memory"). */
	secret_add("private key", sk, POPVAULT_SK_SIZE);
	secret_add("epoch secret", epoch, 32);
	secret_add("epoch KEK", kek, POPVAULT_DK_SIZE);
	if (cipher == POPVAULT_CIPHER_XCHACHA20POLY1305)
		secret_add("data key", dk, POPVAULT_DK_SIZE);
	receiver = popvault_receiver_create();
	test_assert(popvault_receiver_add_key(receiver, sk) == 0);
	test_assert(popvault_decrypt_buffer(receiver, enc->data, enc->used,
					    dec, &error) == 0 &&
		    dec->used == 24);
	test_assert(memory_scan() == 0);

	/* after both: nothing at all */
	secret_add("X25519 shared secret", shared, crypto_scalarmult_BYTES);
	if (cipher != POPVAULT_CIPHER_XCHACHA20POLY1305)
		secret_add("data key", dk, POPVAULT_DK_SIZE);
	popvault_sender_free(&sender);
	popvault_receiver_free(&receiver);
	buffer_free(&enc);
	buffer_free(&dec);
	test_assert(memory_scan() == 0);
	test_end();
}

static void test_message_keys_memory_gcm(void)
{
	test_message_keys_memory(POPVAULT_CIPHER_AES256GCM);
}

static void test_message_keys_memory_xchacha(void)
{
	test_message_keys_memory(POPVAULT_CIPHER_XCHACHA20POLY1305);
}

/* The value of a "<name> <hex>" field of the key file's line that
   starts with prefix, decoded into out (in the vault). */
static void keyfile_field(const char *text, const char *prefix,
			  unsigned int field, unsigned char *out, size_t size)
{
	const char *line = strstr(text, prefix), *const *f;
	const char *end;
	size_t len;

	i_assert(line != NULL);
	f = t_strsplit(t_strcut(line, '\n'), " ");
	i_assert(str_array_length(f) > field);
	if (sodium_hex2bin(out, size, f[field], strlen(f[field]), NULL, &len,
			   &end) != 0 || len != size)
		i_unreached();
}

static void test_keystore_memory(void)
{
	static const char info[] = "popvault v1 master-wrap";
	const char *keys = t_strconcat(tmpdir, "/home/.popvault/keys", NULL);
	struct popvault_key_secrets both, pw_only;
	struct popvault_receiver *receiver;
	unsigned char pk[POPVAULT_PK_SIZE], rpk[POPVAULT_PK_SIZE];
	unsigned char salt[crypto_pwhash_SALTBYTES], wrap_salt[16];
	unsigned char *master, *recovery, *sk, *pw_kek, *master_kek;
	unsigned char sealed[POPVAULT_SK_SIZE + crypto_box_SEALBYTES];
	unsigned char *info_buf;
	char *password, id[17], buf[2048];
	const char *recovery_id, *error, *line;
	unsigned long long ops, mem_kib;
	unsigned int count;
	size_t info_len;
	ssize_t ret;
	int fd;

	test_begin("secrets in memory: key store (master, password, recovery)");
	vault_reset();
	master = vault_alloc(POPVAULT_MASTER_KEY_SIZE);
	recovery = vault_alloc(POPVAULT_RECOVERY_KEY_SIZE);
	sk = vault_alloc(POPVAULT_SK_SIZE);
	pw_kek = vault_alloc(32);
	master_kek = vault_alloc(32);
	password = vault_alloc(32);
	info_buf = vault_alloc(128);
	randombytes_buf(master, POPVAULT_MASTER_KEY_SIZE);
	/* a password of 24 random letters and digits */
	for (count = 0; count < 24; count++)
		password[count] = "abcdefghijkmnpqrstuvwxyz23456789"
			[randombytes_uniform(32)];

	i_zero(&both);
	both.master = master;
	both.password = password;
	i_zero(&pw_only);
	pw_only.password = password;
	T_BEGIN {
		test_assert(popvault_keystore_create(keys, "u", &both, pk,
						     &error) == 1);
		test_assert(popvault_keystore_set_recovery(keys, "u", &both,
			recovery, &recovery_id, &error) == 0);
		/* a session unlocks with the password, then the master key */
		receiver = popvault_receiver_create();
		test_assert(popvault_keystore_load_receiver(keys, "u",
			&pw_only, receiver, &count, &error) == 0 &&
			count == 1);
		popvault_receiver_free(&receiver);
		pw_only.password = NULL;
		pw_only.master = master;
		receiver = popvault_receiver_create();
		test_assert(popvault_keystore_load_receiver(keys, "u",
			&pw_only, receiver, &count, &error) == 0 &&
			count == 1);
		popvault_receiver_free(&receiver);
	} T_END;

	/* what the key file's wraps hide, opened here into the vault */
	T_BEGIN {
		fd = open(t_strconcat(keys, "/current", NULL), O_RDONLY);
		i_assert(fd != -1 && read(fd, id, 16) == 16);
		id[16] = '\0';
		i_close_fd(&fd);
		fd = open(t_strconcat(keys, "/", id, ".key", NULL), O_RDONLY);
		i_assert(fd != -1);
		ret = read(fd, buf, sizeof(buf) - 1);
		i_assert(ret > 0);
		buf[ret] = '\0';
		i_close_fd(&fd);

		keyfile_field(buf, "private recovery-v1 ", 3, sealed,
			      sizeof(sealed));
		i_assert(crypto_scalarmult_base(rpk, recovery) == 0);
		i_assert(crypto_box_seal_open(sk, sealed, sizeof(sealed), rpk,
					      recovery) == 0);
		line = strstr(buf, "private password-v1 ");
		i_assert(line != NULL && sscanf(line,
			"private password-v1 argon2id13 %llu %llu",
			&ops, &mem_kib) == 2);
		keyfile_field(buf, "private password-v1 ", 5, salt,
			      sizeof(salt));
		i_assert(crypto_pwhash(pw_kek, 32, password, strlen(password),
				       salt, ops, mem_kib * 1024,
				       crypto_pwhash_ALG_ARGON2ID13) == 0);
		keyfile_field(buf, "private master-v1 ", 2, wrap_salt,
			      sizeof(wrap_salt));
		/* info: "popvault v1 master-wrap" NUL user NUL key id */
		info_len = strlen(info) + 1;
		memcpy(info_buf, info, info_len);
		memcpy(info_buf + info_len, "u", 2);
		info_len += 2;
		memcpy(info_buf + info_len, id, 16);
		info_len += 16;
		popvault_hkdf_sha256(wrap_salt, sizeof(wrap_salt), master,
				     POPVAULT_MASTER_KEY_SIZE, info_buf,
				     info_len, master_kek, 32);
	} T_END;
	test_assert(crypto_scalarmult_base(rpk, sk) == 0 &&
		    memcmp(rpk, pk, sizeof(pk)) == 0);
	secret_add("master key", master, POPVAULT_MASTER_KEY_SIZE);
	pattern_add("password", (const unsigned char *)password,
		    strlen(password));
	secret_add("recovery key", recovery, POPVAULT_RECOVERY_KEY_SIZE);
	secret_add("private key", sk, POPVAULT_SK_SIZE);
	secret_add("password KEK", pw_kek, 32);
	secret_add("master-wrap KEK", master_kek, 32);
	test_assert(memory_scan() == 0);
	test_end();
}

static void test_cleanup(void)
{
	const char *error;

	if (unlink_directory(tmpdir, UNLINK_DIRECTORY_FLAG_RMDIR, &error) < 0)
		i_error("%s", error);
}

int main(void)
{
	void (*test_functions[7])(void);
	unsigned int n = 0;
	int ret;

	if (mkdtemp(tmpdir) == NULL)
		i_fatal("mkdtemp() failed: %m");
	if (popvault_crypto_init() < 0)
		i_fatal("popvault_crypto_init() failed");
	/* the real Argon2id cost (64 MiB) would take minutes under valgrind */
	popvault_pwhash_params.opslimit = 1;
	popvault_pwhash_params.memlimit = 8192;
	vault = sodium_malloc(VAULT_SIZE);
	i_assert(vault != NULL);
	test_functions[n++] = test_master_key_memory;
	test_functions[n++] = test_recovery_key_memory;
	test_functions[n++] = test_keystore_memory;
	/* the test's own unwrap needs libsodium's AES-GCM (AES-NI) */
	if (crypto_aead_aes256gcm_is_available() != 0)
		test_functions[n++] = test_message_keys_memory_gcm;
	test_functions[n++] = test_message_keys_memory_xchacha;
	test_functions[n++] = test_cleanup;
	test_functions[n] = NULL;
	ret = test_run(test_functions);
	vault_reset();
	sodium_free(vault);
	popvault_crypto_deinit();
	return ret;
}
