/*
 * session.c: one client SMTP session (see session.h).
 *
 * The session reads commands, answers those it can itself, and mirrors MAIL
 * and RCPT to the backend through its relay. While the backend works on a
 * command, parsing pauses (the read watcher stops), so replies to pipelined
 * commands (RFC 2920) leave in order. DATA and BDAT are decoded here into a
 * bounded spool; only a complete, acceptable message is sent on, and only
 * the backend's reply to it reaches the client, so a 250 from us is always
 * the backend's 250.
 *
 * Lifetime: a reference is held by the open connection and one by every
 * callback while it runs; session_close() drops the first, and the last
 * release frees. Nothing frees a session from inside its own callback.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "data_codec.h"
#include "log.h"
#include "proxy_proto.h"
#include "relay.h"
#include "replies.h"
#include "session.h"
#include "smtp_cmd.h"
#include "spool.h"
#include "tls.h"

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

static const char *const phase_action[] = {
    [MX_PHASE_PROXY] = "reading PROXY header",
    [MX_PHASE_TLS] = "in TLS handshake",
    [MX_PHASE_GREET] = "before greeting",
    [MX_PHASE_CMD] = "reading command",
    [MX_PHASE_DATA] = "receiving DATA",
    [MX_PHASE_BDAT] = "receiving BDAT chunk",
    [MX_PHASE_BACKEND] = "waiting for backend",
    [MX_PHASE_CLOSING] = "closing",
    [MX_PHASE_CLOSED] = "closed",
};

/* Pause command processing while this much output is unsent. */
#define OUT_HIGH 4096
#define IN_SIZE 4096

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

    mx_txn txn;     /* reset by txn_reset() */
    mx_cmd_verb pending;       /* command the backend is working on */
    mx_reply_id after_rset;    /* reply to give once a backend RSET completes;
                                  MX_R__COUNT = already given */
    char after_rset_arg[24];
    mx_data_dec dec;
    mx_spool spool;
    uint64_t raw_bytes;        /* octets read for this message, as sent */
    uint64_t chunk_left;       /* BDAT octets still to read */
    uint64_t chunk_size;
    int chunk_last;
    int chunk_error;           /* reply id for a chunk read only to discard, or -1 */
    GString *received;         /* the trace header being sent */

    mx_relay *relay;
    const char *close_reason;
} mx_session;

static void process(mx_session *s);
static void flush_out(mx_session *s);
static void tls_begin(mx_session *s);
static void tls_step(mx_session *s);
static void relay_done(void *owner, mx_relay_status st, const mx_reply *r);

static mx_session *session_ref(mx_session *s)
{
    s->refs++;
    return s;
}

static void session_unref(mx_session *s)
{
    if (--s->refs > 0)
        return;
    mx_config_unref(s->cfg);
    g_free(s);
}

static void txn_reset(mx_session *s)
{
    g_clear_pointer(&s->txn.from, g_free);
    g_clear_pointer(&s->txn.first_rcpt, g_free);
    memset(&s->txn, 0, sizeof(s->txn));
    mx_spool_free(&s->spool);
    if (s->received) {
        g_string_free(s->received, TRUE);
        s->received = NULL;
    }
}

static void set_timer(mx_session *s, double seconds)
{
    ev_timer_stop(s->w->loop, &s->timer);
    if (seconds > 0) {
        ev_timer_set(&s->timer, seconds, 0.);
        ev_timer_start(s->w->loop, &s->timer);
    }
}

/* Every reply goes through here (and reply_relayed, for the backend's). */
static void reply(mx_session *s, mx_reply_id id, const char *arg)
{
    mx_replies_format(s->out, id, arg);
}

static void reply_relayed(mx_session *s, const mx_reply *r)
{
    mx_replies_relay(s->out, r);
}

static void log_disconnect(mx_session *s)
{
    int level = s->health_check ? MX_LOG_DEBUG : MX_LOG_INFO;
    if (!mx_log_enabled(level))
        return;
    GString *l = mx_log_begin(level, "disconnect");
    mx_log_kv(l, "sid", s->sid);
    mx_log_kv(l, "client", s->addr);
    mx_log_kvi(l, "port", s->port);
    mx_log_kv(l, "helo", s->helo);
    mx_log_kvi(l, "messages", s->nmsgs);
    mx_log_kvi(l, "bad", s->bad);
    mx_log_kv(l, "reason", s->close_reason ? s->close_reason : "quit");
    mx_log_kv(l, "phase", phase_action[s->phase]);
    mx_log_kvi(l, "ms", (g_get_monotonic_time() - s->started) / 1000);
    mx_log_end(l);
}

