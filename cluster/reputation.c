/*
 * reputation.c: see reputation.h.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "mxgate.pb-c.h"
#include "reputation.h"

#define REC_VERSION 1
#define GENERATION_KEY "rep:generation"

static const char *const kind_names[] = {"ip", "net", "domain", "sender", NULL};

const char *mx_rep_kind_name(mx_rep_kind k) { return kind_names[k]; }

int mx_rep_kind_parse(const char *s)
{
    for (int i = 0; kind_names[i]; i++)
        if (strcmp(kind_names[i], s) == 0)
            return i;
    return -1;
}

static char *net_text(int family, unsigned char *a, int prefix)
{
    int bytes = family == AF_INET ? 4 : 16;
    for (int i = 0; i < bytes; i++) {
        int keep = prefix - 8 * i;
        if (keep <= 0)
            a[i] = 0;
        else if (keep < 8)
            a[i] &= (unsigned char)(0xff << (8 - keep));
    }
    char t[INET6_ADDRSTRLEN];
    inet_ntop(family, a, t, sizeof(t));
    return g_strdup_printf("%s/%d", t, prefix);
}

char *mx_rep_normalize(mx_rep_kind kind, const char *value, char **err)
{
    unsigned char a[16];
    char t[INET6_ADDRSTRLEN];
    switch (kind) {
    case MX_REP_IP:
        if (inet_pton(AF_INET, value, a) == 1)
            return g_strdup(inet_ntop(AF_INET, a, t, sizeof(t)));
        if (inet_pton(AF_INET6, value, a) == 1)
            return g_strdup(inet_ntop(AF_INET6, a, t, sizeof(t)));
        *err = g_strdup_printf("\"%s\" is not an IP address", value);
        return NULL;
    case MX_REP_NET: {
        const char *slash = strchr(value, '/');
        char *end = NULL;
        long prefix = slash ? strtol(slash + 1, &end, 10) : -1;
        g_autofree char *host = slash ? g_strndup(value, (size_t)(slash - value)) : NULL;
        if (!slash || !end || *end || end == slash + 1) {
            *err = g_strdup_printf("\"%s\" is not a network (ADDR/PREFIX)", value);
            return NULL;
        }
        if (inet_pton(AF_INET, host, a) == 1) {
            if (prefix != 16 && prefix != 24) {
                *err = g_strdup_printf("\"%s\": IPv4 networks are /16 or /24 (what nodes look "
                                       "up); use ip for a single address", value);
                return NULL;
            }
            return net_text(AF_INET, a, (int)prefix);
        }
        if (inet_pton(AF_INET6, host, a) == 1) {
            if (prefix != 48 && prefix != 64) {
                *err = g_strdup_printf("\"%s\": IPv6 networks are /48 or /64 (what nodes look "
                                       "up)", value);
                return NULL;
            }
            return net_text(AF_INET6, a, (int)prefix);
        }
        *err = g_strdup_printf("\"%s\" is not a network (ADDR/PREFIX)", value);
        return NULL;
    }
    case MX_REP_DOMAIN:
        if (!*value || strchr(value, '@') || strchr(value, ' ') || !g_utf8_validate(value, -1, NULL)) {
            *err = g_strdup_printf("\"%s\" is not a domain", value);
            return NULL;
        }
        return g_utf8_strdown(value, -1);
    case MX_REP_SENDER: {
        const char *at = strrchr(value, '@');
        if (!at || at == value || !at[1] || strchr(value, ' ') ||
            !g_utf8_validate(value, -1, NULL)) {
            *err = g_strdup_printf("\"%s\" is not a sender address (local@domain)", value);
            return NULL;
        }
        return g_utf8_strdown(value, -1);
    }
    }
    *err = g_strdup("unknown kind");
    return NULL;
}

int mx_rep_networks(const char *ip, char *out[2])
{
    unsigned char a[16], b[16];
    if (inet_pton(AF_INET, ip, a) == 1) {
        memcpy(b, a, 4);
        out[0] = net_text(AF_INET, a, 24);
        out[1] = net_text(AF_INET, b, 16);
        return 2;
    }
    if (inet_pton(AF_INET6, ip, a) == 1) {
        memcpy(b, a, 16);
        out[0] = net_text(AF_INET6, a, 64);
        out[1] = net_text(AF_INET6, b, 48);
        return 2;
    }
    return 0;
}

/* ---- records ---- */

