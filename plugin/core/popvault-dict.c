/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "mkdir-parents.h"
#include "dict.h"
#include "mail-user.h"
#include "popvault-user.h"
#include "popvault-dict.h"
#include "popvault-settings.h"
#include "popvault-compat.h"

#define POPVAULT_DICT_PREFIX DICT_PATH_PRIVATE"popvault/"
#define POPVAULT_DEFAULT_DICT_FILE "popvault.dict"

/* The configured popvault_dict, if any (puser->dict stays NULL when none
   is) */
static int popvault_dict_open_configured(struct popvault_user *puser,
					 const char **error_r)
{
	const char *error;

	if (popvault_compat_dict_init(puser->user, puser->event,
				      puser->set.dict_uri, &puser->dict,
				      &error) < 0) {
		/* the value itself is not logged: a dict URI or a dict's
		   settings may hold a password */
		*error_r = t_strdup_printf("Invalid "POPVAULT_SETTING_PREFIX
					   "dict: %s", error);
		return -1;
	}
	puser->dict_checked = TRUE;
	return 0;
}

int popvault_dict_user_created(struct popvault_user *puser,
			       const char **error_r)
{
	/* a shared folder's owner has no session of its own, so no state */
	if (popvault_compat_user_is_shared_owner(puser->user))
		return 0;
	/* Opened (and so checked) at user creation where it is read: the
	   POP3 login of a user with LOGIN-DELAY, its only reader, which an
	   invalid dict then fails loudly. Opening it for every mail user
	   (each LMTP delivery creates one) cost a settings lookup per
	   delivery on 2.4 (+48 k instructions per message in the LMTP
	   benchmark) for a dict nothing reads there. */
	if (puser->set.login_delay == 0 ||
	    strcmp(puser->user->service, "pop3") != 0)
		return 0;
	return popvault_dict_open_configured(puser, error_r);
}

static int popvault_dict_open(struct popvault_user *puser,
			      const char **error_r)
{
	struct mail_user *user = puser->user;
	const char *home, *path;

	if (!puser->dict_checked &&
	    popvault_dict_open_configured(puser, error_r) < 0)
		return -1;
	if (puser->dict != NULL)
		return 0;
	/* no popvault_dict configured:
	   a file dict in the home */
	if (mail_user_get_home(user, &home) <= 0) {
		*error_r = "popvault_dict is not set and the user has "
			"no home directory for the default file dict";
		return -1;
	}
	/* namespaces may not exist yet (pop3 login), so not
	   mail_user_home_mkdir() */
	if (mkdir_parents(home, 0700) < 0 && errno != EEXIST) {
		*error_r = t_strdup_printf("mkdir(%s) failed: %m", home);
		return -1;
	}
	path = t_strdup_printf("%s/"POPVAULT_DEFAULT_DICT_FILE, home);
	return popvault_compat_dict_init_file(user, puser->event, path,
					      &puser->dict, error_r) < 0 ? -1 : 0;
}

int popvault_dict_get(struct popvault_user *puser, const char *key,
		      const char **value_r, const char **error_r)
{
	const char *error;
	int ret;

	if (popvault_dict_open(puser, error_r) < 0)
		return -1;
	ret = dict_lookup(puser->dict,
			  mail_user_get_dict_op_settings(puser->user),
			  pool_datastack_create(),
			  t_strconcat(POPVAULT_DICT_PREFIX, key, NULL),
			  value_r, &error);
	if (ret < 0) {
		*error_r = t_strdup_printf("dict lookup %s: %s", key, error);
		return -1;
	}
	if (ret == 0)
		*value_r = NULL;
	return 0;
}

static void
popvault_dict_commit_callback(const struct dict_commit_result *result,
			      struct popvault_user *puser)
{
	if (result->ret < 0) {
		e_error(puser->event, "dict update failed: %s",
			result->error);
	}
}

int popvault_dict_set(struct popvault_user *puser, const char *key,
		      const char *value, const char **error_r)
{
	struct dict_transaction_context *trans;

	if (popvault_dict_open(puser, error_r) < 0)
		return -1;
	trans = dict_transaction_begin(puser->dict,
		mail_user_get_dict_op_settings(puser->user));
	dict_set(trans, t_strconcat(POPVAULT_DICT_PREFIX, key, NULL), value);
	/* Asynchronous, finished by dict_wait() at the latest when the user
	   is deinitialized: the synchronous commit of 2.3's redis driver
	   uses freed memory when called from the pop3 login path. */
	dict_transaction_commit_async(&trans, popvault_dict_commit_callback,
				      puser);
	return 0;
}

void popvault_dict_deinit(struct popvault_user *puser)
{
	if (puser->dict == NULL)
		return;
	dict_wait(puser->dict);
	dict_deinit(&puser->dict);
}
