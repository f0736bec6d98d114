/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* doveadm popvault encrypt | decrypt | verify (docs/encryption.md,
   "Tools for existing mail").

   encrypt/decrypt replace each message by a re-encoded copy in the same
   mailbox, through the storage API (so the save and read hooks of
   popvault-crypt-storage.c do the cryptography, whatever unlocks the
   keys). Per message, in this order:

     1. save the copy (same GUID, flags, keywords, received and save
        date, the POP3 UIDL the client sees, POP3 order), commit;
     2. read the copy back: it must be stored in the target form and be
        byte-identical to the source, else the source stays;
     3. expunge the source, commit.

   Killed between 1 and 3, the mailbox holds both. A re-run pairs each
   source with a newer target-form message of the same GUID whose bytes
   are identical and only expunges the source (step 3), so nothing is
   lost or duplicated whichever moment the process died.

   mdbox names each copy with a GUID derived from the source's
   (crypt_tool_copy_guid()): a copy killed inside its append comes back
   damaged from the storage rebuild, and only that name tells it apart
   from mail (crypt_tool_drop_broken_copies()). */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "guid.h"
#include "str.h"
#include "seq-range-array.h"
#include "istream.h"
#include "message-size.h"
#include "hostpid.h"
#include "mkdir-parents.h"
#include "mail-namespace.h"
#include "mail-search-build.h"
#include "mail-storage-private.h"
#include "mail-storage-settings.h"
#include "mail-cache.h"
#include "index-pop3-uidl.h"

#include <dirent.h>
#include <signal.h>
#include <limits.h>
#include <fcntl.h>
#include <unistd.h>
#include "mailbox-list-iter.h"
#include "doveadm-print.h"
#include "doveadm-mail.h"
#include "popvault-user.h"
#include "popvault-crypt.h"
#include "popvault-ledger.h"
#include "popvault-progress.h"
#include "popvault-doveadm.h"
#include "popvault-retention.h"
#include "popvault-compat.h"
#include "popvault-secret-stdin.h"

#include <sodium.h>

/* Only the doveadm binary defines these (see doveadm-popvault.c). */
#pragma weak doveadm_cmd_register_ver2
#pragma weak doveadm_mail_cmd_alloc_size
#pragma weak doveadm_mail_failed_error
#pragma weak doveadm_print
#pragma weak doveadm_print_flush
#pragma weak doveadm_print_header_simple
#pragma weak doveadm_print_init
#pragma weak doveadm_cmd_param_str
#pragma weak doveadm_cmd_param_bool

enum crypt_tool_op {
	CRYPT_TOOL_ENCRYPT,
	CRYPT_TOOL_DECRYPT,
	CRYPT_TOOL_VERIFY,
};

static const char *const crypt_tool_names[] = {
	"encrypt", "decrypt", "verify"
};

struct crypt_tool_cmd_context {
	struct doveadm_mail_cmd_context ctx;
	enum crypt_tool_op op;
	const char *mailbox;
	/* something could not be checked at all (not a damaged message):
	   verify then exits with EX_TEMPFAIL, not EX_DATAERR */
	bool temp_failure;
	/* -P: the key password (password mode), one line from stdin */
	bool password_stdin;
	char *password;
	/* decrypt, per user: no crypt settings, so nothing here opens
	   encrypted mail (popvault_crypt_see_containers()) */
	bool no_keys;
	/* decrypt, per user: encrypted messages left for that reason */
	unsigned int left_encrypted;
	/* encrypt on mdbox, per user: the last run repaired the storage
	   (crypt_tool_size_is_wrong()) */
	bool check_sizes;
};

/* One message of a mailbox, as found by the scan. */
struct crypt_tool_msg {
	uint32_t uid;
	const char *guid;
	bool encrypted;
	uoff_t vsize;
	time_t received;
	/* a target-form message already matched with a source */
	bool paired;
	/* mdbox: a damaged copy of an interrupted run, expunged */
	bool dropped;
};
ARRAY_DEFINE_TYPE(crypt_tool_msg_p, struct crypt_tool_msg *);

struct crypt_tool_box {
	struct crypt_tool_cmd_context *cmd;
	struct mail_user *user;
	struct mailbox *box;
	struct popvault_progress *progress;
	pool_t pool;
	const char *uidl_format;
	uint32_t uid_validity;
	/* encrypt: the copies must be encrypted; decrypt: plaintext */
	bool target_encrypted;
	bool maildir;
	/* mdbox: copies get a GUID of their own (see crypt_tool_save_copy()) */
	bool mdbox;

	ARRAY(struct crypt_tool_msg *) sources;
	/* target-form messages by key: "<guid>"; "dup\t<guid>\t<pop3 uidl>"
	   (crypt_tool_dedup()); maildir only, "size <vsize>" for those
	   without a stored POP3 UIDL; mdbox only, "rd <received> <vsize>"
	   (crypt_tool_find_copies()); mdbox only, every message of either
	   form by "any <guid>" (crypt_tool_drop_broken_copies()) */
	HASH_TABLE(const char *, ARRAY_TYPE(crypt_tool_msg_p) *) targets;

	unsigned int done, skipped, failed;
};

static void crypt_tool_print(struct crypt_tool_box *bctx, uint32_t uid,
			     uint32_t new_uid, const char *result)
{
	popvault_doveadm_print_user(&bctx->cmd->ctx, bctx->user->username);
	doveadm_print(mailbox_get_vname(bctx->box));
	doveadm_print(dec2str(uid));
	if (bctx->cmd->op != CRYPT_TOOL_VERIFY)
		doveadm_print(new_uid == 0 ? "-" : dec2str(new_uid));
	doveadm_print(result);
	/* one line per message as it happens: a script (or a person after
	   kill -9) sees exactly how far the run got */
	doveadm_print_flush();
}

static void crypt_tool_fail(struct crypt_tool_box *bctx, uint32_t uid,
			    const char *cause)
{
	bctx->failed++;
	e_error(bctx->user->event, "popvault %s: user %s mailbox %s uid %u: %s",
		crypt_tool_names[bctx->cmd->op], bctx->user->username,
		mailbox_get_vname(bctx->box), uid, cause);
	crypt_tool_print(bctx, uid, 0, t_strconcat("failed: ", cause, NULL));
}

static const char *crypt_tool_box_error(struct mailbox *box)
{
	return mailbox_get_last_internal_error(box, NULL);
}

/* Reads the whole message; the decrypting stream authenticates every
   chunk on the way. */
static int crypt_tool_read_all(struct mail *mail, const char **error_r)
{
	struct istream *input;
	const unsigned char *data;
	size_t size;

	if (mail_get_stream_because(mail, NULL, NULL, "popvault verify",
				    &input) < 0) {
		*error_r = crypt_tool_box_error(mail->box);
		return -1;
	}
	i_stream_seek(input, 0);
	while (i_stream_read_more(input, &data, &size) > 0)
		i_stream_skip(input, size);
	if (input->stream_errno != 0) {
		*error_r = i_stream_get_error(input);
		return -1;
	}
	return 0;
}

/* 1 when both messages have the same bytes, 0 when not, -1 on a read
   error (error_r). */
static int crypt_tool_mails_equal(struct mail *a, struct mail *b,
				  const char **error_r)
{
	struct istream *ia, *ib;
	unsigned char buf[IO_BLOCK_SIZE];
	const unsigned char *da, *db;
	size_t sa, sb, n, pos;

	if (mail_get_stream(a, NULL, NULL, &ia) < 0) {
		*error_r = crypt_tool_box_error(a->box);
		return -1;
	}
	if (mail_get_stream(b, NULL, NULL, &ib) < 0) {
		*error_r = crypt_tool_box_error(b->box);
		return -1;
	}
	i_stream_seek(ia, 0);
	i_stream_seek(ib, 0);
	/* Both may be views of one shared file stream (mdbox m.* files):
	   reading one can replace the other's buffer, so a's bytes are
	   copied out before b is read. */
	for (;;) {
		(void)i_stream_read_more(ia, &da, &sa);
		if (ia->stream_errno != 0) {
			*error_r = i_stream_get_error(ia);
			return -1;
		}
		n = I_MIN(sa, sizeof(buf));
		memcpy(buf, da, n);
		i_stream_skip(ia, n);
		for (pos = 0; pos < n || n == 0; ) {
			(void)i_stream_read_more(ib, &db, &sb);
			if (ib->stream_errno != 0) {
				*error_r = i_stream_get_error(ib);
				return -1;
			}
			if (n == 0) {
				/* a ended: b must end too */
				return sb == 0 ? 1 : 0;
			}
			if (sb == 0)
				return 0;
			sb = I_MIN(sb, n - pos);
			if (memcmp(buf + pos, db, sb) != 0)
				return 0;
			i_stream_skip(ib, sb);
			pos += sb;
		}
	}
}

