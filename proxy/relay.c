/*
 * relay.c: the backend side of one client session (see relay.h).
 *
 * One command in flight at a time: the session already serialises the
 * client's pipelined commands, and a backend on loopback answers in tens of
 * microseconds, so pipelining towards the backend would buy little and cost
 * reply-matching complexity. The handshake is a chain of states; each state's
 * name is the log action ("while waiting for backend greeting").
 *
 * Here: the connection (failover, timers, TLS-or-plain I/O, streaming the
 * body), the keepalive pool and the API. What is said to the backend, and
 * what its replies mean, is in relay_dialog.c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "log.h"
#include "metrics.h"
#include "relay_int.h"
#include "tls.h"

static const char *const state_action[] = {
    [ST_DISCONNECTED] = "not connected to backend",
    [ST_CONNECTING] = "connecting to backend",
    [ST_GREETING] = "waiting for backend greeting",
    [ST_EHLO] = "sending EHLO to backend",
    [ST_STARTTLS] = "sending STARTTLS to backend",
    [ST_TLS] = "in TLS handshake with backend",
    [ST_XCLIENT] = "sending XCLIENT to backend",
    [ST_EHLO2] = "sending EHLO to backend after XCLIENT",
    [ST_XFORWARD1] = "sending XFORWARD to backend",
    [ST_XFORWARD2] = "sending XFORWARD to backend",
    [ST_READY] = "idle with backend",
    [ST_MAIL] = "sending MAIL FROM to backend",
    [ST_RCPT] = "sending RCPT TO to backend",
    [ST_RSET] = "sending RSET to backend",
    [ST_DATA] = "sending DATA to backend",
    [ST_BODY] = "sending message body to backend",
    [ST_DOT] = "waiting for backend reply to end of data",
};

static void on_read(struct ev_loop *loop, ev_io *w, int revents);

static ssize_t rconn_read(mx_relay *r, void *buf, size_t n)
{
    return mx_tls_recv(r->ssl, r->fd, buf, n);
}

static ssize_t rconn_write(mx_relay *r, const void *buf, size_t n)
{
    return mx_tls_send(r->ssl, r->fd, buf, n);
}
static void on_write(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void start_connect(mx_relay *r);

static mx_relay *relay_new(struct ev_loop *loop, mx_config *cfg, const char *sid, mx_relay_cb cb,
                           void *owner)
{
    mx_relay *r = g_new0(mx_relay, 1);
    r->loop = loop;
    r->cfg = mx_config_ref(cfg);
    r->sid = g_strdup(sid);
    r->cb = cb;
    r->owner = owner;
    r->fd = -1;
    r->st = ST_DISCONNECTED;
    ev_init(&r->rio, on_read);
    ev_init(&r->wio, on_write);
    ev_init(&r->timer, on_timer);
    r->rio.data = r->wio.data = r->timer.data = r;
    r->link.data = r;
    return r;
}

void mx_relay_set_client(mx_relay *r, const mx_relay_client *cl)
{
    r->peer = cl->peer;
    r->local = cl->local;
    r->cport = cl->port;
    g_free(r->caddr);
    g_free(r->cname);
    g_free(r->chelo);
    g_free(r->cproto);
    r->caddr = g_strdup(cl->addr);
    r->cname = g_strdup(cl->name);
    r->chelo = g_strdup(cl->helo);
    r->cproto = g_strdup(cl->proto ? cl->proto : "ESMTP");
}

void mx_relay_close_conn(mx_relay *r)
{
    ev_io_stop(r->loop, &r->rio);
    ev_io_stop(r->loop, &r->wio);
    ev_timer_stop(r->loop, &r->timer);
    if (r->ssl) {
        SSL_shutdown(r->ssl);
        SSL_free(r->ssl);
        r->ssl = NULL;
    }
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->st = ST_DISCONNECTED;
    mx_buf_free(&r->in);
    mx_buf_free(&r->out);
    g_free(r->ehlo);
    r->ehlo = NULL;
    r->caps = 0;
    g_clear_pointer(&r->xclient_attrs, g_free);
    g_clear_pointer(&r->xforward_attrs, g_free);
}

static void unpark(mx_relay *r)
{
    if (r->parked) {
        g_queue_unlink(&r->pool->idle, &r->link);
        r->parked = 0;
    }
}

void mx_relay_free(mx_relay *r)
{
    if (!r)
        return;
    unpark(r);
    if (r->fd >= 0 && r->st == ST_READY && mx_buf_used(&r->out) == 0) {
        /* Polite close; a short or failed write is fine, we are leaving. */
        if (r->ssl) {
            ERR_clear_error();
            SSL_write(r->ssl, "QUIT\r\n", 6);
        } else {
            ssize_t w = write(r->fd, "QUIT\r\n", 6);
            (void)w;
        }
    }
    mx_relay_close_conn(r);
    mx_config_unref(r->cfg);
    g_free(r->sid);
    g_free(r->line);
    g_free(r->caddr);
    g_free(r->cname);
    g_free(r->chelo);
    g_free(r->cproto);
    g_free(r);
}

