/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "test-common.h"
#include "popvault-settings.h"

struct kv {
	const char *key, *value;
};

struct fake_env {
	const struct kv *kvs;
};

static const char *fake_lookup(const char *name, void *context)
{
	struct fake_env *env = context;
	const struct kv *kv;

	for (kv = env->kvs; kv->key != NULL; kv++) {
		if (strcmp(kv->key, name) == 0)
			return kv->value;
	}
	return NULL;
}

static void
fake_iter(void *context, void (*cb)(const char *name, void *cb_context),
	  void *cb_context)
{
	struct fake_env *env = context;
	const struct kv *kv;

	for (kv = env->kvs; kv->key != NULL; kv++)
		cb(kv->key, cb_context);
}

static int parse_kvs(const struct kv *kvs, struct popvault_settings *set_r,
		     const char **error_r)
{
	struct fake_env env = { kvs };

	return popvault_settings_parse(pool_datastack_create(), fake_lookup,
				       fake_iter, &env, set_r, error_r);
}

static void test_duration(void)
{
	static const struct {
		const char *input;
		bool allow_never;
		int ret;
		unsigned int secs;
	} tests[] = {
		{ "0", FALSE, 0, 0 },
		{ "14d", FALSE, 0, 14*24*3600 },
		{ "14 days", FALSE, 0, 14*24*3600 },
		{ "12 hours", FALSE, 0, 12*3600 },
		{ "12h", FALSE, 0, 12*3600 },
		{ "30 mins", FALSE, 0, 30*60 },
		{ "90", FALSE, -1, 0 }, /* Dovecot wants units */
		{ "90s", FALSE, 0, 90 },
		{ "2w", FALSE, 0, 14*24*3600 },
		{ "never", TRUE, 0, POPVAULT_NEVER },
		{ "never", FALSE, -1, 0 },
		{ "", FALSE, -1, 0 },
		{ "-1", FALSE, -1, 0 },
		{ "14x", FALSE, -1, 0 },
		{ "abc", TRUE, -1, 0 },
		{ "1.5d", FALSE, -1, 0 },
		{ "99999999999999999999", FALSE, -1, 0 },
	};
	unsigned int i, secs;
	const char *error;

	test_begin("popvault_parse_duration");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		secs = 12345;
		error = NULL;
		int ret = popvault_parse_duration(tests[i].input,
						  tests[i].allow_never,
						  &secs, &error);
		test_assert_idx(ret == tests[i].ret, i);
		if (ret == 0)
			test_assert_idx(secs == tests[i].secs, i);
		else
			test_assert_idx(error != NULL, i);
	}
	test_end();
}

static void test_date(void)
{
	static const struct {
		const char *input;
		int ret;
		time_t t;
	} tests[] = {
		{ "2026-01-01", 0, 1767225600 },
		{ "1970-01-01", 0, 0 },
		{ "2026-01-01T12:00:00Z", 0, 1767268800 },
		{ "2026-01-01T14:00:00+02:00", 0, 1767268800 },
		{ "1767225600", 0, 1767225600 },
		{ "0", 0, 0 },
		{ "2026-02-30", -1, 0 },
		{ "2026-13-01", -1, 0 },
		{ "26-01-01", -1, 0 },
		{ "yesterday", -1, 0 },
		{ "", -1, 0 },
		{ "2026-01-01 junk", -1, 0 },
		{ "12abc", -1, 0 },
	};
	unsigned int i;
	time_t t;
	const char *error;

	test_begin("popvault_parse_date");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		t = 1;
		int ret = popvault_parse_date(tests[i].input, &t, &error);
		test_assert_idx(ret == tests[i].ret, i);
		if (ret == 0)
			test_assert_idx(t == tests[i].t, i);
	}
	test_end();
}

