/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "ioloop.h"
#include "array.h"
#include "istream-private.h"
#include "ostream-private.h"
#include "mail-user.h"
#include "pop3-common.h"
#include "pop3-capability.h"
#include "popvault-user.h"
#include "popvault-capa.h"
#include "popvault-dict.h"
#include "popvault-crypt.h"
#include "popvault-pop3.h"

/* One module serves every mail process ("mail_plugins = $mail_plugins
   popvault"), but only the pop3 binary defines these symbols. Weak
   references resolve to NULL elsewhere instead of failing dlopen() in
   lmtp, imap, doveadm and dovecot-lda. Nothing may touch a pop3 symbol
   unless popvault_pop3_hooked is TRUE. */
#pragma weak pop3_client_created_hook_set
#pragma weak pop3_clients
#pragma weak client_disconnect

#define LAST_LOGIN_KEY "last-login"

static pop3_client_created_func_t *next_hook_client_created;
static bool popvault_pop3_hooked;

/* ---- CAPA after login ----

   pop3 sends its whole CAPA reply, a compile-time constant, in one write
   while no command is in progress. Message bodies, LIST and UIDL output
   are written only while client->cmd is set, so an exact match of that
   one write with client->cmd == NULL is a CAPA reply and nothing else.

   The check sits in the client's own ostream as a replaced sendv vfunc,
   not in an ostream layer of its own: pop3 writes a message body line by
   line (hundreds of writes per message), and a second layer cost 40 k
   instructions per 20 KB message (callgrind, docs/performance.md).

   Even the replaced vfunc cost 13 k per message, so it is armed only
   while it can matter. A multi-line reply (RETR, TOP, LIST, UIDL)
   disarms it unless a CAPA command is waiting in the client's input
   (pipelined behind it, not yet parsed); any new input from the client
   arms it again: the client's istream has its read vfunc replaced too,
   which costs nothing that matters (commands are few and short). */
#define PLAIN_CAPA_REPLY "+OK\r\n" POP3_CAPABILITY_REPLY ".\r\n"
#define LOGGED_IN_REPLY "+OK Logged in.\r\n"

typedef ssize_t capa_sendv_func_t(struct ostream_private *stream,
				  const struct const_iovec *iov,
				  unsigned int iov_count);
typedef ssize_t capa_read_func_t(struct istream_private *stream);

struct popvault_capa_output {
	struct ostream_private *stream;
	capa_sendv_func_t *orig_sendv;
	struct client *client;
	const char *reply;
	/* LOGIN-DELAY refused this session: the reply that replaces pop3's
	   "+OK Logged in." (nothing else is written after it) */
	const char *refusal;
	/* ends a refused session once pop3 has set it up */
	struct timeout *to_disconnect;

	/* the client's istream (NULL once destroyed) and its read */
	struct istream_private *in_stream;
	capa_read_func_t *orig_read;
	/* capa_input_waiting() scans each input byte once: up to here
	   (an absolute input offset; scan_mid_line when not at a line
	   start), and where the last CAPA line began (UOFF_T_MAX: none) */
	uoff_t scanned, last_capa;
	bool scan_mid_line;
};

/* one entry per POP3 client of this process (usually one); capa_first
   caches the first for the per-write lookup */
static ARRAY(struct popvault_capa_output) capa_outputs;
static struct popvault_capa_output *capa_first;

static struct popvault_capa_output *
capa_output_find(const struct ostream_private *stream)
{
	struct popvault_capa_output *co;

	array_foreach_modifiable(&capa_outputs, co) {
		if (co->stream == stream)
			return co;
	}
	i_unreached();
}

static bool iov_equals(const struct const_iovec *iov, unsigned int iov_count,
		       const char *str, size_t len)
{
	size_t pos = 0;
	unsigned int i;

	for (i = 0; i < iov_count; i++) {
		if (pos + iov[i].iov_len > len ||
		    memcmp(str + pos, iov[i].iov_base, iov[i].iov_len) != 0)
			return FALSE;
		pos += iov[i].iov_len;
	}
	return pos == len;
}

