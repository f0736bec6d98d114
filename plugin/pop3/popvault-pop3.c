/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "ioloop.h"
#include "ostream-private.h"
#include "mail-user.h"
#include "pop3-common.h"
#include "pop3-capability.h"
#include "popvault-user.h"
#include "popvault-capa.h"
#include "popvault-dict.h"
#include "popvault-pop3.h"

/* One module serves every mail process ("mail_plugins = $mail_plugins
   popvault"), but only the pop3 binary defines these symbols. Weak
   references resolve to NULL elsewhere instead of failing dlopen() in
   lmtp, imap, doveadm and dovecot-lda. Nothing may touch a pop3 symbol
   unless popvault_pop3_hooked is TRUE. */
#pragma weak pop3_client_created_hook_set
#pragma weak pop3_clients
#pragma weak client_send_line
#pragma weak client_disconnect

#define LAST_LOGIN_KEY "last-login"

static pop3_client_created_func_t *next_hook_client_created;
static bool popvault_pop3_hooked;

/* ---- CAPA after login ----

   pop3 sends its whole CAPA reply, a compile-time constant, in one write
   while no command is in progress. Message bodies, LIST and UIDL output
   are written only while client->cmd is set, so an exact match of that
   one write with client->cmd == NULL is a CAPA reply and nothing else. */
#define PLAIN_CAPA_REPLY "+OK\r\n" POP3_CAPABILITY_REPLY ".\r\n"

struct popvault_capa_ostream {
	struct ostream_private ostream;
	struct client *client;
	const char *reply;
};

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

static ssize_t
popvault_capa_sendv(struct ostream_private *stream,
		    const struct const_iovec *iov, unsigned int iov_count)
{
	struct popvault_capa_ostream *cstream =
		container_of(stream, struct popvault_capa_ostream, ostream);
	const size_t plain_len = strlen(PLAIN_CAPA_REPLY);
	struct ostream *parent;
	ssize_t ret;

	if (cstream->client->cmd == NULL &&
	    iov_equals(iov, iov_count, PLAIN_CAPA_REPLY, plain_len)) {
		/* the parent is pop3's fd stream with an unlimited buffer:
		   it takes the whole reply */
		if (o_stream_send_str(stream->parent, cstream->reply) < 0) {
			o_stream_copy_error_from_parent(stream);
			return -1;
		}
		stream->ostream.offset += plain_len;
		return plain_len;
	}
	/* Everything else goes to the parent's own sendv(): o_stream_sendv()
	   on the parent would only repeat the checks this stream's
	   o_stream_sendv() has just made. pop3 writes a message line by
	   line (two writes per line), and that second pass was ~30k
	   instructions per 20 KB message, 6 % of plain pop3's cost. */
	parent = stream->parent;
	if (unlikely(parent->closed || parent->stream_errno != 0)) {
		o_stream_copy_error_from_parent(stream);
		return -1;
	}
	ret = parent->real_stream->sendv(parent->real_stream, iov, iov_count);
	if (ret < 0) {
		o_stream_copy_error_from_parent(stream);
		return -1;
	}
	if (ret > 0)
		parent->real_stream->last_write_timeval = ioloop_timeval;
	stream->ostream.offset += ret;
	return ret;
}

static void capa_output_wrap(struct client *client, struct popvault_user *puser)
{
	struct popvault_capa_ostream *cstream;
	struct ostream *output;
	const char *capa_end = ".\r\n";

	cstream = i_new(struct popvault_capa_ostream, 1);
	cstream->ostream.sendv = popvault_capa_sendv;
	cstream->client = client;
	cstream->reply = p_strconcat(client->pool, "+OK\r\n",
		POP3_CAPABILITY_REPLY, popvault_capa_lines(&puser->set),
		capa_end, NULL);
	output = o_stream_create(&cstream->ostream, client->output,
				 o_stream_get_fd(client->output));
	o_stream_set_no_error_handling(output, TRUE);
	o_stream_unref(&client->output);
	client->output = output;
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

static void
refuse_login(struct client *client, struct popvault_user *puser,
	     unsigned int wait)
{
	struct event_passthrough *e =
		event_create_passthrough(puser->event)->
		set_name("popvault_login_delay_refused")->
		add_str("user", client->user->username)->
		add_int("login_delay", puser->set.login_delay)->
		add_int("wait", wait);

	e_info(e->event(), "LOGIN-DELAY: login refused, last login less than "
	       "%u s ago; next login allowed in %u s",
	       puser->set.login_delay, wait);
	/* RFC 2449 8.1.1: the mailbox is not opened (popvault's INBOX hook
	   refuses it) and nothing changes */
	puser->pop3_login_refused = TRUE;
	puser->sweep_after_session = FALSE;
	client_send_line(client, "-ERR [LOGIN-DELAY] Minimum time between "
			 "logins is %u seconds, try again in %u seconds",
			 puser->set.login_delay, wait);
	client_disconnect(client, "LOGIN-DELAY");
}

static void popvault_pop3_client_created(struct client **clientp)
{
	struct client *client = *clientp;
	struct popvault_user *puser = popvault_user_get(client->user);
	unsigned int wait;

	if (puser != NULL) {
		e_debug(puser->event, "pop3 session started");
		capa_output_wrap(client, puser);
		if (login_delay_refuse(puser, &wait))
			refuse_login(client, puser, wait);
		else
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

void popvault_pop3_init(void)
{
	if (pop3_client_created_hook_set == NULL)
		return;
	next_hook_client_created =
		pop3_client_created_hook_set(popvault_pop3_client_created);
	popvault_pop3_hooked = TRUE;
}

void popvault_pop3_deinit(void)
{
	if (!popvault_pop3_hooked)
		return;
	(void)pop3_client_created_hook_set(next_hook_client_created);
	popvault_pop3_hooked = FALSE;
}
