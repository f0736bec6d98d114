#ifndef POPVAULT_LEDGER_H
#define POPVAULT_LEDGER_H

struct mail;
struct popvault_user;
struct popvault_ledger;

/* The UIDL ledger (popvault_uidl_ledger = yes) remembers, per message
   GUID, the UIDL a POP3 client was first given, so that rebuilds, new
   UIDVALIDITYs, format migrations and re-encryption never change it. It
   is one append-only file in the user's home ("guid TAB uidl" lines, the
   last line for a GUID wins), read once per session. */
#define POPVAULT_LEDGER_FILE "popvault-uidl.ledger"
/* RFC 1939: 1..70 characters 0x21..0x7E */
#define POPVAULT_UIDL_MAX_LEN 70

int popvault_ledger_get(struct popvault_user *puser,
			struct popvault_ledger **ledger_r,
			const char **error_r);
const char *popvault_ledger_lookup(struct popvault_ledger *ledger,
				   const char *guid);
/* Records guid -> uidl unless the GUID already has one (first wins). */
void popvault_ledger_add(struct popvault_ledger *ledger, const char *guid,
			 const char *uidl);
/* Records guid -> uidl, replacing any earlier one (import). */
void popvault_ledger_set(struct popvault_ledger *ledger, const char *guid,
			 const char *uidl);
/* Appends what was added since the last flush, durably (fsync). */
int popvault_ledger_flush(struct popvault_ledger *ledger,
			  const char **error_r);
void popvault_ledger_free(struct popvault_ledger **ledger);

/* For popvault_user_hooks_add(): flushes and frees the user's ledger
   (puser->ledger) when the user is deinitialized. */
struct popvault_user_hooks;
extern const struct popvault_user_hooks popvault_ledger_user_hooks;

/* The UIDL Dovecot's pop3 would give this mail with pop3_uidl_format and
   no stored UIDL. */
int popvault_uidl_default(struct mail *mail, const char *format,
			  uint32_t uid_validity, const char **uidl_r,
			  const char **error_r);

/* Parsing, exposed for unit tests and fuzzing. */
bool popvault_uidl_is_valid(const char *uidl);
/* "<uidl> <message-id or guid>" from an import file. */
int popvault_ledger_parse_import_line(const char *line, const char **uidl_r,
				      const char **ref_r,
				      const char **error_r);

#endif
