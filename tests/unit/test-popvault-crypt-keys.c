/* Unit tests for the key store: master key formats, creation, unwrap,
   and refusal of wrong master keys, wrong users and edited files. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "hex-binary.h"
#include "unlink-directory.h"
#include "test-common.h"
#include "popvault-crypt-keys.h"

#include <fcntl.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>

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

static unsigned int load_count(const char *keys, const char *user,
			       const struct popvault_key_secrets *secrets,
			       const char **error_r)
{
	struct popvault_receiver *receiver = popvault_receiver_create();
	unsigned int count;
	int ret;

	ret = popvault_keystore_load_receiver(keys, user, secrets, receiver,
					      &count, error_r);
	popvault_receiver_free(&receiver);
	return ret < 0 ? 0 : count;
}

static void test_keystore(void)
{
	unsigned char master[POPVAULT_MASTER_KEY_SIZE];
	unsigned char other[POPVAULT_MASTER_KEY_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE], pk2[POPVAULT_PK_SIZE];
	const char *keys = t_strconcat(tmpdir, "/home/.popvault/keys", NULL);
	struct popvault_key_secrets none, with_master, with_other;
	const char *error;
	bool created;

	test_begin("popvault key store");
	memset(master, 7, sizeof(master));
	memset(other, 8, sizeof(other));
	i_zero(&none);
	i_zero(&with_master);
	with_master.master = master;
	i_zero(&with_other);
	with_other.master = other;
	test_assert(popvault_keystore_exists(keys, &error) == 0);
	test_assert(popvault_keystore_get_current(keys, "u", &none, pk,
						  &created, &error) < 0);
	test_assert(popvault_keystore_get_current(keys, "u", &with_master, pk,
						  &created, &error) == 0 &&
		    created);
	test_assert(popvault_keystore_exists(keys, &error) == 1);
	/* the second call reads it back: only the public key needed */
	test_assert(popvault_keystore_get_current(keys, "u", &none, pk2,
						  &created, &error) == 0 &&
		    !created && memcmp(pk, pk2, sizeof(pk)) == 0);
	/* creating again while "current" exists: the existing one wins */
	test_assert(popvault_keystore_create(keys, "u", &with_master, pk2,
					     &error) == 0 &&
		    memcmp(pk, pk2, sizeof(pk)) == 0);

	test_assert(load_count(keys, "u", &with_master, &error) == 1);
	test_assert(load_count(keys, "u", &with_other, &error) == 0 &&
		    strstr(error, "master key does not unwrap") != NULL);
	test_assert(load_count(keys, "v", &with_master, &error) == 0);
	test_assert(load_count(keys, "u", &none, &error) == 0 &&
		    strstr(error, "no master key") != NULL);
	test_end();
}

