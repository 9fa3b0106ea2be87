/*
 * conn.c: a session's connection before and under SMTP: the PROXY header,
 * TLS handshakes (implicit, and after STARTTLS) and TLS-or-plain I/O.
 *
 * Promises: the PROXY header is consumed to exactly its length (what
 * follows stays in the socket for SMTP or TLS); nothing is sent before it;
 * handshakes are driven non-blockingly by the session's watchers; after
 * STARTTLS the SMTP state starts afresh (RFC 3207 4.2).
 */
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>

#include <openssl/err.h>

#include "log.h"
#include "proxy_proto.h"
#include "session_int.h"
#include "tls.h"

ssize_t mx_conn_recv(mx_session *s, void *buf, size_t n)
{
    return mx_tls_recv(s->ssl, s->fd, buf, n);
}

ssize_t mx_conn_send(mx_session *s, const void *buf, size_t n)
{
    return mx_tls_send(s->ssl, s->fd, buf, n);
}

void mx_conn_tls_fail(mx_session *s, const char *why)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    GString *l = mx_log_begin(MX_LOG_INFO, "tls_error");
    mx_session_log_ids(l, s);
    mx_log_kv(l, "client", s->addr);
    mx_log_kv(l, "error", e ? buf : why);
    mx_log_end(l);
    if (s->ssl) {
        SSL_free(s->ssl); /* no close_notify on a failed handshake */
        s->ssl = NULL;
    }
    mx_session_close(s, "tls_handshake_failed");
}

void mx_conn_tls_begin(mx_session *s)
{
    s->ssl = SSL_new(mx_tls_ctx(s->cfg->tls_server));
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_accept_state(s->ssl);
    mx_session_set_timer(s, s->cfg->tls_handshake_timeout);
    mx_conn_tls_step(s);
}

/* Drive the non-blocking handshake; the watchers follow what OpenSSL
 * wants next. */
void mx_conn_tls_step(mx_session *s)
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
        mx_conn_tls_fail(s, e == SSL_ERROR_SYSCALL ? "connection closed in handshake"
                                           : "handshake failed");
        return;
    }
    ev_io_stop(s->w->loop, &s->wio);
    if (mx_log_enabled(MX_LOG_DEBUG)) {
        GString *l = mx_log_begin(MX_LOG_DEBUG, "tls");
        mx_session_log_ids(l, s);
        mx_log_kv(l, "version", mx_tls_version(s->ssl));
        mx_log_kv(l, "cipher", mx_tls_cipher(s->ssl));
        mx_log_kvi(l, "resumed", SSL_session_reused(s->ssl));
        mx_log_end(l);
    }
    if (s->after_tls_banner) {
        s->after_tls_banner = 0;
        mx_session_begin_smtp(s);
        return;
    }
    /* RFC 3207 4.2: forget everything learnt before the handshake. */
    g_clear_pointer(&s->helo, g_free);
    s->esmtp = 0;
    mx_session_txn_reset(s);
    if (s->relay) {
        mx_relay_release(s->relay);
        s->relay = NULL;
    }
    mx_session_to_cmd_phase(s);
    mx_session_process(s);
}

/* An IPv4 client on a dual-stack [::] listener arrives as ::ffff:a.b.c.d:
 * turn it into the IPv4 address it is, so logs, XCLIENT, reputation and
 * rate limits all see one address for one client. */
static void unmap_v4(struct sockaddr_storage *ss)
{
    if (ss->ss_family != AF_INET6)
        return;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
        return;
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = in6->sin6_port};
    memcpy(&in.sin_addr, &in6->sin6_addr.s6_addr[12], 4);
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, &in, sizeof(in));
}

void mx_conn_set_peer_text(mx_session *s)
{
    unmap_v4(&s->peer);
    unmap_v4(&s->local);
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

void mx_conn_proxy_fail(mx_session *s, const char *why)
{
    GString *l = mx_log_begin(MX_LOG_WARNING, "proxy_error");
    mx_session_log_ids(l, s);
    mx_log_kv(l, "peer", s->addr);
    mx_log_kv(l, "error", why);
    mx_log_end(l);
    mx_session_close(s, "bad_proxy_header");
}

/*
 * The PROXY header arrives first (HAProxy proxy-protocol.txt 2.1, 2.2).
 * Peek, and consume only bytes that are certainly header: while the parser
 * says MX_AGAIN everything seen is a header prefix, and at MX_DONE exactly
 * the rest of its length is taken. What follows (SMTP, or a TLS
 * ClientHello) stays in the socket for whoever reads next.
 */
void mx_conn_proxy_read(mx_session *s)
{
    char *buf = s->in.start;
    size_t cap = (size_t)(s->in.end - s->in.start);
    ssize_t n = recv(s->fd, buf + s->pp_have, cap - s->pp_have, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        mx_session_close(s, n == 0 ? "client_closed" : "read_error");
        return;
    }
    size_t total = s->pp_have + (size_t)n;
    mx_pp_header h;
    const char *why = NULL;
    mx_rc rc = mx_pp_parse(buf, buf + total, &h, &why);
    if (rc == MX_ERROR) {
        mx_conn_proxy_fail(s, why ? why : "malformed PROXY header");
        return;
    }
    if (rc == MX_AGAIN && total == cap) {
        /* v2 allows 16 + 65535 bytes; a balancer's header (addresses and
         * a few TLVs) is far below the input buffer, so more is refused. */
        mx_conn_proxy_fail(s, "PROXY header too long");
        return;
    }
    size_t take = rc == MX_DONE ? h.length - s->pp_have : (size_t)n;
    ssize_t got = recv(s->fd, buf + s->pp_have, take, 0);
    if (got != (ssize_t)take) {
        mx_conn_proxy_fail(s, "short read of a peeked PROXY header");
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
        mx_conn_set_peer_text(s);
    }
    if (mx_log_enabled(MX_LOG_DEBUG)) {
        GString *l = mx_log_begin(MX_LOG_DEBUG, "proxy");
        mx_session_log_ids(l, s);
        mx_log_kvi(l, "version", h.version);
        mx_log_kv(l, "client", h.local ? "local" : h.unknown ? "unknown" : s->addr);
        mx_log_end(l);
    }
    mx_session_begin_smtp(s);
}