static void test_mailbox_name(void)
{
	static const struct {
		const char *name;
		int ret;
	} tests[] = {
		{ "Archive", 0 },
		{ "Sent Items", 0 },
		{ "Archive/2026", 0 },
		{ "Ärchiv", 0 },
		{ "", -1 },
		{ "INBOX", -1 },
		{ "inbox", -1 },
		{ "../etc", -1 },
		{ "a/../b", -1 },
		{ "/abs", -1 },
		{ "trail/", -1 },
		{ "a//b", -1 },
		{ "~root", -1 },
		{ ".hidden", -1 },
		{ "tab\there", -1 },
		{ "bad\xff", -1 },
	};
	unsigned int i;
	const char *error;

	test_begin("popvault_parse_mailbox_name");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		test_assert_idx(popvault_parse_mailbox_name(tests[i].name,
							    &error) ==
				tests[i].ret, i);
	}
	/* 255 bytes is fine, 256 is not */
	char long_name[257];
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[256] = '\0';
	test_assert(popvault_parse_mailbox_name(long_name, &error) == -1);
	long_name[255] = '\0';
	test_assert(popvault_parse_mailbox_name(long_name, &error) == 0);
	test_end();
}

static void test_settings_defaults(void)
{
	static const struct kv none[] = { { NULL, NULL } };
	struct popvault_settings set;
	const char *error;

	test_begin("popvault_settings_parse defaults");
	test_assert(parse_kvs(none, &set, &error) == 0);
	test_assert(!set.any_set);
	test_assert(set.after_retr.kind == POPVAULT_ACTION_KEEP);
	test_assert(set.on_dele.kind == POPVAULT_ACTION_EXPUNGE);
	test_assert(set.expire_action.kind == POPVAULT_ACTION_EXPUNGE);
	test_assert(set.retain_downloaded == POPVAULT_NEVER);
	test_assert(set.retain_unread == POPVAULT_NEVER);
	test_assert(set.login_delay == 0);
	test_assert(set.login_delay_mode == POPVAULT_LOGIN_DELAY_EMPTY);
	test_assert(set.list_window == 0);
	test_assert(set.list_since == 0);
	test_assert(!set.encrypt && !set.uidl_ledger && !set.retain_count_top);
	test_assert(set.cipher == POPVAULT_CIPHER_SETTING_AES256GCM);
	test_assert(set.dict_uri == NULL && set.master_key == NULL);
	test_end();
}

static void test_settings_valid(void)
{
	static const struct kv kvs[] = {
		{ "popvault_after_retr", "move:Archive" },
		{ "popvault_on_dele", "hide" },
		{ "popvault_list_window", "30d" },
		{ "popvault_retain_downloaded", "14d" },
		{ "popvault_retain_unread", "90 days" },
		{ "popvault_retain_count_top", "yes" },
		{ "popvault_expire_action", "move:Trash" },
		{ "popvault_login_delay", "15 mins" },
		{ "popvault_login_delay_mode", "refuse" },
		{ "popvault_dict", "redis:host=127.0.0.1:port=6379" },
		{ "popvault_uidl_ledger", "yes" },
		{ "popvault_encrypt", "yes" },
		{ "popvault_cipher", "xchacha20-poly1305" },
		{ "popvault_master_key", "/etc/dovecot/popvault.key" },
		{ "popvault_require_encrypted", "no" },
		{ "popvault_key_password", "secret" },
		{ NULL, NULL }
	};
	struct popvault_settings set;
	const char *error;

	test_begin("popvault_settings_parse valid");
	test_assert(parse_kvs(kvs, &set, &error) == 0);
	test_assert(set.any_set);
	test_assert(set.after_retr.kind == POPVAULT_ACTION_MOVE &&
		    strcmp(set.after_retr.mailbox, "Archive") == 0);
	test_assert(set.on_dele.kind == POPVAULT_ACTION_HIDE);
	test_assert(set.list_window == 30*24*3600);
	test_assert(set.retain_downloaded == 14*24*3600);
	test_assert(set.retain_unread == 90*24*3600);
	test_assert(set.retain_count_top);
	test_assert(set.expire_action.kind == POPVAULT_ACTION_MOVE &&
		    strcmp(set.expire_action.mailbox, "Trash") == 0);
	test_assert(set.login_delay == 15*60);
	test_assert(set.login_delay_mode == POPVAULT_LOGIN_DELAY_REFUSE);
	test_assert(strcmp(set.dict_uri, "redis:host=127.0.0.1:port=6379") == 0);
	test_assert(set.uidl_ledger && set.encrypt && !set.require_encrypted);
	test_assert(set.cipher == POPVAULT_CIPHER_SETTING_XCHACHA20POLY1305);
	test_assert(strcmp(set.master_key, "/etc/dovecot/popvault.key") == 0);
	test_assert(strcmp(set.key_password, "secret") == 0);
	test_end();
}

