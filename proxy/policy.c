/*
 * policy.c: see policy.h.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "policy.h"
#include "account.h"
#include "metrics.h"
#include "trace.h"
#include "ratelimit.h"
#include "reputation.h"
#include "session_int.h"
#include "policy_int.h"

typedef struct pending_trace {
    char *key;
    GBytes *rec;
    int ttl;
} pending_trace;

#define TRACES_PENDING_MAX 20000

static void pending_trace_free(gpointer p)
{
    pending_trace *t = p;
    g_free(t->key);
    g_bytes_unref(t->rec);
    g_free(t);
}

static void store_log(int level, const char *event, const char *msg)
{
    mx_log_msg(level, event, "%s", msg);
}

static int read_key_file(const char *path, unsigned char *key, size_t *len, char **err)
{
    gchar *text = NULL;
    gsize n = 0;
    GError *ge = NULL;
    if (!g_file_get_contents(path, &text, &n, &ge)) {
        *err = g_strdup_printf("cluster.key_file: %s", ge->message);
        g_error_free(ge);
        return -1;
    }
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    if (n < 16 || n > 64) {
        *err = g_strdup_printf("cluster.key_file: %s holds %zu bytes; the key must be 16 to 64 "
                               "(e.g. openssl rand -hex 32 > FILE)", path, (size_t)n);
        g_free(text);
        return -1;
    }
    memcpy(key, text, n);
    *len = n;
    memset(text, 0, n);
    g_free(text);
    return 0;
}

mx_policy *mx_policy_new(const mx_config *cfg, char **err)
{
    mx_policy *p = g_new0(mx_policy, 1);
    g_mutex_init(&p->lock);
    g_cond_init(&p->cond);
    p->decay = cfg->rep_decay;
    p->history = cfg->rep_history;
    p->report_ttl = cfg->report_days * 86400;
    p->tally = mx_report_tally_new();
    g_mutex_init(&p->trace_lock);
    p->traces = g_ptr_array_new_with_free_func(pending_trace_free);
    p->poll_ms = cfg->cluster_generation_poll;
    p->rep_enabled = cfg->rep_enabled;
    p->local = mx_store_embedded_new(NULL);
    if (*cfg->cluster_memcached) {
        unsigned char key[64];
        size_t keylen = 0;
        if (read_key_file(cfg->cluster_key_file, key, &keylen, err) < 0) {
            mx_policy_free(p);
            return NULL;
        }
        mx_memcached_conf mc = {
            .servers = cfg->cluster_memcached,
            .key = key,
            .keylen = keylen,
            .timeout_ms = cfg->cluster_timeout,
            .dead_timeout = cfg->cluster_dead_timeout,
            .breaker_failures = cfg->cluster_breaker_failures,
            .breaker_cooldown_ms = cfg->cluster_breaker_cooldown,
            .log = store_log,
        };
        p->store = mx_store_memcached_new(&mc, err);
        memset(key, 0, sizeof(key));
        if (!p->store) {
            mx_policy_free(p);
            return NULL;
        }
        p->memcached = 1;
    } else {
        p->store = mx_store_embedded_new(NULL);
        mx_store_embedded_set_limit(p->store, (size_t)cfg->cluster_embedded_max);
    }
    p->cache = mx_rep_cache_new(cfg->cluster_cache_ttl);
    return p;
}

void mx_policy_account(mx_policy *p, int64_t now, mx_direction d, mx_outcome o, int unit,
                       uint64_t n)
{
    mx_report_tally_add(p->tally, now, d, o, unit, n);
}

void mx_policy_keep_trace(mx_policy *p, const char *id, GBytes *record, int ttl)
{
    g_mutex_lock(&p->trace_lock);
    if (p->traces->len < TRACES_PENDING_MAX) {
        pending_trace *t = g_new0(pending_trace, 1);
        t->key = mx_trace_key(id);
        t->rec = g_bytes_ref(record);
        t->ttl = ttl;
        g_ptr_array_add(p->traces, t);
    } else {
        atomic_fetch_add(&p->traces_dropped, 1);
    }
    g_mutex_unlock(&p->trace_lock);
}

static void flush_traces(mx_policy *p)
{
    g_mutex_lock(&p->trace_lock);
    GPtrArray *batch = p->traces;
    p->traces = g_ptr_array_new_with_free_func(pending_trace_free);
    g_mutex_unlock(&p->trace_lock);
    if (batch->len) {
        mx_store_write *w = g_new0(mx_store_write, batch->len);
        mx_store_rc *rcs = g_new(mx_store_rc, batch->len);
        for (guint i = 0; i < batch->len; i++) {
            pending_trace *t = batch->pdata[i];
            w[i] = (mx_store_write){.op = MX_STORE_W_SET, .key = t->key, .val = t->rec,
                                    .ttl = t->ttl};
        }
        mx_store_write_many(p->store, w, batch->len, rcs);
        for (guint i = 0; i < batch->len; i++)
            if (rcs[i] != MX_STORE_OK)
                atomic_fetch_add(&p->traces_dropped, 1);
        g_free(w);
        g_free(rcs);
    }
    g_ptr_array_free(batch, TRUE);
}

/* What nodes write in batches, about once a second: reputation credits
 * and history, report counters, decision records. */