int mx_relay_connected(const mx_relay *r) { return r->fd >= 0 && r->st >= ST_READY; }

const char *mx_relay_server(const mx_relay *r)
{
    return r->fd >= 0 ? r->cfg->backends[r->server].text : "-";
}

const char *mx_relay_error(const mx_relay *r) { return r->err; }

int mx_relay_has_ext(const mx_relay *r, const char *kw)
{
    mx_span params;
    return r->ehlo && mx_reply_has_ext(r->ehlo, kw, &params);
}

void mx_relay_set_timer(mx_relay *r, int seconds)
{
    r->deferred = 0;
    ev_timer_stop(r->loop, &r->timer);
    ev_timer_set(&r->timer, (ev_tstamp)seconds, 0.);
    ev_timer_start(r->loop, &r->timer);
}

/* Complete the pending operation. Always the last thing we do: the owner
 * may free us from inside the callback. */
void mx_relay_finish(mx_relay *r, mx_relay_status st, const mx_reply *rep)
{
    if (st != MX_RELAY_REPLY)
        r->txn_open = 0; /* the connection is gone with it */
    else if (r->op == OP_MAIL)
        r->txn_open = rep->code / 100 == 2;
    else if (r->op == OP_RSET || r->op == OP_DATA)
        r->txn_open = 0;
    r->op = OP_NONE;
    g_clear_pointer(&r->line, g_free);
    if (r->st >= ST_READY && r->fd >= 0) {
        r->st = ST_READY;
        /* Idle: keep watching, so a backend that closes or times us out
         * is noticed; no timer, the client's pace rules. */
        ev_timer_stop(r->loop, &r->timer);
    }
    r->cb(r->owner, st, rep);
}

static int in_handshake(const mx_relay *r) { return r->st > ST_DISCONNECTED && r->st < ST_READY; }

void G_GNUC_PRINTF(3, 4) mx_relay_fail(mx_relay *r, mx_relay_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char what[200];
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(r->err, sizeof(r->err), "%s while %s (%s)", what, state_action[r->st],
             r->fd >= 0 || in_handshake(r) ? r->cfg->backends[r->server].text : "-");
    int handshake = in_handshake(r) && r->op == OP_MAIL;
    if (r->reused && !r->got_reply && r->op == OP_MAIL) {
        /* A pooled connection the backend closed while it sat idle: not a
         * backend failure, just start afresh from the first server. */
        r->reused = 0;
        mx_relay_close_conn(r);
        r->server = 0;
        start_connect(r);
        return;
    }
    mx_metrics_backend_error(st == MX_RELAY_TIMEOUT ? MX_BACKEND_ERR_TIMEOUT
                             : st == MX_RELAY_LOST  ? MX_BACKEND_ERR_LOST
                             : st == MX_RELAY_PROTO ? MX_BACKEND_ERR_PROTOCOL
                                                    : MX_BACKEND_ERR_CONNECT);
    GString *l = mx_log_begin(MX_LOG_WARNING, "backend_error");
    mx_log_kv(l, "sid", r->sid);
    if (r->trace[0])
        mx_log_kv(l, "trace", r->trace);
    mx_log_kv(l, "backend", r->cfg->backends[r->server].text);
    mx_log_kv(l, "error", r->err);
    mx_log_end(l);
    mx_relay_close_conn(r);
    if (handshake) {
        if (r->server + 1 < r->cfg->nbackends) {
            r->server++;
            start_connect(r);
            return;
        }
        st = MX_RELAY_DOWN;
    }
    mx_relay_finish(r, st, NULL);
}

