/*
 * account.c: what each transaction was and how it ended (see account.h).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "account.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

typedef struct acct_rcpt {
    char *addr;
    int local;       /* its domain is in domains.local */
    int refused;
    mx_outcome outcome;
    char *reply;
} acct_rcpt;

struct mx_acct {
    char id[32];
    mx_trace *trace;
    gint64 started;      /* monotonic us */
    GArray *rcpts;       /* acct_rcpt */
    int mail_refused;    /* refusal is MAIL's */
    int ended;           /* the message got its final reply: refusal is it */
    int refused;         /* refusal holds the last refusal or final reply */
    mx_outcome refusal;
    int last_kept;       /* the last RCPT is in rcpts (the first 1000 are) */
    uint64_t extra[2];   /* RCPTs past those, to remote [0] and local [1]
                            domains: counted with the message's outcome */
};

static void rcpt_clear(gpointer p)
{
    acct_rcpt *r = p;
    g_free(r->addr);
    g_free(r->reply);
}

/* A reply as one line for the record: CRLFs between lines become " / ". */
static char *reply_line(const char *reply)
{
    GString *g = g_string_new(NULL);
    for (const char *p = reply ? reply : ""; *p; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n') {
            if (p[1])
                g_string_append(g, " / ");
            continue;
        }
        g_string_append_c(g, *p);
    }
    return g_string_free(g, FALSE);
}

const char *mx_acct_id(const mx_session *s) { return s->acct ? s->acct->id : s->sid; }

int mx_acct_internal(const mx_session *s)
{
    return mx_config_net_match(s->cfg->internal_nets, s->cfg->ninternal_nets, &s->peer);
}

static mx_trace *trace_new(mx_session *s, const char *id)
{
    mx_trace *t = mx_trace_new(id, s->sid, s->cfg->hostname, (int64_t)time(NULL));
    mx_trace_set(t, MX_TF_CLIENT, s->addr);
    mx_trace_set(t, MX_TF_HELO, s->helo);
    if (s->ssl) {
        g_autofree char *tls =
            g_strdup_printf("%s %s", mx_tls_version(s->ssl), mx_tls_cipher(s->ssl));
        mx_trace_set(t, MX_TF_TLS, tls);
    } else {
        mx_trace_set(t, MX_TF_TLS, "none");
    }
    return t;
}

mx_trace *mx_acct_trace(mx_session *s)
{
    if (s->acct)
        return s->acct->trace;
    if (!s->conn_trace)
        s->conn_trace = trace_new(s, s->sid);
    return s->conn_trace;
}

static mx_direction rcpt_direction(int internal, const acct_rcpt *r)
{
    if (internal)
        return r->local ? MX_DIR_INTERNAL : MX_DIR_OUTBOUND;
    return r->local ? MX_DIR_INBOUND : MX_DIR_RELAY_DENIED;
}

static mx_direction message_direction(int internal, GArray *rcpts)
{
    int any_local = 0, any_remote = 0;
    for (guint i = 0; i < rcpts->len; i++) {
        if (g_array_index(rcpts, acct_rcpt, i).local)
            any_local = 1;
        else
            any_remote = 1;
    }
    if (internal)
        return any_remote ? MX_DIR_OUTBOUND : MX_DIR_INTERNAL;
    return any_local || rcpts->len == 0 ? MX_DIR_INBOUND : MX_DIR_RELAY_DENIED;
}

static int domain_local(const mx_session *s, const char *addr)
{
    const char *at = strrchr(addr, '@');
    return mx_config_domain_is_local(s->cfg, at ? at + 1 : NULL);
}

void mx_acct_open(mx_session *s, const char *from)
{
    mx_acct_close(s);
    mx_acct *a = g_new0(mx_acct, 1);
    snprintf(a->id, sizeof(a->id), "%s.%d", s->sid, ++s->ntxn);
    a->trace = trace_new(s, a->id);
    if (s->conn_trace)
        mx_trace_adopt(a->trace, s->conn_trace); /* what was checked at connect */
    mx_trace_set(a->trace, MX_TF_SENDER, from);
    a->started = g_get_monotonic_time();
    a->rcpts = g_array_new(FALSE, TRUE, sizeof(acct_rcpt));
    g_array_set_clear_func(a->rcpts, rcpt_clear);
    s->acct = a;
}

