/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "mail-index.h"
#include "mail-storage-private.h"
#include "mail-namespace.h"
#include "mail-search-build.h"
#include "popvault-user.h"
#include "popvault-action.h"
#include "popvault-retention.h"

/* First-download times live in an index extension: one uint32 per
   message, read with the index at sweep time and never at login. A new or
   rebuilt index counts never-downloaded mail from its own creation, and a
   message whose record is gone but which carries $POP3Downloaded is
   counted as downloaded at the time the loss was found. Either way a lost
   record only ever delays a removal. */
#define POPVAULT_RETENTION_EXT "popvault-retention"

struct popvault_retention_rec {
	uint32_t first_download;
};

/* Extension header: no message can expire before sweep_hint, so the sweep
   after a POP3 session is one header read until then. A lost index loses
   the hint too, and the next sweep is a full one. */
struct popvault_retention_hdr {
	uint32_t sweep_hint;
};

bool popvault_retention_enabled(const struct popvault_user *puser)
{
	return puser->set.retain_downloaded != POPVAULT_NEVER ||
		puser->set.retain_unread != POPVAULT_NEVER;
}

static uint32_t retention_ext_id(struct mailbox *box)
{
	return mail_index_ext_register(box->index, POPVAULT_RETENTION_EXT,
		sizeof(struct popvault_retention_hdr),
		sizeof(struct popvault_retention_rec), sizeof(uint32_t));
}

/* When this index began: the header's indexid is its creation time. A
   lost or rebuilt index is a new index with a new indexid, so mail that
   looks never-downloaded is never counted from before the index that
   vouches for it existed. */
static time_t tracking_start(struct mailbox_transaction_context *t)
{
	const struct mail_index_header *hdr = mail_index_get_header(t->view);

	return hdr->indexid != 0 && (time_t)hdr->indexid <= ioloop_time ?
		(time_t)hdr->indexid : ioloop_time;
}

static time_t record_get(struct mailbox_transaction_context *t,
			 uint32_t ext_id, uint32_t seq)
{
	struct popvault_retention_rec rec;
	const void *data;
	bool expunged;

	mail_index_lookup_ext(t->view, seq, ext_id, &data, &expunged);
	if (data == NULL)
		return 0;
	memcpy(&rec, data, sizeof(rec));
	return rec.first_download;
}

static void record_set(struct mailbox_transaction_context *t,
		       uint32_t ext_id, uint32_t seq, time_t when)
{
	struct popvault_retention_rec rec = {
		.first_download = (uint32_t)when
	};

	mail_index_update_ext(t->itrans, seq, ext_id, &rec, NULL);
}

void popvault_retention_copy_record(struct mailbox_transaction_context *t,
				    uint32_t src_seq, uint32_t dest_seq)
{
	uint32_t ext_id = retention_ext_id(t->box);
	time_t first = record_get(t, ext_id, src_seq);

	if (first != 0 && record_get(t, ext_id, dest_seq) == 0)
		record_set(t, ext_id, dest_seq, first);
}

static struct mail_keywords *downloaded_keyword(struct mailbox *box)
{
	const char *const names[] = { POPVAULT_DOWNLOADED_KEYWORD, NULL };

	return mailbox_keywords_create_valid(box, names);
}

void popvault_retention_record_downloads(struct popvault_user *puser,
					 struct mailbox_transaction_context *t,
					 const ARRAY_TYPE(seq_range) *uids)
{
	struct mailbox *box = t->box;
	struct mail_keywords *kw;
	struct mail *mail;
	struct seq_range_iter iter;
	unsigned int n = 0;
	uint32_t uid, ext_id;

	if (!popvault_retention_enabled(puser) || array_count(uids) == 0)
		return;
	ext_id = retention_ext_id(box);
	kw = downloaded_keyword(box);
	mail = mail_alloc(t, 0, NULL);
	seq_range_array_iter_init(&iter, uids);
	while (seq_range_array_iter_nth(&iter, n++, &uid)) {
		if (!mail_set_uid(mail, uid) ||
		    record_get(t, ext_id, mail->seq) != 0)
			continue;
		/* the first download counts, later ones never move it */
		record_set(t, ext_id, mail->seq, ioloop_time);
		mail_update_keywords(mail, MODIFY_ADD, kw);
	}
	mail_free(&mail);
	mailbox_keywords_unref(&kw);
}

