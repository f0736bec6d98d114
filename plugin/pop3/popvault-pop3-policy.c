/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "istream.h"
#include "mail-storage-private.h"
#include "mail-search-build.h"
#include "pop3-common.h"
#include "popvault-user.h"
#include "popvault-action.h"
#include "popvault-retention.h"
#include "popvault-ledger.h"
#include "popvault-pop3.h"

/* The POP3 session's INBOX. pop3 has no command hooks, so the policies
   work through the storage calls pop3 makes:
   - the listing is pop3's first search: popvault narrows it (hidden,
     out of window) before anything is numbered;
   - RETR opens a mail stream with reason "RETR": popvault records the UID;
     so does a TOP that sent the whole message (fetchmail downloads with
     "TOP n 99999999" and never sends RETR), see top_stream_finished();
   - at QUIT pop3 expunges (or flags) the DELEd mails and commits: popvault
     turns those calls into the on_dele action and adds after_retr, all in
     pop3's own transaction, so a session without QUIT changes nothing. */

#define POPVAULT_POP3_BOX_CONTEXT(obj) \
	MODULE_CONTEXT(obj, popvault_pop3_box_module)
#define POPVAULT_POP3_MAIL_CONTEXT(obj) \
	MODULE_CONTEXT(obj, popvault_pop3_mail_module)

struct popvault_pop3_box {
	union mailbox_module_context module_ctx;
	struct popvault_user *puser;

	/* UIDs fetched with RETR / TOP in this session */
	ARRAY_TYPE(seq_range) retr_uids, top_uids;
	/* UIDs the client DELEd, as pop3 reports them at QUIT */
	ARRAY_TYPE(seq_range) dele_uids;
	/* popvault itself is changing mails: the mail hooks pass through */
	bool applying;
};

static MODULE_CONTEXT_DEFINE_INIT(popvault_pop3_box_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(popvault_pop3_mail_module,
				  &mail_module_register);

struct popvault_pop3_mail {
	union mail_module_context module_ctx;
	/* the stream a TOP is reading (referenced) and its message */
	struct istream *top_stream;
	uint32_t top_uid, top_seq;
};

static bool pop3_quitting(struct popvault_pop3_box *pbox, struct mail *mail,
			  struct client **client_r)
{
	struct client *client;

	if (pbox->applying)
		return FALSE;
	client = popvault_pop3_client_for_box(mail->box);
	if (client == NULL || !client->quit_seen ||
	    mail->transaction != client->trans)
		return FALSE;
	*client_r = client;
	return TRUE;
}

static void popvault_pop3_mail_expunge(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(_mail->box);
	struct client *client;

	if (pop3_quitting(pbox, _mail, &client)) {
		seq_range_array_add(&pbox->dele_uids, _mail->uid);
		if (pbox->puser->set.on_dele.kind != POPVAULT_ACTION_EXPUNGE)
			return;
	}
	pmail->module_ctx.super.expunge(_mail);
}

static void
popvault_pop3_mail_update_keywords(struct mail *_mail,
				   enum modify_type modify_type,
				   struct mail_keywords *keywords)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(_mail->box);
	struct client *client;

	/* with pop3_deleted_flag, pop3's DELE at QUIT is this keyword */
	if (modify_type == MODIFY_ADD &&
	    pop3_quitting(pbox, _mail, &client) &&
	    client->deleted_kw != NULL && keywords == client->deleted_kw) {
		seq_range_array_add(&pbox->dele_uids, _mail->uid);
		if (pbox->puser->set.on_dele.kind != POPVAULT_ACTION_EXPUNGE)
			return;
	}
	pmail->module_ctx.super.update_keywords(_mail, modify_type, keywords);
}

/* pop3's msgnum (0-based) of the message at seq: the inverse of its
   msgnum_to_seq(), which uses msgnum_to_seq_map when the numbering is
   not 1..N (messages left out of the listing, POP3 order). */
static bool seq_to_msgnum(const struct client *client, uint32_t seq,
			  unsigned int *msgnum_r)
{
	unsigned int i;

	if (client->msgnum_to_seq_map == NULL) {
		*msgnum_r = seq - 1;
		return seq >= 1 && seq <= client->messages_count;
	}
	for (i = 0; i < client->msgnum_to_seq_map_count; i++) {
		if (client->msgnum_to_seq_map[i] == seq) {
			*msgnum_r = i;
			return TRUE;
		}
	}
	/* past the map the numbering is msgnum + 1 again */
	*msgnum_r = seq - 1;
	return seq > client->msgnum_to_seq_map_count &&
		seq <= client->messages_count;
}

