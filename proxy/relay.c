/*
 * relay.c: the backend side of one client session (see relay.h).
 *
 * One command in flight at a time: the session already serialises the
 * client's pipelined commands, and a backend on loopback answers in tens of
 * microseconds, so pipelining towards the backend would buy little and cost
 * reply-matching complexity. The handshake is a chain of states; each state's
 * name is the log action ("while waiting for backend greeting").
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

#include "buf.h"
#include "data_codec.h"
#include "log.h"
#include "relay.h"
#include "tls.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

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

typedef enum { OP_NONE, OP_MAIL, OP_RCPT, OP_RSET, OP_DATA } op_kind;

enum {
    CAP_XCLIENT = 1 << 0,
    CAP_XFORWARD = 1 << 1,
};

struct mx_relay {
    struct ev_loop *loop;
    mx_config *cfg; /* ref held */
    char *sid;
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

static void on_read(struct ev_loop *loop, ev_io *w, int revents);
static void tls_step(mx_relay *r);

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
static void flush_out(mx_relay *r);

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

static void close_conn(mx_relay *r)
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
    close_conn(r);
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
int mx_relay_busy(const mx_relay *r) { return r->op != OP_NONE; }

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

static void set_timer(mx_relay *r, int seconds)
{
    r->deferred = 0;
    ev_timer_stop(r->loop, &r->timer);
    ev_timer_set(&r->timer, (ev_tstamp)seconds, 0.);
    ev_timer_start(r->loop, &r->timer);
}

/* Complete the pending operation. Always the last thing we do: the owner
 * may free us from inside the callback. */
static void finish(mx_relay *r, mx_relay_status st, const mx_reply *rep)
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

static void G_GNUC_PRINTF(3, 4) fail(mx_relay *r, mx_relay_status st, const char *fmt, ...)
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
        close_conn(r);
        r->server = 0;
        start_connect(r);
        return;
    }
    GString *l = mx_log_begin(MX_LOG_WARNING, "backend_error");
    mx_log_kv(l, "sid", r->sid);
    mx_log_kv(l, "backend", r->cfg->backends[r->server].text);
    mx_log_kv(l, "error", r->err);
    mx_log_end(l);
    close_conn(r);
    if (handshake) {
        if (r->server + 1 < r->cfg->nbackends) {
            r->server++;
            start_connect(r);
            return;
        }
        st = MX_RELAY_DOWN;
    }
    finish(r, st, NULL);
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

static void G_GNUC_PRINTF(2, 3) send_line(mx_relay *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    send_raw(r, s, strlen(s));
    send_raw(r, "\r\n", 2);
    flush_out(r);
}

/* xtext (RFC 3461 4): what XCLIENT and XFORWARD values must be. */
static void append_xtext(GString *g, const char *v, size_t max)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p && n < max; p++, n++) {
        if (*p < '!' || *p > '~' || *p == '+' || *p == '=')
            g_string_append_printf(g, "+%02X", *p);
        else
            g_string_append_c(g, (char)*p);
    }
}

static int attr_ok(const char *attrs, const char *name)
{
    if (!attrs)
        return 0;
    g_auto(GStrv) words = g_strsplit_set(attrs, " ", -1);
    for (char **w = words; *w; w++)
        if (g_ascii_strcasecmp(*w, name) == 0)
            return 1;
    return 0;
}

static void add_attr(GString *g, const char *attrs, const char *name, const char *val)
{
    if (!attr_ok(attrs, name) || !val)
        return;
    g_string_append_printf(g, " %s=", name);
    append_xtext(g, val, 255);
}

static const char *addr_for_xattr(const mx_relay *r, char *buf, size_t n)
{
    /* Postfix wants IPv6 addresses tagged. */
    if (r->peer.ss_family == AF_INET6)
        snprintf(buf, n, "IPV6:%s", r->caddr);
    else
        snprintf(buf, n, "%s", r->caddr);
    return buf;
}

