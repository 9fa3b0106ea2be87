/*
 * session_int.h: the session's state, shared by the three files that work
 * on it and by nothing else.
 *
 *   session.c      lifecycle, buffers, the read/write loop, logging
 *   smtp_server.c  SMTP commands, the transaction, the relay to the backend
 *   conn.c         the connection before SMTP: PROXY header, TLS handshakes
 */
#ifndef MX_SESSION_INT_H
#define MX_SESSION_INT_H

#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>

#include <openssl/ssl.h>

#include "buf.h"
#include "policy.h"
#include "data_codec.h"
#include "relay.h"
#include "replies.h"
#include "scanner.h"
#include "server.h"
#include "smtp_cmd.h"
#include "spool.h"

typedef enum {
    MX_PHASE_PROXY,   /* reading the PROXY header; nothing is sent before it */
    MX_PHASE_TLS,     /* TLS handshake (implicit, or after STARTTLS) */
    MX_PHASE_GREET,   /* holding the banner (smtp.greet_delay) */
    MX_PHASE_CMD,     /* reading commands */
    MX_PHASE_DATA,    /* reading message data after 354 */
    MX_PHASE_BDAT,    /* reading a BDAT chunk */
    MX_PHASE_BACKEND, /* waiting for the backend; parsing paused */
    MX_PHASE_CLOSING, /* flushing a last reply */
    MX_PHASE_CLOSED,
} mx_phase;




typedef struct mx_acct mx_acct;

typedef struct mx_txn {
    int active;        /* MAIL accepted by the backend */
    char *from;        /* reverse path as given, for logs */
    int smtputf8;
    int nrcpt;         /* recipients the backend accepted */
    int rcpt_tried;    /* RCPT commands sent to the backend */
    char *first_rcpt;  /* for the Received header's "for" clause */
    int bdat;          /* BDAT used in this transaction */
    int failed;        /* a BDAT chunk failed: only RSET helps */
    gint64 started;
    int scanned;       /* scan holds a verdict */
    int64_t scan_us;
    mx_scan_result scan;
} mx_txn;

typedef struct mx_session {
    int refs;
    mx_worker *w;
    mx_config *cfg; /* the snapshot taken at accept; reload does not touch it */
    char sid[17];
    GList link;     /* in w->sessions; owned by this file */

    int fd;
    ev_io rio, wio;
    ev_timer timer;
    mx_phase phase;

    struct sockaddr_storage peer, local;
    char addr[INET6_ADDRSTRLEN];
    int port;
    int health_check; /* PROXY v2 LOCAL: a balancer's probe, not a client */
    int implicit_tls; /* the listener has the tls flag */
    int after_tls_banner; /* implicit TLS: the banner follows the handshake */
    SSL *ssl;         /* NULL until a handshake starts; owned here */
    size_t pp_have;   /* PROXY header bytes consumed so far */

    mx_buf in;
    GString *out;   /* replies not yet written; bounded by OUT_HIGH + one reply */
    int discard_line; /* an over-long line is being skipped up to its LF */
    int client_eof;   /* the client closed while the backend was working */

    char *helo;
    int esmtp;
    int bad;        /* bad commands so far */
    int nmsgs;      /* messages accepted by the backend */
    gint64 started;

    mx_txn txn;     /* reset by mx_session_txn_reset() */
    struct mx_acct *acct;   /* the open transaction's record (account.c) */
    struct mx_trace *conn_trace; /* the connection's record, before any MAIL */
    int ntxn;       /* transactions started: the N of trace ids SID.N */
    mx_cmd_verb pending;       /* command the backend is working on */
    mx_reply_id after_rset;    /* reply to give once a backend RSET completes;
                                  MX_R__COUNT = already given */
    char after_rset_arg[256];  /* fits a signature name */
    char after_rset_id[32];    /* the trace id that reply carries */
    mx_data_dec dec;
    mx_spool spool;
    uint64_t raw_bytes;        /* octets read for this message, as sent */
    uint64_t chunk_left;       /* BDAT octets still to read */
    uint64_t chunk_size;
    int chunk_last;
    int chunk_error;           /* reply id for a chunk read only to discard, or -1 */
    GString *received;         /* the trace header being sent */

    mx_relay *relay;
    int scanning;              /* a scan job owns the message (scan.c) */
    int policy_wait;           /* a policy check runs on the store pool */
    int pol_allowed;           /* allow-listed: rate limits and scores skipped */
    char *pol_line;            /* the backend line of the RCPT being checked */
    int64_t lease;             /* concurrency lease period held; -1 none */
    const char *close_reason;
} mx_session;

/* Pause command processing while this much output is unsent. */
#define OUT_HIGH 4096
#define IN_SIZE 4096

/* session.c */
mx_session *mx_session_ref(mx_session *s);
void mx_session_unref(mx_session *s);
void mx_session_txn_reset(mx_session *s);
void mx_session_set_timer(mx_session *s, double seconds);
void mx_session_reply(mx_session *s, mx_reply_id id, const char *arg);
/* The session id, and the transaction's trace id while one is open, as
 * the first fields of a log line. */
void mx_session_log_ids(GString *l, const mx_session *s);
/* The reply as mx_session_reply would send it (g_free it). */
char *mx_session_reply_text(mx_session *s, mx_reply_id id, const char *arg);
void mx_session_reply_relayed(mx_session *s, const mx_reply *r);
void mx_session_close(mx_session *s, const char *reason);
void mx_session_close_after_reply(mx_session *s, const char *reason);
void mx_session_log_message(mx_session *s, const char *outcome, const char *replytext);
void mx_session_log_reject(mx_session *s, const char *what, const char *line, size_t len,
                           mx_reply_id id, const char *why);
void mx_session_bad_command(mx_session *s, mx_reply_id id, const char *arg, const char *line,
                            size_t len);
void mx_session_flush(mx_session *s);
void mx_session_to_cmd_phase(mx_session *s);
void mx_session_process(mx_session *s);
void mx_session_begin_smtp(mx_session *s);

/* smtp_server.c */
void mx_smtp_handle_line(mx_session *s, const char *line, size_t len);
void mx_smtp_message_complete(mx_session *s);
void mx_smtp_bdat_chunk_done(mx_session *s);
void mx_smtp_scan_done(mx_session *s);

/* scan.c */
int mx_scan_busy(mx_session *s);     /* the scan queue is at clamav.max_pending */
mx_rc mx_scan_start(mx_session *s);  /* MX_AGAIN: queue full, nothing moved */

/* conn.c */
ssize_t mx_conn_recv(mx_session *s, void *buf, size_t n);
ssize_t mx_conn_send(mx_session *s, const void *buf, size_t n);
void mx_conn_set_peer_text(mx_session *s);
void mx_conn_proxy_read(mx_session *s);
void mx_conn_proxy_fail(mx_session *s, const char *why);
void mx_conn_tls_begin(mx_session *s);
void mx_conn_tls_step(mx_session *s);
void mx_conn_tls_fail(mx_session *s, const char *why);

#endif
