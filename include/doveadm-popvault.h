#ifndef DOVEADM_POPVAULT_H
#define DOVEADM_POPVAULT_H

struct module;

extern const char *doveadm_popvault_plugin_version;

void doveadm_popvault_plugin_init(struct module *module);
void doveadm_popvault_plugin_deinit(void);

#endif
