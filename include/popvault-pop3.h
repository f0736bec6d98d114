#ifndef POPVAULT_POP3_H
#define POPVAULT_POP3_H

struct client;
struct mailbox;
struct mail;

/* Wires popvault into the pop3 process when the module is loaded there;
   a no-op in every other process. */
void popvault_pop3_init(void);
void popvault_pop3_deinit(void);

/* The pop3 client whose INBOX this is, or NULL (not the pop3 process, or
   not a POP3 session mailbox). */
struct client *popvault_pop3_client_for_box(struct mailbox *box);

/* Storage hooks for the POP3 session's INBOX (popvault-pop3-policy.c). */
void popvault_pop3_mailbox_allocated(struct mailbox *box);
void popvault_pop3_mail_allocated(struct mail *mail);

#endif