static char *rec_key(mx_rep_kind kind, const char *value)
{
    return g_strdup_printf("rep:%s:%s", kind_names[kind], value);
}

static char *points_key(const char *what, mx_rep_kind kind, const char *value, int64_t period)
{
    return g_strdup_printf("%s:%s:%lld:%s", what, kind_names[kind], (long long)period, value);
}

int mx_rep_decode(const void *data, size_t n, int64_t now, mx_rep *out)
{
    memset(out, 0, sizeof(*out));
    out->read_at = now;
    Mxgate__Reputation *r = mxgate__reputation__unpack(NULL, n, data);
    /* undecodable or of a version we do not know: absent, not trusted */
    if (r && r->version == REC_VERSION &&
        !(r->has_expires_unix && r->expires_unix && r->expires_unix <= (uint64_t)now)) {
        out->found = 1;
        out->score = r->has_score ? r->score : 0;
        out->block = r->has_block && r->block;
        out->allow = r->has_allow && r->allow;
        out->updated = r->has_updated_unix ? r->updated_unix : 0;
        out->expires = r->has_expires_unix ? r->expires_unix : 0;
        g_strlcpy(out->reason, r->reason ? r->reason : "", sizeof(out->reason));
        g_strlcpy(out->source, r->source ? r->source : "", sizeof(out->source));
    }
    if (r)
        mxgate__reputation__free_unpacked(r, NULL);
    return out->found;
}

GBytes *mx_rep_encode(const mx_rep *in)
{
    Mxgate__Reputation r = MXGATE__REPUTATION__INIT;
    r.version = REC_VERSION;
    r.has_score = 1;
    r.score = in->score;
    r.has_updated_unix = 1;
    r.updated_unix = in->updated;
    r.has_expires_unix = in->expires != 0;
    r.expires_unix = in->expires;
    r.reason = in->reason[0] ? (char *)in->reason : NULL;
    r.source = in->source[0] ? (char *)in->source : NULL;
    r.has_block = in->block;
    r.block = in->block;
    r.has_allow = in->allow;
    r.allow = in->allow;
    size_t n = mxgate__reputation__get_packed_size(&r);
    uint8_t *buf = g_malloc(n ? n : 1);
    mxgate__reputation__pack(&r, buf);
    return g_bytes_new_take(buf, n);
}

char *mx_rep_key(mx_rep_kind kind, const char *value) { return rec_key(kind, value); }

mx_store_rc mx_rep_read_record(mx_store *s, mx_rep_kind kind, const char *value, int64_t now,
                               mx_rep *out)
{
    memset(out, 0, sizeof(*out));
    out->read_at = now;
    char *k = rec_key(kind, value);
    GBytes *b = NULL;
    mx_store_rc rc = mx_store_get(s, k, &b);
    g_free(k);
    if (rc == MX_STORE_ERROR)
        return rc;
    if (rc == MX_STORE_OK) {
        gsize n = 0;
        const uint8_t *d = g_bytes_get_data(b, &n);
        mx_rep_decode(d, n, now, out);
        g_bytes_unref(b);
    }
    return MX_STORE_OK;
}

/* Points of the current decay period count in full, the previous one's
 * half (reputation.h). */
enum { PT_CREDIT_NOW, PT_CREDIT_PREV, PT_PENALTY_NOW, PT_PENALTY_PREV, PT_N };

