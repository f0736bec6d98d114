#ifndef POPVAULT_PLUGIN_H
#define POPVAULT_PLUGIN_H

struct module;

extern const char *popvault_plugin_version;

void popvault_plugin_init(struct module *module);
void popvault_plugin_deinit(void);

#endif