static time_t expiry_add(time_t start, unsigned int window)
{
	return window == POPVAULT_NEVER ? 0 : start + (time_t)window;
}

static void next_expiry(struct popvault_sweep_stats *stats, time_t when)
{
	if (when != 0 && (stats->next_expiry == 0 || when < stats->next_expiry))
		stats->next_expiry = when;
}

static time_t sweep_hint_get(struct mail_index_view *view, uint32_t ext_id)
{
	struct popvault_retention_hdr hdr;
	const void *data;
	size_t size;

	mail_index_get_header_ext(view, ext_id, &data, &size);
	if (size < sizeof(hdr))
		return 0;
	memcpy(&hdr, data, sizeof(hdr));
	return hdr.sweep_hint;
}

/* Anything downloaded or delivered after now expires no sooner than now
   plus the shorter window, so that bounds the hint as well. */
static void
sweep_hint_set(const struct popvault_settings *set,
	       struct mailbox_transaction_context *t, uint32_t ext_id,
	       const struct popvault_sweep_stats *stats)
{
	struct popvault_retention_hdr hdr;
	unsigned int window = I_MIN(set->retain_downloaded, set->retain_unread);
	time_t hint = ioloop_time + window;
	const void *data;
	size_t size;

	if (stats->next_expiry != 0 && stats->next_expiry < hint)
		hint = stats->next_expiry;
	hdr.sweep_hint = hint > (time_t)UINT32_MAX ? UINT32_MAX : hint;
	mail_index_get_header_ext(t->view, ext_id, &data, &size);
	if (size < sizeof(hdr))
		mail_index_ext_resize_hdr(t->itrans, ext_id, sizeof(hdr));
	mail_index_update_header_ext(t->itrans, ext_id, 0, &hdr, sizeof(hdr));
}

static int
sweep_box(struct popvault_user *puser, struct mailbox *box, bool dry_run,
	  bool use_hint, popvault_sweep_report_t *report, void *context,
	  struct popvault_sweep_stats *stats, const char **error_r)
{
	const struct popvault_settings *set = &puser->set;
	struct mailbox_transaction_context *t;
	struct mail_search_args *args;
	struct mail_search_context *ctx;
	struct mail *mail;
	ARRAY_TYPE(seq_range) gone_downloaded, gone_unread;
	time_t start, first, received, expires;
	uint32_t ext_id;
	int ret = 0;

	/* The hint lives in the index header, which mailbox_open() has
	   read; the backend sync comes after it. On maildir a session that
	   added keywords renamed every file it downloaded, and the sync
	   would rescan the directory only to learn that nothing is due. */
	ext_id = retention_ext_id(box);
	if (use_hint && ioloop_time < sweep_hint_get(box->view, ext_id)) {
		stats->skipped = TRUE;
		return 0;
	}
	if (mailbox_sync(box, 0) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		return -1;
	}
	t = mailbox_transaction_begin(box, 0, "popvault retention sweep");
	start = tracking_start(t);
	t_array_init(&gone_downloaded, 32);
	t_array_init(&gone_unread, 32);

