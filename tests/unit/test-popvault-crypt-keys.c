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
#include <sys/inotify.h>

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
	/* the value itself is the key: what Dovecot's config parser
	   makes of `popvault_master_key = </file` (issue 15) */
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		memset(key, 0xff, sizeof(key));
		test_assert_idx((popvault_master_key_read(tests[i].content,
			key, &error) == 0) == tests[i].ok, i);
		if (tests[i].ok)
			test_assert_idx(key[0] == 0 && key[31] == 31, i);
		else {
			test_assert_idx(strstr(error, "popvault_master_key")
					!= NULL, i);
			/* never the value, not even a damaged key's */
			test_assert_idx(tests[i].content[0] == '\0' ||
				strstr(error, tests[i].content) == NULL, i);
		}
	}
	/* a path without "<" (plugin {} as a plain path) */
	path = write_file("master", tests[0].content);
	test_assert(popvault_master_key_read(path, key, &error) == 0 &&
		    key[31] == 31);
	/* a missing file below an existing directory is named ... */
	path = t_strconcat(tmpdir, "/missing.key", NULL);
	test_assert(popvault_master_key_read(path, key, &error) < 0 &&
		    strstr(error, path) != NULL &&
		    strstr(error, "No such file") != NULL);
	/* ... a directory too ... */
	test_assert(popvault_master_key_read(tmpdir, key, &error) < 0 &&
		    strstr(error, tmpdir) != NULL);
	/* ... and a path no key text can be ... */
	test_assert(popvault_master_key_read("/nonexistent/popvault.key",
					     key, &error) < 0 &&
		    strstr(error, "/nonexistent/popvault.key") != NULL);
	/* ... but not a value that may be a damaged key */
	test_assert(popvault_master_key_read("/nonexistent/key", key,
					     &error) < 0 &&
		    strstr(error, "/nonexistent") == NULL &&
		    strstr(error, "not logged") != NULL);
	test_assert(popvault_master_key_read("/AAECAwQFBgcICQoLDA0ODxAREh",
					     key, &error) < 0 &&
		    strstr(error, "AAECAw") == NULL);
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

/* Names of key files that appeared in or left keys since the watch
   began, read without blocking. */
static const char *key_file_events(int fd)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	const struct inotify_event *ev;
	string_t *str = t_str_new(64);
	ssize_t n, i;

	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (i = 0; i < n; i += sizeof(*ev) + ev->len) {
			ev = (const void *)(buf + i);
			if (ev->len > 0 && ev->name[0] != '.')
				str_printfa(str, "%s ", ev->name);
		}
	}
	return str_c(str);
}

static void test_keystore_create_race(void)
{
	const char *keys = t_strconcat(tmpdir, "/race/.popvault/keys", NULL);
	unsigned char master[POPVAULT_MASTER_KEY_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE], pk2[POPVAULT_PK_SIZE];
	struct popvault_key_secrets secrets, empty;
	const char *error;
	int fd;

	test_begin("popvault key store: racing creators publish one key pair");
	i_zero(&empty); empty.password = "";
	test_assert(popvault_keystore_create(keys, "r", &empty, pk,
					     &error) < 0 &&
		    strstr(error, "empty password") != NULL);
	test_assert(popvault_keystore_exists(keys, &error) == 0);

	memset(master, 5, sizeof(master));
	i_zero(&secrets); secrets.master = master;
	test_assert(popvault_keystore_create(keys, "r", &secrets, pk,
					     &error) == 1);
	/* A creator that comes second (it saw no "current" a moment ago)
	   must leave no trace: a key file that appears and goes again is
	   one a concurrent reader lists and then misses ("<id>.key is
	   missing"), failing its whole session. */
	fd = inotify_init1(IN_NONBLOCK);
	i_assert(fd != -1);
	i_assert(inotify_add_watch(fd, keys, IN_CREATE | IN_MOVED_TO |
				   IN_DELETE | IN_MOVED_FROM) != -1);
	test_assert(popvault_keystore_create(keys, "r", &secrets, pk2,
					     &error) == 0 &&
		    memcmp(pk, pk2, sizeof(pk)) == 0);
	test_assert_strcmp(key_file_events(fd), "");
	i_close_fd(&fd);
	test_assert(load_count(keys, "r", &secrets, &error) == 1);
	test_end();
}