static void flush_all(mx_policy *p)
{
    mx_rep_cache_flush(p->cache, p->store, (int64_t)time(NULL), p->decay, p->history);
    uint64_t lost = mx_report_tally_flush(p->tally, p->store, p->report_ttl);
    if (lost) {
        atomic_fetch_add(&p->counts_lost, lost);
        mx_log_msg(MX_LOG_WARNING, "report_counts_lost",
                   "%llu report counts could not be written to the store",
                   (unsigned long long)lost);
    }
    flush_traces(p);
}

static gpointer poller(gpointer data)
{
    mx_policy *p = data;
    g_mutex_lock(&p->lock);
    while (!p->stop) {
        gint64 until = g_get_monotonic_time() + (gint64)p->poll_ms * 1000;
        while (!p->stop && g_cond_wait_until(&p->cond, &p->lock, until))
            ;
        if (p->stop)
            break;
        g_mutex_unlock(&p->lock);
        if (mx_rep_cache_poll(p->cache, p->store))
            mx_log_msg(MX_LOG_DEBUG, "reputation_generation", "feed changed; cache emptied");
        flush_all(p);
        g_mutex_lock(&p->lock);
    }
    g_mutex_unlock(&p->lock);
    return NULL;
}

void mx_policy_start(mx_policy *p)
{
    p->thread = g_thread_new("mx-policy", poller, p);
}

void mx_policy_free(mx_policy *p)
{
    if (!p)
        return;
    if (p->thread) {
        g_mutex_lock(&p->lock);
        p->stop = 1;
        g_cond_signal(&p->cond);
        g_mutex_unlock(&p->lock);
        g_thread_join(p->thread);
        flush_all(p);
    }
    if (p->store)
        mx_store_free(p->store);
    if (p->local)
        mx_store_free(p->local);
    mx_rep_cache_free(p->cache);
    mx_report_tally_free(p->tally);
    if (p->traces)
        g_ptr_array_free(p->traces, TRUE);
    g_mutex_clear(&p->trace_lock);
    g_mutex_clear(&p->lock);
    g_cond_clear(&p->cond);
    g_free(p);
}

mx_store *mx_policy_store(mx_policy *p) { return p->store; }

/* ---- checks ---- */

const char *const mx_pol_stage_names[] = {"connect", "mail", "rcpt", "data"};

void mx_pol_refuse(pol_job *j, mx_reply_id id, int close, mx_outcome o, const char *fmt, ...)
{
    j->res.refuse = 1;
    j->res.close = close;
    j->res.reply = id;
    j->res.outcome = o;
    j->res.arg[0] = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->res.why, sizeof(j->res.why), fmt, ap);
    va_end(ap);
}

static int needs_store(pol_job *j);

typedef struct rep_read {
    mx_rep_kind kind;
    char *value;
} rep_read;

/* Reputation: returns 1 when decided (refused or allow-listed), 0 to go
 * on, -1 when it needs the store and may not block. */
