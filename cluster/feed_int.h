/*
 * feed_int.h: what feed.c and feed_apply.c share and nothing else uses.
 */
#ifndef MX_FEED_INT_H
#define MX_FEED_INT_H

#include <stddef.h>

/* The first NUL or control byte (tab allowed when tab_ok) in p[0..n),
 * described; NULL when there is none. */
char *mx_feed_control_byte(const char *p, size_t n, int tab_ok);

#endif