#define RCPTS_KEPT 1000

void mx_acct_rcpt(mx_session *s, const char *addr, size_t len)
{
    if (!s->acct)
        return;
    s->acct->last_kept = s->acct->rcpts->len < RCPTS_KEPT;
    acct_rcpt r = {.addr = g_strndup(addr, len)};
    if (!s->acct->last_kept) {
        s->acct->extra[domain_local(s, r.addr) ? 1 : 0]++;
        g_free(r.addr);
        return;
    }
    r.local = domain_local(s, r.addr);
    g_array_append_val(s->acct->rcpts, r);
}

static acct_rcpt *last_rcpt(mx_session *s)
{
    if (!s->acct || !s->acct->last_kept || s->acct->rcpts->len == 0)
        return NULL;
    return &g_array_index(s->acct->rcpts, acct_rcpt, s->acct->rcpts->len - 1);
}

void mx_acct_rcpt_refused(mx_session *s, mx_outcome o, const char *reply)
{
    acct_rcpt *r = last_rcpt(s);
    if (!r)
        return;
    r->refused = 1;
    r->outcome = o;
    g_free(r->reply);
    r->reply = reply_line(reply);
}

void mx_acct_rcpt_accepted(mx_session *s, const char *reply)
{
    acct_rcpt *r = last_rcpt(s);
    if (!r)
        return;
    g_free(r->reply);
    r->reply = reply_line(reply);
}

void mx_acct_why(mx_session *s, const char *why)
{
    if (why && *why)
        mx_trace_set(mx_acct_trace(s), MX_TF_WHY, why);
}

void mx_acct_mail_refused(mx_session *s, mx_outcome o, const char *reply, const char *why)
{
    if (!s->acct)
        return;
    s->acct->mail_refused = 1;
    mx_acct_refusal(s, o, reply, why);
}

void mx_acct_refusal(mx_session *s, mx_outcome o, const char *reply, const char *why)
{
    if (!s->acct)
        return;
    s->acct->refused = 1;
    s->acct->refusal = o;
    g_autofree char *l = reply_line(reply);
    mx_trace_set(s->acct->trace, MX_TF_FINAL_REPLY, l);
    mx_acct_why(s, why);
}

void mx_acct_scan(mx_session *s, const mx_scan_result *r)
{
    if (!s->acct)
        return;
    mx_trace *t = s->acct->trace;
    mx_trace_set(t, MX_TF_SCAN_VERDICT, r->verdict == MX_SCAN_CLEAN      ? "clean"
                                        : r->verdict == MX_SCAN_INFECTED ? "infected"
                                                                         : "error");
    mx_trace_set(t, MX_TF_SCAN_SIGNATURE, r->verdict == MX_SCAN_INFECTED ? r->name
                                          : r->verdict == MX_SCAN_ERROR  ? r->why
                                                                         : NULL);
    mx_trace_set(t, MX_TF_SCAN_ENGINE, r->version);
}

void mx_acct_backend_reply(mx_session *s, const char *reply)
{
    if (!s->acct)
        return;
    g_autofree char *l = reply_line(reply);
    mx_trace_set(s->acct->trace, MX_TF_BACKEND_REPLY, l);
}

void mx_acct_end(mx_session *s, mx_outcome o, const char *reply, const char *why)
{
    if (!s->acct)
        return;
    mx_acct_refusal(s, o, reply, why); /* the final reply and why, as for a refusal */
    s->acct->ended = 1;
    mx_acct_close(s);
}

/* The message's outcome; 0 when it has none to count (an address probe). */
static int message_outcome(const mx_acct *a, mx_outcome *o)
{
    if (a->ended || a->mail_refused) {
        *o = a->refusal;
        return 1;
    }
    for (guint i = 0; i < a->rcpts->len; i++) {
        const acct_rcpt *r = &g_array_index(a->rcpts, acct_rcpt, i);
        if (r->refused) {
            *o = r->outcome;
            return 1;
        }
    }
    if (a->refused) {
        *o = a->refusal;
        return 1;
    }
    return 0;
}

