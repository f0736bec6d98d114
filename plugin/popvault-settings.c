/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "unichar.h"
#include "iso8601-date.h"
#include "settings-parser.h"
#include "utc-mktime.h"
#include "popvault-settings.h"
#include "popvault-compat-macros.h"

#include <time.h>

enum popvault_setting_type {
	PV_TYPE_ACTION,
	PV_TYPE_DURATION,
	PV_TYPE_DURATION_OR_NEVER,
	PV_TYPE_DATE,
	PV_TYPE_BOOL,
	PV_TYPE_STRING,
	PV_TYPE_CIPHER,
	PV_TYPE_LOGIN_DELAY_MODE,
};

#define ACTION_BIT(kind) (1U << (kind))

struct popvault_setting_def {
	const char *name;
	enum popvault_setting_type type;
	size_t offset;
	/* parsed exactly like a user-supplied value; NULL = leave zeroed */
	const char *default_value;
	/* PV_TYPE_ACTION: which actions the setting accepts */
	unsigned int allowed_actions;
};

#define DEF(name, type, field, def, allowed) \
	{ POPVAULT_SETTING_PREFIX name, type, \
	  offsetof(struct popvault_settings, field), def, allowed }

static const struct popvault_setting_def popvault_setting_defs[] = {
	DEF("after_retr", PV_TYPE_ACTION, after_retr, "keep",
	    ACTION_BIT(POPVAULT_ACTION_KEEP) |
	    ACTION_BIT(POPVAULT_ACTION_DELETE) |
	    ACTION_BIT(POPVAULT_ACTION_HIDE) |
	    ACTION_BIT(POPVAULT_ACTION_MOVE)),
	DEF("on_dele", PV_TYPE_ACTION, on_dele, "expunge",
	    ACTION_BIT(POPVAULT_ACTION_EXPUNGE) |
	    ACTION_BIT(POPVAULT_ACTION_HIDE) |
	    ACTION_BIT(POPVAULT_ACTION_KEEP) |
	    ACTION_BIT(POPVAULT_ACTION_MOVE)),
	DEF("list_since", PV_TYPE_DATE, list_since, NULL, 0),
	DEF("list_window", PV_TYPE_DURATION, list_window, "0", 0),
	DEF("retain_downloaded", PV_TYPE_DURATION_OR_NEVER, retain_downloaded,
	    "never", 0),
	DEF("retain_unread", PV_TYPE_DURATION_OR_NEVER, retain_unread,
	    "never", 0),
	DEF("retain_count_top", PV_TYPE_BOOL, retain_count_top, "no", 0),
	DEF("expire_action", PV_TYPE_ACTION, expire_action, "expunge",
	    ACTION_BIT(POPVAULT_ACTION_EXPUNGE) |
	    ACTION_BIT(POPVAULT_ACTION_MOVE)),
	DEF("login_delay", PV_TYPE_DURATION, login_delay, "0", 0),
	DEF("login_delay_mode", PV_TYPE_LOGIN_DELAY_MODE, login_delay_mode,
	    "empty", 0),
	DEF("dict", PV_TYPE_STRING, dict_uri, NULL, 0),
	DEF("uidl_ledger", PV_TYPE_BOOL, uidl_ledger, "no", 0),
	DEF("encrypt", PV_TYPE_BOOL, encrypt, "no", 0),
	DEF("cipher", PV_TYPE_CIPHER, cipher, "aes-256-gcm", 0),
	DEF("master_key", PV_TYPE_STRING, master_key, NULL, 0),
	DEF("require_encrypted", PV_TYPE_BOOL, require_encrypted, "no", 0),
	DEF("key_password", PV_TYPE_STRING, key_password, NULL, 0),
	DEF("allow_fts", PV_TYPE_BOOL, allow_fts, "no", 0),
	DEF("allow_disk_temp", PV_TYPE_BOOL, allow_disk_temp, "no", 0),
};

static const struct {
	const char *word;
	enum popvault_action_kind kind;
} action_words[] = {
	{ "keep", POPVAULT_ACTION_KEEP },
	{ "delete", POPVAULT_ACTION_DELETE },
	{ "expunge", POPVAULT_ACTION_EXPUNGE },
	{ "hide", POPVAULT_ACTION_HIDE },
};
#define MOVE_PREFIX "move:"

