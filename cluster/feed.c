/*
 * feed.c: see feed.h.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "feed.h"
#include "mxgate.pb-c.h"

#define REC_VERSION 1
#define FEED_VERSION 1
/* memcached reads an expiry above 30 days as a unix time: records that
 * live longer get no store expiry and rely on their own expires_unix. */
#define STORE_TTL_MAX (30 * 24 * 3600)
/* how much of a bad field an error message repeats */
#define ECHO_MAX 64

static const char *const op_names[] = {"set", "add", "del", "block", "allow", NULL};

const char *mx_feed_op_name(mx_feed_op op) { return op_names[op]; }

int mx_feed_op_parse(const char *s)
{
    for (int i = 0; op_names[i]; i++)
        if (strcmp(op_names[i], s) == 0)
            return i;
    return -1;
}

void mx_feed_update_clear(mx_feed_update *u)
{
    g_free(u->value);
    g_free(u->reason);
    memset(u, 0, sizeof(*u));
}

/* ---- checks shared by both formats ---- */

/* p[0..n) quoted for an error message: at most ECHO_MAX bytes, bytes
 * that are not UTF-8 (or are control bytes) as \xNN. */
static char *quote(const char *p, size_t n)
{
    GString *s = g_string_new("\"");
    size_t i = 0;
    while (i < n) {
        if (i >= ECHO_MAX) {
            g_string_append(s, "...");
            break;
        }
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f) {
            g_string_append_c(s, (char)c);
            i++;
            continue;
        }
        if (c >= 0x80) {
            gunichar u = g_utf8_get_char_validated(p + i, (gssize)(n - i));
            if (u != (gunichar)-1 && u != (gunichar)-2) {
                size_t l = (size_t)(g_utf8_next_char(p + i) - (p + i));
                g_string_append_len(s, p + i, (gssize)l);
                i += l;
                continue;
            }
        }
        g_string_append_printf(s, "\\x%02x", c);
        i++;
    }
    g_string_append_c(s, '"');
    return g_string_free(s, FALSE);
}

/* The first NUL or control byte (tab allowed when tab_ok) in p[0..n),
 * described; NULL when there is none. */
static char *control_byte(const char *p, size_t n, int tab_ok)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == 0)
            return g_strdup_printf("NUL byte at column %zu", i + 1);
        if ((c < 0x20 && !(tab_ok && c == '\t')) || c == 0x7f)
            return g_strdup_printf("control byte 0x%02x at column %zu", c, i + 1);
    }
    return NULL;
}

/* Normalise value (n bytes, no control bytes) as kind. */
static int take_value(mx_feed_update *out, mx_rep_kind kind, const char *v, size_t n, char **err)
{
    if (n == 0) {
        *err = g_strdup("value: empty");
        return -1;
    }
    if (n > MX_FEED_VALUE_MAX) {
        *err = g_strdup_printf("value: %zu bytes, at most %d", n, MX_FEED_VALUE_MAX);
        return -1;
    }
    if (!g_utf8_validate(v, (gssize)n, NULL)) {
        g_autofree char *q = quote(v, n);
        *err = g_strdup_printf("value: %s is not valid UTF-8", q);
        return -1;
    }
    g_autofree char *s = g_strndup(v, n);
    char *e = NULL;
    out->value = mx_rep_normalize(kind, s, &e);
    if (!out->value) {
        *err = g_strdup_printf("value: %s", e);
        g_free(e);
        return -1;
    }
    out->kind = kind;
    return 0;
}

static int take_reason(mx_feed_update *out, const char *r, size_t n, char **err)
{
    if (n == 0)
        return 0;
    if (n > MX_FEED_REASON_MAX) {
        *err = g_strdup_printf("reason: %zu bytes, at most %d", n, MX_FEED_REASON_MAX);
        return -1;
    }
    g_autofree char *c = control_byte(r, n, 0);
    if (c) {
        *err = g_strdup_printf("reason: %s", c);
        return -1;
    }
    if (!g_utf8_validate(r, (gssize)n, NULL)) {
        *err = g_strdup("reason: not valid UTF-8");
        return -1;
    }
    out->reason = g_strndup(r, n);
    return 0;
}

static int check_score(int64_t v, char **err)
{
    if (v < -MX_FEED_SCORE_MAX || v > MX_FEED_SCORE_MAX) {
        *err = g_strdup_printf("score: %" PRId64 " is out of range (%d to %d)", v,
                               -MX_FEED_SCORE_MAX, MX_FEED_SCORE_MAX);
        return -1;
    }
    return 0;
}

