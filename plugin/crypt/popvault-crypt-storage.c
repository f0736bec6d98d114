/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* Encryption at rest: save through an encrypting ostream, read through a
   decrypting istream. Layering (see docs/encryption.md):

   - save_begin sits in a forced "lib95_" post-hook so it is the vfunc
     closest to storage: zlib (lib20_zlib) compresses, then we encrypt.
   - istream_opened sits in a forced "lib19_" hook, which runs before
     lib20_zlib (2.3) and lib20_mail_compress (2.4, which sorts before
     lib20_popvault): we decrypt first, then zlib decompresses.
   - save_finish and save_cancel sit in that lib19 hook too: the message
     being saved reads as its plaintext source until every plugin's part
     of the save is done (crypt_save_finish()). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "hex-binary.h"
#include "istream.h"
#include "ostream.h"
#include "mail-user.h"
#include "mail-namespace.h"
#include "mail-copy.h"
#include "mail-storage-private.h"
#include "mail-storage-settings.h"
#include "mail-storage-hooks.h"
#include "maildir-filename.h"
#include "module-dir.h"
#include "popvault-user.h"
#include "popvault-crypt.h"
#include "popvault-action.h"
#include "popvault-crypt-keys.h"
#include "popvault-crypt-stream.h"
#include "popvault-crypt-leaks.h"
#include "popvault-crypt-cache.h"

#include <sodium.h>
#include "popvault-compat.h"

/* The epoch design (one X25519 per epoch on both sides) only pays off
   when a delivery process keeps its sender across deliveries: each
   delivery gets a fresh mail_user, so senders live here, per process. */
#define SENDER_CACHE_MAX 32

struct sender_cache_entry {
	char *key;
	struct popvault_sender *sender;
	unsigned int refcount;
};

struct popvault_crypt_user {
	struct mail_user *user;
	struct event *event;
	const struct popvault_settings *set;
	const char *keys_dir;
	/* popvault_key_password, NULL in a master-user session: there %w
	   is the master user's password, never the user's */
	const char *key_password;
	/* the master user of a master-user login ("user*master"), else NULL */
	const char *master_user;

	/* POPVAULT_MASTER_KEY_SIZE bytes in libsodium's guarded, mlock()ed
	   pages (sodium_malloc, a master_slot shared with the process's
	   other users of the same key); NULL until read */
	unsigned char *master;

	struct sender_cache_entry *sender;
	const char *sender_error;

	struct popvault_receiver *receiver;
	/* set once unlocking failed: every encrypted message of the
	   session then fails with this, without retrying per message */
	const char *receiver_error;

	/* the encrypted cache's key (sodium_malloc), NULL until needed */
	struct popvault_cache_key *cache_key;
	const char *cache_key_error;
};

struct popvault_crypt_mailbox {
	union mailbox_module_context module_ctx;

	/* The message being saved and its plaintext source: header lookups
	   on it during the save (LMTP's log fields) read the source, so
	   delivery never needs the private key. */
	struct mail *save_mail;
	struct istream *save_input;
	uoff_t save_input_offset;
	/* the name popvault gave the maildir file being saved (its GUID):
	   the save leaves the message's entry for the first IMAP open in
	   dovecot.popvault.delivered (popvault-crypt-delivered.h) */
	char *save_guid;
	/* this session expunged mail: those entries go at close */
	bool expunged;

	/* POPVAULT_DAMAGED_KEYWORD, looked up for every message read */
	struct popvault_keyword_cache damaged_kw;
	/* Dovecot's cache is off: popvault's encrypted cache serves
	   (popvault-crypt-cache.c) */
	bool encrypted_cache;
};

struct popvault_crypt_mail {
	union mail_module_context module_ctx;
	/* whether the stream last opened for this mail was a PVLT
	   container (popvault_crypt_mail_was_encrypted(), for the tools) */
	bool opened_encrypted;
	/* the last open failed because of this message itself (damage,
	   refused plaintext), not because the user's keys are unusable */
	bool failed_message;
};

/* What a mid-stream decryption error needs to log and react; owned by
   the stream (freed by its destroy callback), since streams can outlive
   their mail (zlib's read cache). */
struct crypt_stream_ctx {
	struct popvault_crypt_user *cuser;
	struct mailbox *pop3_box;
	char *vname;
	uint32_t uid;
};

#define POPVAULT_CRYPT_BOX_CONTEXT(obj) \
	MODULE_CONTEXT(obj, popvault_crypt_storage_module)
#define POPVAULT_CRYPT_MAIL_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, popvault_crypt_mail_module)
#define POPVAULT_CRYPT_OUTER_BOX_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, popvault_crypt_outer_module)