void mx_rep_read_many(mx_store *s, const mx_rep_kind *kind, const char *const *value, size_t n,
                      int64_t now, int decay, mx_rep *out, mx_store_rc *rcs)
{
    if (n == 0)
        return;
    /* two multi-gets: the signed records, then the bare counters */
    char **rk = g_new(char *, n);
    char **pk = g_new(char *, PT_N * n);
    GBytes **recs = g_new0(GBytes *, n);
    uint64_t *pts = g_new0(uint64_t, PT_N * n);
    mx_store_rc *prc = g_new(mx_store_rc, PT_N * n);
    int64_t p = now / decay;
    for (size_t i = 0; i < n; i++) {
        rk[i] = rec_key(kind[i], value[i]);
        pk[PT_N * i + PT_CREDIT_NOW] = points_key("repc", kind[i], value[i], p);
        pk[PT_N * i + PT_CREDIT_PREV] = points_key("repc", kind[i], value[i], p - 1);
        pk[PT_N * i + PT_PENALTY_NOW] = points_key("repp", kind[i], value[i], p);
        pk[PT_N * i + PT_PENALTY_PREV] = points_key("repp", kind[i], value[i], p - 1);
    }
    mx_store_get_many(s, (const char *const *)rk, n, recs, rcs);
    mx_store_counters(s, (const char *const *)pk, PT_N * n, pts, prc);
    for (size_t i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof(out[i]));
        out[i].read_at = now;
        int failed = rcs[i] == MX_STORE_ERROR;
        for (int k = 0; k < PT_N; k++)
            failed |= prc[PT_N * i + k] == MX_STORE_ERROR;
        if (!failed && rcs[i] == MX_STORE_OK) {
            gsize len = 0;
            const uint8_t *d = g_bytes_get_data(recs[i], &len);
            mx_rep_decode(d, len, now, &out[i]);
        }
        if (recs[i])
            g_bytes_unref(recs[i]);
        if (failed) {
            memset(&out[i], 0, sizeof(out[i]));
            rcs[i] = MX_STORE_ERROR;
            continue;
        }
        const uint64_t *v = &pts[PT_N * i];
        double a = (double)v[PT_CREDIT_NOW] + (double)v[PT_CREDIT_PREV] / 2 -
                   (double)v[PT_PENALTY_NOW] - (double)v[PT_PENALTY_PREV] / 2;
        out[i].auto_points = a > 1e6 ? 1000000 : a < -1e6 ? -1000000 : (int32_t)a;
        rcs[i] = MX_STORE_OK;
    }
    for (size_t i = 0; i < n; i++)
        g_free(rk[i]);
    for (size_t i = 0; i < PT_N * n; i++)
        g_free(pk[i]);
    g_free(rk);
    g_free(pk);
    g_free(recs);
    g_free(pts);
    g_free(prc);
}

mx_store_rc mx_rep_read(mx_store *s, mx_rep_kind kind, const char *value, int64_t now, int decay,
                        mx_rep *out)
{
    mx_store_rc rc;
    mx_rep_read_many(s, &kind, &value, 1, now, decay, out, &rc);
    return rc;
}

mx_store_rc mx_rep_write(mx_store *s, mx_rep_kind kind, const char *value, const mx_rep *in,
                         int ttl)
{
    GBytes *b = mx_rep_encode(in);
    gsize n = 0;
    const void *d = g_bytes_get_data(b, &n);
    char *k = rec_key(kind, value);
    mx_store_rc rc = mx_store_set(s, k, d, n, ttl);
    g_free(k);
    g_bytes_unref(b);
    return rc;
}

mx_store_rc mx_rep_delete(mx_store *s, mx_rep_kind kind, const char *value)
{
    char *k = rec_key(kind, value);
    mx_store_rc rc = mx_store_del(s, k);
    g_free(k);
    return rc == MX_STORE_NOT_FOUND ? MX_STORE_OK : rc;
}

mx_store_rc mx_rep_bump_generation(mx_store *s)
{
    return mx_store_incr(s, GENERATION_KEY, 1, 0, NULL);
}

mx_store_rc mx_rep_points(mx_store *s, mx_rep_kind kind, const char *value, int points,
                          int64_t now, int decay)
{
    if (points == 0)
        return MX_STORE_OK;
    char *k = points_key(points > 0 ? "repc" : "repp", kind, value, now / decay);
    mx_store_rc rc =
        mx_store_incr(s, k, (uint64_t)(points > 0 ? points : -points), 2 * decay + 60, NULL);
    g_free(k);
    return rc;
}

/* ---- the node's cache ---- */

typedef struct centry {
    mx_rep rep;
    int64_t until;
} centry;

struct mx_rep_cache {
    GMutex lock;
    GHashTable *map;     /* "kind:value" -> centry */
    GHashTable *notes;   /* "kind\tvalue" -> note: what to write at the next flush */
    int ttl;
    uint64_t generation;
    int have_generation;
};

mx_rep_cache *mx_rep_cache_new(int ttl)
{
    mx_rep_cache *c = g_new0(mx_rep_cache, 1);
    g_mutex_init(&c->lock);
    c->map = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    c->notes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    c->ttl = ttl;
    return c;
}

void mx_rep_cache_free(mx_rep_cache *c)
{
    if (!c)
        return;
    g_hash_table_destroy(c->map);
    g_hash_table_destroy(c->notes);
    g_mutex_clear(&c->lock);
    g_free(c);
}

