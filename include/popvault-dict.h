#ifndef POPVAULT_DICT_H
#define POPVAULT_DICT_H

struct popvault_user;

/* Per-user state shared between backends (popvault_dict, default a file
   dict in the user's home). Keys are relative to priv/popvault/. */
int popvault_dict_get(struct popvault_user *puser, const char *key,
		      const char **value_r, const char **error_r);
int popvault_dict_set(struct popvault_user *puser, const char *key,
		      const char *value, const char **error_r);
void popvault_dict_deinit(struct popvault_user *puser);

#endif