static MODULE_CONTEXT_DEFINE_INIT(popvault_crypt_storage_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(popvault_crypt_mail_module,
				  &mail_module_register);
static MODULE_CONTEXT_DEFINE_INIT(popvault_crypt_outer_module,
				  &mail_storage_module_register);

static ARRAY(struct sender_cache_entry *) sender_cache;
/* popvault_crypt_see_containers() was called */
static bool crypt_see_containers = FALSE;

/* set by the pop3 code: crypt never calls into pop3 */
static popvault_crypt_damaged_callback_t *crypt_damaged_callback;

static struct popvault_crypt_user *crypt_user(struct mail_user *user)
{
	struct popvault_user *puser = popvault_user_get(user);

	return puser == NULL ? NULL : puser->crypt;
}

/* Whose mail a mailbox holds. In a shared namespace box->storage->user
   and mailbox_list_get_user() are the logged-in user; the folder's owner
   is the namespace's owner, a mail_user of its own (with its own popvault
   settings, see popvault-user.c). Public namespaces have no owner: they
   follow the logged-in user. */
static struct mail_user *crypt_box_owner(struct mailbox *box)
{
	struct mail_namespace *ns = mailbox_get_namespace(box);

	return ns->owner != NULL ? ns->owner : box->storage->user;
}

/* The crypt state that saving into and reading from box follow */
static struct popvault_crypt_user *crypt_box_user(struct mailbox *box)
{
	return crypt_user(crypt_box_owner(box));
}

/* ---- keys ---- */

/* Master keys in guarded memory, shared by the users of the process
   that have the same one. An LMTP process read the key into a fresh
   sodium_malloc() allocation for every delivery and freed it after:
   ten system calls (mmap, mprotect, mlock, munlock, munmap, ...) and
   page faults per delivery. The key is still read from its setting or
   file for every user, so a changed master key is used at once; an
   unused slot is kept for the next user, one at most. */
struct master_slot {
	unsigned char *key;
	unsigned int refcount;
};
#define MASTER_SLOTS_MAX 4
static struct master_slot master_slots[MASTER_SLOTS_MAX];
/* where a key is read before it is compared with the slots' */
static unsigned char *master_scratch;

static unsigned char *guarded_alloc(void)
{
	unsigned char *mem = sodium_malloc(POPVAULT_MASTER_KEY_SIZE);

	if (mem == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "sodium_malloc() failed: %m");
	return mem;
}

static unsigned char *master_slot_ref(const unsigned char *key)
{
	struct master_slot *slot, *unused = NULL;
	unsigned int i;

	for (i = 0; i < MASTER_SLOTS_MAX; i++) {
		slot = &master_slots[i];
		if (slot->key != NULL &&
		    sodium_memcmp(slot->key, key,
				  POPVAULT_MASTER_KEY_SIZE) == 0) {
			slot->refcount++;
			return slot->key;
		}
		if (unused == NULL && slot->refcount == 0)
			unused = slot;
	}
	if (unused == NULL) {
		/* more distinct master keys in use at once than slots:
		   this user's is its own (master_slot_unref() frees it) */
		unsigned char *own = guarded_alloc();

		memcpy(own, key, POPVAULT_MASTER_KEY_SIZE);
		return own;
	}
	if (unused->key == NULL)
		unused->key = guarded_alloc();
	memcpy(unused->key, key, POPVAULT_MASTER_KEY_SIZE);
	unused->refcount = 1;
	return unused->key;
}

static void master_slot_unref(unsigned char **_key)
{
	unsigned char *key = *_key;
	unsigned int i, unused = 0;
	struct master_slot *slot = NULL;

	if (key == NULL)
		return;
	*_key = NULL;
	for (i = 0; i < MASTER_SLOTS_MAX; i++) {
		if (master_slots[i].key == key)
			slot = &master_slots[i];
		else if (master_slots[i].key != NULL &&
			 master_slots[i].refcount == 0)
			unused++;
	}
	if (slot == NULL) {
		sodium_free(key);
		return;
	}
	i_assert(slot->refcount > 0);
	if (--slot->refcount == 0 && unused > 0) {
		sodium_free(slot->key);
		slot->key = NULL;
	}
}

static void master_slots_deinit(void)
{
	unsigned int i;

	/* a slot still referenced belongs to a user not deinitialized
	   yet: left to the process's exit */
	for (i = 0; i < MASTER_SLOTS_MAX; i++) {
		if (master_slots[i].refcount > 0)
			continue;
		sodium_free(master_slots[i].key);
		master_slots[i].key = NULL;
	}
	sodium_free(master_scratch);
	master_scratch = NULL;
}

static int crypt_user_load_master(struct popvault_crypt_user *cuser,
				  const char **error_r)
{
	int ret;

	if (cuser->master != NULL)
		return 0;
	if (cuser->set->master_key == NULL) {
		*error_r = "popvault_master_key is not set";
		return -1;
	}
	if (master_scratch == NULL)
		master_scratch = guarded_alloc();
	ret = popvault_master_key_read(cuser->set->master_key,
				       master_scratch, error_r);
	if (ret == 0)
		cuser->master = master_slot_ref(master_scratch);
	sodium_memzero(master_scratch, POPVAULT_MASTER_KEY_SIZE);
	return ret;
}

/* What this process may lock and unlock the user's keys with: the master
   key when configured (read on first use), and popvault_key_password
   (unset where the passdb gave no password: LMTP, doveadm, master-user
   logins). */
static int crypt_user_secrets(struct popvault_crypt_user *cuser,
			      struct popvault_key_secrets *secrets_r,
			      const char **error_r)
{
	i_zero(secrets_r);
	if (cuser->set->master_key != NULL) {
		if (crypt_user_load_master(cuser, error_r) < 0)
			return -1;
		secrets_r->master = cuser->master;
	}
	secrets_r->password = cuser->key_password;
	return 0;
}

static void crypt_log_key_created(struct popvault_crypt_user *cuser,
				  const unsigned char pk[POPVAULT_PK_SIZE])
{
	unsigned char key_id[POPVAULT_KEY_ID_SIZE];
	const char *hex;

	popvault_key_id(pk, key_id);
	hex = binary_to_hex(key_id, sizeof(key_id));
	e_info(event_create_passthrough(cuser->event)->
	       set_name("popvault_crypt_key_created")->
	       add_str("key_id", hex)->event(),
	       "crypt: created key pair %s in %s", hex, cuser->keys_dir);
}

static struct sender_cache_entry *
sender_cache_get(const char *key, const unsigned char pk[POPVAULT_PK_SIZE],
		 enum popvault_cipher cipher)
{
	struct sender_cache_entry *const *entryp, *entry;
	unsigned int i, count;

	array_foreach(&sender_cache, entryp) {
		if (strcmp((*entryp)->key, key) == 0) {
			(*entryp)->refcount++;
			return *entryp;
		}
	}
	/* evict the oldest unused entry */
	count = array_count(&sender_cache);
	for (i = 0; count >= SENDER_CACHE_MAX && i < count; i++) {
		entry = array_idx_elem(&sender_cache, i);
		if (entry->refcount == 0) {
			popvault_sender_free(&entry->sender);
			i_free(entry->key);
			i_free(entry);
			array_delete(&sender_cache, i, 1);
			break;
		}
	}
	entry = i_new(struct sender_cache_entry, 1);
	entry->sender = popvault_sender_create(pk, cipher);
	if (entry->sender == NULL) {
		i_free(entry);
		return NULL;
	}
	entry->key = i_strdup(key);
	entry->refcount = 1;
	array_push_back(&sender_cache, &entry);
	return entry;
}

static struct popvault_sender *
crypt_user_get_sender(struct popvault_crypt_user *cuser, const char **error_r)
{
	unsigned char pk[POPVAULT_PK_SIZE], key_id[POPVAULT_KEY_ID_SIZE];
	struct popvault_key_secrets secrets;
	enum popvault_cipher cipher;
	const char *error, *key;
	bool created;

	if (cuser->sender != NULL)
		return cuser->sender->sender;
	if (cuser->sender_error != NULL) {
		*error_r = cuser->sender_error;
		return NULL;
	}
	/* Delivery needs only the public key; a secret is used here only
	   when the user has no key pair yet. */
	if (crypt_user_secrets(cuser, &secrets, &error) < 0 ||
	    popvault_keystore_get_current(cuser->keys_dir,
					  cuser->user->username, &secrets,
					  pk, &created, &error) < 0) {
		cuser->sender_error = p_strdup(cuser->user->pool, error);
		*error_r = cuser->sender_error;
		return NULL;
	}
	popvault_key_id(pk, key_id);
	if (created)
		crypt_log_key_created(cuser, pk);
	cipher = cuser->set->cipher == POPVAULT_CIPHER_SETTING_XCHACHA20POLY1305 ?
		POPVAULT_CIPHER_XCHACHA20POLY1305 : POPVAULT_CIPHER_AES256GCM;
	key = t_strdup_printf("%s\t%s\t%d", cuser->user->username,
			      binary_to_hex(key_id, sizeof(key_id)), cipher);
	cuser->sender = sender_cache_get(key, pk, cipher);
	if (cuser->sender == NULL) {
		cuser->sender_error = "invalid public key in the key store";
		*error_r = cuser->sender_error;
		return NULL;
	}
	return cuser->sender->sender;
}

static struct popvault_receiver *
crypt_user_get_receiver(struct popvault_crypt_user *cuser,
			const char **error_r)
{
	struct popvault_key_secrets secrets;
	struct popvault_receiver *receiver;
	unsigned int count;
	const char *error = NULL;

	if (cuser->receiver != NULL)
		return cuser->receiver;
	if (cuser->receiver_error != NULL) {
		*error_r = cuser->receiver_error;
		return NULL;
	}
	receiver = popvault_receiver_create();
	if (crypt_user_secrets(cuser, &secrets, &error) < 0 ||
	    popvault_keystore_load_receiver(cuser->keys_dir,
					    cuser->user->username,
					    &secrets, receiver, &count,
					    &error) < 0) {
		popvault_receiver_free(&receiver);
		cuser->receiver_error = p_strdup_printf(cuser->user->pool,
			"can't unlock the private keys%s: %s",
			cuser->master_user == NULL ? "" : t_strdup_printf(
			" (a login by master user %s: its password is not the "
			"user's and unlocks no password-locked key)",
			cuser->master_user), error);
		e_error(event_create_passthrough(cuser->event)->
			set_name("popvault_crypt_unlock_failed")->
			add_str("error", error)->event(),
			"crypt: %s", cuser->receiver_error);
		*error_r = cuser->receiver_error;
		return NULL;
	}
	e_debug(event_create_passthrough(cuser->event)->
		set_name("popvault_crypt_unlocked")->
		add_int("keys", count)->event(),
		"crypt: unlocked %u private key(s)", count);
	cuser->receiver = receiver;
	return receiver;
}

/* The encrypted cache's key: only a process that unlocks the private
   keys reads it (docs/encryption.md, "Encrypted cache"). */
static int crypt_cache_key(struct mailbox *box,
			   const struct popvault_cache_key **key_r,
			   const char **error_r)
{
	struct popvault_crypt_user *cuser = crypt_box_user(box);
	unsigned char pk[POPVAULT_PK_SIZE];
	struct popvault_key_secrets secrets;
	struct popvault_receiver *receiver;
	struct popvault_cache_key *key;
	const char *error;
	bool created;

	if (cuser->cache_key != NULL) {
		*key_r = cuser->cache_key;
		return 0;
	}
	if (cuser->cache_key_error != NULL) {
		*error_r = cuser->cache_key_error;
		return -1;
	}
	key = sodium_malloc(sizeof(*key));
	if (key == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "sodium_malloc() failed: %m");
	if ((receiver = crypt_user_get_receiver(cuser, &error)) == NULL ||
	    crypt_user_secrets(cuser, &secrets, &error) < 0 ||
	    popvault_keystore_get_current(cuser->keys_dir,
					  cuser->user->username, &secrets,
					  pk, &created, &error) < 0 ||
	    popvault_keystore_get_cache_key(cuser->keys_dir, pk, receiver,
					    key->key, &error) < 0) {
		sodium_free(key);
		cuser->cache_key_error = p_strdup(cuser->user->pool, error);
		*error_r = cuser->cache_key_error;
		return -1;
	}
	if (created)
		crypt_log_key_created(cuser, pk);
	popvault_cache_key_set_id(key);
	cuser->cache_key = key;
	*key_r = key;
	return 0;
}

/* Opens an entry made at delivery: a PVLT container of its own. */
static int crypt_delivered_decrypt(struct mailbox *box,
				   const unsigned char *data, size_t size,
				   buffer_t *out, const char **error_r)
{
	struct popvault_receiver *receiver;

	receiver = crypt_user_get_receiver(crypt_box_user(box), error_r);
	if (receiver == NULL)
		return -1;
	return popvault_decrypt_buffer(receiver, data, size, out, error_r);
}

/* ---- read ---- */

static void
crypt_log_damaged(struct popvault_crypt_user *cuser, const char *vname,
		  uint32_t uid, const char *cause)
{
	e_error(event_create_passthrough(cuser->event)->
		set_name("popvault_crypt_damaged")->
		add_str("mailbox", vname)->add_int("uid", uid)->
		add_str("error", cause)->event(),
		"crypt: user %s mailbox %s uid %u: can't read message: %s",
		cuser->user->username, vname, uid, cause);
}

static int crypt_mail_fail(struct mail *mail, const char *cause)
{
	struct popvault_crypt_user *cuser = crypt_box_user(mail->box);

	crypt_log_damaged(cuser, mailbox_get_vname(mail->box), mail->uid,
			  cause);
	mail_storage_set_error(mail->box->storage, MAIL_ERROR_INVALIDDATA,
			       "Message is damaged or can't be decrypted");
	/* the client gets the text above; tools (doveadm popvault verify)
	   report the cause via mailbox_get_last_internal_error() */
	i_free(mail->box->storage->last_internal_error);
	mail->box->storage->last_internal_error = i_strdup(cause);
	mail->box->storage->last_error_is_internal = TRUE;
	return -1;
}

/* Damage found only mid-reply is remembered with the message, so later
   sessions answer -ERR at once instead of failing the client on the same
   message forever. An admin clears the keyword after repairing it. */
/* crypt_mail_fail() for a cause in the message itself: only that
   message fails (see crypt_mail_get_virtual_size()). */
static int crypt_mail_fail_message(struct mail *mail, const char *cause)
{
	struct mail_private *pmail = (struct mail_private *)mail;
	struct popvault_crypt_mail *cmail = POPVAULT_CRYPT_MAIL_CONTEXT(pmail);

	cmail->failed_message = TRUE;
	return crypt_mail_fail(mail, cause);
}

static void crypt_mark_damaged(struct popvault_crypt_user *cuser,
			       struct mailbox *box, uint32_t uid)
{
	const char *const names[] = { POPVAULT_DAMAGED_KEYWORD, NULL };
	struct mailbox_transaction_context *t;
	struct mail_keywords *kw;
	struct mail *mail;

	t = mailbox_transaction_begin(box, 0, "popvault damaged");
	kw = mailbox_keywords_create_valid(box, names);
	mail = mail_alloc(t, 0, NULL);
	if (mail_set_uid(mail, uid))
		mail_update_keywords(mail, MODIFY_ADD, kw);
	mail_free(&mail);
	mailbox_keywords_unref(&kw);
	if (mailbox_transaction_commit(&t) < 0) {
		e_error(cuser->event, "crypt: can't mark uid %u damaged: %s",
			uid, mailbox_get_last_internal_error(box, NULL));
	}
}

static void crypt_stream_error(const char *error, void *context)
{
	struct crypt_stream_ctx *sctx = context;

	crypt_log_damaged(sctx->cuser, sctx->vname, sctx->uid, error);
	if (sctx->pop3_box != NULL)
		crypt_mark_damaged(sctx->cuser, sctx->pop3_box, sctx->uid);
	/* pop3's fetch_callback() ends every reply with "." even when the
	   stream failed: the client would take a truncated message for a
	   whole one. Closing the connection first keeps the dot out. */
	if (sctx->pop3_box != NULL && crypt_damaged_callback != NULL)
		crypt_damaged_callback(sctx->pop3_box, "popvault: damaged message");
}

void popvault_crypt_set_damaged_callback(
	popvault_crypt_damaged_callback_t *callback)
{
	crypt_damaged_callback = callback;
}

static void crypt_stream_ctx_free(struct crypt_stream_ctx *sctx)
{
	i_free(sctx->vname);
	i_free(sctx);
}

static bool crypt_stream_is_encrypted(struct istream *input)
{
	const unsigned char *data;
	size_t size;

	if (i_stream_read_bytes(input, &data, &size,
				POPVAULT_MAGIC_SIZE) <= 0)
		return FALSE;
	return popvault_container_is_encrypted(data, size);
}

static int crypt_istream_opened(struct mail *mail, struct istream **stream)
{
	struct mail_private *pmail = (struct mail_private *)mail;
	struct popvault_crypt_mail *cmail = POPVAULT_CRYPT_MAIL_CONTEXT(pmail);
	struct popvault_crypt_user *cuser = crypt_box_user(mail->box);
	struct popvault_receiver *receiver;
	struct popvault_crypt_mailbox *cbox;
	struct crypt_stream_ctx *sctx;
	struct istream *input;
	const char *error = NULL;
	ssize_t ret;

	cbox = POPVAULT_CRYPT_BOX_CONTEXT(mail->box);
	if (cbox != NULL && cbox->save_mail == mail && mail->uid == 0 &&
	    cbox->save_input != NULL) {
		i_stream_unref(stream);
		i_stream_seek(cbox->save_input, cbox->save_input_offset);
		*stream = i_stream_create_limit(cbox->save_input, UOFF_T_MAX);
		return cmail->module_ctx.super.istream_opened(mail, stream);
	}
	cmail->opened_encrypted = FALSE;
	if (cuser == NULL) {
		/* a user without crypt settings (crypt_see_containers):
		   the stored bytes, unless they are a container */
		if (crypt_stream_is_encrypted(*stream)) {
			cmail->opened_encrypted = TRUE;
			mail_storage_set_error(mail->box->storage,
				MAIL_ERROR_NOTPOSSIBLE, "Encrypted, and no key "
				"for it here (no popvault_master_key or "
				"popvault_key_password)");
			return -1;
		}
		return cmail->module_ctx.super.istream_opened(mail, stream);
	}
	if (!crypt_stream_is_encrypted(*stream)) {
		if ((*stream)->stream_errno != 0)
			return cmail->module_ctx.super.istream_opened(mail, stream);
		if (cuser->set->require_encrypted) {
			return crypt_mail_fail_message(mail, "plaintext message "
				"refused (popvault_require_encrypted=yes)");
		}
		return cmail->module_ctx.super.istream_opened(mail, stream);
	}
	cmail->opened_encrypted = TRUE;
	/* A mailbox opened while the owner had no key store keeps Dovecot's
	   cache (crypt_user_needs_cache_off()); what is decrypted from here
	   on never goes into it. */
	mail->box->mail_cache_disabled = TRUE;
	if (cbox != NULL ?
	    popvault_mail_has_keyword_cached(mail, POPVAULT_DAMAGED_KEYWORD,
					     &cbox->damaged_kw) :
	    popvault_mail_has_keyword(mail, POPVAULT_DAMAGED_KEYWORD)) {
		return crypt_mail_fail_message(mail, "found damaged by an earlier read "
			"(keyword "POPVAULT_DAMAGED_KEYWORD"; clear it after "
			"repairing the message)");
	}
	e_debug(cuser->event, "crypt: decrypting mailbox %s uid %u (%s)",
		mailbox_get_vname(mail->box), mail->uid,
		pmail->get_stream_reason == NULL ? "" : pmail->get_stream_reason);
	if ((receiver = crypt_user_get_receiver(cuser, &error)) == NULL) {
		/* logged once by the unlock; not the message's fault */
		if (crypt_box_owner(mail->box) != mail->box->storage->user) {
			/* Another user's shared folder whose keys this
			   session can't open (password mode): that will not
			   change by retrying, so IMAP answers NO for the
			   message (INVALIDDATA) instead of disconnecting. */
			mail_storage_set_error(mail->box->storage,
				MAIL_ERROR_INVALIDDATA, "The owner's "
				"encryption keys are not available to you");
			return -1;
		}
		mail_storage_set_error(mail->box->storage, MAIL_ERROR_TEMP,
			"The mailbox's encryption keys did not unlock");
		return -1;
	}

	/* unnamed: i_stream_get_name() answers with the file's name */
	input = i_stream_create_popvault_decrypt(*stream, receiver);
	i_stream_unref(stream);
	*stream = input;

	/* Authenticate the header, the length and the first chunk now, so
	   that most damage (and every damaged message up to one chunk)
	   fails before a reply starts: POP3 -ERR, IMAP NO. */
	ret = i_stream_read(input);
	if (ret == -1 && input->stream_errno != 0)
		return crypt_mail_fail_message(mail, i_stream_get_error(input));

	sctx = i_new(struct crypt_stream_ctx, 1);
	sctx->cuser = cuser;
	sctx->vname = i_strdup(mailbox_get_vname(mail->box));
	sctx->uid = mail->uid;
	if ((mail->box->flags & MAILBOX_FLAG_POP3_SESSION) != 0)
		sctx->pop3_box = mail->box;
	i_stream_popvault_decrypt_set_error_callback(input,
		crypt_stream_error, sctx);
	i_stream_add_destroy_callback(input, crypt_stream_ctx_free, sctx);
	return cmail->module_ctx.super.istream_opened(mail, stream);
}

/* pop3 refuses the whole session when one size lookup fails, so a single
   message that can't be decrypted (and has no size in the maildir file
   name or dbox metadata, e.g. a planted or rebuilt file) would keep the
   client from every other message. In a POP3 session it is listed with
   size 0 instead; RETR and TOP of it answer -ERR. Unusable keys still fail
   the session: then no encrypted message would read. */
static int crypt_mail_get_virtual_size(struct mail *_mail, uoff_t *size_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_crypt_mail *cmail = POPVAULT_CRYPT_MAIL_CONTEXT(mail);

	cmail->failed_message = FALSE;
	if (cmail->module_ctx.super.get_virtual_size(_mail, size_r) == 0)
		return 0;
	if (!cmail->failed_message ||
	    (_mail->box->flags & MAILBOX_FLAG_POP3_SESSION) == 0)
		return -1;
	*size_r = 0;
	return 0;
}

static void crypt_mail_expunge(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_crypt_mail *cmail = POPVAULT_CRYPT_MAIL_CONTEXT(mail);
	struct popvault_crypt_mailbox *cbox =
		POPVAULT_CRYPT_BOX_CONTEXT(_mail->box);

	if (cbox != NULL)
		cbox->expunged = TRUE;
	cmail->module_ctx.super.expunge(_mail);
}

static void crypt_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mail_vfuncs *v = mail->vlast;
	struct popvault_crypt_mail *cmail;

	if (crypt_box_user(_mail->box) == NULL && !crypt_see_containers)
		return;
	cmail = p_new(mail->pool, struct popvault_crypt_mail, 1);
	cmail->module_ctx.super = *v;
	mail->vlast = &cmail->module_ctx.super;
	v->istream_opened = crypt_istream_opened;
	v->get_virtual_size = crypt_mail_get_virtual_size;
	v->expunge = crypt_mail_expunge;
	MODULE_CONTEXT_SET(mail, popvault_crypt_mail_module, cmail);
}

