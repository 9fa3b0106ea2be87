/*
 * policy_limits.c: the rate limits of a policy step: which rules apply,
 * counting them (one store call for all), judging them (trace, log, the
 * refusal), and counting them from the session's event loop when it can
 * (cntq.c), which spares a store thread a sleep per round trip.
 */
#include <string.h>
#include <time.h>

#include "cntq.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "policy_int.h"
#include "server.h"

int mx_pol_rule_applies(const mx_rl_rule *r, mx_pol_stage st)
{
    int rcpt_key = r->key == MX_RL_RECIPIENT || r->key == MX_RL_RECIPIENT_DOMAIN;
    switch (st) {
    case MX_POL_CONNECT: return r->count == MX_RL_CONNECTIONS;
    case MX_POL_MAIL: return r->count == MX_RL_MESSAGES && !rcpt_key;
    case MX_POL_RCPT:
        return r->count == MX_RL_RECIPIENTS || (r->count == MX_RL_MESSAGES && rcpt_key);
    case MX_POL_DATA: return r->count == MX_RL_BYTES && !rcpt_key;
    }
    return 0;
}

static const char *const verdict_names[] = {"pass", "over", "unchecked", "store_down"};

/* One rule's result: traced and logged; returns 1 if it refuses, and
 * when it is the first to (first) makes the refusal. */
static int judge_limit(pol_job *j, const mx_rl_rule *r, const char *v, const mx_rl_result *rp,
                       int connect, int first)
{
    const mx_rl_result res = *rp;
    mx_trace_rule(j->trace, mx_pol_stage_names[j->stage], r->name, mx_rl_key_name(r->key),
                  mx_rl_count_name(r->count), v, res.before, res.after, r->limit,
                  res.local ? "counted on this node only (store down)"
                            : verdict_names[res.verdict]);
    int level = res.verdict == MX_RL_PASS && !res.local ? MX_LOG_DEBUG : MX_LOG_INFO;
    if (mx_log_enabled(level)) {
        GString *l = mx_log_begin(level, "ratelimit");
        mx_log_kv(l, "sid", j->sid);
        mx_log_kv(l, "trace", j->tid);
        mx_log_kv(l, "rule", r->name);
        mx_log_kv(l, mx_rl_key_name(r->key), v);
        mx_log_kv(l, "count", mx_rl_count_name(r->count));
        mx_log_kvi(l, "before", (int64_t)res.before);
        mx_log_kvi(l, "after", (int64_t)res.after);
        mx_log_kvi(l, "limit", (int64_t)r->limit);
        mx_log_kv(l, "verdict", verdict_names[res.verdict]);
        if (res.local)
            mx_log_kv(l, "store", "down: counted on this node only");
        mx_log_end(l);
    }
    if (res.verdict != MX_RL_OVER && res.verdict != MX_RL_STORE_DOWN)
        return 0;
    if (!first)
        return 1;
    if (res.verdict == MX_RL_OVER) {
        int reject = r->action == MX_RL_REJECT;
        mx_pol_refuse(j,
               connect ? (reject ? MX_R_REP_CONNECT : MX_R_RATE_CONNECT)
                       : (reject ? MX_R_RATE_REJECT : MX_R_RATE_TEMP),
               connect, MX_OUT_REJECTED_RATELIMIT,
               "ratelimit %s %s=%s %s %llu > %llu (retry in %d s)", r->name,
               mx_rl_key_name(r->key), v, mx_rl_count_name(r->count),
               (unsigned long long)res.after, (unsigned long long)r->limit, res.retry_after);
        j->res.ratelimited = 1;
        return 1;
    }
    mx_pol_refuse(j, connect ? MX_R_STORE_DOWN_CONNECT : MX_R_STORE_DOWN, connect, MX_OUT_TEMPFAILED,
           "ratelimit %s: store unavailable and on_store_down = closed", r->name);
    return 1;
}

