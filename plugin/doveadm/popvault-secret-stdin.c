/* Copyright (c) 2026 popvault authors, see the included COPYING file */

#include "lib.h"
#include "str.h"
#include "popvault-secret-stdin.h"

#include <unistd.h>
#include <sysexits.h>
#include <sodium.h>

char *popvault_secret_read_stdin(pool_t pool, const char *what)
{
	string_t *str = t_str_new(128);
	char *line;
	char c;
	ssize_t ret;

	while ((ret = read(STDIN_FILENO, &c, 1)) == 1 && c != '\n')
		str_append_c(str, c);
	if (ret < 0)
		i_fatal("popvault: read(stdin) failed: %m");
	if (ret == 0 && str_len(str) == 0)
		i_fatal_status(EX_USAGE, "popvault: no %s on stdin", what);
	if (str_len(str) > 0 && str_c(str)[str_len(str) - 1] == '\r')
		str_truncate(str, str_len(str) - 1);
	line = p_strdup(pool, str_c(str));
	/* the data stack frame outlives this call: wipe it now */
	sodium_memzero(str_c_modifiable(str), str_len(str));
	return line;
}