int popvault_crypt_mail_was_encrypted(struct mail *mail, bool *encrypted_r)
{
	struct mail_private *pmail = (struct mail_private *)mail;
	struct popvault_crypt_mail *cmail =
		MODULE_CONTEXT(pmail, popvault_crypt_mail_module);
	struct istream *input;

	if (cmail == NULL) {
		/* no crypt settings for the user: nothing is decrypted */
		*encrypted_r = FALSE;
		return 0;
	}
	if (mail_get_stream(mail, NULL, NULL, &input) < 0) {
		if (crypt_box_user(mail->box) != NULL ||
		    !cmail->opened_encrypted)
			return -1;
		/* seen by popvault_crypt_see_containers() */
		*encrypted_r = TRUE;
		return 0;
	}
	*encrypted_r = cmail->opened_encrypted;
	return 0;
}

void popvault_crypt_see_containers(void)
{
	crypt_see_containers = TRUE;
}

int popvault_crypt_user_unlock(struct mail_user *user, const char **error_r)
{
	struct popvault_crypt_user *cuser = crypt_user(user);
	int ret;

	if (cuser == NULL)
		return 0;
	if ((ret = popvault_keystore_exists(cuser->keys_dir, error_r)) <= 0)
		return ret < 0 ? -1 : 1;
	return crypt_user_get_receiver(cuser, error_r) == NULL ? -1 : 1;
}