static const char *allowed_actions_str(unsigned int mask)
{
	string_t *str = t_str_new(64);
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(action_words); i++) {
		if ((mask & ACTION_BIT(action_words[i].kind)) == 0)
			continue;
		if (str_len(str) > 0)
			str_append(str, ", ");
		str_append(str, action_words[i].word);
	}
	if ((mask & ACTION_BIT(POPVAULT_ACTION_MOVE)) != 0) {
		if (str_len(str) > 0)
			str_append(str, ", ");
		str_append(str, MOVE_PREFIX"<mailbox>");
	}
	return str_c(str);
}

int popvault_parse_mailbox_name(const char *name, const char **error_r)
{
	const char *p;
	size_t len = strlen(name);

	/* The namespace separator is only known once namespaces exist, so
	   this rejects what is wrong under any separator; the pop3 session
	   verifies the name against the real namespace before it trusts it. */
	if (len == 0) {
		*error_r = "mailbox name is empty";
		return -1;
	}
	if (len > POPVAULT_MAILBOX_NAME_MAX_LEN) {
		*error_r = t_strdup_printf(
			"mailbox name is longer than %u bytes",
			POPVAULT_MAILBOX_NAME_MAX_LEN);
		return -1;
	}
	if (!uni_utf8_str_is_valid(name)) {
		*error_r = "mailbox name is not valid UTF-8";
		return -1;
	}
	for (p = name; *p != '\0'; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			*error_r = "mailbox name contains a control character";
			return -1;
		}
	}
	if (name[0] == '/' || name[0] == '.' || name[0] == '~' ||
	    name[len-1] == '/' || name[len-1] == '.' ||
	    strstr(name, "..") != NULL || strstr(name, "//") != NULL) {
		*error_r = "mailbox name must not start or end with '/', '.' "
			"or '~' nor contain '..' or '//'";
		return -1;
	}
	if (strcasecmp(name, "INBOX") == 0) {
		*error_r = "mailbox must not be INBOX itself";
		return -1;
	}
	return 0;
}

int popvault_parse_action(const char *value, unsigned int allowed_mask,
			  pool_t pool, struct popvault_action *action_r,
			  const char **error_r)
{
	unsigned int i;

	i_zero(action_r);
	if (str_begins_with(value, MOVE_PREFIX) &&
	    (allowed_mask & ACTION_BIT(POPVAULT_ACTION_MOVE)) != 0) {
		const char *mailbox = value + strlen(MOVE_PREFIX), *error;

		if (popvault_parse_mailbox_name(mailbox, &error) < 0) {
			*error_r = t_strdup_printf("invalid move target: %s",
						   error);
			return -1;
		}
		action_r->kind = POPVAULT_ACTION_MOVE;
		action_r->mailbox = p_strdup(pool, mailbox);
		return 0;
	}
	for (i = 0; i < N_ELEMENTS(action_words); i++) {
		if (strcmp(value, action_words[i].word) == 0 &&
		    (allowed_mask & ACTION_BIT(action_words[i].kind)) != 0) {
			action_r->kind = action_words[i].kind;
			return 0;
		}
	}
	*error_r = t_strdup_printf("unknown action (allowed: %s)",
				   allowed_actions_str(allowed_mask));
	return -1;
}

int popvault_parse_duration(const char *value, bool allow_never,
			    unsigned int *secs_r, const char **error_r)
{
	const char *error;

	if (strcmp(value, "never") == 0) {
		if (!allow_never) {
			*error_r = "'never' is not allowed here";
			return -1;
		}
		*secs_r = POPVAULT_NEVER;
		return 0;
	}
	/* Dovecot's own interval syntax: "14d", "12 hours", "30 mins", "0" */
	if (popvault_parse_interval(value, secs_r, &error) < 0) {
		*error_r = error;
		return -1;
	}
	if (*secs_r == POPVAULT_NEVER) {
		*error_r = "duration too large";
		return -1;
	}
	return 0;
}