static void keep_trace(mx_session *s, mx_trace *t, uint64_t ms)
{
    mx_policy *p = s->w->srv->policy;
    if (!p || s->cfg->report_trace_ttl <= 0)
        return;
    GBytes *b = mx_trace_encode(t, ms);
    mx_policy_keep_trace(p, mx_trace_id(t), b, s->cfg->report_trace_ttl);
    g_bytes_unref(b);
}

void mx_acct_close(mx_session *s)
{
    mx_acct *a = s->acct;
    if (!a)
        return;
    s->acct = NULL;
    int internal = mx_acct_internal(s);
    mx_direction dir = message_direction(internal, a->rcpts);
    mx_outcome out = MX_OUT_DELIVERED;
    int counted = message_outcome(a, &out);
    mx_policy *p = s->w->srv->policy;
    int64_t now = (int64_t)time(NULL);
    uint64_t per[MX_DIR__COUNT][MX_OUT__COUNT] = {{0}};
    for (guint i = 0; i < a->rcpts->len; i++) {
        const acct_rcpt *r = &g_array_index(a->rcpts, acct_rcpt, i);
        mx_direction rd = rcpt_direction(internal, r);
        mx_outcome ro = r->refused ? r->outcome : out;
        mx_trace_rcpt(a->trace, r->addr, mx_direction_name(rd),
                      counted ? mx_outcome_name(ro) : "not sent", r->reply);
        per[rd][ro]++;
    }
    for (int local = 0; local < 2; local++) {
        acct_rcpt past = {.local = local};
        per[rcpt_direction(internal, &past)][out] += a->extra[local];
    }
    mx_trace_set(a->trace, MX_TF_DIRECTION, mx_direction_name(dir));
    mx_trace_set(a->trace, MX_TF_OUTCOME,
                 counted ? mx_outcome_name(out) : "not counted: no message was sent");
    if (counted) {
        if (p)
            mx_policy_account(p, now, dir, out, MX_UNIT_MESSAGES, 1);
        mx_metrics_message(dir, out, 0);
        for (int d = 0; d < MX_DIR__COUNT; d++)
            for (int o = 0; o < MX_OUT__COUNT; o++)
                if (per[d][o]) {
                    if (p)
                        mx_policy_account(p, now, (mx_direction)d, (mx_outcome)o,
                                          MX_UNIT_RECIPIENTS, per[d][o]);
                    mx_metrics_recipients((mx_direction)d, (mx_outcome)o, per[d][o]);
                }
        mx_metrics_observe(MX_HIST_TRANSACTION,
                           (double)(g_get_monotonic_time() - a->started) / 1e6);
    }
    keep_trace(s, a->trace, (uint64_t)(g_get_monotonic_time() - a->started) / 1000);
    mx_trace_unref(a->trace);
    g_array_free(a->rcpts, TRUE);
    g_free(a);
}

void mx_acct_connection_refused(mx_session *s, const char *reply, const char *why)
{
    mx_trace *t = mx_acct_trace(s);
    g_autofree char *l = reply_line(reply);
    mx_trace_set(t, MX_TF_FINAL_REPLY, l);
    mx_trace_set(t, MX_TF_OUTCOME, "connection refused");
    if (why)
        mx_trace_set(t, MX_TF_WHY, why);
    if (!s->acct)
        keep_trace(s, t, (uint64_t)(g_get_monotonic_time() - s->started) / 1000);
}

void mx_acct_free(mx_session *s)
{
    mx_acct_close(s);
    if (s->conn_trace) {
        mx_trace_unref(s->conn_trace);
        s->conn_trace = NULL;
    }
}

mx_outcome mx_acct_outcome_of(mx_reply_id id)
{
    switch (id) {
    case MX_R_MALWARE: return MX_OUT_REJECTED_MALWARE;
    case MX_R_REP_CONNECT:
    case MX_R_REP_MAIL:
    case MX_R_REP_TEMP: return MX_OUT_REJECTED_REPUTATION;
    case MX_R_RATE_CONNECT:
    case MX_R_RATE_TEMP:
    case MX_R_RATE_REJECT:
    case MX_R_CONCURRENCY: return MX_OUT_REJECTED_RATELIMIT;
    case MX_R_RELAY_DENIED: return MX_OUT_REJECTED_RELAY;
    default:
        return mx_replies_code(id) / 100 == 4 ? MX_OUT_TEMPFAILED : MX_OUT_REJECTED_PROTOCOL;
    }
}
