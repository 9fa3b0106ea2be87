/*
 * policy.h: reputation and rate limits for a session, through the cluster
 * store.
 *
 * Owns: the node's store (memcached, or the embedded one when
 * cluster.memcached is empty), the per-node fallback store for rules with
 * on_store_down = local, the reputation cache and the thread that polls
 * the feed generation and writes batched credits.
 *
 * A check runs at four points of a session: connect (before the banner),
 * MAIL, each RCPT, and the end of the message (byte counts). It decides
 * from the cache on the loop when it can, and otherwise runs on the store
 * pool; the session waits, reading but not parsing, as for the backend.
 * Feedback (penalties, credits) never makes a session wait.
 */
#ifndef MX_POLICY_H
#define MX_POLICY_H

#include "config.h"
#include "replies.h"
#include "report.h"
#include "store.h"

typedef struct mx_policy mx_policy;
struct mx_session;
struct mx_worker;

typedef enum { MX_POL_CONNECT, MX_POL_MAIL, MX_POL_RCPT, MX_POL_DATA } mx_pol_stage;

typedef struct mx_pol_result {
    int refuse;            /* 0: go on */
    int close;             /* refuse and end the session (at connect) */
    mx_reply_id reply;
    char arg[128];         /* the reply's %s */
    char why[256];         /* for the log: the rule or record that decided */
    int ratelimited;       /* refused by a rate limit */
    mx_outcome outcome;    /* refused: in the report, why */
} mx_pol_result;

typedef void (*mx_pol_cont)(struct mx_session *s, const mx_pol_result *r);

/* The node's policy state; NULL with *err set (bad key file, bad server
 * list). */
mx_policy *mx_policy_new(const mx_config *cfg, char **err);
void mx_policy_start(mx_policy *p); /* the generation poller */
void mx_policy_free(mx_policy *p);

mx_store *mx_policy_store(mx_policy *p);

/* Count n of unit for the report (batched: written by the poller). */
void mx_policy_account(mx_policy *p, int64_t now, mx_direction d, mx_outcome o, int unit,
                       uint64_t n);

/* Keep a transaction's decision record under "trace:<id>" for ttl
 * seconds (batched: written by the poller; dropped, and counted, when
 * more than a few thousand wait). */
void mx_policy_keep_trace(mx_policy *p, const char *id, GBytes *record, int ttl);

/* Run the checks of stage for session s; cont runs on s's loop with the
 * verdict (maybe before this returns, when the cache decides). value: the
 * recipient at RCPT; amount: bytes at DATA. */
void mx_policy_check(struct mx_session *s, mx_pol_stage stage, const char *value,
                     uint64_t amount, mx_pol_cont cont);

typedef enum {
    MX_FB_MALWARE,
    MX_FB_RATELIMIT,
    MX_FB_PREGREET,
    MX_FB_UNKNOWN_RCPT,
    MX_FB_DELIVERED,
} mx_feedback;

/* Automatic reputation feedback about the session's client (and sender,
 * when known). Never blocks, never waits. */
void mx_policy_feedback(struct mx_session *s, mx_feedback what);

/* Concurrency leases (cluster.client_concurrency): give the session's
 * back when it closes; renew the leases of a worker's sessions whose
 * period has passed (call every few seconds). */
void mx_policy_release(struct mx_session *s);
void mx_policy_renew(struct mx_worker *w);

/* For /metrics: the store's name, stats and breaker states. */
void mx_policy_metrics(mx_policy *p, GString *out);

#endif