bool popvault_crypt_user_encrypts(struct mail_user *user)
{
	struct popvault_crypt_user *cuser = crypt_user(user);

	return cuser != NULL && cuser->set->encrypt;
}

/* ---- save ---- */

/* The sizes maildir will store for input (from its offset on): the file
   size as written before encryption (CRLF to LF unless mail_save_crlf)
   and the virtual size (CRLF). FALSE if they can't be known without
   waiting, or if the text has a CR outside a CRLF, whose conversion
   this does not model. The input is left at its offset. */
static bool
crypt_maildir_plain_sizes(struct istream *input, bool save_crlf,
			  uoff_t *size_r, uoff_t *vsize_r)
{
	const unsigned char *data, *p, *end;
	uoff_t start = input->v_offset, total = 0, lfs = 0, crlfs = 0, crs = 0;
	bool last_cr = FALSE;
	size_t size;
	int ret;

	if (!input->seekable)
		return FALSE;
	while ((ret = i_stream_read_more(input, &data, &size)) > 0) {
		end = data + size;
		for (p = data; (p = memchr(p, '\n', end - p)) != NULL; p++) {
			lfs++;
			if (p > data ? p[-1] == '\r' : last_cr)
				crlfs++;
		}
		for (p = data; (p = memchr(p, '\r', end - p)) != NULL; p++)
			crs++;
		last_cr = data[size - 1] == '\r';
		total += size;
		i_stream_skip(input, size);
	}
	i_stream_seek(input, start);
	if (ret == 0 || input->stream_errno != 0 || crs != crlfs)
		return FALSE;
	*size_r = save_crlf ? total + lfs - crlfs : total - crlfs;
	*vsize_r = total + lfs - crlfs;
	return TRUE;
}