static bool parse_date_only(const char *value, time_t *time_r)
{
	struct tm tm;
	unsigned int year, month, day;

	/* strict YYYY-MM-DD; ISO 8601 date-time goes through Dovecot's parser */
	if (strlen(value) != 10 || value[4] != '-' || value[7] != '-')
		return FALSE;
	if (str_to_uint(t_strndup(value, 4), &year) < 0 ||
	    str_to_uint(t_strndup(value + 5, 2), &month) < 0 ||
	    str_to_uint(t_strndup(value + 8, 2), &day) < 0)
		return FALSE;
	if (year < 1970 || month < 1 || month > 12 || day < 1 || day > 31)
		return FALSE;
	i_zero(&tm);
	tm.tm_year = year - 1900;
	tm.tm_mon = month - 1;
	tm.tm_mday = day;
	*time_r = utc_mktime(&tm);
	if (*time_r == (time_t)-1)
		return FALSE;
	/* utc_mktime() normalizes Feb 30 into March: refuse such dates */
	return gmtime(time_r)->tm_mday == (int)day;
}

int popvault_parse_date(const char *value, time_t *time_r,
			const char **error_r)
{
	int tz;

	if (value[0] >= '0' && value[0] <= '9' && strchr(value, '-') == NULL) {
		uintmax_t secs;

		if (str_to_uintmax(value, &secs) < 0 || secs > INT32_MAX*2ULL) {
			*error_r = "invalid UNIX timestamp";
			return -1;
		}
		*time_r = (time_t)secs;
		return 0;
	}
	if (parse_date_only(value, time_r))
		return 0;
	if (iso8601_date_parse((const unsigned char *)value, strlen(value),
			       time_r, &tz))
		return 0;
	*error_r = "not an ISO 8601 date (YYYY-MM-DD), date-time "
		"(YYYY-MM-DDThh:mm:ssZ) or UNIX timestamp";
	return -1;
}

static int parse_bool(const char *value, bool *bool_r, const char **error_r)
{
	/* the same words Dovecot's own settings parser accepts */
	if (strcasecmp(value, "yes") == 0 || strcasecmp(value, "y") == 0 ||
	    strcmp(value, "1") == 0)
		*bool_r = TRUE;
	else if (strcasecmp(value, "no") == 0)
		*bool_r = FALSE;
	else {
		*error_r = "invalid boolean (use yes or no)";
		return -1;
	}
	return 0;
}

struct setting_word {
	const char *word;
	int value;
};

static const struct setting_word cipher_words[] = {
	{ "aes-256-gcm", POPVAULT_CIPHER_SETTING_AES256GCM },
	{ "xchacha20-poly1305", POPVAULT_CIPHER_SETTING_XCHACHA20POLY1305 },
};
static const struct setting_word login_delay_mode_words[] = {
	{ "empty", POPVAULT_LOGIN_DELAY_EMPTY },
	{ "refuse", POPVAULT_LOGIN_DELAY_REFUSE },
};

/* One of a fixed set of words into an enum field (stored as int) */
static int
parse_word(const char *value, const struct setting_word *words,
	   unsigned int count, const char *what, int *value_r,
	   const char **error_r)
{
	string_t *allowed = t_str_new(64);
	unsigned int i;

	for (i = 0; i < count; i++) {
		if (strcmp(value, words[i].word) == 0) {
			*value_r = words[i].value;
			return 0;
		}
		str_printfa(allowed, "%s%s", i == 0 ? "" : ", ",
			    words[i].word);
	}
	*error_r = t_strdup_printf("unknown %s (allowed: %s)", what,
				   str_c(allowed));
	return -1;
}

static int
parse_one(pool_t pool, const struct popvault_setting_def *def,
	  const char *value, struct popvault_settings *set,
	  const char **error_r)
{
	void *ptr = PTR_OFFSET(set, def->offset);

	switch (def->type) {
	case PV_TYPE_ACTION:
		return popvault_parse_action(value, def->allowed_actions, pool,
					     ptr, error_r);
	case PV_TYPE_DURATION:
		return popvault_parse_duration(value, FALSE, ptr, error_r);
	case PV_TYPE_DURATION_OR_NEVER:
		return popvault_parse_duration(value, TRUE, ptr, error_r);
	case PV_TYPE_DATE:
		return popvault_parse_date(value, ptr, error_r);
	case PV_TYPE_BOOL:
		return parse_bool(value, ptr, error_r);
	case PV_TYPE_CIPHER:
		return parse_word(value, cipher_words, N_ELEMENTS(cipher_words),
				  "cipher", ptr, error_r);
	case PV_TYPE_LOGIN_DELAY_MODE:
		return parse_word(value, login_delay_mode_words,
				  N_ELEMENTS(login_delay_mode_words),
				  "mode", ptr, error_r);
	case PV_TYPE_STRING:
		if (value[0] == '\0') {
			*error_r = "empty value";
			return -1;
		}
		*(const char **)ptr = p_strdup(pool, value);
		return 0;
	}
	i_unreached();
}

