/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "str.h"
#include "hash.h"
#include "istream.h"
#include "write-full.h"
#include "mail-storage.h"
#include "mail-user.h"
#include "popvault-user.h"
#include "popvault-ledger.h"

#include <fcntl.h>
#include <unistd.h>
#include "popvault-compat.h"

struct popvault_ledger {
	pool_t pool;
	char *path;
	HASH_TABLE(char *, char *) uidls;
	/* lines not yet appended to the file */
	string_t *pending;
};

static void ledger_put(struct popvault_ledger *ledger, const char *guid,
		       const char *uidl)
{
	char *old_key, *old_value;

	if (hash_table_lookup_full(ledger->uidls, guid, &old_key, &old_value)) {
		hash_table_update(ledger->uidls, old_key,
				  p_strdup(ledger->pool, uidl));
	} else {
		hash_table_insert(ledger->uidls, p_strdup(ledger->pool, guid),
				  p_strdup(ledger->pool, uidl));
	}
}

static int ledger_load(struct popvault_ledger *ledger, struct event *event,
		       const char **error_r)
{
	struct istream *input;
	const char *line, *tab;
	unsigned int bad = 0;
	int fd, ret = 0;

	fd = open(ledger->path, O_RDONLY);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", ledger->path);
		return -1;
	}
	input = i_stream_create_fd_autoclose(&fd, 65536);
	while ((line = i_stream_read_next_line(input)) != NULL) {
		tab = strchr(line, '\t');
		if (tab == NULL || tab == line ||
		    !popvault_uidl_is_valid(tab + 1)) {
			/* e.g. a torn last line after a crash: the rest
			   of the ledger still holds */
			bad++;
			continue;
		}
		ledger_put(ledger, t_strdup_until(line, tab), tab + 1);
	}
	if (input->stream_errno != 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s", ledger->path,
					   i_stream_get_error(input));
		ret = -1;
	}
	i_stream_destroy(&input);
	if (bad > 0)
		e_warning(event, "UIDL ledger %s: skipped %u damaged lines",
			  ledger->path, bad);
	return ret;
}

int popvault_ledger_get(struct popvault_user *puser,
			struct popvault_ledger **ledger_r,
			const char **error_r)
{
	struct popvault_ledger *ledger;
	const char *home;

	if (puser->ledger != NULL) {
		*ledger_r = puser->ledger;
		return 0;
	}
	if (mail_user_get_home(puser->user, &home) <= 0) {
		*error_r = "the UIDL ledger needs a home directory";
		return -1;
	}
	pool_t pool = pool_alloconly_create("popvault ledger", 1024*64);
	ledger = p_new(pool, struct popvault_ledger, 1);
	ledger->pool = pool;
	ledger->path = p_strconcat(pool, home, "/", POPVAULT_LEDGER_FILE, NULL);
	hash_table_create(&ledger->uidls, pool, 0, str_hash, strcmp);
	ledger->pending = str_new(default_pool, 256);
	if (ledger_load(ledger, puser->event, error_r) < 0) {
		popvault_ledger_free(&ledger);
		return -1;
	}
	puser->ledger = ledger;
	*ledger_r = ledger;
	return 0;
}

const char *popvault_ledger_lookup(struct popvault_ledger *ledger,
				   const char *guid)
{
	return hash_table_lookup(ledger->uidls, guid);
}

void popvault_ledger_set(struct popvault_ledger *ledger, const char *guid,
			 const char *uidl)
{
	i_assert(popvault_uidl_is_valid(uidl));
	ledger_put(ledger, guid, uidl);
	str_printfa(ledger->pending, "%s\t%s\n", guid, uidl);
}

void popvault_ledger_add(struct popvault_ledger *ledger, const char *guid,
			 const char *uidl)
{
	if (popvault_ledger_lookup(ledger, guid) == NULL)
		popvault_ledger_set(ledger, guid, uidl);
}

int popvault_ledger_flush(struct popvault_ledger *ledger,
			  const char **error_r)
{
	int fd, ret = 0;

	if (str_len(ledger->pending) == 0)
		return 0;
	fd = open(ledger->path, O_WRONLY | O_APPEND | O_CREAT, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", ledger->path);
		return -1;
	}
	/* one write: lines of concurrent sessions never interleave */
	if (write_full(fd, str_data(ledger->pending),
		       str_len(ledger->pending)) < 0 || fdatasync(fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m",
					   ledger->path);
		ret = -1;
	} else {
		str_truncate(ledger->pending, 0);
	}
	if (close(fd) < 0 && ret == 0) {
		*error_r = t_strdup_printf("close(%s) failed: %m",
					   ledger->path);
		ret = -1;
	}
	return ret;
}

void popvault_ledger_free(struct popvault_ledger **_ledger)
{
	struct popvault_ledger *ledger = *_ledger;

	*_ledger = NULL;
	hash_table_destroy(&ledger->uidls);
	str_free(&ledger->pending);
	pool_unref(&ledger->pool);
}

int popvault_uidl_default(struct mail *mail, const char *format,
			  uint32_t uid_validity, const char **uidl_r,
			  const char **error_r)
{
	const char *md5 = "", *filename = "", *guid = "", *error;
	string_t *str = t_str_new(64);

	/* the same inputs pop3 uses for pop3_uidl_format, looked up only
	   when the format asks for them */
	if (popvault_compat_uidl_format_uses(format, 'm', "md5")) {
		if (mail_get_special(mail, MAIL_FETCH_HEADER_MD5, &md5) < 0)
			goto fail;
	}
	if (popvault_compat_uidl_format_uses(format, 'f', "filename")) {
		if (mail_get_special(mail, MAIL_FETCH_STORAGE_ID, &filename) < 0)
			goto fail;
	}
	if (popvault_compat_uidl_format_uses(format, 'g', "guid")) {
		if (mail_get_special(mail, MAIL_FETCH_GUID, &guid) < 0)
			goto fail;
	}
	const struct popvault_uidl_vars vars = {
		.uidvalidity = dec2str(uid_validity),
		.uid = dec2str(mail->uid),
		.md5 = md5, .filename = filename, .guid = guid,
	};
	if (popvault_compat_uidl_expand(str, format, &vars, &error) < 0) {
		*error_r = t_strdup_printf("pop3_uidl_format=%s: %s",
					   format, error);
		return -1;
	}
	*uidl_r = str_c(str);
	return 0;
fail:
	*error_r = mailbox_get_last_internal_error(mail->box, NULL);
	return -1;
}

static void ledger_user_deinit(struct popvault_user *puser)
{
	const char *error;

	if (puser->ledger == NULL)
		return;
	if (popvault_ledger_flush(puser->ledger, &error) < 0)
		e_error(puser->event, "UIDL ledger: %s", error);
	popvault_ledger_free(&puser->ledger);
}

const struct popvault_user_hooks popvault_ledger_user_hooks = {
	.deinit = ledger_user_deinit,
};