static void session_close(mx_session *s, const char *reason)
{
    if (s->phase == MX_PHASE_CLOSED)
        return;
    if (reason && !s->close_reason)
        s->close_reason = reason;
    log_disconnect(s);
    s->phase = MX_PHASE_CLOSED;
    ev_io_stop(s->w->loop, &s->rio);
    ev_io_stop(s->w->loop, &s->wio);
    ev_timer_stop(s->w->loop, &s->timer);
    if (s->ssl) {
        SSL_shutdown(s->ssl); /* close_notify, best effort: we do not wait */
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    close(s->fd);
    s->fd = -1;
    if (s->relay) {
        mx_relay_release(s->relay); /* parked for the next session when clean */
        s->relay = NULL;
    }
    txn_reset(s);
    mx_buf_free(&s->in);
    g_string_free(s->out, TRUE);
    s->out = NULL;
    g_free(s->helo);
    s->helo = NULL;
    g_queue_unlink(&s->w->sessions, &s->link);
    atomic_fetch_sub(&s->w->srv->sessions, 1);
    session_unref(s); /* the connection's reference */
}

/* Send what is queued, then close. */
static void close_after_reply(mx_session *s, const char *reason)
{
    s->close_reason = reason;
    s->phase = MX_PHASE_CLOSING;
    ev_io_stop(s->w->loop, &s->rio);
    set_timer(s, 10.); /* a client that never reads does not hold us */
    flush_out(s);
}

static void log_message(mx_session *s, const char *outcome, const char *replytext)
{
    atomic_uint_fast64_t *ctr = &s->w->srv->messages_tempfailed;
    if (strcmp(outcome, "accepted") == 0)
        ctr = &s->w->srv->messages_accepted;
    else if (strcmp(outcome, "rejected") == 0)
        ctr = &s->w->srv->messages_rejected;
    atomic_fetch_add(ctr, 1);
    if (!mx_log_enabled(MX_LOG_INFO))
        return;
    GString *l = mx_log_begin(MX_LOG_INFO, "message");
    mx_log_kv(l, "sid", s->sid);
    mx_log_kv(l, "client", s->addr);
    mx_log_kv(l, "helo", s->helo);
    mx_log_kv(l, "from", s->txn.from);
    mx_log_kvi(l, "nrcpt", s->txn.nrcpt);
    mx_log_kvi(l, "size", (int64_t)s->spool.size);
    mx_log_kv(l, "outcome", outcome);
    /* the reply without its CRLF, first line only */
    size_t n = strcspn(replytext, "\r\n");
    mx_log_kvn(l, "reply", replytext, n);
    mx_log_kv(l, "tls", s->ssl ? mx_tls_version(s->ssl) : "none");
    if (s->ssl)
        mx_log_kv(l, "cipher", mx_tls_cipher(s->ssl));
    mx_log_kv(l, "backend", s->relay ? mx_relay_server(s->relay) : "-");
    if (s->relay && *mx_relay_error(s->relay) && outcome[0] == 't')
        mx_log_kv(l, "error", mx_relay_error(s->relay));
    mx_log_kvi(l, "ms", (g_get_monotonic_time() - s->txn.started) / 1000);
    mx_log_end(l);
}

static void log_reject(mx_session *s, const char *what, const char *line, size_t len,
                       mx_reply_id id, const char *why)
{
    if (!mx_log_enabled(MX_LOG_INFO))
        return;
    GString *l = mx_log_begin(MX_LOG_INFO, "reject");
    mx_log_kv(l, "sid", s->sid);
    mx_log_kv(l, "client", s->addr);
    mx_log_kv(l, "what", what);
    mx_log_kvi(l, "code", mx_replies_code(id));
    if (why)
        mx_log_kv(l, "why", why);
    if (line)
        mx_log_kvn(l, "command", line, len > 200 ? 200 : len);
    mx_log_end(l);
}

/* A client error: reply, log, and count towards max_bad_commands. */
static void bad_command(mx_session *s, mx_reply_id id, const char *arg, const char *line,
                        size_t len)
{
    reply(s, id, arg);
    log_reject(s, "command", line, len, id, arg);
    if (++s->bad >= s->cfg->max_bad_commands) {
        reply(s, MX_R_TOO_MANY_ERRORS, s->cfg->hostname);
        close_after_reply(s, "too_many_errors");
    }
}

/* ---- the connection: plain or TLS ---- */

static ssize_t conn_recv(mx_session *s, void *buf, size_t n)
{
    return mx_tls_recv(s->ssl, s->fd, buf, n);
}

static ssize_t conn_send(mx_session *s, const void *buf, size_t n)
{
    return mx_tls_send(s->ssl, s->fd, buf, n);
}

/* ---- output ---- */

static void update_interest(mx_session *s)
{
    if (s->phase == MX_PHASE_CLOSED || s->phase == MX_PHASE_TLS)
        return;
    /* While the backend works we keep reading (into the buffer, without
     * parsing): stopping and restarting the watcher for every relayed
     * command costs two epoll_ctl calls each time. */
    int want_read = (s->phase == MX_PHASE_CMD || s->phase == MX_PHASE_DATA ||
                     s->phase == MX_PHASE_PROXY ||
                     s->phase == MX_PHASE_BDAT || s->phase == MX_PHASE_GREET ||
                     s->phase == MX_PHASE_BACKEND) &&
                    !s->client_eof && s->out->len <= OUT_HIGH &&
                    mx_buf_room(&s->in) + (size_t)(s->in.pos - s->in.start) > 0;
    if (want_read)
        ev_io_start(s->w->loop, &s->rio);
    else
        ev_io_stop(s->w->loop, &s->rio);
    /* OpenSSL may hold decrypted bytes the socket will never signal again:
     * drain them now that there is room. */
    if (want_read && s->ssl && SSL_pending(s->ssl) > 0 && mx_buf_room(&s->in) > 0)
        ev_feed_event(s->w->loop, &s->rio, EV_READ);
}

static void flush_out(mx_session *s)
{
    while (s->out->len > 0) {
        ssize_t n = conn_send(s, s->out->str, s->out->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            ev_io_start(s->w->loop, &s->wio);
            return;
        }
        if (n < 0) {
            s->close_reason = "write_error";
            session_close(s, NULL);
            return;
        }
        g_string_erase(s->out, 0, n);
    }
    ev_io_stop(s->w->loop, &s->wio);
    if (s->phase == MX_PHASE_CLOSING)
        session_close(s, NULL);
    else if (s->phase == MX_PHASE_TLS && !s->ssl)
        tls_begin(s); /* the 220 to STARTTLS has left in plaintext */
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_session *s = session_ref(w->data);
    if (s->phase == MX_PHASE_TLS && s->ssl) {
        tls_step(s);
        session_unref(s);
        return;
    }
    flush_out(s);
    if (s->phase != MX_PHASE_CLOSED && s->phase != MX_PHASE_CLOSING && s->out->len <= OUT_HIGH) {
        process(s); /* backpressure released */
    }
    session_unref(s);
}

/* ---- the backend ---- */

static void relay_client(mx_session *s)
{
    mx_relay_client cl = {
        .peer = s->peer,
        .local = s->local,
        .addr = s->addr,
        .port = s->port,
        .name = NULL,
        .helo = s->helo,
        .proto = s->esmtp ? "ESMTP" : "SMTP",
        .sid = s->sid,
    };
    if (!s->relay)
        s->relay = mx_relay_acquire(&s->w->pool, s->cfg, s->sid, relay_done, s);
    mx_relay_set_client(s->relay, &cl);
}

static void wait_backend(mx_session *s, mx_cmd_verb v)
{
    s->pending = v;
    s->phase = MX_PHASE_BACKEND;
    set_timer(s, 0); /* the relay times the backend */
    /* No flush here: a failed write would close the session under the
     * caller's feet. process() and relay_done() flush on their way out, so
     * earlier pipelined replies still leave before we wait. */
}

static mx_reply_id failure_reply(mx_relay_status st)
{
    switch (st) {
    case MX_RELAY_DOWN: return MX_R_BACKEND_DOWN;
    case MX_RELAY_TIMEOUT: return MX_R_BACKEND_TIMEOUT;
    case MX_RELAY_PROTO: return MX_R_BACKEND_PROTO;
    default: return MX_R_BACKEND_LOST;
    }
}

static void to_cmd_phase(mx_session *s)
{
    s->phase = MX_PHASE_CMD;
    set_timer(s, s->cfg->idle_timeout);
}

/* Reset the backend's transaction too, then give reply id (MX_R__COUNT:
 * the reply was already queued). */
static void rset_then_reply(mx_session *s, mx_reply_id id, const char *arg)
{
    txn_reset(s);
    if (s->relay && mx_relay_connected(s->relay)) {
        s->after_rset = id;
        g_strlcpy(s->after_rset_arg, arg ? arg : "", sizeof(s->after_rset_arg));
        wait_backend(s, MX_CMD_RSET);
        mx_relay_rset(s->relay);
        return;
    }
    if (id != MX_R__COUNT)
        reply(s, id, arg);
}

static void relay_done(void *owner, mx_relay_status st, const mx_reply *r)
{
    mx_session *s = session_ref(owner);
    g_assert(s->phase == MX_PHASE_BACKEND);
    mx_cmd_verb v = s->pending;
    s->pending = MX_CMD_UNKNOWN;
    int ok = st == MX_RELAY_REPLY && r->code / 100 == 2;
    mx_reply_id fail_id = failure_reply(st);

    to_cmd_phase(s);

    switch (v) {
    case MX_CMD_MAIL:
        if (st == MX_RELAY_REPLY)
            reply_relayed(s, r);
        else
            reply(s, fail_id, NULL);
        if (ok) {
            s->txn.active = 1;
        } else {
            if (st != MX_RELAY_REPLY)
                log_reject(s, "mail", NULL, 0, fail_id, mx_relay_error(s->relay));
            txn_reset(s);
        }
        break;
    case MX_CMD_RCPT:
        if (st == MX_RELAY_REPLY) {
            reply_relayed(s, r);
            if (ok)
                s->txn.nrcpt++;
            else
                g_clear_pointer(&s->txn.first_rcpt, g_free);
        } else {
            reply(s, fail_id, NULL);
            log_reject(s, "rcpt", NULL, 0, fail_id, mx_relay_error(s->relay));
            txn_reset(s); /* the backend transaction is gone with the connection */
        }
        break;
    case MX_CMD_RSET:
        /* Whatever the backend said, the client's RSET succeeded: a
         * backend that cannot reset is dropped and reconnected later. */
        if (!ok && s->relay) {
            mx_relay_free(s->relay);
            s->relay = NULL;
        }
        if (s->after_rset != MX_R__COUNT)
            reply(s, s->after_rset, s->after_rset_arg);
        break;
    case MX_CMD_DATA:
    case MX_CMD_BDAT: {
        GString *t = g_string_new(NULL);
        const char *outcome;
        if (st == MX_RELAY_REPLY) {
            mx_replies_relay(t, r);
            outcome = ok ? "accepted" : r->code / 100 == 4 ? "tempfail" : "rejected";
        } else {
            mx_replies_format(t, fail_id, NULL);
            outcome = "tempfail";
        }
        g_string_append_len(s->out, t->str, t->len);
        if (ok)
            s->nmsgs++;
        log_message(s, outcome, t->str);
        g_string_free(t, TRUE);
        /* A 4xx/5xx to DATA leaves the backend in a transaction. */
        if (st == MX_RELAY_REPLY && !ok)
            rset_then_reply(s, MX_R__COUNT, NULL);
        else
            txn_reset(s);
        break;
    }
    default:
        g_assert_not_reached();
    }
    if (s->phase == MX_PHASE_BACKEND) {
        flush_out(s);
    } else if (s->phase != MX_PHASE_CLOSED) {
        process(s);
    }
    session_unref(s);
}

/* ---- commands ---- */

/* Rebuild MAIL/RCPT for the backend in canonical spelling (no space after
 * the colon, source route dropped); the relay drops parameters whose
 * extension the backend did not advertise. */
static char *backend_line(const char *verb, const mx_cmd *c)
{
    GString *g = g_string_new(verb);
    g_string_append_c(g, '<');
    g_string_append_len(g, c->path.p, c->path.len);
    g_string_append_c(g, '>');
    for (size_t i = 0; i < c->nparams; i++) {
        g_string_append_c(g, ' ');
        g_string_append_len(g, c->params[i].key.p, c->params[i].key.len);
        if (c->params[i].value.len) {
            g_string_append_c(g, '=');
            g_string_append_len(g, c->params[i].value.p, c->params[i].value.len);
        }
    }
    return g_string_free(g, FALSE);
}

static void cmd_ehlo(mx_session *s, const mx_cmd *c, int esmtp)
{
    if (s->txn.active) {
        /* RFC 5321 4.1.4: EHLO resets the transaction. Dropping the
         * backend connection is the simplest complete reset. */
        txn_reset(s);
        if (s->relay) {
            mx_relay_free(s->relay);
            s->relay = NULL;
        }
    }
    g_free(s->helo);
    s->helo = g_strndup(c->arg.p, c->arg.len);
    s->esmtp = esmtp;
    if (!esmtp) {
        reply(s, MX_R_HELO, s->cfg->hostname);
        return;
    }
    g_string_append_printf(s->out, "250-%s\r\n", s->cfg->hostname);
    if (s->cfg->tls_server && s->cfg->starttls && !s->ssl)
        g_string_append(s->out, "250-STARTTLS\r\n");
    g_string_append_printf(s->out,
                           "250-PIPELINING\r\n"
                           "250-SIZE %llu\r\n"
                           "250-8BITMIME\r\n"
                           "250-SMTPUTF8\r\n"
                           "250-ENHANCEDSTATUSCODES\r\n"
                           "250-CHUNKING\r\n"
                           "250 DSN\r\n",
                           (unsigned long long)s->cfg->max_message_size);
}

static void cmd_mail(mx_session *s, const mx_cmd *c, const char *line, size_t len)
{
    if (!s->helo) {
        bad_command(s, MX_R_NEED_HELO, NULL, line, len);
        return;
    }
    if (s->txn.active) {
        bad_command(s, MX_R_NESTED_MAIL, NULL, line, len);
        return;
    }
    if (c->size > s->cfg->max_message_size) {
        reply(s, MX_R_SIZE_DECLARED, NULL);
        log_reject(s, "mail", line, len, MX_R_SIZE_DECLARED, "declared SIZE over the limit");
        return;
    }
    if (c->path_utf8 && !c->smtputf8) {
        reply(s, MX_R_UTF8_NEEDED, NULL);
        log_reject(s, "mail", line, len, MX_R_UTF8_NEEDED, NULL);
        return;
    }
    txn_reset(s);
    s->txn.from = g_strndup(c->path.p, c->path.len);
    s->txn.smtputf8 = c->smtputf8;
    s->txn.started = g_get_monotonic_time();
    relay_client(s);
    g_autofree char *bl = backend_line("MAIL FROM:", c);
    wait_backend(s, MX_CMD_MAIL);
    mx_relay_mail(s->relay, bl);
}

static void cmd_rcpt(mx_session *s, const mx_cmd *c, const char *line, size_t len)
{
    if (!s->txn.active) {
        bad_command(s, MX_R_NEED_MAIL, NULL, line, len);
        return;
    }
    if (s->txn.bdat) {
        bad_command(s, MX_R_BDAT_MIX, NULL, line, len);
        return;
    }
    if (s->txn.nrcpt >= s->cfg->max_recipients) {
        reply(s, MX_R_TOO_MANY_RCPT, NULL);
        log_reject(s, "rcpt", line, len, MX_R_TOO_MANY_RCPT, NULL);
        return;
    }
    if (c->path_utf8 && !s->txn.smtputf8) {
        reply(s, MX_R_UTF8_NEEDED, NULL);
        log_reject(s, "rcpt", line, len, MX_R_UTF8_NEEDED, NULL);
        return;
    }
    if (!s->relay || !mx_relay_connected(s->relay)) {
        reply(s, MX_R_BACKEND_LOST, NULL);
        txn_reset(s);
        return;
    }
    if (!s->txn.first_rcpt && s->txn.nrcpt == 0)
        s->txn.first_rcpt = g_strndup(c->path.p, c->path.len);
    g_autofree char *bl = backend_line("RCPT TO:", c);
    s->txn.rcpt_tried++;
    wait_backend(s, MX_CMD_RCPT);
    mx_relay_rcpt(s->relay, bl);
}

/* Checks shared by DATA and the first BDAT; returns a reply id or -1. */
static int data_precheck(mx_session *s)
{
    if (!s->txn.active)
        return MX_R_NEED_MAIL;
    /* RFC 5321 3.3: 503 when no RCPT came, 554 when all were refused. */
    if (s->txn.nrcpt == 0)
        return s->txn.rcpt_tried ? MX_R_NO_VALID_RCPT : MX_R_NEED_RCPT;
    if (!s->relay || !mx_relay_connected(s->relay))
        return MX_R_BACKEND_LOST;
    return -1;
}

static void start_body(mx_session *s, int bdat)
{
    s->raw_bytes = 0;
    mx_data_dec_init(&s->dec, bdat, s->cfg->bare_newline == MX_BARE_NORMALIZE,
                     (size_t)s->cfg->max_text_line_length);
    mx_spool_init(&s->spool, s->cfg->max_message_size, &s->w->srv->spool);
}

static void cmd_data(mx_session *s, const char *line, size_t len)
{
    if (s->txn.bdat) {
        bad_command(s, MX_R_BDAT_MIX, NULL, line, len);
        return;
    }
    int id = data_precheck(s);
    if (id >= 0) {
        if (id == MX_R_BACKEND_LOST) {
            reply(s, (mx_reply_id)id, NULL);
            txn_reset(s);
        } else {
            bad_command(s, (mx_reply_id)id, NULL, line, len);
        }
        return;
    }
    start_body(s, 0);
    reply(s, MX_R_DATA_GO, NULL);
    s->phase = MX_PHASE_DATA;
    set_timer(s, s->cfg->data_timeout);
}

static void cmd_bdat(mx_session *s, const mx_cmd *c)
{
    /* RFC 3030 3: the chunk is read whatever we answer, or we would take
     * message data for commands. */
    s->chunk_left = s->chunk_size = c->chunk_size;
    s->chunk_last = c->last;
    s->chunk_error = -1;
    if (s->txn.failed) {
        s->chunk_error = MX_R_BDAT_FAILED;
    } else if (!s->txn.bdat) { /* the first chunk of this transaction */
        int id = data_precheck(s);
        if (id >= 0) {
            s->chunk_error = id;
        } else {
            s->txn.bdat = 1;
            start_body(s, 1);
        }
    }
    s->phase = MX_PHASE_BDAT;
    set_timer(s, s->cfg->data_timeout);
}

static void build_received(mx_session *s)
{
    GString *g = g_string_sized_new(256);
    g_string_append(g, "Received: from ");
    /* The HELO name is the client's word: keep what is safe in a header
     * comment, so it can neither fold nor close the comment. */
    for (const char *h = s->helo; *h && h - s->helo < 255; h++) {
        unsigned char ch = (unsigned char)*h;
        g_string_append_c(g, (ch > ' ' && ch < 0x7f && ch != '(' && ch != ')' && ch != '\\')
                                 ? (char)ch : '?');
    }
    g_string_append_printf(g, " (unknown [%s])\r\n", s->addr);
    if (s->ssl)
        g_string_append_printf(g, "\t(using %s with cipher %s)\r\n", mx_tls_version(s->ssl),
                               mx_tls_cipher(s->ssl));
    /* RFC 3848 / RFC 6531 protocol names */
    g_string_append_printf(g, "\tby %s (mxgate) with %s%s id %s", s->cfg->hostname,
                           s->txn.smtputf8 ? "UTF8SMTP" : s->esmtp ? "ESMTP" : "SMTP",
                           s->ssl ? "S" : "", s->sid);
    if (s->txn.nrcpt == 1 && s->txn.first_rcpt)
        g_string_append_printf(g, "\r\n\tfor <%s>", s->txn.first_rcpt);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
    g_string_append_printf(g, ";\r\n\t%s\r\n", date);
    s->received = g;
}

/* The whole message is in: reject it locally, or send it on. */
static void message_complete(mx_session *s)
{
    mx_reply_id id = MX_R__COUNT;
    const char *arg = NULL;
    char num[24];

    if (s->spool.over_budget) {
        id = MX_R_SPOOL_FULL;
    } else if (s->spool.over_limit) {
        id = MX_R_SIZE_EXCEEDED;
    } else if (s->dec.flags & MX_DATA_NUL) {
        id = MX_R_NUL;
    } else if (s->dec.flags & (MX_DATA_BARE_LF | MX_DATA_BARE_CR) &&
               s->cfg->bare_newline == MX_BARE_REJECT) {
        id = MX_R_BARE_NEWLINE;
    } else if (s->dec.flags & MX_DATA_LONG_LINE) {
        id = MX_R_LONG_LINE;
        snprintf(num, sizeof(num), "%d", s->cfg->max_text_line_length);
        arg = num;
    }
    if (id != MX_R__COUNT) {
        GString *t = g_string_new(NULL);
        mx_replies_format(t, id, arg);
        log_message(s, id == MX_R_SPOOL_FULL ? "tempfail" : "rejected", t->str);
        g_string_free(t, TRUE);
        rset_then_reply(s, id, arg);
        return;
    }
    if (!s->relay || !mx_relay_connected(s->relay)) {
        GString *t = g_string_new(NULL);
        mx_replies_format(t, MX_R_BACKEND_LOST, NULL);
        log_message(s, "tempfail", t->str);
        g_string_append_len(s->out, t->str, t->len);
        g_string_free(t, TRUE);
        txn_reset(s);
        return;
    }
    build_received(s);
    wait_backend(s, s->txn.bdat ? MX_CMD_BDAT : MX_CMD_DATA);
    mx_relay_data(s->relay, s->received->str, s->received->len, &s->spool);
}

static void bdat_chunk_done(mx_session *s)
{
    char num[24];
    to_cmd_phase(s);
    if (s->chunk_error >= 0) {
        reply(s, (mx_reply_id)s->chunk_error, NULL);
        log_reject(s, "bdat", NULL, 0, (mx_reply_id)s->chunk_error, NULL);
        if (s->txn.bdat)
            s->txn.failed = 1;
        return;
    }
    if (s->spool.over_limit || s->spool.over_budget) {
        mx_reply_id id = s->spool.over_budget ? MX_R_SPOOL_FULL : MX_R_SIZE_EXCEEDED;
        GString *t = g_string_new(NULL);
        mx_replies_format(t, id, NULL);
        log_message(s, id == MX_R_SPOOL_FULL ? "tempfail" : "rejected", t->str);
        g_string_free(t, TRUE);
        /* RFC 3030: after a failed chunk the client must RSET; until it
         * does, further chunks are read and refused. */
        s->txn.failed = 1;
        reply(s, id, NULL);
        return;
    }
    if (!s->chunk_last) {
        snprintf(num, sizeof(num), "%llu", (unsigned long long)s->chunk_size);
        reply(s, MX_R_BDAT_OK, num);
        return;
    }
    mx_data_dec_finish(&s->dec, mx_spool_emit, &s->spool);
    message_complete(s);
}

static void cmd_rset(mx_session *s)
{
    if (s->txn.active && s->relay && mx_relay_connected(s->relay)) {
        rset_then_reply(s, MX_R_OK, NULL);
        return;
    }
    txn_reset(s);
    reply(s, MX_R_OK, NULL);
}

/* RFC 3207. */
static void cmd_starttls(mx_session *s, const char *line, size_t len)
{
    if (!s->cfg->tls_server || !s->cfg->starttls) {
        bad_command(s, MX_R_NOT_IMPL, NULL, line, len);
        return;
    }
    if (s->ssl) {
        bad_command(s, MX_R_TLS_ACTIVE, NULL, line, len);
        return;
    }
    if (s->txn.active) {
        bad_command(s, MX_R_TXN_IN_PROGRESS, NULL, line, len);
        return;
    }
    reply(s, MX_R_TLS_GO, NULL);
    /* CVE-2011-0411: anything pipelined after STARTTLS arrived in
     * plaintext, where a man in the middle could have put it. It is
     * dropped, never run inside the TLS session. */
    size_t injected = mx_buf_used(&s->in);
    if (injected > 0) {
        GString *l = mx_log_begin(MX_LOG_WARNING, "starttls_injection");
        mx_log_kv(l, "sid", s->sid);
        mx_log_kv(l, "client", s->addr);
        mx_log_kvi(l, "discarded", (int64_t)injected);
        mx_log_kvn(l, "data", s->in.pos, MIN(injected, 100));
        mx_log_end(l);
    }
    mx_buf_reset(&s->in);
    s->phase = MX_PHASE_TLS;
    set_timer(s, s->cfg->tls_handshake_timeout);
    ev_io_stop(s->w->loop, &s->rio);
    /* the handshake starts once the 220 is written (flush_out) */
}

static void handle_line(mx_session *s, const char *line, size_t len)
{
    mx_cmd c;
    const char *why = NULL;
    mx_cmd_status st = mx_cmd_parse(line, line + len, &c, &why);

    switch (st) {
    case MX_CMD_OK:
        break;
    case MX_CMD_E_UNKNOWN:
        bad_command(s, MX_R_UNKNOWN, NULL, line, len);
        return;
    case MX_CMD_E_CHAR:
        bad_command(s, MX_R_BAD_CHAR, NULL, line, len);
        return;
    case MX_CMD_E_SYNTAX:
        bad_command(s, MX_R_SYNTAX, why, line, len);
        return;
    case MX_CMD_E_SENDER:
        bad_command(s, MX_R_BAD_SENDER, why, line, len);
        return;
    case MX_CMD_E_RCPT:
        bad_command(s, MX_R_BAD_RCPT, why, line, len);
        return;
    case MX_CMD_E_PARAM:
        bad_command(s, MX_R_BAD_PARAM, why, line, len);
        return;
    }

    switch (c.verb) {
    case MX_CMD_EHLO: cmd_ehlo(s, &c, 1); break;
    case MX_CMD_HELO: cmd_ehlo(s, &c, 0); break;
    case MX_CMD_MAIL: cmd_mail(s, &c, line, len); break;
    case MX_CMD_RCPT: cmd_rcpt(s, &c, line, len); break;
    case MX_CMD_DATA: cmd_data(s, line, len); break;
    case MX_CMD_BDAT: cmd_bdat(s, &c); break;
    case MX_CMD_RSET: cmd_rset(s); break;
    case MX_CMD_NOOP: reply(s, MX_R_OK, NULL); break;
    case MX_CMD_VRFY: reply(s, MX_R_VRFY, NULL); break;
    case MX_CMD_HELP: reply(s, MX_R_HELP, NULL); break;
    case MX_CMD_QUIT:
        reply(s, MX_R_QUIT, NULL);
        close_after_reply(s, "quit");
        break;
    case MX_CMD_NONSMTP:
        /* A web client or proxy probe: no point in a dialogue. */
        reply(s, MX_R_NONSMTP, NULL);
        log_reject(s, "command", line, len, MX_R_NONSMTP, "non-SMTP command");
        close_after_reply(s, "non_smtp_command");
        break;
    case MX_CMD_STARTTLS:
        cmd_starttls(s, line, len);
        break;
    case MX_CMD_EXPN:
    case MX_CMD_AUTH:
    case MX_CMD_ETRN:
        bad_command(s, MX_R_NOT_IMPL, NULL, line, len);
        break;
    default:
        bad_command(s, MX_R_UNKNOWN, NULL, line, len);
        break;
    }
}

/* ---- input ---- */

static int active_phase(const mx_session *s)
{
    return s->phase == MX_PHASE_CMD || s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT;
}

static void discard_emit(void *ctx, const char *p, size_t len) {}

/* Dropped bytes (NULs) do not reach the spool, so bound the raw input too:
 * a message far over the limit on the wire is over the limit. */
static void count_raw(mx_session *s, size_t n)
{
    s->raw_bytes += n;
    if (s->raw_bytes / 2 > s->cfg->max_message_size)
        s->spool.over_limit = 1;
}

static void process(mx_session *s)
{
    while (active_phase(s) && s->out->len <= OUT_HIGH) {
        if (s->phase == MX_PHASE_DATA) {
            if (mx_buf_used(&s->in) == 0)
                break;
            size_t used = 0;
            mx_rc rc = mx_data_decode(&s->dec, s->in.pos, s->in.last, &used, mx_spool_emit,
                                      &s->spool);
            s->in.pos += used;
            count_raw(s, used);
            if (rc != MX_DONE)
                break;
            to_cmd_phase(s);
            message_complete(s);
            continue;
        }
        if (s->phase == MX_PHASE_BDAT) {
            if (s->chunk_left > 0) {
                size_t avail = mx_buf_used(&s->in);
                if (avail == 0)
                    break;
                size_t n = avail < s->chunk_left ? avail : (size_t)s->chunk_left;
                size_t used = 0;
                if (s->chunk_error < 0 && !s->txn.failed)
                    mx_data_decode(&s->dec, s->in.pos, s->in.pos + n, &used, mx_spool_emit,
                                   &s->spool);
                else
                    mx_data_decode(&s->dec, s->in.pos, s->in.pos, &used, discard_emit, NULL);
                s->in.pos += n;
                s->chunk_left -= n;
                count_raw(s, n);
                if (s->chunk_left > 0)
                    break;
            }
            bdat_chunk_done(s);
            continue;
        }

        /* MX_PHASE_CMD */
        if (atomic_load(&s->w->srv->draining) && !s->txn.active) {
            reply(s, MX_R_SHUTDOWN, s->cfg->hostname);
            close_after_reply(s, "shutdown");
            break;
        }
        char *lf = memchr(s->in.pos, '\n', mx_buf_used(&s->in));
        if (!lf) {
            if (s->discard_line) {
                s->in.pos = s->in.last;
            } else if (mx_buf_used(&s->in) >= (size_t)s->cfg->max_line_length) {
                s->in.pos = s->in.last;
                s->discard_line = 1;
                bad_command(s, MX_R_LINE_TOO_LONG, NULL, NULL, 0);
            }
            break;
        }
        char *line = s->in.pos;
        size_t len = (size_t)(lf - line);
        s->in.pos = lf + 1;
        if (s->discard_line) {
            s->discard_line = 0;
            continue;
        }
        if (len + 1 > (size_t)s->cfg->max_line_length) {
            bad_command(s, MX_R_LINE_TOO_LONG, NULL, NULL, 0);
            continue;
        }
        if (len > 0 && line[len - 1] == '\r')
            len--;
        handle_line(s, line, len);
    }
    if (s->phase == MX_PHASE_CLOSED)
        return;
    if (mx_buf_used(&s->in) == 0)
        mx_buf_reset(&s->in);
    if (s->client_eof && active_phase(s)) {
        /* Everything the client sent before its EOF has been answered. */
        if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT ||
            (s->phase == MX_PHASE_CMD && s->txn.bdat))
            log_message(s, "aborted", "(client disconnected before end of data)");
        close_after_reply(s, "client_closed");
        return;
    }
    flush_out(s);
    if (s->phase != MX_PHASE_CLOSED)
        update_interest(s);
}