static int check_ttl(uint64_t v, char **err)
{
    if (v > MX_FEED_TTL_MAX) {
        *err = g_strdup_printf("ttl: %" PRIu64 " s is more than ten years (%u s)", v,
                               MX_FEED_TTL_MAX);
        return -1;
    }
    return 0;
}

/* A signed decimal integer, all of p[0..n). */
static int parse_score(const char *p, size_t n, int32_t *out, char **err)
{
    size_t i = 0;
    if (n > 0 && (p[0] == '-' || p[0] == '+'))
        i = 1;
    int ok = i < n;
    for (size_t j = i; j < n; j++)
        ok = ok && p[j] >= '0' && p[j] <= '9';
    if (!ok) {
        g_autofree char *q = quote(p, n);
        *err = g_strdup_printf("score: %s is not an integer (expected e.g. -50 or 20)", q);
        return -1;
    }
    if (n - i > 10) {
        g_autofree char *q = quote(p, n);
        *err = g_strdup_printf("score: %s is out of range (%d to %d)", q, -MX_FEED_SCORE_MAX,
                               MX_FEED_SCORE_MAX);
        return -1;
    }
    char buf[16];
    memcpy(buf, p, n);
    buf[n] = 0;
    int64_t v = strtoll(buf, NULL, 10);
    if (check_score(v, err) < 0)
        return -1;
    *out = (int32_t)v;
    return 0;
}

/* Unsigned decimal seconds, all of p[0..n). */
static int parse_ttl(const char *p, size_t n, uint32_t *out, char **err)
{
    int ok = n > 0;
    for (size_t j = 0; j < n; j++)
        ok = ok && p[j] >= '0' && p[j] <= '9';
    if (!ok) {
        g_autofree char *q = quote(p, n);
        *err = g_strdup_printf("ttl: %s is not a number of seconds", q);
        return -1;
    }
    if (n > 10) {
        g_autofree char *q = quote(p, n);
        *err = g_strdup_printf("ttl: %s s is more than ten years (%u s)", q, MX_FEED_TTL_MAX);
        return -1;
    }
    char buf[16];
    memcpy(buf, p, n);
    buf[n] = 0;
    uint64_t v = strtoull(buf, NULL, 10);
    if (check_ttl(v, err) < 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* ---- text ---- */

typedef struct field {
    const char *p;
    size_t n;
    size_t col; /* 1-based */
} field;

int mx_feed_parse_line(const char *line, size_t len, mx_feed_update *out, char **err)
{
    memset(out, 0, sizeof(*out));
    *err = NULL;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len > MX_FEED_LINE_MAX) {
        *err = g_strdup_printf("line longer than %d bytes", MX_FEED_LINE_MAX);
        return -1;
    }
    char *c = control_byte(line, len, 1);
    if (c) {
        *err = c;
        return -1;
    }
    field f[6];
    int nf = 0;
    size_t i = 0;
    while (nf < 6) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i == len)
            break;
        if (nf == 0 && line[i] == '#')
            return 0;
        f[nf].p = line + i;
        f[nf].col = i + 1;
        while (i < len && line[i] != ' ' && line[i] != '\t')
            i++;
        f[nf].n = (size_t)(line + i - f[nf].p);
        nf++;
    }
    if (nf == 0)
        return 0;

    char kind[8];
    int k = -1;
    if (f[0].n < sizeof(kind)) {
        memcpy(kind, f[0].p, f[0].n);
        kind[f[0].n] = 0;
        k = mx_rep_kind_parse(kind);
    }
    if (k < 0) {
        g_autofree char *q = quote(f[0].p, f[0].n);
        *err = g_strdup_printf("kind: %s is not one of ip, net, domain, sender "
                               "(expected KIND VALUE OP [SCORE] [TTL])", q);
        return -1;
    }
    if (nf < 2) {
        *err = g_strdup("value: missing (expected KIND VALUE OP [SCORE] [TTL])");
        return -1;
    }
    if (nf < 3) {
        *err = g_strdup("op: missing after the value (expected set, add, del, block or allow)");
        goto fail;
    }
    char opname[8];
    int op = -1;
    if (f[2].n < sizeof(opname)) {
        memcpy(opname, f[2].p, f[2].n);
        opname[f[2].n] = 0;
        op = mx_feed_op_parse(opname);
    }
    if (op < 0) {
        g_autofree char *q = quote(f[2].p, f[2].n);
        *err = g_strdup_printf("op: %s is not one of set, add, del, block, allow", q);
        goto fail;
    }
    out->op = (mx_feed_op)op;
    /* the value after the op, so a bad op is reported as such even when
     * the value is bad too: an unknown op usually means a shifted line */
    if (take_value(out, (mx_rep_kind)k, f[1].p, f[1].n, err) < 0)
        goto fail;
    int ttl_at = 3;
    if (op == MX_FEED_SET || op == MX_FEED_ADD) {
        if (nf < 4) {
            *err = g_strdup_printf("score: missing (%s needs a SCORE from %d to %d)", opname,
                                   -MX_FEED_SCORE_MAX, MX_FEED_SCORE_MAX);
            goto fail;
        }
        if (parse_score(f[3].p, f[3].n, &out->score, err) < 0)
            goto fail;
        ttl_at = 4;
    }
    if (nf > ttl_at && parse_ttl(f[ttl_at].p, f[ttl_at].n, &out->ttl, err) < 0)
        goto fail;
    if (nf > ttl_at + 1) {
        g_autofree char *q = quote(f[ttl_at + 1].p, f[ttl_at + 1].n);
        *err = g_strdup_printf("unexpected %s at column %zu (expected KIND VALUE %s%s [TTL])", q,
                               f[ttl_at + 1].col, opname, ttl_at == 4 ? " SCORE" : "");
        goto fail;
    }
    if (op == MX_FEED_DEL)
        out->ttl = 0;
    return 1;