static int check_reputation(pol_job *j, int may_block, int64_t now)
{
    rep_read r[6];
    int n = 0;
    char *nets[2] = {NULL, NULL};
    if (j->ip) {
        r[n++] = (rep_read){MX_REP_IP, j->ip};
        int k = mx_rep_networks(j->ip, nets);
        for (int i = 0; i < k; i++)
            r[n++] = (rep_read){MX_REP_NET, nets[i]};
    }
    char *domain = NULL;
    char *sender = NULL;
    if (j->stage == MX_POL_MAIL && j->from && *j->from) {
        /* records are kept lowercase (mx_rep_normalize) */
        sender = g_utf8_strdown(j->from, -1);
        r[n++] = (rep_read){MX_REP_SENDER, sender};
        const char *at = strrchr(j->from, '@');
        if (at && at[1]) {
            domain = g_utf8_strdown(at + 1, -1);
            r[n++] = (rep_read){MX_REP_DOMAIN, domain};
        }
    }
    mx_rep got[6];
    int from_cache[6];
    int rc = 0;
    if (!may_block) {
        for (int i = 0; i < n; i++) {
            if (!mx_rep_cache_peek(j->p->cache, r[i].kind, r[i].value, now, &got[i])) {
                rc = -1;
                goto out;
            }
            from_cache[i] = 1;
        }
    } else {
        /* what the cache lacks, in one read */
        mx_rep_kind kinds[6] = {0};
        const char *values[6] = {NULL};
        mx_store_rc rcs[6];
        for (int i = 0; i < n; i++) {
            kinds[i] = r[i].kind;
            values[i] = r[i].value;
        }
        mx_rep_lookup_many(j->p->cache, j->p->store, kinds, values, (size_t)n, now, j->p->decay,
                           got, from_cache, rcs);
        for (int i = 0; i < n; i++) {
            if (rcs[i] == MX_STORE_OK)
                continue;
            /* Reputation is advice: with the store down, a rule's own
             * on_store_down decides; here we go on without it. */
            mx_log_msg(MX_LOG_DEBUG, "reputation_unavailable", "sid=%s trace=%s %s:%s", j->sid, j->tid,
                       mx_rep_kind_name(r[i].kind), r[i].value);
            memset(&got[i], 0, sizeof(got[i]));
            g_strlcpy(got[i].source, "store unavailable", sizeof(got[i].source));
            got[i].read_at = now;
        }
    }
    for (int i = 0; i < n; i++) {
        if (got[i].allow) {
            j->allowed = 1;
            rc = 1;
            goto out;
        }
    }
    int connect = j->stage == MX_POL_CONNECT;
    for (int i = 0; i < n; i++) {
        int32_t total = mx_rep_total(&got[i]);
        const char *kind = mx_rep_kind_name(r[i].kind);
        if (got[i].block) {
            mx_pol_refuse(j, connect ? MX_R_REP_CONNECT : MX_R_REP_MAIL, connect,
                   MX_OUT_REJECTED_REPUTATION, "reputation %s:%s blocked (%s%s%s)", kind, r[i].value,
                   got[i].source[0] ? got[i].source : "feed", got[i].reason[0] ? ": " : "",
                   got[i].reason);
            rc = 1;
            goto out;
        }
        int limit = connect ? j->cfg->rep_connect_reject : j->cfg->rep_mail_reject;
        if (total <= limit) {
            mx_pol_refuse(j, connect ? MX_R_REP_CONNECT : MX_R_REP_MAIL, connect,
                   MX_OUT_REJECTED_REPUTATION, "reputation %s:%s score %d <= %d", kind, r[i].value, total, limit);
            rc = 1;
            goto out;
        }
        if (!connect && total <= j->cfg->rep_tempfail) {
            mx_pol_refuse(j, MX_R_REP_TEMP, 0, MX_OUT_REJECTED_REPUTATION, "reputation %s:%s score %d <= %d", kind, r[i].value,
                   total, j->cfg->rep_tempfail);
            rc = 1;
            goto out;
        }
    }
out:
    /* every record read, into the decision record (once: a check the
     * loop cannot finish runs again on a store thread) */
    for (int i = 0; rc != -1 && i < n && (may_block || rc == 1 || j->loop_counts || !needs_store(j));
         i++) {
        g_autofree char *key = g_strdup_printf("%s:%s", mx_rep_kind_name(r[i].kind), r[i].value);
        g_autofree char *src = g_strdup_printf("%s%s%s", from_cache[i] ? "cache" : "store",
                                               got[i].source[0] ? ", set by " : "",
                                               got[i].source);
        mx_trace_rep(j->trace, mx_pol_stage_names[j->stage], key, got[i].found, mx_rep_total(&got[i]),
                     got[i].block, got[i].allow, src,
                     (uint64_t)(now > got[i].read_at ? now - got[i].read_at : 0));
    }
    g_free(nets[0]);
    g_free(nets[1]);
    g_free(domain);
    g_free(sender);
    return rc;
}


