/*
 * server.h: the process context and its worker loops.
 *
 * Owns: the current config snapshot, the worker threads (one libev loop and
 * one SO_REUSEPORT listener set each), node-wide counters and budgets, and
 * the drain sequence. All process state hangs off one mx_server passed
 * explicitly; there are no globals.
 * Not here: what a session does (session.c), signals and HTTP (main.c,
 * admin.c).
 */
#ifndef MX_SERVER_H
#define MX_SERVER_H

#include <stdatomic.h>
#include <stdint.h>

#include <ev.h>
#include <glib.h>

#include "clam.h"
#include "config.h"
#include "offload.h"
#include "relay.h"
#include "spool.h"

typedef struct mx_server mx_server;

typedef struct mx_worker {
    int id;
    mx_server *srv;
    struct ev_loop *loop;
    GThread *thread;
    ev_async wake;       /* main -> worker: look at srv->draining / force_close */
    ev_io *lsn;          /* one per configured listener; owned here */
    int nlsn;
    mx_listen *lsn_conf; /* parallel to lsn: the listener config at start */
    GQueue sessions;     /* owned by session.c (links live in the sessions) */
    int draining;        /* this loop has stopped accepting */
    mx_offload_port port; /* blocking jobs (scans, store calls) finish here */
    mx_relay_pool pool;   /* idle backend connections for reuse */
    unsigned ticks;       /* of the worker's 0.2 s housekeeping timer */
    struct mx_cntq *cq;   /* rate-limit counters sent from this loop (memcached) */
    int cq_tried;         /* cq made, or found impossible */
} mx_worker;

struct mx_server {
    GMutex lock;            /* guards cfg */
    mx_config *cfg;         /* current snapshot; sessions take a ref at accept */
    mx_worker *workers;
    int nworkers;

    atomic_int stopping;    /* SIGTERM seen: /health says 503 (grace, then drain) */
    atomic_int draining;    /* stop accepting, finish sessions */
    atomic_int force_close; /* drain timeout passed: close what is left */
    atomic_int sessions;    /* open client sessions, node-wide */
    atomic_int backend_up;  /* last health probe: some backend answered 220 */
    atomic_uint_fast64_t next_sid;
    atomic_uint_fast64_t messages_accepted;
    atomic_uint_fast64_t messages_rejected;
    atomic_uint_fast64_t messages_tempfailed;
    mx_spool_budget spool;
    mx_offload *offload;    /* thread pool for blocking store calls */
    mx_offload *scan_pool;  /* scan threads (clamav.threads); NULL without a scanner */
    mx_clam *clam;          /* NULL: clamav.enabled = false; owned by main */
    mx_scanner *scanner;    /* what sessions scan with: the clam scanner */
    struct mx_policy *policy; /* reputation and rate limits; owned by main */
    uint32_t node_tag;      /* random per process: session ids are unique across nodes */

    struct ev_loop *main_loop;
    ev_async workers_done;  /* worker -> main: a worker loop ended */
    atomic_int workers_running;
};

/* Create the server: bind every listener once per worker (SO_REUSEPORT).
 * On failure returns NULL with *err set. */
mx_server *mx_server_new(mx_config *cfg, struct ev_loop *main_loop, char **err);
void mx_server_start(mx_server *srv);       /* spawn the worker threads */
void mx_server_drain(mx_server *srv);       /* stop accepting; finish sessions */
void mx_server_force_close(mx_server *srv); /* close what is left with 421 */
void mx_server_join_free(mx_server *srv);

/* Scan every message with clam from now on (before mx_server_start). */
void mx_server_set_scanner(mx_server *srv, mx_clam *clam, int threads, int max_pending);

/* A new reference to the current config snapshot. */
mx_config *mx_server_config(mx_server *srv);
/* Swap in a new snapshot (SIGHUP); takes over the caller's reference. */
void mx_server_set_config(mx_server *srv, mx_config *cfg);

/* A session id: 16 uppercase hex digits, unique across nodes and time. */
void mx_server_session_id(mx_server *srv, char out[17]);

#endif
