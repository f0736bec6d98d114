/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "buffer.h"
#include "hex-binary.h"
#include "safe-memset.h"
#include "mkdir-parents.h"
#include "write-full.h"
#include "file-lock.h"
#include "popvault-crypt-keys.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>
#include <sodium.h>
#include "popvault-compat-macros.h"

#define KEYFILE_MAGIC "popvault-keypair 1"
#define KEYFILE_SUFFIX ".key"
/* a key file re-wrapped by key password, waiting to replace <id>.key */
#define PENDING_SUFFIX ".pending"
#define KEY_ID_HEX_LEN (POPVAULT_KEY_ID_SIZE * 2)
#define CURRENT_NAME "current"
#define RECOVERY_NAME "recovery"
/* serialises the writers of a key store (see keystore_lock()) */
#define LOCK_NAME ".lock"
#define KEYSTORE_LOCK_TIMEOUT_SECS 30
#define RECOVERY_MAGIC "popvault-recovery 1"
#define RECOVERY_TEXT_PREFIX "pvrk1-"
#define WRAP_KIND_MASTER "master-v1"
#define WRAP_KIND_PASSWORD "password-v1"
#define WRAP_KIND_RECOVERY "recovery-v1"
#define PWHASH_ALG_NAME "argon2id13"
#define WRAP_INFO "popvault v1 master-wrap"
#define MAC_NAME "public-mac"
#define MAC_KIND_MASTER "master-v1"
#define MAC_INFO "popvault v1 public-key mac"
#define MAC_SIZE crypto_auth_hmacsha256_BYTES
#define WRAP_SALT_SIZE 16
#define PW_SALT_SIZE crypto_pwhash_SALTBYTES
#define WRAP_NONCE_SIZE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define WRAP_KEY_SIZE crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define WRAP_CT_SIZE (POPVAULT_SK_SIZE + \
		      crypto_aead_xchacha20poly1305_ietf_ABYTES)
#define SEALED_SIZE (POPVAULT_SK_SIZE + crypto_box_SEALBYTES)
/* a key pair is sealed to the current recovery key, and for a moment
   while it is replaced, to the previous one too */
#define RECOVERY_WRAPS_MAX 4
/* key files and the master key file are tiny; refuse anything large */
#define SMALL_FILE_MAX 65536
/* a master key file: 64 hex digits or 44 base64 characters, and
   whitespace */
#define MASTER_KEY_FILE_MAX 1024

/* RFC 9106's second recommended Argon2id setting (t=3, 64 MiB), single
   lane as libsodium computes it: 106 ms on the 2-core CI machine
   (docs/encryption.md), well inside Dovecot's default 256 MiB
   vsz_limit. The cost is paid once per POP3 login or IMAP session that
   reads encrypted mail, never on delivery. */
struct popvault_pwhash_params popvault_pwhash_params = {
	.opslimit = 3,
	.memlimit = 64 * 1024 * 1024,
};

struct password_wrap {
	unsigned long long opslimit;
	size_t memlimit;
	unsigned char salt[PW_SALT_SIZE];
	unsigned char nonce[WRAP_NONCE_SIZE];
	unsigned char ct[WRAP_CT_SIZE];
};

struct recovery_wrap {
	unsigned char id[POPVAULT_KEY_ID_SIZE];
	unsigned char sealed[SEALED_SIZE];
};

struct keyfile {
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE];
	time_t created;

	/* the master key vouches for pk (keyfile_public_mac()) */
	bool have_mac;
	unsigned char mac[MAC_SIZE];

	bool have_master_wrap;
	unsigned char salt[WRAP_SALT_SIZE];
	unsigned char nonce[WRAP_NONCE_SIZE];
	unsigned char ct[WRAP_CT_SIZE];

	bool have_password_wrap;
	struct password_wrap pw;

	unsigned int recovery_count;
	struct recovery_wrap recovery[RECOVERY_WRAPS_MAX];

	/* lines of kinds this version does not know, kept on rewrite */
	const char *other_lines;
};

/* Argon2id is the slow part of unlocking: every key file wrapped with
   the same salt and cost (set_password uses one salt for all) shares
   one derivation per call. */
struct pw_kek_cache {
	bool valid;
	const char *password;
	unsigned long long opslimit;
	size_t memlimit;
	unsigned char salt[PW_SALT_SIZE];
	unsigned char kek[WRAP_KEY_SIZE];
};

struct recovery_pub {
	unsigned char id[POPVAULT_KEY_ID_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE];
};

static int read_small_file(const char *path, string_t *str,
			   const char **error_r)
{
	unsigned char buf[4096];
	/* wiped as far as a read reached: a key file is a few hundred
	   bytes, and wiping all 4 KiB was 4 k instructions per read */
	size_t touched = 0;
	ssize_t ret;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return errno == ENOENT ? 0 : -1;
	}
	while ((ret = read(fd, buf, sizeof(buf))) > 0) {
		touched = I_MAX(touched, (size_t)ret);
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
	sodium_memzero(buf, touched);
	i_close_fd(&fd);
	return 1;
}

/* Decodes exactly size bytes from 2*size hex digits straight into out
   (libsodium's decoder, constant-time): no buffer of the data stack ever
   holds a secret's bytes. */
static int hex_decode(const char *hex, size_t len, unsigned char *out,
		      size_t size)
{
	const char *end;
	size_t out_len;

	if (len != size * 2 ||
	    sodium_hex2bin(out, size, hex, len, NULL, &out_len, &end) != 0 ||
	    out_len != size || end != hex + len) {
		sodium_memzero(out, size);
		return -1;
	}
	return 0;
}

int popvault_master_key_parse(const char *text, size_t len,
			      unsigned char key_r[POPVAULT_MASTER_KEY_SIZE])
{
	const char *end;
	size_t key_len;

	/* surrounding whitespace: `<file` delivers the file's newline */
	while (len > 0 && i_isspace(text[0])) {
		text++;
		len--;
	}
	while (len > 0 && i_isspace(text[len - 1]))
		len--;
	if (hex_decode(text, len, key_r, POPVAULT_MASTER_KEY_SIZE) == 0)
		return 0;
	if (sodium_base642bin(key_r, POPVAULT_MASTER_KEY_SIZE, text, len,
			      NULL, &key_len, &end,
			      sodium_base64_VARIANT_ORIGINAL) == 0 &&
	    end == text + len && key_len == POPVAULT_MASTER_KEY_SIZE)
		return 0;
	sodium_memzero(key_r, POPVAULT_MASTER_KEY_SIZE);
	return -1;
}

/* A value that is not a key may still be a damaged one (a `<file` of a
   key with a wrong length, a truncated base64): it is named in a log
   line only when it has the shape of an absolute path that no key text
   has, with a character outside the hex and base64 alphabets ('.', '-',
   '_': popvault.key) or below an existing directory. */
static bool master_key_path_loggable(const char *path)
{
	char dir[PATH_MAX];
	const char *p, *slash = NULL;
	bool key_chars_only = TRUE, ret;
	struct stat st;

	if (path[0] != '/')
		return FALSE;
	for (p = path; *p != '\0'; p++) {
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return FALSE;
		if (*p == '/')
			slash = p;
		else if (!i_isalnum(*p) && *p != '+' && *p != '=')
			key_chars_only = FALSE;
	}
	if (!key_chars_only)
		return TRUE;
	if (slash == path || (size_t)(slash - path) >= sizeof(dir))
		return FALSE;
	memcpy(dir, path, slash - path);
	dir[slash - path] = '\0';
	ret = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
	safe_memset(dir, 0, sizeof(dir));
	return ret;
}

/* Reads the key file into a stack buffer that is wiped afterwards.
   Errors name the file only when master_key_path_loggable(). */
static int master_key_file_read(const char *path,
				unsigned char key_r[POPVAULT_MASTER_KEY_SIZE],
				const char **error_r)
{
	char buf[MASTER_KEY_FILE_MAX + 1];
	const char *name, *why = NULL;
	size_t len = 0;
	ssize_t ret;
	int fd;

	name = master_key_path_loggable(path) ? path : NULL;
	fd = open(path, O_RDONLY);
	if (fd == -1) {
		why = t_strdup_printf("open(%s) failed: %m",
			name != NULL ? name : "<not logged>");
	} else {
		while (len < sizeof(buf) &&
		       (ret = read(fd, buf + len, sizeof(buf) - len)) != 0) {
			if (ret < 0) {
				why = t_strdup_printf("read(%s) failed: %m",
					name != NULL ? name : "<not logged>");
				break;
			}
			len += ret;
		}
		i_close_fd(&fd);
		if (why != NULL)
			;
		else if (len == sizeof(buf))
			why = t_strdup_printf("%s: file too large for a key",
					      name != NULL ? name : "file");
		else if (popvault_master_key_parse(buf, len, key_r) < 0) {
			why = t_strdup_printf("%s: not 32 bytes as 64 hex "
				"digits or base64 (e.g. openssl rand -hex 32)",
				name != NULL ? name : "file");
		}
		safe_memset(buf, 0, sizeof(buf));
	}
	if (why == NULL)
		return 0;
	if (name == NULL) {
		/* ENOENT of a value that is no path at all is the usual
		   case: a damaged key given as the value (`<file`) */
		why = t_strdup_printf("neither a key (64 hex digits or "
			"base64 of 32 bytes) nor a readable key file "
			"(the value is not logged: it may be a damaged "
			"key): %s", why);
	}
	*error_r = t_strconcat("popvault_master_key: ", why, NULL);
	return -1;
}

