/* pv-lmtp: LMTP delivery benchmark client.

   pv-lmtp HOST PORT RCPT COUNT SIZE [SEQ_START]
     One connection, LHLO, then COUNT transactions of one SIZE-byte
     message each. RFC 2920 pipelining: MAIL, RCPT and DATA go in one
     write, and each message's final "." goes in the same write as the
     next transaction's MAIL/RCPT/DATA, so a transaction costs one round
     trip. TCP_NODELAY is on.

   Output: lmtp msgs=N bytes=message-bytes-sent elapsed=s
*/
#include "pvb-common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a possibly multi-line reply; returns its code. */
static int read_reply(struct pvb_conn *c, int *pipelining_r)
{
	char *line;

	for (;;) {
		line = pvb_readline(c);
		if (strlen(line) < 3)
			pvb_die("short reply: %s", line);
		if (pipelining_r != NULL && strlen(line) > 4 &&
		    strcmp(line + 4, "PIPELINING") == 0)
			*pipelining_r = 1;
		if (line[3] != '-')
			return atoi(line);
	}
}

static void expect(struct pvb_conn *c, int code, const char *what,
		   unsigned long seq)
{
	int got = read_reply(c, NULL);

	if (got != code)
		pvb_die("%s for message %lu: got %d, want %d", what, seq, got,
			code);
}

int main(int argc, char *argv[])
{
	struct pvb_conn c;
	char group[1024];
	unsigned long count, size, seq0 = 0, i;
	unsigned long long bytes = 0;
	int pipelining = 0;
	size_t group_len;
	double start;

	if (argc != 6 && argc != 7) {
		fprintf(stderr, "usage: %s HOST PORT RCPT COUNT SIZE "
			"[SEQ_START]\n", argv[0]);
		return 2;
	}
	count = pvb_ulong(argv[4], "COUNT");
	size = pvb_ulong(argv[5], "SIZE");
	if (argc == 7)
		seq0 = pvb_ulong(argv[6], "SEQ_START");
	if (count == 0)
		pvb_die("COUNT must be > 0");
	group_len = snprintf(group, sizeof(group),
			     "MAIL FROM:<bench@popvault.test>\r\n"
			     "RCPT TO:<%s>\r\nDATA\r\n", argv[3]);
	if (group_len >= sizeof(group))
		pvb_die("recipient too long");

	start = pvb_now();
	pvb_connect(&c, argv[1], argv[2]);
	expect(&c, 220, "greeting", 0);
	pvb_writes(&c, "LHLO popvault.bench\r\n");
	if (read_reply(&c, &pipelining) != 250)
		pvb_die("LHLO refused");
	if (!pipelining)
		pvb_die("server does not offer PIPELINING");

	pvb_write(&c, group, group_len);
	for (i = 0; i < count; i++) {
		size_t len;
		char *msg;

		expect(&c, 250, "MAIL FROM", seq0 + i);
		expect(&c, 250, "RCPT TO", seq0 + i);
		expect(&c, 354, "DATA", seq0 + i);
		msg = pvb_message(size, seq0 + i, &len);
		/* the terminator and the next group go in the same write */
		msg = realloc(msg, len + 3 + group_len);
		if (msg == NULL)
			pvb_die("out of memory");
		memcpy(msg + len, ".\r\n", 3);
		if (i + 1 < count)
			memcpy(msg + len + 3, group, group_len);
		pvb_write(&c, msg, len + 3 + (i + 1 < count ? group_len : 0));
		bytes += len;
		free(msg);
		expect(&c, 250, "end of DATA", seq0 + i);
	}
	pvb_writes(&c, "QUIT\r\n");
	expect(&c, 221, "QUIT", 0);
	printf("lmtp msgs=%lu bytes=%llu elapsed=%.6f\n", count, bytes,
	       pvb_now() - start);
	pvb_close(&c);
	return 0;
}