/* ---- concurrency leases ---- */

static char *lease_key(const char *ip, int64_t period)
{
    return g_strdup_printf("conc:%s:%lld", ip, (long long)period);
}

/*
 * Concurrent sessions per client IP, across the cluster: each session adds
 * itself to the counter of the current lease period and moves itself to
 * the next period's counter when that starts (mx_policy_renew); the count
 * is this period's counter plus the previous one's (sessions not renewed
 * yet). A node that dies stops renewing and releasing: its sessions stay
 * counted until the period after the one they last renewed in has passed,
 * at most two lease periods.
 */
static void lease_acquire(pol_job *j, int64_t now)
{
    int period_len = j->cfg->cluster_lease_period;
    int64_t p = now / period_len;
    uint64_t cur = 0, prev = 0;
    char *k = lease_key(j->ip, p);
    if (mx_store_incr(j->p->store, k, 1, 3 * period_len, &cur) != MX_STORE_OK) {
        /* the store is down: no lease, and no refusal on its account */
        g_free(k);
        return;
    }
    char *kp = lease_key(j->ip, p - 1);
    if (mx_store_incr(j->p->store, kp, 0, 3 * period_len, &prev) != MX_STORE_OK)
        prev = 0;
    g_free(kp);
    if (cur + prev > (uint64_t)j->cfg->cluster_client_concurrency) {
        mx_store_decr(j->p->store, k, 1);
        mx_pol_refuse(j, MX_R_CONCURRENCY, 1, MX_OUT_REJECTED_RATELIMIT, "concurrency ip %s: %llu sessions > %d", j->ip,
               (unsigned long long)(cur + prev), j->cfg->cluster_client_concurrency);
    } else {
        j->lease = p;
    }
    g_free(k);
}

typedef struct lease_job {
    mx_job job;
    mx_policy *p;
    char *ip;
    int64_t from, to; /* decrement from (if >= 0), increment to (if >= 0) */
    int ttl;
} lease_job;

static void lease_work(mx_job *job)
{
    lease_job *l = (lease_job *)job;
    if (l->to >= 0) {
        char *k = lease_key(l->ip, l->to);
        mx_store_incr(l->p->store, k, 1, l->ttl, NULL);
        g_free(k);
    }
    if (l->from >= 0) {
        char *k = lease_key(l->ip, l->from);
        mx_store_decr(l->p->store, k, 1);
        g_free(k);
    }
}

static void lease_done(mx_job *job)
{
    lease_job *l = (lease_job *)job;
    g_free(l->ip);
    g_free(l);
}

static void lease_move(mx_session *s, int64_t from, int64_t to)
{
    lease_job *l = g_new0(lease_job, 1);
    l->p = s->w->srv->policy;
    l->ip = g_strdup(s->addr);
    l->from = from;
    l->to = to;
    l->ttl = 3 * s->cfg->cluster_lease_period;
    l->job.work = lease_work;
    l->job.done = lease_done;
    if (mx_offload_submit(s->w->srv->offload, &s->w->port, &l->job) != MX_OK)
        lease_done(&l->job); /* it expires with its period instead */
}

void mx_policy_release(mx_session *s)
{
    if (s->lease >= 0 && s->w->srv->policy)
        lease_move(s, s->lease, -1);
    s->lease = -1;
}

void mx_policy_renew(mx_worker *w)
{
    for (GList *l = w->sessions.head; l; l = l->next) {
        mx_session *s = l->data;
        if (s->lease < 0 || s->phase == MX_PHASE_CLOSED)
            continue;
        int64_t p = (int64_t)time(NULL) / s->cfg->cluster_lease_period;
        if (p > s->lease) {
            lease_move(s, s->lease, p);
            s->lease = p;
        }
    }
}

static int needs_store(pol_job *j)
{
    if (j->allowed)
        return 0;
    if (j->stage == MX_POL_CONNECT && j->cfg->cluster_client_concurrency > 0)
        return 1;
    for (int i = 0; i < j->cfg->nrules; i++)
        if (mx_pol_rule_applies(&j->cfg->rules[i], j->stage))
            return 1;
    return 0;
}