fail:
    mx_feed_update_clear(out);
    return -1;
}

/* ---- protobuf ---- */

static int read_varint(const uint8_t *p, size_t n, uint64_t *v, size_t *used)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n && i < 10; i++) {
        if (i == 9 && p[i] > 1)
            return -1; /* more than 64 bits */
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            *used = i + 1;
            return 1;
        }
    }
    return n >= 10 ? -1 : 0; /* 0: cut off */
}

/* protobuf-c ends strings at their first NUL, silently: look at the wire
 * bytes of value (3) and reason (7) before they are decoded. */
static const char *string_with_nul(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint64_t tag, len;
        size_t u;
        if (read_varint(p + i, n - i, &tag, &u) != 1)
            return NULL; /* the decoder reports it */
        i += u;
        switch (tag & 7) {
        case 0:
            if (read_varint(p + i, n - i, &len, &u) != 1)
                return NULL;
            i += u;
            break;
        case 1:
            i += 8;
            break;
        case 5:
            i += 4;
            break;
        case 2:
            if (read_varint(p + i, n - i, &len, &u) != 1 || len > n - i - u)
                return NULL;
            i += u;
            if (memchr(p + i, 0, (size_t)len)) {
                if (tag >> 3 == 3)
                    return "value";
                if (tag >> 3 == 7)
                    return "reason";
            }
            i += (size_t)len;
            break;
        default:
            return NULL;
        }
    }
    return NULL;
}

int mx_feed_parse_protobuf(const uint8_t *msg, size_t len, mx_feed_update *out, char **err)
{
    memset(out, 0, sizeof(*out));
    *err = NULL;
    if (len > MX_FEED_LINE_MAX) {
        *err = g_strdup_printf("%zu bytes, more than %d", len, MX_FEED_LINE_MAX);
        return -1;
    }
    Mxgate__FeedUpdate *m = mxgate__feed_update__unpack(NULL, len, msg);
    if (!m) {
        *err = g_strdup_printf("undecodable: not a FeedUpdate message, or one without "
                               "version, kind, value or op (%zu bytes)", len);
        return -1;
    }
    int rc = -1;
    const char *nul = string_with_nul(msg, len);
    if (m->version != FEED_VERSION) {
        *err = g_strdup_printf("version %u is not supported (expected %d)", m->version,
                               FEED_VERSION);
        goto out;
    }
    if (m->kind < 1 || m->kind > 4) {
        *err = g_strdup_printf("kind %d is not IP (1), NET (2), DOMAIN (3) or SENDER (4)",
                               (int)m->kind);
        goto out;
    }
    if (m->op < 1 || m->op > 5) {
        *err = g_strdup_printf("op %d is not SET (1), ADD (2), DEL (3), BLOCK (4) or ALLOW (5)",
                               (int)m->op);
        goto out;
    }
    if (nul) {
        *err = g_strdup_printf("%s: holds a NUL byte", nul);
        goto out;
    }
    out->op = (mx_feed_op)(m->op - 1);
    const char *v = m->value ? m->value : "";
    size_t vn = strlen(v);
    char *c = control_byte(v, vn, 0);
    if (c) {
        *err = g_strdup_printf("value: %s", c);
        g_free(c);
        goto out;
    }
    if (take_value(out, (mx_rep_kind)(m->kind - 1), v, vn, err) < 0)
        goto out;
    if (out->op == MX_FEED_SET || out->op == MX_FEED_ADD) {
        if (!m->has_score) {
            *err = g_strdup_printf("score: missing (%s needs a score from %d to %d)",
                                   out->op == MX_FEED_SET ? "SET" : "ADD", -MX_FEED_SCORE_MAX,
                                   MX_FEED_SCORE_MAX);
            goto out;
        }
        if (check_score(m->score, err) < 0)
            goto out;
        out->score = m->score;
    } else if (m->has_score) {
        *err = g_strdup_printf("score: given with %s; only SET and ADD take one",
                               out->op == MX_FEED_DEL ? "DEL" : out->op == MX_FEED_BLOCK
                                                                    ? "BLOCK" : "ALLOW");
        goto out;
    }
    if (m->has_ttl) {
        if (check_ttl(m->ttl, err) < 0)
            goto out;
        out->ttl = out->op == MX_FEED_DEL ? 0 : m->ttl;
    }
    if (m->reason && take_reason(out, m->reason, strlen(m->reason), err) < 0)
        goto out;
    rc = 1;
out:
    mxgate__feed_update__free_unpacked(m, NULL);
    if (rc < 0)
        mx_feed_update_clear(out);
    return rc;
}

