/*
 * fuzz_trace.c: libFuzzer target for reading decision records
 * (mx_trace_describe), what `mxgatectl explain` does with bytes from the
 * store.
 *
 * Input: the first byte picks a mode.
 *  - even: the rest is a stored record, as anyone who can write to
 *    memcached could shape it (the HMAC stops outsiders, not a bug in a
 *    node). describe must accept it or say why, and what it prints must
 *    hold no control byte but newline, in text and in JSON;
 *  - odd: the rest, split at NUL bytes, fills a record through the
 *    builder (fields, recipients, rules, reads); its encoding must read
 *    back, and the text must name its id.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

#include "fuzz_check.h"

static void check_printable(const GString *out, int json)
{
    for (size_t i = 0; i < out->len; i++) {
        unsigned char c = (unsigned char)out->str[i];
        CHECK(c >= 0x20 || c == '\n');
        CHECK(c != 0x7f);
    }
    if (json)
        CHECK(out->len > 1 && out->str[0] == '{' && out->str[out->len - 1] == '\n');
}

static void describe_both(const void *p, size_t n, int must_parse)
{
    for (int json = 0; json < 2; json++) {
        GString *out = g_string_new(NULL);
        char *err = NULL;
        int rc = mx_trace_describe(out, p, n, json, 1700000000, &err);
        CHECK(rc == 0 || rc == -1);
        CHECK((rc == -1) == (err != NULL));
        CHECK(!must_parse || rc == 0);
        if (rc == 0)
            check_printable(out, json);
        g_free(err);
        g_string_free(out, TRUE);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if ((data[0] & 1) == 0) {
        describe_both(data + 1, size - 1, 0);
        return 0;
    }
    /* NUL-separated strings from the input */
    char *copy = g_strndup((const char *)data + 1, size - 1);
    GPtrArray *parts = g_ptr_array_new();
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    while (p < end) {
        size_t n = strnlen(p, (size_t)(end - p));
        g_ptr_array_add(parts, g_strndup(p, n));
        p += n + 1;
    }
    while (parts->len < 8)
        g_ptr_array_add(parts, g_strdup(""));
    char **s = (char **)parts->pdata;
    mx_trace *t = mx_trace_new(s[0], s[1], s[2], 1700000000);
    for (int f = MX_TF_CLIENT; f <= MX_TF_WHY; f++)
        mx_trace_set(t, (mx_trace_field)f, s[(3 + f) % parts->len]);
    for (guint i = 3; i + 1 < parts->len && i < 300; i += 2) {
        mx_trace_rcpt(t, s[i], s[i + 1], s[i], s[i + 1]);
        mx_trace_rule(t, s[i], s[i + 1], s[i], s[i + 1], s[i], i, i + 1, i * 7, s[i + 1]);
        mx_trace_rep(t, s[i], s[i + 1], (int)(i & 1), -(int32_t)i, (int)(i & 2), (int)(i & 4),
                     s[i], i);
    }
    GBytes *b = mx_trace_encode(t, size);
    gsize n = 0;
    const void *rec = g_bytes_get_data(b, &n);
    describe_both(rec, n, 1);
    /* the id is there, made printable */
    GString *out = g_string_new(NULL);
    char *err = NULL;
    CHECK(mx_trace_describe(out, rec, n, 0, 1700000000, &err) == 0);
    g_autofree char *shown = g_strdup(s[0]);
    for (char *c = shown; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    CHECK(g_str_has_prefix(out->str, "trace: "));
    CHECK(strncmp(out->str + 7, shown, strlen(shown)) == 0);
    g_string_free(out, TRUE);
    g_bytes_unref(b);
    mx_trace_unref(t);
    for (guint i = 0; i < parts->len; i++)
        g_free(parts->pdata[i]);
    g_ptr_array_free(parts, TRUE);
    g_free(copy);
    return 0;
}