/* Report a failure from inside an API call asynchronously, so the caller
 * never sees its callback run before the call returns. */
static void defer_fail(mx_relay *r, mx_relay_status st, int close_first, const char *why)
{
    g_strlcpy(r->err, why, sizeof(r->err));
    r->deferred = 1;
    r->deferred_st = st;
    r->deferred_close = close_first;
    ev_io_stop(r->loop, &r->rio);
    ev_io_stop(r->loop, &r->wio);
    ev_timer_stop(r->loop, &r->timer);
    ev_timer_set(&r->timer, 0., 0.);
    ev_timer_start(r->loop, &r->timer);
}

static void send_raw(mx_relay *r, const char *p, size_t n)
{
    if (!mx_buf_put(&r->out, p, n)) {
        /* Command lines are bounded far below the buffer size. */
        g_error("relay: output buffer overflow");
    }
}

void G_GNUC_PRINTF(2, 3) mx_relay_send_line(mx_relay *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    send_raw(r, s, strlen(s));
    send_raw(r, "\r\n", 2);
    mx_relay_flush(r);
}

















static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_relay *r = w->data;

    mx_buf_compact(&r->in);
    if (r->st == ST_TLS) {
        mx_relay_dialog_tls_step(r);
        return;
    }
    ssize_t n = rconn_read(r, r->in.last, mx_buf_room(&r->in));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (r->st == ST_READY && r->op == OP_NONE) {
            mx_relay_close_conn(r); /* idle backend went away; reconnect on demand */
            if (r->parked)
                mx_relay_free(r);
            return;
        }
        mx_relay_fail(r, MX_RELAY_LOST, n == 0 ? "connection closed" : "read: %s",
             n == 0 ? "" : g_strerror(errno));
        return;
    }
    r->in.last += n;

    while (r->fd >= 0 && mx_buf_used(&r->in) > 0) {
        size_t used = 0;
        const char *why = NULL;
        mx_rc rc = mx_reply_parse(&r->rp, r->in.pos, r->in.last, &used, &why);
        r->in.pos += used;
        if (rc == MX_AGAIN)
            break;
        if (rc == MX_ERROR) {
            mx_relay_fail(r, MX_RELAY_PROTO, "bad reply: %s", why ? why : "?");
            return;
        }
        /* A copy: the owner may free us (and the parser) in its callback. */
        mx_reply rep = r->rp.r;
        r->got_reply = 1;
        if (mx_relay_dialog_on_reply(r, &rep))
            return; /* the operation ended: we may be closed or freed */
    }
    if (r->ssl && r->fd >= 0 && SSL_has_pending(r->ssl))
        ev_feed_event(loop, &r->rio, EV_READ); /* decrypted bytes wait in OpenSSL */
}

static void refill_body(mx_relay *r);

void mx_relay_flush(mx_relay *r)
{
    for (;;) {
        if (r->st == ST_BODY)
            refill_body(r);
        size_t n = mx_buf_used(&r->out);
        if (n == 0)
            break;
        ssize_t w = rconn_write(r, r->out.pos, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            ev_io_start(r->loop, &r->wio);
            return;
        }
        if (w < 0) {
            /* Callers keep going after mx_relay_send_line(); report from the loop. */
            char why[128];
            snprintf(why, sizeof(why), "write: %s", g_strerror(errno));
            mx_buf_reset(&r->out);
            defer_fail(r, MX_RELAY_LOST, 1, why);
            return;
        }
        r->out.pos += w;
        if (r->out.pos == r->out.last)
            mx_buf_reset(&r->out);
        if (r->st == ST_BODY)
            mx_relay_set_timer(r, r->cfg->backend_data_timeout); /* progress */
    }
    ev_io_stop(r->loop, &r->wio);
}

static void emit_out(void *ctx, const char *p, size_t len)
{
    mx_relay *r = ctx;
    send_raw(r, p, len);
}

/* Fill the output buffer from the header and spool, dot-stuffed. Stuffing
 * at most doubles a run (every line "." becomes ".."), so offering half the
 * room never overflows. */
