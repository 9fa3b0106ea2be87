/*
 * metrics.h: the node's Prometheus metrics that are more than a counter
 * in mx_server: messages and recipients by direction and outcome, latency
 * histograms, backend errors.
 *
 * Process-wide and lock-free: any thread may record. GET /metrics on
 * admin.listen renders them (mx_metrics_render) with the rest.
 */
#ifndef MX_METRICS_H
#define MX_METRICS_H

#include <stdint.h>

#include <glib.h>

#include "report.h"

typedef enum {
    MX_HIST_TRANSACTION, /* MAIL to the final reply, seconds */
    MX_HIST_SCAN,        /* one libclamav scan, seconds */
    MX_HIST_STORE,       /* one policy check on the store pool, seconds */
    MX_HIST__COUNT
} mx_hist_id;

typedef enum {
    MX_BACKEND_ERR_CONNECT,  /* could not connect, or no 220 */
    MX_BACKEND_ERR_TIMEOUT,  /* a reply did not come in time */
    MX_BACKEND_ERR_LOST,     /* the connection closed mid-transaction */
    MX_BACKEND_ERR_PROTOCOL, /* an unparsable or unexpected reply */
    MX_BACKEND_ERR__COUNT
} mx_backend_err;

void mx_metrics_observe(mx_hist_id h, double seconds);
/* One transaction, counted once as a message and nrcpt times as recipients. */
void mx_metrics_message(mx_direction d, mx_outcome o, uint64_t nrcpt);
/* Recipients alone, for those whose direction or outcome is not their
 * message's (a refused recipient of a delivered message). */
void mx_metrics_recipients(mx_direction d, mx_outcome o, uint64_t n);
void mx_metrics_backend_error(mx_backend_err e);

/* Append the families above, in Prometheus text format. */
void mx_metrics_render(GString *out);

#endif
