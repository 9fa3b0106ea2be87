/*
 * ratelimit.h: counting events against named limits in the cluster store.
 *
 * Owns: the store keys of a rule, the fixed and sliding window arithmetic,
 * and what happens when the store is down (the rule's on_store_down).
 * Blocking (it calls the store): run it off the event loops.
 *
 * Keys: "rl:<rule>:<window start>:<value>", one per rule, window and
 * value, so no two rules share a counter. Counters are store increments
 * created with their expiry in the same step (see store.h).
 *
 *  fixed    one counter per window; exact: of N events in a window exactly
 *           min(N, limit) pass, however many nodes count them. Across a
 *           window boundary up to 2 x limit can pass within one window's
 *           length.
 *  sliding  the current and the previous window's counters, weighted:
 *           prev * (W - elapsed) / W + cur. One extra read per event (in
 *           the same round trip); the
 *           estimate assumes events were spread evenly over the previous
 *           window, so bursts at its end are under-counted by at most
 *           prev * elapsed / W.
 *  store down
 *   open    the event passes, and is logged as unchecked;
 *   closed  the event is refused (the caller tempfails);
 *   local   a per-node limiter with the same rule counts instead: each node
 *           admits up to `limit` per window on its own, so with N nodes up
 *           to N x limit pass cluster-wide while the store is down (plus
 *           what the store had counted before it went down).
 */
#ifndef MX_RATELIMIT_H
#define MX_RATELIMIT_H

#include <stdint.h>

#include "store.h"

typedef enum {
    MX_RL_CLIENT_IP,
    MX_RL_CLIENT_NET,       /* /24 for IPv4, /64 for IPv6 */
    MX_RL_HELO,
    MX_RL_SENDER,
    MX_RL_SENDER_DOMAIN,
    MX_RL_RECIPIENT,
    MX_RL_RECIPIENT_DOMAIN,
} mx_rl_key;

typedef enum { MX_RL_CONNECTIONS, MX_RL_MESSAGES, MX_RL_RECIPIENTS, MX_RL_BYTES } mx_rl_count;
typedef enum { MX_RL_FIXED, MX_RL_SLIDING } mx_rl_algo;
typedef enum { MX_RL_TEMPFAIL, MX_RL_REJECT } mx_rl_action;
typedef enum { MX_RL_DOWN_OPEN, MX_RL_DOWN_CLOSED, MX_RL_DOWN_LOCAL } mx_rl_down;

typedef struct mx_rl_rule {
    char *name;
    mx_rl_key key;
    mx_rl_count count;
    uint64_t limit;
    int window;             /* seconds */
    mx_rl_algo algorithm;
    mx_rl_action action;
    mx_rl_down on_store_down;
} mx_rl_rule;

typedef enum {
    MX_RL_PASS,
    MX_RL_OVER,             /* over the limit: refuse with the rule's action */
    MX_RL_UNCHECKED,        /* store down, on_store_down = open: passed */
    MX_RL_STORE_DOWN,       /* store down, on_store_down = closed: tempfail */
} mx_rl_verdict;

typedef struct mx_rl_result {
    mx_rl_verdict verdict;
    int local;              /* decided by the per-node fallback limiter */
    uint64_t before, after; /* the counter around this event (the current window's) */
    double estimate;        /* what was compared with the limit */
    int retry_after;        /* seconds until the event would pass, when over */
} mx_rl_result;

/* Parse the names used in config ("client_ip", "fixed", ...); -1 if unknown. */
int mx_rl_key_parse(const char *s);
int mx_rl_count_parse(const char *s);
int mx_rl_algo_parse(const char *s);
int mx_rl_action_parse(const char *s);
int mx_rl_down_parse(const char *s);
const char *mx_rl_key_name(mx_rl_key k);
const char *mx_rl_count_name(mx_rl_count c);

/* The value a rule of kind key counts, normalised (lowercase domains,
 * the network of an address). Returns a new string, or NULL when the
 * event has no such value (e.g. the null sender has no domain). */
char *mx_rl_value(mx_rl_key key, const char *client_ip, const char *helo, const char *sender,
                  const char *recipient);

/*
 * Count amount events for value against rule r at unix time now.
 * store: the cluster store; local: the per-node fallback store (the
 * embedded one), used when store fails and r->on_store_down is local.
 */
void mx_rl_hit(mx_store *store, mx_store *local, const mx_rl_rule *r, const char *value,
               uint64_t amount, int64_t now, mx_rl_result *out);

/*
 * The same for n events (the rules of one policy step), every counter
 * moved in one store call (mx_store_incr_many: one round trip with
 * memcached). Each event is counted whatever the others' verdicts: the
 * rules count attempts.
 */
void mx_rl_hit_many(mx_store *store, mx_store *local, const mx_rl_rule *const *rules,
                    const char *const *values, const uint64_t *amounts, size_t n, int64_t now,
                    mx_rl_result *out);

/*
 * For a caller that moves an existing fixed-window counter itself (an
 * event loop sending the increment; see proxy/policy_limits.c), in three
 * steps that together are mx_rl_hit: the counter of the window that holds
 * now; the verdict once it reads after (the event included); and what the
 * rule's on_store_down makes of a counter the store could not move (the
 * per-node limiter counts it for "local").
 */
char *mx_rl_counter_now(const mx_rl_rule *r, const char *value, int64_t now);
void mx_rl_judge_counted(const mx_rl_rule *r, uint64_t amount, int64_t now, uint64_t after,
                         mx_rl_result *out);
void mx_rl_store_down(mx_store *local, const mx_rl_rule *r, const char *value, uint64_t amount,
                      int64_t now, mx_rl_result *out);

/* Read the counters without counting (mxgatectl limits); creates nothing. */
void mx_rl_peek(mx_store *store, const mx_rl_rule *r, const char *value, int64_t now,
                mx_rl_result *out);

#endif