/* Called when pop3 is done with a TOP's mail (it frees the mail at the
   end of the command). The TOP sent the whole message when nothing of
   the message is left to read: "TOP n N" with N at least the body's
   line count (one more when the last line has no line end), so that
   pop3 read up to the end of the stream. Such a TOP is a download like
   RETR: it counts for after_retr and the retention clock, and it gets
   \Seen exactly as pop3 gives it to RETR, through pop3's own seen
   bitmap (stored also when the client drops without QUIT, not at all
   with pop3_no_flag_updates). */
static void top_stream_finished(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(_mail->box);
	struct istream *input = pmail->top_stream;
	struct client *client;
	unsigned int msgnum;
	bool whole;

	if (input == NULL)
		return;
	pmail->top_stream = NULL;
	whole = input->stream_errno == 0 && i_stream_read_eof(input) &&
		input->stream_errno == 0;
	i_stream_unref(&input);
	if (!whole)
		return;

	seq_range_array_add(&pbox->retr_uids, pmail->top_uid);
	e_debug(pbox->puser->event, "TOP of UID %u sent the whole message: "
		"counted as a download", pmail->top_uid);
	client = popvault_pop3_client_for_box(_mail->box);
	if (client == NULL || client->seen_bitmask == NULL ||
	    !seq_to_msgnum(client, pmail->top_seq, &msgnum))
		return;
	if (_mail->seq == pmail->top_seq && !_mail->expunged &&
	    (mail_get_flags(_mail) & MAIL_SEEN) != 0)
		return;
	client->seen_bitmask[msgnum / CHAR_BIT] |= 1 << (msgnum % CHAR_BIT);
	client->seen_change_count++;
}

static int
popvault_pop3_mail_get_stream(struct mail *_mail, bool get_body,
			      struct message_size *hdr_size,
			      struct message_size *body_size,
			      struct istream **stream_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(_mail->box);

	if (pmail->module_ctx.super.get_stream(_mail, get_body, hdr_size,
					       body_size, stream_r) < 0)
		return -1;
	if (mail->get_stream_reason == NULL)
		;
	else if (strcmp(mail->get_stream_reason, "RETR") == 0)
		seq_range_array_add(&pbox->retr_uids, _mail->uid);
	else if (strcmp(mail->get_stream_reason, "TOP") == 0) {
		seq_range_array_add(&pbox->top_uids, _mail->uid);
		/* pop3 reads this very stream; whether it reached the end
		   is known when pop3 frees the mail */
		top_stream_finished(_mail);
		pmail->top_stream = *stream_r;
		i_stream_ref(pmail->top_stream);
		pmail->top_uid = _mail->uid;
		pmail->top_seq = _mail->seq;
	}
	return 0;
}

static void popvault_pop3_mail_close(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);

	top_stream_finished(_mail);
	pmail->module_ctx.super.close(_mail);
}

static void popvault_pop3_mail_free(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);

	top_stream_finished(_mail);
	pmail->module_ctx.super.free(_mail);
}

/* With the UIDL ledger on, the ledger's UIDL is the "backend" UIDL pop3
   asks for first, so pop3 hands it out unchanged. A message seen for the
   first time gets the UIDL pop3 would have given it, recorded in the
   ledger and, like pop3_save_uidl does, in the storage (maildir's
   dovecot-uidlist, dbox's index). Later sessions find it there without
   reading the ledger at all; the ledger is read only for messages whose
   stored UIDL is gone (rebuilt index, new UIDVALIDITY). */
static int
popvault_pop3_mail_get_special(struct mail *_mail, enum mail_fetch_field field,
			       const char **value_r)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct popvault_pop3_mail *pmail = POPVAULT_POP3_MAIL_CONTEXT(mail);
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(_mail->box);
	struct popvault_ledger *ledger;
	struct client *client;
	const char *guid, *uidl, *error = NULL;

	if (pmail->module_ctx.super.get_special(_mail, field, value_r) < 0)
		return -1;
	if (field != MAIL_FETCH_UIDL_BACKEND || !pbox->puser->set.uidl_ledger)
		return 0;
	client = popvault_pop3_client_for_box(_mail->box);
	if (client == NULL || (*value_r)[0] != '\0')
		return 0;
	if (popvault_ledger_get(pbox->puser, &ledger, &error) < 0 ||
	    mail_get_special(_mail, MAIL_FETCH_GUID, &guid) < 0) {
		if (error == NULL)
			error = mailbox_get_last_internal_error(_mail->box, NULL);
		mail_storage_set_critical(_mail->box->storage,
			"popvault: UIDL ledger: %s", error);
		return -1;
	}
	uidl = popvault_ledger_lookup(ledger, guid);
	if (uidl == NULL) {
		if (popvault_uidl_default(_mail,
					  client->mail_set->pop3_uidl_format,
					  client->uid_validity, &uidl,
					  &error) < 0) {
			mail_storage_set_critical(_mail->box->storage,
				"popvault: UIDL: %s", error);
			return -1;
		}
		popvault_ledger_add(ledger, guid, uidl);
	}
	mail_update_pop3_uidl(_mail, uidl);
	*value_r = uidl;
	return 0;
}

