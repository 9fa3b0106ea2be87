/*
 * store_mc_int.h: what the two halves of the memcached store share.
 *
 * store_memcached.c: keys and signed records, libmemcached handles,
 * breakers, the single calls and multi-gets, construction.
 * store_mc_batch.c: what travels pipelined on mxgate's own connections
 * (mc_pipe.c): batches of writes, and the counters of a policy step.
 */
#ifndef MX_STORE_MC_INT_H
#define MX_STORE_MC_INT_H

#include <stdatomic.h>
#include <time.h>

#include <libmemcached/memcached.h>
#include <openssl/evp.h>

#include "store.h"

#define REC_VERSION 1
#define MAC_LEN 32

#define IDLE_CONNS 8 /* kept per server for incr_many, between calls */

typedef struct breaker {
    char *host;
    int port;
    int idle[IDLE_CONNS];        /* open connections, guarded by the store's lock */
    int nidle;
    atomic_int fails;            /* failures in a row */
    atomic_int_fast64_t open_until; /* monotonic us; 0 = closed */
    atomic_int probing;          /* one half-open probe at a time */
} breaker;

typedef struct mc_store {
    mx_store base;
    int timeout_ms;
    memcached_st *master;
    GMutex lock;                 /* guards idle */
    GPtrArray *idle;             /* memcached_st clones */
    breaker *br;
    int nbr;
    unsigned char key[64];
    size_t keylen;
    EVP_MAC_CTX *mac;            /* HMAC-SHA256 keyed with key; duplicated per use */
    int failures_to_open;
    int64_t cooldown_us;
    mx_store_stats stats;
    void (*log)(int level, const char *event, const char *msg);
    /* incr_many callers waiting for an exchange (mc_incr_many) */
    GMutex comb_lock;
    GCond comb_cond;
    struct incr_req *comb_head, **comb_tail;
    int comb_leading;
} mc_store;

#define MC_KEY_LEN MX_STORE_WIRE_KEY /* "mx1:" + 32 hex digits + NUL */
typedef char mc_keybuf[MC_KEY_LEN];

/* The memcached key of a logical key; the signed form of a record. */
void mc_key(mc_store *s, const char *logical, char out[MC_KEY_LEN]);
void mc_rec_seal(mc_store *s, const char *k, GBytes *val, GByteArray *out);
/* An expiry as memcached reads it (over 30 days: a unix time). */
time_t mc_ttl(int ttl);

/* A libmemcached handle of the store's own, and back. */
memcached_st *mc_borrow(mc_store *s);
void mc_give_back(mc_store *s, memcached_st *m);

/* The breaker of the server key k goes to (as handle m places it), NULL
 * if unknown; may a call go there now; how the call went. */
breaker *mc_breaker_for(mc_store *s, memcached_st *m, const char *k);
int mc_breaker_allows(mc_store *s, breaker *b);
void mc_breaker_result(mc_store *s, breaker *b, int ok);

/* Is s a memcached store? */
int mc_is(mx_store *s);

void mc_log(mc_store *s, int level, const char *event, const char *fmt, ...) G_GNUC_PRINTF(4, 5);
/* Count round trips and commands (mx_store_stats). */
void mc_sent(mc_store *s, uint64_t round_trips, uint64_t commands);

/* The single calls and multi-get the batches fall back to. */
mx_store_rc mc_incr(mx_store *base, const char *key, uint64_t delta, int ttl, uint64_t *now);
void mc_counters(mx_store *base, const char *const *keys, size_t n, uint64_t *vals,
                 mx_store_rc *rcs);

/* store_mc_batch.c */
void mc_write_many(mx_store *base, const mx_store_write *w, size_t n, mx_store_rc *rcs);
void mc_incr_many(mx_store *base, const char *const *keys, const uint64_t *delta, const int *ttl,
                  size_t n, uint64_t *now, mx_store_rc *rcs);
void mc_batch_init(mc_store *s);
/* The server each key goes to (index into s->br; -1 unknown), and the
 * memcached keys. */
void mc_place(mc_store *s, const char *const *keys, size_t n, mc_keybuf *pk, int *srv);
void mc_batch_clear(mc_store *s); /* closes the kept connections */

#endif