/* The rules of the step that apply and have a value, with their amounts;
 * collected once, when first needed. */
static void limits_collect(pol_job *j, int64_t now)
{
    if (j->lim_ready)
        return;
    j->lim_ready = 1;
    j->lim_now = now;
    int nr = j->cfg->nrules;
    size_t cap = nr > 0 ? (size_t)nr : 1;
    j->lim_rule = g_new(const mx_rl_rule *, cap);
    j->lim_value = g_new0(char *, cap);
    j->lim_amount = g_new(uint64_t, cap);
    j->lim_res = g_new0(mx_rl_result, cap);
    j->lim_counted = g_new0(int, cap);
    size_t n = 0;
    for (int i = 0; i < nr; i++) {
        const mx_rl_rule *r = &j->cfg->rules[i];
        if (!mx_pol_rule_applies(r, j->stage))
            continue;
        char *v = mx_rl_value(r->key, j->ip, j->helo, j->from, j->rcpt);
        if (!v)
            continue;
        j->lim_rule[n] = r;
        j->lim_value[n] = v;
        j->lim_amount[n++] = j->stage == MX_POL_DATA ? j->amount : 1;
    }
    j->nlim = n;
}

/* What is not counted yet, in one store call (one round trip). */
static void limits_count(pol_job *j)
{
    size_t n = 0, *idx = g_new(size_t, j->nlim ? j->nlim : 1);
    const mx_rl_rule **rules = g_new(const mx_rl_rule *, j->nlim ? j->nlim : 1);
    const char **values = g_new(const char *, j->nlim ? j->nlim : 1);
    uint64_t *amounts = g_new(uint64_t, j->nlim ? j->nlim : 1);
    mx_rl_result *res = g_new(mx_rl_result, j->nlim ? j->nlim : 1);
    for (size_t i = 0; i < j->nlim; i++) {
        if (j->lim_counted[i])
            continue;
        idx[n] = i;
        rules[n] = j->lim_rule[i];
        values[n] = j->lim_value[i];
        amounts[n++] = j->lim_amount[i];
    }
    mx_rl_hit_many(j->p->store, j->p->local, rules, values, amounts, n, j->lim_now, res);
    for (size_t k = 0; k < n; k++) {
        j->lim_res[idx[k]] = res[k];
        j->lim_counted[idx[k]] = 1;
    }
    g_free(idx);
    g_free(rules);
    g_free(values);
    g_free(amounts);
    g_free(res);
}

/* Every rule counted is traced; the first that refuses answers. */
static int limits_judge(pol_job *j)
{
    int connect = j->stage == MX_POL_CONNECT;
    int refused = 0;
    for (size_t i = 0; i < j->nlim; i++)
        refused |= judge_limit(j, j->lim_rule[i], j->lim_value[i], &j->lim_res[i], connect,
                               !refused);
    return refused;
}

void mx_pol_limits_free(pol_job *j)
{
    if (!j->lim_ready)
        return;
    for (size_t i = 0; i < j->nlim; i++)
        g_free(j->lim_value[i]);
    g_free(j->lim_rule);
    g_free(j->lim_value);
    g_free(j->lim_amount);
    g_free(j->lim_res);
    g_free(j->lim_counted);
    j->lim_ready = 0;
    j->nlim = 0;
}

/* Rate limits: every rule of the step counted in one store call (one
 * round trip); returns 1 when one refused, 0 to go on. */
int mx_pol_check_limits(pol_job *j, int64_t now)
{
    limits_collect(j, now);
    if (j->nlim)
        atomic_fetch_add(&j->p->steps_on_thread, 1);
    limits_count(j);
    int refused = limits_judge(j);
    mx_pol_limits_free(j);
    return refused;
}

/* ---- counted from the loop ---- */

