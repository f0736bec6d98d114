/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "ioloop.h"
#include "time-util.h"
#include "popvault-progress.h"

#include <stdio.h>
#include <unistd.h>

struct popvault_progress {
	char *what, *username;
	unsigned int done, total;
	struct timeval start;
	time_t last_print;
	bool tty;
};

struct popvault_progress *
popvault_progress_begin(const char *what, const char *username,
			unsigned int total)
{
	struct popvault_progress *progress = i_new(struct popvault_progress, 1);

	progress->what = i_strdup(what);
	progress->username = i_strdup(username);
	progress->total = total;
	progress->tty = isatty(STDERR_FILENO) == 1;
	i_gettimeofday(&progress->start);
	progress->last_print = progress->start.tv_sec;
	return progress;
}

void popvault_progress_add_total(struct popvault_progress *progress,
				 unsigned int count)
{
	progress->total += count;
}

static void popvault_progress_print(struct popvault_progress *progress,
				    bool final)
{
	struct timeval now;
	long long msecs;
	unsigned int rate;

	i_gettimeofday(&now);
	msecs = timeval_diff_msecs(&now, &progress->start);
	rate = msecs <= 0 ? progress->done :
		(unsigned int)((long long)progress->done * 1000 / msecs);
	if (progress->total > 0) {
		fprintf(stderr, "\rpopvault %s: %s: %u/%u (%u/s)%s",
			progress->what, progress->username, progress->done,
			progress->total, rate, final ? "\n" : "");
	} else {
		fprintf(stderr, "\rpopvault %s: %s: %u (%u/s)%s",
			progress->what, progress->username, progress->done,
			rate, final ? "\n" : "");
	}
	fflush(stderr);
	progress->last_print = now.tv_sec;
}

void popvault_progress_step(struct popvault_progress *progress)
{
	progress->done++;
	/* time(NULL) is a vDSO call: cheap enough per message */
	if (progress->tty && time(NULL) != progress->last_print)
		popvault_progress_print(progress, FALSE);
}

void popvault_progress_end(struct popvault_progress **_progress)
{
	struct popvault_progress *progress = *_progress;

	if (progress == NULL)
		return;
	*_progress = NULL;
	if (progress->tty)
		popvault_progress_print(progress, TRUE);
	i_free(progress->what);
	i_free(progress->username);
	i_free(progress);
}