static ssize_t __attribute__((noinline))
capa_sendv_slow(struct popvault_capa_output *co,
		struct ostream_private *stream,
		const struct const_iovec *iov, unsigned int iov_count)
{
	const size_t plain_len = sizeof(PLAIN_CAPA_REPLY) - 1;
	struct const_iovec reply_iov;
	size_t total = 0;
	unsigned int i;
	ssize_t ret;

	if (co->refusal != NULL) {
		/* pop3 goes on to answer PASS with "+OK Logged in." and,
		   when popvault refuses to open INBOX, with an error: the
		   client gets the refusal instead and nothing
		   else until pop3 closes the connection */
		for (i = 0; i < iov_count; i++)
			total += iov[i].iov_len;
		if (iov_equals(iov, iov_count, LOGGED_IN_REPLY,
			       sizeof(LOGGED_IN_REPLY) - 1)) {
			reply_iov.iov_base = co->refusal;
			reply_iov.iov_len = strlen(co->refusal);
			if (co->orig_sendv(stream, &reply_iov, 1) < 0)
				return -1;
		}
		return total;
	}
	if (!iov_equals(iov, iov_count, PLAIN_CAPA_REPLY, plain_len))
		return co->orig_sendv(stream, iov, iov_count);

	/* pop3's output buffer is unlimited (o_stream_create_fd(fd,
	   SIZE_MAX)): the whole reply is taken or the stream failed */
	reply_iov.iov_base = co->reply;
	reply_iov.iov_len = strlen(co->reply);
	ret = co->orig_sendv(stream, &reply_iov, 1);
	if (ret < 0)
		return -1;
	i_assert((size_t)ret == reply_iov.iov_len);
	/* the caller accounts for what it asked to send */
	return plain_len;
}

/* TRUE when a line of the client's input that pop3 has not parsed yet
   is a CAPA command. Pipelining clients send hundreds of commands at
   once, so every byte is looked at once only, not at every reply. */
static bool capa_input_waiting(struct popvault_capa_output *co)
{
	const struct istream_private *in = co->in_stream;
	const unsigned char *buf, *nl;
	uoff_t base;
	size_t i;

	if (in == NULL)
		return FALSE;
	/* buffer[skip] is at input offset v_offset, always a line start:
	   pop3 consumes whole lines */
	base = in->istream.v_offset;
	buf = in->buffer;
	if (co->scanned <= base) {
		i = in->skip;
		co->scan_mid_line = FALSE;
	} else {
		i = in->skip + (co->scanned - base);
	}
	while (i < in->pos) {
		if (co->scan_mid_line) {
			nl = memchr(buf + i, '\n', in->pos - i);
			if (nl == NULL) {
				i = in->pos;
				break;
			}
			i = nl - buf + 1;
			co->scan_mid_line = FALSE;
			continue;
		}
		if (in->pos - i < 4)
			break; /* decided when the rest arrives */
		if ((buf[i] | 0x20) == 'c' && (buf[i + 1] | 0x20) == 'a' &&
		    (buf[i + 2] | 0x20) == 'p' && (buf[i + 3] | 0x20) == 'a')
			co->last_capa = base + (i - in->skip);
		co->scan_mid_line = TRUE;
	}
	co->scanned = base + (i - in->skip);
	return co->last_capa != UOFF_T_MAX && co->last_capa >= base;
}

/* Runs for every line of every message sent, so the common case is a
   handful of instructions: no locals, the slow path out of line. pop3
   sends each reply as one iovec; a first iovec that is longer than the
   CAPA reply or does not start with '+' rules it out. */
static ssize_t
popvault_capa_sendv(struct ostream_private *stream,
		    const struct const_iovec *iov, unsigned int iov_count)
{
	struct popvault_capa_output *co = capa_first;

	if (unlikely(co->stream != stream))
		co = capa_output_find(stream);
	if (unlikely(co->refusal != NULL))
		return capa_sendv_slow(co, stream, iov, iov_count);
	if (co->client->cmd != NULL) {
		/* a multi-line reply: nothing needs the hook until the
		   client sends a CAPA, unless one is waiting already */
		if (!capa_input_waiting(co))
			stream->sendv = co->orig_sendv;
		return co->orig_sendv(stream, iov, iov_count);
	}
	if (iov[0].iov_len > sizeof(PLAIN_CAPA_REPLY) - 1 ||
	    (iov[0].iov_len > 0 &&
	     ((const char *)iov[0].iov_base)[0] != '+'))
		return co->orig_sendv(stream, iov, iov_count);
	return capa_sendv_slow(co, stream, iov, iov_count);
}

static ssize_t capa_input_read(struct istream_private *stream)
{
	struct popvault_capa_output *co = NULL, *c;
	ssize_t ret;

	array_foreach_modifiable(&capa_outputs, c) {
		if (c->in_stream == stream)
			co = c;
	}
	i_assert(co != NULL);
	ret = co->orig_read(stream);
	if (ret > 0) {
		/* pop3 parses these lines only after this returns */
		co->stream->sendv = popvault_capa_sendv;
	}
	return ret;
}

static void capa_input_destroyed(struct istream_private *stream)
{
	struct popvault_capa_output *co;

	array_foreach_modifiable(&capa_outputs, co) {
		if (co->in_stream == stream)
			co->in_stream = NULL;
	}
}

