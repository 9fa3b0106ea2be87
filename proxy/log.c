/*
 * log.c: see log.h. Lines go to stderr (journald or a pipe under systemd).
 */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

static int log_level = MX_LOG_INFO;
static const char *const level_names[] = {"error", "warning", "info", "debug"};

void mx_log_set_level(int level) { g_atomic_int_set(&log_level, level); }

int mx_log_enabled(int level) { return level <= g_atomic_int_get(&log_level); }

GString *mx_log_begin(int level, const char *event)
{
    GString *l = g_string_sized_new(256);
    gint64 now = g_get_real_time();
    time_t secs = (time_t)(now / G_USEC_PER_SEC);
    struct tm tm;
    gmtime_r(&secs, &tm);
    g_string_append_printf(l, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s event=%s",
                           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                           tm.tm_sec, (int)(now % G_USEC_PER_SEC / 1000),
                           level_names[level < 0 ? 0 : level > 3 ? 3 : level], event);
    return l;
}

void mx_log_kvn(GString *l, const char *key, const char *val, size_t len)
{
    int quote = len == 0;
    for (size_t i = 0; i < len && !quote; i++) {
        unsigned char c = (unsigned char)val[i];
        if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c == 0x7f)
            quote = 1;
    }
    g_string_append_printf(l, " %s=", key);
    if (!quote) {
        g_string_append_len(l, val, (gssize)len);
        return;
    }
    g_string_append_c(l, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)val[i];
        if (c == '"' || c == '\\')
            g_string_append_printf(l, "\\%c", c);
        else if (c < ' ' || c == 0x7f)
            g_string_append_printf(l, "\\x%02x", c);
        else
            g_string_append_c(l, (char)c);
    }
    g_string_append_c(l, '"');
}

void mx_log_kv(GString *l, const char *key, const char *val)
{
    if (!val)
        val = "";
    mx_log_kvn(l, key, val, strlen(val));
}

void mx_log_kvi(GString *l, const char *key, int64_t val)
{
    g_string_append_printf(l, " %s=%lld", key, (long long)val);
}

void mx_log_end(GString *l)
{
    g_string_append_c(l, '\n');
    /* One write per line; a short write to a pipe only happens past
     * PIPE_BUF, and then the rest follows. */
    const char *p = l->str;
    size_t n = l->len;
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w <= 0)
            break;
        p += w;
        n -= (size_t)w;
    }
    g_string_free(l, TRUE);
}

void mx_log_msg(int level, const char *event, const char *fmt, ...)
{
    if (!mx_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    GString *l = mx_log_begin(level, event);
    mx_log_kv(l, "msg", msg);
    mx_log_end(l);
}