int mx_rep_cache_peek(mx_rep_cache *c, mx_rep_kind kind, const char *value, int64_t now,
                      mx_rep *out)
{
    if (c->ttl <= 0)
        return 0;
    char *k = rec_key(kind, value);
    g_mutex_lock(&c->lock);
    centry *e = g_hash_table_lookup(c->map, k);
    int hit = e && e->until > now;
    if (hit)
        *out = e->rep;
    g_mutex_unlock(&c->lock);
    g_free(k);
    return hit;
}

void mx_rep_lookup_many(mx_rep_cache *c, mx_store *s, const mx_rep_kind *kind,
                        const char *const *value, size_t n, int64_t now, int decay, mx_rep *out,
                        int *cached, mx_store_rc *rcs)
{
    /* what the cache does not have, in one read */
    size_t *miss = g_new(size_t, n ? n : 1);
    mx_rep_kind *mk = g_new(mx_rep_kind, n ? n : 1);
    const char **mv = g_new(const char *, n ? n : 1);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        cached[i] = mx_rep_cache_peek(c, kind[i], value[i], now, &out[i]);
        rcs[i] = MX_STORE_OK;
        if (!cached[i]) {
            miss[m] = i;
            mk[m] = kind[i];
            mv[m++] = value[i];
        }
    }
    mx_rep *got = g_new(mx_rep, m ? m : 1);
    mx_store_rc *grc = g_new(mx_store_rc, m ? m : 1);
    mx_rep_read_many(s, mk, mv, m, now, decay, got, grc);
    for (size_t j = 0; j < m; j++) {
        size_t i = miss[j];
        out[i] = got[j];
        rcs[i] = grc[j];
        if (grc[j] != MX_STORE_OK || c->ttl <= 0)
            continue;
        centry *e = g_new(centry, 1);
        e->rep = got[j];
        e->until = now + c->ttl;
        g_mutex_lock(&c->lock);
        if (g_hash_table_size(c->map) > 100000)
            g_hash_table_remove_all(c->map); /* bounded: start over rather than grow */
        g_hash_table_replace(c->map, rec_key(kind[i], value[i]), e);
        g_mutex_unlock(&c->lock);
    }
    g_free(miss);
    g_free(mk);
    g_free(mv);
    g_free(got);
    g_free(grc);
}

void mx_rep_cache_forget(mx_rep_cache *c, mx_rep_kind kind, const char *value)
{
    char *k = rec_key(kind, value);
    g_mutex_lock(&c->lock);
    g_hash_table_remove(c->map, k);
    g_mutex_unlock(&c->lock);
    g_free(k);
}

int mx_rep_cache_poll(mx_rep_cache *c, mx_store *s)
{
    uint64_t g = 0;
    if (mx_store_incr(s, GENERATION_KEY, 0, 0, &g) != MX_STORE_OK)
        return 0;
    g_mutex_lock(&c->lock);
    /* The first read empties the cache too: sessions may have filled it
     * before the node knew which generation it was serving. */
    int changed = !c->have_generation || g != c->generation;
    c->generation = g;
    c->have_generation = 1;
    if (changed)
        g_hash_table_remove_all(c->map);
    g_mutex_unlock(&c->lock);
    return changed;
}

typedef struct note {
    int credit;
    uint32_t delivered, penalised;
    int64_t first, last;
} note;

#define NOTES_MAX 100000 /* senders noted between two flushes; more are dropped */

void mx_rep_cache_note(mx_rep_cache *c, mx_rep_kind kind, const char *value, int credit,
                       int delivered, int penalised, int64_t now)
{
    char *k = g_strdup_printf("%d\t%s", (int)kind, value);
    g_mutex_lock(&c->lock);
    note *n = g_hash_table_lookup(c->notes, k);
    if (!n && g_hash_table_size(c->notes) < NOTES_MAX) {
        n = g_new0(note, 1);
        n->first = now;
        g_hash_table_insert(c->notes, k, n);
        k = NULL;
    }
    if (n) {
        n->credit += credit;
        n->delivered += (uint32_t)delivered;
        n->penalised += (uint32_t)penalised;
        n->last = now > n->last ? now : n->last;
    }
    g_mutex_unlock(&c->lock);
    g_free(k);
}

static char *history_key(const char *what, mx_rep_kind kind, const char *value)
{
    return g_strdup_printf("reph:%s:%s:%s", what, kind_names[kind], value);
}

static GBytes *time_value(int64_t t)
{
    char *v = g_strdup_printf("%lld", (long long)t);
    return g_bytes_new_take(v, strlen(v));
}