	args = mail_search_build_init();
	mail_search_build_add_all(args);
	ctx = mailbox_search_init(t, args, NULL, MAIL_FETCH_RECEIVED_DATE |
				  MAIL_FETCH_FLAGS | MAIL_FETCH_GUID, NULL);
	mail_search_args_unref(&args);
	while (mailbox_search_next(ctx, &mail)) {
		stats->messages++;
		first = record_get(t, ext_id, mail->seq);
		if (first == 0 &&
		    popvault_mail_has_keyword(mail, POPVAULT_DOWNLOADED_KEYWORD)) {
			/* downloaded, but the time is lost: count from now */
			first = ioloop_time;
			record_set(t, ext_id, mail->seq, first);
		}
		ARRAY_TYPE(seq_range) *gone;
		unsigned int *expired_count;
		const char *reason;

		if (first != 0) {
			stats->downloaded++;
			expires = expiry_add(first, set->retain_downloaded);
			gone = &gone_downloaded;
			expired_count = &stats->expired_downloaded;
			reason = "retain_downloaded";
		} else {
			stats->never_downloaded++;
			if (mail_get_received_date(mail, &received) < 0)
				received = ioloop_time;
			/* mail that was here before tracking began is
			   counted from the start of tracking */
			expires = expiry_add(I_MAX(received, start),
					     set->retain_unread);
			gone = &gone_unread;
			expired_count = &stats->expired_unread;
			reason = "retain_unread";
		}
		if (expires != 0 && expires <= ioloop_time) {
			seq_range_array_add(gone, mail->uid);
			(*expired_count)++;
			if (report != NULL)
				report(reason, mail, expires, context);
			continue;
		}
		next_expiry(stats, expires);
	}
	if (mailbox_search_deinit(&ctx) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		ret = -1;
	}
	if (ret == 0 && !dry_run) {
		ret = popvault_action_apply(puser, t, &gone_downloaded,
					    &set->expire_action,
					    "retain_downloaded", error_r);
		if (ret == 0)
			ret = popvault_action_apply(puser, t, &gone_unread,
						    &set->expire_action,
						    "retain_unread", error_r);
	}
	if (ret < 0 || dry_run) {
		mailbox_transaction_rollback(&t);
		return ret;
	}
	sweep_hint_set(set, t, ext_id, stats);
	if (mailbox_transaction_commit(&t) < 0) {
		*error_r = mailbox_get_last_internal_error(box, NULL);
		return -1;
	}
	return 0;
}

static int
retention_sweep(struct popvault_user *puser, bool dry_run, bool use_hint,
		popvault_sweep_report_t *report, void *context,
		struct popvault_sweep_stats *stats_r, const char **error_r)
{
	struct mail_user *user = puser->user;
	struct mail_namespace *ns;
	struct mailbox *box;
	int ret;

	i_zero(stats_r);
	ns = mail_namespace_find_inbox(user->namespaces);
	box = mailbox_alloc(ns->list, "INBOX", 0);
	if (mailbox_open(box) < 0) {
		enum mail_error error;

		(void)mailbox_get_last_error(box, &error);
		if (error == MAIL_ERROR_NOTFOUND) {
			/* no INBOX yet: nothing to sweep */
			mailbox_free(&box);
			return 0;
		}
		*error_r = t_strdup_printf("Can't open INBOX: %s",
			mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		return -1;
	}
	T_BEGIN {
		ret = sweep_box(puser, box, dry_run, use_hint, report, context,
				stats_r, error_r);
		if (ret < 0)
			*error_r = t_strdup(*error_r);
	} T_END_PASS_STR_IF(ret < 0, error_r);
	mailbox_free(&box);
	return ret;
}

int popvault_retention_sweep(struct popvault_user *puser, bool dry_run,
			     popvault_sweep_report_t *report, void *context,
			     struct popvault_sweep_stats *stats_r,
			     const char **error_r)
{
	return retention_sweep(puser, dry_run, FALSE, report, context,
			       stats_r, error_r);
}

static void retention_user_deinit(struct popvault_user *puser)
{
	struct popvault_sweep_stats stats;
	const char *error;

	if (!puser->sweep_after_session || !popvault_retention_enabled(puser))
		return;
	if (retention_sweep(puser, FALSE, TRUE, NULL, NULL, &stats,
			    &error) < 0) {
		/* the next session or the cron sweep tries again */
		e_error(puser->event, "retention sweep failed: %s", error);
		return;
	}
	if (stats.skipped) {
		e_debug(puser->event, "retention sweep: nothing due yet");
		return;
	}
	e_debug(puser->event, "retention sweep: %u messages, %u expired",
		stats.messages, stats.expired_downloaded + stats.expired_unread);
}

const struct popvault_user_hooks popvault_retention_user_hooks = {
	.deinit = retention_user_deinit,
};