int popvault_master_key_read(const char *setting,
			     unsigned char key_r[POPVAULT_MASTER_KEY_SIZE],
			     const char **error_r)
{
	/* "<path" as written in a userdb (Dovecot's config parser reads
	   the file itself in plugin {}: then the value is the key) */
	if (setting[0] == '<')
		setting++;
	else if (popvault_master_key_parse(setting, strlen(setting),
					   key_r) == 0)
		return 0;
	if (setting[0] == '\0') {
		*error_r = "popvault_master_key: empty path";
		return -1;
	}
	return master_key_file_read(setting, key_r, error_r);
}


/* ---- wrapping ---- */

/* KEK = HKDF-SHA256(salt, master, "popvault v1 master-wrap" 0 user 0
   key_id_hex) */
static void wrap_kek(const unsigned char master[POPVAULT_MASTER_KEY_SIZE],
		     const unsigned char salt[WRAP_SALT_SIZE],
		     const char *username,
		     const unsigned char key_id[POPVAULT_KEY_ID_SIZE],
		     unsigned char kek_r[WRAP_KEY_SIZE])
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
			     WRAP_KEY_SIZE);
}

/* AAD binds the wrap to the file format, the user and the public key. */
static buffer_t *wrap_aad(const char *username, const struct keyfile *kf)
{
	buffer_t *aad = t_buffer_create(128);

	buffer_append(aad, KEYFILE_MAGIC, strlen(KEYFILE_MAGIC) + 1);
	buffer_append(aad, username, strlen(username) + 1);
	buffer_append(aad, kf->key_id, POPVAULT_KEY_ID_SIZE);
	buffer_append(aad, kf->pk, POPVAULT_PK_SIZE);
	return aad;
}

/* ... and a password wrap also to its kind and cost: lowering the cost
   in the file makes it fail instead of easing a guess. */
static buffer_t *password_aad(const char *username, const struct keyfile *kf)
{
	buffer_t *aad = wrap_aad(username, kf);
	const char *params = t_strdup_printf(WRAP_KIND_PASSWORD " "
		PWHASH_ALG_NAME " %llu %zu", kf->pw.opslimit,
		kf->pw.memlimit / 1024);

	buffer_append(aad, params, strlen(params) + 1);
	return aad;
}

static void pw_kek_cache_clear(struct pw_kek_cache *cache)
{
	sodium_memzero(cache, sizeof(*cache));
}

static int
pw_kek_get(struct pw_kek_cache *cache, const char *password,
	   unsigned long long opslimit, size_t memlimit,
	   const unsigned char salt[PW_SALT_SIZE], const char **error_r)
{
	if (cache->valid && strcmp(cache->password, password) == 0 &&
	    cache->opslimit == opslimit && cache->memlimit == memlimit &&
	    memcmp(cache->salt, salt, PW_SALT_SIZE) == 0)
		return 0;
	pw_kek_cache_clear(cache);
	/* the cost comes from a file: a huge one must not exhaust memory */
	if (opslimit < crypto_pwhash_OPSLIMIT_MIN || opslimit > 64 ||
	    memlimit < crypto_pwhash_MEMLIMIT_MIN ||
	    memlimit > 1024 * 1024 * 1024) {
		*error_r = "unsupported Argon2id cost";
		return -1;
	}
	if (crypto_pwhash(cache->kek, sizeof(cache->kek), password,
			  strlen(password), salt, opslimit, memlimit,
			  crypto_pwhash_ALG_ARGON2ID13) != 0) {
		*error_r = t_strdup_printf("Argon2id with %zu MiB failed "
			"(out of memory: vsz_limit?)", memlimit >> 20);
		return -1;
	}
	cache->valid = TRUE;
	cache->password = password;
	cache->opslimit = opslimit;
	cache->memlimit = memlimit;
	memcpy(cache->salt, salt, PW_SALT_SIZE);
	return 0;
}

/* HMAC-SHA256 over the file format, the user and the public key with a
   key only the master key derives: delivery checks it before it
   encrypts to the public key, without unwrapping the private key. */
static void keyfile_public_mac(const struct keyfile *kf, const char *username,
			       const unsigned char *master,
			       unsigned char mac_r[MAC_SIZE])
{
	unsigned char key[crypto_auth_hmacsha256_KEYBYTES];
	buffer_t *msg = wrap_aad(username, kf);
	string_t *info = t_str_new(64);

	str_append(info, MAC_INFO);
	str_append_c(info, '\0');
	str_append(info, username);
	popvault_hkdf_sha256(NULL, 0, master, POPVAULT_MASTER_KEY_SIZE,
			     str_data(info), str_len(info), key, sizeof(key));
	crypto_auth_hmacsha256(mac_r, msg->data, msg->used, key);
	sodium_memzero(key, sizeof(key));
}

/* A master wrap comes with the MAC: whoever has the master key vouches
   for the public key. */
static void keyfile_wrap_master(struct keyfile *kf, const char *username,
				const unsigned char *master,
				const unsigned char sk[POPVAULT_SK_SIZE])
{
	unsigned char kek[WRAP_KEY_SIZE];
	buffer_t *aad = wrap_aad(username, kf);

	keyfile_public_mac(kf, username, master, kf->mac);
	kf->have_mac = TRUE;

	randombytes_buf(kf->salt, sizeof(kf->salt));
	randombytes_buf(kf->nonce, sizeof(kf->nonce));
	wrap_kek(master, kf->salt, username, kf->key_id, kek);
	crypto_aead_xchacha20poly1305_ietf_encrypt(kf->ct, NULL, sk,
		POPVAULT_SK_SIZE, aad->data, aad->used, NULL, kf->nonce, kek);
	sodium_memzero(kek, sizeof(kek));
	kf->have_master_wrap = TRUE;
}

/* Wraps with the cache's salt and cost when it holds this password, so
   every key of a user shares one Argon2id at unlock. */
static int keyfile_wrap_password(struct keyfile *kf, const char *username,
				 const char *password,
				 struct pw_kek_cache *cache,
				 const unsigned char sk[POPVAULT_SK_SIZE],
				 const char **error_r)
{
	unsigned char salt[PW_SALT_SIZE];
	buffer_t *aad;

	if (password[0] == '\0') {
		*error_r = "refusing to lock a key pair with an empty password";
		return -1;
	}
	if (!cache->valid || strcmp(cache->password, password) != 0) {
		randombytes_buf(salt, sizeof(salt));
		if (pw_kek_get(cache, password,
			       popvault_pwhash_params.opslimit,
			       popvault_pwhash_params.memlimit, salt,
			       error_r) < 0)
			return -1;
	}
	kf->pw.opslimit = cache->opslimit;
	kf->pw.memlimit = cache->memlimit;
	memcpy(kf->pw.salt, cache->salt, PW_SALT_SIZE);
	randombytes_buf(kf->pw.nonce, sizeof(kf->pw.nonce));
	aad = password_aad(username, kf);
	crypto_aead_xchacha20poly1305_ietf_encrypt(kf->pw.ct, NULL, sk,
		POPVAULT_SK_SIZE, aad->data, aad->used, NULL, kf->pw.nonce,
		cache->kek);
	kf->have_password_wrap = TRUE;
	return 0;
}

static void keyfile_seal_recovery(struct keyfile *kf,
				  const struct recovery_pub *rp,
				  const unsigned char sk[POPVAULT_SK_SIZE])
{
	struct recovery_wrap *wrap = NULL;
	unsigned int i;

	for (i = 0; i < kf->recovery_count; i++) {
		if (memcmp(kf->recovery[i].id, rp->id, sizeof(rp->id)) == 0)
			wrap = &kf->recovery[i];
	}
	if (wrap == NULL) {
		if (kf->recovery_count == RECOVERY_WRAPS_MAX) {
			/* the oldest gives way */
			memmove(kf->recovery, kf->recovery + 1,
				sizeof(kf->recovery[0]) *
				(RECOVERY_WRAPS_MAX - 1));
			kf->recovery_count--;
		}
		wrap = &kf->recovery[kf->recovery_count++];
	}
	memcpy(wrap->id, rp->id, sizeof(wrap->id));
	/* the sealed key carries no AAD: after opening, the key must
	   match this file's public key (keyfile_unwrap_sk) */
	crypto_box_seal(wrap->sealed, sk, POPVAULT_SK_SIZE, rp->pk);
}