/* The UIDL a POP3 client sees for mail now: the stored one, else the
   one pop3_uidl_format gives (it depends on the UID, which the copy
   will not keep). */
static int crypt_tool_get_uidl(struct crypt_tool_box *bctx, struct mail *mail,
			       const char **uidl_r, const char **error_r)
{
	if (mail_get_special(mail, MAIL_FETCH_UIDL_BACKEND, uidl_r) == 0 &&
	    (*uidl_r)[0] != '\0')
		return 0;
	return popvault_uidl_default(mail, bctx->uidl_format,
				     bctx->uid_validity, uidl_r, error_r);
}

/* Attempts at a copy of one message in one run: the first, and one more
   after a copy that read back wrong (crypt_tool_convert_one()). */
#define CRYPT_TOOL_COPY_ATTEMPTS 2

/* mdbox: the GUID of the copy of the message with src_guid that this
   command makes at attempt (0-based). Derived, not random: a re-run
   finds a copy by it even when all else about the copy is damaged (a
   kill inside its append leaves the message size in its dbox header
   unwritten, and the storage rebuild then salvages the copy with the
   zeroed header as part of its body). Different from the source's GUID
   (a rebuild links records to stored messages by GUID) and per attempt
   (a copy that read back wrong is expunged but stays in the m.* file
   until a purge). The command is part of it, so a decrypt's copy of an
   encrypt's copy gets a GUID of its own. */
static const char *crypt_tool_copy_guid(const struct crypt_tool_box *bctx,
					const char *src_guid,
					unsigned int attempt)
{
	guid_128_t guid;
	const char *input;

	input = t_strdup_printf("popvault %s copy %u of %s",
				crypt_tool_names[bctx->cmd->op], attempt,
				src_guid);
	crypto_generichash(guid, sizeof(guid), (const void *)input,
			   strlen(input), NULL, 0);
	return guid_128_to_string(guid);
}

/* Step 1: saves a copy of src; returns its UID, 0 on failure. */
static uint32_t crypt_tool_save_copy(struct crypt_tool_box *bctx,
				     struct mail *src, unsigned int attempt)
{
	struct mailbox_transaction_context *t;
	struct mail_transaction_commit_changes changes;
	struct mail_save_context *save;
	struct istream *input;
	const char *guid, *uidl, *order, *error;
	unsigned int pop3_order;
	time_t received, saved;
	uint32_t new_uid = 0;
	ssize_t ret;

	if (mail_get_special(src, MAIL_FETCH_GUID, &guid) < 0 ||
	    mail_get_received_date(src, &received) < 0 ||
	    mail_get_save_date(src, &saved) < 0 ||
	    mail_get_special(src, MAIL_FETCH_POP3_ORDER, &order) < 0) {
		crypt_tool_fail(bctx, src->uid, crypt_tool_box_error(src->box));
		return 0;
	}
	if (crypt_tool_get_uidl(bctx, src, &uidl, &error) < 0) {
		crypt_tool_fail(bctx, src->uid, error);
		return 0;
	}
	if (mail_get_stream(src, NULL, NULL, &input) < 0) {
		crypt_tool_fail(bctx, src->uid, crypt_tool_box_error(src->box));
		return 0;
	}
	i_stream_seek(input, 0);

	/* saves must be external; the expunge later must not be (an
	   external expunge is taken as already done in the storage) */
	t = mailbox_transaction_begin(bctx->box,
				      MAILBOX_TRANSACTION_FLAG_EXTERNAL,
				      "popvault crypt tool");
	save = mailbox_save_alloc(t);
	mailbox_save_copy_flags(save, src);
	mailbox_save_set_received_date(save, received, 0);
	mailbox_save_set_save_date(save, saved);
	/* Same GUID: the copy stays recognisable as this message. Not on
	   mdbox: after a killed append it rebuilds its storage and links
	   mailbox records to stored messages by GUID, and a copy and its
	   original sharing one then read as each other (seen: a fresh copy
	   read back as the plaintext). There the copy gets a GUID derived
	   from the original's. */
	if (!bctx->mdbox)
		mailbox_save_set_guid(save, guid);
	else if (guid[0] != '\0') {
		mailbox_save_set_guid(save,
			crypt_tool_copy_guid(bctx, guid, attempt));
	}
	mailbox_save_set_pop3_uidl(save, uidl);
	if (order[0] != '\0' && str_to_uint(order, &pop3_order) == 0)
		mailbox_save_set_pop3_order(save, pop3_order);

	if (mailbox_save_begin(&save, input) < 0) {
		crypt_tool_fail(bctx, src->uid, t_strconcat("save: ",
			crypt_tool_box_error(bctx->box), NULL));
		mailbox_transaction_rollback(&t);
		return 0;
	}
	while ((ret = i_stream_read(input)) > 0 || ret == -2) {
		if (mailbox_save_continue(save) < 0)
			break;
	}
	if (input->stream_errno != 0) {
		error = i_stream_get_error(input);
		mailbox_save_cancel(&save);
		crypt_tool_fail(bctx, src->uid, error);
		mailbox_transaction_rollback(&t);
		return 0;
	}
	if (ret != -1 || mailbox_save_finish(&save) < 0) {
		if (save != NULL)
			mailbox_save_cancel(&save);
		crypt_tool_fail(bctx, src->uid, t_strconcat("save: ",
			crypt_tool_box_error(bctx->box), NULL));
		mailbox_transaction_rollback(&t);
		return 0;
	}
	if (mailbox_transaction_commit_get_changes(&t, &changes) < 0) {
		crypt_tool_fail(bctx, src->uid, t_strconcat("save: ",
			crypt_tool_box_error(bctx->box), NULL));
		return 0;
	}
	if (seq_range_count(&changes.saved_uids) == 1) {
		const struct seq_range *range =
			array_front(&changes.saved_uids);
		new_uid = range->seq1;
	}
	pool_unref(&changes.pool);
	if (new_uid == 0) {
		crypt_tool_fail(bctx, src->uid,
				"the storage did not return the copy's UID");
	}
	return new_uid;
}

/* dbox assumes no message above the index's max_uid_with_pop3_uidl has
   a stored POP3 UIDL (they are set at migrations only) and would not
   even look at the copy's; mdbox raises it when saving, sdbox in 2.3.19
   does not. */
static void crypt_tool_pop3_uidl_tracked(struct mailbox_transaction_context *t,
					 uint32_t uid)
{
	struct mailbox_index_pop3_uidl uidl;
	const void *data;
	size_t size;

	mail_index_get_header_ext(t->view, t->box->pop3_uidl_hdr_ext_id,
				  &data, &size);
	if (size < sizeof(uidl)) {
		/* not tracked yet: every message is looked at */
		return;
	}
	memcpy(&uidl, data, sizeof(uidl));
	if (uidl.max_uid_with_pop3_uidl < uid)
		index_pop3_uidl_set_max_uid(t->box, t->itrans, uid);
}

/* Steps 2 and 3: checks the copy dest_uid of src_uid and only then
   expunges the source. With resumed, the copy comes from an earlier run:
   its flags are brought up to date and a missing stored POP3 UIDL (lost
   by a crash inside the storage's commit) is set. Returns 1 when the
   source was expunged, 2 when a client expunged the source meanwhile,
   0 when the copy does not match (mismatch_r, both kept), -2 when a
   fresh copy (not resumed) could not be read back (mismatch_r, both
   kept, not reported: the caller removes the copy), -1 on other
   errors. */
