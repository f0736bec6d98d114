#ifndef POPVAULT_SECRET_STDIN_H
#define POPVAULT_SECRET_STDIN_H

/* For the doveadm commands' -P, -O, -N, -R: one line of stdin, without
   its "\n" (and a "\r" before it), allocated from pool. Reads byte by
   byte so that the next secret's line stays in stdin for the next call
   (old and new password on two lines). Exits with EX_USAGE when stdin
   has no line; "what" names the secret in that message, never its
   value. The caller wipes the result when done with it. */
char *popvault_secret_read_stdin(pool_t pool, const char *what);

#endif