static bool keyfile_open_master(const struct keyfile *kf, const char *username,
				const unsigned char *master,
				unsigned char sk_r[POPVAULT_SK_SIZE])
{
	unsigned char kek[WRAP_KEY_SIZE];
	buffer_t *aad = wrap_aad(username, kf);
	int ret;

	wrap_kek(master, kf->salt, username, kf->key_id, kek);
	ret = crypto_aead_xchacha20poly1305_ietf_decrypt(sk_r, NULL, NULL,
		kf->ct, sizeof(kf->ct), aad->data, aad->used, kf->nonce, kek);
	sodium_memzero(kek, sizeof(kek));
	return ret == 0;
}

/* 1 = opened, 0 = not sealed to this recovery key or seal broken */
static bool keyfile_open_recovery(const struct keyfile *kf,
				  const unsigned char *recovery,
				  unsigned char sk_r[POPVAULT_SK_SIZE])
{
	unsigned char rpk[POPVAULT_PK_SIZE], rid[POPVAULT_KEY_ID_SIZE];
	unsigned int i;

	if (crypto_scalarmult_base(rpk, recovery) != 0)
		return FALSE;
	popvault_key_id(rpk, rid);
	for (i = 0; i < kf->recovery_count; i++) {
		if (memcmp(kf->recovery[i].id, rid, sizeof(rid)) == 0) {
			return crypto_box_seal_open(sk_r,
				kf->recovery[i].sealed, SEALED_SIZE, rpk,
				recovery) == 0;
		}
	}
	return FALSE;
}

/* Unwraps kf's private key with the first secret that opens it: master,
   recovery, then password (Argon2id, the slow one). */
static int keyfile_unwrap_sk(const struct keyfile *kf, const char *path,
			     const char *username,
			     const struct popvault_key_secrets *secrets,
			     struct pw_kek_cache *cache,
			     unsigned char sk_r[POPVAULT_SK_SIZE],
			     const char **error_r)
{
	unsigned char check_pk[POPVAULT_PK_SIZE];
	ARRAY_TYPE(const_string) why;
	const char *reason, *error;
	buffer_t *aad;

	t_array_init(&why, 4);
	if (secrets->master != NULL) {
		if (!kf->have_master_wrap)
			reason = "it has no master-key wrap";
		else if (keyfile_open_master(kf, username, secrets->master,
					     sk_r))
			goto opened;
		else
			reason = "the master key does not unwrap it (wrong "
				"master key, another user's file, or damaged)";
		array_push_back(&why, &reason);
	}
	if (secrets->recovery != NULL) {
		if (keyfile_open_recovery(kf, secrets->recovery, sk_r))
			goto opened;
		reason = "it is not sealed to this recovery key";
		array_push_back(&why, &reason);
	}
	if (secrets->password != NULL) {
		if (!kf->have_password_wrap)
			reason = "it is not password-locked";
		else if (pw_kek_get(cache, secrets->password,
				    kf->pw.opslimit, kf->pw.memlimit,
				    kf->pw.salt, &error) < 0)
			reason = error;
		else {
			aad = password_aad(username, kf);
			if (crypto_aead_xchacha20poly1305_ietf_decrypt(sk_r,
				NULL, NULL, kf->pw.ct, sizeof(kf->pw.ct),
				aad->data, aad->used, kf->pw.nonce,
				cache->kek) == 0)
				goto opened;
			reason = "the password does not unlock it (a wrong "
				"password, or the password was changed in the "
				"passdb without doveadm popvault key "
				"password)";
		}
		array_push_back(&why, &reason);
	}
	if (array_count(&why) == 0) {
		reason = "no master key (popvault_master_key), password "
			"(popvault_key_password) or recovery key given";
		array_push_back(&why, &reason);
	}
	array_append_zero(&why);
	*error_r = t_strdup_printf("%s: can't unwrap the private key: %s",
		path, t_strarray_join(array_front(&why), "; "));
	return -1;
opened:
	if (crypto_scalarmult_base(check_pk, sk_r) != 0 ||
	    memcmp(check_pk, kf->pk, sizeof(check_pk)) != 0) {
		sodium_memzero(sk_r, POPVAULT_SK_SIZE);
		*error_r = t_strdup_printf("%s: the private key does not "
					   "match the public key", path);
		return -1;
	}
	return 0;
}

/* ---- key files ---- */

static int hex_field(const char *hex, unsigned char *out, size_t size)
{
	return hex_decode(hex, strlen(hex), out, size);
}

static int keyfile_parse_private(struct keyfile *kf,
				 const char *const *f, bool *known_r)
{
	unsigned int count = str_array_length(f);
	uintmax_t mem_kib;

	*known_r = TRUE;
	if (strcmp(f[1], WRAP_KIND_MASTER) == 0) {
		if (count != 5 || kf->have_master_wrap ||
		    hex_field(f[2], kf->salt, WRAP_SALT_SIZE) < 0 ||
		    hex_field(f[3], kf->nonce, WRAP_NONCE_SIZE) < 0 ||
		    hex_field(f[4], kf->ct, WRAP_CT_SIZE) < 0)
			return -1;
		kf->have_master_wrap = TRUE;
	} else if (strcmp(f[1], WRAP_KIND_PASSWORD) == 0) {
		if (count != 8 || kf->have_password_wrap ||
		    strcmp(f[2], PWHASH_ALG_NAME) != 0 ||
		    str_to_ullong(f[3], &kf->pw.opslimit) < 0 ||
		    str_to_uintmax(f[4], &mem_kib) < 0 ||
		    mem_kib > SIZE_MAX / 1024 ||
		    hex_field(f[5], kf->pw.salt, PW_SALT_SIZE) < 0 ||
		    hex_field(f[6], kf->pw.nonce, WRAP_NONCE_SIZE) < 0 ||
		    hex_field(f[7], kf->pw.ct, WRAP_CT_SIZE) < 0)
			return -1;
		kf->pw.memlimit = mem_kib * 1024;
		kf->have_password_wrap = TRUE;
	} else if (strcmp(f[1], WRAP_KIND_RECOVERY) == 0) {
		struct recovery_wrap *wrap;

		if (count != 4 || kf->recovery_count == RECOVERY_WRAPS_MAX)
			return -1;
		wrap = &kf->recovery[kf->recovery_count];
		if (hex_field(f[2], wrap->id, POPVAULT_KEY_ID_SIZE) < 0 ||
		    hex_field(f[3], wrap->sealed, SEALED_SIZE) < 0)
			return -1;
		kf->recovery_count++;
	} else {
		*known_r = FALSE;
	}
	return 0;
}

static int keyfile_parse(const char *path, const char *text,
			 struct keyfile *kf_r, const char **error_r)
{
	const char *const *lines = t_strsplit(text, "\n");
	unsigned char check_id[POPVAULT_KEY_ID_SIZE];
	string_t *other = t_str_new(64);
	bool have_id = FALSE, have_pk = FALSE, known;
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
		} else if (strcmp(f[0], "created") == 0 && f[1] != NULL) {
			if (str_to_time(f[1], &kf_r->created) < 0)
				break;
		} else if (strcmp(f[0], MAC_NAME) == 0 && f[1] != NULL &&
			   strcmp(f[1], MAC_KIND_MASTER) == 0) {
			if (kf_r->have_mac || str_array_length(f) != 3 ||
			    hex_field(f[2], kf_r->mac, MAC_SIZE) < 0)
				break;
			kf_r->have_mac = TRUE;
		} else if (strcmp(f[0], "private") == 0 && f[1] != NULL) {
			if (keyfile_parse_private(kf_r, f, &known) < 0)
				break;
			if (!known)
				str_printfa(other, "%s\n", lines[i]);
		} else {
			/* written by a later version: kept on rewrite */
			str_printfa(other, "%s\n", lines[i]);
		}
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
	kf_r->other_lines = str_c(other);
	return 0;
}

static string_t *keyfile_format(const struct keyfile *kf)
{
	string_t *str = t_str_new(1024);
	unsigned int i;

	str_printfa(str, KEYFILE_MAGIC"\nkey_id %s\ncreated %ld\npublic %s\n",
		    binary_to_hex(kf->key_id, sizeof(kf->key_id)),
		    (long)kf->created, binary_to_hex(kf->pk, sizeof(kf->pk)));
	if (kf->have_mac) {
		str_printfa(str, MAC_NAME" "MAC_KIND_MASTER" %s\n",
			    binary_to_hex(kf->mac, sizeof(kf->mac)));
	}
	if (kf->have_master_wrap) {
		str_printfa(str, "private "WRAP_KIND_MASTER" %s %s %s\n",
			    binary_to_hex(kf->salt, sizeof(kf->salt)),
			    binary_to_hex(kf->nonce, sizeof(kf->nonce)),
			    binary_to_hex(kf->ct, sizeof(kf->ct)));
	}
	if (kf->have_password_wrap) {
		str_printfa(str, "private "WRAP_KIND_PASSWORD" "
			    PWHASH_ALG_NAME" %llu %zu %s %s %s\n",
			    kf->pw.opslimit, kf->pw.memlimit / 1024,
			    binary_to_hex(kf->pw.salt, sizeof(kf->pw.salt)),
			    binary_to_hex(kf->pw.nonce, sizeof(kf->pw.nonce)),
			    binary_to_hex(kf->pw.ct, sizeof(kf->pw.ct)));
	}
	for (i = 0; i < kf->recovery_count; i++) {
		str_printfa(str, "private "WRAP_KIND_RECOVERY" %s %s\n",
			    binary_to_hex(kf->recovery[i].id,
					  POPVAULT_KEY_ID_SIZE),
			    binary_to_hex(kf->recovery[i].sealed,
					  SEALED_SIZE));
	}
	str_append(str, kf->other_lines == NULL ? "" : kf->other_lines);
	return str;
}

