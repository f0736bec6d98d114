#ifndef POPVAULT_DOVEADM_H
#define POPVAULT_DOVEADM_H

struct doveadm_mail_cmd_context;

/* The user column of the doveadm popvault commands. doveadm adds one
   itself ("Username", doveadm_mail_cmd_exec()) for -A and a wildcard -u;
   these add the very same column for a single -u only, so that every
   form names the user once, in the same column. Call the first in the
   command's init, before its other headers; the second first in each
   row. */
void popvault_doveadm_header_user(struct doveadm_mail_cmd_context *ctx);
void popvault_doveadm_print_user(struct doveadm_mail_cmd_context *ctx,
				 const char *username);

#endif