static int crypt_tool_replace(struct crypt_tool_box *bctx, uint32_t src_uid,
			      uint32_t dest_uid, bool resumed,
			      const char **mismatch_r)
{
	struct mailbox_transaction_context *t;
	struct mail *src, *dest;
	struct mail_keywords *kw;
	const char *error, *uidl, *dest_uidl;
	bool encrypted;
	int ret;

	t = mailbox_transaction_begin(bctx->box, 0, "popvault crypt tool");
	src = mail_alloc(t, 0, NULL);
	dest = mail_alloc(t, 0, NULL);
	if (!mail_set_uid(src, src_uid)) {
		/* a client expunged it meanwhile */
		mail_free(&src);
		mail_free(&dest);
		mailbox_transaction_rollback(&t);
		return 2;
	}
	if (!mail_set_uid(dest, dest_uid)) {
		error = "the copy vanished before it could be checked";
		ret = -1;
	} else if (popvault_crypt_mail_was_encrypted(dest, &encrypted) < 0) {
		error = crypt_tool_box_error(bctx->box);
		ret = -1;
	} else if (encrypted != bctx->target_encrypted) {
		error = bctx->target_encrypted ?
			"the copy was stored in plaintext (is "
			"popvault_encrypt=yes for this user?)" :
			"the copy was stored encrypted";
		ret = 0;
	} else if ((ret = crypt_tool_mails_equal(src, dest, &error)) < 0) {
		/* error set */
	} else if (ret == 0) {
		error = "the copy differs from the original";
		ret = 0;
	} else {
		if (resumed) {
			mail_update_flags(dest, MODIFY_REPLACE,
					  mail_get_flags(src) & ENUM_NEGATE(MAIL_RECENT));
			kw = mailbox_keywords_create_valid(bctx->box,
				mail_get_keywords(src));
			mail_update_keywords(dest, MODIFY_REPLACE, kw);
			mailbox_keywords_unref(&kw);
			if (crypt_tool_get_uidl(bctx, src, &uidl, &error) == 0 &&
			    (mail_get_special(dest, MAIL_FETCH_UIDL_BACKEND,
					      &dest_uidl) < 0 ||
			     dest_uidl[0] == '\0'))
				mail_update_pop3_uidl(dest, uidl);
		}
		popvault_retention_copy_record(t, src->seq, dest->seq);
		crypt_tool_pop3_uidl_tracked(t, dest_uid);
		mail_expunge(src);
		ret = 1;
	}
	mail_free(&src);
	mail_free(&dest);
	if (ret <= 0) {
		mailbox_transaction_rollback(&t);
		*mismatch_r = error;
		if (ret < 0 && !resumed)
			return -2;
		if (ret < 0) {
			crypt_tool_fail(bctx, src_uid, t_strdup_printf(
				"copy uid %u: %s; original kept", dest_uid,
				error));
		}
		return ret;
	}
	if (mailbox_transaction_commit(&t) < 0) {
		crypt_tool_fail(bctx, src_uid, t_strconcat("expunge: ",
			crypt_tool_box_error(bctx->box), NULL));
		return -1;
	}
	/* maildir and sdbox remove the file only when syncing: the
	   plaintext must be gone when the message is reported */
	if (mailbox_sync(bctx->box, 0) < 0) {
		crypt_tool_fail(bctx, src_uid, t_strconcat("sync: ",
			crypt_tool_box_error(bctx->box), NULL));
		return -1;
	}
	return 1;
}

/* Target-form messages that may be an earlier run's copy of src, best
   first: on mdbox those with a GUID this command derives from src's,
   then those with src's GUID (GUIDs can repeat: copies within a
   mailbox; and the copy can be older than src: an mdbox index rebuild
   after a kill brings expunged but not yet purged originals back with
   new UIDs), then maildir messages of src's size, newer than src, that
   lost their GUID and POP3 UIDL (a kill inside maildir's commit, after
   the rename into cur/ and before dovecot-uidlist was written). Only
   those not yet paired; crypt_tool_replace() then insists on identical
   bytes. A plaintext and an encrypted message with one GUID only come
   from these tools (a copy within a user keeps the form). */
static void crypt_tool_find_copies(struct crypt_tool_box *bctx,
				   const struct crypt_tool_msg *src,
				   ARRAY_TYPE(crypt_tool_msg_p) *copies)
{
	ARRAY_TYPE(crypt_tool_msg_p) *list;
	struct crypt_tool_msg *msg;
	const char *keys[CRYPT_TOOL_COPY_ATTEMPTS + 3];
	unsigned int i, size_key = CRYPT_TOOL_COPY_ATTEMPTS + 1;

	for (i = 0; i < CRYPT_TOOL_COPY_ATTEMPTS; i++) {
		keys[i] = !bctx->mdbox || src->guid[0] == '\0' ? NULL :
			crypt_tool_copy_guid(bctx, src->guid, i);
	}
	keys[i++] = src->guid[0] == '\0' ? NULL : src->guid;
	keys[i++] = t_strdup_printf("size %"PRIuUOFF_T, src->vsize);
	/* mdbox: a rebuild brings back originals expunged but not purged,
	   with new UIDs above their copies'; and copies made before copy
	   GUIDs were derived have random ones */
	keys[i++] = !bctx->mdbox ? NULL : t_strdup_printf("rd %ld %"PRIuUOFF_T,
		(long)src->received, src->vsize);
	i_assert(i == N_ELEMENTS(keys));
	for (i = 0; i < N_ELEMENTS(keys); i++) {
		if (keys[i] == NULL ||
		    (list = hash_table_lookup(bctx->targets, keys[i])) == NULL)
			continue;
		array_foreach_elem(list, msg) {
			if (!msg->paired && msg != src &&
			    (i != size_key || msg->uid > src->uid))
				array_push_back(copies, &msg);
		}
	}
}

static int crypt_tool_expunge_uid(struct crypt_tool_box *bctx, uint32_t uid)
{
	struct mailbox_transaction_context *t;
	struct mail *mail;

	t = mailbox_transaction_begin(bctx->box, 0, "popvault crypt tool");
	mail = mail_alloc(t, 0, NULL);
	if (mail_set_uid(mail, uid))
		mail_expunge(mail);
	mail_free(&mail);
	if (mailbox_transaction_commit(&t) < 0 ||
	    mailbox_sync(bctx->box, 0) < 0) {
		crypt_tool_fail(bctx, uid, t_strconcat("expunge: ",
			crypt_tool_box_error(bctx->box), NULL));
		return -1;
	}
	return 0;
}

/* Steps 1-3 for one message: 1 done, 0 the copy read back wrong and was
   removed again (error_r), -1 failed (reported). */
static int crypt_tool_copy_once(struct crypt_tool_box *bctx,
				struct crypt_tool_msg *msg,
				unsigned int attempt, const char **error_r)
{
	struct mailbox_transaction_context *t;
	struct mail *src;
	uint32_t new_uid;
	int ret;

	t = mailbox_transaction_begin(bctx->box, 0, "popvault crypt tool");
	src = mail_alloc(t, MAIL_FETCH_STREAM_BODY | MAIL_FETCH_GUID, NULL);
	if (!mail_set_uid(src, msg->uid)) {
		/* expunged by a client meanwhile */
		mail_free(&src);
		mailbox_transaction_rollback(&t);
		return 1;
	}
	new_uid = crypt_tool_save_copy(bctx, src, attempt);
	mail_free(&src);
	mailbox_transaction_rollback(&t);
	if (new_uid == 0)
		return -1;

	/* see the copy */
	if (mailbox_sync(bctx->box, 0) < 0) {
		crypt_tool_fail(bctx, msg->uid,
				crypt_tool_box_error(bctx->box));
		return -1;
	}
	ret = crypt_tool_replace(bctx, msg->uid, new_uid, FALSE, error_r);
	if (ret == -2) {
		/* Unreadable here (keys that did not unlock): left beside
		   the original, a client would see the message twice until a
		   later run pairs them. Ours and just made, so it goes. */
		if (crypt_tool_expunge_uid(bctx, new_uid) < 0)
			return -1;
		crypt_tool_fail(bctx, msg->uid, t_strdup_printf(
			"can't read the copy back: %s; copy removed, original "
			"kept", *error_r));
		return -1;
	}
	if (ret < 0)
		return -1;
	if (ret == 2) {
		/* the client deleted the message while we copied it: so
		   does the copy go */
		if (crypt_tool_expunge_uid(bctx, new_uid) < 0)
			return -1;
		crypt_tool_print(bctx, msg->uid, 0, "expunged by a client");
		return 1;
	}
	if (ret == 0) {
		/* ours and just made: removing it loses nothing */
		return crypt_tool_expunge_uid(bctx, new_uid) < 0 ? -1 : 0;
	}
	bctx->done++;
	crypt_tool_print(bctx, msg->uid, new_uid,
			 bctx->target_encrypted ? "encrypted" : "decrypted");
	return 1;
}