static const char *keyfile_path(const char *keys_dir, const char *id_hex)
{
	return t_strconcat(keys_dir, "/", id_hex, KEYFILE_SUFFIX, NULL);
}

static int keyfile_read_text(const char *path, string_t *str,
			     const char **error_r)
{
	int ret;

	if ((ret = read_small_file(path, str, error_r)) <= 0) {
		if (ret == 0)
			*error_r = t_strdup_printf("%s is missing", path);
		return -1;
	}
	return 0;
}

static int keyfile_read(const char *keys_dir, const char *key_id_hex,
			struct keyfile *kf_r, const char **error_r)
{
	const char *path = keyfile_path(keys_dir, key_id_hex);
	string_t *str = t_str_new(1024);

	if (keyfile_read_text(path, str, error_r) < 0)
		return -1;
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

/* Writes data to a fresh 0600 temporary file in dir and, if durable,
   fsyncs it. Returns its path, or NULL with error_r. */
static const char *
write_tmp(const char *dir, const char *name, const void *data, size_t size,
	  bool durable, const char **error_r)
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
	if (write_full(fd, data, size) < 0 || (durable && fsync(fd) < 0)) {
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

/* Replaces path's content atomically: temporary file, rename, and (if
   durable) the file and the directory fsynced so the rename survives a
   crash. */
static int replace_file_as(const char *dir, const char *name,
			   const void *data, size_t size, bool durable,
			   const char **error_r)
{
	const char *path = t_strconcat(dir, "/", name, NULL);
	const char *tmp = write_tmp(dir, name, data, size, durable, error_r);

	if (tmp == NULL)
		return -1;
	if (rename(tmp, path) < 0) {
		*error_r = t_strdup_printf("rename(%s, %s) failed: %m",
					   tmp, path);
		i_unlink(tmp);
		return -1;
	}
	return durable ? fsync_dir(dir, error_r) : 0;
}

static int replace_file(const char *dir, const char *name,
			const void *data, size_t size, const char **error_r)
{
	return replace_file_as(dir, name, data, size, TRUE, error_r);
}

/* suffix: "" for the key file itself, PENDING_SUFFIX for the copy
   key password writes next to it first */
static int keyfile_write_as(const char *keys_dir, const struct keyfile *kf,
			    const char *suffix, const char **error_r)
{
	const char *id_hex = binary_to_hex(kf->key_id, sizeof(kf->key_id));
	string_t *str = keyfile_format(kf);
	int ret;

	ret = replace_file(keys_dir, t_strconcat(id_hex, KEYFILE_SUFFIX,
						 suffix, NULL),
			   str_data(str), str_len(str), error_r);
	sodium_memzero(str_c_modifiable(str), str_len(str));
	return ret;
}

static int keyfile_write(const char *keys_dir, const struct keyfile *kf,
			 const char **error_r)
{
	return keyfile_write_as(keys_dir, kf, "", error_r);
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

int popvault_keystore_exists(const char *keys_dir, const char **error_r)
{
	const char *id_hex;

	return read_current(keys_dir, &id_hex, error_r);
}

/* Returns 1 with the recovery public key, 0 when there is none. */
static int read_recovery_pub(const char *keys_dir, struct recovery_pub *rp_r,
			     const char **error_r)
{
	const char *path = t_strconcat(keys_dir, "/" RECOVERY_NAME, NULL);
	string_t *str = t_str_new(256);
	const char *const *lines;
	unsigned char check[POPVAULT_KEY_ID_SIZE];
	bool have_id = FALSE, have_pk = FALSE;
	int ret;

	if ((ret = read_small_file(path, str, error_r)) <= 0)
		return ret;
	lines = t_strsplit(str_c(str), "\n");
	if (lines[0] == NULL || strcmp(lines[0], RECOVERY_MAGIC) != 0) {
		*error_r = t_strdup_printf("%s: not a recovery key file", path);
		return -1;
	}
	for (; *lines != NULL; lines++) {
		if (str_begins_with(*lines, "key_id ")) {
			have_id = hex_field(*lines + 7, rp_r->id,
					    sizeof(rp_r->id)) == 0;
		} else if (str_begins_with(*lines, "public ")) {
			have_pk = hex_field(*lines + 7, rp_r->pk,
					    sizeof(rp_r->pk)) == 0;
		}
	}
	if (have_pk)
		popvault_key_id(rp_r->pk, check);
	if (!have_id || !have_pk || memcmp(check, rp_r->id, sizeof(check)) != 0) {
		*error_r = t_strdup_printf("%s: invalid recovery key file",
					   path);
		return -1;
	}
	return 1;
}

/* The key ids of every key file, sorted. */
static int keystore_key_ids(const char *keys_dir,
			    ARRAY_TYPE(const_string) *ids,
			    const char **error_r)
{
	struct dirent *d;
	const char *name;
	size_t len;
	DIR *dir;

	dir = opendir(keys_dir);
	if (dir == NULL) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("opendir(%s) failed: %m", keys_dir);
		return -1;
	}
	while ((d = readdir(dir)) != NULL) {
		name = d->d_name;
		len = strlen(name);
		if (name[0] == '.' ||
		    len != KEY_ID_HEX_LEN + strlen(KEYFILE_SUFFIX) ||
		    strcmp(name + KEY_ID_HEX_LEN, KEYFILE_SUFFIX) != 0)
			continue;
		name = t_strndup(name, KEY_ID_HEX_LEN);
		array_push_back(ids, &name);
	}
	if (closedir(dir) < 0) {
		*error_r = t_strdup_printf("closedir(%s) failed: %m", keys_dir);
		return -1;
	}
	array_sort(ids, i_strcmp_p);
	return 0;
}

/* Writes a new key pair file wrapped with every secret given (and sealed
   to the recovery key when the store has one). */
static int keypair_new(const char *keys_dir, const char *username,
		       const struct popvault_key_secrets *secrets,
		       struct pw_kek_cache *cache, struct keyfile *kf_r,
		       const char **error_r)
{
	unsigned char sk[POPVAULT_SK_SIZE];
	struct recovery_pub rp;
	int ret;

	if (secrets->master == NULL && secrets->password == NULL) {
		*error_r = "no master key (popvault_master_key) or password "
			"to lock a new key pair with";
		return -1;
	}
	if ((ret = read_recovery_pub(keys_dir, &rp, error_r)) < 0 ||
	    keys_dir_create(keys_dir, error_r) < 0)
		return -1;

	i_zero(kf_r);
	popvault_keypair_generate(kf_r->pk, sk);
	popvault_key_id(kf_r->pk, kf_r->key_id);
	kf_r->created = time(NULL);
	if (secrets->master != NULL)
		keyfile_wrap_master(kf_r, username, secrets->master, sk);
	if (secrets->password != NULL &&
	    keyfile_wrap_password(kf_r, username, secrets->password, cache,
				  sk, error_r) < 0) {
		sodium_memzero(sk, sizeof(sk));
		return -1;
	}
	if (ret > 0)
		keyfile_seal_recovery(kf_r, &rp, sk);
	sodium_memzero(sk, sizeof(sk));
	return keyfile_write(keys_dir, kf_r, error_r);
}

/* Every writer that creates a key pair or adds a wrap holds this lock
   (fcntl, released by the kernel should the process die), so two first
   deliveries or logins make one key pair, not one each. Readers take no
   lock: every file they find is complete (temporary name, fsync, rename)
   and stays, and "current" is published only after its key file. */
static int keystore_lock(const char *keys_dir, struct file_lock **lock_r,
			 const char **error_r)
{
	const struct file_lock_settings lock_set = {
		.lock_method = FILE_LOCK_METHOD_FCNTL,
		.close_on_free = TRUE,
	};
	const char *path = t_strconcat(keys_dir, "/" LOCK_NAME, NULL);
	const char *error;
	int fd, ret;

	if (keys_dir_create(keys_dir, error_r) < 0)
		return -1;
	fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	ret = file_wait_lock(fd, path, F_WRLCK, &lock_set,
			     KEYSTORE_LOCK_TIMEOUT_SECS, lock_r, &error);
	if (ret <= 0) {
		*error_r = ret == 0 ? t_strdup_printf("%s: still locked after "
			"%u s", path, KEYSTORE_LOCK_TIMEOUT_SECS) : error;
		i_close_fd(&fd);
		return -1;
	}
	return 0;
}

int popvault_keystore_create(const char *keys_dir, const char *username,
			     const struct popvault_key_secrets *secrets,
			     unsigned char pk_r[POPVAULT_PK_SIZE],
			     const char **error_r)
{
	struct pw_kek_cache cache;
	struct file_lock *lock;
	struct keyfile kf;
	const char *id_hex;
	int ret;

	if (keystore_lock(keys_dir, &lock, error_r) < 0)
		return -1;
	ret = read_current(keys_dir, &id_hex, error_r);
	if (ret > 0) {
		/* another process was first */
		ret = keyfile_read(keys_dir, id_hex, &kf, error_r) < 0 ? -1 : 0;
	} else if (ret == 0) {
		i_zero(&cache);
		ret = keypair_new(keys_dir, username, secrets, &cache, &kf,
				  error_r);
		pw_kek_cache_clear(&cache);
		if (ret == 0) {
			id_hex = binary_to_hex(kf.key_id, sizeof(kf.key_id));
			ret = replace_file(keys_dir, CURRENT_NAME,
					   t_strconcat(id_hex, "\n", NULL),
					   strlen(id_hex) + 1, error_r) < 0 ?
				-1 : 1;
		}
	}
	file_unlock(&lock);
	if (ret >= 0)
		memcpy(pk_r, kf.pk, POPVAULT_PK_SIZE);
	sodium_memzero(&kf, sizeof(kf));
	return ret;
}

/* In master-key mode the public key new mail goes to must carry the MAC
   only the master key makes (keyfile_public_mac()): someone who can
   write the home but has no master key can't make one, so a planted key
   pair and "current" fail delivery here instead of receiving the mail.
   A key file from before the MAC (popvault <= 420e9b1) is vouched for by
   a master wrap whose private key matches the public key; it then gets
   the MAC, under the lock. */
static int keyfile_verify_master(const char *keys_dir, struct keyfile *kf,
				 const char *username,
				 const unsigned char *master,
				 const char **error_r)
{
	const char *id_hex = binary_to_hex(kf->key_id, sizeof(kf->key_id));
	const char *path = keyfile_path(keys_dir, id_hex);
	const struct popvault_key_secrets master_only = { .master = master };
	unsigned char mac[MAC_SIZE], sk[POPVAULT_SK_SIZE];
	struct file_lock *lock;
	struct keyfile again;
	const char *error;
	int ret;

	if (kf->have_mac) {
		keyfile_public_mac(kf, username, master, mac);
		if (sodium_memcmp(mac, kf->mac, sizeof(mac)) == 0)
			return 0;
		*error_r = t_strdup_printf("%s: the master key does not vouch "
			"for the current public key (wrong MAC: planted, "
			"damaged, another user's file or another master "
			"key); not encrypting to it", path);
		return -1;
	}
	ret = keyfile_unwrap_sk(kf, path, username, &master_only, NULL, sk,
				&error);
	sodium_memzero(sk, sizeof(sk));
	if (ret < 0) {
		*error_r = t_strdup_printf("%s: the master key does not vouch "
			"for the current public key (no MAC, and %s); not "
			"encrypting to it (a key pair made without the master "
			"key gets its wrap at the user's next login with the "
			"password)", path, error);
		return -1;
	}
	if (keystore_lock(keys_dir, &lock, error_r) < 0)
		return -1;
	if ((ret = keyfile_read(keys_dir, id_hex, &again, error_r)) == 0 &&
	    !again.have_mac &&
	    memcmp(again.pk, kf->pk, sizeof(kf->pk)) == 0) {
		keyfile_public_mac(&again, username, master, again.mac);
		again.have_mac = TRUE;
		ret = keyfile_write(keys_dir, &again, error_r);
	}
	file_unlock(&lock);
	sodium_memzero(&again, sizeof(again));
	return ret;
}

/* An LMTP process reads the same user's current key file for every
   message it delivers, and parsing it and checking its MAC (HKDF +
   HMAC-SHA256) were 60 k instructions of each delivery
   (docs/performance.md). The last key file that checked out is
   remembered as a BLAKE2b digest keyed with the master key over the
   user, the directory and the file's bytes, with its public key: a file
   of the same bytes, for the same user, under the same master key
   checks out the same way. Nothing secret is kept beyond the digest. */
static struct {
	bool valid;
	unsigned char digest[crypto_generichash_BYTES];
	unsigned char pk[POPVAULT_PK_SIZE];
} current_verified;

static void current_verified_digest(const char *keys_dir,
				    const char *username,
				    const string_t *text,
				    const unsigned char *master,
				    unsigned char digest_r[crypto_generichash_BYTES])
{
	crypto_generichash_state state;

	crypto_generichash_init(&state, master, POPVAULT_MASTER_KEY_SIZE,
				crypto_generichash_BYTES);
	crypto_generichash_update(&state, (const void *)username,
				  strlen(username) + 1);
	crypto_generichash_update(&state, (const void *)keys_dir,
				  strlen(keys_dir) + 1);
	crypto_generichash_update(&state, str_data(text), str_len(text));
	crypto_generichash_final(&state, digest_r, crypto_generichash_BYTES);
	sodium_memzero(&state, sizeof(state));
}

/* 1 with the current public key (verified in master-key mode), 0 when
   there is no current key pair. */
static int current_read_verified(const char *keys_dir, const char *username,
				 const struct popvault_key_secrets *secrets,
				 unsigned char pk_r[POPVAULT_PK_SIZE],
				 const char **error_r)
{
	unsigned char digest[crypto_generichash_BYTES];
	struct keyfile kf;
	const char *id_hex, *path;
	string_t *text;
	int ret;

	if ((ret = read_current(keys_dir, &id_hex, error_r)) <= 0)
		return ret;
	path = keyfile_path(keys_dir, id_hex);
	text = t_str_new(1024);
	if (keyfile_read_text(path, text, error_r) < 0)
		return -1;
	if (secrets->master != NULL) {
		current_verified_digest(keys_dir, username, text,
					secrets->master, digest);
		if (current_verified.valid &&
		    sodium_memcmp(digest, current_verified.digest,
				  sizeof(digest)) == 0) {
			memcpy(pk_r, current_verified.pk, POPVAULT_PK_SIZE);
			return 1;
		}
	}
	if (keyfile_parse(path, str_c(text), &kf, error_r) < 0 ||
	    (secrets->master != NULL &&
	     keyfile_verify_master(keys_dir, &kf, username, secrets->master,
				   error_r) < 0))
		ret = -1;
	else {
		memcpy(pk_r, kf.pk, POPVAULT_PK_SIZE);
		/* a key file that just got its MAC (keyfile_verify_master())
		   has other bytes now: remembered at its next read */
		if (secrets->master != NULL && kf.have_mac) {
			memcpy(current_verified.digest, digest,
			       sizeof(digest));
			memcpy(current_verified.pk, kf.pk, POPVAULT_PK_SIZE);
			current_verified.valid = TRUE;
		}
	}
	sodium_memzero(&kf, sizeof(kf));
	return ret;
}

int popvault_keystore_get_current(const char *keys_dir, const char *username,
				  const struct popvault_key_secrets *secrets,
				  unsigned char pk_r[POPVAULT_PK_SIZE],
				  bool *created_r, const char **error_r)
{
	int ret;

	*created_r = FALSE;
	if ((ret = current_read_verified(keys_dir, username, secrets, pk_r,
					 error_r)) != 0)
		return ret < 0 ? -1 : 0;
	if (secrets->master == NULL && secrets->password == NULL) {
		*error_r = "no key pair yet, and no master key to create one "
			"(with popvault_key_password it is created at the "
			"user's first login, or by doveadm popvault key "
			"generate)";
		return -1;
	}
	if ((ret = popvault_keystore_create(keys_dir, username, secrets, pk_r,
					    error_r)) < 0)
		return -1;
	if (ret > 0) {
		*created_r = TRUE;
		return 0;
	}
	/* made by another process meanwhile: trusted like any current */
	if ((ret = current_read_verified(keys_dir, username, secrets, pk_r,
					 error_r)) == 0)
		*error_r = t_strdup_printf("%s/" CURRENT_NAME " vanished",
					   keys_dir);
	return ret > 0 ? 0 : -1;
}

/* Which wraps kf lacks that secrets could add. */
static void keyfile_missing_wraps(const struct keyfile *kf,
				  const struct popvault_key_secrets *secrets,
				  bool *master_r, bool *password_r)
{
	*master_r = secrets->master != NULL && !kf->have_master_wrap;
	*password_r = secrets->password != NULL && !kf->have_password_wrap;
}

/* Leaves in cache the derivation of the password wraps the store has
   (so added wraps share their salt and one Argon2id unlocks all).
   Returns 1 when the password opens them or there are none, 0 when it
   does not: then no wrap with it is added, or the keys would need two
   passwords. */
static int add_wraps_password_ok(const char *keys_dir, const char *username,
				 const ARRAY_TYPE(const_string) *ids,
				 const char *password,
				 struct pw_kek_cache *cache)
{
	const struct popvault_key_secrets pw_only = { .password = password };
	unsigned char sk[POPVAULT_SK_SIZE];
	struct keyfile kf;
	const char *id, *error;
	int ret = 1;

	array_foreach_elem(ids, id) {
		if (keyfile_read(keys_dir, id, &kf, &error) < 0 ||
		    !kf.have_password_wrap)
			continue;
		ret = keyfile_unwrap_sk(&kf, keyfile_path(keys_dir, id),
					username, &pw_only, cache, sk,
					&error) < 0 ? 0 : 1;
		sodium_memzero(sk, sizeof(sk));
		break;
	}
	sodium_memzero(&kf, sizeof(kf));
	return ret;
}

/* Unlocks kf with the secret it has and adds the wrap of the one it
   lacks. 1 = added, 0 = it does not open with what was given. */
static int keyfile_add_wraps(const char *keys_dir, struct keyfile *kf,
			     const char *username,
			     const struct popvault_key_secrets *secrets,
			     bool add_master, bool add_password,
			     struct pw_kek_cache *cache, const char **error_r)
{
	struct popvault_key_secrets unlock;
	unsigned char sk[POPVAULT_SK_SIZE];
	const char *path = keyfile_path(keys_dir, binary_to_hex(kf->key_id,
						sizeof(kf->key_id)));
	const char *error;
	int ret;

	/* the secret being added never unlocks: it has no wrap here */
	i_zero(&unlock);
	unlock.master = add_master ? NULL : secrets->master;
	unlock.password = add_password ? NULL : secrets->password;
	if (keyfile_unwrap_sk(kf, path, username, &unlock, cache, sk,
			      &error) < 0)
		return 0;
	if (add_master)
		keyfile_wrap_master(kf, username, secrets->master, sk);
	ret = !add_password ? 0 :
		keyfile_wrap_password(kf, username, secrets->password, cache,
				      sk, error_r);
	sodium_memzero(sk, sizeof(sk));
	if (ret < 0 || keyfile_write(keys_dir, kf, error_r) < 0)
		return -1;
	return 1;
}

int popvault_keystore_add_wraps(const char *keys_dir, const char *username,
				const struct popvault_key_secrets *secrets,
				unsigned int *added_r, const char **error_r)
{
	ARRAY_TYPE(const_string) ids;
	struct popvault_key_secrets add = *secrets;
	struct pw_kek_cache cache;
	struct file_lock *lock = NULL;
	struct keyfile kf;
	const char *id;
	bool add_master, add_password, missing = FALSE;
	int ret = 0;

	*added_r = 0;
	if (secrets->master == NULL || secrets->password == NULL)
		return 0;
	t_array_init(&ids, 8);
	if (keystore_key_ids(keys_dir, &ids, error_r) < 0)
		return -1;
	/* nearly always nothing is missing: then no lock, no crypto */
	array_foreach_elem(&ids, id) {
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0)
			return -1;
		keyfile_missing_wraps(&kf, secrets, &add_master, &add_password);
		missing = missing || add_master || add_password;
	}
	sodium_memzero(&kf, sizeof(kf));
	if (!missing)
		return 0;

	if (keystore_lock(keys_dir, &lock, error_r) < 0)
		return -1;
	array_clear(&ids);
	i_zero(&cache);
	if (keystore_key_ids(keys_dir, &ids, error_r) < 0)
		ret = -1;
	else if (add_wraps_password_ok(keys_dir, username, &ids,
				       secrets->password, &cache) == 0)
		add.password = NULL;
	array_foreach_elem(&ids, id) {
		if (ret < 0)
			break;
		/* read again under the lock: another login may have added
		   the wraps meanwhile */
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0) {
			ret = -1;
			break;
		}
		keyfile_missing_wraps(&kf, &add, &add_master, &add_password);
		if (!add_master && !add_password)
			continue;
		ret = keyfile_add_wraps(keys_dir, &kf, username, secrets,
					add_master, add_password, &cache,
					error_r);
		if (ret > 0)
			(*added_r)++;
	}
	pw_kek_cache_clear(&cache);
	sodium_memzero(&kf, sizeof(kf));
	file_unlock(&lock);
	return ret < 0 ? -1 : 0;
}