static void evaluate(pol_job *j, int64_t now)
{
    if (j->p->rep_enabled && j->cfg->rep_enabled && !j->allowed &&
        (j->stage == MX_POL_CONNECT || j->stage == MX_POL_MAIL)) {
        if (check_reputation(j, 1, now) == 1 && j->res.refuse)
            return;
    }
    if (!j->allowed && !mx_pol_check_limits(j, now) && j->stage == MX_POL_CONNECT &&
        j->cfg->cluster_client_concurrency > 0)
        lease_acquire(j, now);
}

static void pol_work(mx_job *job)
{
    pol_job *j = (pol_job *)job;
    gint64 t0 = g_get_monotonic_time();
    evaluate(j, (int64_t)time(NULL));
    mx_metrics_observe(MX_HIST_STORE, (double)(g_get_monotonic_time() - t0) / 1e6);
}

static void job_free(pol_job *j)
{
    g_free(j->ip);
    g_free(j->helo);
    g_free(j->from);
    g_free(j->rcpt);
    mx_config_unref(j->cfg);
    mx_trace_unref(j->trace);
    mx_pol_limits_free(j);
    g_free(j);
}

static void deliver(pol_job *j)
{
    mx_session *s = j->s;
    if (s->phase == MX_PHASE_CLOSED)
        return;
    s->policy_wait = 0;
    if (j->allowed)
        s->pol_allowed = 1;
    if (j->lease >= 0)
        s->lease = j->lease;
    if (j->stage == MX_POL_CONNECT) {
        j->cont(s, &j->res); /* sends the banner and goes on, or closes */
        return;
    }
    /* The session waited in MX_PHASE_BACKEND; pick up where it stopped,
     * as after a backend reply. */
    mx_session_to_cmd_phase(s);
    j->cont(s, &j->res);
    if (s->phase == MX_PHASE_BACKEND)
        mx_session_flush(s);
    else if (s->phase != MX_PHASE_CLOSED)
        mx_session_process(s);
}

void mx_pol_done(mx_job *job)
{
    pol_job *j = (pol_job *)job;
    mx_session *s = j->s;
    if (s->phase == MX_PHASE_CLOSED && j->lease >= 0) {
        s->lease = j->lease; /* gone while we counted it: give it back */
        mx_policy_release(s);
    }
    deliver(j);
    mx_session_unref(s);
    job_free(j);
}

void mx_policy_check(mx_session *s, mx_pol_stage stage, const char *value, uint64_t amount,
                     mx_pol_cont cont)
{
    mx_server *srv = s->w->srv;
    pol_job *j = g_new0(pol_job, 1);
    j->p = srv->policy;
    j->cfg = mx_config_ref(s->cfg);
    j->stage = stage;
    j->ip = g_strdup(s->addr);
    j->helo = g_strdup(s->helo);
    j->from = s->txn.from ? g_strdup(s->txn.from) : NULL;
    j->rcpt = value ? g_strdup(value) : NULL;
    j->amount = amount;
    j->allowed = s->pol_allowed;
    j->lease = -1;
    j->cont = cont;
    g_strlcpy(j->sid, s->sid, sizeof(j->sid));
    g_strlcpy(j->tid, mx_acct_id(s), sizeof(j->tid));
    j->trace = mx_trace_ref(mx_acct_trace(s));

    /* On the loop when the cache decides and no counter has to move. */
    int64_t now = (int64_t)time(NULL);
    int rep = j->p->rep_enabled && j->cfg->rep_enabled && !j->allowed &&
              (stage == MX_POL_CONNECT || stage == MX_POL_MAIL);
    /* Counters the loop can move itself: then the reputation read from the
     * cache is final here (and traced here), not read again on a store
     * thread. */
    j->loop_counts = mx_pol_loop_may_count(j);
    int decided = 0, rep_done = !rep;
    if (rep) {
        int r = check_reputation(j, 0, now);
        decided = r == 1;
        rep_done = r == 0;
        if (r == 0 && !needs_store(j))
            decided = 1;
    } else if (!needs_store(j)) {
        decided = 1;
    }
    if (decided) {
        s->pol_allowed |= j->allowed;
        cont(s, &j->res);
        job_free(j);
        return;
    }
    memset(&j->res, 0, sizeof(j->res));
    j->allowed = s->pol_allowed;
    j->s = mx_session_ref(s);
    j->job.work = pol_work;
    j->job.done = mx_pol_done;
    s->policy_wait = 1;
    if (j->loop_counts && rep_done) {
        if (mx_pol_limits_on_loop(j, now) == 0)
            return; /* ends in mx_pol_done, on this loop */
        j->job.work = mx_pol_limits_rest; /* the reputation is done */
    }
    if (mx_offload_submit(srv->offload, &s->w->port, &j->job) != MX_OK) {
        /* The store pool is saturated: the same as a store that is down. */
        s->policy_wait = 0;
        mx_pol_refuse(j, stage == MX_POL_CONNECT ? MX_R_STORE_DOWN_CONNECT : MX_R_STORE_DOWN,
               stage == MX_POL_CONNECT, MX_OUT_TEMPFAILED, "policy queue full");
        mx_session_unref(s);
        cont(s, &j->res);
        job_free(j);
    }
}