static int crypt_tool_convert_one(struct crypt_tool_box *bctx,
				  struct crypt_tool_msg *msg)
{
	ARRAY_TYPE(crypt_tool_msg_p) copies;
	struct crypt_tool_msg *copy;
	const char *error;
	unsigned int attempt;
	int ret;

	t_array_init(&copies, 4);
	crypt_tool_find_copies(bctx, msg, &copies);
	array_foreach_elem(&copies, copy) {
		/* an earlier run died after saving this copy? */
		if (copy->paired)
			continue;
		ret = crypt_tool_replace(bctx, msg->uid, copy->uid, TRUE,
					 &error);
		if (ret < 0)
			return -1;
		if (ret == 2) {
			/* gone: whether the copy stays is the client's
			   business, it can see it */
			return 0;
		}
		if (ret > 0) {
			copy->paired = TRUE;
			bctx->done++;
			crypt_tool_print(bctx, msg->uid, copy->uid,
					 "completed");
			return 0;
		}
		/* not the same message after all */
	}

	/* A copy that reads back wrong is removed and made once more: after
	   a killed mdbox append Dovecot may notice its damaged map (and
	   rebuild it) only when the next copy is read. */
	for (attempt = 0;; attempt++) {
		if ((ret = crypt_tool_copy_once(bctx, msg, attempt,
						&error)) != 0)
			return ret < 0 ? -1 : 0;
		if (attempt + 1 == CRYPT_TOOL_COPY_ATTEMPTS) {
			crypt_tool_fail(bctx, msg->uid, t_strconcat(
				"the copy did not read back right twice "
				"(", error, "); original kept", NULL));
			return -1;
		}
		e_warning(bctx->user->event, "popvault %s: user %s mailbox %s "
			  "uid %u: %s; copy removed, trying again",
			  crypt_tool_names[bctx->cmd->op],
			  bctx->user->username, mailbox_get_vname(bctx->box),
			  msg->uid, error);
	}
}

static void crypt_tool_add_target(struct crypt_tool_box *bctx,
				  const char *key, struct crypt_tool_msg *msg)
{
	ARRAY_TYPE(crypt_tool_msg_p) *list;

	if (key[0] == '\0')
		return;
	list = hash_table_lookup(bctx->targets, key);
	if (list == NULL) {
		list = p_new(bctx->pool, ARRAY_TYPE(crypt_tool_msg_p), 1);
		p_array_init(list, bctx->pool, 1);
		key = p_strdup(bctx->pool, key);
		hash_table_insert(bctx->targets, key, list);
	}
	array_push_back(list, &msg);
}

/* encrypt on mdbox after a repair: TRUE in *wrong_r when the size the
   storage gives for the encrypted mail is not that of the message. A
   storage rebuild that fixes a damaged m.* file (a kill inside an
   append) rewrites the stored virtual size of the message before the
   damage too, computed from the bytes in the file: the ciphertext. IMAP
   then cuts the message off at that size and drops the connection. */
static int crypt_tool_size_is_wrong(struct mail *mail, bool *wrong_r,
				    const char **error_r)
{
	struct message_size body;
	struct istream *input;
	uoff_t vsize;
	bool has_nuls;

	if (mail_get_virtual_size(mail, &vsize) < 0 ||
	    mail_get_stream(mail, NULL, NULL, &input) < 0) {
		*error_r = crypt_tool_box_error(mail->box);
		return -1;
	}
	i_stream_seek(input, 0);
	if (message_get_body_size(input, &body, &has_nuls) < 0) {
		*error_r = i_stream_get_error(input);
		return -1;
	}
	*wrong_r = body.virtual_size != vsize;
	return 0;
}

/* Reads every message: verify reports failures; encrypt/decrypt sort
   them into sources (to convert) and targets (already converted). */
static int crypt_tool_scan(struct crypt_tool_box *bctx)
{
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *sctx;
	struct crypt_tool_msg *msg;
	struct mail *mail;
	const char *guid, *uidl, *error;
	bool encrypted, wrong_size;
	int ret = 0;

	t = mailbox_transaction_begin(bctx->box, 0, "popvault crypt tool");
	args = mail_search_build_init();
	mail_search_build_add_all(args);
	sctx = mailbox_search_init(t, args, NULL, MAIL_FETCH_GUID |
				   MAIL_FETCH_VIRTUAL_SIZE |
				   MAIL_FETCH_RECEIVED_DATE, NULL);
	mail_search_args_unref(&args);
	while (mailbox_search_next(sctx, &mail)) T_BEGIN {
		if (bctx->cmd->op == CRYPT_TOOL_VERIFY) {
			if (crypt_tool_read_all(mail, &error) < 0)
				crypt_tool_fail(bctx, mail->uid, error);
			else
				bctx->done++;
			popvault_progress_step(bctx->progress);
		} else if (popvault_crypt_mail_was_encrypted(mail,
							     &encrypted) < 0) {
			/* never touch what can't be read */
			crypt_tool_fail(bctx, mail->uid,
					crypt_tool_box_error(bctx->box));
		} else if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0) {
			crypt_tool_fail(bctx, mail->uid,
					crypt_tool_box_error(bctx->box));
		} else {
			msg = p_new(bctx->pool, struct crypt_tool_msg, 1);
			msg->uid = mail->uid;
			msg->guid = p_strdup(bctx->pool, guid);
			msg->encrypted = encrypted;
			if (mail_get_virtual_size(mail, &msg->vsize) < 0)
				msg->vsize = UOFF_T_MAX;
			if (mail_get_received_date(mail, &msg->received) < 0)
				msg->received = (time_t)-1;
			if (bctx->mdbox && msg->guid[0] != '\0') {
				crypt_tool_add_target(bctx, t_strconcat(
					"any ", msg->guid, NULL), msg);
			}
			wrong_size = FALSE;
			if (encrypted && bctx->mdbox &&
			    bctx->cmd->check_sizes &&
			    crypt_tool_size_is_wrong(mail, &wrong_size,
						     &error) < 0) {
				crypt_tool_fail(bctx, mail->uid, error);
				wrong_size = FALSE;
			}
			if (encrypted != bctx->target_encrypted ||
			    wrong_size) {
				/* wrong_size: copied again like a source,
				   the copy's stored size is its own */
				array_push_back(&bctx->sources, &msg);
			} else {
				bctx->skipped++;
				crypt_tool_add_target(bctx, msg->guid, msg);
				if (mail_get_special(mail,
					MAIL_FETCH_UIDL_BACKEND, &uidl) < 0)
					uidl = "";
				if (uidl[0] != '\0' && msg->guid[0] != '\0') {
					crypt_tool_add_target(bctx,
						t_strdup_printf("dup\t%s\t%s",
							msg->guid, uidl), msg);
				}
				if (bctx->mdbox && msg->received != (time_t)-1 &&
				    msg->vsize != UOFF_T_MAX) {
					crypt_tool_add_target(bctx,
						t_strdup_printf("rd %ld %"PRIuUOFF_T,
							(long)msg->received,
							msg->vsize), msg);
				}
				if (bctx->maildir && uidl[0] == '\0') {
					crypt_tool_add_target(bctx,
						t_strdup_printf("size %"PRIuUOFF_T,
								msg->vsize),
						msg);
				}
			}
		}
	} T_END;
	if (mailbox_search_deinit(&sctx) < 0) {
		e_error(bctx->user->event, "popvault %s: user %s mailbox %s: "
			"search failed: %s", crypt_tool_names[bctx->cmd->op],
			bctx->user->username, mailbox_get_vname(bctx->box),
			crypt_tool_box_error(bctx->box));
		ret = -1;
	}
	mailbox_transaction_rollback(&t);
	return ret;
}