int popvault_keystore_rotate(const char *keys_dir, const char *username,
			     const struct popvault_key_secrets *secrets,
			     unsigned char pk_r[POPVAULT_PK_SIZE],
			     const char **error_r)
{
	unsigned char sk[POPVAULT_SK_SIZE];
	struct popvault_key_secrets unlock;
	struct pw_kek_cache cache;
	struct keyfile cur, kf;
	const char *id_hex;
	int ret;

	if ((ret = read_current(keys_dir, &id_hex, error_r)) <= 0) {
		if (ret == 0)
			*error_r = "no key pair yet (doveadm popvault key generate)";
		return -1;
	}
	if (keyfile_read(keys_dir, id_hex, &cur, error_r) < 0)
		return -1;
	if (cur.have_password_wrap && secrets->password == NULL) {
		*error_r = "the current key pair is password-locked: give the "
			"password, so that the new one is locked with it too";
		return -1;
	}
	/* Proves the secrets before anything is written, and leaves the
	   password's derivation in the cache for the new key's wrap. The
	   password itself must open the current key: with the master key
	   tried first, a mistyped password would lock the new key pair. */
	unlock = *secrets;
	if (secrets->password != NULL && cur.have_password_wrap) {
		i_zero(&unlock);
		unlock.password = secrets->password;
	}
	i_zero(&cache);
	ret = keyfile_unwrap_sk(&cur, keyfile_path(keys_dir, id_hex), username,
				&unlock, &cache, sk, error_r);
	sodium_memzero(sk, sizeof(sk));
	if (ret == 0)
		ret = keypair_new(keys_dir, username, secrets, &cache, &kf,
				  error_r);
	pw_kek_cache_clear(&cache);
	if (ret < 0)
		return -1;
	id_hex = binary_to_hex(kf.key_id, sizeof(kf.key_id));
	if (replace_file(keys_dir, CURRENT_NAME,
			 t_strconcat(id_hex, "\n", NULL), strlen(id_hex) + 1,
			 error_r) < 0)
		return -1;
	memcpy(pk_r, kf.pk, POPVAULT_PK_SIZE);
	return 0;
}