static void client_gone(mx_session *s, const char *reason)
{
    if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT ||
        (s->phase == MX_PHASE_CMD && s->txn.bdat)) {
        /* Nothing was sent to the backend yet: closing the relay without
         * a final dot is the abort, and nothing is delivered. */
        GString *t = g_string_new("(client disconnected before end of data)");
        log_message(s, "aborted", t->str);
        g_string_free(t, TRUE);
    }
    session_close(s, reason);
}

static void begin_smtp(mx_session *s);

static void tls_fail(mx_session *s, const char *why)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    GString *l = mx_log_begin(MX_LOG_INFO, "tls_error");
    mx_log_kv(l, "sid", s->sid);
    mx_log_kv(l, "client", s->addr);
    mx_log_kv(l, "error", e ? buf : why);
    mx_log_end(l);
    if (s->ssl) {
        SSL_free(s->ssl); /* no close_notify on a failed handshake */
        s->ssl = NULL;
    }
    session_close(s, "tls_handshake_failed");
}

static void tls_begin(mx_session *s)
{
    s->ssl = SSL_new(mx_tls_ctx(s->cfg->tls_server));
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_accept_state(s->ssl);
    set_timer(s, s->cfg->tls_handshake_timeout);
    tls_step(s);
}

/* Drive the non-blocking handshake; the watchers follow what OpenSSL
 * wants next. */
