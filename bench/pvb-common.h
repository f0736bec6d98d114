/* Shared helpers for popvault's benchmark clients: plain POSIX sockets,
   no Dovecot libraries. Every client prints exactly one result line of
   space-separated key=value pairs on stdout; errors go to stderr with a
   non-zero exit. */
#ifndef PVB_COMMON_H
#define PVB_COMMON_H

#include <stddef.h>
#include <sys/types.h>

struct pvb_conn {
	int fd;
	char *buf;       /* receive buffer */
	size_t size;     /* allocated */
	size_t start;    /* first unread byte */
	size_t end;      /* one past the last received byte */
	unsigned long long bytes_in;
};

void pvb_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
double pvb_now(void);
void pvb_connect(struct pvb_conn *c, const char *host, const char *port);
void pvb_close(struct pvb_conn *c);
void pvb_write(struct pvb_conn *c, const void *data, size_t len);
void pvb_writes(struct pvb_conn *c, const char *s);
/* Reads more bytes into the buffer; dies on EOF. */
void pvb_fill(struct pvb_conn *c);
/* Returns one line without CRLF (NUL-terminated, valid until the next
   read). */
char *pvb_readline(struct pvb_conn *c);
unsigned long pvb_ulong(const char *s, const char *what);
/* A deterministic message of about size bytes, CRLF line ends, no line
   starting with '.'. The caller frees it. seq goes into Message-ID. */
char *pvb_message(size_t size, unsigned long seq, size_t *len_r);

#endif
