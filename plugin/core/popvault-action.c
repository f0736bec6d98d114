/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "mail-storage-private.h"
#include "mail-namespace.h"
#include "mail-search-build.h"
#include "popvault-user.h"
#include "popvault-action.h"

static void
emit_action(struct popvault_user *puser, struct mail *mail,
	    const struct popvault_action *action, const char *reason)
{
	const char *guid;

	if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0)
		guid = "";
	struct event_passthrough *e =
		event_create_passthrough(puser->event)->
		set_name("popvault_policy_action")->
		add_str("user", mail_storage_get_user(
			mailbox_get_storage(mail->box))->username)->
		add_str("mailbox", mailbox_get_vname(mail->box))->
		add_int("uid", mail->uid)->
		add_str("guid", guid)->
		add_str("action", popvault_action_to_str(action))->
		add_str("reason", reason);
	e_info(e->event(), "policy: mailbox=%s uid=%u guid=%s action=%s "
	       "reason=%s", mailbox_get_vname(mail->box), mail->uid, guid,
	       popvault_action_to_str(action), reason);
}

static int
open_move_target(struct mail_user *user, const char *name,
		 struct mailbox **box_r, const char **error_r)
{
	struct mail_namespace *ns;
	struct mailbox *box;
	enum mail_error error;

	ns = mail_namespace_find(user->namespaces, name);
	box = mailbox_alloc(ns->list, name, MAILBOX_FLAG_SAVEONLY);
	if (mailbox_open(box) < 0) {
		(void)mailbox_get_last_error(box, &error);
		if (error == MAIL_ERROR_NOTFOUND) {
			/* created on first use, as the setting promises */
			if (mailbox_create(box, NULL, FALSE) < 0) {
				(void)mailbox_get_last_error(box, &error);
				if (error != MAIL_ERROR_EXISTS)
					goto fail;
			}
			if (mailbox_open(box) == 0)
				goto opened;
		}
		goto fail;
	}
opened:
	*box_r = box;
	return 0;
fail:
	*error_r = t_strdup_printf("Can't open move target %s: %s", name,
				   mailbox_get_last_internal_error(box, NULL));
	mailbox_free(&box);
	return -1;
}

/* A move is a copy into the target, committed, then the expunge of the
   source in the caller's transaction. A process killed between the two
   commits leaves the message in both places, and the next move of it
   (the client never saw +OK, so it DELEs or RETRs it again) would copy
   it a second time. So the messages are first marked, in a transaction
   of their own committed before anything is copied; a message that
   already carries the mark had its move cut short, and its copy is
   looked for in the target (by GUID, which copies keep) before copying
   again. The common path costs one small index commit per move. */