/* Delivery looks up these headers of the message it just saved, for its
   log line and events (lib-lda's lda_log_wanted_headers). Dovecot
   answers a plain user's lookups from the cache the save filled; with
   the cache off, each one opened the saved message and parsed its
   header again. Wanted during the save, they are kept from the parse
   the save does anyway, in the mail's memory only. */
static const char *const crypt_save_kept_headers[] = {
	"From", "Message-ID", "Subject", NULL
};

static void crypt_save_keep_headers(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	struct mailbox_header_lookup_ctx *headers;

	/* with the cache on, wanted headers could be cached */
	if (!box->mail_cache_disabled || ctx->dest_mail == NULL)
		return;
	headers = mailbox_header_lookup_init(box, crypt_save_kept_headers);
	mail_add_temp_wanted_fields(ctx->dest_mail, 0, headers);
	mailbox_header_lookup_unref(&headers);
}

/* maildir names a saved file after the size it was given; when the file
   on disk has another size (ciphertext) and the name it was to get does
   not carry the plaintext size, it keeps the message's GUID in a
   G<guid> field of its dovecot-uidlist line (maildir_save_finish_real()).
   Every delivery reads that whole file again, so the field made each
   delivery cost more the larger the mailbox (docs/performance.md). A
   name with the sizes in it, given before saving, is kept as it is: the
   file is named, and its GUID is, as a plain user's would be.
   maildir checks both sizes against what it saved (the size at
   save_finish, the virtual size at commit) and, if either differs,
   names the file itself and keeps this name as the GUID in a G field,
   as before. A GUID given by the caller (copy, import, dsync,
   doveadm popvault encrypt) stays. */
static void crypt_save_maildir_name(struct mail_save_context *ctx,
				    struct istream *input)
{
	struct mailbox *box = ctx->transaction->box;
	struct popvault_crypt_mailbox *cbox = POPVAULT_CRYPT_BOX_CONTEXT(box);
	const char *guid;
	uoff_t size, vsize;

	if (ctx->data.guid != NULL ||
	    strcmp(box->storage->name, "maildir") != 0)
		return;
	if (!crypt_maildir_plain_sizes(input, box->storage->set->mail_save_crlf,
				       &size, &vsize))
		return;
	guid = t_strdup_printf("%s,S=%"PRIuUOFF_T",W=%"PRIuUOFF_T,
			       maildir_filename_generate(), size, vsize);
	mailbox_save_set_guid(ctx, guid);
	/* maildir keeps it as the GUID even when it has to rename the
	   file (a G field), so the first open finds the entry by it */
	if (input->seekable) {
		i_free(cbox->save_guid);
		cbox->save_guid = i_strdup(guid);
	}
}

static int crypt_save_begin(struct mail_save_context *ctx,
			    struct istream *input)
{
	struct mailbox *box = ctx->transaction->box;
	struct popvault_crypt_mailbox *cbox = POPVAULT_CRYPT_BOX_CONTEXT(box);
	struct popvault_crypt_user *cuser = crypt_box_user(box);
	struct popvault_sender *sender;
	struct ostream *output;
	const char *error = NULL;

	/* the key comes first: on failure nothing has been created yet */
	sender = crypt_user_get_sender(cuser, &error);
	if (sender == NULL) {
		e_error(event_create_passthrough(cuser->event)->
			set_name("popvault_crypt_save_refused")->
			add_str("mailbox", mailbox_get_vname(box))->
			add_str("error", error)->event(),
			"crypt: user %s mailbox %s: not saving: %s",
			cuser->user->username, mailbox_get_vname(box), error);
		mail_storage_set_error(box->storage, MAIL_ERROR_TEMP,
			"Encryption key unavailable, try again later");
		return -1;
	}
	crypt_save_maildir_name(ctx, input);
	crypt_save_keep_headers(ctx);
	if (cbox->module_ctx.super.save_begin(ctx, input) < 0)
		return -1;