static void capa_output_destroyed(struct ostream_private *stream)
{
	struct popvault_capa_output *co;
	unsigned int idx;

	array_foreach_modifiable(&capa_outputs, co) {
		if (co->stream == stream) {
			/* anything written while closing goes straight on */
			stream->sendv = co->orig_sendv;
			timeout_remove(&co->to_disconnect);
			if (co->in_stream != NULL)
				co->in_stream->read = co->orig_read;
			idx = array_foreach_idx(&capa_outputs, co);
			array_delete(&capa_outputs, idx, 1);
			capa_first = array_is_empty(&capa_outputs) ? NULL :
				array_front_modifiable(&capa_outputs);
			return;
		}
	}
}

static struct popvault_capa_output *capa_output_for(struct client *client)
{
	struct popvault_capa_output *co;

	array_foreach_modifiable(&capa_outputs, co) {
		if (co->client == client)
			return co;
	}
	i_unreached();
}

static const char *
no_setting(const char *name ATTR_UNUSED, void *context ATTR_UNUSED)
{
	return NULL;
}

/* The CAPA reply after login for this user. A user without popvault
   settings gets it too (EXPIRE NEVER): RFC 2449 asks a server that said
   "USER" before login to give every user's own value after it. That is
   all popvault does for such a user: no user context, no mailbox hooks. */
static const char *
capa_reply(struct client *client, const struct popvault_settings *set)
{
	struct popvault_settings defaults;
	const char *delay_env = getenv(POPVAULT_LOGIN_DELAY_ENV), *error;

	if (set == NULL) {
		if (popvault_settings_parse(client->pool, no_setting, NULL,
					    NULL, &defaults, &error) < 0)
			i_panic("popvault: default settings: %s", error);
		set = &defaults;
	}
	return p_strconcat(client->pool, "+OK\r\n", POP3_CAPABILITY_REPLY,
		popvault_capa_lines(set, delay_env != NULL &&
				    delay_env[0] != '\0'),
		".\r\n", NULL);
}

static void
capa_output_wrap(struct client *client, const struct popvault_settings *set)
{
	struct ostream_private *stream = client->output->real_stream;
	struct popvault_capa_output *co;

	if (!array_is_created(&capa_outputs))
		i_array_init(&capa_outputs, 4);
	co = array_append_space(&capa_outputs);
	co->stream = stream;
	co->orig_sendv = stream->sendv;
	co->client = client;
	co->reply = capa_reply(client, set);
	co->in_stream = client->input->real_stream;
	co->orig_read = co->in_stream->read;
	co->last_capa = UOFF_T_MAX;
	co->in_stream->read = capa_input_read;
	capa_first = array_front_modifiable(&capa_outputs);
	stream->sendv = popvault_capa_sendv;
	o_stream_add_destroy_callback(client->output, capa_output_destroyed,
				      stream);
	i_stream_add_destroy_callback(client->input, capa_input_destroyed,
				      co->in_stream);
}

/* ---- LOGIN-DELAY ---- */

/* Returns TRUE when the login must be refused. The last login time lives
   in popvault_dict, so backends sharing a redis dict enforce it together.
   A dict failure lets the user in (and logs why): the delay protects
   server load, and refusing would keep people from their mail. */
static bool login_delay_refuse(struct popvault_user *puser,
			       unsigned int *wait_r)
{
	const char *value, *error;
	time_t last;

	if (puser->set.login_delay == 0)
		return FALSE;
	if (popvault_dict_get(puser, LAST_LOGIN_KEY, &value, &error) < 0) {
		e_error(puser->event, "LOGIN-DELAY not enforced: %s", error);
		return FALSE;
	}
	if (value != NULL && str_to_time(value, &last) == 0 &&
	    last <= ioloop_time &&
	    ioloop_time - last < (time_t)puser->set.login_delay) {
		*wait_r = puser->set.login_delay - (ioloop_time - last);
		return TRUE;
	}
	if (popvault_dict_set(puser, LAST_LOGIN_KEY, dec2str(ioloop_time),
			      &error) < 0)
		e_error(puser->event, "LOGIN-DELAY: can't record login: %s",
			error);
	return FALSE;
}

/* Locked keys: answers the login with reply instead of pop3's "+OK
   Logged in." and keeps INBOX closed: nothing of the mailbox changes
   (pop3 logs the failed open as an Error, as it should be). Not sent and
   disconnected here: pop3 sets up the client's input after this hook
   returns and crashed on the closed stream (found by the sanitizer run).
   pop3 answers PASS itself; the CAPA sendv hook puts this line in its
   place, and pop3 closes the session when INBOX can't be opened. */
