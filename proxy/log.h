/*
 * log.h: key=value log lines, Postfix-style, one write(2) each.
 *
 * Owns: formatting and quoting. A line is built with mx_log_begin, filled
 * with mx_log_kv*, and emitted with mx_log_end, so concurrent threads never
 * interleave within a line. Values with spaces, quotes or control bytes are
 * quoted and escaped, so a hostile HELO cannot forge a field.
 */
#ifndef MX_LOG_H
#define MX_LOG_H

#include <stdint.h>

#include <glib.h>

/* Levels match the config enum: 0 error .. 3 debug. */
void mx_log_set_level(int level);
int mx_log_enabled(int level);

GString *mx_log_begin(int level, const char *event);
void mx_log_kv(GString *l, const char *key, const char *val);
void mx_log_kvn(GString *l, const char *key, const char *val, size_t len);
void mx_log_kvi(GString *l, const char *key, int64_t val);
void mx_log_end(GString *l);

/* A one-off line: event plus a free-text "msg" field. */
void mx_log_msg(int level, const char *event, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

#endif
