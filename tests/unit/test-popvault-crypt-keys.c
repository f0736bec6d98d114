/* Unit tests for the key store: master key formats, creation, unwrap,
   and refusal of wrong master keys, wrong users and edited files. */

#include "lib.h"
#include "str.h"
#include "unlink-directory.h"
#include "test-common.h"
#include "popvault-crypt-keys.h"

#include <fcntl.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>

static char tmpdir[] = "/tmp/popvault-keys-test.XXXXXX";

static const char *write_file(const char *name, const char *content)
{
	const char *path = t_strconcat(tmpdir, "/", name, NULL);
	FILE *f = fopen(path, "w");

	i_assert(f != NULL);
	fputs(content, f);
	fclose(f);
	return path;
}

static void test_master_key_formats(void)
{
	static const struct {
		const char *content;
		bool ok;
	} tests[] = {
		{ "000102030405060708090a0b0c0d0e0f"
		  "101112131415161718191a1b1c1d1e1f\n", TRUE },
		{ "  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n", TRUE },
		{ "0001020304", FALSE },
		{ "", FALSE },
		{ "zz0102030405060708090a0b0c0d0e0f"
		  "101112131415161718191a1b1c1d1e1f", FALSE },
	};
	unsigned char key[POPVAULT_MASTER_KEY_SIZE];
	const char *path, *error;
	unsigned int i;

	test_begin("popvault master key formats");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		path = write_file("master", tests[i].content);
		test_assert_idx((popvault_master_key_read(
			t_strconcat("<", path, NULL), key, &error) == 0) ==
			tests[i].ok, i);
		if (tests[i].ok)
			test_assert_idx(key[0] == 0 && key[31] == 31, i);
	}
	test_assert(popvault_master_key_read("/nonexistent/key", key,
					     &error) < 0 &&
		    strstr(error, "/nonexistent/key") != NULL);
	test_end();
}

static void test_keystore(void)
{
	unsigned char master[POPVAULT_MASTER_KEY_SIZE];
	unsigned char other[POPVAULT_MASTER_KEY_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE], pk2[POPVAULT_PK_SIZE];
	const char *keys = t_strconcat(tmpdir, "/home/.popvault/keys", NULL);
	struct popvault_receiver *receiver;
	const char *error;
	unsigned int count;
	bool created;

	test_begin("popvault key store");
	memset(master, 7, sizeof(master));
	memset(other, 8, sizeof(other));
	test_assert(popvault_keystore_get_current(keys, "u", NULL, pk,
						  &created, &error) < 0);
	test_assert(popvault_keystore_get_current(keys, "u", master, pk,
						  &created, &error) == 0 &&
		    created);
	/* the second call reads it back: only the public key needed */
	test_assert(popvault_keystore_get_current(keys, "u", NULL, pk2,
						  &created, &error) == 0 &&
		    !created && memcmp(pk, pk2, sizeof(pk)) == 0);
	/* creating again while "current" exists: the existing one wins */
	test_assert(popvault_keystore_create(keys, "u", master, pk2,
					     &error) == 0 &&
		    memcmp(pk, pk2, sizeof(pk)) == 0);

	receiver = popvault_receiver_create();
	test_assert(popvault_keystore_load_receiver(keys, "u", master,
			receiver, &count, &error) == 0 && count == 1);
	popvault_receiver_free(&receiver);

	receiver = popvault_receiver_create();
	test_assert(popvault_keystore_load_receiver(keys, "u", other,
			receiver, &count, &error) < 0);
	test_assert(popvault_keystore_load_receiver(keys, "v", master,
			receiver, &count, &error) < 0);
	popvault_receiver_free(&receiver);
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
	static void (*const test_functions[])(void) = {
		test_master_key_formats,
		test_keystore,
		test_cleanup,
		NULL
	};
	int ret;

	if (mkdtemp(tmpdir) == NULL)
		i_fatal("mkdtemp() failed: %m");
	if (popvault_crypto_init() < 0)
		i_fatal("popvault_crypto_init() failed");
	ret = test_run(test_functions);
	popvault_crypto_deinit();
	return ret;
}