static void send_xclient(mx_relay *r)
{
    GString *g = g_string_new("XCLIENT");
    char abuf[80], pbuf[16];
    snprintf(pbuf, sizeof(pbuf), "%d", r->cport);
    add_attr(g, r->xclient_attrs, "NAME", r->cname ? r->cname : "[UNAVAILABLE]");
    add_attr(g, r->xclient_attrs, "ADDR", addr_for_xattr(r, abuf, sizeof(abuf)));
    add_attr(g, r->xclient_attrs, "PORT", pbuf);
    add_attr(g, r->xclient_attrs, "HELO", r->chelo);
    add_attr(g, r->xclient_attrs, "PROTO", r->cproto);
    r->st = ST_XCLIENT;
    send_line(r, "%s", g->str);
    g_string_free(g, TRUE);
}

/* Returns 1 when a command went out (wait for its reply), 0 when the
 * backend advertised nothing for this part. */
static int send_xforward(mx_relay *r, int part)
{
    GString *g = g_string_new("XFORWARD");
    char abuf[80], pbuf[16];
    snprintf(pbuf, sizeof(pbuf), "%d", r->cport);
    if (part == 1) {
        add_attr(g, r->xforward_attrs, "NAME", r->cname ? r->cname : "[UNAVAILABLE]");
        add_attr(g, r->xforward_attrs, "ADDR", addr_for_xattr(r, abuf, sizeof(abuf)));
        add_attr(g, r->xforward_attrs, "PORT", pbuf);
        add_attr(g, r->xforward_attrs, "PROTO", r->cproto);
        add_attr(g, r->xforward_attrs, "HELO", r->chelo);
        r->st = ST_XFORWARD1;
    } else {
        add_attr(g, r->xforward_attrs, "IDENT", r->sid);
        add_attr(g, r->xforward_attrs, "SOURCE", "REMOTE");
        r->st = ST_XFORWARD2;
    }
    if (g->len == strlen("XFORWARD")) {
        g_string_free(g, TRUE);
        return 0;
    }
    set_timer(r, r->cfg->command_timeout);
    send_line(r, "%s", g->str);
    g_string_free(g, TRUE);
    return 1;
}

/* Drop MAIL/RCPT parameters whose extension the backend did not advertise
 * (RFC 5321 4.1.1.11: sending them would be a protocol error). */
static void filter_params(mx_relay *r, GString *out, const char *line)
{
    const char *gt = strrchr(line, '>');
    if (!gt) {
        g_string_append(out, line);
        return;
    }
    g_string_append_len(out, line, gt + 1 - line);
    g_auto(GStrv) words = g_strsplit(gt + 1, " ", -1);
    for (char **w = words; *w; w++) {
        if (!**w)
            continue;
        size_t klen = strcspn(*w, "=");
        const char *ext = "DSN"; /* RET ENVID NOTIFY ORCPT */
        if (klen == 4 && g_ascii_strncasecmp(*w, "SIZE", 4) == 0)
            ext = "SIZE";
        else if (klen == 4 && g_ascii_strncasecmp(*w, "BODY", 4) == 0)
            ext = "8BITMIME";
        else if (klen == 8 && g_ascii_strncasecmp(*w, "SMTPUTF8", 8) == 0)
            ext = "SMTPUTF8";
        if (!mx_relay_has_ext(r, ext))
            continue;
        g_string_append_c(out, ' ');
        g_string_append(out, *w);
    }
}

static void send_command(mx_relay *r, state st)
{
    GString *g = g_string_sized_new(256);
    filter_params(r, g, r->line);
    r->st = st;
    set_timer(r, r->cfg->command_timeout);
    send_line(r, "%s", g->str);
    g_string_free(g, TRUE);
}

