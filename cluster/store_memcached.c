/*
 * store_memcached.c: the cluster store on memcached (see store.h).
 *
 * memcached has no access control: anyone who reaches it can read, write
 * and delete. So:
 *  - keys: the logical key never appears on the wire; the memcached key is
 *    "mx1:" + the first 128 bits of HMAC-SHA256(cluster key, logical key)
 *    in hex. An outsider cannot find which entry holds a given sender's
 *    counter or record, and logical keys may hold any byte (addresses with
 *    spaces, UTF-8) without breaking memcached's key syntax;
 *  - records: stored as 0x01 | HMAC-SHA256(cluster key, memcached key |
 *    value) | value. A record that fails the check (forged, or moved from
 *    another key) reads as absent and is counted. Counters are bare numbers
 *    (incr needs them so): hidden by their key, not signed; the worst an
 *    outsider can do to one is delete it, i.e. reset a limit, never grant
 *    an allow-listing.
 *
 * Failure handling, all blocking calls on the caller's (worker) thread:
 *  - timeouts of tens of milliseconds (libmemcached's defaults are 4-5 s);
 *  - consistent (ketama) placement, and a server that refuses connections
 *    is ejected for dead_timeout seconds so its keys move to the others;
 *  - a circuit breaker per server for the one libmemcached never ejects,
 *    a server that accepts and never answers: after N failures in a row
 *    its keys fail at once (the caller applies its on_store_down policy)
 *    until a single probe, after the cool-down, succeeds.
 * Handles (memcached_st) are not thread-safe: each call borrows a clone
 * from a small free list.
 *
 * The counters of a policy step (incr_many) bypass libmemcached: they are
 * pipelined on connections kept per server, all servers in one poll loop
 * (mc_pipe.c), and callers that arrive while an exchange is out share the
 * next one. Placement and breakers are the same as for the single calls,
 * and a server that refuses sends its keys to them (see mc_incr_many).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libmemcached/memcached.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "mc_pipe.h"
#include "store_mc_int.h"

/* ---- keys and records ---- */

/* HMAC-SHA256 over the concatenation of n parts. */
static void hmac(mc_store *s, unsigned char out[MAC_LEN], const void *const *p,
                 const size_t *len, int n)
{
    EVP_MAC_CTX *c = EVP_MAC_CTX_dup(s->mac);
    size_t outl = 0;
    int ok = c != NULL;
    for (int i = 0; ok && i < n; i++)
        ok = EVP_MAC_update(c, p[i], len[i]);
    if (!ok || !EVP_MAC_final(c, out, &outl, MAC_LEN) || outl != MAC_LEN)
        memset(out, 0, MAC_LEN); /* verifies nothing: a record then reads as absent */
    EVP_MAC_CTX_free(c);
}

void mc_key(mc_store *s, const char *logical, char out[4 + 32 + 1])
{
    unsigned char mac[MAC_LEN];
    const void *p[] = {"key\0", logical};
    size_t l[] = {4, strlen(logical)};
    hmac(s, mac, p, l, 2);
    memcpy(out, "mx1:", 4);
    for (int i = 0; i < 16; i++)
        snprintf(out + 4 + 2 * i, 3, "%02x", mac[i]);
}

static void rec_mac(mc_store *s, const char *k, const void *val, size_t len,
                    unsigned char mac[MAC_LEN])
{
    const void *p[] = {"rec\0", k, "\0", val};
    size_t l[] = {4, strlen(k), 1, len};
    hmac(s, mac, p, l, 4);
}

/* ---- handles and breakers ---- */

memcached_st *mc_borrow(mc_store *s)
{
    g_mutex_lock(&s->lock);
    memcached_st *m = s->idle->len ? g_ptr_array_steal_index_fast(s->idle, s->idle->len - 1)
                                   : NULL;
    g_mutex_unlock(&s->lock);
    return m ? m : memcached_clone(NULL, s->master);
}

