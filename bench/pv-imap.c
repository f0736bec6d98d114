/* pv-imap: IMAP partial-fetch benchmark client.

   pv-imap HOST PORT USER PASS UID OFFSET LENGTH
     LOGIN, SELECT INBOX, UID FETCH UID (BODY.PEEK[]<OFFSET.LENGTH>),
     LOGOUT. UID may be "*" for the last message.

   Output: imap bytes=literal-bytes fetch_elapsed=s elapsed=s
     fetch_elapsed is the UID FETCH command alone, elapsed the session.
*/
#include "pvb-common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads replies up to the tagged one, skipping literals; returns the
   total size of the literals seen. Dies unless the tagged reply is OK. */
static unsigned long long command(struct pvb_conn *c, const char *tag,
				  const char *cmd)
{
	char buf[1024];
	unsigned long long literals = 0;
	size_t tag_len = strlen(tag);

	snprintf(buf, sizeof(buf), "%s %s\r\n", tag, cmd);
	pvb_writes(c, buf);
	for (;;) {
		char *line = pvb_readline(c);
		size_t len = strlen(line);

		if (strncmp(line, tag, tag_len) == 0 && line[tag_len] == ' ') {
			if (strncmp(line + tag_len + 1, "OK", 2) != 0)
				pvb_die("%s: %s", cmd, line);
			return literals;
		}
		if (len > 2 && line[len - 1] == '}') {
			char *brace = strrchr(line, '{');
			unsigned long long n, avail;

			if (brace == NULL)
				pvb_die("bad literal: %s", line);
			n = strtoull(brace + 1, NULL, 10);
			literals += n;
			/* skip n bytes of literal, then continue with the
			   rest of the line */
			while (n > 0) {
				if (c->start == c->end)
					pvb_fill(c);
				avail = c->end - c->start;
				if (avail > n)
					avail = n;
				c->start += avail;
				n -= avail;
			}
		}
	}
}

int main(int argc, char *argv[])
{
	struct pvb_conn c;
	char cmd[512], *line;
	unsigned long long bytes;
	double start, fetch_start, fetch_elapsed;

	if (argc != 8) {
		fprintf(stderr, "usage: %s HOST PORT USER PASS UID OFFSET "
			"LENGTH\n", argv[0]);
		return 2;
	}
	(void)pvb_ulong(argv[6], "OFFSET");
	(void)pvb_ulong(argv[7], "LENGTH");

	start = pvb_now();
	pvb_connect(&c, argv[1], argv[2]);
	line = pvb_readline(&c);
	if (strncmp(line, "* OK", 4) != 0)
		pvb_die("greeting: %s", line);
	snprintf(cmd, sizeof(cmd), "LOGIN \"%s\" \"%s\"", argv[3], argv[4]);
	command(&c, "a1", cmd);
	command(&c, "a2", "SELECT INBOX");
	snprintf(cmd, sizeof(cmd), "UID FETCH %s (BODY.PEEK[]<%s.%s>)",
		 argv[5], argv[6], argv[7]);
	fetch_start = pvb_now();
	bytes = command(&c, "a3", cmd);
	fetch_elapsed = pvb_now() - fetch_start;
	command(&c, "a4", "LOGOUT");
	printf("imap bytes=%llu fetch_elapsed=%.6f elapsed=%.6f\n", bytes,
	       fetch_elapsed, pvb_now() - start);
	pvb_close(&c);
	return 0;
}