/* key password killed between renaming two re-wrapped files: the key
   whose file still has the old wrap has its new one waiting in
   <id>.key.pending, so the new password opens every key too. */
static int keyfile_unwrap_pending(const char *keys_dir, const char *id,
				  const char *username,
				  const struct popvault_key_secrets *secrets,
				  struct pw_kek_cache *cache,
				  unsigned char sk_r[POPVAULT_SK_SIZE])
{
	const char *path = t_strconcat(keyfile_path(keys_dir, id),
				       PENDING_SUFFIX, NULL);
	string_t *str = t_str_new(1024);
	struct keyfile kf;
	const char *error;
	int ret;

	if (read_small_file(path, str, &error) <= 0)
		return -1;
	ret = keyfile_parse(path, str_c(str), &kf, &error) < 0 ||
		strcmp(binary_to_hex(kf.key_id, sizeof(kf.key_id)), id) != 0 ||
		keyfile_unwrap_sk(&kf, path, username, secrets, cache, sk_r,
				  &error) < 0 ? -1 : 0;
	sodium_memzero(&kf, sizeof(kf));
	return ret;
}

int popvault_keystore_load_receiver(const char *keys_dir,
				    const char *username,
				    const struct popvault_key_secrets *secrets,
				    struct popvault_receiver *receiver,
				    unsigned int *count_r,
				    const char **error_r)
{
	unsigned char sk[POPVAULT_SK_SIZE];
	ARRAY_TYPE(const_string) ids;
	struct pw_kek_cache cache;
	struct keyfile kf;
	const char *id;
	int ret = 0;

	*count_r = 0;
	t_array_init(&ids, 8);
	if (keystore_key_ids(keys_dir, &ids, error_r) < 0)
		return -1;
	i_zero(&cache);
	array_foreach_elem(&ids, id) {
		if ((keyfile_read(keys_dir, id, &kf, error_r) < 0 ||
		     keyfile_unwrap_sk(&kf, keyfile_path(keys_dir, id),
				       username, secrets, &cache, sk,
				       error_r) < 0) &&
		    keyfile_unwrap_pending(keys_dir, id, username, secrets,
					   &cache, sk) < 0) {
			ret = -1;
			break;
		}
		ret = popvault_receiver_add_key(receiver, sk);
		sodium_memzero(sk, sizeof(sk));
		if (ret < 0) {
			*error_r = t_strdup_printf("%s: invalid private key",
				keyfile_path(keys_dir, id));
			break;
		}
		(*count_r)++;
	}
	pw_kek_cache_clear(&cache);
	sodium_memzero(&kf, sizeof(kf));
	return ret;
}