void mx_feed_encode_protobuf(const mx_feed_update *u, GByteArray *out)
{
    Mxgate__FeedUpdate m = MXGATE__FEED_UPDATE__INIT;
    m.version = FEED_VERSION;
    m.kind = (Mxgate__FeedUpdate__Kind)(u->kind + 1);
    m.value = u->value;
    m.op = (Mxgate__FeedUpdate__Op)(u->op + 1);
    m.has_score = u->op == MX_FEED_SET || u->op == MX_FEED_ADD;
    m.score = u->score;
    m.has_ttl = u->ttl != 0;
    m.ttl = u->ttl;
    m.reason = u->reason;
    size_t n = mxgate__feed_update__get_packed_size(&m);
    uint8_t pre[10];
    size_t k = 0;
    for (uint64_t x = n; k == 0 || x; x >>= 7)
        pre[k++] = (uint8_t)((x & 0x7f) | (x >> 7 ? 0x80 : 0));
    g_byte_array_append(out, pre, (guint)k);
    guint at = out->len;
    g_byte_array_set_size(out, at + (guint)n);
    mxgate__feed_update__pack(&m, out->data + at);
}

/* ---- arguments ---- */

int mx_feed_update_build(mx_feed_update *out, const char *op, const char *kind,
                         const char *value, const char *score, const char *ttl,
                         const char *flag, const char *reason, char **err)
{
    memset(out, 0, sizeof(*out));
    *err = NULL;
    int o = op ? mx_feed_op_parse(op) : -1;
    if (o < 0) {
        g_autofree char *q = op ? quote(op, strlen(op)) : g_strdup("nothing");
        *err = g_strdup_printf("op: %s is not one of set, add, del, block, allow", q);
        return -1;
    }
    out->op = (mx_feed_op)o;
    int k = kind ? mx_rep_kind_parse(kind) : -1;
    if (k < 0) {
        g_autofree char *q = kind ? quote(kind, strlen(kind)) : g_strdup("nothing");
        *err = g_strdup_printf("kind: %s is not one of ip, net, domain, sender", q);
        return -1;
    }
    if (!value) {
        *err = g_strdup("value: missing");
        return -1;
    }
    size_t vn = strlen(value);
    char *c = control_byte(value, vn, 0);
    if (c) {
        *err = g_strdup_printf("value: %s", c);
        g_free(c);
        return -1;
    }
    if (take_value(out, (mx_rep_kind)k, value, vn, err) < 0)
        return -1;
    int scored = o == MX_FEED_SET || o == MX_FEED_ADD;
    if (scored && !score) {
        *err = g_strdup_printf("score: missing (%s needs a SCORE from %d to %d)", op,
                               -MX_FEED_SCORE_MAX, MX_FEED_SCORE_MAX);
        goto fail;
    }
    if (!scored && score) {
        *err = g_strdup_printf("score: %s takes none (only set and add do)", op);
        goto fail;
    }
    if (score && parse_score(score, strlen(score), &out->score, err) < 0)
        goto fail;
    if (ttl && o == MX_FEED_DEL) {
        *err = g_strdup("ttl: del takes none");
        goto fail;
    }
    if (ttl && parse_ttl(ttl, strlen(ttl), &out->ttl, err) < 0)
        goto fail;
    if (flag && *flag) {
        if (!scored) {
            *err = g_strdup_printf("%s: only set and add take it (or use op %s)", flag, flag);
            goto fail;
        }
        if (strcmp(flag, "block") == 0) {
            out->flag = MX_FEED_FLAG_BLOCK;
        } else if (strcmp(flag, "allow") == 0) {
            out->flag = MX_FEED_FLAG_ALLOW;
        } else {
            g_autofree char *q = quote(flag, strlen(flag));
            *err = g_strdup_printf("flag: %s is neither block nor allow", q);
            goto fail;
        }
    }
    if (reason && o == MX_FEED_DEL) {
        *err = g_strdup("reason: del takes none");
        goto fail;
    }
    if (reason && take_reason(out, reason, strlen(reason), err) < 0)
        goto fail;
    return 0;
fail:
    mx_feed_update_clear(out);
    return -1;
}

