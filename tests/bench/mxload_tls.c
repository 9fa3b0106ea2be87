/*
 * mxload_tls.c: mxload's STARTTLS client (-S, OpenSSL; see mxload.c for
 * the modes).
 *
 * Owns the client SSL_CTX (no certificate check, partial writes, tickets
 * to on_new_session and none in OpenSSL's own cache), which ticket a slot
 * keeps and offers in the resume and reuse modes, the non-blocking
 * handshake after the 220 to STARTTLS (followed by the second EHLO), reads
 * inside TLS in the shape of recv(2), and the text of TLS errors. The
 * handshake counters it updates are reported by mxload_stats.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mxload.h"

static SSL_CTX *tls_ctx;

/* What went wrong in a TLS call, for first_error. */
const char *tls_error_text(int ssl_error)
{
    static char buf[160];
    unsigned long e = ERR_get_error();
    if (e) {
        ERR_error_string_n(e, buf, sizeof(buf));
        ERR_clear_error();
        return buf;
    }
    if (ssl_error == SSL_ERROR_SYSCALL)
        return errno ? strerror(errno) : "connection closed";
    if (ssl_error == SSL_ERROR_ZERO_RETURN)
        return "close_notify from the server";
    snprintf(buf, sizeof(buf), "SSL error %d", ssl_error);
    return buf;
}

/* A session ticket arrived (TLS 1.2: in the handshake; TLS 1.3: after it,
 * read along with the first reply). In resume mode the slot keeps the
 * newest one for its next connection. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_app_data(ssl);
    tls_tickets++;
    if (opt_tls == TLS_FULL || !c)
        return 0; /* not kept: OpenSSL drops its reference */
    if (c->sess)
        SSL_SESSION_free(c->sess);
    c->sess = sess;
    return 1; /* the reference is ours now */
}

void tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx)
        die("SSL_CTX_new failed");
    /* the benchmark's own throwaway certificate: nothing to verify */
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    if (opt_tls_version &&
        (SSL_CTX_set_min_proto_version(tls_ctx, opt_tls_version) != 1 ||
         SSL_CTX_set_max_proto_version(tls_ctx, opt_tls_version) != 1))
        die("cannot pin the TLS version");
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Tickets go to on_new_session, in both modes (the same client work);
     * OpenSSL's own client cache stays empty. */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(tls_ctx, on_new_session);
}

/* Drive the non-blocking client handshake; once done, EHLO again. */
void tls_step(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            set_events(c, EPOLLIN);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            set_events(c, EPOLLOUT);
            return;
        }
        fail_session(c, "handshake: %s", tls_error_text(e));
        return;
    }
    tls_handshakes++;
    tls_hs_time += now() - c->t_hs;
    if (SSL_session_reused(c->ssl))
        tls_resumed++;
    snprintf(tls_last_version, sizeof(tls_last_version), "%s", SSL_get_version(c->ssl));
    snprintf(tls_last_cipher, sizeof(tls_last_cipher), "%s", SSL_get_cipher_name(c->ssl));
    send_str(c, S_EHLO2, cmd_ehlo);
}

/* The 220 to STARTTLS has been read, and nothing after it. */
void tls_begin(struct conn *c)
{
    c->ssl = SSL_new(tls_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        die("SSL_new failed");
    SSL_set_app_data(c->ssl, c);
    if (opt_tls != TLS_FULL && c->sess) {
        /* resume: this very session, which OpenSSL marks used (TLS 1.3);
         * reuse: a copy, so the slot's own stays unused */
        SSL_SESSION *offer = opt_tls == TLS_REUSE ? SSL_SESSION_dup(c->sess) : c->sess;
        if (!offer || SSL_set_session(c->ssl, offer) != 1)
            die("SSL_set_session failed");
        if (offer != c->sess)
            SSL_SESSION_free(offer); /* the SSL holds its own reference */
        tls_offered++;
    }
    c->st = S_TLS;
    c->t_hs = now();
    c->deadline = c->t_hs + opt_timeout;
    tls_step(c);
}

/* Inside TLS: like recv(2), with -1 and errno EAGAIN for "wait". */
ssize_t tls_recv(struct conn *c, const char **why)
{
    ERR_clear_error();
    int r = SSL_read(c->ssl, c->rbuf + c->rlen, (int)(RBUF - c->rlen));
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE: /* e.g. a key update to answer */
        set_events(c, EPOLLIN | EPOLLOUT);
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0)
            return 0; /* EOF without close_notify */
        /* fall through */
    default:
        *why = tls_error_text(e);
        errno = EPROTO;
        return -1;
    }
}
