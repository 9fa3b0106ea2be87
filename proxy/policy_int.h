/*
 * policy_int.h: what policy.c and policy_limits.c share: the node's policy
 * state and one check's job.
 */
#ifndef MX_POLICY_INT_H
#define MX_POLICY_INT_H

#include <stdatomic.h>

#include "policy.h"
#include "ratelimit.h"
#include "report.h"
#include "reputation.h"
#include "session_int.h"
#include "trace.h"

struct mx_policy {
    mx_store *store;    /* the cluster store */
    mx_store *local;    /* per-node fallback for on_store_down = local */
    mx_rep_cache *cache;
    int memcached;
    int decay;          /* reputation.decay at start (counter keys depend on it) */
    int history;        /* reputation.history at start */
    int poll_ms;
    int rep_enabled;
    int report_ttl;     /* report.days at start, in seconds */
    mx_report_tally *tally;
    GMutex trace_lock;
    GPtrArray *traces;  /* pending_trace: waiting for the poller */
    atomic_uint_fast64_t traces_dropped, counts_lost;
    /* policy steps whose rate-limit counters moved from the loop, or on a
     * store thread (all or some of them) */
    atomic_uint_fast64_t steps_on_loop, steps_on_thread;
    GThread *thread;
    GMutex lock;
    GCond cond;
    int stop;
};

typedef struct pol_job {
    mx_job job;
    mx_session *s;
    mx_policy *p;
    mx_config *cfg;
    mx_pol_stage stage;
    char *ip, *helo, *from, *rcpt;
    char sid[17];
    char tid[32];       /* the trace id, for log lines */
    mx_trace *trace;    /* the record rules and reads are added to */
    uint64_t amount;
    int64_t lease;      /* out: the concurrency lease period taken; -1 none */
    int allowed;        /* in: already allow-listed; out: allow-listed now */
    mx_pol_cont cont;
    mx_pol_result res;
    /* The rules of the step (policy_limits.c), kept between the event loop
     * and a store thread when the loop counts them: each rule's value,
     * amount and result, and whether it is counted yet. */
    int loop_counts;    /* the loop may count this step's rules (cntq.c) */
    int lim_ready;
    size_t nlim;
    const mx_rl_rule **lim_rule;
    char **lim_value;
    uint64_t *lim_amount;
    mx_rl_result *lim_res;
    int *lim_counted;
    int64_t lim_now;
    gint64 lim_t0;       /* when the loop sent them (us, monotonic) */
} pol_job;

extern const char *const mx_pol_stage_names[];

/* The check refuses: the reply, whether the session ends, the outcome for
 * the report, and why (for the log and the decision record). */
void mx_pol_refuse(pol_job *j, mx_reply_id id, int close, mx_outcome o, const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);
/* The end of a check, on the session's loop (the offload job's done). */
void mx_pol_done(mx_job *job);

/* policy_limits.c */
int mx_pol_rule_applies(const mx_rl_rule *r, mx_pol_stage st);
/* Every rule of the step counted (one store call) and judged; 1 when one
 * refused. On a store thread. */
int mx_pol_check_limits(pol_job *j, int64_t now);
/* The rules of the step counted from the session's loop (cntq.c): 0 when
 * under way (the check ends in mx_pol_done, later, on the loop), -1 when
 * the loop cannot count them: the caller goes to a store thread. */
int mx_pol_limits_on_loop(pol_job *j, int64_t now);
/* A store thread's part of the above: what the loop could not count. */
void mx_pol_limits_rest(mx_job *job);
/* Whether the loop may count this step's rules: memcached, fixed windows
 * only, and no concurrency lease to take. */
int mx_pol_loop_may_count(const pol_job *j);
void mx_pol_limits_free(pol_job *j);

#endif