static void tls_step(mx_session *s)
{
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    if (r != 1) {
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            ev_io_stop(s->w->loop, &s->wio);
            ev_io_start(s->w->loop, &s->rio);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            ev_io_stop(s->w->loop, &s->rio);
            ev_io_start(s->w->loop, &s->wio);
            return;
        }
        tls_fail(s, e == SSL_ERROR_SYSCALL ? "connection closed in handshake"
                                           : "handshake failed");
        return;
    }
    ev_io_stop(s->w->loop, &s->wio);
    if (mx_log_enabled(MX_LOG_DEBUG)) {
        GString *l = mx_log_begin(MX_LOG_DEBUG, "tls");
        mx_log_kv(l, "sid", s->sid);
        mx_log_kv(l, "version", mx_tls_version(s->ssl));
        mx_log_kv(l, "cipher", mx_tls_cipher(s->ssl));
        mx_log_kvi(l, "resumed", SSL_session_reused(s->ssl));
        mx_log_end(l);
    }
    if (s->after_tls_banner) {
        s->after_tls_banner = 0;
        begin_smtp(s);
        return;
    }
    /* RFC 3207 4.2: forget everything learnt before the handshake. */
    g_clear_pointer(&s->helo, g_free);
    s->esmtp = 0;
    txn_reset(s);
    if (s->relay) {
        mx_relay_release(s->relay);
        s->relay = NULL;
    }
    to_cmd_phase(s);
    process(s);
}

