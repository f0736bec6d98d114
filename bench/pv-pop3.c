/* pv-pop3: POP3 benchmark client.

   pv-pop3 HOST PORT USER PASS retr [--hold]
     USER/PASS, STAT, then every RETR 1..N sent pipelined while the
     replies are read, then QUIT.
   pv-pop3 HOST PORT USER PASS uidl [--hold]
     USER/PASS, STAT, UIDL, QUIT.
   pv-pop3 HOST PORT USER PASS stat [--hold]
     USER/PASS, STAT, QUIT (a session's fixed cost).

   --hold: before QUIT print "hold" on stdout and wait for a line on
   stdin (so the caller can read the pop3 process's peak RSS); the wait
   is not counted in elapsed.

   Output: pop3 mode=... msgs=N octets=STAT-size bytes=received elapsed=s
*/
#include "pvb-common.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum parse_state {
	ST_STATUS,	/* in the status line of a reply */
	ST_LINE_START,	/* at the start of a body line */
	ST_BODY,	/* inside a body line */
	ST_DOT,		/* saw "." at line start */
	ST_DOT_CR	/* saw ".\r" at line start */
};

struct multi_parser {
	enum parse_state state;
	char status[4];	/* first bytes of the status line */
	unsigned int status_len;
	unsigned long done;	/* completed replies */
};

/* Consumes data of pipelined multi-line replies; dies on -ERR. */
static void parse(struct multi_parser *p, const char *data, size_t len)
{
	const char *end = data + len, *nl;

	while (data < end) {
		switch (p->state) {
		case ST_STATUS:
			while (data < end && p->status_len < 3)
				p->status[p->status_len++] = *data++;
			nl = memchr(data, '\n', end - data);
			if (nl == NULL)
				return;
			data = nl + 1;
			if (memcmp(p->status, "+OK", 3) != 0)
				pvb_die("reply %lu is not +OK", p->done + 1);
			p->state = ST_LINE_START;
			break;
		case ST_LINE_START:
			p->state = *data == '.' ? ST_DOT : ST_BODY;
			data++;
			if (p->state == ST_BODY && data[-1] == '\n')
				p->state = ST_LINE_START;
			break;
		case ST_BODY:
			nl = memchr(data, '\n', end - data);
			if (nl == NULL)
				return;
			data = nl + 1;
			p->state = ST_LINE_START;
			break;
		case ST_DOT:
			p->state = *data == '\r' ? ST_DOT_CR : ST_BODY;
			if (*data == '\n')
				p->state = ST_LINE_START;
			data++;
			break;
		case ST_DOT_CR:
			if (*data == '\n') {
				p->done++;
				p->status_len = 0;
				p->state = ST_STATUS;
			} else {
				p->state = ST_BODY;
			}
			data++;
			break;
		}
	}
}

static void expect_ok(struct pvb_conn *c, const char *what)
{
	char *line = pvb_readline(c);

	if (strncmp(line, "+OK", 3) != 0)
		pvb_die("%s: %s", what, line);
}

/* Sends the commands in cmds while reading replies until `want` replies
   are complete. */
static void pipeline(struct pvb_conn *c, const char *cmds, size_t cmds_len,
		     unsigned long want)
{
	struct multi_parser p;
	size_t sent = 0;
	int flags;

	memset(&p, 0, sizeof(p));
	/* bytes already buffered after the last line read */
	if (c->end > c->start) {
		parse(&p, c->buf + c->start, c->end - c->start);
		c->start = c->end;
	}
	flags = fcntl(c->fd, F_GETFL);
	if (fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0)
		pvb_die("fcntl: %s", strerror(errno));
	while (p.done < want) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		ssize_t n;

		if (sent < cmds_len)
			pfd.events |= POLLOUT;
		if (poll(&pfd, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			pvb_die("poll: %s", strerror(errno));
		}
		if ((pfd.revents & POLLOUT) != 0) {
			n = write(c->fd, cmds + sent, cmds_len - sent);
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				pvb_die("write: %s", strerror(errno));
			if (n > 0)
				sent += n;
		}
		if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
			n = read(c->fd, c->buf, c->size);
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				pvb_die("read: %s", strerror(errno));
			if (n == 0)
				pvb_die("connection closed after %lu replies",
					p.done);
			if (n > 0) {
				c->bytes_in += n;
				parse(&p, c->buf, n);
			}
		}
	}
	if (p.state != ST_STATUS || p.status_len != 0)
		pvb_die("extra bytes after the last reply");
	c->start = c->end = 0;
	if (fcntl(c->fd, F_SETFL, flags) < 0)
		pvb_die("fcntl: %s", strerror(errno));
}

int main(int argc, char *argv[])
{
	struct pvb_conn c;
	const char *mode;
	char *line, cmd[512], *cmds;
	unsigned long msgs, octets, i;
	size_t cmds_len = 0;
	double start, hold_start, hold = 0;
	int do_hold = 0;

	if (argc < 6 || argc > 7 ||
	    (argc == 7 && strcmp(argv[6], "--hold") != 0)) {
		fprintf(stderr, "usage: %s HOST PORT USER PASS retr|uidl|stat "
			"[--hold]\n", argv[0]);
		return 2;
	}
	mode = argv[5];
	do_hold = argc == 7;
	if (strcmp(mode, "retr") != 0 && strcmp(mode, "uidl") != 0 &&
	    strcmp(mode, "stat") != 0)
		pvb_die("unknown mode %s", mode);

	start = pvb_now();
	pvb_connect(&c, argv[1], argv[2]);
	expect_ok(&c, "greeting");
	snprintf(cmd, sizeof(cmd), "USER %s\r\n", argv[3]);
	pvb_writes(&c, cmd);
	expect_ok(&c, "USER");
	snprintf(cmd, sizeof(cmd), "PASS %s\r\n", argv[4]);
	pvb_writes(&c, cmd);
	expect_ok(&c, "PASS");
	pvb_writes(&c, "STAT\r\n");
	line = pvb_readline(&c);
	if (sscanf(line, "+OK %lu %lu", &msgs, &octets) != 2)
		pvb_die("STAT: %s", line);

	if (strcmp(mode, "retr") == 0) {
		cmds = malloc(msgs * 20 + 1);
		if (cmds == NULL)
			pvb_die("out of memory");
		for (i = 1; i <= msgs; i++)
			cmds_len += sprintf(cmds + cmds_len, "RETR %lu\r\n", i);
		pipeline(&c, cmds, cmds_len, msgs);
		free(cmds);
	} else if (strcmp(mode, "uidl") == 0) {
		pipeline(&c, "UIDL\r\n", 6, 1);
	}

	if (do_hold) {
		char answer[16];

		hold_start = pvb_now();
		printf("hold\n");
		fflush(stdout);
		if (fgets(answer, sizeof(answer), stdin) == NULL)
			pvb_die("stdin closed while holding");
		hold = pvb_now() - hold_start;
	}
	pvb_writes(&c, "QUIT\r\n");
	expect_ok(&c, "QUIT");
	printf("pop3 mode=%s msgs=%lu octets=%lu bytes=%llu elapsed=%.6f\n",
	       mode, msgs, octets, c.bytes_in, pvb_now() - start - hold);
	pvb_close(&c);
	return 0;
}