/* ---- the streaming reader ---- */

struct mx_feed_reader {
    mx_feed_format format;
    GByteArray *buf;
    size_t off;          /* unread bytes: buf->data[off..len) */
    uint64_t next;       /* number of the next line or entry */
    uint64_t skip;       /* protobuf: bytes of an oversized entry still to drop */
    int skip_line;       /* text: drop up to the next LF */
    int finished;
    int stopped;         /* protobuf: the stream cannot be followed further */
};

mx_feed_reader *mx_feed_reader_new(mx_feed_format format, uint64_t first)
{
    mx_feed_reader *r = g_new0(mx_feed_reader, 1);
    r->format = format;
    r->buf = g_byte_array_new();
    r->next = first;
    return r;
}

void mx_feed_reader_free(mx_feed_reader *r)
{
    if (!r)
        return;
    g_byte_array_unref(r->buf);
    g_free(r);
}

void mx_feed_reader_push(mx_feed_reader *r, const void *data, size_t len)
{
    if (r->stopped)
        return; /* nothing after a malformed length can be read */
    if (r->off > 0 && (r->off >= r->buf->len || r->off >= 65536)) {
        g_byte_array_remove_range(r->buf, 0, (guint)r->off);
        r->off = 0;
    }
    while (len > 0) { /* GByteArray lengths are guint */
        guint n = len > G_MAXINT ? G_MAXINT : (guint)len;
        g_byte_array_append(r->buf, data, n);
        data = (const uint8_t *)data + n;
        len -= n;
    }
}

void mx_feed_reader_finish(mx_feed_reader *r) { r->finished = 1; }

const char *mx_feed_reader_unit(const mx_feed_reader *r)
{
    return r->format == MX_FEED_TEXT ? "line" : "entry";
}

static int next_text(mx_feed_reader *r, mx_feed_update *out, uint64_t *number, char **err)
{
    for (;;) {
        size_t n = r->buf->len - r->off;
        const char *d = n ? (const char *)r->buf->data + r->off : "";
        if (r->skip_line) {
            const char *lf = memchr(d, '\n', n);
            if (!lf) {
                r->off += n;
                return r->finished ? MX_FEED_END : MX_FEED_AGAIN;
            }
            r->off += (size_t)(lf - d) + 1;
            r->skip_line = 0;
            continue;
        }
        if (n == 0)
            return r->finished ? MX_FEED_END : MX_FEED_AGAIN;
        /* a line may be MX_FEED_LINE_MAX bytes, a CR and its LF */
        size_t window = n < MX_FEED_LINE_MAX + 2 ? n : MX_FEED_LINE_MAX + 2;
        const char *lf = memchr(d, '\n', window);
        size_t len;
        if (lf) {
            len = (size_t)(lf - d);
            r->off += len + 1;
        } else if (window == MX_FEED_LINE_MAX + 2) {
            *number = r->next++;
            *err = g_strdup_printf("line longer than %d bytes", MX_FEED_LINE_MAX);
            r->off += window;
            r->skip_line = 1;
            return MX_FEED_BAD;
        } else if (!r->finished) {
            return MX_FEED_AGAIN;
        } else {
            len = n; /* the last line, without its LF */
            r->off += n;
        }
        *number = r->next++;
        int rc = mx_feed_parse_line(d, len, out, err);
        if (rc == 0)
            continue;
        return rc > 0 ? MX_FEED_UPDATE : MX_FEED_BAD;
    }
}

