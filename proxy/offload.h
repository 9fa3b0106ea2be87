/*
 * offload.h: blocking work off the event loops.
 *
 * Owns: thread pools, and the way results come back: each loop has one
 * port (a locked queue plus an ev_async) shared by all pools; a finished
 * job is queued on its port and its done() runs on that loop. This is the
 * only module that knows threads exist; libclamav scans and store calls go
 * through it, each on a pool of its own so one cannot starve the other.
 * Promises: submit() never blocks and never calls back before it returns;
 * when the backlog is at its limit it refuses (MX_AGAIN), so the caller
 * answers 4xx instead of growing a queue.
 */
#ifndef MX_OFFLOAD_H
#define MX_OFFLOAD_H

#include <stdatomic.h>

#include <ev.h>
#include <glib.h>

#include "mxdefs.h"

typedef struct mx_offload mx_offload;
typedef struct mx_offload_port mx_offload_port;
typedef struct mx_job mx_job;

struct mx_job {
    void (*work)(mx_job *j);  /* on a pool thread: may block */
    void (*done)(mx_job *j);  /* on the submitting loop */
    mx_offload_port *port;    /* set by submit */
    mx_offload *pool;         /* set by submit */
    mx_job *next;             /* private */
};

struct mx_offload_port {
    struct ev_loop *loop;
    int inflight;             /* submitted, done() not yet run; loop thread only */
    ev_async async;
    GMutex lock;
    mx_job *head, *tail;      /* finished, waiting for the loop */
};

/* threads: pool size (0 = one per core); max_pending: jobs queued or
 * running before submit refuses. */
mx_offload *mx_offload_new(int threads, int max_pending);
void mx_offload_free(mx_offload *o); /* waits for running jobs */

void mx_offload_port_init(mx_offload_port *p, struct ev_loop *loop);
void mx_offload_port_close(mx_offload_port *p);

/* Run j->work on pool o, then j->done on p's loop. Call from p's loop. */
mx_rc mx_offload_submit(mx_offload *o, mx_offload_port *p, mx_job *j);

int mx_offload_pending(const mx_offload *o);

#endif
