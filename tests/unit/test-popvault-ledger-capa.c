/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "test-common.h"
#include "popvault-ledger.h"
#include "popvault-capa.h"

static void test_import_line(void)
{
	static const struct {
		const char *line;
		int ret;
		const char *uidl, *ref;
	} tests[] = {
		{ "abc <m@x>", 0, "abc", "<m@x>" },
		{ "abc   <m@x>\r", 0, "abc", "<m@x>" },
		{ "0000000155aa3d3e 1795292910.M4P2.vm,S=3,W=4", 0,
		  "0000000155aa3d3e", "1795292910.M4P2.vm,S=3,W=4" },
		{ "", -1, NULL, NULL },
		{ "onlyuidl", -1, NULL, NULL },
		{ "uidl ", -1, NULL, NULL },
		{ " <m@x>", -1, NULL, NULL },
		{ "uidl <m@x> extra", -1, NULL, NULL },
		{ "ui\x01dl <m@x>", -1, NULL, NULL },
		{ "uidl <m\x7f@x>", -1, NULL, NULL },
		{ "uidl\t<m@x>", -1, NULL, NULL },
		/* 70 characters is the RFC 1939 maximum */
		{ "0123456789012345678901234567890123456789012345678901234567890123456789 r",
		  0, "0123456789012345678901234567890123456789012345678901234567890123456789", "r" },
		{ "01234567890123456789012345678901234567890123456789012345678901234567890 r",
		  -1, NULL, NULL },
	};
	const char *uidl, *ref, *error;
	unsigned int i;

	test_begin("popvault_ledger_parse_import_line");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		int ret = popvault_ledger_parse_import_line(tests[i].line,
							    &uidl, &ref,
							    &error);
		test_assert_idx(ret == tests[i].ret, i);
		if (ret == 0) {
			test_assert_idx(strcmp(uidl, tests[i].uidl) == 0, i);
			test_assert_idx(strcmp(ref, tests[i].ref) == 0, i);
		}
	}
	test_end();
}

static void test_capa_expire(void)
{
	static const struct {
		enum popvault_action_kind after_retr;
		unsigned int downloaded, unread, delay;
		const char *lines;
		/* LOGIN-DELAY advertised before login */
		bool delay_advertised;
	} tests[] = {
		{ POPVAULT_ACTION_KEEP, POPVAULT_NEVER, POPVAULT_NEVER, 0,
		  "EXPIRE NEVER\r\n", FALSE },
		{ POPVAULT_ACTION_KEEP, POPVAULT_NEVER, POPVAULT_NEVER, 0,
		  "EXPIRE NEVER\r\nLOGIN-DELAY 0\r\n", TRUE },
		{ POPVAULT_ACTION_DELETE, POPVAULT_NEVER, POPVAULT_NEVER, 900,
		  "EXPIRE 0\r\nLOGIN-DELAY 900\r\n", TRUE },
		{ POPVAULT_ACTION_DELETE, POPVAULT_NEVER, POPVAULT_NEVER, 0,
		  "EXPIRE 0\r\n", FALSE },
		{ POPVAULT_ACTION_HIDE, 14*86400, POPVAULT_NEVER, 0,
		  "EXPIRE 0\r\n", FALSE },
		{ POPVAULT_ACTION_MOVE, POPVAULT_NEVER, POPVAULT_NEVER, 60,
		  "EXPIRE 0\r\nLOGIN-DELAY 60\r\n", FALSE },
		{ POPVAULT_ACTION_KEEP, 14*86400, 30*86400, 0,
		  "EXPIRE 14\r\n", FALSE },
		{ POPVAULT_ACTION_KEEP, POPVAULT_NEVER, 7*86400, 900,
		  "EXPIRE 7\r\nLOGIN-DELAY 900\r\n", FALSE },
		{ POPVAULT_ACTION_KEEP, 36*3600, POPVAULT_NEVER, 0,
		  "EXPIRE 1\r\n", FALSE },
		{ POPVAULT_ACTION_KEEP, 3600, POPVAULT_NEVER, 0,
		  "EXPIRE 0\r\n", FALSE },
	};
	struct popvault_settings set;
	unsigned int i;

	test_begin("popvault_capa_lines");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		i_zero(&set);
		set.after_retr.kind = tests[i].after_retr;
		set.after_retr.mailbox = "Archive";
		set.retain_downloaded = tests[i].downloaded;
		set.retain_unread = tests[i].unread;
		set.login_delay = tests[i].delay;
		test_assert_idx(strcmp(popvault_capa_lines(&set,
					tests[i].delay_advertised),
				       tests[i].lines) == 0, i);
	}
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_import_line,
		test_capa_expire,
		NULL
	};
	return test_run(test_functions);
}
