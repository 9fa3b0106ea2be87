/*
 * relay_int.h: a relay's state, shared by relay.c (connection, I/O,
 * timers, the pool, the API) and relay_dialog.c (what is said to the
 * backend: EHLO, STARTTLS, XCLIENT/XFORWARD, commands, replies), and by
 * nothing else.
 */
#ifndef MX_RELAY_INT_H
#define MX_RELAY_INT_H

#include <openssl/ssl.h>

#include "buf.h"
#include "data_codec.h"
#include "relay.h"

typedef enum {
    ST_DISCONNECTED,
    ST_CONNECTING,
    ST_GREETING,
    ST_EHLO,
    ST_STARTTLS,
    ST_TLS,
    ST_XCLIENT,
    ST_EHLO2,
    ST_XFORWARD1,
    ST_XFORWARD2,
    ST_READY,
    ST_MAIL,
    ST_RCPT,
    ST_RSET,
    ST_DATA,
    ST_BODY,
    ST_DOT,
} state;


typedef enum { OP_NONE, OP_MAIL, OP_RCPT, OP_RSET, OP_DATA } op_kind;

enum {
    CAP_XCLIENT = 1 << 0,
    CAP_XFORWARD = 1 << 1,
};

struct mx_relay {
    struct ev_loop *loop;
    mx_config *cfg; /* ref held */
    char *sid;
    char trace[32];       /* the open transaction's trace id, for log lines */
    mx_relay_cb cb;
    void *owner;

    /* the client, as the backend must see it */
    struct sockaddr_storage peer, local;
    char *caddr, *cname, *chelo, *cproto;
    int cport;

    int fd;
    SSL *ssl;          /* TLS to the backend, after STARTTLS */
    ev_io rio, wio;
    ev_timer timer;
    state st;
    int server;        /* index into cfg->backends */
    op_kind op;
    char *line;        /* MAIL/RCPT line waiting for the handshake */
    int deferred;      /* timer is a zero-delay deferred completion */
    mx_relay_status deferred_st;
    int deferred_close; /* ...which first closes the connection (fail) */

    mx_buf in, out;
    mx_reply_parser rp;
    mx_reply *ehlo;    /* the backend's EHLO reply */
    unsigned caps;
    char *xclient_attrs, *xforward_attrs;

    /* DATA streaming; the spool belongs to the session and outlives us */
    const char *hdr;
    size_t hdrlen, hdroff;
    const mx_spool *sp;
    const mx_spool_block *blk;
    const char *bp;
    size_t blen;
    mx_data_enc enc;

    char err[256];

    /* pooling; see mx_relay_pool in relay.h */
    mx_relay_pool *pool;
    GList link;       /* in pool->idle while parked */
    int parked;
    int reused;       /* adopted from the pool by the current owner */
    int got_reply;    /* a reply arrived since adoption */
    int needs_ident;  /* send XCLIENT for the new owner's client first */
    int txn_open;     /* the backend holds a MAIL transaction */
    int tls_refused;  /* opportunistic STARTTLS was refused by the backend */
};

/* relay.c */
void mx_relay_set_timer(mx_relay *r, int seconds);
/* Complete the pending operation; always the caller's last action. */
void mx_relay_finish(mx_relay *r, mx_relay_status st, const mx_reply *rep);
/* Close the connection and fail over or complete; the caller stops. */
void G_GNUC_PRINTF(3, 4) mx_relay_fail(mx_relay *r, mx_relay_status st, const char *fmt, ...);
void G_GNUC_PRINTF(2, 3) mx_relay_send_line(mx_relay *r, const char *fmt, ...);
void mx_relay_close_conn(mx_relay *r);
void mx_relay_flush(mx_relay *r);

/* relay_dialog.c */
void mx_relay_dialog_send_op(mx_relay *r);
void mx_relay_dialog_send_xclient(mx_relay *r);
void mx_relay_dialog_tls_step(mx_relay *r);
/* Returns 1 when the operation ended (the relay may be closed or freed). */
int mx_relay_dialog_on_reply(mx_relay *r, const mx_reply *rep);

#endif