static int
mark_moving(struct mailbox *src, const ARRAY_TYPE(seq_range) *uids,
	    ARRAY_TYPE(seq_range) *resumed, const char **error_r)
{
	const char *const names[] = { POPVAULT_MOVING_KEYWORD, NULL };
	struct mailbox_transaction_context *t;
	struct mail_keywords *kw;
	struct seq_range_iter iter;
	struct mailbox *box;
	struct mail *mail;
	unsigned int n = 0;
	uint32_t uid;
	int ret = 0;

	/* A mailbox of its own, synced after the commit: maildir writes a
	   keyword into the file name only when it syncs, and the mark must
	   be on disk before the copy starts. The caller's mailbox is in the
	   middle of a commit and is not synced here. */
	box = mailbox_alloc(mailbox_get_namespace(src)->list,
			    mailbox_get_vname(src), 0);
	if (mailbox_sync(box, 0) < 0) {
		*error_r = t_strdup_printf("Can't mark messages for moving: %s",
			mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		return -1;
	}
	t = mailbox_transaction_begin(box, 0, "popvault move mark");
	kw = mailbox_keywords_create_valid(box, names);
	mail = mail_alloc(t, 0, NULL);
	seq_range_array_iter_init(&iter, uids);
	while (seq_range_array_iter_nth(&iter, n++, &uid)) {
		if (!mail_set_uid(mail, uid))
			continue;
		if (popvault_mail_has_keyword(mail, POPVAULT_MOVING_KEYWORD))
			seq_range_array_add(resumed, uid);
		else
			mail_update_keywords(mail, MODIFY_ADD, kw);
	}
	mail_free(&mail);
	mailbox_keywords_unref(&kw);
	if (mailbox_transaction_commit(&t) < 0 || mailbox_sync(box, 0) < 0) {
		*error_r = t_strdup_printf("Can't mark messages for moving: %s",
			mailbox_get_last_internal_error(box, NULL));
		ret = -1;
	}
	mailbox_free(&box);
	return ret;
}

/* 1 when the target already holds a message with this GUID (the copy of
   a move that was cut short), 0 when not, -1 on error. */
static int
target_has_guid(struct mail_user *user, const char *target,
		const char *guid, const char **error_r)
{
	struct mail_namespace *ns;
	struct mailbox *box;
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_arg *arg;
	struct mail_search_context *ctx;
	struct mail *mail;
	int ret;

	enum mail_error error;

	ns = mail_namespace_find(user->namespaces, target);
	box = mailbox_alloc(ns->list, target, 0);
	/* A full resync, not the quick one: the process whose move was cut
	   short may have died between writing the target's maildir files
	   and dovecot-uidlist (seen: "N1" above records 1-3) and its index,
	   and a quick sync then trusted the index and missed the copy. This
	   runs only when a cut-short move is suspected. */
	if (mailbox_sync(box, MAILBOX_SYNC_FLAG_FORCE_RESYNC) < 0) {
		(void)mailbox_get_last_error(box, &error);
		if (error == MAIL_ERROR_NOTFOUND) {
			mailbox_free(&box);
			return 0;
		}
		*error_r = t_strdup_printf("Can't check move target %s: %s",
			target, mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		return -1;
	}
	args = mail_search_build_init();
	arg = mail_search_build_add(args, SEARCH_GUID);
	arg->value.str = p_strdup(args->pool, guid);
	mail_search_args_init(args, box, TRUE, NULL);
	t = mailbox_transaction_begin(box, 0, "popvault move check");
	ctx = mailbox_search_init(t, args, NULL, 0, NULL);
	mail_search_args_unref(&args);
	ret = mailbox_search_next(ctx, &mail) ? 1 : 0;
	if (mailbox_search_deinit(&ctx) < 0) {
		*error_r = t_strdup_printf("Can't search move target %s: %s",
			target, mailbox_get_last_internal_error(box, NULL));
		ret = -1;
	}
	mailbox_transaction_rollback(&t);
	mailbox_free(&box);
	return ret;
}

/* A cut-short move may have gone to any of the user's targets (a DELE
   moves to on_dele's, a RETR to after_retr's, a sweep to
   expire_action's): look in the intended one (if not NULL) first, then
   the others. Returns 1 with where_r, 0, or -1. */
static int
find_cut_short_copy(struct popvault_user *puser, struct mail_user *user,
		    const char *target, const char *guid,
		    const char **where_r, const char **error_r)
{
	const struct popvault_settings *set = &puser->set;
	const char *targets[4];
	unsigned int i, count = 0;
	int ret;

	if (target != NULL)
		targets[count++] = target;
	if (set->after_retr.kind == POPVAULT_ACTION_MOVE)
		targets[count++] = set->after_retr.mailbox;
	if (set->on_dele.kind == POPVAULT_ACTION_MOVE)
		targets[count++] = set->on_dele.mailbox;
	if (set->expire_action.kind == POPVAULT_ACTION_MOVE)
		targets[count++] = set->expire_action.mailbox;
	for (i = 0; i < count; i++) {
		if (target != NULL && i > 0 && strcmp(targets[i], target) == 0)
			continue;
		ret = target_has_guid(user, targets[i], guid, error_r);
		if (ret != 0) {
			*where_r = targets[i];
			return ret;
		}
	}
	return 0;
}

/* mailbox_save_copy_flags() without the move mark: the copy is where
   the message ends up, and a marked copy would look like a move of its
   own that was cut short. */
static void save_copy_flags_unmarked(struct mail_save_context *save,
				     struct mail *mail)
{
	const char *const *kw = mail_get_keywords(mail);
	ARRAY_TYPE(const_string) keep;
	struct mail_keywords *keywords = NULL;

	t_array_init(&keep, 8);
	for (; *kw != NULL; kw++) {
		if (strcasecmp(*kw, POPVAULT_MOVING_KEYWORD) != 0)
			array_push_back(&keep, kw);
	}
	if (array_count(&keep) > 0) {
		array_append_zero(&keep);
		keywords = mailbox_keywords_create_valid(
			mailbox_transaction_get_mailbox(
				mailbox_save_get_transaction(save)),
			array_front(&keep));
	}
	mailbox_save_set_flags(save, mail_get_flags(mail), keywords);
	if (keywords != NULL)
		mailbox_keywords_unref(&keywords);
}

static int
copy_to_target(struct popvault_user *puser,
	       struct mailbox_transaction_context *t,
	       const ARRAY_TYPE(seq_range) *uids, const char *target,
	       ARRAY_TYPE(seq_range) *copied_uids, const char **error_r)
{
	struct mail_user *user = mail_storage_get_user(
		mailbox_get_storage(mailbox_transaction_get_mailbox(t)));
	struct mailbox *dest;
	struct mailbox_transaction_context *dest_t;
	struct mail_save_context *save;
	struct mail *mail;
	struct seq_range_iter iter;
	ARRAY_TYPE(seq_range) resumed;
	const char *guid;
	unsigned int n = 0;
	uint32_t uid;
	int ret = 0;

	t_array_init(&resumed, 4);
	if (mark_moving(mailbox_transaction_get_mailbox(t), uids, &resumed,
			error_r) < 0) {
		e_error(puser->event, "%s", *error_r);
		return -1;
	}
	if (open_move_target(user, target, &dest, error_r) < 0)
		return -1;
	dest_t = mailbox_transaction_begin(dest,
		MAILBOX_TRANSACTION_FLAG_EXTERNAL, "popvault move");
	mail = mail_alloc(t, MAIL_FETCH_GUID, NULL);
	seq_range_array_iter_init(&iter, uids);
	while (seq_range_array_iter_nth(&iter, n++, &uid)) {
		if (!mail_set_uid(mail, uid)) {
			/* expunged meanwhile by someone else: nothing to move */
			continue;
		}
		if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0 ||
		    *guid == '\0') {
			*error_r = t_strdup_printf("Can't move uid %u to %s: "
				"no GUID", uid, target);
			ret = -1;
			break;
		}
		if (seq_range_exists(&resumed, uid)) {
			const char *where;

			ret = find_cut_short_copy(puser, user, target, guid,
						  &where, error_r);
			if (ret < 0)
				break;
			if (ret > 0) {
				e_info(puser->event, "policy: uid %u guid %s "
				       "is already in %s (an earlier move was "
				       "cut short): not copied again",
				       uid, guid, where);
				seq_range_array_add(copied_uids, uid);
				ret = 0;
				continue;
			}
		}
		save = mailbox_save_alloc(dest_t);
		save_copy_flags_unmarked(save, mail);
		/* the next move finds a cut-short copy by it */
		mailbox_save_set_guid(save, guid);
		if (mailbox_copy(&save, mail) < 0) {
			*error_r = t_strdup_printf(
				"Can't move uid %u to %s: %s", uid, target,
				mailbox_get_last_internal_error(dest, NULL));
			ret = -1;
			break;
		}
		seq_range_array_add(copied_uids, uid);
	}
	mail_free(&mail);
	if (ret < 0)
		mailbox_transaction_rollback(&dest_t);
	else if (mailbox_transaction_commit(&dest_t) < 0) {
		*error_r = t_strdup_printf("Can't move to %s: %s", target,
			mailbox_get_last_internal_error(dest, NULL));
		ret = -1;
	}
	mailbox_free(&dest);
	if (ret < 0)
		e_error(puser->event, "%s", *error_r);
	return ret;
}

int popvault_action_apply(struct popvault_user *puser,
			  struct mailbox_transaction_context *t,
			  const ARRAY_TYPE(seq_range) *uids,
			  const struct popvault_action *action,
			  const char *reason, const char **error_r)
{
	ARRAY_TYPE(seq_range) moved;
	const ARRAY_TYPE(seq_range) *targets = uids;
	struct mail_keywords *kw = NULL;
	struct mail *mail;
	struct seq_range_iter iter;
	unsigned int n = 0;
	uint32_t uid;

	if (array_count(uids) == 0)
		return 0;
	if (action->kind == POPVAULT_ACTION_MOVE) {
		t_array_init(&moved, 32);
		if (copy_to_target(puser, t, uids, action->mailbox, &moved,
				   error_r) < 0)
			return -1;
		targets = &moved;
	} else if (action->kind == POPVAULT_ACTION_HIDE) {
		const char *const names[] = { POPVAULT_HIDDEN_KEYWORD, NULL };

		kw = mailbox_keywords_create_valid(
			mailbox_transaction_get_mailbox(t), names);
	}

	mail = mail_alloc(t, MAIL_FETCH_GUID, NULL);
	seq_range_array_iter_init(&iter, targets);
	while (seq_range_array_iter_nth(&iter, n++, &uid)) T_BEGIN {
		if (mail_set_uid(mail, uid)) {
			switch (action->kind) {
			case POPVAULT_ACTION_KEEP:
				break;
			case POPVAULT_ACTION_HIDE:
				mail_update_keywords(mail, MODIFY_ADD, kw);
				break;
			case POPVAULT_ACTION_DELETE:
			case POPVAULT_ACTION_EXPUNGE:
			case POPVAULT_ACTION_MOVE:
				mail_expunge(mail);
				break;
			}
			emit_action(puser, mail, action, reason);
		}
	} T_END;
	mail_free(&mail);
	if (kw != NULL)
		mailbox_keywords_unref(&kw);
	return 0;
}

static bool mail_has_keyword_idx(struct mail *mail, unsigned int idx)
{
	const ARRAY_TYPE(keyword_indexes) *kw_indexes;
	const unsigned int *kw_idx;

	kw_indexes = mail_get_keyword_indexes(mail);
	array_foreach(kw_indexes, kw_idx) {
		if (*kw_idx == idx)
			return TRUE;
	}
	return FALSE;
}

bool popvault_mail_has_keyword(struct mail *mail, const char *name)
{
	unsigned int idx;

	/* A keyword that no message of the mailbox has ever carried is not
	   in the index at all (the lookup ignores case, as IMAP does): most
	   mail is answered without building the message's keyword names,
	   which every POP3 RETR of encrypted mail would otherwise pay. */
	return mail_index_keyword_lookup(mail->box->index, name, &idx) &&
		mail_has_keyword_idx(mail, idx);
}

bool popvault_mail_has_keyword_cached(struct mail *mail, const char *name,
				      struct popvault_keyword_cache *cache)
{
	struct mail_index *index = mail->box->index;
	unsigned int count = array_count(mail_index_get_keywords(index));
	unsigned int idx;

	if (cache->index == index && cache->keywords_count == count)
		return FALSE;
	if (!mail_index_keyword_lookup(index, name, &idx)) {
		cache->index = index;
		cache->keywords_count = count;
		return FALSE;
	}
	cache->index = NULL;
	return mail_has_keyword_idx(mail, idx);
}

int popvault_action_recover(struct popvault_user *puser, struct mailbox *box,
			    unsigned int *recovered_r, const char **error_r)
{
	struct mail_user *user = mail_storage_get_user(mailbox_get_storage(box));
	const char *const names[] = { POPVAULT_MOVING_KEYWORD, NULL };
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *ctx;
	struct mail_keywords *kw;
	struct mail *mail;
	struct mail_search_arg *arg;
	const char *guid, *where;
	int ret = 0, found;

	*recovered_r = 0;
	args = mail_search_build_init();
	arg = mail_search_build_add(args, SEARCH_KEYWORDS);
	arg->value.str = p_strdup(args->pool, POPVAULT_MOVING_KEYWORD);
	mail_search_args_init(args, box, TRUE, NULL);
	t = mailbox_transaction_begin(box, 0, "popvault move recovery");
	kw = mailbox_keywords_create_valid(box, names);
	ctx = mailbox_search_init(t, args, NULL, MAIL_FETCH_GUID, NULL);
	mail_search_args_unref(&args);
	while (ret == 0 && mailbox_search_next(ctx, &mail)) T_BEGIN {
		if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0 ||
		    *guid == '\0') {
			*error_r = t_strdup_printf("uid %u: no GUID", mail->uid);
			ret = -1;
		} else if ((found = find_cut_short_copy(puser, user, NULL,
				guid, &where, error_r)) < 0) {
			ret = -1;
		} else if (found > 0 &&
			   strcmp(where, mailbox_get_vname(box)) != 0) {
			/* the copy is in place: finish the move */
			struct popvault_action finished = {
				.kind = POPVAULT_ACTION_MOVE,
				.mailbox = where,
			};

			e_info(puser->event, "policy: uid %u guid %s: finishing "
			       "a move to %s that was cut short", mail->uid,
			       guid, where);
			mail_expunge(mail);
			emit_action(puser, mail, &finished, "move_recovered");
			(*recovered_r)++;
		} else {
			/* the copy never happened: the message stays */
			e_info(puser->event, "policy: uid %u guid %s: a move "
			       "was cut short before its copy; the message "
			       "stays", mail->uid, guid);
			mail_update_keywords(mail, MODIFY_REMOVE, kw);
		}
		if (ret < 0)
			*error_r = t_strdup(*error_r);
	} T_END_PASS_STR_IF(ret < 0, error_r);
	if (mailbox_search_deinit(&ctx) < 0 && ret == 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
	}
	mailbox_keywords_unref(&kw);
	if (ret < 0) {
		mailbox_transaction_rollback(&t);
		return -1;
	}
	if (mailbox_transaction_commit(&t) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		return -1;
	}
	/* maildir removes expunged files only when it syncs */
	if (*recovered_r > 0 && mailbox_sync(box, 0) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		return -1;
	}
	return 0;
}

bool popvault_action_moves(const struct popvault_settings *set)
{
	return set->after_retr.kind == POPVAULT_ACTION_MOVE ||
		set->on_dele.kind == POPVAULT_ACTION_MOVE ||
		set->expire_action.kind == POPVAULT_ACTION_MOVE;
}

int popvault_action_recover_inbox(struct popvault_user *puser,
				  unsigned int *recovered_r,
				  const char **error_r)
{
	struct mail_namespace *ns;
	struct mailbox *box;
	int ret;

	*recovered_r = 0;
	if (!popvault_action_moves(&puser->set))
		return 0;
	ns = mail_namespace_find_inbox(puser->user->namespaces);
	box = mailbox_alloc(ns->list, "INBOX", 0);
	if (mailbox_sync(box, 0) < 0) {
		*error_r = t_strdup_printf("Can't open INBOX: %s",
			mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		return -1;
	}
	ret = popvault_action_recover(puser, box, recovered_r, error_r);
	if (ret < 0)
		*error_r = t_strdup(*error_r);
	mailbox_free(&box);
	return ret;
}
