/*
 * metrics.c: the node's counters by direction and outcome, its latency
 * histograms and its backend errors (see metrics.h).
 *
 * Everything is a relaxed atomic in static storage: recording is one or
 * two fetch-adds from any thread, with no lock and no allocation. A
 * histogram keeps a count per bucket (not cumulative) and its sum in
 * nanoseconds; the render adds the buckets up, so within one scrape the
 * +Inf bucket always equals _count. The sum is read apart from the buckets
 * and may be one observation ahead of them, as in any lock-free client.
 */
#include <stdatomic.h>

#include "metrics.h"

#define BUCKETS_MAX 14

typedef struct hist_def {
    const char *name; /* the family, without _bucket/_sum/_count */
    const char *help;
    /* upper bounds in seconds, ascending, ended by the first 0 (or the
     * array's end); the bucket past the last is +Inf */
    double le[BUCKETS_MAX];
} hist_def;

static const hist_def hist_defs[MX_HIST__COUNT] = {
    [MX_HIST_TRANSACTION] = {
        "mxgate_transaction_duration_seconds",
        "Time from MAIL FROM to the final reply of a transaction.",
        {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
    },
    [MX_HIST_SCAN] = {
        "mxgate_scan_duration_seconds",
        "Time one message spent in the virus scanner.",
        {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15},
    },
    [MX_HIST_STORE] = {
        "mxgate_store_duration_seconds",
        "Time one policy check spent on the cluster store.",
        {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
    },
};

typedef struct hist {
    atomic_uint_fast64_t bucket[BUCKETS_MAX + 1]; /* the last one is +Inf */
    atomic_uint_fast64_t sum_ns;
} hist;

static hist hists[MX_HIST__COUNT];
static atomic_uint_fast64_t messages[MX_DIR__COUNT][MX_OUT__COUNT];
static atomic_uint_fast64_t recipients[MX_DIR__COUNT][MX_OUT__COUNT];
static atomic_uint_fast64_t backend_errors[MX_BACKEND_ERR__COUNT];

static const char *const backend_err_name[MX_BACKEND_ERR__COUNT] = {
    [MX_BACKEND_ERR_CONNECT] = "connect",
    [MX_BACKEND_ERR_TIMEOUT] = "timeout",
    [MX_BACKEND_ERR_LOST] = "lost",
    [MX_BACKEND_ERR_PROTOCOL] = "protocol",
};

static int nbounds(const hist_def *d)
{
    int n = 0;
    while (n < BUCKETS_MAX && d->le[n] > 0)
        n++;
    return n;
}

static void count(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t value(atomic_uint_fast64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

void mx_metrics_observe(mx_hist_id h, double seconds)
{
    if ((int)h < 0 || h >= MX_HIST__COUNT)
        return;
    if (!(seconds > 0)) /* negative, or NaN */
        seconds = 0;
    const hist_def *d = &hist_defs[h];
    int n = nbounds(d), i = 0;
    while (i < n && seconds > d->le[i])
        i++;
    count(&hists[h].bucket[i], 1);
    /* a day in one observation is already nonsense; keep the sum sane */
    double ns = seconds < 86400. ? seconds * 1e9 : 86400e9;
    count(&hists[h].sum_ns, (uint64_t)(ns + 0.5));
}

void mx_metrics_message(mx_direction d, mx_outcome o, uint64_t nrcpt)
{
    if ((int)d < 0 || d >= MX_DIR__COUNT || (int)o < 0 || o >= MX_OUT__COUNT)
        return;
    count(&messages[d][o], 1);
    if (nrcpt)
        count(&recipients[d][o], nrcpt);
}

void mx_metrics_recipients(mx_direction d, mx_outcome o, uint64_t n)
{
    if ((int)d < 0 || d >= MX_DIR__COUNT || (int)o < 0 || o >= MX_OUT__COUNT)
        return;
    count(&recipients[d][o], n);
}

void mx_metrics_backend_error(mx_backend_err e)
{
    if ((int)e < 0 || e >= MX_BACKEND_ERR__COUNT)
        return;
    count(&backend_errors[e], 1);
}

static void render_header(GString *out, const char *name, const char *type, const char *help)
{
    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_by_class(GString *out, const char *name, const char *help,
                            atomic_uint_fast64_t (*c)[MX_OUT__COUNT])
{
    render_header(out, name, "counter", help);
    for (int d = 0; d < MX_DIR__COUNT; d++)
        for (int o = 0; o < MX_OUT__COUNT; o++)
            g_string_append_printf(out, "%s{direction=\"%s\",outcome=\"%s\"} %llu\n", name,
                                   mx_direction_name((mx_direction)d),
                                   mx_outcome_name((mx_outcome)o),
                                   (unsigned long long)value(&c[d][o]));
}

static void render_hist(GString *out, mx_hist_id h)
{
    const hist_def *d = &hist_defs[h];
    render_header(out, d->name, "histogram", d->help);
    int n = nbounds(d);
    uint64_t cum = 0;
    for (int i = 0; i <= n; i++) {
        cum += value(&hists[h].bucket[i]);
        char le[G_ASCII_DTOSTR_BUF_SIZE];
        if (i < n)
            g_ascii_formatd(le, sizeof(le), "%g", d->le[i]);
        else
            g_strlcpy(le, "+Inf", sizeof(le));
        g_string_append_printf(out, "%s_bucket{le=\"%s\"} %llu\n", d->name, le,
                               (unsigned long long)cum);
    }
    uint64_t ns = value(&hists[h].sum_ns);
    g_string_append_printf(out, "%s_sum %llu.%09llu\n%s_count %llu\n", d->name,
                           (unsigned long long)(ns / 1000000000u),
                           (unsigned long long)(ns % 1000000000u), d->name,
                           (unsigned long long)cum);
}

void mx_metrics_render(GString *out)
{
    render_by_class(out, "mxgate_messages_total",
                    "Transactions that ended, by direction and outcome, each counted once.",
                    messages);
    render_by_class(out, "mxgate_recipients_total",
                    "Recipients of the transactions that ended, by direction and outcome.",
                    recipients);
    for (int h = 0; h < MX_HIST__COUNT; h++)
        render_hist(out, (mx_hist_id)h);
    render_header(out, "mxgate_backend_errors_total", "counter",
                  "Failures talking to a backend server, by kind (one per failed attempt).");
    for (int e = 0; e < MX_BACKEND_ERR__COUNT; e++)
        g_string_append_printf(out, "mxgate_backend_errors_total{kind=\"%s\"} %llu\n",
                               backend_err_name[e], (unsigned long long)value(&backend_errors[e]));
}
