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

#include <stdint.h>

#include <glib.h>

typedef enum {
    MX_STORE_OK = 0,
    MX_STORE_NOT_FOUND = 1,
    MX_STORE_ERROR = -1, /* the store is unreachable or failed: caller applies its fail mode */
} mx_store_rc;

typedef struct mx_store mx_store;

typedef struct mx_store_ops {
    const char *name;
    mx_store_rc (*get)(mx_store *s, const char *key, GBytes **val);
    mx_store_rc (*set)(mx_store *s, const char *key, const void *val, size_t len, int ttl);
    /* Add delta, creating the key at delta with ttl if absent. */
    mx_store_rc (*incr)(mx_store *s, const char *key, uint64_t delta, int ttl, uint64_t *now);
    mx_store_rc (*del)(mx_store *s, const char *key);
    void (*destroy)(mx_store *s);
} mx_store_ops;

struct mx_store {
    const mx_store_ops *ops;
};

/* The in-process store: same semantics as memcached, for one node. The
 * clock is injectable for tests (NULL = g_get_monotonic_time in seconds). */
mx_store *mx_store_embedded_new(int64_t (*clock)(void));

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
static inline mx_store_rc mx_store_del(mx_store *s, const char *k) { return s->ops->del(s, k); }
static inline void mx_store_free(mx_store *s) { s->ops->destroy(s); }

#endif