/* Target-form messages with the same GUID, the same stored POP3 UIDL
   and the same bytes are one message twice: a POP3 client could not
   even tell them apart. They appear when mdbox rebuilds its indexes
   after a killed run and brings back a copy whose commit never
   finished. The first (lowest UID) stays. */
static void crypt_tool_dedup(struct crypt_tool_box *bctx)
{
	struct hash_iterate_context *iter;
	ARRAY_TYPE(crypt_tool_msg_p) *list;
	struct mailbox_transaction_context *t;
	struct crypt_tool_msg *const *msgs;
	struct mail *keep, *dup;
	const char *key, *error;
	unsigned int i, count, removed = 0;
	int ret;

	t = mailbox_transaction_begin(bctx->box, 0, "popvault crypt tool");
	keep = mail_alloc(t, 0, NULL);
	dup = mail_alloc(t, 0, NULL);
	iter = hash_table_iterate_init(bctx->targets);
	while (hash_table_iterate(iter, bctx->targets, &key, &list)) {
		if (!str_begins_with(key, "dup\t"))
			continue;
		msgs = array_get(list, &count);
		if (count < 2 || !mail_set_uid(keep, msgs[0]->uid))
			continue;
		for (i = 1; i < count; i++) T_BEGIN {
			if (!msgs[i]->dropped &&
			    mail_set_uid(dup, msgs[i]->uid)) {
				ret = crypt_tool_mails_equal(keep, dup, &error);
				if (ret > 0) {
					mail_expunge(dup);
					removed++;
					crypt_tool_print(bctx, msgs[i]->uid,
						msgs[0]->uid, "duplicate removed");
				} else if (ret < 0) {
					crypt_tool_fail(bctx, msgs[i]->uid,
							error);
				}
			}
		} T_END;
	}
	hash_table_iterate_deinit(&iter);
	mail_free(&keep);
	mail_free(&dup);
	if (removed == 0) {
		mailbox_transaction_rollback(&t);
		return;
	}
	if (mailbox_transaction_commit(&t) < 0 ||
	    mailbox_sync(bctx->box, 0) < 0) {
		crypt_tool_fail(bctx, 0, t_strconcat("expunge: ",
			crypt_tool_box_error(bctx->box), NULL));
		return;
	}
}

static int crypt_tool_purge(struct mail_storage *storage)
{
	/* a purge that finds the mdbox map inconsistent (a killed earlier
	   run) fails and rebuilds the indexes; the second one then works */
	if (mail_storage_purge(storage) == 0)
		return 0;
	return mail_storage_purge(storage);
}

/* 1 when dest, a message named as src's copy by this command, is not
   one (wrong form, other bytes), 0 when it is one, -1 on a read error
   (error_r). */
static int crypt_tool_copy_is_broken(struct crypt_tool_box *bctx,
				     struct mail *src, struct mail *dest,
				     const struct crypt_tool_msg *copy,
				     const char **error_r)
{
	int ret;

	if (copy->encrypted != bctx->target_encrypted)
		return 1;
	ret = crypt_tool_mails_equal(src, dest, error_r);
	return ret < 0 ? -1 : (ret == 0 ? 1 : 0);
}

/* mdbox, before anything is converted: a copy an interrupted run was
   writing when it was killed (the message size in its dbox header still
   zero) comes back from the storage rebuild as a message of its own,
   the zeroed header at the start of its body: neither the message nor
   in the target form (an encrypt's copy then does not even start with
   the container and reads as plaintext). With its original still here,
   it is recognised by its derived GUID (crypt_tool_copy_guid()) and
   bytes that are not the original's, expunged, and the storage purged,
   so the copy made now can take that GUID again. Without the original
   (expunged only once a copy read back right) nothing is removed: a copy
   is then the only one. */
static int crypt_tool_drop_broken_copies(struct crypt_tool_box *bctx)
{
	ARRAY_TYPE(crypt_tool_msg_p) *list;
	struct mailbox_transaction_context *t;
	struct crypt_tool_msg *src, *copy;
	struct mail *src_mail, *copy_mail;
	const char *error;
	unsigned int attempt, dropped = 0;
	int ret = 0, broken;

	if (!bctx->mdbox)
		return 0;
	t = mailbox_transaction_begin(bctx->box, 0, "popvault crypt tool");
	src_mail = mail_alloc(t, 0, NULL);
	copy_mail = mail_alloc(t, 0, NULL);
	array_foreach_elem(&bctx->sources, src) T_BEGIN {
		for (attempt = 0; attempt < CRYPT_TOOL_COPY_ATTEMPTS &&
		     !src->dropped && src->guid[0] != '\0'; attempt++) {
			list = hash_table_lookup(bctx->targets, t_strconcat(
				"any ", crypt_tool_copy_guid(bctx, src->guid,
							     attempt), NULL));
			if (list == NULL)
				continue;
			array_foreach_elem(list, copy) {
				if (copy == src || copy->dropped ||
				    !mail_set_uid(src_mail, src->uid) ||
				    !mail_set_uid(copy_mail, copy->uid))
					continue;
				broken = crypt_tool_copy_is_broken(bctx,
					src_mail, copy_mail, copy, &error);
				if (broken < 0) {
					/* never remove what wasn't compared */
					crypt_tool_fail(bctx, copy->uid, error);
					ret = -1;
				} else if (broken > 0) {
					mail_expunge(copy_mail);
					copy->dropped = TRUE;
					copy->paired = TRUE;
					dropped++;
					crypt_tool_print(bctx, copy->uid,
						src->uid,
						"interrupted copy removed");
				}
			}
		}
	} T_END;
	mail_free(&src_mail);
	mail_free(&copy_mail);
	if (dropped == 0) {
		mailbox_transaction_rollback(&t);
		return ret;
	}
	if (mailbox_transaction_commit(&t) < 0 ||
	    mailbox_sync(bctx->box, 0) < 0 ||
	    crypt_tool_purge(bctx->box->storage) < 0) {
		crypt_tool_fail(bctx, 0, t_strconcat("removing an interrupted "
			"copy: ", crypt_tool_box_error(bctx->box), NULL));
		return -1;
	}
	return ret;
}

/* Old cache records of the plaintext messages may hold header text:
   rewrite the cache file without the expunged messages. */
static void crypt_tool_purge_cache(struct crypt_tool_box *bctx)
{
	if (bctx->box->cache == NULL || !mail_cache_exists(bctx->box->cache))
		return;
	if (mail_cache_purge(bctx->box->cache, (uint32_t)-1,
			     "popvault encrypt") < 0) {
		e_error(bctx->user->event, "popvault encrypt: user %s mailbox "
			"%s: can't purge dovecot.index.cache: %s",
			bctx->user->username, mailbox_get_vname(bctx->box),
			crypt_tool_box_error(bctx->box));
		bctx->failed++;
	}
}

/* sdbox commits an expunge to the index first and unlinks the file
   after: killed in between, the file stays, outside the index, for
   good. Such a file holds a message this tool already replaced (the
   plaintext, for encrypt). TRUE when the mailbox has one; a forced
   resync then puts it back into the index, where the scan pairs it
   with its copy by GUID and expunges it properly. */
static bool crypt_tool_sdbox_has_orphans(struct mailbox *box)
{
	const struct mail_index_header *hdr;
	const char *dir;
	struct dirent *d;
	uint32_t uid, seq;
	bool found = FALSE;
	DIR *dirp;

	if (strcmp(box->storage->name, "sdbox") != 0)
		return FALSE;
	/* sdbox's mailbox path is its dbox-Mails directory */
	dir = mailbox_get_path(box);
	if ((dirp = opendir(dir)) == NULL)
		return FALSE;
	hdr = mail_index_get_header(box->view);
	while (!found && (d = readdir(dirp)) != NULL) {
		if (str_begins_with(d->d_name, "u.") &&
		    str_to_uint32(d->d_name + 2, &uid) == 0 &&
		    uid < hdr->next_uid &&
		    !mail_index_lookup_seq(box->view, uid, &seq))
			found = TRUE;
	}
	(void)closedir(dirp);
	return found;
}

