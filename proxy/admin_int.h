/*
 * admin_int.h: what admin.c (the HTTP responder, /health, /metrics) and
 * admin_v1.c (the endpoints mxgatectl uses) share, and nothing else uses.
 */
#ifndef MX_ADMIN_INT_H
#define MX_ADMIN_INT_H

#include <ev.h>

#include "admin.h"
#include "feed.h"

/* Request line and headers. */
#define REQ_MAX 8192
/* A feed's body (POST /v1/feed), and how many such bodies may be held or
 * applied at once: memory stays under BODY_SLOTS x BODY_MAX. */
#define BODY_MAX (16u << 20)
#define BODY_SLOTS 2
#define REQ_TIMEOUT 5.
#define BODY_TIMEOUT 60.

struct mx_admin {
    mx_server *srv;
    struct ev_loop *loop;
    int fd;
    ev_io lsn;
    ev_timer probe_timer;
    int probing;       /* probes in flight */
    int probe_up;      /* some backend answered 220 in this round */
    int bodies;        /* requests holding a body slot */
};

typedef struct http_conn {
    mx_admin *a;
    int fd;
    ev_io io;
    ev_timer timer;
    ev_idle work;      /* a feed being applied, a slice per turn */
    char req[REQ_MAX];
    size_t len;
    size_t head;       /* bytes of request line and headers, once complete */
    char *body;        /* POST: body_want bytes, body_len of them read */
    size_t body_len, body_want;
    int slot;          /* holds one of a->bodies */
    char *target;      /* the request target, for the handler */
    /* POST /v1/feed */
    mx_feed_reader *feed;
    mx_store *store;
    GString *feed_out;
    char *source;
    uint64_t applied, bad, store_errors;
    int64_t now;
    gint64 t0;
    /* the response */
    char *out;
    size_t out_len, out_off;
} http_conn;

/* Answer and close: code with body (len bytes). */
void http_respond_len(http_conn *c, int code, const char *body, size_t len);
void http_respond(http_conn *c, int code, const char *body);
void http_respond_printf(http_conn *c, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

/* Is the peer on fd this host (a loopback or one of our addresses)? */
int same_host(int fd);

/* A request under /v1/ (admin_v1.c). */
void handle_v1(http_conn *c, const char *method, const char *target);

#endif
