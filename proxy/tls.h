/*
 * tls.h: OpenSSL contexts for both sides of the gateway.
 *
 * Owns: building the server context (certificate, key, protocol floor,
 * ciphers, shared session-ticket keys) and the client context used towards
 * the backend, once per config snapshot. A reload builds new contexts;
 * sessions keep the snapshot (and contexts) they started with.
 * Not here: handshakes and I/O (session.c, relay.c drive SSL objects
 * non-blockingly on their loops).
 *
 * Ticket keys: tls.ticket_keys names a file of one or more 80-byte keys in
 * nginx's layout (16 bytes name, 32 bytes HMAC-SHA256 secret, 32 bytes
 * AES-256-CBC key). The first key issues tickets; all of them are accepted,
 * so keys rotate by prepending a new one. Every node given the same file
 * resumes every other node's sessions.
 */
#ifndef MX_TLS_H
#define MX_TLS_H

#include <sys/types.h>

#include <openssl/ssl.h>

typedef struct mx_tls mx_tls;
struct mx_config;

/* NULL with *err == NULL when TLS is not configured (no cert/key). */
mx_tls *mx_tls_server_new(const struct mx_config *cfg, char **err);
/* The backend side; NULL with *err == NULL when backend.starttls = none. */
mx_tls *mx_tls_client_new(const struct mx_config *cfg, char **err);
void mx_tls_free(mx_tls *t);

SSL_CTX *mx_tls_ctx(mx_tls *t);

/* recv(2)/send(2) over a socket that may carry TLS (ssl NULL: plain):
 * >0 bytes, 0 at EOF, -1 with errno (EAGAIN: wait for the socket). */
ssize_t mx_tls_recv(SSL *ssl, int fd, void *buf, size_t n);
ssize_t mx_tls_send(SSL *ssl, int fd, const void *buf, size_t n);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384" style summary of an established SSL. */
const char *mx_tls_version(const SSL *ssl);
const char *mx_tls_cipher(const SSL *ssl);

#endif