void mc_give_back(mc_store *s, memcached_st *m)
{
    g_mutex_lock(&s->lock);
    if (s->idle->len < 64) {
        g_ptr_array_add(s->idle, m);
        m = NULL;
    }
    g_mutex_unlock(&s->lock);
    if (m)
        memcached_free(m);
}

breaker *mc_breaker_for(mc_store *s, memcached_st *m, const char *k)
{
    memcached_return_t rc;
    const memcached_instance_st *in = memcached_server_by_key(m, k, strlen(k), &rc);
    if (!in)
        return NULL;
    const char *host = memcached_server_name(in);
    int port = memcached_server_port(in);
    for (int i = 0; i < s->nbr; i++)
        if (s->br[i].port == port && strcmp(s->br[i].host, host) == 0)
            return &s->br[i];
    return NULL;
}

void mc_log(mc_store *s, int level, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (s->log)
        s->log(level, event, m);
    g_free(m);
}

/* May a call go to this server now? */
int mc_breaker_allows(mc_store *s, breaker *b)
{
    if (!b)
        return 1;
    int64_t until = atomic_load(&b->open_until);
    if (until == 0)
        return 1;
    if (g_get_monotonic_time() < until)
        return 0;
    int expect = 0; /* cool-down over: one probe goes through */
    return atomic_compare_exchange_strong(&b->probing, &expect, 1);
}

void mc_breaker_result(mc_store *s, breaker *b, int ok)
{
    if (!b)
        return;
    if (ok) {
        atomic_store(&b->fails, 0);
        if (atomic_exchange(&b->open_until, 0) != 0) {
            atomic_store(&b->probing, 0);
            mc_log(s, 2, "store_breaker_closed", "memcached %s:%d answers again", b->host,
                   b->port);
        }
        return;
    }
    int n = atomic_fetch_add(&b->fails, 1) + 1;
    int was_probe = atomic_exchange(&b->probing, 0);
    if (n >= s->failures_to_open || was_probe) {
        int64_t prev = atomic_exchange(&b->open_until, g_get_monotonic_time() + s->cooldown_us);
        if (prev == 0) {
            atomic_fetch_add(&s->stats.breaker_opened, 1);
            mc_log(s, 0, "store_breaker_open",
                   "memcached %s:%d failed %d times in a row; its keys fail fast for %lld ms",
                   b->host, b->port, n, (long long)(s->cooldown_us / 1000));
        }
    }
}

/* A reply that says the server works, whatever it says of the key. */
static int server_ok(memcached_return_t rc)
{
    switch (rc) {
    case MEMCACHED_SUCCESS:
    case MEMCACHED_NOTFOUND:
    case MEMCACHED_NOTSTORED:
    case MEMCACHED_DATA_EXISTS:
    case MEMCACHED_STORED:
    case MEMCACHED_DELETED:
    case MEMCACHED_END:
    case MEMCACHED_BUFFERED:
        return 1;
    default:
        return 0;
    }
}

typedef struct call {
    memcached_st *m;
    breaker *b;
    char key[4 + 32 + 1];
} call;

static int call_begin(mc_store *s, call *c, const char *logical)
{
    mc_key(s, logical, c->key);
    c->m = mc_borrow(s);
    if (!c->m)
        return 0;
    c->b = mc_breaker_for(s, c->m, c->key);
    if (!mc_breaker_allows(s, c->b)) {
        atomic_fetch_add(&s->stats.fast_failed, 1);
        mc_give_back(s, c->m);
        return 0;
    }
    return 1;
}

static mx_store_rc call_end(mc_store *s, call *c, memcached_return_t rc)
{
    int ok = server_ok(rc);
    mc_breaker_result(s, c->b, ok);
    if (!ok)
        atomic_fetch_add(&s->stats.errors, 1);
    mc_give_back(s, c->m);
    return ok ? MX_STORE_OK : MX_STORE_ERROR;
}

/* ---- operations ---- */

