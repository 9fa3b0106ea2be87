/*
 * config_int.h: what config.c (the option table and the loader) and
 * config_derive.c (what the options make) share.
 */
#ifndef MX_CONFIG_INT_H
#define MX_CONFIG_INT_H

#include <stdint.h>

#include "config.h"

/* Fill the derived fields of c (addresses, networks, rules) and check the
 * options against each other; -1 with *err. */
int mx_config_derive(mx_config *c, char **err);
/* One key of a [ratelimit:group] (from the file or -o); -1 with *err. */
int mx_config_rl_set(mx_config *c, const char *group, const char *key, const char *value,
                     char **err);

/* A decimal integer, with allow_suffix a k, m or g multiplier (1024s,
 * not negative); -1 when it is not one. */
int mx_config_parse_int64(const char *s, int64_t *v, int allow_suffix);

#endif