void mx_rep_cache_flush(mx_rep_cache *c, mx_store *s, int64_t now, int decay, int history)
{
    g_mutex_lock(&c->lock);
    GHashTable *batch = c->notes;
    c->notes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_mutex_unlock(&c->lock);
    guint n = g_hash_table_size(batch);
    if (n == 0) {
        g_hash_table_destroy(batch);
        return;
    }
    /* per sender: credits, the two counters, first seen (add: only the
     * first node's), last seen; all in one batch */
    mx_store_write *w = g_new0(mx_store_write, 5 * (gsize)n);
    char **keys = g_new0(char *, 5 * (gsize)n);
    size_t nw = 0;
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, batch);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        char *tab = strchr(k, '\t');
        mx_rep_kind kind = (mx_rep_kind)atoi(k);
        const char *value = tab + 1;
        note *nt = v;
        if (nt->credit > 0) {
            keys[nw] = points_key("repc", kind, value, now / decay);
            w[nw] = (mx_store_write){.op = MX_STORE_W_INCR, .key = keys[nw],
                                     .delta = (uint64_t)nt->credit, .ttl = 2 * decay + 60};
            nw++;
        }
        if (history <= 0)
            continue;
        if (nt->delivered) {
            keys[nw] = history_key("delivered", kind, value);
            w[nw] = (mx_store_write){.op = MX_STORE_W_INCR, .key = keys[nw],
                                     .delta = nt->delivered, .ttl = history, .touch = 1};
            nw++;
        }
        if (nt->penalised) {
            keys[nw] = history_key("penalised", kind, value);
            w[nw] = (mx_store_write){.op = MX_STORE_W_INCR, .key = keys[nw],
                                     .delta = nt->penalised, .ttl = history, .touch = 1};
            nw++;
        }
        keys[nw] = history_key("first", kind, value);
        w[nw] = (mx_store_write){.op = MX_STORE_W_ADD, .key = keys[nw],
                                 .val = time_value(nt->first), .ttl = history};
        nw++;
        keys[nw] = history_key("last", kind, value);
        w[nw] = (mx_store_write){.op = MX_STORE_W_SET, .key = keys[nw],
                                 .val = time_value(nt->last), .ttl = history};
        nw++;
    }
    /* a failed write loses what it carried: credits are a bonus, history
     * is for people reading it */
    mx_store_rc *rcs = g_new(mx_store_rc, nw ? nw : 1);
    mx_store_write_many(s, w, nw, rcs);
    for (size_t i = 0; i < nw; i++) {
        g_free(keys[i]);
        if (w[i].val)
            g_bytes_unref(w[i].val);
    }
    g_free(rcs);
    g_free(keys);
    g_free(w);
    g_hash_table_destroy(batch);
}

static uint64_t read_time(mx_store *s, const char *key, mx_store_rc *rc)
{
    GBytes *b = NULL;
    mx_store_rc r = mx_store_get(s, key, &b);
    uint64_t t = 0;
    if (r == MX_STORE_OK) {
        gsize n = 0;
        const char *d = g_bytes_get_data(b, &n);
        char buf[24];
        if (n > 0 && n < sizeof(buf)) {
            memcpy(buf, d, n);
            buf[n] = 0;
            t = g_ascii_strtoull(buf, NULL, 10);
        }
        g_bytes_unref(b);
    } else if (r == MX_STORE_ERROR) {
        *rc = r;
    }
    return t;
}

mx_store_rc mx_rep_read_history(mx_store *s, mx_rep_kind kind, const char *value, int history,
                                mx_rep_history *out)
{
    memset(out, 0, sizeof(*out));
    mx_store_rc rc = MX_STORE_OK;
    char *k = history_key("first", kind, value);
    out->first_seen = read_time(s, k, &rc);
    g_free(k);
    k = history_key("last", kind, value);
    out->last_seen = read_time(s, k, &rc);
    g_free(k);
    /* counters are read by adding 0 (memcached keeps them as bare numbers) */
    const char *what[] = {"delivered", "penalised"};
    uint64_t *dst[] = {&out->delivered, &out->penalised};
    for (int i = 0; i < 2; i++) {
        k = history_key(what[i], kind, value);
        if (mx_store_incr(s, k, 0, history > 0 ? history : 60, dst[i]) != MX_STORE_OK)
            rc = MX_STORE_ERROR;
        g_free(k);
    }
    return rc;
}
