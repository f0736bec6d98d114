/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "fuzz-common.h"

void fuzz_lib_init(void)
{
	static bool initialized = FALSE;

	if (initialized)
		return;
	initialized = TRUE;
	lib_init();
}