static void send_pending_op(mx_relay *r)
{
    switch (r->op) {
    case OP_MAIL:
        /* XFORWARD attributes last one transaction: send before each MAIL. */
        if (r->cfg->forward == MX_FORWARD_XFORWARD && r->st == ST_READY &&
            (send_xforward(r, 1) || send_xforward(r, 2)))
            return;
        send_command(r, ST_MAIL);
        break;
    case OP_RCPT:
        send_command(r, ST_RCPT);
        break;
    case OP_RSET:
        r->st = ST_RSET;
        set_timer(r, r->cfg->command_timeout);
        send_line(r, "RSET");
        break;
    case OP_DATA:
        r->st = ST_DATA;
        set_timer(r, r->cfg->command_timeout);
        send_line(r, "DATA");
        break;
    case OP_NONE:
        break;
    }
}

static void capture_ehlo(mx_relay *r, const mx_reply *rep)
{
    mx_span p;
    g_free(r->ehlo);
    r->ehlo = g_memdup2(rep, sizeof(*rep));
    r->caps = 0;
    g_clear_pointer(&r->xclient_attrs, g_free);
    g_clear_pointer(&r->xforward_attrs, g_free);
    if (mx_reply_has_ext(rep, "XCLIENT", &p)) {
        r->caps |= CAP_XCLIENT;
        r->xclient_attrs = g_strndup(p.p, p.len);
    }
    if (mx_reply_has_ext(rep, "XFORWARD", &p)) {
        r->caps |= CAP_XFORWARD;
        r->xforward_attrs = g_strndup(p.p, p.len);
    }
}

/* The handshake is done: forward the client identity if configured, else
 * the pending operation. */
static int after_ehlo(mx_relay *r)
{
    if (r->cfg->tls_client && !r->ssl && !r->tls_refused && r->st == ST_EHLO) {
        if (mx_relay_has_ext(r, "STARTTLS")) {
            r->st = ST_STARTTLS;
            set_timer(r, r->cfg->command_timeout);
            send_line(r, "STARTTLS");
            return 0;
        }
        if (r->cfg->backend_starttls == MX_BACKEND_TLS_REQUIRED) {
            fail(r, MX_RELAY_DOWN, "backend does not offer STARTTLS (backend.starttls = required)");
            return 1;
        }
    }
    if (r->cfg->forward == MX_FORWARD_XCLIENT && r->st == ST_EHLO) {
        if (!(r->caps & CAP_XCLIENT)) {
            /* Fail closed: without XCLIENT the backend would judge relay
             * permission by our address, which it likely trusts. */
            fail(r, MX_RELAY_DOWN, "backend does not offer XCLIENT");
            return 1;
        }
        set_timer(r, r->cfg->command_timeout);
        send_xclient(r);
        return 0;
    }
    if (r->cfg->forward == MX_FORWARD_XFORWARD && !(r->caps & CAP_XFORWARD)) {
        fail(r, MX_RELAY_DOWN, "backend does not offer XFORWARD");
        return 1;
    }
    r->st = ST_READY;
    send_pending_op(r);
    return 0;
}

static int G_GNUC_PRINTF(2, 3) log_reply_error(mx_relay *r, const char *fmt, ...);

static void tls_start(mx_relay *r)
{
    r->st = ST_TLS;
    mx_buf_reset(&r->in); /* nothing sent before the handshake counts */
    r->ssl = SSL_new(mx_tls_ctx(r->cfg->tls_client));
    SSL_set_fd(r->ssl, r->fd);
    SSL_set_connect_state(r->ssl);
    if (r->cfg->backend_tls_verify) {
        /* The backend is named by address: its certificate must carry that
         * IP (subjectAltName) and chain to backend.tls_ca. */
        char host[INET6_ADDRSTRLEN] = "";
        const struct sockaddr_storage *sa = &r->cfg->backends[r->server].sa;
        if (sa->ss_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
        else
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host,
                      sizeof(host));
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(r->ssl), host);
    }
    set_timer(r, r->cfg->command_timeout);
    tls_step(r);
}