static void test_settings_invalid(void)
{
	/* each row: one bad setting; the error must name setting and value */
	static const struct kv tests[][2] = {
		{ { "popvault_after_retr", "expunge" }, { NULL, NULL } },
		{ { "popvault_after_retr", "move:" }, { NULL, NULL } },
		{ { "popvault_after_retr", "move:../x" }, { NULL, NULL } },
		{ { "popvault_after_retr", "Delete" }, { NULL, NULL } },
		{ { "popvault_on_dele", "delete" }, { NULL, NULL } },
		{ { "popvault_on_dele", "move:INBOX" }, { NULL, NULL } },
		{ { "popvault_expire_action", "hide" }, { NULL, NULL } },
		{ { "popvault_expire_action", "keep" }, { NULL, NULL } },
		{ { "popvault_list_since", "last tuesday" }, { NULL, NULL } },
		{ { "popvault_list_window", "never" }, { NULL, NULL } },
		{ { "popvault_retain_downloaded", "14x" }, { NULL, NULL } },
		{ { "popvault_retain_unread", "-5" }, { NULL, NULL } },
		{ { "popvault_login_delay", "soon" }, { NULL, NULL } },
		{ { "popvault_login_delay_mode", "Refuse" }, { NULL, NULL } },
		{ { "popvault_login_delay_mode", "queue" }, { NULL, NULL } },
		{ { "popvault_uidl_ledger", "maybe" }, { NULL, NULL } },
		{ { "popvault_encrypt", "true" }, { NULL, NULL } },
		{ { "popvault_cipher", "rot13" }, { NULL, NULL } },
		{ { "popvault_retain_count_top", "2" }, { NULL, NULL } },
	};
	struct popvault_settings set;
	const char *error;
	unsigned int i;

	test_begin("popvault_settings_parse invalid");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		error = NULL;
		test_assert_idx(parse_kvs(tests[i], &set, &error) == -1, i);
		test_assert_idx(error != NULL &&
				strstr(error, tests[i][0].key) != NULL &&
				strstr(error, tests[i][0].value) != NULL, i);
	}
	test_end();
}

static void test_settings_unknown(void)
{
	static const struct kv kvs[] = {
		{ "popvault_afer_retr", "delete" },
		{ NULL, NULL }
	};
	struct popvault_settings set;
	const char *error = NULL;

	test_begin("popvault_settings_parse unknown setting");
	test_assert(parse_kvs(kvs, &set, &error) == -1);
	test_assert(error != NULL &&
		    strstr(error, "popvault_afer_retr") != NULL);
	test_end();
}

static void test_roundtrip_strings(void)
{
	static const char *const actions[] = {
		"keep", "delete", "hide", "move:Archive/2026",
	};
	struct popvault_action action;
	unsigned int i, mask = ~0U;
	const char *error;

	test_begin("popvault action/duration to string");
	for (i = 0; i < N_ELEMENTS(actions); i++) {
		test_assert_idx(popvault_parse_action(actions[i], mask,
						      pool_datastack_create(),
						      &action, &error) == 0, i);
		test_assert_idx(strcmp(popvault_action_to_str(&action),
				       actions[i]) == 0, i);
	}
	test_assert(strcmp(popvault_duration_to_str(POPVAULT_NEVER),
			   "never") == 0);
	test_assert(strcmp(popvault_duration_to_str(14*24*3600), "14d") == 0);
	test_assert(strcmp(popvault_duration_to_str(7200), "2h") == 0);
	test_assert(strcmp(popvault_duration_to_str(0), "0s") == 0);
	test_assert(strcmp(popvault_duration_to_str(61), "61s") == 0);
	/* the names table has every setting exactly once */
	for (i = 0; popvault_setting_name(i) != NULL; i++) ;
	test_assert(i == 19);
	test_assert(strcmp(popvault_login_delay_mode_to_str(
		POPVAULT_LOGIN_DELAY_REFUSE), "refuse") == 0);
	test_assert(strcmp(popvault_login_delay_mode_to_str(
		POPVAULT_LOGIN_DELAY_EMPTY), "empty") == 0);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_duration,
		test_date,
		test_mailbox_name,
		test_settings_defaults,
		test_settings_valid,
		test_settings_invalid,
		test_settings_unknown,
		test_roundtrip_strings,
		NULL
	};
	return test_run(test_functions);
}