int popvault_keystore_set_password(const char *keys_dir, const char *username,
				   const struct popvault_key_secrets *secrets,
				   const char *new_password,
				   const char **error_r)
{
	const struct popvault_key_secrets resume = { .password = new_password };
	unsigned char sk[POPVAULT_SK_SIZE];
	ARRAY_TYPE(const_string) ids;
	struct pw_kek_cache old_cache, new_cache, resume_cache;
	struct file_lock *lock;
	struct keyfile kf;
	const char *id, *path, *error;
	int ret = 0;

	t_array_init(&ids, 8);
	if (keystore_key_ids(keys_dir, &ids, error_r) < 0)
		return -1;
	if (array_count(&ids) == 0) {
		*error_r = "no key pair yet (doveadm popvault key generate)";
		return -1;
	}
	/* a login adding a missing wrap meanwhile would write back a file
	   without the new password */
	if (keystore_lock(keys_dir, &lock, error_r) < 0)
		return -1;
	i_zero(&old_cache); i_zero(&new_cache); i_zero(&resume_cache);
	array_foreach_elem(&ids, id) {
		path = keyfile_path(keys_dir, id);
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0) {
			ret = -1;
			break;
		}
		if (keyfile_unwrap_sk(&kf, path, username, secrets,
				      &old_cache, sk, error_r) < 0 &&
		    (!kf.have_password_wrap ||
		     keyfile_unwrap_sk(&kf, path, username, &resume,
				       &resume_cache, sk, &error) < 0)) {
			/* not done by an earlier, interrupted run either */
			ret = -1;
			break;
		}
		ret = keyfile_wrap_password(&kf, username, new_password,
					    &new_cache, sk, error_r);
		sodium_memzero(sk, sizeof(sk));
		if (ret < 0 || (ret = keyfile_write_as(keys_dir, &kf,
						       PENDING_SUFFIX,
						       error_r)) < 0)
			break;
	}
	pw_kek_cache_clear(&old_cache);
	pw_kek_cache_clear(&new_cache);
	pw_kek_cache_clear(&resume_cache);
	sodium_memzero(&kf, sizeof(kf));
	if (ret == 0) {
		/* Every key is re-wrapped next to its file; only now are
		   they switched. Killed before, the old password opens every
		   key; killed between two renames, the new one does (the
		   readers look at <id>.key.pending), and a re-run finishes. */
		array_foreach_elem(&ids, id) {
			path = keyfile_path(keys_dir, id);
			if (rename(t_strconcat(path, PENDING_SUFFIX, NULL),
				   path) < 0) {
				*error_r = t_strdup_printf(
					"rename(%s%s) failed: %m",
					path, PENDING_SUFFIX);
				ret = -1;
				break;
			}
		}
	}
	if (ret == 0)
		ret = fsync_dir(keys_dir, error_r);
	file_unlock(&lock);
	return ret;
}

/* Removes from every key file the seals to recovery keys other than
   rp; a key file that lacks rp's seal keeps its others (see publish). */
static int recovery_drop_others(const char *keys_dir,
				const ARRAY_TYPE(const_string) *ids,
				const struct recovery_pub *rp,
				const char **error_r)
{
	struct keyfile kf;
	unsigned int i, n;
	const char *id;

	array_foreach_elem(ids, id) {
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0)
			return -1;
		for (i = n = 0; i < kf.recovery_count; i++) {
			if (memcmp(kf.recovery[i].id, rp->id,
				   sizeof(rp->id)) == 0)
				kf.recovery[n++] = kf.recovery[i];
		}
		if (n == kf.recovery_count || n == 0)
			continue;
		kf.recovery_count = n;
		if (keyfile_write(keys_dir, &kf, error_r) < 0)
			return -1;
	}
	return 0;
}

/* Keeps only the seal to the published recovery key (if any): seals to
   keys of earlier runs that never got published were never confirmed
   shown, and must not push the admin's key out of RECOVERY_WRAPS_MAX. */
static void recovery_keep_published(struct keyfile *kf,
				    const struct recovery_pub *published)
{
	unsigned int i, n;

	for (i = n = 0; i < kf->recovery_count; i++) {
		if (published != NULL &&
		    memcmp(kf->recovery[i].id, published->id,
			   sizeof(published->id)) == 0)
			kf->recovery[n++] = kf->recovery[i];
	}
	kf->recovery_count = n;
}

static int
keystore_set_recovery_locked(const char *keys_dir, const char *username,
			     const struct popvault_key_secrets *secrets,
			     unsigned char recovery_r[POPVAULT_RECOVERY_KEY_SIZE],
			     const char **recovery_id_r, const char **error_r)
{
	unsigned char sk[POPVAULT_SK_SIZE];
	ARRAY_TYPE(const_string) ids;
	struct pw_kek_cache cache;
	struct recovery_pub rp, published;
	struct keyfile kf;
	const char *id;
	int ret = 0, have_published;

	t_array_init(&ids, 8);
	if (keys_dir_create(keys_dir, error_r) < 0 ||
	    keystore_key_ids(keys_dir, &ids, error_r) < 0 ||
	    (have_published = read_recovery_pub(keys_dir, &published,
						error_r)) < 0)
		return -1;
	crypto_box_keypair(rp.pk, recovery_r);
	popvault_key_id(rp.pk, rp.id);

	/* Seal every key to the new recovery key, next to the seal to the
	   published one. Nothing else changes until the caller has shown
	   the new key (popvault_keystore_publish_recovery): killed before
	   that, the recovery key the admin holds still opens every key. */
	i_zero(&cache);
	array_foreach_elem(&ids, id) {
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0 ||
		    keyfile_unwrap_sk(&kf, keyfile_path(keys_dir, id),
				      username, secrets, &cache, sk,
				      error_r) < 0) {
			ret = -1;
			break;
		}
		recovery_keep_published(&kf, have_published > 0 ?
					&published : NULL);
		keyfile_seal_recovery(&kf, &rp, sk);
		sodium_memzero(sk, sizeof(sk));
		if ((ret = keyfile_write(keys_dir, &kf, error_r)) < 0)
			break;
	}
	pw_kek_cache_clear(&cache);
	sodium_memzero(&kf, sizeof(kf));
	if (ret < 0) {
		sodium_memzero(recovery_r, POPVAULT_RECOVERY_KEY_SIZE);
		return -1;
	}
	*recovery_id_r = binary_to_hex(rp.id, sizeof(rp.id));
	return 0;
}

static int keystore_publish_recovery_locked(const char *keys_dir,
	const unsigned char recovery[POPVAULT_RECOVERY_KEY_SIZE],
	const char **error_r)
{
	ARRAY_TYPE(const_string) ids;
	struct recovery_pub rp;
	struct keyfile kf;
	const char *id, *text;
	unsigned int i;
	bool sealed;

	if (crypto_scalarmult_base(rp.pk, recovery) != 0) {
		*error_r = "invalid recovery key";
		return -1;
	}
	popvault_key_id(rp.pk, rp.id);
	t_array_init(&ids, 8);
	if (keystore_key_ids(keys_dir, &ids, error_r) < 0)
		return -1;
	/* a key pair made since the seals were written (a rotation, a
	   first delivery) is sealed to the old recovery key only: publish
	   nothing, the old key stays the one that opens everything */
	array_foreach_elem(&ids, id) {
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0)
			return -1;
		sealed = FALSE;
		for (i = 0; i < kf.recovery_count; i++) {
			if (memcmp(kf.recovery[i].id, rp.id,
				   sizeof(rp.id)) == 0)
				sealed = TRUE;
		}
		if (!sealed) {
			*error_r = t_strdup_printf("%s was created meanwhile "
				"and is not sealed to the new recovery key: "
				"the previous recovery key stays valid, run "
				"the command again",
				keyfile_path(keys_dir, id));
			return -1;
		}
	}
	text = t_strdup_printf(RECOVERY_MAGIC"\nkey_id %s\ncreated %ld\n"
			       "public %s\n", binary_to_hex(rp.id, sizeof(rp.id)),
			       (long)time(NULL),
			       binary_to_hex(rp.pk, sizeof(rp.pk)));
	/* new key pairs are sealed to it from now on; then the previous
	   recovery key's seals go */
	if (replace_file(keys_dir, RECOVERY_NAME, text, strlen(text),
			 error_r) < 0 ||
	    recovery_drop_others(keys_dir, &ids, &rp, error_r) < 0)
		return -1;
	return 0;
}

/* Both recovery steps rewrite every key file: under the store's lock, so
   that a login adding a missing wrap meanwhile neither loses the new seal
   nor has its wrap overwritten. */
int popvault_keystore_set_recovery(const char *keys_dir, const char *username,
				   const struct popvault_key_secrets *secrets,
				   unsigned char recovery_r[POPVAULT_RECOVERY_KEY_SIZE],
				   const char **recovery_id_r,
				   const char **error_r)
{
	struct file_lock *lock;
	int ret;

	if (keys_dir_create(keys_dir, error_r) < 0 ||
	    keystore_lock(keys_dir, &lock, error_r) < 0)
		return -1;
	ret = keystore_set_recovery_locked(keys_dir, username, secrets,
					   recovery_r, recovery_id_r, error_r);
	file_unlock(&lock);
	return ret;
}