	output = o_stream_create_popvault_encrypt(ctx->data.output, sender);
	o_stream_unref(&ctx->data.output);
	ctx->data.output = output;
	if (output->stream_errno != 0) {
		mailbox_set_critical(box, "popvault: crypt: %s",
				     o_stream_get_error(output));
		return -1;
	}
	o_stream_cork(ctx->data.output);
	if (input->seekable) {
		i_stream_unref(&cbox->save_input);
		cbox->save_mail = ctx->dest_mail;
		cbox->save_input = input;
		cbox->save_input_offset = input->v_offset;
		i_stream_ref(input);
	}
	return 0;
}

static void crypt_save_forget(struct popvault_crypt_mailbox *cbox)
{
	i_stream_unref(&cbox->save_input);
	cbox->save_mail = NULL;
	i_free_and_null(cbox->save_guid);
}

/* The size of the header at the start of data (the empty line that ends
   it included, as message_get_header_size() counts it), or 0 when data
   does not hold its end yet; the search starts at from. Found with
   memchr(): parsing it line by line was a third of what making the
   entry cost delivery. */
static size_t crypt_header_end(const unsigned char *data, size_t size,
			       size_t from)
{
	const unsigned char *p = data + from, *end = data + size;

	if (from == 0 && size >= 1 && data[0] == '\n')
		return 1;
	if (from == 0 && size >= 2 && data[0] == '\r' && data[1] == '\n')
		return 2;
	while ((p = memchr(p, '\n', end - p)) != NULL) {
		p++;
		if (p < end && *p == '\n')
			return p + 1 - data;
		if (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
			return p + 2 - data;
	}
	return 0;
}

/* Header sizes beyond this make no entry */
#define CRYPT_ENTRY_HEADER_MAX (1024 * 1024)
#define CRYPT_HEADER_READ_SIZE 4096

/* The raw header of the message being saved, from its plaintext source,
   into hdr: up to the empty line that ends it, or the whole message when
   it has none. -1 when it can't be read or is too large. The source is
   left where the save left it, at its end: the caller may check that
   (doveadm save asserts it). */
static int crypt_save_read_header(struct popvault_crypt_mailbox *cbox,
				  buffer_t *hdr)
{
	struct istream *input = cbox->save_input;
	uoff_t end_offset = input->v_offset;
	bool at_eof = input->eof;
	const unsigned char *data;
	size_t size, scanned = 0, found = 0;
	int ret;

	i_stream_seek(input, cbox->save_input_offset);
	while (found == 0 && hdr->used <= CRYPT_ENTRY_HEADER_MAX &&
	       (ret = i_stream_read_more(input, &data, &size)) > 0) {
		/* a piece at a time: the source is usually the whole
		   message in one buffer, and copying all of it cost a
		   20 KB delivery 21k instructions */
		size = I_MIN(size, CRYPT_HEADER_READ_SIZE);
		buffer_append(hdr, data, size);
		i_stream_skip(input, size);
		/* from two bytes back: an end may span two pieces */
		found = crypt_header_end(hdr->data, hdr->used,
					 scanned < 2 ? 0 : scanned - 2);
		scanned = hdr->used;
	}
	ret = input->stream_errno != 0 || hdr->used > CRYPT_ENTRY_HEADER_MAX ?
		-1 : 0;
	if (found > 0)
		buffer_set_used_size(hdr, found);
	i_stream_seek(input, end_offset);
	if (at_eof) {
		/* the read at the end that sets eof again */
		(void)i_stream_read(input);
	}
	return ret;
}

/* The entry of the message just saved for the first IMAP open
   (popvault-crypt-delivered.h): its header as delivered and the
   BODYSTRUCTURE of Dovecot's own save parse (which plain Dovecot
   caches at this point where mail_cache_fields name it). Nothing here
   fails the save. */
static void crypt_save_add_entry(struct mail_save_context *ctx,
				 struct popvault_crypt_mailbox *cbox)
{
	struct mailbox *box = ctx->transaction->box;
	struct popvault_sender *sender;
	const char *bodystructure, *error;

	if (mail_get_special(cbox->save_mail, MAIL_FETCH_IMAP_BODYSTRUCTURE,
			     &bodystructure) < 0 ||
	    (sender = crypt_user_get_sender(crypt_box_user(box),
					    &error)) == NULL)
		return;
	T_BEGIN {
		buffer_t *hdr = t_buffer_create(4096);

		if (crypt_save_read_header(cbox, hdr) == 0) {
			popvault_delivered_add(box, sender, cbox->save_guid,
					       hdr->data, hdr->used,
					       bodystructure);
		}
		sodium_memzero(buffer_get_modifiable_data(hdr, NULL),
			       hdr->used);
	} T_END;
}

/* save_finish and save_cancel are the outermost layer (the lib19 hook):
   reads of the message being saved get the plaintext source until every
   plugin's save_finish is done. A compression plugin that does not
   compress for this user reads the saved message back in its save_finish
   to refuse client-compressed mail; 2.4's mail_compress sorts before
   lib20_popvault, so that read comes after the innermost layers returned,
   and the ciphertext would need the private key, which delivery in
   password mode does not have. */
static int crypt_save_finish(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	union mailbox_module_context *obox =
		POPVAULT_CRYPT_OUTER_BOX_CONTEXT(box);
	struct popvault_crypt_mailbox *cbox = POPVAULT_CRYPT_BOX_CONTEXT(box);
	int ret;

	ret = obox->super.save_finish(ctx);
	if (ret == 0 && cbox->save_guid != NULL && cbox->save_input != NULL &&
	    cbox->save_mail != NULL)
		crypt_save_add_entry(ctx, cbox);
	crypt_save_forget(cbox);
	return ret;
}

static void crypt_save_cancel(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	union mailbox_module_context *obox =
		POPVAULT_CRYPT_OUTER_BOX_CONTEXT(box);

	obox->super.save_cancel(ctx);
	crypt_save_forget(POPVAULT_CRYPT_BOX_CONTEXT(box));
}

static void crypt_mailbox_close(struct mailbox *box)
{
	struct popvault_crypt_mailbox *cbox = POPVAULT_CRYPT_BOX_CONTEXT(box);

	crypt_save_forget(cbox);
	i_zero(&cbox->damaged_kw);
	if (cbox->expunged) {
		popvault_delivered_drop(box);
		cbox->expunged = FALSE;
	}
	cbox->module_ctx.super.close(box);
}

static int crypt_save_begin_unsupported(struct mail_save_context *ctx,
					struct istream *input ATTR_UNUSED)
{
	struct mailbox *box = ctx->transaction->box;

	mailbox_set_critical(box, "popvault: crypt: popvault_encrypt=yes "
			     "needs maildir, sdbox or mdbox storage; not saving");
	return -1;
}

static int crypt_copy(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *box = ctx->transaction->box;
	struct popvault_crypt_mailbox *cbox = POPVAULT_CRYPT_BOX_CONTEXT(box);
	struct mail_user *src_owner = crypt_box_owner(mail->box);
	struct mail_user *dest_owner = crypt_box_owner(box);

	/* Same owner, same keys: let the storage hardlink or reference the
	   encrypted file as it is. Across owners (another user's shared
	   folder) the message goes through the source owner's decryption
	   and the target owner's save. */
	if (src_owner != dest_owner &&
	    (crypt_user(src_owner) != NULL || crypt_user(dest_owner) != NULL))
		return mail_storage_copy(ctx, mail);
	return cbox->module_ctx.super.copy(ctx, mail);
}

/* Whether mail of the user may be decrypted into dovecot.index.cache:
   only when it may be encrypted (popvault_crypt_user_has_encrypted_mail()).
   Checked at every mailbox open: a key pair created later (the first
   encrypted delivery) turns the cache off from the next open on. */
static bool crypt_user_needs_cache_off(struct popvault_crypt_user *cuser)
{
	return popvault_crypt_user_has_encrypted_mail(cuser->set,
						      cuser->keys_dir,
						      cuser->event);
}

/* box is saved into encrypted (the owner encrypts, the storage holds
   binary data) */
static bool crypt_box_encrypts(struct mailbox *box)
{
	struct popvault_crypt_user *cuser = crypt_box_user(box);

	return cuser != NULL && cuser->set->encrypt &&
		(box->storage->class_flags &
		 MAIL_STORAGE_CLASS_FLAG_BINARY_DATA) != 0;
}

static bool crypt_box_wants_cache(struct mailbox *box)
{
	struct popvault_crypt_mailbox *cbox = POPVAULT_CRYPT_BOX_CONTEXT(box);

	return cbox != NULL && cbox->encrypted_cache;
}

static void crypt_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct popvault_crypt_user *cuser = crypt_box_user(box);
	struct popvault_crypt_mailbox *cbox;

	cbox = p_new(box->pool, struct popvault_crypt_mailbox, 1);
	cbox->module_ctx.super = *v;
	box->vlast = &cbox->module_ctx.super;
	/* for every user: a copy from an encrypting user must never leave
	   another user with ciphertext it can't read */
	v->copy = crypt_copy;
	MODULE_CONTEXT_SET(box, popvault_crypt_storage_module, cbox);

	if (cuser == NULL)
		return;
	v->close = crypt_mailbox_close;
	/* No header or body text of encrypted mail in dovecot.index.cache:
	   every envelope, header and bodystructure fetch decrypts the first
	   chunk again. The owner decides: in a shared folder the cache (in
	   the reader's INDEX= or the owner's home) holds the owner's mail. */
	if (crypt_user_needs_cache_off(cuser)) {
		box->mail_cache_disabled = TRUE;
		/* IMAP's folder views get the encrypted cache instead */
		cbox->encrypted_cache =
			strcmp(box->storage->user->service, "imap") == 0;
	}
	if (!cuser->set->encrypt)
		return;
	if (crypt_box_encrypts(box))
		v->save_begin = crypt_save_begin;
	else
		v->save_begin = crypt_save_begin_unsupported;
}