static void tls_step(mx_relay *r)
{
    ERR_clear_error();
    int k = SSL_do_handshake(r->ssl);
    if (k != 1) {
        int e = SSL_get_error(r->ssl, k);
        if (e == SSL_ERROR_WANT_READ) {
            ev_io_stop(r->loop, &r->wio);
            ev_io_start(r->loop, &r->rio);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            ev_io_start(r->loop, &r->wio);
            return;
        }
        unsigned long err = ERR_get_error();
        char buf[200] = "handshake failed";
        if (err)
            ERR_error_string_n(err, buf, sizeof(buf));
        long v = SSL_get_verify_result(r->ssl);
        if (v != X509_V_OK)
            g_strlcpy(buf, X509_verify_cert_error_string(v), sizeof(buf));
        /* A failed handshake is a backend failure whatever the mode: the
         * session is unusable in plaintext after STARTTLS was accepted. */
        fail(r, MX_RELAY_DOWN, "TLS: %s", buf);
        return;
    }
    ev_io_stop(r->loop, &r->wio);
    ev_io_start(r->loop, &r->rio);
    /* RFC 3207 4.2: EHLO again inside TLS; the reply path then continues
     * with XCLIENT and the pending operation. */
    r->st = ST_EHLO;
    set_timer(r, r->cfg->command_timeout);
    send_line(r, "EHLO %s", r->cfg->helo_name);
}