void mc_sent(mc_store *s, uint64_t round_trips, uint64_t commands)
{
    atomic_fetch_add(&s->stats.round_trips, round_trips);
    atomic_fetch_add(&s->stats.commands, commands);
}

time_t mc_ttl(int ttl)
{
    if (ttl <= 0)
        return 0;
    if (ttl > 30 * 86400)
        return time(NULL) + ttl;
    return (time_t)ttl;
}

/* memcached's incr/decr take 32-bit amounts through libmemcached. */
static memcached_return_t mc_step(mc_store *s, memcached_st *m, const char *k, size_t kl,
                                  uint64_t delta, int up, uint64_t *v)
{
    memcached_return_t rc = MEMCACHED_SUCCESS;
    do {
        uint32_t d = delta > UINT32_MAX ? UINT32_MAX : (uint32_t)delta;
        mc_sent(s, 1, 1);
        rc = up ? memcached_increment(m, k, kl, d, v) : memcached_decrement(m, k, kl, d, v);
        delta -= d;
    } while (rc == MEMCACHED_SUCCESS && delta > 0);
    return rc;
}

static GBytes *rec_open(mc_store *s, const char *k, const char *v, size_t len);

static mx_store_rc mc_get(mx_store *base, const char *key, GBytes **val)
{
    mc_store *s = (mc_store *)base;
    call c;
    *val = NULL;
    if (!call_begin(s, &c, key))
        return MX_STORE_ERROR;
    size_t len = 0;
    uint32_t flags = 0;
    memcached_return_t rc;
    mc_sent(s, 1, 1);
    char *v = memcached_get(c.m, c.key, strlen(c.key), &len, &flags, &rc);
    mx_store_rc r = call_end(s, &c, rc);
    if (r != MX_STORE_OK) {
        free(v);
        return r;
    }
    if (rc == MEMCACHED_NOTFOUND || !v) {
        free(v);
        return MX_STORE_NOT_FOUND;
    }
    *val = rec_open(s, c.key, v, len);
    free(v);
    return *val ? MX_STORE_OK : MX_STORE_NOT_FOUND;
}

/* set, or add (only when absent: NOT_FOUND when the key exists) */
static mx_store_rc mc_store_cmd(mx_store *base, const char *key, const void *val, size_t len,
                                int ttl, int add)
{
    mc_store *s = (mc_store *)base;
    call c;
    if (!call_begin(s, &c, key))
        return MX_STORE_ERROR;
    GBytes *v = g_bytes_new_static(val, len);
    GByteArray *buf = g_byte_array_new();
    mc_rec_seal(s, c.key, v, buf);
    mc_sent(s, 1, 1);
    memcached_return_t rc =
        (add ? memcached_add : memcached_set)(c.m, c.key, strlen(c.key), (const char *)buf->data,
                                              buf->len, mc_ttl(ttl), 0);
    g_byte_array_free(buf, TRUE);
    g_bytes_unref(v);
    mx_store_rc r = call_end(s, &c, rc);
    if (r == MX_STORE_OK && (rc == MEMCACHED_NOTSTORED || rc == MEMCACHED_DATA_EXISTS))
        r = add ? MX_STORE_NOT_FOUND : MX_STORE_ERROR;
    return r;
}

static mx_store_rc mc_set(mx_store *base, const char *key, const void *val, size_t len, int ttl)
{
    return mc_store_cmd(base, key, val, len, ttl, 0);
}

static mx_store_rc mc_add(mx_store *base, const char *key, const void *val, size_t len, int ttl)
{
    return mc_store_cmd(base, key, val, len, ttl, 1);
}

/* ASCII memcached has no increment-with-initial: incr; if absent, add the
 * initial value with its expiry (one step, so no counter lives without
 * one); if another node added it first, incr again. */
