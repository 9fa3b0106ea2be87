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

/* One write of a batch (mx_store_write_many). */
typedef enum {
    MX_STORE_W_SET,  /* val under key */
    MX_STORE_W_ADD,  /* val under key unless the key exists: then NOT_FOUND */
    MX_STORE_W_INCR, /* key += delta, created at delta with ttl when absent */
    MX_STORE_W_DEL,  /* remove key: NOT_FOUND when it was not there */
} mx_store_wop;

typedef struct mx_store_write {
    mx_store_wop op;
    const char *key;
    GBytes *val;     /* SET, ADD */
    uint64_t delta;  /* INCR */
    int ttl;
    int touch;       /* INCR: the expiry starts again at ttl (a counter of activity) */
} mx_store_write;

/* Node-local counts a store keeps about itself (for logs and /metrics). */
typedef struct mx_store_stats {
    atomic_uint_fast64_t errors;         /* calls that failed at the server */
    atomic_uint_fast64_t fast_failed;    /* calls refused by an open breaker */
    atomic_uint_fast64_t bad_records;    /* records that failed their HMAC: ignored */
    atomic_uint_fast64_t breaker_opened; /* times a breaker opened */
    /* What went to the servers: waits for replies (a pipelined exchange
     * with several servers at once is one; a multi-get is one per server
     * it reaches), and the commands in them. Attempts count, answered or
     * not. */
    atomic_uint_fast64_t round_trips;
    atomic_uint_fast64_t commands;
    atomic_uint_fast64_t combined;       /* exchanges that carried several callers' counters */
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
    /* Batches (mxgatectl feed, the reputation flush): n operations in as
     * few round trips as the backend allows, in order. rcs[i] is each
     * one's result; for get_many vals[i] is set for OK. NULL: the
     * mx_store_*_many wrappers below do them one by one. */
    void (*get_many)(mx_store *s, const char *const *keys, size_t n, GBytes **vals,
                     mx_store_rc *rcs);
    void (*write_many)(mx_store *s, const mx_store_write *w, size_t n, mx_store_rc *rcs);
    /* Store val under key unless the key exists (NOT_FOUND then). */
    mx_store_rc (*add)(mx_store *s, const char *key, const void *val, size_t len, int ttl);
    /* Give key a new expiry of ttl seconds from now; NOT_FOUND if absent. */
    mx_store_rc (*touch)(mx_store *s, const char *key, int ttl);
    /* Read n counters (keys written by incr) without moving them: vals[i]
     * for OK; NOT_FOUND when absent or not a counter. */
    void (*counters)(mx_store *s, const char *const *keys, size_t n, uint64_t *vals,
                     mx_store_rc *rcs);
    /* n counters moved together, in one round trip where the backend
     * allows: key i gets delta[i] added, and is created at delta[i] with
     * ttl[i] when absent; a delta of 0 only reads (NOT_FOUND when absent:
     * nothing is created). now[i] is the value after, for OK. NULL: the
     * mx_store_incr_many wrapper does them one by one. */
    void (*incr_many)(mx_store *s, const char *const *keys, const uint64_t *delta,
                      const int *ttl, size_t n, uint64_t *now, mx_store_rc *rcs);
} mx_store_ops;

struct mx_store {
    const mx_store_ops *ops;
};

/* The in-process store: same semantics as memcached, for one node. The
 * clock is injectable for tests (NULL = g_get_monotonic_time in seconds). */
mx_store *mx_store_embedded_new(int64_t (*clock)(void));
/* At most about max_bytes (keys, values and a fixed overhead per entry):
 * past it the oldest entries are dropped, as memcached does when full.
 * 0: no limit (the default). */
