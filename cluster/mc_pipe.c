/*
 * mc_pipe.c: many memcached storage commands in one stream (see mc_pipe.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>

#include "mc_pipe.h"

int mx_mc_connect(const char *host, int port, int timeout_ms, char **err)
{
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int grc = getaddrinfo(host, ps, &hints, &ai);
    if (grc != 0) {
        *err = g_strdup_printf("%s:%d: %s", host, port, gai_strerror(grc));
        return -1;
    }
    int fd = -1;
    const char *why = "no address";
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            why = strerror(errno);
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            int pr = poll(&p, 1, timeout_ms);
            if (pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            why = pr == 0 ? "connect timed out" : strerror(soerr ? soerr : errno);
        } else {
            why = strerror(errno);
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        *err = g_strdup_printf("%s:%d: %s", host, port, why);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static unsigned char classify(const char *line)
{
    static const struct {
        const char *text;
        unsigned char code;
    } known[] = {{"STORED", MX_MC_STORED},
                 {"NOT_STORED", MX_MC_NOT_STORED},
                 {"DELETED", MX_MC_DELETED},
                 {"NOT_FOUND", MX_MC_NOT_FOUND}};
    for (size_t i = 0; i < G_N_ELEMENTS(known); i++)
        if (strcmp(line, known[i].text) == 0)
            return known[i].code;
    if (*line && strspn(line, "0123456789") == strlen(line))
        return MX_MC_NUMBER;
    return MX_MC_OTHER;
}

static void req_fail(mx_mc_req *r, int timed_out, const char *why)
{
    r->err = g_strdup_printf("%s:%d: %s after %zu of %zu replies", r->host, r->port, why, r->got,
                             r->n);
    r->timed_out = timed_out;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->done = 1;
}

/* Take in r bytes of replies, up to the end of the n-th line; returns the
 * bytes taken. */
static size_t req_take(mx_mc_req *r, const char *buf, size_t len)
{
    size_t i = 0;
    for (; i < len && r->got < r->n; i++) {
        char c = buf[i];
        if (c != '\n') {
            if (r->ll < sizeof(r->line) - 1)
                r->line[r->ll++] = c;
            continue;
        }
        while (r->ll && (r->line[r->ll - 1] == '\r' || r->line[r->ll - 1] == ' '))
            r->ll--;
        r->line[r->ll] = 0;
        unsigned char code = classify(r->line);
        if (code == MX_MC_NUMBER && r->number)
            r->number[r->got] = g_ascii_strtoull(r->line, NULL, 10);
        r->reply[r->got++] = code;
        r->ll = 0;
    }
    if (r->got == r->n)
        r->done = 1;
    return i;
}

/* A reply line past the n-th (there should be none) leaves the connection
 * in doubt: it is closed once done. */
static void req_read(mx_mc_req *r, const char *buf, size_t len)
{
    size_t i = req_take(r, buf, len);
    if (r->done && (i < len || r->ll)) {
        close(r->fd);
        r->fd = -1;
    }
}

void mx_mc_reply_begin(mx_mc_req *r)
{
    memset(r->reply, MX_MC_NONE, r->n);
    if (r->number)
        memset(r->number, 0, r->n * sizeof(uint64_t));
    r->sent = r->got = r->ll = 0;
    r->err = NULL;
    r->timed_out = 0;
    r->done = r->n == 0;
}

size_t mx_mc_reply_take(mx_mc_req *r, const char *buf, size_t len)
{
    return req_take(r, buf, len);
}

int mx_mc_exchange(mx_mc_req *r, size_t k, int timeout_ms)
{
    int failed = 0;
    for (size_t i = 0; i < k; i++) {
        mx_mc_reply_begin(&r[i]);
        if (!r[i].done && r[i].fd < 0) {
            char *err = NULL;
            r[i].fd = mx_mc_connect(r[i].host, r[i].port, timeout_ms, &err);
            if (r[i].fd < 0) {
                r[i].err = err;
                r[i].done = 1;
                failed++;
            }
        }
    }
    /* the commands usually fit the socket buffer: send before waiting */
    for (size_t i = 0; i < k; i++) {
        if (r[i].done)
            continue;
        ssize_t w = send(r[i].fd, r[i].data, r[i].len, MSG_NOSIGNAL);
        if (w > 0) {
            r[i].sent = (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            req_fail(&r[i], 0, strerror(errno));
            failed++;
        }
    }
    struct pollfd *p = g_new(struct pollfd, k ? k : 1);
    size_t *map = g_new(size_t, k ? k : 1);
    char buf[65536];
    for (;;) {
        nfds_t np = 0;
        for (size_t i = 0; i < k; i++) {
            if (r[i].done)
                continue;
            p[np] = (struct pollfd){
                .fd = r[i].fd, .events = POLLIN | (r[i].sent < r[i].len ? POLLOUT : 0)};
            map[np++] = i;
        }
        if (np == 0)
            break;
        int pr = poll(p, np, timeout_ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            const char *why = pr == 0 ? "no progress for the timeout" : strerror(errno);
            for (nfds_t j = 0; j < np; j++, failed++)
                req_fail(&r[map[j]], pr == 0, why);
            break;
        }
        for (nfds_t j = 0; j < np; j++) {
            mx_mc_req *q = &r[map[j]];
            if ((p[j].revents & POLLOUT) && q->sent < q->len) {
                ssize_t w = send(q->fd, (const char *)q->data + q->sent, q->len - q->sent,
                                 MSG_NOSIGNAL);
                if (w > 0) {
                    q->sent += (size_t)w;
                } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    req_fail(q, 0, strerror(errno));
                    failed++;
                    continue;
                }
            }
            if (p[j].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t n = recv(q->fd, buf, sizeof(buf), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                    req_fail(q, 0, n == 0 ? "connection closed" : strerror(errno));
                    failed++;
                    continue;
                }
                if (n > 0)
                    req_read(q, buf, (size_t)n);
            }
        }
    }
    g_free(p);
    g_free(map);
    return failed;
}