int mx_pol_loop_may_count(const pol_job *j)
{
    /* the embedded store counts on a store thread: its sweep runs inside a
     * write, under its lock, which a loop must not wait for */
    if (!j->p->memcached || j->allowed ||
        (j->stage == MX_POL_CONNECT && j->cfg->cluster_client_concurrency > 0))
        return 0;
    int any = 0;
    for (int i = 0; i < j->cfg->nrules; i++) {
        const mx_rl_rule *r = &j->cfg->rules[i];
        if (!mx_pol_rule_applies(r, j->stage))
            continue;
        /* a sliding window also reads the previous one: a store thread's */
        if (r->algorithm != MX_RL_FIXED)
            return 0;
        any = 1;
    }
    return any;
}

void mx_pol_limits_rest(mx_job *job)
{
    pol_job *j = (pol_job *)job;
    gint64 t0 = g_get_monotonic_time();
    /* collected on the loop already (their window is kept), or now */
    mx_pol_check_limits(j, (int64_t)time(NULL));
    mx_metrics_observe(MX_HIST_STORE, (double)(g_get_monotonic_time() - t0) / 1e6);
}

static void loop_counted(void *ctx, const mx_cnt_rc *rc, const uint64_t *val)
{
    pol_job *j = ctx;
    int rest = 0;
    for (size_t i = 0; i < j->nlim; i++) {
        switch (rc[i]) {
        case MX_CNT_OK:
            mx_rl_judge_counted(j->lim_rule[i], j->lim_amount[i], j->lim_now, val[i],
                                &j->lim_res[i]);
            j->lim_counted[i] = 1;
            break;
        case MX_CNT_FAILED: /* as when a store thread's call times out */
            mx_rl_store_down(j->p->local, j->lim_rule[i], j->lim_value[i], j->lim_amount[i],
                             j->lim_now, &j->lim_res[i]);
            j->lim_counted[i] = 1;
            break;
        case MX_CNT_ABSENT: /* a new window: created on a store thread */
        case MX_CNT_RETRY: rest = 1; break;
        }
    }
    if (!rest) { /* else the store thread's part is what is timed and counted */
        mx_metrics_observe(MX_HIST_STORE, (double)(g_get_monotonic_time() - j->lim_t0) / 1e6);
        atomic_fetch_add(&j->p->steps_on_loop, 1);
    }
    if (rest) {
        j->job.work = mx_pol_limits_rest;
        j->job.done = mx_pol_done;
        mx_session *s = j->s;
        if (mx_offload_submit(s->w->srv->offload, &s->w->port, &j->job) == MX_OK)
            return;
        /* the store pool is saturated: as if the store were down */
        for (size_t i = 0; i < j->nlim; i++)
            if (!j->lim_counted[i])
                mx_rl_store_down(j->p->local, j->lim_rule[i], j->lim_value[i], j->lim_amount[i],
                                 j->lim_now, &j->lim_res[i]);
    }
    limits_judge(j);
    mx_pol_limits_free(j);
    mx_pol_done(&j->job);
}

int mx_pol_limits_on_loop(pol_job *j, int64_t now)
{
    mx_worker *w = j->s->w;
    if (!w->cq_tried) {
        w->cq_tried = 1;
        w->cq = mx_cntq_new(w->loop, j->p->store, w->srv->offload, &w->port);
    }
    if (!w->cq)
        return -1;
    limits_collect(j, now);
    if (j->nlim == 0)
        return -1;
    for (size_t i = 0; i < j->nlim; i++)
        if (j->lim_amount[i] == 0) /* a look, not a count: a store thread's */
            return -1;
    char **keys = g_new0(char *, j->nlim);
    for (size_t i = 0; i < j->nlim; i++)
        keys[i] = mx_rl_counter_now(j->lim_rule[i], j->lim_value[i], j->lim_now);
    j->lim_t0 = g_get_monotonic_time();
    int rc = mx_cntq_incr(w->cq, (const char *const *)keys, j->lim_amount, j->nlim, loop_counted, j);
    for (size_t i = 0; i < j->nlim; i++)
        g_free(keys[i]);
    g_free(keys);
    return rc;
}