/* ---- feedback ---- */

typedef struct fb_job {
    mx_job job;
    mx_policy *p;
    mx_rep_kind kind[3];
    char *value[3];
    int n;
    int points;
} fb_job;

static void fb_work(mx_job *job)
{
    fb_job *f = (fb_job *)job;
    int64_t now = (int64_t)time(NULL);
    for (int i = 0; i < f->n; i++) {
        mx_rep_points(f->p->store, f->kind[i], f->value[i], f->points, now, f->p->decay);
        mx_rep_cache_forget(f->p->cache, f->kind[i], f->value[i]);
    }
}

static void fb_done(mx_job *job)
{
    fb_job *f = (fb_job *)job;
    for (int i = 0; i < f->n; i++)
        g_free(f->value[i]);
    g_free(f);
}

void mx_policy_feedback(mx_session *s, mx_feedback what)
{
    mx_policy *p = s->w->srv->policy;
    if (!p || !p->rep_enabled || !s->cfg->rep_enabled)
        return;
    int points = 0, with_sender = 0;
    switch (what) {
    case MX_FB_MALWARE: points = -s->cfg->rep_penalty_malware; with_sender = 1; break;
    case MX_FB_RATELIMIT: points = -s->cfg->rep_penalty_ratelimit; break;
    case MX_FB_PREGREET: points = -s->cfg->rep_penalty_pregreet; break;
    case MX_FB_UNKNOWN_RCPT: points = -s->cfg->rep_penalty_unknown_rcpt; break;
    case MX_FB_DELIVERED: points = s->cfg->rep_credit_delivered; with_sender = 1; break;
    }
    fb_job *f = g_new0(fb_job, 1);
    f->p = p;
    f->points = points;
    f->kind[f->n] = MX_REP_IP;
    f->value[f->n++] = g_strdup(s->addr);
    if (with_sender && s->txn.from && *s->txn.from) {
        f->kind[f->n] = MX_REP_SENDER;
        f->value[f->n++] = g_utf8_strdown(s->txn.from, -1);
        const char *at = strrchr(s->txn.from, '@');
        if (at && at[1]) {
            f->kind[f->n] = MX_REP_DOMAIN;
            f->value[f->n++] = g_utf8_strdown(at + 1, -1);
        }
    }
    /* credits and history: batched, written by the poller */
    int delivered = what == MX_FB_DELIVERED;
    int64_t now = (int64_t)time(NULL);
    for (int i = 0; i < f->n; i++)
        mx_rep_cache_note(p->cache, f->kind[i], f->value[i], points > 0 ? points : 0, delivered,
                          !delivered, now);
    if (points >= 0) {
        fb_done(&f->job);
        return;
    }
    /* penalties: at once */
    f->job.work = fb_work;
    f->job.done = fb_done;
    if (mx_offload_submit(s->w->srv->offload, &s->w->port, &f->job) != MX_OK)
        fb_done(&f->job); /* a lost penalty under overload: better than waiting */
}