static int next_protobuf(mx_feed_reader *r, mx_feed_update *out, uint64_t *number, char **err)
{
    if (r->stopped)
        return MX_FEED_END;
    size_t n = r->buf->len - r->off;
    const uint8_t *d = n ? r->buf->data + r->off : (const uint8_t *)"";
    if (r->skip) {
        size_t k = r->skip < n ? (size_t)r->skip : n;
        r->off += k;
        r->skip -= k;
        d += k;
        n -= k;
        if (r->skip)
            return r->finished ? MX_FEED_END : MX_FEED_AGAIN; /* reported when it began */
    }
    if (n == 0)
        return r->finished ? MX_FEED_END : MX_FEED_AGAIN;
    uint64_t len;
    size_t used;
    int v = read_varint(d, n, &len, &used);
    if (v == 0 && !r->finished)
        return MX_FEED_AGAIN;
    if (v <= 0) {
        *number = r->next++;
        *err = g_strdup(v == 0 ? "truncated: the stream ends inside the length prefix"
                               : "malformed length prefix (a varint of more than 64 bits); "
                                 "the rest of the stream cannot be read");
        r->off = r->buf->len;
        r->stopped = 1;
        return MX_FEED_BAD;
    }
    if (len > MX_FEED_LINE_MAX) {
        *number = r->next++;
        *err = g_strdup_printf("%" PRIu64 " bytes, more than %d; skipped", len,
                               MX_FEED_LINE_MAX);
        r->off += used;
        r->skip = len;
        return MX_FEED_BAD;
    }
    if (n - used < len) {
        if (!r->finished)
            return MX_FEED_AGAIN;
        *number = r->next++;
        *err = g_strdup_printf("truncated: %" PRIu64 " bytes announced, %zu present", len,
                               n - used);
        r->off = r->buf->len;
        r->stopped = 1;
        return MX_FEED_BAD;
    }
    *number = r->next++;
    r->off += used + (size_t)len;
    return mx_feed_parse_protobuf(d + used, (size_t)len, out, err) > 0 ? MX_FEED_UPDATE
                                                                       : MX_FEED_BAD;
}

int mx_feed_reader_next(mx_feed_reader *r, mx_feed_update *out, uint64_t *number, char **err)
{
    *err = NULL;
    memset(out, 0, sizeof(*out));
    return r->format == MX_FEED_TEXT ? next_text(r, out, number, err)
                                     : next_protobuf(r, out, number, err);
}

/* ---- applying ---- */

/* What u does to record r (found or not); the store TTL to write it with. */
static int apply_to(mx_rep *r, const mx_feed_update *u, int64_t now, const char *source)
{
    if (!r->found)
        memset(r, 0, sizeof(*r));
    mx_feed_flag flag = u->flag;
    switch (u->op) {
    case MX_FEED_SET:
        r->score = u->score;
        break;
    case MX_FEED_ADD: {
        int64_t v = (int64_t)r->score + u->score;
        r->score = (int32_t)(v > MX_FEED_SCORE_MAX    ? MX_FEED_SCORE_MAX
                             : v < -MX_FEED_SCORE_MAX ? -MX_FEED_SCORE_MAX
                                                      : v);
        break;
    }
    case MX_FEED_BLOCK: flag = MX_FEED_FLAG_BLOCK; break;
    case MX_FEED_ALLOW: flag = MX_FEED_FLAG_ALLOW; break;
    case MX_FEED_DEL: break;
    }
    if (flag == MX_FEED_FLAG_BLOCK) {
        r->block = 1;
        r->allow = 0;
    } else if (flag == MX_FEED_FLAG_ALLOW) {
        r->allow = 1;
        r->block = 0;
    }
    if (u->reason && *u->reason)
        g_strlcpy(r->reason, u->reason, sizeof(r->reason));
    g_strlcpy(r->source, source ? source : "", sizeof(r->source));
    r->updated = now > 0 ? (uint64_t)now : 0;
    r->expires = u->ttl ? (uint64_t)now + u->ttl : 0;
    r->found = 1;
    return u->ttl && u->ttl <= STORE_TTL_MAX ? (int)u->ttl : 0;
}

mx_store_rc mx_feed_apply(mx_store *s, const mx_feed_update *u, int64_t now, const char *source)
{
    if (u->op == MX_FEED_DEL)
        return mx_rep_delete(s, u->kind, u->value);
    mx_rep r;
    mx_store_rc rc = mx_rep_read_record(s, u->kind, u->value, now, &r);
    if (rc == MX_STORE_ERROR)
        return rc;
    int ttl = apply_to(&r, u, now, source);
    return mx_rep_write(s, u->kind, u->value, &r, ttl);
}

typedef struct slot {
    char *key;
    mx_rep rep;
    mx_store_rc read_rc;
    int ttl;
    int dirty, deleted;
    mx_store_rc write_rc;
} slot;