void popvault_pop3_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mail_vfuncs *v = mail->vlast;
	struct popvault_pop3_mail *pmail;

	if (POPVAULT_POP3_BOX_CONTEXT(_mail->box) == NULL)
		return;
	pmail = p_new(mail->pool, struct popvault_pop3_mail, 1);
	pmail->module_ctx.super = *v;
	mail->vlast = &pmail->module_ctx.super;
	v->close = popvault_pop3_mail_close;
	v->free = popvault_pop3_mail_free;
	v->expunge = popvault_pop3_mail_expunge;
	v->update_keywords = popvault_pop3_mail_update_keywords;
	v->get_stream = popvault_pop3_mail_get_stream;
	v->get_special = popvault_pop3_mail_get_special;
	MODULE_CONTEXT_SET(mail, popvault_pop3_mail_module, pmail);
}

/* The listing search, rebuilt with popvault's conditions added. */
static struct mail_search_args *
listing_search_args(struct popvault_pop3_box *pbox, struct client *client)
{
	const struct popvault_settings *set = &pbox->puser->set;
	struct mail_search_args *args = mail_search_build_init();
	struct mail_search_arg *arg;
	time_t since = 0;

	mail_search_build_add_all(args);
	if (pbox->puser->pop3_login_delayed) {
		/* inside LOGIN-DELAY: an empty maildrop */
		args->args->match_not = TRUE;
		return args;
	}
	if (client->deleted_kw != NULL) {
		arg = mail_search_build_add(args, SEARCH_KEYWORDS);
		arg->match_not = TRUE;
		arg->value.str = p_strdup(args->pool,
					  client->set->pop3_deleted_flag);
	}
	arg = mail_search_build_add(args, SEARCH_KEYWORDS);
	arg->match_not = TRUE;
	arg->value.str = POPVAULT_HIDDEN_KEYWORD;

	if (set->list_since != 0)
		since = set->list_since;
	if (set->list_window != 0 && ioloop_time - set->list_window > since)
		since = ioloop_time - set->list_window;
	if (since != 0) {
		arg = mail_search_build_add(args, SEARCH_SINCE);
		arg->value.date_type = MAIL_SEARCH_DATE_TYPE_RECEIVED;
		arg->value.search_flags = MAIL_SEARCH_ARG_FLAG_UTC_TIMES;
		arg->value.time = since;
	}
	return args;
}

static struct mail_search_context *
popvault_pop3_search_init(struct mailbox_transaction_context *t,
			  struct mail_search_args *args,
			  const enum mail_sort_type *sort_program,
			  enum mail_fetch_field wanted_fields,
			  struct mailbox_header_lookup_ctx *wanted_headers)
{
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(t->box);
	struct client *client = popvault_pop3_client_for_box(t->box);
	struct mail_search_args *new_args;
	struct mail_search_context *ctx;

	/* pop3's first search numbers the messages: that is the listing */
	if (client == NULL || client->message_sizes != NULL)
		return pbox->module_ctx.super.search_init(t, args,
			sort_program, wanted_fields, wanted_headers);

	/* pop3 assumes sequences 1..N unless all_seqs already exists; with
	   messages left out it must record the real ones. */
	if (!array_is_created(&client->all_seqs))
		i_array_init(&client->all_seqs, 32);

	new_args = listing_search_args(pbox, client);
	mail_search_args_init(new_args, t->box, TRUE, NULL);
	mail_search_args_simplify(new_args);
	ctx = pbox->module_ctx.super.search_init(t, new_args, sort_program,
						 wanted_fields, wanted_headers);
	/* the search owns new_args now and unrefs it at deinit; drop the
	   reference mailbox_search_init() took on the replaced args */
	mail_search_args_unref(&args);
	return ctx;
}

