/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Every value parser popvault runs on admin input (userdb fields and
   plugin {} settings): the first byte picks the parser, the rest is the
   value; parser 5 parses "name=value" lines as a whole user's settings,
   so unknown names and every table entry are reached (on Dovecot 2.4
   also through the 2.4 settings declaration's check). */

#include "lib.h"
#include "str.h"
#include "popvault-settings.h"
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc ATTR_UNUSED, char ***argv ATTR_UNUSED)
{
	fuzz_lib_init();
	return 0;
}

struct fuzz_env {
	const char *const *lines;
};

static const char *fuzz_lookup(const char *name, void *context)
{
	struct fuzz_env *env = context;
	size_t len = strlen(name);

	for (const char *const *l = env->lines; *l != NULL; l++) {
		if (strncmp(*l, name, len) == 0 && (*l)[len] == '=')
			return *l + len + 1;
	}
	return NULL;
}

static void
fuzz_iter(void *context, void (*cb)(const char *name, void *cb_context),
	  void *cb_context)
{
	struct fuzz_env *env = context;
	const char *eq;

	for (const char *const *l = env->lines; *l != NULL; l++) {
		eq = strchr(*l, '=');
		if (eq != NULL && strncmp(*l, "popvault_", 9) == 0)
			cb(t_strdup_until(*l, eq), cb_context);
	}
}

#if DOVECOT_PREREQ(2, 4, 0)
/* Dovecot 2.4: the same lines also go through the declaration the config
   process and settings_get() use, included like fuzz-keys.c includes the
   key store: its constructor builds the table, its check_func validates
   (an empty value is unset there). */
#  include "../../plugin/compat/popvault-settings-24.c"

static void fuzz_settings_24(struct fuzz_env *env)
{
	struct popvault_24_settings set24;
	const char *name, *value, *error;
	unsigned int i;

	i_zero(&set24);
	for (i = 0; (name = popvault_setting_name(i)) != NULL; i++) {
		value = fuzz_lookup(name, env);
		set24.values[i] = value == NULL ? "" : value;
	}
	(void)popvault_setting_parser_info.check_func(
		&set24, pool_datastack_create(), &error);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct popvault_settings set;
	struct popvault_action action;
	struct fuzz_env env;
	const char *value, *error;
	unsigned int secs;
	time_t t;

	if (size == 0)
		return 0;
	T_BEGIN {
		/* settings arrive as C strings: a NUL ends them */
		value = t_strndup(data + 1, size - 1);
		switch (data[0] % 6) {
		case 0:
			(void)popvault_parse_duration(value, data[0] & 0x80,
						      &secs, &error);
			break;
		case 1:
			(void)popvault_parse_date(value, &t, &error);
			break;
		case 2:
			(void)popvault_parse_action(value, data[0] >> 3,
						    pool_datastack_create(),
						    &action, &error);
			break;
		case 3:
			(void)popvault_parse_mailbox_name(value, &error);
			break;
		case 4:
			if (popvault_parse_duration(value, TRUE, &secs,
						    &error) == 0)
				(void)popvault_duration_to_str(secs);
			break;
		case 5:
			env.lines = t_strsplit(value, "\n");
			(void)popvault_settings_parse(pool_datastack_create(),
						      fuzz_lookup, fuzz_iter,
						      &env, &set, &error);
#if DOVECOT_PREREQ(2, 4, 0)
			fuzz_settings_24(&env);
#endif
			break;
		}
	} T_END;
	return 0;
}
