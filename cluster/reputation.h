/*
 * reputation.h: what the cluster knows about a sender.
 *
 * Owns: the reputation record (proto/mxgate.proto Reputation) of a client
 * IP, network, sender domain or sender address under "rep:<kind>:<value>";
 * the automatic points (penalties and credits) kept apart from it in
 * increment-only counters, one per kind, value and decay period, so hot
 * senders never contend on one record; each sender's history (first and
 * last seen, messages delivered and penalised) under "reph:..."; the "rep:generation" counter that
 * every change made by an operator bumps; and a node-local cache.
 *
 * Score = the record's score (operators) + credits - penalties, where
 * points of the current decay period count in full and those of the
 * previous one count half; older points are gone.
 *
 * The cache keeps each read, found or not, for cache_ttl seconds, and is
 * emptied whenever the generation changes: poll it about once a second and
 * a fed change applies on every node within about a second.
 * Blocking (store calls): run off the event loops. The cache itself is
 * thread-safe and never blocks, so a loop may look into it.
 */
#ifndef MX_REPUTATION_H
#define MX_REPUTATION_H

#include <stdint.h>

#include "store.h"

typedef enum { MX_REP_IP, MX_REP_NET, MX_REP_DOMAIN, MX_REP_SENDER } mx_rep_kind;

typedef struct mx_rep {
    int found;              /* a record exists (else only automatic points) */
    int32_t score;          /* the record's score */
    int32_t auto_points;    /* credits - penalties, decayed */
    int block, allow;
    uint64_t updated, expires;
    char reason[128];
    char source[64];
    int64_t read_at;        /* unix seconds when read from the store */
} mx_rep;

static inline int32_t mx_rep_total(const mx_rep *r) { return r->score + r->auto_points; }

const char *mx_rep_kind_name(mx_rep_kind k);
int mx_rep_kind_parse(const char *s); /* "ip", "net", "domain", "sender"; -1 */

/* Canonical form of value for kind: an address as inet_ntop writes it; a
 * network as ADDR/PREFIX with the host bits cleared (IPv4 /16 or /24, IPv6
 * /48 or /64, the ones nodes look up); a domain or sender in lowercase.
 * NULL with *err set when the value is not of that kind. */
char *mx_rep_normalize(mx_rep_kind kind, const char *value, char **err);

/* The networks of a client address that nodes look up, most specific
 * first: writes up to 2 strings (g_free them); returns how many. */
int mx_rep_networks(const char *ip, char *out[2]);

/* Records (for mxgatectl and tests). value must be normalised.
 * mx_rep_read_record: the record alone; mx_rep_read adds the automatic
 * points (a second multi-get, for their four counters). */
mx_store_rc mx_rep_read_record(mx_store *s, mx_rep_kind kind, const char *value, int64_t now,
                               mx_rep *out);
/* The record's store key, and its stored form (for bulk loads). decode
 * returns 1 when the bytes hold a current record of a known version. */
char *mx_rep_key(mx_rep_kind kind, const char *value);
GBytes *mx_rep_encode(const mx_rep *r);
int mx_rep_decode(const void *data, size_t n, int64_t now, mx_rep *out);
mx_store_rc mx_rep_read(mx_store *s, mx_rep_kind kind, const char *value, int64_t now, int decay,
                        mx_rep *out);
/* n records with their points in two multi-gets, however large n is (one
 * round trip to each server holding a key, per multi-get); rcs[i] is
 * OK or ERROR (the store failed; out[i] is empty). Reading creates
 * nothing. */
void mx_rep_read_many(mx_store *s, const mx_rep_kind *kind, const char *const *value, size_t n,
                      int64_t now, int decay, mx_rep *out, mx_store_rc *rcs);
mx_store_rc mx_rep_write(mx_store *s, mx_rep_kind kind, const char *value, const mx_rep *r,
                         int ttl);
mx_store_rc mx_rep_delete(mx_store *s, mx_rep_kind kind, const char *value);
mx_store_rc mx_rep_bump_generation(mx_store *s);

/* Automatic points: positive = credit, negative = penalty. */
mx_store_rc mx_rep_points(mx_store *s, mx_rep_kind kind, const char *value, int points,
                          int64_t now, int decay);

typedef struct mx_rep_cache mx_rep_cache;

mx_rep_cache *mx_rep_cache_new(int ttl);
void mx_rep_cache_free(mx_rep_cache *c);

/* A fresh cached entry? (non-blocking) */
int mx_rep_cache_peek(mx_rep_cache *c, mx_rep_kind kind, const char *value, int64_t now,
                      mx_rep *out);

/* n entries, from the cache or the store (which fills the cache): those
 * the cache lacks are read together (mx_rep_read_many). On a store
 * failure rcs[i] is MX_STORE_ERROR and out[i] is empty; cached[i] says
 * where each came from. */
void mx_rep_lookup_many(mx_rep_cache *c, mx_store *s, const mx_rep_kind *kind,
                        const char *const *value, size_t n, int64_t now, int decay, mx_rep *out,
                        int *cached, mx_store_rc *rcs);

/* Forget one entry (after this node changed it) or all. */
void mx_rep_cache_forget(mx_rep_cache *c, mx_rep_kind kind, const char *value);

/* Read the generation; if it moved since the last poll, empty the cache.
 * Returns 1 when it did. */
int mx_rep_cache_poll(mx_rep_cache *c, mx_store *s);

/*
 * What happened to a sender at unix time now: credit points (every
 * delivered message), a delivered message, a penalised event (malware,
 * a rate limit hit, early talk, a recipient the backend refused). Frequent, so
 * noted here and written by mx_rep_cache_flush (about once a second) in
 * one batch: per sender, the credits, the delivered and penalised counters,
 * first seen (kept by the first write that lands) and last seen. Penalties
 * are not noted here: they are written at once (mx_rep_points).
 */
void mx_rep_cache_note(mx_rep_cache *c, mx_rep_kind kind, const char *value, int credit,
                       int delivered, int penalised, int64_t now);
/* history: how long, in seconds, the counters and the first and last seen
 * times outlive the sender's last activity; 0 keeps none. */
void mx_rep_cache_flush(mx_rep_cache *c, mx_store *s, int64_t now, int decay, int history);

/* What the cluster saw of a sender: first and last activity (unix seconds,
 * 0 when unknown), messages delivered and events penalised since it was
 * first seen. */
typedef struct mx_rep_history {
    uint64_t first_seen, last_seen;
    uint64_t delivered, penalised;
} mx_rep_history;

mx_store_rc mx_rep_read_history(mx_store *s, mx_rep_kind kind, const char *value, int history,
                                mx_rep_history *out);

#endif
