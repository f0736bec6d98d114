#ifndef POPVAULT_RETENTION_H
#define POPVAULT_RETENTION_H

#include "seq-range-array.h"

struct mail;
struct mailbox;
struct mailbox_transaction_context;
struct popvault_user;

/* Marks a message downloaded for the retention windows. Kept with the
   message, so a lost index record (rebuild) is still known as
   "downloaded" and counted from the time it was found lost. */
#define POPVAULT_DOWNLOADED_KEYWORD "$POP3Downloaded"

struct popvault_sweep_stats {
	unsigned int messages;
	unsigned int downloaded, never_downloaded;
	unsigned int expired_downloaded, expired_unread;
	/* earliest time a remaining message expires; 0 = none */
	time_t next_expiry;
	/* the sweep after a session found nothing could be due yet */
	bool skipped;
};

/* TRUE when a retention window applies to the user. */
bool popvault_retention_enabled(const struct popvault_user *puser);

/* Records the first download of these UIDs (those without a record) in
   t, which the caller commits. */
void popvault_retention_record_downloads(struct popvault_user *puser,
					 struct mailbox_transaction_context *t,
					 const ARRAY_TYPE(seq_range) *uids);

/* Gives dest_seq the first-download time of src_seq (a message replaced
   by a re-encoded copy, doveadm popvault encrypt/decrypt), in t. */
void popvault_retention_copy_record(struct mailbox_transaction_context *t,
				    uint32_t src_seq, uint32_t dest_seq);

/* Applies the retention windows to the user's INBOX. With dry_run nothing
   changes and each message that would go is reported through report (may
   be NULL). Returns 0 on success, -1 with error_r. */
typedef void popvault_sweep_report_t(const char *reason, struct mail *mail,
				     time_t expired_at, void *context);
int popvault_retention_sweep(struct popvault_user *puser, bool dry_run,
			     popvault_sweep_report_t *report, void *context,
			     struct popvault_sweep_stats *stats_r,
			     const char **error_r);

/* For popvault_user_hooks_add(): the sweep Dovecot's autoexpunge would
   do, after a POP3 session (puser->sweep_after_session), once the client
   is disconnected. Errors are logged, never fatal. */
struct popvault_user_hooks;
extern const struct popvault_user_hooks popvault_retention_user_hooks;

#endif