static void set_peer_text(mx_session *s)
{
    if (s->peer.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&s->peer;
        inet_ntop(AF_INET, &in->sin_addr, s->addr, sizeof(s->addr));
        s->port = ntohs(in->sin_port);
    } else if (s->peer.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&s->peer;
        inet_ntop(AF_INET6, &in6->sin6_addr, s->addr, sizeof(s->addr));
        s->port = ntohs(in6->sin6_port);
    } else {
        g_strlcpy(s->addr, "unknown", sizeof(s->addr));
        s->port = 0;
    }
}

static void proxy_fail(mx_session *s, const char *why)
{
    GString *l = mx_log_begin(MX_LOG_WARNING, "proxy_error");
    mx_log_kv(l, "sid", s->sid);
    mx_log_kv(l, "peer", s->addr);
    mx_log_kv(l, "error", why);
    mx_log_end(l);
    session_close(s, "bad_proxy_header");
}

/*
 * The PROXY header arrives first (HAProxy proxy-protocol.txt 2.1, 2.2).
 * Peek, and consume only bytes that are certainly header: while the parser
 * says MX_AGAIN everything seen is a header prefix, and at MX_DONE exactly
 * the rest of its length is taken. What follows (SMTP, or a TLS
 * ClientHello) stays in the socket for whoever reads next.
 */