void mx_feed_apply_many(mx_store *s, const mx_feed_update *const *u, size_t n, int64_t now,
                        const char *source, mx_store_rc *rcs)
{
    GHashTable *by_key = g_hash_table_new(g_str_hash, g_str_equal);
    slot *slots = g_new0(slot, n ? n : 1);
    size_t *of = g_new(size_t, n ? n : 1); /* update -> slot */
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        char *k = mx_rep_key(u[i]->kind, u[i]->value);
        gpointer have = g_hash_table_lookup(by_key, k);
        if (have) {
            of[i] = GPOINTER_TO_SIZE(have) - 1;
            g_free(k);
        } else {
            slots[ns].key = k;
            g_hash_table_insert(by_key, k, GSIZE_TO_POINTER(ns + 1));
            of[i] = ns++;
        }
    }
    /* one multi-get of every record touched */
    const char **keys = g_new(const char *, ns ? ns : 1);
    GBytes **vals = g_new0(GBytes *, ns ? ns : 1);
    mx_store_rc *got = g_new(mx_store_rc, ns ? ns : 1);
    for (size_t j = 0; j < ns; j++)
        keys[j] = slots[j].key;
    mx_store_get_many(s, keys, ns, vals, got);
    for (size_t j = 0; j < ns; j++) {
        slots[j].read_rc = got[j];
        if (got[j] == MX_STORE_OK) {
            gsize len = 0;
            const void *d = g_bytes_get_data(vals[j], &len);
            mx_rep_decode(d, len, now, &slots[j].rep);
        }
        if (vals[j])
            g_bytes_unref(vals[j]);
    }
    /* the updates in feed order, in memory */
    for (size_t i = 0; i < n; i++) {
        slot *sl = &slots[of[i]];
        if (sl->read_rc == MX_STORE_ERROR)
            continue;
        if (u[i]->op == MX_FEED_DEL) {
            memset(&sl->rep, 0, sizeof(sl->rep));
            sl->deleted = 1;
            sl->dirty = 0;
            continue;
        }
        sl->ttl = apply_to(&sl->rep, u[i], now, source);
        sl->dirty = 1;
        sl->deleted = 0;
    }
    /* one write of each changed record (mx_store_set_many); deletes one by one */
    GBytes **out = g_new0(GBytes *, ns ? ns : 1);
    const char **wkeys = g_new(const char *, ns ? ns : 1);
    int *ttls = g_new(int, ns ? ns : 1);
    size_t *wslot = g_new(size_t, ns ? ns : 1);
    size_t nw = 0;
    for (size_t j = 0; j < ns; j++) {
        slot *sl = &slots[j];
        sl->write_rc = sl->read_rc == MX_STORE_ERROR ? MX_STORE_ERROR : MX_STORE_OK;
        if (sl->read_rc == MX_STORE_ERROR)
            continue;
        if (sl->dirty) {
            out[nw] = mx_rep_encode(&sl->rep);
            wkeys[nw] = sl->key;
            ttls[nw] = sl->ttl;
            wslot[nw++] = j;
        } else if (sl->deleted) {
            mx_store_rc rc = mx_store_del(s, sl->key);
            sl->write_rc = rc == MX_STORE_NOT_FOUND ? MX_STORE_OK : rc;
        }
    }
    mx_store_rc *wrc = g_new(mx_store_rc, nw ? nw : 1);
    mx_store_set_many(s, wkeys, out, nw, ttls, wrc);
    for (size_t w = 0; w < nw; w++) {
        slots[wslot[w]].write_rc = wrc[w];
        g_bytes_unref(out[w]);
    }
    for (size_t i = 0; i < n; i++)
        rcs[i] = slots[of[i]].write_rc;
    for (size_t j = 0; j < ns; j++)
        g_free(slots[j].key);
    g_hash_table_destroy(by_key);
    g_free(slots);
    g_free(of);
    g_free(keys);
    g_free(vals);
    g_free(got);
    g_free(out);
    g_free(wkeys);
    g_free(ttls);
    g_free(wslot);
    g_free(wrc);
}

/* ---- what operators read ---- */

