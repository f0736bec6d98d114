#ifndef POPVAULT_LMTP_H
#define POPVAULT_LMTP_H

/* Wires popvault into the lmtp process when the module is loaded there
   (refusal at RCPT TO of a recipient whose mail would be spooled on a
   disk, popvault-lmtp.c); a no-op in every other process. */
void popvault_lmtp_init(void);
void popvault_lmtp_deinit(void);

#endif
