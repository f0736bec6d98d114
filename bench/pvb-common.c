#include "pvb-common.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PVB_BUF_MIN (256 * 1024)

void pvb_die(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	fputs("bench: ", stderr);
	vfprintf(stderr, fmt, args);
	fputc('\n', stderr);
	va_end(args);
	exit(1);
}

double pvb_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

void pvb_connect(struct pvb_conn *c, const char *host, const char *port)
{
	struct addrinfo hints, *res, *ai;
	int one = 1, err;

	memset(c, 0, sizeof(*c));
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	err = getaddrinfo(host, port, &hints, &res);
	if (err != 0)
		pvb_die("getaddrinfo(%s, %s): %s", host, port, gai_strerror(err));
	c->fd = -1;
	for (ai = res; ai != NULL && c->fd < 0; ai = ai->ai_next) {
		c->fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (c->fd < 0)
			continue;
		if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
			close(c->fd);
			c->fd = -1;
		}
	}
	freeaddrinfo(res);
	if (c->fd < 0)
		pvb_die("connect(%s:%s): %s", host, port, strerror(errno));
	/* small commands must not wait for Nagle */
	if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		pvb_die("TCP_NODELAY: %s", strerror(errno));
	c->size = PVB_BUF_MIN;
	c->buf = malloc(c->size + 1);
	if (c->buf == NULL)
		pvb_die("out of memory");
}

void pvb_close(struct pvb_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->buf);
	c->buf = NULL;
}

void pvb_write(struct pvb_conn *c, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(c->fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			pvb_die("write: %s", strerror(errno));
		}
		p += n;
		len -= n;
	}
}

void pvb_writes(struct pvb_conn *c, const char *s)
{
	pvb_write(c, s, strlen(s));
}

void pvb_fill(struct pvb_conn *c)
{
	ssize_t n;

	if (c->start > 0 && c->start == c->end)
		c->start = c->end = 0;
	if (c->end == c->size) {
		if (c->start > 0) {
			memmove(c->buf, c->buf + c->start, c->end - c->start);
			c->end -= c->start;
			c->start = 0;
		} else {
			c->size *= 2;
			c->buf = realloc(c->buf, c->size + 1);
			if (c->buf == NULL)
				pvb_die("out of memory");
		}
	}
	do {
		n = read(c->fd, c->buf + c->end, c->size - c->end);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		pvb_die("read: %s", strerror(errno));
	if (n == 0)
		pvb_die("connection closed by server");
	c->end += n;
	c->bytes_in += n;
}

char *pvb_readline(struct pvb_conn *c)
{
	char *line, *nl;

	for (;;) {
		nl = memchr(c->buf + c->start, '\n', c->end - c->start);
		if (nl != NULL)
			break;
		pvb_fill(c);
	}
	line = c->buf + c->start;
	c->start = nl - c->buf + 1;
	if (nl > line && nl[-1] == '\r')
		nl--;
	*nl = '\0';
	return line;
}

unsigned long pvb_ulong(const char *s, const char *what)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *s == '\0' || *end != '\0')
		pvb_die("invalid %s: %s", what, s);
	return v;
}

char *pvb_message(size_t size, unsigned long seq, size_t *len_r)
{
	static const char alphabet[] =
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	unsigned long long x = 0x9e3779b97f4a7c15ULL ^ seq;
	char *msg;
	size_t len;
	int col = 0;

	msg = malloc(size + 512);
	if (msg == NULL)
		pvb_die("out of memory");
	len = snprintf(msg, 512,
		"From: bench <bench@popvault.test>\r\n"
		"To: user@popvault.test\r\n"
		"Subject: popvault bench message %lu\r\n"
		"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
		"Message-ID: <bench-%lu@popvault.test>\r\n"
		"\r\n", seq, seq);
	/* 76 characters and CRLF a line, pseudo-random letters */
	while (len + 2 < size) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		msg[len++] = alphabet[x % (sizeof(alphabet) - 1)];
		if (++col == 76) {
			msg[len++] = '\r';
			msg[len++] = '\n';
			col = 0;
		}
	}
	msg[len++] = '\r';
	msg[len++] = '\n';
	*len_r = len;
	return msg;
}
