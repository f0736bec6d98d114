#ifndef POPVAULT_USER_H
#define POPVAULT_USER_H

#include "module-context.h"
#include "mail-user.h"
#include "popvault-settings.h"

struct popvault_user {
	union mail_user_module_context module_ctx;
	struct mail_user *user;
	/* parent of every popvault event of this user; log prefix
	   "popvault: " */
	struct event *event;
	struct popvault_settings set;
	/* opened on first use by popvault-dict.c */
	struct dict *dict;
	/* popvault_dict was looked up (dict is NULL when none is set) */
	bool dict_checked:1;
	/* loaded on first use by popvault-ledger.c */
	struct popvault_ledger *ledger;

	/* a POP3 session ran: sweep retention once the client is gone */
	bool sweep_after_session;
	/* locked keys refused this POP3 login: INBOX must not be opened;
	   the cause, for pop3's log line */
	const char *pop3_login_refused;
	/* a POP3 login inside popvault_login_delay: the session lists an
	   empty maildrop (both modes; "refuse" also ends it at once) */
	bool pop3_login_delayed;
	/* encryption state; NULL when encryption is off (popvault-crypt.h) */
	struct popvault_crypt_user *crypt;
};

#define POPVAULT_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, popvault_user_module)
extern MODULE_CONTEXT_DEFINE(popvault_user_module, &mail_user_module_register);

extern struct event_category event_category_popvault;

/* NULL when popvault is inactive for the user (no popvault_* setting). */
struct popvault_user *popvault_user_get(struct mail_user *user);

void popvault_mail_user_created(struct mail_user *user);

/* What a layer above does for each active user, registered by the
   plugin's entry (popvault-plugin.c) in the order they run. */
struct popvault_user_hooks {
	/* after the user's settings and dict; -1 with error_r fails the
	   user's login or delivery */
	int (*created)(struct popvault_user *puser, const char **error_r);
	/* when the user is deinitialized, while its storage still exists */
	void (*deinit)(struct popvault_user *puser);
	/* after Dovecot deinitialized the user's storage */
	void (*deinit_post)(struct popvault_user *puser);
};
void popvault_user_hooks_add(const struct popvault_user_hooks *hooks);
void popvault_user_hooks_remove_all(void);

#endif
