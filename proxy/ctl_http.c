/*
 * ctl_http.c: where mxgatectl's store is, and HTTP to the node (see
 * ctl_int.h).
 *
 * With cluster.memcached set, mxgatectl talks to memcached itself, with the
 * cluster key (the same store a node builds, without its threads). Without
 * it the store is embedded in the running node, so mxgatectl asks the node
 * over HTTP at admin.listen (/v1/rep, /v1/feed, /v1/limits; see admin.c):
 * one HTTP/1.0 request per connection, the reply read to its end.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>

#include "ctl_int.h"

#define HTTP_CONNECT_MS 5000
#define HTTP_IO_SECONDS 120
#define CTL_STORE_TIMEOUT_MS 2000

/* ---- where the store is ---- */

int open_store(ctl *c, char **err)
{
    if (*c->cfg->cluster_memcached) {
        /* not on the mail path: a slow answer beats a line reported as
         * failed (and a breaker opened by a busy machine) */
        if (c->cfg->cluster_timeout < CTL_STORE_TIMEOUT_MS)
            c->cfg->cluster_timeout = CTL_STORE_TIMEOUT_MS;
        c->policy = mx_policy_new(c->cfg, err);
        if (!c->policy)
            return -1;
        c->store = mx_policy_store(c->policy);
        return 0;
    }
    if (!c->cfg->admin.len) {
        *err = g_strdup("cluster.memcached is empty, so the store is embedded in the node, "
                        "and admin.listen is empty, so the node cannot be reached: set one");
        return -1;
    }
    memcpy(&c->node, &c->cfg->admin.sa, sizeof(c->node));
    c->node_len = c->cfg->admin.len;
    /* a wildcard listener is reached on loopback */
    if (c->node.ss_family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&c->node;
        if (s->sin_addr.s_addr == htonl(INADDR_ANY))
            s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (c->node.ss_family == AF_INET6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&c->node;
        if (IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr))
            s->sin6_addr = in6addr_loopback;
    }
    return 0;
}

/* open_store, saying why it failed: 0, or the exit status 2. */
int open_store_or_say(ctl *c)
{
    char *err = NULL;
    if (open_store(c, &err) == 0)
        return 0;
    fprintf(stderr, "mxgatectl: %s\n", err);
    g_free(err);
    return 2;
}

/* ---- HTTP to the node ---- */

static int send_all(int fd, const void *p, size_t n)
{
    const char *d = p;
    while (n > 0) {
        ssize_t w = send(fd, d, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request, HTTP/1.0, the reply read to its end. */
int http_call(ctl *c, const char *method, const char *target, const void *body,
                     size_t len, http_reply *out, char **err)
{
    memset(out, 0, sizeof(*out));
    const char *where = c->cfg->admin.text;
    int fd = socket(c->node.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *err = g_strdup_printf("socket: %s", g_strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&c->node, c->node_len) < 0 && errno != EINPROGRESS) {
        *err = g_strdup_printf("cannot connect to the node at admin.listen %s: %s", where,
                               g_strerror(errno));
        close(fd);
        return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (poll(&p, 1, HTTP_CONNECT_MS) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 ||
        soerr) {
        *err = g_strdup_printf("cannot connect to the node at admin.listen %s: %s", where,
                               soerr ? g_strerror(soerr) : "timed out");
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = HTTP_IO_SECONDS};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    g_autofree char *head = g_strdup_printf(
        "%s %s HTTP/1.0\r\nHost: mxgate\r\nUser-Agent: mxgatectl/%s\r\n"
        "Content-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
        method, target, MX_VERSION, body ? "application/octet-stream" : "text/plain", len);
    if (send_all(fd, head, strlen(head)) < 0 || (len && send_all(fd, body, len) < 0)) {
        *err = g_strdup_printf("sending to the node at %s: %s", where, g_strerror(errno));
        close(fd);
        return -1;
    }
    GString *r = g_string_new(NULL);
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = g_strdup_printf("reading from the node at %s: %s", where, g_strerror(errno));
            close(fd);
            g_string_free(r, TRUE);
            return -1;
        }
        if (n == 0)
            break;
        g_string_append_len(r, buf, n);
    }
    close(fd);
    const char *sep = strstr(r->str, "\r\n\r\n");
    if (!g_str_has_prefix(r->str, "HTTP/1.") || r->len < 12 || !sep) {
        *err = g_strdup_printf("the node at %s sent no HTTP reply", where);
        g_string_free(r, TRUE);
        return -1;
    }
    out->status = atoi(r->str + 9);
    out->len = r->len - (size_t)(sep + 4 - r->str);
    out->body = g_strndup(sep + 4, out->len);
    g_string_free(r, TRUE);
    return 0;
}

void query_add(GString *q, const char *name, const char *value)
{
    if (!value)
        return;
    g_autofree char *e = g_uri_escape_string(value, NULL, FALSE);
    g_string_append_printf(q, "%c%s=%s", strchr(q->str, '?') ? '&' : '?', name, e);
}

/* What the node answered to GET target, on stdout (200) or stderr. */
int ask_node(ctl *c, GString *q)
{
    char *err = NULL;
    http_reply hr;
    int rc = http_call(c, "GET", q->str, NULL, 0, &hr, &err);
    if (rc < 0) {
        fprintf(stderr, "mxgatectl: %s\n", err);
        g_free(err);
        return 1;
    }
    fwrite(hr.body, 1, hr.len, hr.status == 200 ? stdout : stderr);
    g_free(hr.body);
    return hr.status == 200 ? 0 : 1;
}