mx_store_rc mc_incr(mx_store *base, const char *key, uint64_t delta, int ttl,
                           uint64_t *now)
{
    mc_store *s = (mc_store *)base;
    call c;
    if (!call_begin(s, &c, key))
        return MX_STORE_ERROR;
    size_t kl = strlen(c.key);
    uint64_t v = 0;
    memcached_return_t rc = mc_step(s, c.m, c.key, kl, delta, 1, &v);
    if (rc == MEMCACHED_NOTFOUND) {
        char num[24];
        int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)delta);
        mc_sent(s, 1, 1);
        rc = memcached_add(c.m, c.key, kl, num, (size_t)n, mc_ttl(ttl), 0);
        if (rc == MEMCACHED_SUCCESS || rc == MEMCACHED_STORED) {
            v = delta;
        } else if (rc == MEMCACHED_NOTSTORED || rc == MEMCACHED_DATA_EXISTS) {
            rc = mc_step(s, c.m, c.key, kl, delta, 1, &v);
        }
    }
    mx_store_rc r = call_end(s, &c, rc);
    if (r == MX_STORE_OK && rc != MEMCACHED_SUCCESS && rc != MEMCACHED_STORED)
        r = MX_STORE_ERROR; /* e.g. the value was not a number */
    if (now)
        *now = v;
    return r;
}

static mx_store_rc mc_decr(mx_store *base, const char *key, uint64_t delta)
{
    mc_store *s = (mc_store *)base;
    call c;
    if (!call_begin(s, &c, key))
        return MX_STORE_ERROR;
    uint64_t v = 0;
    memcached_return_t rc = mc_step(s, c.m, c.key, strlen(c.key), delta, 0, &v);
    mx_store_rc r = call_end(s, &c, rc);
    if (r == MX_STORE_OK && rc == MEMCACHED_NOTFOUND)
        r = MX_STORE_NOT_FOUND;
    return r;
}

static mx_store_rc mc_del(mx_store *base, const char *key)
{
    mc_store *s = (mc_store *)base;
    call c;
    if (!call_begin(s, &c, key))
        return MX_STORE_ERROR;
    mc_sent(s, 1, 1);
    memcached_return_t rc = memcached_delete(c.m, c.key, strlen(c.key), 0);
    return call_end(s, &c, rc);
}

static mx_store_rc mc_touch(mx_store *base, const char *key, int ttl)
{
    mc_store *s = (mc_store *)base;
    call c;
    if (!call_begin(s, &c, key))
        return MX_STORE_ERROR;
    mc_sent(s, 1, 1);
    memcached_return_t rc = memcached_touch(c.m, c.key, strlen(c.key), mc_ttl(ttl));
    mx_store_rc r = call_end(s, &c, rc);
    if (r == MX_STORE_OK && rc == MEMCACHED_NOTFOUND)
        r = MX_STORE_NOT_FOUND;
    return r;
}

/* Check a stored record against its key; the payload, or NULL. */
static GBytes *rec_open(mc_store *s, const char *k, const char *v, size_t len)
{
    unsigned char mac[MAC_LEN];
    if (len < 1 + MAC_LEN || (unsigned char)v[0] != REC_VERSION) {
        atomic_fetch_add(&s->stats.bad_records, 1);
        return NULL;
    }
    rec_mac(s, k, v + 1 + MAC_LEN, len - 1 - MAC_LEN, mac);
    if (CRYPTO_memcmp(mac, v + 1, MAC_LEN) != 0) {
        atomic_fetch_add(&s->stats.bad_records, 1);
        return NULL;
    }
    return g_bytes_new(v + 1 + MAC_LEN, len - 1 - MAC_LEN);
}

/* Multi-gets: found(ctx, i, physical key, value, length) for each key
 * that came back. rcs[i] starts NOT_FOUND, and turns ERROR for every key
 * not found when its server did not answer (what it held is unknown). */
typedef void (*mget_found)(mc_store *s, void *ctx, size_t i, const char *k, const char *v,
                           size_t len, mx_store_rc *rc);