/* The lib19 layer around every other plugin's save (see
   crypt_save_finish()) */
static void crypt_outer_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	union mailbox_module_context *obox;

	if (!crypt_box_encrypts(box))
		return;
	obox = p_new(box->pool, union mailbox_module_context, 1);
	obox->super = *v;
	box->vlast = &obox->super;
	v->save_finish = crypt_save_finish;
	v->save_cancel = crypt_save_cancel;
	MODULE_CONTEXT_SET_SELF(box, popvault_crypt_outer_module, obox);
}

/* ---- user ---- */

/* Password mode: the key pair is made at the first login that brings the
   password, so mail delivered from then on is locked with it; a key pair
   LMTP made with the master key alone gets the password's wrap here too
   (and one made before a master key was set gets the master wrap). A
   failure (disk full) is logged and the login goes on: deliveries keep
   failing closed (451) until a later login or doveadm popvault key
   generate. */
static void crypt_user_login_keys(struct popvault_crypt_user *cuser)
{
	unsigned char pk[POPVAULT_PK_SIZE];
	struct popvault_key_secrets secrets;
	const char *error;
	unsigned int added;
	bool created;
	int ret;

	if ((ret = crypt_user_secrets(cuser, &secrets, &error)) == 0 &&
	    (ret = popvault_keystore_exists(cuser->keys_dir, &error)) == 0) {
		ret = popvault_keystore_get_current(cuser->keys_dir,
			cuser->user->username, &secrets, pk, &created, &error);
		if (ret == 0 && created)
			crypt_log_key_created(cuser, pk);
	}
	if (ret >= 0 &&
	    (ret = popvault_keystore_add_wraps(cuser->keys_dir,
			cuser->user->username, &secrets, &added, &error)) == 0 &&
	    added > 0) {
		e_info(event_create_passthrough(cuser->event)->
		       set_name("popvault_crypt_key_wrapped")->
		       add_int("keys", added)->event(),
		       "crypt: added the missing master-key or password "
		       "wrap to %u key pair(s)", added);
	}
	if (ret < 0) {
		e_error(cuser->event, "crypt: user %s: can't create or "
			"complete the key pair at login: %s",
			cuser->user->username, error);
	}
}

/* The user's own pop3 or imap login: not LMTP or doveadm, and not a
   shared folder's owner (user->creator is the logged-in reader), whose
   keys another user's session must never make or lock. */
static bool crypt_user_is_login(struct mail_user *user)
{
	return !popvault_compat_user_is_shared_owner(user) &&
		(strcmp(user->service, "pop3") == 0 ||
		 strcmp(user->service, "imap") == 0);
}

int popvault_crypt_user_key_store(struct mail_user *user,
				  const char **keys_dir_r,
				  struct popvault_key_secrets *secrets_r,
				  const char **error_r)
{
	struct popvault_crypt_user *cuser = crypt_user(user);

	if (cuser == NULL) {
		*error_r = "encryption is off for this user (no "
			"popvault_encrypt, popvault_require_encrypted, "
			"popvault_master_key or popvault_key_password)";
		return -1;
	}
	*keys_dir_r = cuser->keys_dir;
	return crypt_user_secrets(cuser, secrets_r, error_r);
}

int popvault_crypt_pop3_unlock(struct popvault_user *puser)
{
	const char *error;

	if (puser->crypt == NULL || puser->set.key_password == NULL)
		return 0;
	return crypt_user_get_receiver(puser->crypt, &error) == NULL ? -1 : 0;
}