static const struct popvault_setting_def *setting_def_find(const char *name)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(popvault_setting_defs); i++) {
		if (strcmp(popvault_setting_defs[i].name, name) == 0)
			return &popvault_setting_defs[i];
	}
	return NULL;
}

struct unknown_ctx {
	const char *first_unknown;
};

static void check_known(const char *name, void *context)
{
	struct unknown_ctx *ctx = context;

	if (ctx->first_unknown == NULL && setting_def_find(name) == NULL)
		ctx->first_unknown = t_strdup(name);
}

int popvault_settings_parse(pool_t pool, popvault_setting_lookup_t *lookup,
			    popvault_setting_iter_t *iter, void *context,
			    struct popvault_settings *set_r,
			    const char **error_r)
{
	struct unknown_ctx unknown = { NULL };
	unsigned int i;
	const char *error;

	i_zero(set_r);
	/* A typo such as popvault_afer_retr would otherwise silently run
	   the user with the default policy. */
	if (iter != NULL) {
		iter(context, check_known, &unknown);
		if (unknown.first_unknown != NULL) {
			*error_r = t_strdup_printf(
				"Unknown setting %s (typo?)",
				unknown.first_unknown);
			return -1;
		}
	}
	for (i = 0; i < N_ELEMENTS(popvault_setting_defs); i++) {
		const struct popvault_setting_def *def =
			&popvault_setting_defs[i];
		const char *value = lookup(def->name, context);

		if (value != NULL) {
			set_r->any_set = TRUE;
			if (parse_one(pool, def, value, set_r, &error) < 0) {
				*error_r = t_strdup_printf(
					"Invalid %s=%s: %s",
					def->name, value, error);
				return -1;
			}
		} else if (def->default_value != NULL) {
			if (parse_one(pool, def, def->default_value,
				      set_r, &error) < 0)
				i_panic("popvault: bad default %s=%s: %s",
					def->name, def->default_value, error);
		}
	}
	return 0;
}

const char *popvault_setting_name(unsigned int idx)
{
	return idx < N_ELEMENTS(popvault_setting_defs) ?
		popvault_setting_defs[idx].name : NULL;
}

const char *popvault_action_to_str(const struct popvault_action *action)
{
	unsigned int i;

	if (action->kind == POPVAULT_ACTION_MOVE)
		return t_strconcat(MOVE_PREFIX, action->mailbox, NULL);
	for (i = 0; i < N_ELEMENTS(action_words); i++) {
		if (action_words[i].kind == action->kind)
			return action_words[i].word;
	}
	i_unreached();
}

const char *
popvault_login_delay_mode_to_str(enum popvault_login_delay_mode mode)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(login_delay_mode_words); i++) {
		if (login_delay_mode_words[i].value == (int)mode)
			return login_delay_mode_words[i].word;
	}
	i_unreached();
}

const char *popvault_duration_to_str(unsigned int secs)
{
	if (secs == POPVAULT_NEVER)
		return "never";
	if (secs != 0 && secs % (24*3600) == 0)
		return t_strdup_printf("%ud", secs / (24*3600));
	if (secs != 0 && secs % 3600 == 0)
		return t_strdup_printf("%uh", secs / 3600);
	return t_strdup_printf("%us", secs);
}

const char *popvault_userdb_field(const char *const *userdb_fields,
				  const char *name)
{
	const char *const *field;
	size_t len = strlen(name);

	if (userdb_fields == NULL)
		return NULL;
	for (field = userdb_fields; *field != NULL; field++) {
		if (strncmp(*field, name, len) != 0)
			continue;
		if ((*field)[len] == '\0')
			return "";
		if ((*field)[len] == '=')
			return *field + len + 1;
	}
	return NULL;
}