/* One server's share of a multi-get: the keys pk[idx[0..cnt)]. */
static void mget_server(mc_store *s, memcached_st *m, breaker *b, char (*pk)[4 + 32 + 1],
                        const size_t *idx, size_t cnt, GHashTable *index, unsigned char *seen,
                        mget_found found, void *ctx, mx_store_rc *rcs)
{
    if (!mc_breaker_allows(s, b)) {
        atomic_fetch_add(&s->stats.fast_failed, 1);
        for (size_t t = 0; t < cnt; t++)
            rcs[idx[t]] = MX_STORE_ERROR;
        return;
    }
    const char **kp = g_new(const char *, cnt);
    size_t *kl = g_new(size_t, cnt);
    for (size_t t = 0; t < cnt; t++) {
        kp[t] = pk[idx[t]];
        kl[t] = strlen(pk[idx[t]]);
    }
    mc_sent(s, 1, cnt);
    memcached_return_t rc = memcached_mget(m, kp, kl, cnt);
    if (rc == MEMCACHED_SUCCESS) {
        memcached_result_st *res;
        while ((res = memcached_fetch_result(m, NULL, &rc)) != NULL) {
            char k[4 + 32 + 1];
            size_t klen = memcached_result_key_length(res);
            if (klen < sizeof(k)) {
                memcpy(k, memcached_result_key_value(res), klen);
                k[klen] = 0;
                size_t i = GPOINTER_TO_SIZE(g_hash_table_lookup(index, k));
                if (i > 0 && !seen[i - 1]) {
                    seen[i - 1] = 1;
                    found(s, ctx, i - 1, k, memcached_result_value(res),
                          memcached_result_length(res), &rcs[i - 1]);
                }
            }
            memcached_result_free(res);
        }
    }
    int ok = rc == MEMCACHED_SUCCESS || rc == MEMCACHED_END || rc == MEMCACHED_NOTFOUND;
    mc_breaker_result(s, b, ok);
    if (!ok) {
        /* what the server held is unknown */
        for (size_t t = 0; t < cnt; t++)
            if (!seen[idx[t]])
                rcs[idx[t]] = MX_STORE_ERROR;
        atomic_fetch_add(&s->stats.errors, 1);
    }
    g_free(kp);
    g_free(kl);
}

/* A multi-get per server, each through that server's breaker (a hung one
 * fails its keys at once, as single calls do). */
static void mget_each(mc_store *s, const char *const *keys, size_t n, mget_found found,
                      void *ctx, mx_store_rc *rcs)
{
    typedef char mkey[4 + 32 + 1];
    memcached_st *m = mc_borrow(s);
    mkey *pk = g_new(mkey, n ? n : 1);
    unsigned char *seen = g_new0(unsigned char, n ? n : 1);
    size_t *order = g_new(size_t, n ? n : 1); /* keys grouped by server */
    int *srv = g_new(int, n ? n : 1);
    size_t *count = g_new0(size_t, (size_t)s->nbr + 1);
    GHashTable *index = g_hash_table_new(g_str_hash, g_str_equal);
    for (size_t i = 0; i < n; i++) {
        mc_key(s, keys[i], pk[i]);
        rcs[i] = m ? MX_STORE_NOT_FOUND : MX_STORE_ERROR;
        g_hash_table_insert(index, pk[i], GSIZE_TO_POINTER(i + 1));
        breaker *b = m ? mc_breaker_for(s, m, pk[i]) : NULL;
        srv[i] = b ? (int)(b - s->br) : s->nbr; /* nbr: no breaker known */
        count[srv[i]]++;
    }
    if (m) {
        size_t *start = g_new0(size_t, (size_t)s->nbr + 2);
        for (int j = 0; j <= s->nbr; j++)
            start[j + 1] = start[j] + count[j];
        size_t *fill = g_memdup2(start, sizeof(size_t) * ((size_t)s->nbr + 1));
        for (size_t i = 0; i < n; i++)
            order[fill[srv[i]]++] = i;
        for (int j = 0; j <= s->nbr; j++)
            if (count[j])
                mget_server(s, m, j < s->nbr ? &s->br[j] : NULL, pk, order + start[j], count[j],
                            index, seen, found, ctx, rcs);
        g_free(start);
        g_free(fill);
        mc_give_back(s, m);
    }
    g_hash_table_destroy(index);
    g_free(pk);
    g_free(seen);
    g_free(order);
    g_free(srv);
    g_free(count);
}