int popvault_keystore_publish_recovery(const char *keys_dir,
	const unsigned char recovery[POPVAULT_RECOVERY_KEY_SIZE],
	const char **error_r)
{
	struct file_lock *lock;
	int ret;

	if (keystore_lock(keys_dir, &lock, error_r) < 0)
		return -1;
	ret = keystore_publish_recovery_locked(keys_dir, recovery, error_r);
	file_unlock(&lock);
	return ret;
}

static int key_info_cmp(const struct popvault_key_info *a,
			const struct popvault_key_info *b)
{
	if (a->created != b->created)
		return a->created < b->created ? -1 : 1;
	return strcmp(a->key_id, b->key_id);
}

int popvault_keystore_list(const char *keys_dir, pool_t pool,
			   ARRAY_TYPE(popvault_key_info) *keys_r,
			   const char **recovery_id_r, const char **error_r)
{
	ARRAY_TYPE(const_string) ids;
	struct popvault_key_info *info;
	struct recovery_pub rp;
	struct keyfile kf;
	const char *id, *current = "";
	unsigned int i;
	int ret;

	*recovery_id_r = NULL;
	t_array_init(&ids, 8);
	if (keystore_key_ids(keys_dir, &ids, error_r) < 0 ||
	    read_current(keys_dir, &current, error_r) < 0 ||
	    (ret = read_recovery_pub(keys_dir, &rp, error_r)) < 0)
		return -1;
	if (ret > 0) {
		*recovery_id_r = p_strdup(pool, binary_to_hex(rp.id,
							      sizeof(rp.id)));
	}
	array_foreach_elem(&ids, id) {
		if (keyfile_read(keys_dir, id, &kf, error_r) < 0)
			return -1;
		info = array_append_space(keys_r);
		info->key_id = p_strdup(pool, id);
		info->created = kf.created;
		info->current = strcmp(id, current) == 0;
		info->master = kf.have_master_wrap;
		info->password = kf.have_password_wrap;
		info->recovery = FALSE;
		for (i = 0; ret > 0 && i < kf.recovery_count; i++) {
			if (memcmp(kf.recovery[i].id, rp.id,
				   sizeof(rp.id)) == 0)
				info->recovery = TRUE;
		}
		sodium_memzero(&kf, sizeof(kf));
	}
	array_sort(keys_r, key_info_cmp);
	return 0;
}

const char *
popvault_recovery_key_format(const unsigned char key[POPVAULT_RECOVERY_KEY_SIZE])
{
	static const char hexdigits[] = "0123456789abcdef";
	string_t *str = t_str_new(128);
	unsigned int i;

	/* straight into the result: no hex copy left on the data stack */
	str_append(str, RECOVERY_TEXT_PREFIX);
	for (i = 0; i < POPVAULT_RECOVERY_KEY_SIZE; i++) {
		if (i > 0 && i % 4 == 0)
			str_append_c(str, '-');
		str_append_c(str, hexdigits[key[i] >> 4]);
		str_append_c(str, hexdigits[key[i] & 0x0f]);
	}
	return str_c(str);
}

int popvault_recovery_key_parse(const char *text,
				unsigned char key_r[POPVAULT_RECOVERY_KEY_SIZE],
				const char **error_r)
{
	const char *p = text;
	unsigned int n = 0;
	int hi = -1, nibble;

	/* decoded in place, digit by digit: no trimmed or joined copy of
	   the text */
	while (i_isspace(*p))
		p++;
	if (str_begins_with(p, RECOVERY_TEXT_PREFIX))
		p += strlen(RECOVERY_TEXT_PREFIX);
	for (; *p != '\0'; p++) {
		if (*p == '-' || i_isspace(*p))
			continue;
		if (*p >= '0' && *p <= '9')
			nibble = *p - '0';
		else if (*p >= 'a' && *p <= 'f')
			nibble = *p - 'a' + 10;
		else if (*p >= 'A' && *p <= 'F')
			nibble = *p - 'A' + 10;
		else
			break;
		if (n == POPVAULT_RECOVERY_KEY_SIZE)
			break;
		if (hi < 0)
			hi = nibble;
		else {
			key_r[n++] = (unsigned char)((hi << 4) | nibble);
			hi = -1;
		}
	}
	if (*p != '\0' || n != POPVAULT_RECOVERY_KEY_SIZE) {
		sodium_memzero(key_r, POPVAULT_RECOVERY_KEY_SIZE);
		*error_r = "not a recovery key (pvrk1- followed by 64 hex "
			"digits)";
		return -1;
	}
	return 0;
}

/* ---- the encrypted cache's key ---- */

#define CACHE_KEY_NAME "cache-key"

/* A new cache key sealed to pk. A missing file is created with link(),
   so racing sessions agree on one key (1: another won, read it again);
   a stale or broken one is replaced. Not fsynced: the key of a cache,
   lost or cut short by a crash it does not open, and the next session
   makes a new one and rebuilds the cache files (a new generation), as
   after rotation. Two fsyncs here made the first IMAP session's first
   command wait for the disk. */
static int cache_key_write(const char *keys_dir,
			   const unsigned char pk[POPVAULT_PK_SIZE],
			   bool replace,
			   unsigned char key_r[POPVAULT_CACHE_KEY_SIZE],
			   const char **error_r)
{
	const char *path = t_strconcat(keys_dir, "/" CACHE_KEY_NAME, NULL);
	struct popvault_sender *sender;
	const char *tmp;
	buffer_t *sealed;
	int ret;

	sender = popvault_sender_create(pk, POPVAULT_CIPHER_AES256GCM);
	if (sender == NULL) {
		*error_r = "invalid public key in the key store";
		return -1;
	}
	randombytes_buf(key_r, POPVAULT_CACHE_KEY_SIZE);
	sealed = t_buffer_create(POPVAULT_HEADER_SIZE + 64);
	ret = popvault_encrypt_buffer(sender, key_r, POPVAULT_CACHE_KEY_SIZE,
				      sealed, error_r);
	popvault_sender_free(&sender);
	if (ret < 0)
		return -1;
	if (replace) {
		return replace_file_as(keys_dir, CACHE_KEY_NAME, sealed->data,
				       sealed->used, FALSE, error_r);
	}
	if ((tmp = write_tmp(keys_dir, CACHE_KEY_NAME, sealed->data,
			     sealed->used, FALSE, error_r)) == NULL)
		return -1;
	ret = link(tmp, path);
	if (ret < 0 && errno != EEXIST) {
		*error_r = t_strdup_printf("link(%s, %s) failed: %m", tmp, path);
		i_unlink(tmp);
		return -1;
	}
	i_unlink(tmp);
	/* 1: another session's link() won */
	return ret < 0 ? 1 : 0;
}

/* 1 with the key, 0 when the file is missing, sealed to another key
   pair or does not open (caller makes a new one), -1 on I/O errors. */
static int cache_key_read(const char *keys_dir,
			  const unsigned char pk[POPVAULT_PK_SIZE],
			  struct popvault_receiver *receiver,
			  unsigned char key_r[POPVAULT_CACHE_KEY_SIZE],
			  const char **error_r)
{
	const char *path = t_strconcat(keys_dir, "/" CACHE_KEY_NAME, NULL);
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	struct popvault_header hdr;
	string_t *sealed = t_str_new(256);
	buffer_t *plain;
	const char *error;
	int ret;

	if ((ret = read_small_file(path, sealed, error_r)) <= 0)
		return ret;
	popvault_key_id(pk, key_id);
	/* sealed to an older key pair: rotation starts a new generation */
	if (popvault_header_parse(str_data(sealed), str_len(sealed), &hdr,
				  &error) < 0 ||
	    memcmp(hdr.key_id, key_id, sizeof(key_id)) != 0)
		return 0;
	plain = buffer_create_dynamic(default_pool, 64);
	ret = popvault_decrypt_buffer(receiver, str_data(sealed),
				      str_len(sealed), plain, &error) == 0 &&
		plain->used == POPVAULT_CACHE_KEY_SIZE ? 1 : 0;
	if (ret > 0)
		memcpy(key_r, plain->data, POPVAULT_CACHE_KEY_SIZE);
	safe_memset(buffer_get_modifiable_data(plain, NULL), 0, plain->used);
	buffer_free(&plain);
	return ret;
}

int popvault_keystore_get_cache_key(const char *keys_dir,
				    const unsigned char pk[POPVAULT_PK_SIZE],
				    struct popvault_receiver *receiver,
				    unsigned char key_r[POPVAULT_CACHE_KEY_SIZE],
				    const char **error_r)
{
	const char *path = t_strconcat(keys_dir, "/" CACHE_KEY_NAME, NULL);
	unsigned int i;
	bool exists;
	int ret;

	for (i = 0; i < 2; i++) {
		if ((ret = cache_key_read(keys_dir, pk, receiver, key_r,
					  error_r)) != 0)
			return ret < 0 ? -1 : 0;
		exists = access(path, F_OK) == 0;
		if ((ret = cache_key_write(keys_dir, pk, exists, key_r,
					   error_r)) <= 0)
			return ret;
		/* another session created it first: use theirs */
	}
	*error_r = t_strdup_printf("%s: unreadable after creating it", path);
	return -1;
}
