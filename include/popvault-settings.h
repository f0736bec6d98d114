#ifndef POPVAULT_SETTINGS_H
#define POPVAULT_SETTINGS_H

/* Every popvault_* setting is declared, parsed and validated in
   popvault-settings.c and nowhere else. Values come from plugin {} and are
   overridden per user by userdb extra fields (passwd-file, SQL, LDAP). */

#define POPVAULT_SETTING_PREFIX "popvault_"
/* Durations use this for "never"; every duration fits in unsigned int. */
#define POPVAULT_NEVER ((unsigned int)-1)
#define POPVAULT_MAILBOX_NAME_MAX_LEN 255

enum popvault_action_kind {
	POPVAULT_ACTION_KEEP = 0,
	POPVAULT_ACTION_DELETE,
	POPVAULT_ACTION_EXPUNGE,
	POPVAULT_ACTION_HIDE,
	POPVAULT_ACTION_MOVE,
};

struct popvault_action {
	enum popvault_action_kind kind;
	/* only for POPVAULT_ACTION_MOVE */
	const char *mailbox;
};

enum popvault_cipher_setting {
	POPVAULT_CIPHER_SETTING_AES256GCM = 1,
	POPVAULT_CIPHER_SETTING_XCHACHA20POLY1305 = 2,
};

/* What a POP3 login inside popvault_login_delay gets */
enum popvault_login_delay_mode {
	/* logged in, an empty maildrop: clients see "no new mail" */
	POPVAULT_LOGIN_DELAY_EMPTY = 0,
	/* RFC 2449's -ERR [LOGIN-DELAY] after PASS */
	POPVAULT_LOGIN_DELAY_REFUSE,
};

struct popvault_settings {
	struct popvault_action after_retr;
	struct popvault_action on_dele;
	/* 0 = unset */
	time_t list_since;
	/* seconds; 0 = list everything */
	unsigned int list_window;

	/* seconds or POPVAULT_NEVER */
	unsigned int retain_downloaded;
	unsigned int retain_unread;
	bool retain_count_top;
	struct popvault_action expire_action;
	unsigned int login_delay;
	enum popvault_login_delay_mode login_delay_mode;
	/* NULL = default file dict in the user's home */
	const char *dict_uri;
	bool uidl_ledger;

	bool encrypt;
	enum popvault_cipher_setting cipher;
	const char *master_key;
	bool require_encrypted;
	const char *key_password;
	/* let an FTS index, or Dovecot's temporary files on a disk,
	   hold the plaintext of a user with encrypted mail
	   (popvault-crypt-leaks.c) */
	bool allow_fts;
	bool allow_disk_temp;

	/* TRUE when at least one popvault_* setting was present */
	bool any_set;
};

/* Returns the value of a setting, or NULL when it is not set. */
typedef const char *
popvault_setting_lookup_t(const char *name, void *context);
/* Calls cb for every popvault_* setting name present (to catch typos). */
typedef void
popvault_setting_iter_t(void *context,
			void (*cb)(const char *name, void *cb_context),
			void *cb_context);

/* Parse every popvault_* setting. Returns 0 on success, -1 with error_r
   naming the setting and value when one is invalid or unknown. Strings are
   allocated from pool. */
int popvault_settings_parse(pool_t pool, popvault_setting_lookup_t *lookup,
			    popvault_setting_iter_t *iter, void *context,
			    struct popvault_settings *set_r,
			    const char **error_r);

/* Exposed for the unit tests and the doveadm status command. */
int popvault_parse_duration(const char *value, bool allow_never,
			    unsigned int *secs_r, const char **error_r);
int popvault_parse_date(const char *value, time_t *time_r,
			const char **error_r);
int popvault_parse_action(const char *value, unsigned int allowed_mask,
			  pool_t pool, struct popvault_action *action_r,
			  const char **error_r);
int popvault_parse_mailbox_name(const char *name, const char **error_r);

const char *popvault_action_to_str(const struct popvault_action *action);
const char *
popvault_login_delay_mode_to_str(enum popvault_login_delay_mode mode);
const char *popvault_duration_to_str(unsigned int secs);

/* A field of the userdb reply a session was made from (mail_user's
   userdb_fields): NULL when absent, "" when it came without a value (how
   Dovecot sends an empty one; as a setting it then reads "yes"). */
const char *popvault_userdb_field(const char *const *userdb_fields,
				  const char *name);

/* The idx'th setting name, NULL past the last: lets docs and tests walk the
   one table instead of keeping their own lists. */
const char *popvault_setting_name(unsigned int idx);

#endif