static void found_record(mc_store *s, void *ctx, size_t i, const char *k, const char *v,
                         size_t len, mx_store_rc *rc)
{
    GBytes **vals = ctx;
    vals[i] = rec_open(s, k, v, len);
    *rc = vals[i] ? MX_STORE_OK : MX_STORE_NOT_FOUND;
}

static void mc_get_many(mx_store *base, const char *const *keys, size_t n, GBytes **vals,
                        mx_store_rc *rcs)
{
    for (size_t i = 0; i < n; i++)
        vals[i] = NULL;
    mget_each((mc_store *)base, keys, n, found_record, vals, rcs);
}

/* memcached pads a counter that shrank with spaces */
static void found_counter(mc_store *s, void *ctx, size_t i, const char *k, const char *v,
                          size_t len, mx_store_rc *rc)
{
    (void)s;
    (void)k;
    uint64_t *vals = ctx;
    char buf[24];
    while (len && v[len - 1] == ' ')
        len--;
    if (len == 0 || len >= sizeof(buf) || strspn(v, "0123456789") < len) {
        *rc = MX_STORE_NOT_FOUND; /* not a counter */
        return;
    }
    memcpy(buf, v, len);
    buf[len] = 0;
    vals[i] = g_ascii_strtoull(buf, NULL, 10);
    *rc = MX_STORE_OK;
}

void mc_counters(mx_store *base, const char *const *keys, size_t n, uint64_t *vals,
                        mx_store_rc *rcs)
{
    for (size_t i = 0; i < n; i++)
        vals[i] = 0;
    mget_each((mc_store *)base, keys, n, found_counter, vals, rcs);
}

/* The signed form of a record: version | HMAC | value. */
void mc_rec_seal(mc_store *s, const char *k, GBytes *val, GByteArray *out)
{
    gsize len = 0;
    const void *v = val ? g_bytes_get_data(val, &len) : "";
    unsigned char head[1 + MAC_LEN];
    head[0] = REC_VERSION;
    rec_mac(s, k, v, len, head + 1);
    g_byte_array_append(out, head, sizeof(head));
    g_byte_array_append(out, v, (guint)len);
}

static void mc_destroy(mx_store *base)
{
    mc_store *s = (mc_store *)base;
    for (guint i = 0; i < s->idle->len; i++)
        memcached_free(g_ptr_array_index(s->idle, i));
    g_ptr_array_free(s->idle, TRUE);
    memcached_free(s->master);
    EVP_MAC_CTX_free(s->mac);
    mc_batch_clear(s);
    for (int i = 0; i < s->nbr; i++)
        g_free(s->br[i].host);
    g_free(s->br);
    g_mutex_clear(&s->lock);
    OPENSSL_cleanse(s->key, sizeof(s->key));
    g_free(s);
}

static const mx_store_stats *mc_stats(mx_store *base) { return &((mc_store *)base)->stats; }

static int mc_server_state(mx_store *base, int i, char *name, size_t n)
{
    mc_store *s = (mc_store *)base;
    if (i < 0 || i >= s->nbr)
        return -1;
    snprintf(name, n, "%s:%d", s->br[i].host, s->br[i].port);
    int64_t until = atomic_load(&s->br[i].open_until);
    return until == 0 ? MX_BREAKER_CLOSED
                      : g_get_monotonic_time() < until ? MX_BREAKER_OPEN : MX_BREAKER_HALF_OPEN;
}

