/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* LMTP spools every transaction's DATA into the lmtp service's
   mail_temp_dir (cmd_data_begin(): in memory up to 128 KiB, then an
   unlinked file there), but sets a recipient's mail user up, where
   popvault's checks run (popvault-crypt-leaks.c), only after the whole
   DATA, unless lmtp_rcpt_check_quota sets it up (a second time) at
   RCPT. Without that setting and with that directory on a disk, a
   recipient whose mail popvault encrypts would be refused only once its
   plaintext had gone through that file. So then popvault answers such
   a RCPT TO itself, before DATA: a userdb lookup of the recipient,
   settings only, no mail user (docs/encryption.md, "Temporary files").
   With the directory in memory, nothing is attached. */

#include "lib.h"
#include "module-context.h"
#include "lmtp-common.h"
#include "lmtp-recipient.h"
#include "mail-user.h"
#include "popvault-settings.h"
#include "popvault-compat.h"
#include "popvault-crypt-leaks.h"
#include "popvault-lmtp.h"

/* Only the lmtp binary defines these: weak references resolve to NULL in
   every other process (as pop3's in popvault-pop3.c). Nothing may touch
   them unless popvault_lmtp_hooked is TRUE. */
#pragma weak lmtp_client_created_hook_set
#pragma weak lmtp_module_register
#pragma weak storage_service

#define POPVAULT_LMTP_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, popvault_lmtp_module)

struct popvault_lmtp_client {
	union lmtp_module_context module_ctx;
	/* why a recipient whose mail is encrypted is refused: the spool
	   directory is on a disk */
	const char *refusal;
};

static MODULE_CONTEXT_DEFINE_INIT(popvault_lmtp_module,
				  &lmtp_module_register);

static lmtp_client_created_func_t *next_hook_client_created;
static bool popvault_lmtp_hooked;

/* TRUE when the recipient is refused (replied to); FALSE lets lmtp go on
   with it. The reply names nothing; the log line names the user and the
   setting, as the same refusal after DATA would. */
static bool
lmtp_rcpt_refused(struct popvault_lmtp_client *pclient, struct client *client,
		  struct lmtp_recipient *lrcpt)
{
	struct smtp_server_recipient *rcpt = lrcpt->rcpt;
	struct popvault_settings set;
	const char *username, *error;
	int ret;

	ret = popvault_compat_lmtp_rcpt_settings(storage_service, client,
						 lrcpt, &set, &username,
						 &error);
	if (ret == 0)
		return FALSE;
	if (ret > 0) {
		/* with the opt-in, the warning comes once, when the user
		   is set up after DATA */
		if (!popvault_crypt_settings_encrypted(&set) ||
		    set.allow_disk_temp)
			return FALSE;
		error = pclient->refusal;
	}
	e_error(rcpt->event, "popvault: user %s: %s", username, error);
	smtp_server_recipient_reply(rcpt, 451, "4.3.0",
				    "Temporary internal error");
	return TRUE;
}

static int
popvault_lmtp_cmd_rcpt(struct client *client, struct smtp_server_cmd_ctx *cmd,
		       struct lmtp_recipient *lrcpt)
{
	struct popvault_lmtp_client *pclient = POPVAULT_LMTP_CONTEXT(client);

	if (lmtp_rcpt_refused(pclient, client, lrcpt))
		return -1;
	return pclient->module_ctx.super.cmd_rcpt(client, cmd, lrcpt);
}

static void popvault_lmtp_client_created(struct client **clientp)
{
	struct client *client = *clientp;
	struct popvault_lmtp_client *pclient;
	const char *refusal;

	/* where cmd_data_begin() spools: the raw mail user's settings, the
	   same for every recipient of this connection. With
	   lmtp_rcpt_check_quota lmtp sets each recipient up at RCPT, where
	   popvault's own user check refuses it: nothing to add. */
	refusal = client->lmtp_set->lmtp_rcpt_check_quota ? NULL :
		popvault_crypt_temp_dir_refusal(
			client->raw_mail_user->set->mail_temp_dir);
	if (refusal != NULL) {
		pclient = p_new(client->pool, struct popvault_lmtp_client, 1);
		pclient->refusal = p_strdup(client->pool, refusal);
		pclient->module_ctx.super = client->v;
		client->v.cmd_rcpt = popvault_lmtp_cmd_rcpt;
		MODULE_CONTEXT_SET(client, popvault_lmtp_module, pclient);
	}
	if (next_hook_client_created != NULL)
		next_hook_client_created(clientp);
}

void popvault_lmtp_init(void)
{
	if (lmtp_client_created_hook_set == NULL)
		return;
	next_hook_client_created =
		lmtp_client_created_hook_set(popvault_lmtp_client_created);
	popvault_lmtp_hooked = TRUE;
}

void popvault_lmtp_deinit(void)
{
	if (!popvault_lmtp_hooked)
		return;
	(void)lmtp_client_created_hook_set(next_hook_client_created);
	popvault_lmtp_hooked = FALSE;
}
