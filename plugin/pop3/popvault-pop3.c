/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "mail-user.h"
#include "pop3-common.h"
#include "popvault-user.h"
#include "popvault-pop3.h"

/* One module serves every mail process ("mail_plugins = $mail_plugins
   popvault"), but only the pop3 binary defines these symbols. Weak
   references resolve to NULL elsewhere instead of failing dlopen() in
   lmtp, imap, doveadm and dovecot-lda. Nothing may touch a pop3 symbol
   unless popvault_pop3_hooked is TRUE. */
#pragma weak pop3_client_created_hook_set
#pragma weak pop3_clients

static pop3_client_created_func_t *next_hook_client_created;
static bool popvault_pop3_hooked;

static void popvault_pop3_client_created(struct client **clientp)
{
	struct client *client = *clientp;
	struct popvault_user *puser = popvault_user_get(client->user);

	if (puser != NULL) {
		e_debug(puser->event, "pop3 session started");
		puser->sweep_after_session = TRUE;
	}

	if (next_hook_client_created != NULL)
		next_hook_client_created(clientp);
}

struct client *popvault_pop3_client_for_box(struct mailbox *box)
{
	struct client *client;

	if (!popvault_pop3_hooked)
		return NULL;
	for (client = pop3_clients; client != NULL; client = client->next) {
		if (client->mailbox == box)
			return client;
	}
	return NULL;
}

void popvault_pop3_init(void)
{
	if (pop3_client_created_hook_set == NULL)
		return;
	next_hook_client_created =
		pop3_client_created_hook_set(popvault_pop3_client_created);
	popvault_pop3_hooked = TRUE;
}

void popvault_pop3_deinit(void)
{
	if (!popvault_pop3_hooked)
		return;
	(void)pop3_client_created_hook_set(next_hook_client_created);
	popvault_pop3_hooked = FALSE;
}