static void proxy_read(mx_session *s)
{
    char *buf = s->in.start;
    size_t cap = (size_t)(s->in.end - s->in.start);
    ssize_t n = recv(s->fd, buf + s->pp_have, cap - s->pp_have, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        session_close(s, n == 0 ? "client_closed" : "read_error");
        return;
    }
    size_t total = s->pp_have + (size_t)n;
    mx_pp_header h;
    const char *why = NULL;
    mx_rc rc = mx_pp_parse(buf, buf + total, &h, &why);
    if (rc == MX_ERROR) {
        proxy_fail(s, why ? why : "malformed PROXY header");
        return;
    }
    if (rc == MX_AGAIN && total == cap) {
        /* v2 allows 16 + 65535 bytes; a balancer's header (addresses and
         * a few TLVs) is far below the input buffer, so more is refused. */
        proxy_fail(s, "PROXY header too long");
        return;
    }
    size_t take = rc == MX_DONE ? h.length - s->pp_have : (size_t)n;
    ssize_t got = recv(s->fd, buf + s->pp_have, take, 0);
    if (got != (ssize_t)take) {
        proxy_fail(s, "short read of a peeked PROXY header");
        return;
    }
    s->pp_have += take;
    if (rc == MX_AGAIN)
        return;

    mx_buf_reset(&s->in);
    if (h.local) {
        s->health_check = 1; /* the socket's own addresses stay */
    } else if (!h.unknown) {
        s->peer = h.src;
        s->local = h.dst;
        set_peer_text(s);
    }
    if (mx_log_enabled(MX_LOG_DEBUG)) {
        GString *l = mx_log_begin(MX_LOG_DEBUG, "proxy");
        mx_log_kv(l, "sid", s->sid);
        mx_log_kvi(l, "version", h.version);
        mx_log_kv(l, "client", h.local ? "local" : h.unknown ? "unknown" : s->addr);
        mx_log_end(l);
    }
    begin_smtp(s);
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_session *s = session_ref(w->data);

    if (s->phase == MX_PHASE_PROXY) {
        proxy_read(s);
        goto out;
    }
    if (s->phase == MX_PHASE_TLS) {
        if (s->ssl)
            tls_step(s);
        goto out;
    }
    mx_buf_compact(&s->in);
    if (mx_buf_room(&s->in) == 0) {
        ev_io_stop(loop, w);
        goto out;
    }
    ssize_t n = conn_recv(s, s->in.last, mx_buf_room(&s->in));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        goto out;
    if (n == 0 && s->phase == MX_PHASE_BACKEND) {
        /* The client half-closed after pipelining its last commands: they
         * are answered once the backend has, then we close. */
        s->client_eof = 1;
        ev_io_stop(loop, w);
        goto out;
    }
    if (n <= 0) {
        client_gone(s, n == 0 ? "client_closed" : "read_error");
        goto out;
    }
    s->in.last += n;
    if (s->phase == MX_PHASE_BACKEND)
        goto out; /* parsed when the backend has answered */
    if (s->phase == MX_PHASE_GREET) {
        /* RFC 5321 3.1: the client waits for the greeting. */
        reply(s, MX_R_PREGREET, NULL);
        log_reject(s, "connect", s->in.pos, mx_buf_used(&s->in), MX_R_PREGREET, "pregreet");
        close_after_reply(s, "pregreet");
        goto out;
    }
    if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT)
        set_timer(s, s->cfg->data_timeout);
    else if (s->phase == MX_PHASE_CMD)
        set_timer(s, s->cfg->idle_timeout);
    process(s);
