/*
 * feed.c: reading feeds (see feed.h): the text line and protobuf entry
 * parsers, updates built from arguments, and the streaming reader.
 * Applying updates and describing records: feed_apply.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "feed.h"
#include "feed_int.h"
#include "mxgate.pb-c.h"

#define FEED_VERSION 1
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

char *mx_feed_control_byte(const char *p, size_t n, int tab_ok)
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
    g_autofree char *c = mx_feed_control_byte(r, n, 0);
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
    char *c = mx_feed_control_byte(line, len, 1);
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
    char *c = mx_feed_control_byte(v, vn, 0);
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
    char *c = mx_feed_control_byte(value, vn, 0);
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