static void test_keystore_public_mac(void)
{
	const char *keys = t_strconcat(tmpdir, "/mac/.popvault/keys", NULL);
	unsigned char master[POPVAULT_MASTER_KEY_SIZE];
	unsigned char other[POPVAULT_MASTER_KEY_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE], pk2[POPVAULT_PK_SIZE];
	struct popvault_key_secrets secrets, wrong, none;
	const char *error;
	bool created;

	test_begin("popvault key store: the master key vouches for current");
	memset(master, 3, sizeof(master));
	memset(other, 4, sizeof(other));
	i_zero(&secrets); secrets.master = master;
	i_zero(&wrong); wrong.master = other;
	i_zero(&none);
	test_assert(popvault_keystore_get_current(keys, "m", &secrets, pk,
						  &created, &error) == 0 &&
		    created);
	test_assert(popvault_keystore_get_current(keys, "m", &secrets, pk2,
						  &created, &error) == 0 &&
		    !created && memcmp(pk, pk2, sizeof(pk)) == 0);
	/* another master key, or the store under another user's name */
	test_assert(popvault_keystore_get_current(keys, "m", &wrong, pk2,
						  &created, &error) < 0 &&
		    strstr(error, "does not vouch") != NULL);
	test_assert(popvault_keystore_get_current(keys, "n", &secrets, pk2,
						  &created, &error) < 0 &&
		    strstr(error, "does not vouch") != NULL);
	/* password mode has nothing to check against */
	test_assert(popvault_keystore_get_current(keys, "n", &none, pk2,
						  &created, &error) == 0);
	test_end();
}

static void test_keystore_cache_key(void)
{
	unsigned char master[POPVAULT_MASTER_KEY_SIZE];
	unsigned char pk[POPVAULT_PK_SIZE], pk2[POPVAULT_PK_SIZE];
	unsigned char k1[POPVAULT_CACHE_KEY_SIZE], k2[POPVAULT_CACHE_KEY_SIZE];
	unsigned char k3[POPVAULT_CACHE_KEY_SIZE];
	const char *keys = t_strconcat(tmpdir, "/ck/.popvault/keys", NULL);
	const char *path = t_strconcat(keys, "/cache-key", NULL);
	struct popvault_key_secrets secrets;
	struct popvault_receiver *receiver, *empty;
	unsigned int count;
	const char *error;
	bool created;

	test_begin("popvault key store: the cache key");
	memset(master, 9, sizeof(master));
	i_zero(&secrets);
	secrets.master = master;
	test_assert(popvault_keystore_get_current(keys, "u", &secrets, pk,
						  &created, &error) == 0);
	receiver = popvault_receiver_create();
	test_assert(popvault_keystore_load_receiver(keys, "u", &secrets,
			receiver, &count, &error) == 0);
	/* made once, sealed to the public key, read back the same */
	test_assert(popvault_keystore_get_cache_key(keys, pk, receiver, k1,
						    &error) == 0);
	test_assert(popvault_keystore_get_cache_key(keys, pk, receiver, k2,
						    &error) == 0 &&
		    memcmp(k1, k2, sizeof(k1)) == 0);
	/* without the private key it does not open: a new key replaces it
	   (the old cache files become another generation) */
	empty = popvault_receiver_create();
	test_assert(popvault_keystore_get_cache_key(keys, pk, empty, k3,
						    &error) == 0 &&
		    memcmp(k1, k3, sizeof(k1)) != 0);
	popvault_receiver_free(&empty);
	test_assert(popvault_keystore_get_cache_key(keys, pk, receiver, k2,
						    &error) == 0 &&
		    memcmp(k3, k2, sizeof(k1)) == 0);
	/* a damaged file: replaced */
	write_file("ck/.popvault/keys/cache-key", "damaged");
	test_assert(popvault_keystore_get_cache_key(keys, pk, receiver, k2,
						    &error) == 0 &&
		    memcmp(k3, k2, sizeof(k1)) != 0);
	/* after rotation: sealed to the new key pair, a new key */
	test_assert(popvault_keystore_rotate(keys, "u", &secrets, pk2,
					     &error) == 0);
	popvault_receiver_free(&receiver);
	receiver = popvault_receiver_create();
	test_assert(popvault_keystore_load_receiver(keys, "u", &secrets,
			receiver, &count, &error) == 0 && count == 2);
	test_assert(popvault_keystore_get_cache_key(keys, pk2, receiver, k1,
						    &error) == 0 &&
		    memcmp(k1, k2, sizeof(k1)) != 0);
	test_assert(popvault_keystore_get_cache_key(keys, pk2, receiver, k3,
						    &error) == 0 &&
		    memcmp(k1, k3, sizeof(k1)) == 0);
	test_assert(access(path, F_OK) == 0);
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
		test_keystore_password,
		test_keystore_recovery,
		test_keystore_tampering,
		test_keystore_create_race,
		test_keystore_public_mac,
		test_keystore_cache_key,
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