static void test_keystore_password(void)
{
	const char *keys = t_strconcat(tmpdir, "/pw/.popvault/keys", NULL);
	struct popvault_key_secrets right, wrong, new_pw, master_only;
	ARRAY_TYPE(popvault_key_info) infos;
	const struct popvault_key_info *info;
	unsigned char pk[POPVAULT_PK_SIZE], pk2[POPVAULT_PK_SIZE];
	unsigned char pk3[POPVAULT_PK_SIZE];
	unsigned char master[POPVAULT_MASTER_KEY_SIZE];
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	const char *error, *rid, *dual;
	bool created;

	test_begin("popvault key store: password, rotation");
	i_zero(&right); right.password = "correct horse";
	i_zero(&wrong); wrong.password = "Correct horse";
	i_zero(&new_pw); new_pw.password = "battery staple";
	memset(master, 9, sizeof(master));
	i_zero(&master_only); master_only.master = master;

	test_assert(popvault_keystore_get_current(keys, "p", &right, pk,
						  &created, &error) == 0 &&
		    created);
	test_assert(load_count(keys, "p", &right, &error) == 1);
	test_assert(load_count(keys, "p", &wrong, &error) == 0 &&
		    strstr(error, "password does not unlock") != NULL);
	test_assert(load_count(keys, "p", &master_only, &error) == 0 &&
		    strstr(error, "no master-key wrap") != NULL);

	/* rotation needs the password, and the right one */
	test_assert(popvault_keystore_rotate(keys, "p", &master_only, pk2,
					     &error) < 0 &&
		    strstr(error, "password-locked") != NULL);
	test_assert(popvault_keystore_rotate(keys, "p", &wrong, pk2,
					     &error) < 0);
	test_assert(load_count(keys, "p", &right, &error) == 1);
	test_assert(popvault_keystore_rotate(keys, "p", &right, pk2,
					     &error) == 0 &&
		    memcmp(pk, pk2, sizeof(pk)) != 0);
	test_assert(popvault_keystore_get_current(keys, "p", &right, pk,
						  &created, &error) == 0 &&
		    !created && memcmp(pk, pk2, sizeof(pk)) == 0);
	test_assert(load_count(keys, "p", &right, &error) == 2);

	/* password change; a second run (resumed) is accepted */
	test_assert(popvault_keystore_set_password(keys, "p", &wrong,
		"x", &error) < 0);
	test_assert(popvault_keystore_set_password(keys, "p", &right,
		new_pw.password, &error) == 0);
	test_assert(popvault_keystore_set_password(keys, "p", &right,
		new_pw.password, &error) == 0);
	test_assert(load_count(keys, "p", &new_pw, &error) == 2);
	test_assert(load_count(keys, "p", &right, &error) == 0);

	/* master key and password: the master key opens the current key,
	   yet a mistyped password must not lock the new one */
	dual = t_strconcat(tmpdir, "/dual/.popvault/keys", NULL);
	right.master = master;
	test_assert(popvault_keystore_get_current(dual, "p", &right, pk3,
						  &created, &error) == 0);
	wrong.master = master;
	test_assert(popvault_keystore_rotate(dual, "p", &wrong, pk3,
					     &error) < 0 &&
		    strstr(error, "password does not unlock") != NULL);
	test_assert(popvault_keystore_rotate(dual, "p", &right, pk3,
					     &error) == 0);
	right.master = NULL;
	test_assert(load_count(dual, "p", &right, &error) == 2);

	t_array_init(&infos, 4);
	test_assert(popvault_keystore_list(keys, pool_datastack_create(),
					   &infos, &rid, &error) == 0);
	test_assert(array_count(&infos) == 2 && rid == NULL);
	array_foreach(&infos, info) {
		test_assert(info->password && !info->master &&
			    !info->recovery && info->created > 0);
		/* the rotated-to key is current */
		popvault_key_id(pk2, key_id);
		test_assert(info->current == (strcmp(info->key_id,
			binary_to_hex(key_id, sizeof(key_id))) == 0));
	}
	test_end();
}

static void test_keystore_recovery(void)
{
	const char *keys = t_strconcat(tmpdir, "/rc/.popvault/keys", NULL);
	unsigned char rk[POPVAULT_RECOVERY_KEY_SIZE];
	unsigned char rk2[POPVAULT_RECOVERY_KEY_SIZE];
	unsigned char rk_parsed[POPVAULT_RECOVERY_KEY_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE];
	struct popvault_key_secrets pw, rec, rec_old, forgotten;
	ARRAY_TYPE(popvault_key_info) infos;
	const struct popvault_key_info *info;
	const char *error, *rid, *rid2, *text;
	bool created;

	test_begin("popvault key store: recovery");
	i_zero(&pw); pw.password = "old";
	test_assert(popvault_keystore_get_current(keys, "r", &pw, pk,
						  &created, &error) == 0);
	test_assert(popvault_keystore_set_recovery(keys, "r", &pw, rk, &rid,
						   &error) == 0);
	test_assert(popvault_keystore_publish_recovery(keys, rk, &error) == 0);
	rid = t_strdup(rid);
	text = popvault_recovery_key_format(rk);
	test_assert(strncmp(text, "pvrk1-", 6) == 0 && strlen(text) == 77);
	test_assert(popvault_recovery_key_parse(text, rk_parsed, &error) == 0 &&
		    memcmp(rk, rk_parsed, sizeof(rk)) == 0);
	test_assert(popvault_recovery_key_parse("pvrk1-00ff", rk_parsed,
						&error) < 0);

	/* a key made after the recovery key exists is sealed to it too */
	test_assert(popvault_keystore_rotate(keys, "r", &pw, pk, &error) == 0);
	i_zero(&rec); rec.recovery = rk;
	test_assert(load_count(keys, "r", &rec, &error) == 2);

	/* forgotten password: reset with the recovery key */
	i_zero(&forgotten); forgotten.password = "forgotten";
	test_assert(popvault_keystore_set_password(keys, "r", &forgotten,
		"new", &error) < 0);
	test_assert(popvault_keystore_set_password(keys, "r", &rec,
		"new", &error) == 0);
	pw.password = "new";
	test_assert(load_count(keys, "r", &pw, &error) == 2);

	/* a new recovery key replaces the old one, but only once it has
	   been shown (published): until then the old one opens every key,
	   and a run that never got that far leaves no seal behind */
	test_assert(popvault_keystore_set_recovery(keys, "r", &pw, rk2, &rid2,
						   &error) == 0);
	i_zero(&rec_old); rec_old.recovery = rk;
	test_assert(load_count(keys, "r", &rec_old, &error) == 2);
	test_assert(popvault_keystore_set_recovery(keys, "r", &pw, rk2, &rid2,
						   &error) == 0 &&
		    strcmp(rid, rid2) != 0);
	test_assert(load_count(keys, "r", &rec_old, &error) == 2);
	t_array_init(&infos, 4);
	test_assert(popvault_keystore_list(keys, pool_datastack_create(),
					   &infos, &text, &error) == 0 &&
		    text != NULL && strcmp(text, rid) == 0);
	test_assert(popvault_keystore_publish_recovery(keys, rk2,
						       &error) == 0);
	test_assert(load_count(keys, "r", &rec_old, &error) == 0 &&
		    strstr(error, "not sealed to this recovery key") != NULL);
	rec.recovery = rk2;
	test_assert(load_count(keys, "r", &rec, &error) == 2);

	array_clear(&infos);
	test_assert(popvault_keystore_list(keys, pool_datastack_create(),
					   &infos, &rid, &error) == 0 &&
		    rid != NULL && strcmp(rid, rid2) == 0);
	array_foreach(&infos, info)
		test_assert(info->recovery && info->password);
	test_end();
}