static int crypt_tool_run_box(struct crypt_tool_cmd_context *cmd,
			      struct mail_user *user,
			      struct popvault_progress *progress,
			      struct mail_namespace *ns, const char *vname)
{
	struct crypt_tool_box bctx;
	struct mailbox_status status;
	struct crypt_tool_msg *msg;
	enum mail_error mail_error;
	int ret = 0;

	i_zero(&bctx);
	bctx.cmd = cmd;
	bctx.user = user;
	bctx.progress = progress;
	bctx.target_encrypted = cmd->op == CRYPT_TOOL_ENCRYPT;
	bctx.uidl_format = popvault_compat_pop3_uidl_format(user);
	/* verify changes nothing a read does not have to */
	bctx.box = mailbox_alloc(ns->list, vname, MAILBOX_FLAG_IGNORE_ACLS |
				 (cmd->op == CRYPT_TOOL_VERIFY ?
				  MAILBOX_FLAG_READONLY : 0));
	bctx.maildir = strcmp(bctx.box->storage->name, "maildir") == 0;
	bctx.mdbox = strcmp(bctx.box->storage->name, "mdbox") == 0;
	if (mailbox_open(bctx.box) < 0 ||
	    mailbox_sync(bctx.box, 0) < 0) {
		(void)mailbox_get_last_error(bctx.box, &mail_error);
		if (mail_error == MAIL_ERROR_NOTFOUND) {
			/* \Noselect or gone meanwhile */
			mailbox_free(&bctx.box);
			return 0;
		}
		e_error(user->event, "popvault %s: user %s: can't open "
			"mailbox %s: %s", crypt_tool_names[cmd->op],
			user->username, vname, crypt_tool_box_error(bctx.box));
		mailbox_free(&bctx.box);
		cmd->temp_failure = TRUE;
		return -1;
	}
	if (cmd->op != CRYPT_TOOL_VERIFY &&
	    crypt_tool_sdbox_has_orphans(bctx.box)) {
		e_warning(user->event, "popvault %s: user %s mailbox %s: "
			  "message files outside the index (a killed run?): "
			  "resyncing", crypt_tool_names[cmd->op],
			  user->username, vname);
		if (mailbox_sync(bctx.box, MAILBOX_SYNC_FLAG_FORCE_RESYNC) < 0) {
			e_error(user->event, "popvault %s: user %s mailbox %s: "
				"resync failed: %s", crypt_tool_names[cmd->op],
				user->username, vname,
				crypt_tool_box_error(bctx.box));
			mailbox_free(&bctx.box);
			return -1;
		}
	}
	mailbox_get_open_status(bctx.box, STATUS_UIDVALIDITY | STATUS_MESSAGES,
				&status);
	bctx.uid_validity = status.uidvalidity;
	bctx.pool = pool_alloconly_create("popvault crypt tool", 4096);
	p_array_init(&bctx.sources, bctx.pool, 64);
	hash_table_create(&bctx.targets, bctx.pool, 0, str_hash, strcmp);

	if (cmd->op == CRYPT_TOOL_VERIFY)
		popvault_progress_add_total(progress, status.messages);
	if (crypt_tool_scan(&bctx) < 0) {
		cmd->temp_failure = TRUE;
		ret = -1;
	}
	else if (cmd->no_keys && array_count(&bctx.sources) > 0) {
		/* decrypt without any key: copying these would store the
		   ciphertext as if it were the message */
		array_foreach_elem(&bctx.sources, msg) {
			crypt_tool_print(&bctx, msg->uid, 0,
					 "left encrypted: no key here");
		}
		cmd->left_encrypted += array_count(&bctx.sources);
	}
	else if (cmd->op != CRYPT_TOOL_VERIFY) {
		popvault_progress_add_total(progress,
					    array_count(&bctx.sources));
		/* first: a damaged copy in the source form would be
		   converted like mail */
		if (crypt_tool_drop_broken_copies(&bctx) < 0)
			ret = -1;
		array_foreach_elem(&bctx.sources, msg) {
			int r = 0;

			if (ret < 0)
				break;
			T_BEGIN {
				if (!msg->dropped)
					r = crypt_tool_convert_one(&bctx, msg);
			} T_END;
			popvault_progress_step(progress);
			if (r < 0) {
				/* a message that can't be saved (key
				   unavailable, disk full) fails the rest
				   too: stop, keep everything */
				ret = -1;
				break;
			}
		}
		if (ret == 0)
			crypt_tool_dedup(&bctx);
		/* also when an earlier, killed run did the expunging */
		if (ret == 0 && cmd->op == CRYPT_TOOL_ENCRYPT)
			crypt_tool_purge_cache(&bctx);
	}
	e_debug(user->event, "popvault %s: user %s mailbox %s: %u done, "
		"%u already %s, %u failed", crypt_tool_names[cmd->op],
		user->username, vname, bctx.done, bctx.skipped,
		bctx.target_encrypted ? "encrypted" : "plaintext", bctx.failed);
	if (bctx.failed > 0)
		ret = -1;
	hash_table_destroy(&bctx.targets);
	pool_unref(&bctx.pool);
	mailbox_free(&bctx.box);
	return ret;
}

/* encrypt must store ciphertext and decrypt plaintext: with the wrong
   setting the save hook would silently produce the other form. */
static int crypt_tool_check_user(struct crypt_tool_cmd_context *cmd,
				 struct mail_user *user,
				 const char **error_r)
{
	struct popvault_user *puser = popvault_user_get(user);
	bool encrypts = popvault_crypt_user_encrypts(user);

	switch (cmd->op) {
	case CRYPT_TOOL_ENCRYPT:
		if (!encrypts) {
			*error_r = "popvault_encrypt is not yes for this user: "
				"copies would be stored in plaintext";
			return -1;
		}
		break;
	case CRYPT_TOOL_DECRYPT:
		if (encrypts) {
			*error_r = "popvault_encrypt=yes for this user: the "
				"decrypted copies would be encrypted again; "
				"turn encryption off for the user first "
				"(popvault_encrypt=no, e.g. "
				"doveadm -o " POPVAULT_HINT_SETTING_PREFIX
				"popvault_encrypt=no)";
			return -1;
		}
		if (puser != NULL && puser->set.require_encrypted) {
			*error_r = "popvault_require_encrypted=yes for this "
				"user: decrypted mail could not be read";
			return -1;
		}
		break;
	case CRYPT_TOOL_VERIFY:
		break;
	}
	return 0;
}

ARRAY_DEFINE_TYPE(crypt_tool_ns, struct mail_namespace *);

/* A kill -9 inside an mdbox append leaves the storage inconsistent: the
   map no longer matches the m.* files, purges fail, and copies appended
   before a repair may not read back as written. Dovecot's repair is what
   "doveadm force-resync" does (open, then sync with FORCE_RESYNC and
   FIX_INCONSISTENT: a storage rebuild). It brings back messages that
   were expunged but not purged, i.e. originals a killed run had already
   replaced; the scan pairs them with their copies like any other. */
static int crypt_tool_mdbox_repair(struct crypt_tool_cmd_context *cmd,
				   struct mail_user *user,
				   const ARRAY_TYPE(const_string) *vnames,
				   const ARRAY_TYPE(crypt_tool_ns) *namespaces)
{
	struct mail_namespace *ns;
	struct mailbox *box;
	const char *vname;
	unsigned int i;
	int ret = 0;

	e_warning(user->event, "popvault %s: user %s: an earlier run was "
		  "interrupted: repairing the mdbox storage first",
		  crypt_tool_names[cmd->op], user->username);
	for (i = 0; i < array_count(vnames) && ret == 0; i++) {
		ns = array_idx_elem(namespaces, i);
		vname = array_idx_elem(vnames, i);
		box = mailbox_alloc(ns->list, vname,
				    MAILBOX_FLAG_IGNORE_ACLS);
		if (mailbox_open(box) < 0 ||
		    mailbox_sync(box, MAILBOX_SYNC_FLAG_FORCE_RESYNC |
				 MAILBOX_SYNC_FLAG_FIX_INCONSISTENT) < 0) {
			e_error(user->event, "popvault %s: user %s mailbox "
				"%s: repair failed: %s",
				crypt_tool_names[cmd->op], user->username,
				vname, mailbox_get_last_internal_error(box,
								       NULL));
			ret = -1;
		}
		mailbox_free(&box);
	}
	/* and then leave no rebuild behind for the next process
	   (popvault_compat_mdbox_repair_finish()) */
	for (ns = user->namespaces; ns != NULL && ret == 0; ns = ns->next) {
		if (ns->type != MAIL_NAMESPACE_TYPE_PRIVATE ||
		    ns->alias_for != NULL ||
		    strcmp(ns->storage->name, "mdbox") != 0 ||
		    (ns->next != NULL && ns->next->storage == ns->storage))
			continue;
		if (popvault_compat_mdbox_repair_finish(ns->storage) < 0) {
			e_error(user->event, "popvault %s: user %s: repair "
				"failed: %s", crypt_tool_names[cmd->op],
				user->username,
				mail_storage_get_last_internal_error(
					ns->storage, NULL));
			ret = -1;
		}
	}
	return ret;
}