out:
    session_unref(s);
}

static void greet(mx_session *s)
{
    reply(s, MX_R_GREETING, s->cfg->hostname);
    to_cmd_phase(s);
    process(s);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    mx_session *s = session_ref(w->data);
    switch (s->phase) {
    case MX_PHASE_PROXY:
        proxy_fail(s, "no PROXY header in time");
        break;
    case MX_PHASE_TLS:
        tls_fail(s, "handshake timed out");
        break;
    case MX_PHASE_GREET:
        greet(s);
        break;
    case MX_PHASE_CLOSING:
        session_close(s, NULL);
        break;
    case MX_PHASE_CMD:
    case MX_PHASE_DATA:
    case MX_PHASE_BDAT: {
        if (s->phase != MX_PHASE_CMD || s->txn.bdat) {
            GString *t = g_string_new("(timeout before end of data)");
            log_message(s, "aborted", t->str);
            g_string_free(t, TRUE);
        }
        GString *l = mx_log_begin(MX_LOG_INFO, "timeout");
        mx_log_kv(l, "sid", s->sid);
        mx_log_kv(l, "client", s->addr);
        mx_log_kv(l, "phase", phase_action[s->phase]);
        mx_log_end(l);
        s->phase = MX_PHASE_CMD;
        reply(s, MX_R_TIMEOUT, s->cfg->hostname);
        close_after_reply(s, "timeout");
        break;
    }
    default:
        break;
    }
    session_unref(s);
}

