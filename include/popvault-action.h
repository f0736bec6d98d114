#ifndef POPVAULT_ACTION_H
#define POPVAULT_ACTION_H

#include "seq-range-array.h"
#include "popvault-settings.h"

struct mail;
struct mailbox;
struct mailbox_transaction_context;
struct popvault_user;

/* The keyword that hides a message from POP3 but keeps it for IMAP. An
   admin clears it with IMAP STORE -FLAGS or "doveadm flags remove". */
#define POPVAULT_HIDDEN_KEYWORD "$POP3Hidden"
/* Set on a message whose move has begun (popvault-action.c); it leaves
   with the source message. Left on a message, it means a move was cut
   short or failed, and the next one checks the target first. */
#define POPVAULT_MOVING_KEYWORD "$PopvaultMoving"

/* Applies action to the messages with these UIDs in t's mailbox, emitting
   one "popvault_policy_action" event per message with the given reason.
   Flag and expunge changes go into t; the caller commits it. A move copies
   into the target (created when missing) and commits that copy before it
   expunges the source in t, so a failure never loses a message: on -1
   nothing was expunged and error_r says why (client-safe text; the detail
   is logged). */
int popvault_action_apply(struct popvault_user *puser,
			  struct mailbox_transaction_context *t,
			  const ARRAY_TYPE(seq_range) *uids,
			  const struct popvault_action *action,
			  const char *reason, const char **error_r);

/* Finishes moves that a killed process cut short in box: a message still
   marked POPVAULT_MOVING_KEYWORD whose copy (same GUID) is in one of the
   user's move targets is expunged; one without a copy keeps its place and
   loses the mark. recovered_r = messages expunged. Returns 0 / -1. */
int popvault_action_recover(struct popvault_user *puser, struct mailbox *box,
			    unsigned int *recovered_r, const char **error_r);

/* TRUE when any of the user's actions moves mail. */
bool popvault_action_moves(const struct popvault_settings *set);
/* popvault_action_recover() on the user's INBOX, when any action moves.
   Runs after every POP3 session (with the retention sweep) and at the
   start of "doveadm popvault sweep". */
int popvault_action_recover_inbox(struct popvault_user *puser,
				  unsigned int *recovered_r,
				  const char **error_r);

/* TRUE when the mail has this keyword (case-insensitive, as IMAP). */
bool popvault_mail_has_keyword(struct mail *mail, const char *name);

/* Remembers that a keyword is absent from a mailbox's index, for a check
   made on every message read: Dovecot 2.3 hashes a keyword name with
   xxh64 on each lookup (about 1 k instructions), while the index's
   keyword list only ever grows, so its length tells when to look again.
   Zero-initialized; reset (i_zero) whenever the mailbox is closed. */
struct popvault_keyword_cache {
	const struct mail_index *index;
	unsigned int keywords_count;
};
bool popvault_mail_has_keyword_cached(struct mail *mail, const char *name,
				      struct popvault_keyword_cache *cache);

#endif
