#ifndef POPVAULT_DICT_H
#define POPVAULT_DICT_H

struct popvault_user;

/* Per-user state shared between backends (popvault_dict, default a file
   dict in the user's home). Keys are relative to priv/popvault/. */
/* Opens the popvault_dict the user's settings configure, so that an
   invalid one fails the login (-1 with error_r) instead of being found
   at the first LOGIN-DELAY check; without one the file dict is opened on
   first use. */
int popvault_dict_user_created(struct popvault_user *puser,
			       const char **error_r);
int popvault_dict_get(struct popvault_user *puser, const char *key,
		      const char **value_r, const char **error_r);
int popvault_dict_set(struct popvault_user *puser, const char *key,
		      const char *value, const char **error_r);
void popvault_dict_deinit(struct popvault_user *puser);

#endif
