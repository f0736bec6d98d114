#ifndef POPVAULT_COMPAT_H
#define POPVAULT_COMPAT_H

/* The seam between Dovecot 2.3 and 2.4 (issue 16). Behaviour code calls the
   names below and contains no version test; what differs is here and in
   popvault-compat-macros.h (small API renames, as macros) and in one file
   per host:
     plugin/compat/popvault-compat-23.c   Dovecot 2.3 (plugin {} settings)
     plugin/compat/popvault-compat-24.c   Dovecot 2.4 (settings_get())
   configure picks the file by probing the API (DOVECOT_24_SETTINGS).
   DOVECOT_PREREQ() comes from Dovecot's own headers, so this header also
   works in builds without popvault-config.h (fuzz targets). */

#include "lib.h"
#include "popvault-compat-macros.h"

struct mail_user;
struct mail;
struct mail_storage;
struct dict;
struct event;
struct popvault_settings;
struct doveadm_mail_cmd_context;
struct mail_storage_service_user;
struct mail_storage_service_ctx;
/* the lmtp process's (lmtp-client.h, lmtp-recipient.h) */
struct client;
struct lmtp_recipient;

#if DOVECOT_PREREQ(2, 4, 0)
/* v.init lost its args parameter; options come from cctx */
#  define POPVAULT_DOVEADM_INIT_ARGS
#  define popvault_doveadm_getopt(ctx, getopt_args) ((void)(getopt_args))
#else
#  define POPVAULT_DOVEADM_INIT_ARGS , const char *const args[] ATTR_UNUSED
/* 2.3 turns each option back into getopt form and refuses it unless the
   command has getopt_args and a parse_arg callback. The commands read every
   option with doveadm_cmd_param_*() on both versions, so the callback only
   accepts. */
bool popvault_doveadm_parse_arg_accept(struct doveadm_mail_cmd_context *ctx,
				       int c);
#  define popvault_doveadm_getopt(ctx, _getopt_args) STMT_START { \
	(ctx)->getopt_args = (_getopt_args); \
	(ctx)->v.parse_arg = popvault_doveadm_parse_arg_accept; \
	} STMT_END
#endif

/* Reads and validates (popvault_settings_parse()) the user's popvault_*
   settings, global values overridden by userdb fields; for a shared
   folder's owner (user->creator set) the owner's own settings. 1 on
   success, 0 when that owner does not exist (error_r says why), -1 with
   error_r naming the setting and value. */
int popvault_compat_user_settings(struct mail_user *user,
				  struct popvault_settings *set_r,
				  const char **error_r);

/* TRUE when user is a shared folder's owner that another user's session
   created (2.3: user->creator; 2.4 sets creator only after the
   mail_user_created hooks ran). */
bool popvault_compat_user_is_shared_owner(const struct mail_user *user);

/* Sets a popvault_* setting (name with its prefix) for one user of a
   doveadm run, after the userdb lookup, so it wins over a userdb field.
   0, or -1 with error_r naming the setting, never the value. */
int popvault_compat_service_user_set(struct mail_storage_service_user *user,
				     const char *name, const char *value,
				     const char **error_r);

/* LMTP, at RCPT TO: the recipient's popvault_* settings from a userdb
   lookup made as lmtp's own (lmtp_local_rcpt()) makes it, settings only:
   no mail user is set up. 1 with set_r (strings on the data stack) and
   username_r (the name the userdb gave); 0 when lmtp's own lookup is
   left to answer (no such user, the lookup failed); -1 with error_r and
   username_r when the user's popvault_* settings are invalid. */
int popvault_compat_lmtp_rcpt_settings(struct mail_storage_service_ctx *service,
				       struct client *client,
				       struct lmtp_recipient *lrcpt,
				       struct popvault_settings *set_r,
				       const char **username_r,
				       const char **error_r);

/* Opens the dict that holds per-user popvault state. dict_uri is the
   popvault_dict value on 2.3 (NULL: none); on 2.4 the dict comes from the
   popvault_dict { dict ... } filter. Returns 1 when opened, 0 when none is
   configured (the caller falls back to the file dict), -1 on error. */
int popvault_compat_dict_init(struct mail_user *user, struct event *event,
			      const char *dict_uri, struct dict **dict_r,
			      const char **error_r);
/* Opens the default file dict at path. */
int popvault_compat_dict_init_file(struct mail_user *user,
				   struct event *event, const char *path,
				   struct dict **dict_r, const char **error_r);

/* Whether field (a Dovecot cache field name, e.g. "imap.bodystructure")
   is in the storage's mail_cache_fields: what Dovecot's own cache would
   hold for a client (2.4's default names BODYSTRUCTURE, so Dovecot
   parses every message for it at delivery; 2.3's is "flags"). */
bool popvault_compat_storage_caches_field(struct mail_storage *storage,
					  const char *field);

/* The user's pop3_uidl_format; a storage's mail_attachment_dir (2.4:
   mail_ext_attachment_path; "" when unset). */
const char *popvault_compat_pop3_uidl_format(struct mail_user *user);
const char *popvault_compat_attachment_dir(struct mail_storage *storage);

/* The FTS backend that indexes the user's mail (a driver name), NULL when
   FTS is off. When FTS is on but its backend can't be read, a placeholder
   name: the caller refuses rather than leak. */
const char *popvault_compat_fts_backend(struct mail_user *user);

/* After a forced resync of every mailbox of an mdbox storage: leaves the
   storage so that the next process does not rebuild it again. 2.3.19's
   storage rebuild fscks the map index, which flags its header as
   fscked, and does not clear the flag when a sync started it: every
   later sync of a process that has the map open then rebuilds the
   storage once more (and flags it again), and that process's expunges
   are undone and its purges fail. 2.4 clears the flag itself. -1 on
   failure (the storage's error). */
int popvault_compat_mdbox_repair_finish(struct mail_storage *storage);

/* Values for pop3_uidl_format's variables; NULL when not looked up. */
struct popvault_uidl_vars {
	const char *uidvalidity, *uid, *md5, *filename, *guid;
};
/* TRUE when format may use the variable (2.3 %m or %{md5}, 2.4 %{md5 ...});
   a false positive only costs a lookup. */
bool popvault_compat_uidl_format_uses(const char *format, char short_key,
				      const char *long_key);
/* Expands format into dest, the same way pop3 does. */
int popvault_compat_uidl_expand(string_t *dest, const char *format,
				const struct popvault_uidl_vars *vars,
				const char **error_r);

#endif