static void refill_body(mx_relay *r)
{
    mx_buf_compact(&r->out);
    for (;;) {
        size_t room = mx_buf_room(&r->out);
        if (room < 64)
            return;
        size_t max = (room - 16) / 2;
        if (r->hdroff < r->hdrlen) {
            size_t n = MIN(max, r->hdrlen - r->hdroff);
            mx_data_encode(&r->enc, r->hdr + r->hdroff, r->hdr + r->hdroff + n, emit_out, r);
            r->hdroff += n;
            continue;
        }
        if (r->blen == 0) {
            if (!r->sp || !mx_spool_next(r->sp, &r->blk, &r->bp, &r->blen)) {
                mx_data_encode_finish(&r->enc, emit_out, r);
                r->st = ST_DOT;
                mx_relay_set_timer(r, r->cfg->dot_timeout);
                return;
            }
        }
        size_t n = MIN(max, r->blen);
        mx_data_encode(&r->enc, r->bp, r->bp + n, emit_out, r);
        r->bp += n;
        r->blen -= n;
    }
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_relay *r = w->data;
    if (r->st == ST_TLS) {
        mx_relay_dialog_tls_step(r);
        return;
    }
    if (r->st == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        ev_io_stop(loop, &r->wio);
        if (err) {
            mx_relay_fail(r, MX_RELAY_DOWN, "connect: %s", g_strerror(err));
            return;
        }
        r->st = ST_GREETING;
        mx_relay_set_timer(r, r->cfg->command_timeout);
        ev_io_start(loop, &r->rio);
        if (r->cfg->forward == MX_FORWARD_PROXY) {
            /* PROXY v1 (HAProxy proxy-protocol.txt 2.1), for backends such
             * as Exim that have neither XCLIENT nor XFORWARD. */
            char dst[INET6_ADDRSTRLEN] = "";
            int dport = 0;
            if (r->local.ss_family == AF_INET) {
                struct sockaddr_in *s = (struct sockaddr_in *)&r->local;
                inet_ntop(AF_INET, &s->sin_addr, dst, sizeof(dst));
                dport = ntohs(s->sin_port);
            } else if (r->local.ss_family == AF_INET6) {
                struct sockaddr_in6 *s = (struct sockaddr_in6 *)&r->local;
                inet_ntop(AF_INET6, &s->sin6_addr, dst, sizeof(dst));
                dport = ntohs(s->sin6_port);
            }
            if (r->peer.ss_family == r->local.ss_family &&
                (r->peer.ss_family == AF_INET || r->peer.ss_family == AF_INET6))
                mx_relay_send_line(r, "PROXY %s %s %s %d %d",
                          r->peer.ss_family == AF_INET ? "TCP4" : "TCP6", r->caddr, dst,
                          r->cport, dport);
            else
                mx_relay_send_line(r, "PROXY UNKNOWN");
        }
        return;
    }
    mx_relay_flush(r);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    mx_relay *r = w->data;
    if (r->parked) { /* idle in the pool for pool_idle_timeout */
        mx_relay_free(r);
        return;
    }
    if (r->deferred) {
        r->deferred = 0;
        if (r->deferred_close) {
            char why[sizeof(r->err)];
            g_strlcpy(why, r->err, sizeof(why));
            mx_relay_fail(r, r->deferred_st, "%s", why);
        } else {
            mx_relay_finish(r, r->deferred_st, NULL);
        }
        return;
    }
    if (r->st == ST_CONNECTING)
        mx_relay_fail(r, MX_RELAY_DOWN, "connect timed out");
    else
        mx_relay_fail(r, MX_RELAY_TIMEOUT, "timed out");
}

