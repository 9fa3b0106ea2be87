/*
 * mc_pipe.h: many memcached storage commands in one stream, every reply
 * read.
 *
 * Owns: TCP connections to memcached servers (short-lived, or kept by the
 * caller between exchanges), the requests written while the replies are
 * read (so neither side's socket buffer can fill and stall the other), and
 * the reply lines matched to the requests in order. For batches of writes
 * (mxgatectl feed, the reputation flush) and for the counters of one
 * policy step: one command and one reply at a time costs a round trip and
 * two system calls per command;
 * libmemcached 1.1.4's buffered mode, the other way to batch, loses
 * writes and its replies (see store_mc_batch.c).
 *
 * Blocking, with a deadline on every step: run it off the event loops.
 */
#ifndef MX_MC_PIPE_H
#define MX_MC_PIPE_H

#include <stddef.h>

/* What a reply line said. */
enum {
    MX_MC_NONE = 0,   /* no reply was read */
    MX_MC_STORED,
    MX_MC_NOT_STORED,
    MX_MC_DELETED,
    MX_MC_NOT_FOUND,
    MX_MC_NUMBER,     /* incr/decr: the new value */
    MX_MC_OTHER,      /* ERROR, CLIENT_ERROR, SERVER_ERROR ... */
};

#include <stdint.h>

/* One server's part of an exchange. */
typedef struct mx_mc_req {
    const char *host;
    int port;
    int fd;                 /* in: an open connection, or -1 to connect; out: the
                             * connection, still good for another exchange, or -1 */
    const void *data;       /* the commands */
    size_t len;
    size_t n;               /* reply lines they get */
    unsigned char *reply;   /* n: what each line said (MX_MC_*) */
    uint64_t *number;       /* n, or NULL: the value of each MX_MC_NUMBER line */
    char *err;              /* out: why this server failed (g_free it), or NULL */
    int timed_out;          /* out: it failed by not answering */
    /* private */
    size_t sent, got, ll;
    int done;
    char line[512];
} mx_mc_req;

/*
 * Run k servers' requests at once: everything is sent and every reply read
 * in one poll loop, so k servers cost one wait, not k. Each request fails on
 * its own (err set, its unread replies MX_MC_NONE); timeout_ms bounds the
 * wait for progress. Returns how many failed.
 */
int mx_mc_exchange(mx_mc_req *r, size_t k, int timeout_ms);

/* A TCP connection to host:port, non-blocking, TCP_NODELAY; waits up to
 * timeout_ms for it. -1 with *err (g_free it). */
int mx_mc_connect(const char *host, int port, int timeout_ms, char **err);

/* For a caller that reads the replies itself (an event loop): set r up for
 * n reply lines (reply, number as above; fd, data and len unused), then
 * hand it what arrives. Returns the bytes taken, up to the end of the n-th
 * reply line; r->done is set once all n are in. */
void mx_mc_reply_begin(mx_mc_req *r);
size_t mx_mc_reply_take(mx_mc_req *r, const char *buf, size_t len);

#endif
