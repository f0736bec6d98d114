/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "mail-storage-hooks.h"
#include "popvault-user.h"
#include "popvault-retention.h"
#include "popvault-ledger.h"
#include "popvault-crypt.h"
#include "popvault-pop3.h"
#include "popvault-lmtp.h"
#include "popvault-plugin.h"

const char *popvault_plugin_version = DOVECOT_ABI_VERSION;

static struct mail_storage_hooks popvault_mail_storage_hooks = {
	.mail_user_created = popvault_mail_user_created,
	.mailbox_allocated = popvault_pop3_mailbox_allocated,
	.mail_allocated = popvault_pop3_mail_allocated,
};

void popvault_plugin_init(struct module *module)
{
	/* in this order when a user goes away: the retention sweep, then
	   the UIDL ledger's flush (it records what the sweep did), then,
	   once Dovecot closed the storage, the keys */
	popvault_user_hooks_add(&popvault_retention_user_hooks);
	popvault_user_hooks_add(&popvault_ledger_user_hooks);
	popvault_user_hooks_add(&popvault_crypt_user_hooks);
	mail_storage_hooks_add(module, &popvault_mail_storage_hooks);
	popvault_crypt_init(module);
	popvault_pop3_init();
	popvault_lmtp_init();
}

void popvault_plugin_deinit(void)
{
	popvault_lmtp_deinit();
	popvault_pop3_deinit();
	popvault_crypt_deinit();
	mail_storage_hooks_remove(&popvault_mail_storage_hooks);
	popvault_user_hooks_remove_all();
}
