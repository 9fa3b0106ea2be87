/*
 * relay.h: the backend side of one client session.
 *
 * Owns: the connection to a backend MTA (failover over backend.servers),
 * its handshake (PROXY header, EHLO, XCLIENT or XFORWARD), mirroring MAIL,
 * RCPT and RSET, and streaming a spooled message through DATA.
 * Promises: exactly one callback per operation, always as the last thing
 * the relay does (the owner may free the relay inside it); no operation is
 * started while one is pending (asserted). A relay whose connection failed
 * reconnects on the next operation.
 * Not here: what to answer the client (session.c maps statuses to replies).
 */
#ifndef MX_RELAY_H
#define MX_RELAY_H

#include <sys/socket.h>

#include <ev.h>

#include "config.h"
#include "reply_parse.h"
#include "spool.h"

typedef enum {
    MX_RELAY_REPLY,   /* the backend answered: see the reply */
    MX_RELAY_DOWN,    /* no backend server could be reached or greeted us */
    MX_RELAY_LOST,    /* the connection broke during the operation */
    MX_RELAY_TIMEOUT, /* the backend did not answer in time */
    MX_RELAY_PROTO,   /* the backend answered out of protocol */
} mx_relay_status;

typedef void (*mx_relay_cb)(void *owner, mx_relay_status st, const mx_reply *r);

/* What the backend must learn about the client. Strings are copied. */
typedef struct mx_relay_client {
    struct sockaddr_storage peer;  /* the real client (after PROXY, later) */
    struct sockaddr_storage local; /* where it connected to */
    const char *addr;              /* peer as text */
    int port;
    const char *name;              /* reverse DNS name, NULL = unknown */
    const char *helo;
    const char *proto;             /* SMTP or ESMTP */
    const char *sid;
} mx_relay_client;

typedef struct mx_relay mx_relay;

/*
 * Idle backend connections of one worker, kept for the next session (the
 * upstream keepalive of a reverse proxy). A parked connection holds no
 * transaction; the next session re-identifies its client with XCLIENT
 * (Postfix allows XCLIENT outside a transaction and resets to a fresh
 * session). Connections that forward with a PROXY header are never pooled:
 * that header names one client for the life of the connection.
 */
typedef struct mx_relay_pool {
    struct ev_loop *loop;
    GQueue idle; /* parked relays, most recent at the tail */
} mx_relay_pool;

void mx_relay_pool_init(mx_relay_pool *p, struct ev_loop *loop);
/* Close every parked connection (drain, shutdown). */
void mx_relay_pool_clear(mx_relay_pool *p);

/* A parked connection made under the same config snapshot, or a new relay. */
/* The transaction's trace id, for the relay's log lines (NULL: none). */
void mx_relay_set_trace(mx_relay *r, const char *id);

mx_relay *mx_relay_acquire(mx_relay_pool *p, mx_config *cfg, const char *sid, mx_relay_cb cb,
                           void *owner);

/* The owner is done: park the connection when it is idle, outside a
 * transaction and the pool has room; else close it (QUIT when idle).
 * Never calls back. */
void mx_relay_release(mx_relay *r);

/* Close now, sending QUIT first when the backend is idle. Never calls back. */
void mx_relay_free(mx_relay *r);

/* Update what the backend learns at the next handshake (the HELO name can
 * change between transactions). */
void mx_relay_set_client(mx_relay *r, const mx_relay_client *cl);

/* MAIL FROM / RCPT TO / RSET; the line excludes CRLF. MAIL connects and
 * handshakes first when needed; XFORWARD goes before each MAIL. */
void mx_relay_mail(mx_relay *r, const char *line);
void mx_relay_rcpt(mx_relay *r, const char *line);
void mx_relay_rset(mx_relay *r);

/* DATA: sends DATA; on 354 streams hdr then the spool, dot-stuffed, then
 * the final dot. The callback gets the reply to DATA when it is not 354,
 * else the reply to the final dot. */
void mx_relay_data(mx_relay *r, const char *hdr, size_t hdrlen, const mx_spool *sp);

int mx_relay_connected(const mx_relay *r);
/* The backend advertised an EHLO keyword (valid once connected). */
int mx_relay_has_ext(const mx_relay *r, const char *kw);
/* "ADDR:PORT" of the server in use, or "-". */
const char *mx_relay_server(const mx_relay *r);
/* Why the last operation failed, for logs ("connect to 127.0.0.1:25: ..."). */
const char *mx_relay_error(const mx_relay *r);

#endif
