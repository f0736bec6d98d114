#ifndef POPVAULT_PROGRESS_H
#define POPVAULT_PROGRESS_H

/* Progress of a long doveadm run (encrypt, decrypt, verify, sweep -A):
   "popvault <what>: <user>: <done>/<total> (<rate>/s)" on stderr, at most
   once a second, and only when stderr is a terminal, so cron and scripts
   see nothing. total 0 = unknown. */
struct popvault_progress;

struct popvault_progress *
popvault_progress_begin(const char *what, const char *username,
			unsigned int total);
void popvault_progress_add_total(struct popvault_progress *progress,
				 unsigned int count);
void popvault_progress_step(struct popvault_progress *progress);
/* Prints the final line (on a terminal) and frees. */
void popvault_progress_end(struct popvault_progress **progress);

#endif