/* Returns 1 when the operation ended (we may be freed or closed). */
static int on_reply(mx_relay *r, const mx_reply *rep)
{
    int cls = rep->code / 100;

    switch (r->st) {
    case ST_GREETING:
        if (rep->code != 220) {
            fail(r, MX_RELAY_DOWN, "greeting %d %s", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        r->st = ST_EHLO;
        set_timer(r, r->cfg->command_timeout);
        send_line(r, "EHLO %s", r->cfg->helo_name);
        return 0;
    case ST_EHLO:
    case ST_EHLO2:
        if (cls != 2) {
            fail(r, MX_RELAY_DOWN, "EHLO answered %d %s", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        capture_ehlo(r, rep);
        return after_ehlo(r);
    case ST_STARTTLS:
        if (rep->code != 220) {
            if (r->cfg->backend_starttls == MX_BACKEND_TLS_REQUIRED) {
                fail(r, MX_RELAY_DOWN, "STARTTLS answered %d %s", rep->code,
                     mx_reply_line(rep, 0));
                return 1;
            }
            /* opportunistic: carry on in plaintext, as if not offered */
            r->st = ST_EHLO;
            r->tls_refused = 1;
            return after_ehlo(r);
        }
        tls_start(r);
        return 1; /* nothing more to parse in plaintext */
    case ST_XCLIENT:
        if (cls != 2) {
            fail(r, MX_RELAY_DOWN, "XCLIENT answered %d %s (is mxgate in "
                 "smtpd_authorized_xclient_hosts?)", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        /* Postfix answers XCLIENT with a new greeting; EHLO again either
         * way, since the session was reset. */
        r->st = ST_EHLO2;
        set_timer(r, r->cfg->command_timeout);
        send_line(r, "EHLO %s", r->cfg->helo_name);
        return 0;
    case ST_XFORWARD1:
    case ST_XFORWARD2:
        if (cls != 2) {
            fail(r, MX_RELAY_DOWN, "XFORWARD answered %d %s", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        if (r->st == ST_XFORWARD1 && send_xforward(r, 2))
            return 0;
        send_command(r, ST_MAIL);
        return 0;
    case ST_MAIL:
    case ST_RCPT:
    case ST_RSET:
    case ST_DOT:
        if (r->st == ST_DOT && cls == 3) {
            return log_reply_error(r, "%d after end of data", rep->code);
        }
        r->st = ST_READY;
        finish(r, MX_RELAY_REPLY, rep);
        return 1;
    case ST_DATA:
        if (rep->code == 354) {
            r->st = ST_BODY;
            set_timer(r, r->cfg->backend_data_timeout);
            mx_data_enc_init(&r->enc);
            flush_out(r); /* starts the stream */
            return 0;
        }
        if (cls == 4 || cls == 5) {
            r->st = ST_READY;
            finish(r, MX_RELAY_REPLY, rep);
            return 1;
        }
        return log_reply_error(r, "%d to DATA", rep->code);
    case ST_BODY:
        /* An early reply while we stream: the backend gave up on the
         * message. Pass a 4xx/5xx on; the connection state is unclear, so
         * drop it after reporting. */
        if (cls == 4 || cls == 5) {
            mx_reply copy = *rep;
            close_conn(r);
            finish(r, MX_RELAY_REPLY, &copy);
            return 1;
        }
        return log_reply_error(r, "%d during message body", rep->code);
    case ST_READY:
        /* Unsolicited, e.g. "421 timeout" from an idle backend. */
        mx_log_msg(MX_LOG_INFO, "backend_closed", "sid=%s backend said %d while idle", r->sid,
                   rep->code);
        close_conn(r);
        if (r->parked)
            mx_relay_free(r);
        return 1;
    default:
        return log_reply_error(r, "unexpected reply %d", rep->code);
    }
}

static int log_reply_error(mx_relay *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char what[160];
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    fail(r, MX_RELAY_PROTO, "out-of-protocol reply: %s", what);
    return 1;
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_relay *r = w->data;

    mx_buf_compact(&r->in);
    if (r->st == ST_TLS) {
        tls_step(r);
        return;
    }
    ssize_t n = rconn_read(r, r->in.last, mx_buf_room(&r->in));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (r->st == ST_READY && r->op == OP_NONE) {
            close_conn(r); /* idle backend went away; reconnect on demand */
            if (r->parked)
                mx_relay_free(r);
            return;
        }
        fail(r, MX_RELAY_LOST, n == 0 ? "connection closed" : "read: %s",
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
            fail(r, MX_RELAY_PROTO, "bad reply: %s", why ? why : "?");
            return;
        }
        /* A copy: the owner may free us (and the parser) in its callback. */
        mx_reply rep = r->rp.r;
        r->got_reply = 1;
        if (on_reply(r, &rep))
            return; /* the operation ended: we may be closed or freed */
    }
    if (r->ssl && r->fd >= 0 && SSL_has_pending(r->ssl))
        ev_feed_event(loop, &r->rio, EV_READ); /* decrypted bytes wait in OpenSSL */
}

static void refill_body(mx_relay *r);

static void flush_out(mx_relay *r)
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
            /* Callers keep going after send_line(); report from the loop. */
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
            set_timer(r, r->cfg->backend_data_timeout); /* progress */
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
                set_timer(r, r->cfg->dot_timeout);
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
        tls_step(r);
        return;
    }
    if (r->st == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        ev_io_stop(loop, &r->wio);
        if (err) {
            fail(r, MX_RELAY_DOWN, "connect: %s", g_strerror(err));
            return;
        }
        r->st = ST_GREETING;
        set_timer(r, r->cfg->command_timeout);
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
                send_line(r, "PROXY %s %s %s %d %d",
                          r->peer.ss_family == AF_INET ? "TCP4" : "TCP6", r->caddr, dst,
                          r->cport, dport);
            else
                send_line(r, "PROXY UNKNOWN");
        }
        return;
    }
    flush_out(r);
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
            fail(r, r->deferred_st, "%s", why);
        } else {
            finish(r, r->deferred_st, NULL);
        }
        return;
    }
    if (r->st == ST_CONNECTING)
        fail(r, MX_RELAY_DOWN, "connect timed out");
    else
        fail(r, MX_RELAY_TIMEOUT, "timed out");
}

static void start_connect(mx_relay *r)
{
    const mx_addr *a = &r->cfg->backends[r->server];
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(r, MX_RELAY_DOWN, "socket: %s", g_strerror(errno));
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
    set_timer(r, r->cfg->connect_timeout);
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
        set_timer(r, r->cfg->command_timeout);
        send_xclient(r);
        return;
    }
    send_pending_op(r);
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
    set_timer(r, r->cfg->backend_pool_idle);
}
