/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "var-expand.h"
#include "mail-user.h"
#include "mail-storage-settings.h"
#include "mail-storage-service.h"
#include "popvault-user.h"
#include "popvault-action.h"
#include "popvault-dict.h"
#include "popvault-compat.h"

struct popvault_user_module popvault_user_module =
	MODULE_CONTEXT_INIT(&mail_user_module_register);

struct event_category event_category_popvault = {
	.name = "popvault",
};

/* The layers above (retention, ledger, crypt) attach to a user through
   these, registered by the plugin's entry, so this file calls none of
   them (README.md, "How it is put together"). */
#define POPVAULT_USER_HOOKS_MAX 8
static const struct popvault_user_hooks *user_hooks[POPVAULT_USER_HOOKS_MAX];
static unsigned int user_hooks_count;

void popvault_user_hooks_add(const struct popvault_user_hooks *hooks)
{
	i_assert(user_hooks_count < N_ELEMENTS(user_hooks));
	user_hooks[user_hooks_count++] = hooks;
}

void popvault_user_hooks_remove_all(void)
{
	user_hooks_count = 0;
}

static void popvault_mail_user_deinit(struct mail_user *user)
{
	struct popvault_user *puser = POPVAULT_USER_CONTEXT(user);
	unsigned int i;

	/* like autoexpunge: after the POP3 client has been disconnected, so
	   it never waits for this */
	if (puser->sweep_after_session) {
		unsigned int recovered;
		const char *error;

		if (popvault_action_recover_inbox(puser, &recovered,
						  &error) < 0)
			e_error(puser->event, "move recovery: %s", error);
	}
	for (i = 0; i < user_hooks_count; i++) {
		if (user_hooks[i]->deinit != NULL)
			user_hooks[i]->deinit(puser);
	}
	popvault_dict_deinit(puser);
	puser->module_ctx.super.deinit(user);
	for (i = 0; i < user_hooks_count; i++) {
		if (user_hooks[i]->deinit_post != NULL)
			user_hooks[i]->deinit_post(puser);
	}
	event_unref(&puser->event);
}

static void popvault_log_settings(struct popvault_user *puser)
{
	const struct popvault_settings *set = &puser->set;

	e_debug(puser->event, "active: after_retr=%s on_dele=%s "
		"retain_downloaded=%s retain_unread=%s login_delay=%s "
		"encrypt=%s",
		popvault_action_to_str(&set->after_retr),
		popvault_action_to_str(&set->on_dele),
		popvault_duration_to_str(set->retain_downloaded),
		popvault_duration_to_str(set->retain_unread),
		popvault_duration_to_str(set->login_delay),
		set->encrypt ? "yes" : "no");
}

void popvault_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	struct popvault_user *puser;
	struct popvault_settings set;
	const char *error;
	int ret;

	if ((ret = popvault_compat_user_settings(user, &set, &error)) <= 0) {
		if (ret == 0) {
			/* the shared namespace marks it unusable */
			e_debug(user->event, "popvault: %s", error);
			return;
		}
		/* Failing the user makes pop3 answer -ERR [SYS/TEMP] and
		   lmtp 4xx: a wrong policy must never run as a guessed one. */
		user->error = p_strdup_printf(user->pool,
			"popvault: user %s: %s", user->username, error);
		return;
	}
	if (!set.any_set) {
		e_debug(user->event, "popvault: no popvault_* settings for "
			"this user: inactive");
		return;
	}

	puser = p_new(user->pool, struct popvault_user, 1);
	puser->user = user;
	puser->set = set;
	puser->event = event_create(user->event);
	event_add_category(puser->event, &event_category_popvault);
	/* a shared folder's owner logs inside the reader's session */
	event_set_append_log_prefix(puser->event,
		!popvault_compat_user_is_shared_owner(user) ?
		"popvault: " : t_strdup_printf("popvault: owner %s: ",
					       user->username));

	puser->module_ctx.super = *v;
	user->vlast = &puser->module_ctx.super;
	v->deinit = popvault_mail_user_deinit;
	MODULE_CONTEXT_SET(user, popvault_user_module, puser);

	popvault_log_settings(puser);
	if (popvault_dict_user_created(puser, &error) < 0) {
		user->error = p_strdup_printf(user->pool,
			"popvault: user %s: %s", user->username, error);
		return;
	}
	for (unsigned int i = 0; i < user_hooks_count; i++) {
		if (user_hooks[i]->created != NULL &&
		    user_hooks[i]->created(puser, &error) < 0) {
			/* e.g. crypt fails closed: never store plaintext for
			   this user */
			user->error = p_strdup_printf(user->pool,
				"popvault: user %s: %s", user->username, error);
			return;
		}
	}
}

struct popvault_user *popvault_user_get(struct mail_user *user)
{
	return POPVAULT_USER_CONTEXT(user);
}