static int quit_actions(struct popvault_pop3_box *pbox,
			struct mailbox_transaction_context *t,
			const char **error_r)
{
	const struct popvault_settings *set = &pbox->puser->set;
	ARRAY_TYPE(seq_range) after_retr, downloads;
	int ret = 0;

	t_array_init(&downloads, 32);
	seq_range_array_merge(&downloads, &pbox->retr_uids);
	if (set->retain_count_top)
		seq_range_array_merge(&downloads, &pbox->top_uids);

	/* DELE wins over after_retr */
	t_array_init(&after_retr, 32);
	seq_range_array_merge(&after_retr, &pbox->retr_uids);
	seq_range_array_remove_seq_range(&after_retr, &pbox->dele_uids);

	pbox->applying = TRUE;
	popvault_retention_record_downloads(pbox->puser, t, &downloads);
	if (set->on_dele.kind != POPVAULT_ACTION_EXPUNGE) {
		ret = popvault_action_apply(pbox->puser, t, &pbox->dele_uids,
					    &set->on_dele, "on_dele", error_r);
	}
	if (ret == 0 && set->after_retr.kind != POPVAULT_ACTION_KEEP) {
		ret = popvault_action_apply(pbox->puser, t, &after_retr,
					    &set->after_retr, "after_retr",
					    error_r);
	}
	pbox->applying = FALSE;
	return ret;
}

static int
popvault_pop3_transaction_commit(struct mailbox_transaction_context *t,
				 struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(box);
	struct client *client = popvault_pop3_client_for_box(box);
	const char *error;
	int ret;

	/* mailbox_transaction_commit() has already cleared client->trans
	   when pop3 commits its session transaction at QUIT */
	if (client == NULL || !client->quit_seen || client->trans != NULL ||
	    pbox->applying)
		return pbox->module_ctx.super.transaction_commit(t, changes_r);

	T_BEGIN {
		ret = quit_actions(pbox, t, &error);
		if (ret < 0)
			error = t_strdup(error);
	} T_END_PASS_STR_IF(ret < 0, &error);
	if (ret < 0) {
		/* Keep every message where it was: roll back pop3's own
		   expunges too, and let QUIT answer -ERR [SYS/TEMP]. */
		e_error(pbox->puser->event, "QUIT: policy not applied, "
			"nothing removed: %s", error);
		pbox->module_ctx.super.transaction_rollback(t);
		mail_storage_set_error(box->storage, MAIL_ERROR_TEMP,
			"Couldn't apply the mailbox policy, nothing was "
			"removed; try again later");
		return -1;
	}
	return pbox->module_ctx.super.transaction_commit(t, changes_r);
}

static int popvault_pop3_open(struct mailbox *box)
{
	struct popvault_pop3_box *pbox = POPVAULT_POP3_BOX_CONTEXT(box);

	if (pbox->puser->pop3_login_refused != NULL) {
		mail_storage_set_error(box->storage, MAIL_ERROR_PERM,
			t_strdup_printf("popvault: %s refused this login, "
				"INBOX not opened",
				pbox->puser->pop3_login_refused));
		return -1;
	}
	return pbox->module_ctx.super.open(box);
}

void popvault_pop3_mailbox_allocated(struct mailbox *box)
{
	struct mailbox_vfuncs *v = box->vlast;
	struct popvault_pop3_box *pbox;
	struct popvault_user *puser;

	if ((box->flags & MAILBOX_FLAG_POP3_SESSION) == 0)
		return;
	puser = popvault_user_get(box->storage->user);
	if (puser == NULL)
		return;

	if (puser->pop3_login_delayed) {
		/* inside LOGIN-DELAY nothing changes, \Recent included: the
		   next full session (or IMAP) still sees the mail as new */
		box->flags &= ENUM_NEGATE(MAILBOX_FLAG_DROP_RECENT);
	}

	pbox = p_new(box->pool, struct popvault_pop3_box, 1);
	pbox->puser = puser;
	p_array_init(&pbox->retr_uids, box->pool, 32);
	p_array_init(&pbox->top_uids, box->pool, 32);
	p_array_init(&pbox->dele_uids, box->pool, 32);
	pbox->module_ctx.super = *v;
	box->vlast = &pbox->module_ctx.super;
	v->open = popvault_pop3_open;
	v->search_init = popvault_pop3_search_init;
	v->transaction_commit = popvault_pop3_transaction_commit;
	MODULE_CONTEXT_SET(box, popvault_pop3_box_module, pbox);
	e_debug(puser->event, "pop3 INBOX hooked");
}