static int crypt_user_created(struct popvault_user *puser,
			      const char **error_r)
{
	struct mail_user *user = puser->user;
	const struct popvault_settings *set = &puser->set;
	struct popvault_crypt_user *cuser;
	const char *home, *error;

	/* any key setting turns the read side on: a password-mode user
	   whose new mail is no longer encrypted still reads the old */
	if (!set->encrypt && !set->require_encrypted &&
	    set->master_key == NULL && set->key_password == NULL) {
		e_debug(puser->event, "crypt: off (no popvault_encrypt, "
			"popvault_require_encrypted, popvault_master_key or "
			"popvault_key_password)");
		return 0;
	}
	/* A login that could create or unlock keys but has nothing to do
	   it with is a misconfiguration; LMTP and doveadm never get the
	   login password, so there it only fails when a key is needed.
	   Neither does another user's session for a shared folder's owner
	   (user->creator). */
	if (set->encrypt && set->master_key == NULL &&
	    set->key_password == NULL && crypt_user_is_login(user)) {
		*error_r = "popvault_encrypt=yes needs popvault_master_key or "
			"popvault_key_password (e.g. "
			"userdb_popvault_key_password="
			POPVAULT_HINT_PASSWORD_VAR " from the passdb)";
		return -1;
	}
	if (mail_user_get_home(user, &home) <= 0 || home[0] != '/') {
		*error_r = "encryption needs the user's home directory "
			"(the key store lives there)";
		return -1;
	}

	cuser = p_new(user->pool, struct popvault_crypt_user, 1);
	cuser->user = user;
	cuser->event = puser->event;
	cuser->set = &puser->set;
	cuser->keys_dir = p_strconcat(user->pool, home,
				      "/" POPVAULT_KEYS_SUBDIR, NULL);
	cuser->key_password = set->key_password;
	/* auth adds master_user to the userdb reply of a master login */
	cuser->master_user = p_strdup_empty(user->pool,
		popvault_userdb_field(user->userdb_fields, "master_user"));
	if (cuser->master_user != NULL && cuser->key_password != NULL) {
		e_debug(puser->event, "crypt: login by master user %s: "
			"popvault_key_password is its password, not used",
			cuser->master_user);
		cuser->key_password = NULL;
	}
	if (set->encrypt && set->master_key != NULL) {
		/* Fail closed: with the master key missing, refuse the user
		   (LMTP 451, nothing stored) rather than find out later. */
		if (crypt_user_load_master(cuser, &error) < 0) {
			*error_r = t_strdup_printf("crypt: %s", error);
			return -1;
		}
	}
	/* Dovecot's own writers of plaintext: refused before any mail of
	   the user is read or saved (LMTP sets the recipient up after DATA,
	   or at RCPT with lmtp_rcpt_check_quota; without it, with the spool
	   on a disk, popvault-lmtp.c refuses at RCPT, docs/encryption.md).
	   Not for the raw user that holds mail being delivered
	   (autocreated, no creator): failing it would stop the whole lmtp
	   process, and the recipient is checked. */
	if ((!user->autocreated ||
	     popvault_compat_user_is_shared_owner(user)) &&
	    popvault_crypt_user_has_encrypted_mail(set, cuser->keys_dir,
						   puser->event) &&
	    (popvault_crypt_check_fts(user, set, puser->event, error_r) < 0 ||
	     popvault_crypt_check_temp_dir(user, set, puser->event,
					   error_r) < 0))
		return -1;
	puser->crypt = cuser;
	if (set->encrypt && cuser->key_password != NULL &&
	    crypt_user_is_login(user))
		crypt_user_login_keys(cuser);
	e_debug(puser->event, "crypt: encrypt=%s require_encrypted=%s "
		"keys=%s", set->encrypt ? "yes" : "no",
		set->require_encrypted ? "yes" : "no", cuser->keys_dir);
	return 0;
}

static void crypt_user_deinit(struct popvault_user *puser)
{
	struct popvault_crypt_user *cuser = puser->crypt;

	if (cuser == NULL)
		return;
	if (cuser->sender != NULL)
		cuser->sender->refcount--;
	popvault_receiver_free(&cuser->receiver);
	sodium_free(cuser->cache_key);
	cuser->cache_key = NULL;
	master_slot_unref(&cuser->master);
	puser->crypt = NULL;
}

const struct popvault_user_hooks popvault_crypt_user_hooks = {
	.created = crypt_user_created,
	.deinit_post = crypt_user_deinit,
};

/* Dovecot's external attachment store would keep attachments in
   plaintext. Asked of the namespaces' storages, whose settings Dovecot
   has parsed already: asked of the user at creation, it was a settings
   lookup of its own for every delivery on 2.4 (docs/performance.md).
   An error here fails the login or delivery as one at creation does. */
static void crypt_namespaces_created(struct mail_namespace *namespaces)
{
	struct mail_user *user = namespaces->user;
	struct popvault_crypt_user *cuser = crypt_user(user);
	struct mail_namespace *ns;

	if (cuser == NULL || !cuser->set->encrypt || user->error != NULL)
		return;
	for (ns = namespaces; ns != NULL; ns = ns->next) {
		if (ns->storage != NULL &&
		    popvault_compat_attachment_dir(ns->storage)[0] != '\0') {
			user->error = p_strdup_printf(user->pool,
				"popvault: user %s: popvault_encrypt=yes can't "
				"be used with mail_attachment_dir (attachments "
				"would be stored in plaintext)", user->username);
			return;
		}
	}
}

/* ---- hooks ---- */

static struct mail_storage_hooks popvault_crypt_read_hooks = {
	.mailbox_allocated = crypt_outer_mailbox_allocated,
	.mail_allocated = crypt_mail_allocated,
};

static struct mail_storage_hooks popvault_crypt_post_hooks = {
	.mail_namespaces_created = crypt_namespaces_created,
	.mailbox_allocated = crypt_mailbox_allocated,
};

/* Sorted by name among all plugins' hooks: lib95 runs last, so its
   save_begin is the innermost layer (after compression); lib19 runs before
   every lib20 plugin, so its istream_opened is the outer layer that
   decrypts before decompression. */
static struct module popvault_crypt_post_module = {
	.path = "lib95_popvault_crypt_plugin.so"
};
static struct module popvault_crypt_read_module = {
	.path = "lib19_popvault_crypt_read_plugin.so"
};

void popvault_crypt_init(struct module *module ATTR_UNUSED)
{
	if (popvault_crypto_init() < 0)
		i_fatal("popvault: crypt: libsodium initialization failed");
	i_array_init(&sender_cache, SENDER_CACHE_MAX);
	mail_storage_hooks_add_forced(&popvault_crypt_read_module,
				      &popvault_crypt_read_hooks);
	mail_storage_hooks_add_forced(&popvault_crypt_post_module,
				      &popvault_crypt_post_hooks);
	popvault_crypt_cache_init(crypt_cache_key, crypt_box_wants_cache,
				  crypt_delivered_decrypt);
}

void popvault_crypt_deinit(void)
{
	struct sender_cache_entry *entry;

	popvault_crypt_cache_deinit();
	popvault_ostream_encrypt_deinit();
	master_slots_deinit();
	mail_storage_hooks_remove(&popvault_crypt_post_hooks);
	mail_storage_hooks_remove(&popvault_crypt_read_hooks);
	array_foreach_elem(&sender_cache, entry) {
		popvault_sender_free(&entry->sender);
		i_free(entry->key);
		i_free(entry);
	}
	array_free(&sender_cache);
	popvault_crypto_deinit();
}
