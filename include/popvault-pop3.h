#ifndef POPVAULT_POP3_H
#define POPVAULT_POP3_H

/* Wires popvault into the pop3 process when the module is loaded there;
   a no-op in every other process. */
void popvault_pop3_init(void);
void popvault_pop3_deinit(void);

#endif
