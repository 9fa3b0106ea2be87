/*
 * store.h: the shared key-value store nodes agree through.
 *
 * Owns: the interface every backend implements (memcached for a fleet,
 * embedded for a single node). Blocking and thread-safe: callers run it on
 * worker threads, never on an event loop. Knows nothing of sessions.
 * Values are opaque bytes (protobuf records from proto/); counters are
 * separate keys updated with incr, since read-modify-write on a hot key
 * collapses under contention.
 */
#ifndef MX_STORE_H
#define MX_STORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

typedef enum {
    MX_STORE_OK = 0,
    MX_STORE_NOT_FOUND = 1,
    MX_STORE_ERROR = -1, /* the store is unreachable or failed: caller applies its fail mode */
} mx_store_rc;

typedef struct mx_store mx_store;

/* Node-local counts a store keeps about itself (for logs and /metrics). */
typedef struct mx_store_stats {
    atomic_uint_fast64_t errors;         /* calls that failed at the server */
    atomic_uint_fast64_t fast_failed;    /* calls refused by an open breaker */
    atomic_uint_fast64_t bad_records;    /* records that failed their HMAC: ignored */
    atomic_uint_fast64_t breaker_opened; /* times a breaker opened */
} mx_store_stats;

enum { MX_BREAKER_CLOSED, MX_BREAKER_OPEN, MX_BREAKER_HALF_OPEN };

typedef struct mx_store_ops {
    const char *name;
    mx_store_rc (*get)(mx_store *s, const char *key, GBytes **val);
    mx_store_rc (*set)(mx_store *s, const char *key, const void *val, size_t len, int ttl);
    /* Add delta, creating the key at delta with ttl if absent. */
    mx_store_rc (*incr)(mx_store *s, const char *key, uint64_t delta, int ttl, uint64_t *now);
    mx_store_rc (*del)(mx_store *s, const char *key);
    void (*destroy)(mx_store *s);
    const mx_store_stats *(*stats)(mx_store *s);
    /* Server i's name and breaker state (MX_BREAKER_*); -1 past the last. */
    int (*server_state)(mx_store *s, int i, char *name, size_t n);
    /* Subtract delta from a counter, flooring at 0; NOT_FOUND if absent. */
    mx_store_rc (*decr)(mx_store *s, const char *key, uint64_t delta);
    /* Bulk loads (mxgatectl feed): n records in as few round trips as the
     * backend allows. rcs[i] is each key's result; vals[i] is set for OK.
     * NULL: mx_store_get_many / mx_store_set_many loop over get / set. */
    void (*get_many)(mx_store *s, const char *const *keys, size_t n, GBytes **vals,
                     mx_store_rc *rcs);
    void (*set_many)(mx_store *s, const char *const *keys, GBytes *const *vals, size_t n,
                     const int *ttls, mx_store_rc *rcs);
} mx_store_ops;

struct mx_store {
    const mx_store_ops *ops;
};

/* The in-process store: same semantics as memcached, for one node. The
 * clock is injectable for tests (NULL = g_get_monotonic_time in seconds). */
mx_store *mx_store_embedded_new(int64_t (*clock)(void));

typedef struct mx_memcached_conf {
    const char *servers;      /* "HOST:PORT;HOST:PORT" */
    const unsigned char *key; /* the cluster key (HMAC), 16..64 bytes */
    size_t keylen;
    int timeout_ms;           /* connect, send, receive, poll */
    int dead_timeout;         /* seconds a refusing server stays ejected */
    int breaker_failures;     /* failures in a row that open a server's breaker */
    int breaker_cooldown_ms;  /* open this long, then one probe */
    void (*log)(int level, const char *event, const char *msg); /* may be NULL */
} mx_memcached_conf;

/* The memcached store. NULL with *err set on a bad server list or key. */
mx_store *mx_store_memcached_new(const mx_memcached_conf *conf, char **err);

static inline mx_store_rc mx_store_get(mx_store *s, const char *k, GBytes **v)
{
    return s->ops->get(s, k, v);
}
static inline mx_store_rc mx_store_set(mx_store *s, const char *k, const void *v, size_t n, int ttl)
{
    return s->ops->set(s, k, v, n, ttl);
}
static inline mx_store_rc mx_store_incr(mx_store *s, const char *k, uint64_t d, int ttl, uint64_t *now)
{
    return s->ops->incr(s, k, d, ttl, now);
}
static inline mx_store_rc mx_store_decr(mx_store *s, const char *k, uint64_t d)
{
    return s->ops->decr ? s->ops->decr(s, k, d) : MX_STORE_ERROR;
}
static inline void mx_store_get_many(mx_store *s, const char *const *k, size_t n, GBytes **v,
                                     mx_store_rc *rcs)
{
    if (s->ops->get_many) {
        s->ops->get_many(s, k, n, v, rcs);
        return;
    }
    for (size_t i = 0; i < n; i++)
        rcs[i] = s->ops->get(s, k[i], &v[i]);
}
static inline void mx_store_set_many(mx_store *s, const char *const *k, GBytes *const *v,
                                     size_t n, const int *ttls, mx_store_rc *rcs)
{
    if (s->ops->set_many) {
        s->ops->set_many(s, k, v, n, ttls, rcs);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        gsize len = 0;
        const void *d = g_bytes_get_data(v[i], &len);
        rcs[i] = s->ops->set(s, k[i], d, len, ttls[i]);
    }
}
static inline mx_store_rc mx_store_del(mx_store *s, const char *k) { return s->ops->del(s, k); }
static inline void mx_store_free(mx_store *s) { s->ops->destroy(s); }

#endif