static const mx_store_ops mc_ops = {
    .name = "memcached",
    .get = mc_get,
    .set = mc_set,
    .incr = mc_incr,
    .del = mc_del,
    .destroy = mc_destroy,
    .stats = mc_stats,
    .server_state = mc_server_state,
    .decr = mc_decr,
    .get_many = mc_get_many,
    .incr_many = mc_incr_many,
    .write_many = mc_write_many, /* store_mc_batch.c */
    .add = mc_add,
    .touch = mc_touch,
    .counters = mc_counters,
};

int mc_is(mx_store *s) { return s->ops == &mc_ops; }

mx_store *mx_store_memcached_new(const mx_memcached_conf *conf, char **err)
{
    if (conf->keylen < 16 || conf->keylen > sizeof(((mc_store *)0)->key)) {
        *err = g_strdup_printf("cluster key: %zu bytes; need 16 to 64", conf->keylen);
        return NULL;
    }
    mc_store *s = g_new0(mc_store, 1);
    s->base.ops = &mc_ops;
    g_mutex_init(&s->lock);
    mc_batch_init(s);
    s->idle = g_ptr_array_new();
    memcpy(s->key, conf->key, conf->keylen);
    s->keylen = conf->keylen;
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    s->mac = m ? EVP_MAC_CTX_new(m) : NULL;
    EVP_MAC_free(m);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!s->mac || !EVP_MAC_init(s->mac, s->key, s->keylen, params)) {
        *err = g_strdup("cluster key: OpenSSL has no HMAC-SHA256");
        s->master = NULL;
        mc_destroy(&s->base);
        return NULL;
    }
    s->failures_to_open = conf->breaker_failures > 0 ? conf->breaker_failures : 3;
    s->cooldown_us = (int64_t)(conf->breaker_cooldown_ms > 0 ? conf->breaker_cooldown_ms : 1000) * 1000;
    s->log = conf->log;
    s->master = memcached_create(NULL);

    gchar **parts = g_strsplit(conf->servers, ";", -1);
    for (int i = 0; parts[i]; i++) {
        char *p = g_strstrip(parts[i]);
        if (!*p)
            continue;
        char *colon = strrchr(p, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == p || !end || *end || port <= 0 || port > 65535) {
            *err = g_strdup_printf("cluster.memcached: \"%s\": expected HOST:PORT", p);
            g_strfreev(parts);
            mc_destroy(&s->base);
            return NULL;
        }
        *colon = 0;
        if (memcached_server_add(s->master, p, (in_port_t)port) != MEMCACHED_SUCCESS) {
            *err = g_strdup_printf("cluster.memcached: cannot add %s:%ld", p, port);
            g_strfreev(parts);
            mc_destroy(&s->base);
            return NULL;
        }
        s->br = g_renew(breaker, s->br, s->nbr + 1);
        memset(&s->br[s->nbr], 0, sizeof(breaker));
        s->br[s->nbr].host = g_strdup(p);
        s->br[s->nbr].port = (int)port;
        s->nbr++;
    }
    g_strfreev(parts);
    if (s->nbr == 0) {
        *err = g_strdup("cluster.memcached: no server given");
        mc_destroy(&s->base);
        return NULL;
    }
    int ms = conf->timeout_ms > 0 ? conf->timeout_ms : 50;
    s->timeout_ms = ms;
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_DISTRIBUTION,
                           MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, (uint64_t)ms);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, (uint64_t)ms);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_SND_TIMEOUT, (uint64_t)ms * 1000);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_RCV_TIMEOUT, (uint64_t)ms * 1000);
    /* A refusing server is ejected (its keys move to the others) and
     * retried after dead_timeout; 0 would keep it out for good. */
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, 1);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, 2);
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_RETRY_TIMEOUT,
                           (uint64_t)(conf->dead_timeout > 0 ? conf->dead_timeout : 5));
    memcached_behavior_set(s->master, MEMCACHED_BEHAVIOR_DEAD_TIMEOUT,
                           (uint64_t)(conf->dead_timeout > 0 ? conf->dead_timeout : 5));
    return &s->base;
}