static void append_time(GString *out, const char *name, uint64_t t, int64_t now)
{
    if (!t) {
        g_string_append_printf(out, "%s: never\n", name);
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    char iso[32] = "?";
    if (gmtime_r(&tt, &tm))
        strftime(iso, sizeof(iso), "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t d = (int64_t)t - now;
    if (d > 0)
        g_string_append_printf(out, "%s: %s (in %" PRId64 " s)\n", name, iso, d);
    else
        g_string_append_printf(out, "%s: %s (%" PRId64 " s ago)\n", name, iso, -d);
}

static char *one_line(const char *s)
{
    char *c = g_strdup(s);
    for (char *p = c; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return c;
}

void mx_feed_describe_rep(GString *out, mx_rep_kind kind, const char *value, const mx_rep *r,
                          int64_t now)
{
    g_string_append_printf(out, "record: rep:%s:%s\n", mx_rep_kind_name(kind), value);
    g_string_append_printf(out, "found: %s\n", r->found ? "yes" : "no");
    g_string_append_printf(out, "score: %d\n", (int)r->score);
    g_string_append_printf(out, "automatic: %d\n", (int)r->auto_points);
    g_string_append_printf(out, "total: %d\n", (int)mx_rep_total(r));
    g_string_append_printf(out, "block: %s\n", r->block ? "yes" : "no");
    g_string_append_printf(out, "allow: %s\n", r->allow ? "yes" : "no");
    if (r->found) {
        append_time(out, "updated", r->updated, now);
        append_time(out, "expires", r->expires, now);
        /* written by any tool that holds the key: one line each, whatever they hold */
        g_autofree char *src = one_line(r->source);
        g_autofree char *why = one_line(r->reason);
        g_string_append_printf(out, "source: %s\n", src);
        g_string_append_printf(out, "reason: %s\n", why);
    }
}

static const char *const algo_names[] = {"fixed", "sliding"};

int mx_feed_describe_limits(GString *out, mx_store *s, const mx_rl_rule *rules, int nrules,
                            const char *key, int64_t now)
{
    size_t kn = strlen(key);
    g_autofree char *bad = control_byte(key, kn, 0);
    if (kn == 0 || kn > MX_FEED_VALUE_MAX || bad || !g_utf8_validate(key, -1, NULL)) {
        g_string_append_printf(out, "key: %s\n",
                               bad ? bad : kn == 0 ? "empty" : kn > MX_FEED_VALUE_MAX
                                                                    ? "too long"
                                                                    : "not valid UTF-8");
        return -1;
    }
    if (nrules == 0) {
        g_string_append(out, "no rate limits are configured ([ratelimit:NAME] sections)\n");
        return 0;
    }
    unsigned char a[16];
    int is_ip = inet_pton(AF_INET, key, a) == 1 || inet_pton(AF_INET6, key, a) == 1;
    const char *at = strrchr(key, '@');
    int is_addr = !is_ip && at && at != key && at[1];
    char *nerr = NULL;
    g_autofree char *ip = is_ip ? mx_rep_normalize(MX_REP_IP, key, &nerr) : NULL;
    g_free(nerr);
    /* a bare domain is counted as the domain of an address in it */
    g_autofree char *as_addr = !is_ip && !is_addr ? g_strconcat("@", key, NULL) : NULL;
    const char *addr = is_addr ? key : as_addr;
    int shown = 0;
    for (int i = 0; i < nrules; i++) {
        const mx_rl_rule *r = &rules[i];
        char *v = NULL;
        switch (r->key) {
        case MX_RL_CLIENT_IP:
        case MX_RL_CLIENT_NET:
            if (ip)
                v = mx_rl_value(r->key, ip, NULL, NULL, NULL);
            break;
        case MX_RL_HELO: v = mx_rl_value(r->key, NULL, key, NULL, NULL); break;
        case MX_RL_SENDER:
        case MX_RL_RECIPIENT:
            if (is_addr)
                v = mx_rl_value(r->key, NULL, NULL, key, key);
            break;
        case MX_RL_SENDER_DOMAIN:
        case MX_RL_RECIPIENT_DOMAIN:
            if (!is_ip)
                v = mx_rl_value(r->key, NULL, NULL, addr, addr);
            break;
        }
        if (!v)
            continue;
        mx_rl_result res;
        mx_rl_peek(s, r, v, now, &res);
        g_string_append_printf(out,
                               "rule %s: %s %s, counts %s, window %d s %s, counter %" PRIu64
                               ", estimate %.1f, limit %" PRIu64 ": ",
                               r->name, mx_rl_key_name(r->key), v, mx_rl_count_name(r->count),
                               r->window, algo_names[r->algorithm], res.after, res.estimate,
                               r->limit);
        if (res.verdict == MX_RL_STORE_DOWN)
            g_string_append(out, "store unavailable\n");
        else if (res.verdict == MX_RL_OVER)
            g_string_append_printf(out, "allowed again in %d s\n", res.retry_after);
        else
            g_string_append(out, "allowed now\n");
        shown++;
        g_free(v);
    }
    if (!shown)
        g_string_append_printf(out, "no configured rule counts %s as %s\n", key,
                               is_ip ? "an IP address" : is_addr ? "an address"
                                                                 : "a domain or HELO name");
    return shown;
}
