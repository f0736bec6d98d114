/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Dovecot 2.4 only: the declaration the config process reads
   (popvault-settings-24.c) names every setting of popvault-settings.c's
   table, and its check_func is popvault-settings.c's validation. */

#include "lib.h"
#include "settings-parser.h"
#include "test-common.h"
#include "popvault-settings.h"
#include "popvault-settings-24.h"

static const struct setting_define *define_find(const char *key)
{
	const struct setting_define *def;

	for (def = popvault_setting_parser_info.defines; def->key != NULL; def++) {
		if (strcmp(def->key, key) == 0)
			return def;
	}
	return NULL;
}

static void test_every_setting_declared(void)
{
	const struct popvault_24_settings *defaults =
		popvault_setting_parser_info.defaults;
	const struct setting_define *def;
	const char *name;
	unsigned int i, n = 0;

	test_begin("2.4 settings: every popvault_* name declared once");
	for (i = 0; (name = popvault_setting_name(i)) != NULL; i++) {
		def = define_find(name);
		test_assert_idx(def != NULL, i);
		if (def == NULL)
			continue;
		if (strcmp(name, "popvault_dict") == 0)
			test_assert(def->type == SET_FILTER_NAME);
		else if (strcmp(name, "popvault_key_password") == 0)
			test_assert(def->type == SET_STR_NOVARS);
		else {
			test_assert_idx(def->type == SET_STR, i);
			test_assert_idx(defaults->values[i] != NULL &&
					defaults->values[i][0] == '\0', i);
		}
	}
	for (def = popvault_setting_parser_info.defines; def->key != NULL; def++)
		n++;
	test_assert(n == i);
	test_end();
}

static void test_check_func_validates(void)
{
	static const struct {
		const char *name, *value, *error;
	} tests[] = {
		{ "popvault_after_retr", "hide", NULL },
		{ "popvault_after_retr", "shred",
		  "Invalid popvault_after_retr=shred: unknown action" },
		{ "popvault_retain_unread", "14d", NULL },
		{ "popvault_retain_unread", "14 fortnights",
		  "Invalid popvault_retain_unread=14 fortnights" },
		{ "popvault_on_dele", "move:../etc",
		  "Invalid popvault_on_dele=move:../etc: invalid move target" },
		{ "popvault_cipher", "rot13", "Invalid popvault_cipher=rot13" },
	};
	const struct popvault_24_settings *defaults =
		popvault_setting_parser_info.defaults;
	const char *error;
	unsigned int i, idx;
	pool_t pool = pool_alloconly_create("test settings", 1024);

	test_begin("2.4 settings: check_func is popvault_settings_parse()");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		struct popvault_24_settings set = *defaults;

		for (idx = 0; popvault_setting_name(idx) != NULL; idx++) {
			if (strcmp(popvault_setting_name(idx), tests[i].name) == 0)
				break;
		}
		set.values[idx] = tests[i].value;
		error = NULL;
		bool ok = popvault_setting_parser_info.check_func(&set, pool,
								  &error);
		test_assert_idx(ok == (tests[i].error == NULL), i);
		test_assert_idx(tests[i].error == NULL ||
				(error != NULL &&
				 str_begins_with(error, tests[i].error)), i);
	}
	pool_unref(&pool);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_every_setting_declared,
		test_check_func_validates,
		NULL
	};
	return test_run(test_functions);
}