void mx_policy_metrics(mx_policy *p, GString *out)
{
    const mx_store_stats *st = p->store->ops->stats ? p->store->ops->stats(p->store) : NULL;
    g_string_append_printf(out,
                           "# HELP mxgate_store_info The cluster store in use.\n"
                           "# TYPE mxgate_store_info gauge\n"
                           "mxgate_store_info{backend=\"%s\"} 1\n",
                           p->store->ops->name);
    if (st) {
        g_string_append_printf(
            out,
            "# HELP mxgate_store_errors_total Store calls that failed at the server.\n"
            "# TYPE mxgate_store_errors_total counter\nmxgate_store_errors_total %llu\n"
            "# HELP mxgate_store_fast_failed_total Store calls refused by an open breaker.\n"
            "# TYPE mxgate_store_fast_failed_total counter\nmxgate_store_fast_failed_total %llu\n"
            "# HELP mxgate_store_bad_records_total Records that failed their HMAC and were ignored.\n"
            "# TYPE mxgate_store_bad_records_total counter\nmxgate_store_bad_records_total %llu\n"
            "# HELP mxgate_store_round_trips_total Waits for replies from the store's servers "
            "(one pipelined exchange with several servers at once counts once).\n"
            "# TYPE mxgate_store_round_trips_total counter\nmxgate_store_round_trips_total %llu\n"
            "# HELP mxgate_store_commands_total Commands sent to the store's servers.\n"
            "# TYPE mxgate_store_commands_total counter\nmxgate_store_commands_total %llu\n"
            "# HELP mxgate_store_combined_exchanges_total Counter exchanges that carried the "
            "counters of several sessions.\n"
            "# TYPE mxgate_store_combined_exchanges_total counter\n"
            "mxgate_store_combined_exchanges_total %llu\n",
            (unsigned long long)atomic_load(&st->errors),
            (unsigned long long)atomic_load(&st->fast_failed),
            (unsigned long long)atomic_load(&st->bad_records),
            (unsigned long long)atomic_load(&st->round_trips),
            (unsigned long long)atomic_load(&st->commands),
            (unsigned long long)atomic_load(&st->combined));
    }
    g_string_append_printf(
        out,
        "# HELP mxgate_ratelimit_steps_total Policy steps whose rate-limit counters were moved "
        "from the session's event loop, or on a store thread (a new window, a sliding rule, a "
        "lease, a server in trouble).\n"
        "# TYPE mxgate_ratelimit_steps_total counter\n"
        "mxgate_ratelimit_steps_total{counted=\"loop\"} %llu\n"
        "mxgate_ratelimit_steps_total{counted=\"store_thread\"} %llu\n",
        (unsigned long long)atomic_load(&p->steps_on_loop),
        (unsigned long long)atomic_load(&p->steps_on_thread));
    g_string_append_printf(
        out,
        "# HELP mxgate_trace_records_dropped_total Decision records not kept: too many waiting, "
        "or the store refused them.\n"
        "# TYPE mxgate_trace_records_dropped_total counter\n"
        "mxgate_trace_records_dropped_total %llu\n"
        "# HELP mxgate_report_counts_lost_total Report counts the store did not take.\n"
        "# TYPE mxgate_report_counts_lost_total counter\n"
        "mxgate_report_counts_lost_total %llu\n",
        (unsigned long long)atomic_load(&p->traces_dropped),
        (unsigned long long)atomic_load(&p->counts_lost));
    if (!p->memcached) {
        uint64_t evicted = 0;
        size_t bytes = mx_store_embedded_bytes(p->store, &evicted);
        g_string_append_printf(
            out,
            "# HELP mxgate_store_embedded_bytes What the embedded store holds (estimate).\n"
            "# TYPE mxgate_store_embedded_bytes gauge\nmxgate_store_embedded_bytes %zu\n"
            "# HELP mxgate_store_embedded_evicted_total Entries dropped at cluster.embedded_max_size.\n"
            "# TYPE mxgate_store_embedded_evicted_total counter\n"
            "mxgate_store_embedded_evicted_total %llu\n",
            bytes, (unsigned long long)evicted);
    }
    if (p->store->ops->server_state) {
        g_string_append(out, "# HELP mxgate_store_breaker_state 0 closed, 1 open, 2 half-open.\n"
                             "# TYPE mxgate_store_breaker_state gauge\n");
        char name[128];
        for (int i = 0;; i++) {
            int state = p->store->ops->server_state(p->store, i, name, sizeof(name));
            if (state < 0)
                break;
            g_string_append_printf(out, "mxgate_store_breaker_state{server=\"%s\"} %d\n", name,
                                   state);
        }
    }
}
