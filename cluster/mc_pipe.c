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

#define LINE_MAX_KEEP 512 /* a reply line longer than this is judged on its start */

static int connect_to(const char *host, int port, int timeout_ms, char **err)
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

int mx_mc_pipeline(const char *host, int port, int timeout_ms, const void *req, size_t len,
                   size_t n, unsigned char *reply, char **err)
{
    memset(reply, MX_MC_NONE, n);
    if (n == 0)
        return 0;
    int fd = connect_to(host, port, timeout_ms, err);
    if (fd < 0)
        return -1;
    const char *out = req;
    size_t sent = 0, got = 0;
    char line[LINE_MAX_KEEP];
    size_t ll = 0;
    char buf[65536];
    int rc = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
        int pr = poll(&p, 1, timeout_ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            *err = g_strdup_printf("%s:%d: %s after %zu of %zu replies", host, port,
                                   pr == 0 ? "no progress for the timeout" : strerror(errno),
                                   got, n);
            rc = -1;
            break;
        }
        if ((p.revents & POLLOUT) && sent < len) {
            ssize_t w = send(fd, out + sent, len - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                *err = g_strdup_printf("%s:%d: send: %s", host, port, strerror(errno));
                rc = -1;
                break;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(fd, buf, sizeof(buf), 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                *err = g_strdup_printf("%s:%d: %s after %zu of %zu replies", host, port,
                                       r == 0 ? "connection closed" : strerror(errno), got, n);
                rc = -1;
                break;
            }
            for (ssize_t i = 0; i < r && got < n; i++) {
                char c = buf[i];
                if (c != '\n') {
                    if (ll < sizeof(line) - 1)
                        line[ll++] = c;
                    continue;
                }
                while (ll && (line[ll - 1] == '\r' || line[ll - 1] == ' '))
                    ll--;
                line[ll] = 0;
                reply[got++] = classify(line);
                ll = 0;
            }
        }
    }
    close(fd);
    return rc;
}