void mx_session_start(mx_worker *w, int fd, const struct sockaddr_storage *peer,
                      const mx_listen *l)
{
    mx_server *srv = w->srv;
    mx_session *s = g_new0(mx_session, 1);
    s->refs = 1;
    s->w = w;
    s->cfg = mx_server_config(srv);
    s->fd = fd;
    s->peer = *peer;
    s->implicit_tls = l->tls;
    s->started = g_get_monotonic_time();
    s->chunk_error = -1;
    s->link.data = s;
    mx_server_session_id(srv, s->sid);
    socklen_t ll = sizeof(s->local);
    getsockname(fd, (struct sockaddr *)&s->local, &ll);
    set_peer_text(s);
    mx_buf_alloc(&s->in, IN_SIZE);
    s->out = g_string_sized_new(256);
    ev_io_init(&s->rio, on_read, fd, EV_READ);
    ev_io_init(&s->wio, on_write, fd, EV_WRITE);
    ev_init(&s->timer, on_timer);
    s->rio.data = s->wio.data = s->timer.data = s;
    g_queue_push_tail_link(&w->sessions, &s->link);
    atomic_fetch_add(&srv->sessions, 1);

    if (mx_log_enabled(MX_LOG_DEBUG)) {
        GString *lg = mx_log_begin(MX_LOG_DEBUG, "connect");
        mx_log_kv(lg, "sid", s->sid);
        mx_log_kv(lg, "client", s->addr);
        mx_log_kvi(lg, "port", s->port);
        mx_log_end(lg);
    }

    if (l->proxy_protocol) {
        /* Only the balancer may speak PROXY: anyone else could claim any
         * address. No banner and no reply: the peer is not a client. */
        if (!mx_config_net_match(s->cfg->proxy_nets, s->cfg->nproxy_nets, peer)) {
            GString *lg = mx_log_begin(MX_LOG_WARNING, "proxy_refused");
            mx_log_kv(lg, "sid", s->sid);
            mx_log_kv(lg, "peer", s->addr);
            mx_log_kv(lg, "why", "not in smtp.proxy_protocol_from");
            mx_log_end(lg);
            session_close(s, "proxy_not_allowed");
            return;
        }
        s->phase = MX_PHASE_PROXY;
        set_timer(s, s->cfg->proxy_timeout);
        ev_io_start(w->loop, &s->rio);
        return;
    }
    begin_smtp(s);
}

/* The client's real address is known: admission, then the banner. */
static void begin_smtp(mx_session *s)
{
    mx_worker *w = s->w;
    int fd = s->fd;
    if (s->implicit_tls && !s->ssl) {
        /* Port 465 style (RFC 8314): TLS first, the banner inside it. */
        if (!s->cfg->tls_server) {
            session_close(s, "tls_not_configured");
            return;
        }
        s->after_tls_banner = 1;
        s->phase = MX_PHASE_TLS;
        tls_begin(s);
        return;
    }
    if (atomic_load(&w->srv->sessions) > s->cfg->max_sessions || w->draining) {
        s->phase = MX_PHASE_CMD;
        reply(s, w->draining ? MX_R_SHUTDOWN : MX_R_TOO_MANY_SESSIONS, s->cfg->hostname);
        close_after_reply(s, w->draining ? "shutdown" : "too_many_sessions");
        return;
    }
    if (s->cfg->greet_delay > 0) {
        s->phase = MX_PHASE_GREET;
        set_timer(s, s->cfg->greet_delay / 1000.0);
        ev_io_start(w->loop, &s->rio);
        return;
    }
    /* Without a delay, still catch a client whose first bytes arrived
     * with its handshake: it did not wait for us. */
    char peek;
    if (!s->ssl && recv(fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 1) {
        s->phase = MX_PHASE_CMD;
        reply(s, MX_R_PREGREET, NULL);
        log_reject(s, "connect", NULL, 0, MX_R_PREGREET, "pregreet");
        close_after_reply(s, "pregreet");
        return;
    }
    greet(s);
}

void mx_session_drain_all(mx_worker *w, int force)
{
    GList *l = w->sessions.head;
    while (l) {
        GList *next = l->next;
        mx_session *s = session_ref(l->data);
        if (force && s->phase != MX_PHASE_CLOSED && s->phase != MX_PHASE_CLOSING) {
            if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT) {
                GString *t = g_string_new("(shutdown before end of data)");
                log_message(s, "aborted", t->str);
                g_string_free(t, TRUE);
            }
            s->phase = MX_PHASE_CMD;
            reply(s, MX_R_SHUTDOWN, s->cfg->hostname);
            close_after_reply(s, "shutdown_forced");
        } else if (force && s->phase == MX_PHASE_CLOSING) {
            session_close(s, NULL);
        } else if (s->phase == MX_PHASE_CMD && !s->txn.active && mx_buf_used(&s->in) == 0) {
            reply(s, MX_R_SHUTDOWN, s->cfg->hostname);
            close_after_reply(s, "shutdown");
        }
        session_unref(s); /* next was taken before: s may have unlinked itself */
        l = next;
    }
}