static void start_connect(mx_relay *r)
{
    const mx_addr *a = &r->cfg->backends[r->server];
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        mx_relay_fail(r, MX_RELAY_DOWN, "socket: %s", g_strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    r->fd = fd;
    r->st = ST_CONNECTING;
    mx_buf_alloc(&r->in, 4096);
    mx_buf_alloc(&r->out, 16384);
    mx_reply_parser_init(&r->rp);
    ev_io_set(&r->rio, fd, EV_READ);
    ev_io_set(&r->wio, fd, EV_WRITE);
    mx_relay_set_timer(r, r->cfg->connect_timeout);
    if (connect(fd, (const struct sockaddr *)&a->sa, a->len) < 0 && errno != EINPROGRESS) {
        /* Report from the loop, never from inside the caller's call. */
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", g_strerror(errno));
        defer_fail(r, MX_RELAY_DOWN, 1, why);
        return;
    }
    ev_io_start(r->loop, &r->wio);
}

static void begin(mx_relay *r, op_kind op, const char *line)
{
    g_assert(r->op == OP_NONE);
    r->op = op;
    g_free(r->line);
    r->line = g_strdup(line);
    if (r->fd < 0) {
        if (op != OP_MAIL) {
            defer_fail(r, MX_RELAY_LOST, 0, "no backend connection");
            return;
        }
        r->server = 0;
        start_connect(r);
        return;
    }
    if (r->needs_ident) {
        /* An adopted connection: tell the backend who the new client is;
         * the reply path continues with EHLO and then this operation. */
        r->needs_ident = 0;
        mx_relay_set_timer(r, r->cfg->command_timeout);
        mx_relay_dialog_send_xclient(r);
        return;
    }
    mx_relay_dialog_send_op(r);
}

void mx_relay_mail(mx_relay *r, const char *line) { begin(r, OP_MAIL, line); }
void mx_relay_rcpt(mx_relay *r, const char *line) { begin(r, OP_RCPT, line); }
void mx_relay_rset(mx_relay *r) { begin(r, OP_RSET, NULL); }

void mx_relay_data(mx_relay *r, const char *hdr, size_t hdrlen, const mx_spool *sp)
{
    r->hdr = hdr;
    r->hdrlen = hdrlen;
    r->hdroff = 0;
    r->sp = sp;
    r->blk = NULL;
    r->bp = NULL;
    r->blen = 0;
    begin(r, OP_DATA, NULL);
}

void mx_relay_pool_init(mx_relay_pool *p, struct ev_loop *loop)
{
    p->loop = loop;
    g_queue_init(&p->idle);
}

void mx_relay_pool_clear(mx_relay_pool *p)
{
    while (!g_queue_is_empty(&p->idle))
        mx_relay_free(g_queue_peek_head(&p->idle));
}

void mx_relay_set_trace(mx_relay *r, const char *id)
{
    g_strlcpy(r->trace, id ? id : "", sizeof(r->trace));
}

mx_relay *mx_relay_acquire(mx_relay_pool *p, mx_config *cfg, const char *sid, mx_relay_cb cb,
                           void *owner)
{
    while (!g_queue_is_empty(&p->idle)) {
        mx_relay *r = g_queue_peek_tail(&p->idle);
        unpark(r);
        if (r->cfg != cfg || r->fd < 0 || r->st != ST_READY) {
            mx_relay_free(r); /* made under an older config snapshot */
            continue;
        }
        ev_timer_stop(r->loop, &r->timer);
        g_free(r->sid);
        r->sid = g_strdup(sid);
        r->cb = cb;
        r->owner = owner;
        r->reused = 1;
        r->got_reply = 0;
        r->err[0] = '\0';
        r->needs_ident = cfg->forward == MX_FORWARD_XCLIENT;
        return r;
    }
    mx_relay *r = relay_new(p->loop, cfg, sid, cb, owner);
    r->pool = p;
    return r;
}

void mx_relay_release(mx_relay *r)
{
    if (!r)
        return;
    mx_relay_pool *p = r->pool;
    if (!p || r->fd < 0 || r->st != ST_READY || r->op != OP_NONE || r->txn_open ||
        r->cfg->forward == MX_FORWARD_PROXY || r->cfg->backend_pool_size == 0 ||
        (int)g_queue_get_length(&p->idle) >= r->cfg->backend_pool_size) {
        mx_relay_free(r);
        return;
    }
    r->cb = NULL;
    r->owner = NULL;
    r->reused = 0;
    r->parked = 1;
    g_queue_push_tail_link(&p->idle, &r->link);
    /* Below the backend's own idle timeout (Postfix: smtpd_timeout, 300 s),
     * so we close first and never race its 421. */
    mx_relay_set_timer(r, r->cfg->backend_pool_idle);
}
