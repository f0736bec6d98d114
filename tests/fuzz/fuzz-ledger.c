/* Copyright (c) 2026 popvault authors, see the included COPYING file */

/* UIDL ledger input: lines of a `doveadm popvault uidl import` file
   (from an old server, so anything) and the UIDL check the ledger file
   loader applies to every "<guid>\t<uidl>" line. */

#include "lib.h"
#include "popvault-ledger.h"
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc ATTR_UNUSED, char ***argv ATTR_UNUSED)
{
	fuzz_lib_init();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *const *lines, *uidl, *ref, *error, *tab;

	T_BEGIN {
		lines = t_strsplit(t_strndup(data, size), "\n");
		for (; *lines != NULL; lines++) {
			if (popvault_ledger_parse_import_line(*lines, &uidl,
							      &ref,
							      &error) == 0) {
				i_assert(popvault_uidl_is_valid(uidl));
				i_assert(*ref != '\0');
			}
			tab = strchr(*lines, '\t');
			if (tab != NULL)
				(void)popvault_uidl_is_valid(tab + 1);
		}
	} T_END;
	return 0;
}