/* Replaces the first "from" in the only key file in keys by "to". */
static void edit_key_file(const char *keys, const char *from, const char *to)
{
	const char *path = NULL, *data;
	string_t *str = t_str_new(1024);
	char buf[4096];
	ssize_t n;
	int fd;
	DIR *dir = opendir(keys);
	struct dirent *d;

	i_assert(dir != NULL);
	while ((d = readdir(dir)) != NULL) {
		if (strstr(d->d_name, ".key") != NULL && d->d_name[0] != '.')
			path = t_strconcat(keys, "/", d->d_name, NULL);
	}
	closedir(dir);
	i_assert(path != NULL);
	fd = open(path, O_RDONLY);
	i_assert(fd != -1);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		str_append_data(str, buf, n);
	i_close_fd(&fd);
	data = strstr(str_c(str), from);
	i_assert(data != NULL);
	data = t_strconcat(t_strdup_until(str_c(str), data), to,
			   data + strlen(from), NULL);
	fd = open(path, O_WRONLY | O_TRUNC);
	i_assert(fd != -1);
	if (write(fd, data, strlen(data)) < 0)
		i_fatal("write(%s) failed: %m", path);
	i_close_fd(&fd);
}

static void test_keystore_tampering(void)
{
	const char *keys = t_strconcat(tmpdir, "/tm/.popvault/keys", NULL);
	struct popvault_key_secrets pw;
	unsigned char pk[POPVAULT_PK_SIZE];
	const char *error;
	bool created;

	test_begin("popvault key store: edited password wrap");
	i_zero(&pw); pw.password = "secret";
	test_assert(popvault_keystore_get_current(keys, "t", &pw, pk,
						  &created, &error) == 0);
	test_assert(load_count(keys, "t", &pw, &error) == 1);
	/* the cost is bound to the wrap: an edited (lowered) cost fails */
	edit_key_file(keys, "argon2id13 1 ", "argon2id13 2 ");
	test_assert(load_count(keys, "t", &pw, &error) == 0);
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
		test_keystore_password,
		test_keystore_recovery,
		test_keystore_tampering,
		test_cleanup,
		NULL
	};
	int ret;

	if (mkdtemp(tmpdir) == NULL)
		i_fatal("mkdtemp() failed: %m");
	if (popvault_crypto_init() < 0)
		i_fatal("popvault_crypto_init() failed");
	/* the real cost (64 MiB) would take minutes under valgrind */
	popvault_pwhash_params.opslimit = 1;
	popvault_pwhash_params.memlimit = 8192;
	ret = test_run(test_functions);
	popvault_crypto_deinit();
	return ret;
}
