/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* The key store's parsers: key files (<key_id>.key, which anyone who can
   write a home may edit), the recovery public key file, recovery keys as
   an admin types them, and master keys as a setting value or file gives
   them. The first byte picks the parser, the rest is the input.

   The key store's parsers are static: this file includes the source so
   that it fuzzes exactly them, not a copy. */

#include "../../plugin/crypt/popvault-crypt-keys.c"
#include "fuzz-common.h"
#include "fuzz-key.h"

#include <stdio.h>

static char fuzz_dir[] = "/tmp/popvault-fuzz-keys.XXXXXX";

static void fuzz_dir_remove(void)
{
	(void)unlink(t_strconcat(fuzz_dir, "/" RECOVERY_NAME, NULL));
	(void)rmdir(fuzz_dir);
}

int LLVMFuzzerInitialize(int *argc ATTR_UNUSED, char ***argv ATTR_UNUSED)
{
	fuzz_lib_init();
	if (popvault_crypto_init() < 0 || mkdtemp(fuzz_dir) == NULL)
		abort();
	atexit(fuzz_dir_remove);
	return 0;
}

/* A key file that parses formats to text that parses to the same
   content, and its wraps are tried with the fuzz key as master and
   recovery key (the password wrap is not: its Argon2id cost comes from
   the file, up to a GiB and seconds per input). */
static void fuzz_keyfile(const char *text)
{
	struct popvault_key_secrets secrets;
	struct pw_kek_cache cache;
	struct keyfile kf, kf2;
	unsigned char sk[POPVAULT_SK_SIZE];
	const char *error;
	string_t *str;

	if (keyfile_parse("fuzz.key", text, &kf, &error) < 0)
		return;
	str = keyfile_format(&kf);
	if (keyfile_parse("fuzz.key", str_c(str), &kf2, &error) < 0)
		abort();
	if (memcmp(kf.key_id, kf2.key_id, sizeof(kf.key_id)) != 0 ||
	    memcmp(kf.pk, kf2.pk, sizeof(kf.pk)) != 0 ||
	    kf.have_master_wrap != kf2.have_master_wrap ||
	    kf.have_password_wrap != kf2.have_password_wrap ||
	    kf.recovery_count != kf2.recovery_count ||
	    memcmp(kf.ct, kf2.ct, sizeof(kf.ct)) != 0)
		abort();
	i_zero(&secrets);
	secrets.master = fuzz_sk;
	secrets.recovery = fuzz_sk;
	i_zero(&cache);
	(void)keyfile_unwrap_sk(&kf, "fuzz.key", "fuzz", &secrets, &cache, sk,
				&error);
	pw_kek_cache_clear(&cache);
}

static void fuzz_recovery_pub(const char *text, size_t size)
{
	const char *path = t_strconcat(fuzz_dir, "/" RECOVERY_NAME, NULL);
	struct recovery_pub rp;
	const char *error;
	FILE *f = fopen(path, "w");

	if (f == NULL || fwrite(text, 1, size, f) != size || fclose(f) != 0)
		abort();
	(void)read_recovery_pub(fuzz_dir, &rp, &error);
}

static void fuzz_recovery_key(const char *text)
{
	unsigned char key[POPVAULT_RECOVERY_KEY_SIZE];
	unsigned char key2[POPVAULT_RECOVERY_KEY_SIZE];
	const char *error;

	if (popvault_recovery_key_parse(text, key, &error) < 0)
		return;
	/* what it accepts, it formats to text that gives the same key */
	if (popvault_recovery_key_parse(popvault_recovery_key_format(key),
					key2, &error) < 0 ||
	    memcmp(key, key2, sizeof(key)) != 0)
		abort();
}

static void fuzz_master_key(const unsigned char *data, size_t size,
			    const char *text)
{
	unsigned char key[POPVAULT_MASTER_KEY_SIZE];

	/* as a file gives it (any bytes) and as a setting value (a C
	   string); whether an error may name it as a path */
	(void)popvault_master_key_parse((const char *)data, size, key);
	(void)popvault_master_key_parse(text, strlen(text), key);
	(void)master_key_path_loggable(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text;

	if (size == 0)
		return 0;
	T_BEGIN {
		text = t_strndup(data + 1, size - 1);
		switch (data[0] % 4) {
		case 0:
			fuzz_keyfile(text);
			break;
		case 1:
			fuzz_recovery_pub((const char *)data + 1, size - 1);
			break;
		case 2:
			fuzz_recovery_key(text);
			break;
		case 3:
			fuzz_master_key(data + 1, size - 1, text);
			break;
		}
	} T_END;
	return 0;
}
