/*
 * tls.c: OpenSSL contexts (see tls.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <glib.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "config.h"
#include "tls.h"

#define TICKET_KEY_SIZE 80

typedef struct ticket_key {
    unsigned char name[16];
    unsigned char hmac[32];
    unsigned char aes[32];
} ticket_key;

struct mx_tls {
    SSL_CTX *ctx;
    ticket_key *keys;
    int nkeys;
};

static int ex_index = -1;
static GOnce ex_once = G_ONCE_INIT;

static gpointer make_index(gpointer unused)
{
    ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    return NULL;
}

static char *ssl_error(const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return g_strdup_printf("%s: %s", what, e ? buf : "unknown error");
}

static int proto_version(int v) { return v == MX_TLS_V13 ? TLS1_3_VERSION : TLS1_2_VERSION; }

/* RFC 5077 ticket protection with the shared keys: AES-256-CBC and
 * HMAC-SHA256, the first key for new tickets, any key for old ones. */
static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
                     EVP_MAC_CTX *hctx, int enc)
{
    mx_tls *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index);
    if (!t || t->nkeys == 0)
        return -1;
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    const ticket_key *k = NULL;
    int rc = 1;
    if (enc) {
        k = &t->keys[0];
        if (RAND_bytes(iv, EVP_CIPHER_iv_length(EVP_aes_256_cbc())) != 1)
            return -1;
        if (EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            return -1;
        memcpy(name, k->name, 16);
    } else {
        for (int i = 0; i < t->nkeys; i++) {
            if (memcmp(name, t->keys[i].name, 16) == 0) {
                k = &t->keys[i];
                /* 2 = accept and issue a fresh ticket: under the current
                 * key when an older one was used, and always in TLS 1.3,
                 * whose tickets clients use only once (RFC 8446 C.4). */
                rc = i == 0 && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
                break;
            }
        }
        if (!k)
            return 0; /* unknown key: full handshake */
        if (EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            return -1;
    }
    if (EVP_MAC_init(hctx, k->hmac, sizeof(k->hmac), params) != 1)
        return -1;
    return rc;
}

static int load_ticket_keys(mx_tls *t, const char *path, char **err)
{
    gchar *data = NULL;
    gsize len = 0;
    GError *ge = NULL;
    if (!g_file_get_contents(path, &data, &len, &ge)) {
        *err = g_strdup_printf("tls.ticket_keys: %s", ge->message);
        g_error_free(ge);
        return -1;
    }
    if (len == 0 || len % TICKET_KEY_SIZE != 0) {
        *err = g_strdup_printf("tls.ticket_keys: %s: %zu bytes, expected a multiple of %d "
                               "(one or more 80-byte keys)", path, (size_t)len, TICKET_KEY_SIZE);
        OPENSSL_cleanse(data, len);
        g_free(data);
        return -1;
    }
    t->nkeys = (int)(len / TICKET_KEY_SIZE);
    t->keys = g_new0(ticket_key, t->nkeys);
    for (int i = 0; i < t->nkeys; i++) {
        const unsigned char *p = (const unsigned char *)data + i * TICKET_KEY_SIZE;
        memcpy(t->keys[i].name, p, 16);
        memcpy(t->keys[i].hmac, p + 16, 32);
        memcpy(t->keys[i].aes, p + 48, 32);
    }
    OPENSSL_cleanse(data, len);
    g_free(data);
    return 0;
}

mx_tls *mx_tls_server_new(const mx_config *cfg, char **err)
{
    *err = NULL;
    if (!*cfg->tls_cert && !*cfg->tls_key)
        return NULL;
    if (!*cfg->tls_cert || !*cfg->tls_key) {
        *err = g_strdup("tls.cert and tls.key go together");
        return NULL;
    }
    g_once(&ex_once, make_index, NULL);
    mx_tls *t = g_new0(mx_tls, 1);
    t->ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX *c = t->ctx;
    SSL_CTX_set_min_proto_version(c, proto_version(cfg->tls_min_version));
    /* Compression (CRIME) and renegotiation initiated by clients (a CPU
     * lever for attackers) stay off; the server's cipher order wins. */
    SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(c, cfg->tls_ciphers) != 1) {
        *err = ssl_error("tls.ciphers");
        goto fail;
    }
    if (SSL_CTX_set_ciphersuites(c, cfg->tls_ciphersuites) != 1) {
        *err = ssl_error("tls.ciphersuites");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(c, cfg->tls_cert) != 1) {
        *err = ssl_error(cfg->tls_cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
        *err = ssl_error(cfg->tls_key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        *err = ssl_error("tls.key does not match tls.cert");
        goto fail;
    }
    /* Sessions resume by ticket only: a per-process cache would not help a
     * fleet behind a balancer. */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    /* One TLS 1.3 ticket per handshake (OpenSSL sends two by default; a
     * client keeps one), and read whole socket buffers rather than a
     * 5-byte record header and then its body. */
    SSL_CTX_set_num_tickets(c, 1);
    SSL_CTX_set_read_ahead(c, 1);
    SSL_CTX_set_ex_data(c, ex_index, t);
    if (*cfg->tls_ticket_keys) {
        if (load_ticket_keys(t, cfg->tls_ticket_keys, err) < 0)
            goto fail;
        SSL_CTX_set_tlsext_ticket_key_evp_cb(c, ticket_cb);
    }
    return t;
fail:
    mx_tls_free(t);
    return NULL;
}

mx_tls *mx_tls_client_new(const mx_config *cfg, char **err)
{
    *err = NULL;
    if (cfg->backend_starttls == MX_BACKEND_TLS_NONE)
        return NULL;
    mx_tls *t = g_new0(mx_tls, 1);
    t->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(t->ctx, 1);
    if (cfg->backend_tls_verify) {
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
        int ok = *cfg->backend_tls_ca ? SSL_CTX_load_verify_locations(t->ctx, cfg->backend_tls_ca,
                                                                       NULL)
                                      : SSL_CTX_set_default_verify_paths(t->ctx);
        if (ok != 1) {
            *err = ssl_error("backend.tls_ca");
            mx_tls_free(t);
            return NULL;
        }
    }
    return t;
}

void mx_tls_free(mx_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    if (t->keys) {
        OPENSSL_cleanse(t->keys, sizeof(ticket_key) * (size_t)t->nkeys);
        g_free(t->keys);
    }
    g_free(t);
}

/* Map an SSL_read/SSL_write result to the recv(2)/send(2) convention. */
static ssize_t io_result(SSL *ssl, int r, int on_error)
{
    if (r > 0)
        return r;
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0)
            return 0; /* EOF without close_notify */
        return -1;
    default:
        errno = on_error;
        return -1;
    }
}

ssize_t mx_tls_recv(SSL *ssl, int fd, void *buf, size_t n)
{
    if (!ssl)
        return recv(fd, buf, n, 0);
    ERR_clear_error();
    return io_result(ssl, SSL_read(ssl, buf, (int)MIN(n, (size_t)G_MAXINT)), EPROTO);
}

ssize_t mx_tls_send(SSL *ssl, int fd, const void *buf, size_t n)
{
    if (!ssl)
        return send(fd, buf, n, MSG_NOSIGNAL);
    ERR_clear_error();
    ssize_t w = io_result(ssl, SSL_write(ssl, buf, (int)MIN(n, (size_t)G_MAXINT)), EPIPE);
    if (w == 0) { /* the peer closed: for a writer that is a broken pipe */
        errno = EPIPE;
        return -1;
    }
    return w;
}

SSL_CTX *mx_tls_ctx(mx_tls *t) { return t->ctx; }

const char *mx_tls_version(const SSL *ssl) { return SSL_get_version(ssl); }

const char *mx_tls_cipher(const SSL *ssl)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    return c ? SSL_CIPHER_get_name(c) : "-";
}