static void
refuse_login(struct client *client, struct popvault_user *puser,
	     const char *cause, const char *reply)
{
	struct popvault_capa_output *co = capa_output_for(client);

	puser->pop3_login_refused = cause;
	puser->sweep_after_session = FALSE;
	co->refusal = p_strconcat(client->pool, reply, "\r\n", NULL);
}

static void refused_session_disconnect(struct client *client)
{
	struct popvault_capa_output *co = capa_output_for(client);

	timeout_remove(&co->to_disconnect);
	client_disconnect(client, "LOGIN-DELAY: login refused");
}

/* A login inside the window. Either way INBOX is opened with an empty
   listing, so nothing is numbered, downloaded, deleted or flagged, no
   policy or sweep runs, and the window is not restarted. "empty" lets
   the client in: it sees no mail, which every client handles quietly.
   "refuse" answers PASS with RFC 2449's -ERR [LOGIN-DELAY] instead of
   "+OK Logged in." and ends the session when pop3 has set it up: a
   failed INBOX open would end it too, but pop3 logs that as an Error,
   and a refusal by policy is not one. */
static void
login_delayed(struct client *client, struct popvault_user *puser,
	      unsigned int wait)
{
	enum popvault_login_delay_mode mode = puser->set.login_delay_mode;
	struct popvault_capa_output *co;
	struct event_passthrough *e =
		event_create_passthrough(puser->event)->
		set_name("popvault_login_delay_refused")->
		add_str("user", client->user->username)->
		add_str("mode", popvault_login_delay_mode_to_str(mode))->
		add_int("login_delay", puser->set.login_delay)->
		add_int("wait", wait);

	puser->pop3_login_delayed = TRUE;
	puser->sweep_after_session = FALSE;
	if (mode == POPVAULT_LOGIN_DELAY_EMPTY) {
		e_info(e->event(), "LOGIN-DELAY: last login less than %u s "
		       "ago, this session sees an empty maildrop; next full "
		       "login allowed in %u s", puser->set.login_delay, wait);
		return;
	}
	e_info(e->event(), "LOGIN-DELAY: login refused, last login less than "
	       "%u s ago; next login allowed in %u s",
	       puser->set.login_delay, wait);
	co = capa_output_for(client);
	co->refusal = p_strdup_printf(client->pool,
		"-ERR [LOGIN-DELAY] Minimum time between logins is %u "
		"seconds, try again in %u seconds\r\n",
		puser->set.login_delay, wait);
	/* runs after pop3 has opened INBOX and answered PASS */
	co->to_disconnect = timeout_add_short(0, refused_session_disconnect,
					      client);
}

static void popvault_pop3_client_created(struct client **clientp)
{
	struct client *client = *clientp;
	struct popvault_user *puser = popvault_user_get(client->user);
	unsigned int wait;

	if (puser == NULL)
		capa_output_wrap(client, NULL);
	else {
		e_debug(puser->event, "pop3 session started");
		capa_output_wrap(client, &puser->set);
		if (login_delay_refuse(puser, &wait))
			login_delayed(client, puser, wait);
		else if (popvault_crypt_pop3_unlock(puser) < 0) {
			/* the log line and event come from the unlock */
			refuse_login(client, puser, "locked encryption keys",
				"-ERR [SYS/TEMP] The mailbox is encrypted and "
				"its keys did not unlock; nothing was changed");
		} else
			puser->sweep_after_session = TRUE;
	}

	if (next_hook_client_created != NULL)
		next_hook_client_created(clientp);
}

struct client *popvault_pop3_client_for_box(struct mailbox *box)
{
	struct client *client;

	if (!popvault_pop3_hooked)
		return NULL;
	for (client = pop3_clients; client != NULL; client = client->next) {
		if (client->mailbox == box)
			return client;
	}
	return NULL;
}

static void popvault_pop3_damaged(struct mailbox *box, const char *reason)
{
	struct client *client = popvault_pop3_client_for_box(box);

	if (client != NULL)
		client_disconnect(client, reason);
}

void popvault_pop3_init(void)
{
	if (pop3_client_created_hook_set == NULL)
		return;
	next_hook_client_created =
		pop3_client_created_hook_set(popvault_pop3_client_created);
	popvault_crypt_set_damaged_callback(popvault_pop3_damaged);
	popvault_pop3_hooked = TRUE;
}

void popvault_pop3_deinit(void)
{
	if (!popvault_pop3_hooked)
		return;
	(void)pop3_client_created_hook_set(next_hook_client_created);
	popvault_crypt_set_damaged_callback(NULL);
	popvault_pop3_hooked = FALSE;
	if (array_is_created(&capa_outputs))
		array_free(&capa_outputs);
	capa_first = NULL;
}