/* TRUE for the temporary file of an mdbox writer on this host that no
   longer runs: ".temp.<time>.P<pid>Q<n>M<usecs>.<hostname>" (dbox-file.c),
   left by a killed append or purge. A live writer's file is never one. */
static bool crypt_tool_temp_is_stale(const char *name)
{
	const char *p = strstr(name, ".P"), *host;
	pid_t pid;
	uintmax_t n = 0;

	if (p == NULL)
		return FALSE;
	for (p += 2; *p >= '0' && *p <= '9'; p++)
		n = n * 10 + (*p - '0');
	if (*p != 'Q' || n == 0 || n > INT_MAX)
		return FALSE;
	host = strchr(strchr(p, 'M') == NULL ? p : strchr(p, 'M'), '.');
	if (host == NULL || strcmp(host + 1, my_hostname) != 0)
		return FALSE;
	pid = (pid_t)n;
	return kill(pid, 0) < 0 && errno == ESRCH;
}

/* What a killed run and the repair leave in mdbox's storage directory,
   each holding copies of messages, plaintext included: m.<n>.broken
   (the repair's copy of a damaged file, made before fixing it) and the
   temporary files of dead writers (Dovecot itself only removes those
   after 36 hours). Removed once a run converted and read back every
   message. */
static void crypt_tool_remove_leftovers(struct crypt_tool_cmd_context *cmd,
					struct mail_user *user,
					struct mail_namespace *ns)
{
	const char *root, *dir, *path;
	struct dirent *d;
	size_t len;
	DIR *dirp;

	if (!mailbox_list_get_root_path(ns->list, MAILBOX_LIST_PATH_TYPE_DIR,
					&root))
		return;
	/* mdbox keeps its m.* files in <root>/storage */
	dir = t_strconcat(root, "/storage", NULL);
	if ((dirp = opendir(dir)) == NULL)
		return;
	while ((d = readdir(dirp)) != NULL) {
		len = strlen(d->d_name);
		if (!(str_begins_with(d->d_name, "m.") && len > 7 &&
		      strcmp(d->d_name + len - 7, ".broken") == 0) &&
		    !(str_begins_with(d->d_name, ".temp.") &&
		      crypt_tool_temp_is_stale(d->d_name)))
			continue;
		path = t_strconcat(dir, "/", d->d_name, NULL);
		if (unlink(path) < 0 && errno != ENOENT) {
			e_error(user->event, "popvault %s: user %s: "
				"unlink(%s) failed: %m",
				crypt_tool_names[cmd->op], user->username,
				path);
		} else {
			e_warning(user->event, "popvault %s: user %s: removed "
				  "%s, left by an interrupted write or repair",
				  crypt_tool_names[cmd->op], user->username,
				  path);
		}
	}
	(void)closedir(dirp);
}

/* ~/.popvault/crypt-tool-running exists while encrypt or decrypt works
   on the user's mail: found at the start, the last run was killed.
   On mdbox the run that finds it repairs the storage and renames it to
   crypt-tool-repaired, which the next run that finishes removes. */
static const char *crypt_tool_marker_path(struct mail_user *user,
					  const char *name)
{
	const char *home;

	if (mail_user_get_home(user, &home) <= 0)
		return NULL;
	return t_strconcat(home, "/.popvault/crypt-tool-", name, NULL);
}

static int crypt_tool_run(struct doveadm_mail_cmd_context *_ctx,
			  struct mail_user *user)
{
	struct crypt_tool_cmd_context *cmd =
		container_of(_ctx, struct crypt_tool_cmd_context, ctx);
	const char *patterns[2] = { cmd->mailbox, NULL };
	const enum mailbox_list_iter_flags iter_flags =
		MAILBOX_LIST_ITER_NO_AUTO_BOXES |
		MAILBOX_LIST_ITER_RETURN_NO_FLAGS |
		MAILBOX_LIST_ITER_SKIP_ALIASES;
	struct mailbox_list_iterate_context *iter;
	const struct mailbox_info *info;
	struct popvault_progress *progress;
	ARRAY_TYPE(crypt_tool_ns) namespaces;
	ARRAY_TYPE(const_string) vnames;
	struct mail_namespace *ns;
	const char *vname, *error, *running, *repaired;
	unsigned int i;
	int ret = 0;

