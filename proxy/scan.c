/*
 * scan.c: the scan step of a session, between the end of the message and
 * the backend.
 *
 * Owns: the scan job. While it runs, the job owns the message (the spool
 * and the trace headers, moved out of the session), so a session that
 * closes meanwhile frees nothing the scan thread reads; the job holds a
 * session reference and gives the message back when it finishes.
 * The session waits in MX_PHASE_BACKEND, exactly as for a backend reply:
 * client input is buffered, not parsed, so replies leave in order.
 * Not here: what a verdict means for the client (smtp_server.c), libclamav
 * (scanners/clamav.c).
 */
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "session_int.h"

typedef struct scan_job {
    mx_job job;
    mx_session *s;
    mx_scanner *scanner;
    GString *headers;  /* the trace headers mxgate prepends */
    mx_spool spool;
    /* iteration state for mx_scan_input */
    int header_done;
    const mx_spool_block *cursor;
    mx_scan_result res;
    gint64 started, finished;
} scan_job;

static int next_run(void *ctx, const char **p, size_t *len)
{
    scan_job *j = ctx;
    if (!j->header_done) {
        j->header_done = 1;
        if (j->headers && j->headers->len) {
            *p = j->headers->str;
            *len = j->headers->len;
            return 1;
        }
    }
    return mx_spool_next(&j->spool, &j->cursor, p, len);
}

static void scan_work(mx_job *job)
{
    scan_job *j = (scan_job *)job;
    mx_scan_input in = {
        .next = next_run,
        .ctx = j,
        .size = (j->headers ? j->headers->len : 0) + (size_t)j->spool.kept,
    };
    j->started = g_get_monotonic_time();
    mx_scanner_chain(&j->scanner, 1, &in, &j->res);
    j->finished = g_get_monotonic_time();
    mx_metrics_observe(MX_HIST_SCAN, (double)(j->finished - j->started) / 1e6);
}

static void scan_done(mx_job *job)
{
    scan_job *j = (scan_job *)job;
    mx_session *s = j->s;
    if (s->phase == MX_PHASE_CLOSED) {
        mx_spool_free(&j->spool);
        if (j->headers)
            g_string_free(j->headers, TRUE);
    } else {
        s->scanning = 0;
        s->spool = j->spool; /* the blocks and their budget charge come back */
        s->received = j->headers;
        s->txn.scan = j->res;
        s->txn.scanned = 1;
        s->txn.scan_us = j->finished - j->started;
        mx_smtp_scan_done(s);
    }
    mx_session_unref(s);
    g_free(j);
}

int mx_scan_busy(mx_session *s)
{
    mx_server *srv = s->w->srv;
    return srv->scan_pool && mx_offload_pending(srv->scan_pool) >= s->cfg->clamav_max_pending;
}

mx_rc mx_scan_start(mx_session *s)
{
    mx_server *srv = s->w->srv;
    scan_job *j = g_new0(scan_job, 1);
    j->job.work = scan_work;
    j->job.done = scan_done;
    j->scanner = srv->scanner;
    j->s = mx_session_ref(s);
    j->headers = s->received;
    j->spool = s->spool;
    if (mx_offload_submit(srv->scan_pool, &s->w->port, &j->job) != MX_OK) {
        mx_session_unref(s);
        g_free(j);
        return MX_AGAIN;
    }
    /* The job owns the message now. */
    s->received = NULL;
    memset(&s->spool, 0, sizeof(s->spool));
    s->scanning = 1;
    return MX_OK;
}