void mx_store_embedded_set_limit(mx_store *s, size_t max_bytes);
/* The size estimate now, and how many entries the limit dropped. */
size_t mx_store_embedded_bytes(mx_store *s, uint64_t *evicted);

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
static inline mx_store_rc mx_store_add(mx_store *s, const char *k, const void *v, size_t n, int ttl)
{
    return s->ops->add(s, k, v, n, ttl);
}
static inline void mx_store_counters(mx_store *s, const char *const *k, size_t n, uint64_t *v,
                                     mx_store_rc *rcs)
{
    s->ops->counters(s, k, n, v, rcs);
}
static inline mx_store_rc mx_store_touch(mx_store *s, const char *k, int ttl)
{
    return s->ops->touch(s, k, ttl);
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
static inline void mx_store_incr_many(mx_store *s, const char *const *k, const uint64_t *d,
                                      const int *ttl, size_t n, uint64_t *now, mx_store_rc *rcs)
{
    if (s->ops->incr_many) {
        s->ops->incr_many(s, k, d, ttl, n, now, rcs);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        now[i] = 0;
        if (d[i])
            rcs[i] = s->ops->incr(s, k[i], d[i], ttl[i], &now[i]);
        else
            s->ops->counters(s, &k[i], 1, &now[i], &rcs[i]);
    }
}
/* A batch one operation at a time. */
static inline void mx_store_write_each(mx_store *s, const mx_store_write *w, size_t n,
                                       mx_store_rc *rcs)
{
    for (size_t i = 0; i < n; i++) {
        gsize len = 0;
        const void *d = w[i].val ? g_bytes_get_data(w[i].val, &len) : NULL;
        switch (w[i].op) {
        case MX_STORE_W_SET: rcs[i] = s->ops->set(s, w[i].key, d, len, w[i].ttl); break;
        case MX_STORE_W_ADD: rcs[i] = s->ops->add(s, w[i].key, d, len, w[i].ttl); break;
        case MX_STORE_W_INCR:
            rcs[i] = s->ops->incr(s, w[i].key, w[i].delta, w[i].ttl, NULL);
            if (rcs[i] == MX_STORE_OK && w[i].touch)
                s->ops->touch(s, w[i].key, w[i].ttl);
            break;
        case MX_STORE_W_DEL: rcs[i] = s->ops->del(s, w[i].key); break;
        }
    }
}

static inline void mx_store_write_many(mx_store *s, const mx_store_write *w, size_t n,
                                       mx_store_rc *rcs)
{
    if (s->ops->write_many)
        s->ops->write_many(s, w, n, rcs);
    else
        mx_store_write_each(s, w, n, rcs);
}
static inline mx_store_rc mx_store_del(mx_store *s, const char *k) { return s->ops->del(s, k); }
static inline void mx_store_free(mx_store *s) { s->ops->destroy(s); }

/*
 * Counters moved from an event loop (memcached only; store_mc_loop.c).
 * A store thread that waits for a reply sleeps and is woken for it; a loop
 * that sends the command and reads the reply with its other events does
 * not. These say where a key goes and keep the breakers and statistics
 * the store's own calls keep. All but mx_store_loop_connect are safe on a
 * loop (computation and atomics).
 */
#define MX_STORE_WIRE_KEY (4 + 32 + 1) /* "mx1:" + 32 hex digits + NUL */
/* How many servers a loop may talk to: 0 when the store is not memcached. */
int mx_store_loop_servers(mx_store *s);
/* The server each of the n keys goes to (server[i] -1: none known), and
 * its name on the wire. */
void mx_store_loop_route(mx_store *s, const char *const *keys, size_t n,
                         char (*wire)[MX_STORE_WIRE_KEY], int *server);
/* The server's breaker is closed: calls may go there from a loop. */
int mx_store_loop_ready(mx_store *s, int server);
/* How a call to the server went (the breaker counts failures in a row). */
void mx_store_loop_result(mx_store *s, int server, int ok);
/* A new non-blocking connection to the server, -1 with *err; blocks up to
 * the store's timeout: call it on a store thread. */
int mx_store_loop_connect(mx_store *s, int server, char **err);
const char *mx_store_loop_server_name(mx_store *s, int server, int *port);
int mx_store_loop_timeout_ms(mx_store *s);
/* Count what a loop sent (mx_store_stats round_trips, commands). */
void mx_store_loop_sent(mx_store *s, uint64_t round_trips, uint64_t commands);

#endif