	if (crypt_tool_check_user(cmd, user, &error) < 0) {
		e_error(user->event, "popvault %s: user %s: %s; nothing done",
			crypt_tool_names[cmd->op], user->username, error);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTPOSSIBLE);
		return -1;
	}
	cmd->no_keys = FALSE;
	cmd->check_sizes = FALSE;
	cmd->left_encrypted = 0;
	if (cmd->op != CRYPT_TOOL_VERIFY) {
		/* Every copy is read back before its original goes: keys
		   that do not unlock would leave each copy beside its
		   original. Found now, nothing is copied. */
		ret = popvault_crypt_user_unlock(user, &error);
		if (ret < 0) {
			e_error(user->event, "popvault %s: user %s: %s%s; "
				"nothing done", crypt_tool_names[cmd->op],
				user->username, error, cmd->password != NULL ?
				"" : " (password mode: give the key password "
				"with -P)");
			doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTPOSSIBLE);
			return -1;
		}
		cmd->no_keys = ret == 0;
		ret = 0;
	}
	if (patterns[0] == NULL)
		patterns[0] = "*";

	/* the list first: the mailboxes change while we work */
	t_array_init(&namespaces, 16);
	t_array_init(&vnames, 16);
	iter = mailbox_list_iter_init_namespaces(user->namespaces, patterns,
		MAIL_NAMESPACE_TYPE_PRIVATE, iter_flags);
	while ((info = mailbox_list_iter_next(iter)) != NULL) {
		if ((info->flags & (MAILBOX_NOSELECT |
				    MAILBOX_NONEXISTENT)) != 0)
			continue;
		vname = t_strdup(info->vname);
		array_push_back(&namespaces, &info->ns);
		array_push_back(&vnames, &vname);
	}
	if (mailbox_list_iter_deinit(&iter) < 0) {
		e_error(user->event, "popvault %s: user %s: can't list "
			"mailboxes: %s", crypt_tool_names[cmd->op],
			user->username, mailbox_list_get_last_internal_error(
				user->namespaces->list, NULL));
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
		return -1;
	}

	if (array_count(&vnames) == 0 && cmd->mailbox != NULL) {
		/* a typo must not look like a clean mailbox */
		e_error(user->event, "popvault %s: user %s: no mailbox "
			"matches %s", crypt_tool_names[cmd->op],
			user->username, cmd->mailbox);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTFOUND);
		return -1;
	}
	running = cmd->op == CRYPT_TOOL_VERIFY ? NULL :
		crypt_tool_marker_path(user, "running");
	repaired = running == NULL ? NULL :
		crypt_tool_marker_path(user, "repaired");
	if (running != NULL) {
		bool interrupted = access(running, F_OK) == 0;
		int fd;

		if (interrupted &&
		    strcmp(user->namespaces->storage->name, "mdbox") == 0) {
			/* this process's view of the storage predates the
			   rebuild, and purges from it keep failing: the next
			   run, a fresh process, converts */
			if (crypt_tool_mdbox_repair(cmd, user, &vnames,
						    &namespaces) == 0) {
				if (rename(running, repaired) < 0) {
					e_error(user->event, "rename(%s, %s) "
						"failed: %m", running,
						repaired);
				}
				e_error(user->event, "popvault %s: user %s: "
					"mdbox storage repaired after an "
					"interrupted run; run the command "
					"again to finish",
					crypt_tool_names[cmd->op],
					user->username);
			}
			doveadm_mail_failed_error(_ctx, MAIL_ERROR_TEMP);
			return -1;
		}
		cmd->check_sizes = cmd->op == CRYPT_TOOL_ENCRYPT &&
			access(repaired, F_OK) == 0;
		if (!interrupted) {
			(void)mkdir_parents(t_strdup_until(running,
				strrchr(running, '/')), 0700);
			fd = open(running, O_WRONLY | O_CREAT, 0600);
			if (fd != -1)
				i_close_fd(&fd);
		}
	}
	progress = popvault_progress_begin(crypt_tool_names[cmd->op],
					   user->username, 0);
	for (i = 0; i < array_count(&vnames); i++) {
		ns = array_idx_elem(&namespaces, i);
		vname = array_idx_elem(&vnames, i);
		if (crypt_tool_run_box(cmd, user, progress, ns, vname) < 0)
			ret = -1;
		/* mdbox keeps expunged messages in its m.* files until a
		   purge: without it the plaintext would still be on disk
		   (and after decrypt, the ciphertext). Also when nothing was
		   expunged now: a killed run may have. */
		if (cmd->op != CRYPT_TOOL_VERIFY &&
		    crypt_tool_purge(ns->storage) < 0) {
			e_error(user->event, "popvault %s: user %s: "
				"purge failed: %s", crypt_tool_names[cmd->op],
				user->username,
				mail_storage_get_last_internal_error(
					ns->storage, NULL));
			ret = -1;
		}
	}
	popvault_progress_end(&progress);
	if (ret == 0 && cmd->op != CRYPT_TOOL_VERIFY &&
	    strcmp(user->namespaces->storage->name, "mdbox") == 0)
		crypt_tool_remove_leftovers(cmd, user, user->namespaces);
	if (ret == 0 && running != NULL) {
		i_unlink_if_exists(running);
		i_unlink_if_exists(repaired);
	}
	if (ret < 0) {
		doveadm_mail_failed_error(_ctx,
			cmd->op == CRYPT_TOOL_VERIFY && !cmd->temp_failure ?
			MAIL_ERROR_INVALIDDATA : MAIL_ERROR_TEMP);
	}
	if (cmd->left_encrypted > 0) {
		/* "done" would be a lie: the mail is still encrypted */
		e_error(user->event, "popvault decrypt: user %s: %u encrypted "
			"message(s) left: no popvault_master_key or "
			"popvault_key_password for this user (password mode: "
			"give the key password with -P)", user->username,
			cmd->left_encrypted);
		doveadm_mail_failed_error(_ctx, MAIL_ERROR_NOTPOSSIBLE);
		ret = -1;
	}
	return ret;
}

/* -P: the password reaches the user's settings as if the passdb had
   handed it over (popvault_key_password), for every user of the run,
   and never appears in argv (ps, shell history) as doveadm -o would
   put it. Set after the userdb lookup, so it wins over a userdb
   field. */
static int
crypt_tool_prerun(struct doveadm_mail_cmd_context *_ctx,
		  struct mail_storage_service_user *service_user,
		  const char **error_r)
{
	struct crypt_tool_cmd_context *cmd =
		container_of(_ctx, struct crypt_tool_cmd_context, ctx);
	const char *error;

	if (cmd->password == NULL)
		return 0;
	if (popvault_compat_service_user_set(service_user,
			POPVAULT_SETTING_PREFIX "key_password", cmd->password,
			&error) < 0) {
		/* the error names the setting, not the value */
		*error_r = t_strdup_printf("popvault: can't set "
			"popvault_key_password: %s", error);
		return -1;
	}
	return 0;
}

static void crypt_tool_deinit(struct doveadm_mail_cmd_context *_ctx)
{
	struct crypt_tool_cmd_context *cmd =
		container_of(_ctx, struct crypt_tool_cmd_context, ctx);

	if (cmd->password != NULL)
		sodium_memzero(cmd->password, strlen(cmd->password));
}

static void crypt_tool_init(struct doveadm_mail_cmd_context *_ctx
			    POPVAULT_DOVEADM_INIT_ARGS)
{
	struct crypt_tool_cmd_context *cmd =
		container_of(_ctx, struct crypt_tool_cmd_context, ctx);

	(void)doveadm_cmd_param_str(_ctx->cctx, "mailbox", &cmd->mailbox);
	(void)doveadm_cmd_param_bool(_ctx->cctx, "password-stdin",
				     &cmd->password_stdin);

	/* a user without crypt settings may still have encrypted mail,
	   which must not pass for plaintext (that needs no decrypting, or
	   reads fine) */
	if (cmd->op != CRYPT_TOOL_ENCRYPT)
		popvault_crypt_see_containers();

	if (cmd->password_stdin) {
		cmd->password = popvault_secret_read_stdin(_ctx->pool,
							   "password");
		if (cmd->password[0] == '\0')
			i_fatal_status(EX_USAGE, "popvault %s: empty password",
				       crypt_tool_names[cmd->op]);
	}
	popvault_doveadm_header_user(_ctx);
	doveadm_print_header_simple("mailbox");
	doveadm_print_header_simple("uid");
	if (cmd->op != CRYPT_TOOL_VERIFY)
		doveadm_print_header_simple("new_uid");
	doveadm_print_header_simple("result");
}

static struct doveadm_mail_cmd_context *
crypt_tool_alloc(enum crypt_tool_op op)
{
	struct crypt_tool_cmd_context *cmd;

	cmd = doveadm_mail_cmd_alloc(struct crypt_tool_cmd_context);
	cmd->op = op;
	popvault_doveadm_getopt(&cmd->ctx, "m:P");
	cmd->ctx.v.prerun = crypt_tool_prerun;
	cmd->ctx.v.init = crypt_tool_init;
	cmd->ctx.v.deinit = crypt_tool_deinit;
	cmd->ctx.v.run = crypt_tool_run;
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	return &cmd->ctx;
}

static struct doveadm_mail_cmd_context *cmd_popvault_encrypt_alloc(void)
{
	return crypt_tool_alloc(CRYPT_TOOL_ENCRYPT);
}

static struct doveadm_mail_cmd_context *cmd_popvault_decrypt_alloc(void)
{
	return crypt_tool_alloc(CRYPT_TOOL_DECRYPT);
}

static struct doveadm_mail_cmd_context *cmd_popvault_verify_alloc(void)
{
	return crypt_tool_alloc(CRYPT_TOOL_VERIFY);
}

#define CRYPT_TOOL_USAGE \
	"[-u <user>|-A] [-S <socket_path>] [-m <mailbox>] [-P]"

static struct doveadm_cmd_ver2 popvault_crypt_commands[] = {
	{
		.name = "popvault encrypt",
		.usage = CRYPT_TOOL_USAGE,
		.mail_cmd = cmd_popvault_encrypt_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('m', "mailbox", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('P', "password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault decrypt",
		.usage = CRYPT_TOOL_USAGE,
		.mail_cmd = cmd_popvault_decrypt_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('m', "mailbox", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('P', "password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
	{
		.name = "popvault verify",
		.usage = CRYPT_TOOL_USAGE,
		.mail_cmd = cmd_popvault_verify_alloc,
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_MAIL_COMMON
DOVEADM_CMD_PARAM('m', "mailbox", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('P', "password-stdin", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
	},
};

/* registered at load time, like doveadm-popvault.c (see there why) */
static void __attribute__((constructor)) popvault_doveadm_crypt_register(void)
{
	unsigned int i;

	if (doveadm_cmd_register_ver2 == NULL)
		return;
	for (i = 0; i < N_ELEMENTS(popvault_crypt_commands); i++)
		doveadm_cmd_register_ver2(&popvault_crypt_commands[i]);
}
