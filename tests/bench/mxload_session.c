/*
 * mxload_session.c: mxload's connection slots and the per-connection SMTP
 * client state machine (see mxload.c for the tool as a whole).
 *
 * Owns the epoll instance, the slot table, the message and the command
 * lines. A slot runs one session at a time through the states of enum
 * state (mxload.h): non-blocking connect, one reply awaited per command,
 * no pipelining, STARTTLS handed to mxload_tls.c between the EHLO reply
 * and the second EHLO. Every command is one write; the message is written
 * in as few, large writes as the socket takes. A failed step is counted
 * (note_error, mxload_stats.c) and ends the session; in load mode the slot
 * then starts a new one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "benchmsg.h"
#include "mxload.h"

const char *const state_name[S_NSTATES] = {
    [S_FREE] = "free",       [S_CONNECTING] = "connect", [S_GREETING] = "greeting",
    [S_EHLO] = "ehlo",       [S_STARTTLS] = "starttls",  [S_TLS] = "tls",
    [S_EHLO2] = "ehlo2",     [S_MAIL] = "mail",          [S_RCPT] = "rcpt",
    [S_DATA] = "data",       [S_DOT] = "dot",            [S_IDLE] = "idle",
    [S_QUIT] = "quit",
};

int ep = -1;
struct conn *conns;
int nconns;
static char *message;         /* the DATA payload, dot-terminated */
size_t message_len;
static size_t body_off;       /* where the body starts in message */
static unsigned long msg_seq; /* -u: messages started */
char cmd_ehlo[300], cmd_mail[300], cmd_rcpt[300];

/* ---- the message ---- */

void build_message(size_t size)
{
    size_t pos = 0;
    message = bench_message(size, opt_from, opt_rcpt, 8, &pos, &body_off);
    if (!message)
        die("cannot build the message");
    memcpy(message + pos, ".\r\n", 3);
    message_len = pos + 3;
}

/* -u: give the slot's copy of the message a body no other message has.
 * The stamp is 16 hex digits, over the start of the first body line (76
 * characters unless the message is tiny), so the size stays the same and
 * no line starts with a dot. */
static void stamp_message(struct conn *c)
{
    if (!c->msg) {
        c->msg = malloc(message_len);
        if (!c->msg)
            die("out of memory");
        memcpy(c->msg, message, message_len);
    }
    char stamp[17];
    snprintf(stamp, sizeof(stamp), "%06lx%010lx", (unsigned long)getpid() & 0xffffffUL,
             ++msg_seq & 0xffffffffffUL);
    size_t room = message_len - 3 - body_off; /* body, CRLFs included */
    size_t n = 16;
    if (room < n + 2)
        n = room > 2 ? room - 2 : 0;
    memcpy(c->msg + body_off, stamp, n);
}

/* ---- connections ---- */

static uint64_t ev_tag(const struct conn *c)
{
    return ((uint64_t)c->gen << 32) | (uint64_t)(c - conns);
}

void set_events(struct conn *c, uint32_t ev)
{
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.u64 = ev_tag(c)};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->events = ev;
}

void close_conn(struct conn *c)
{
    if (c->ssl) {
        if (c->quit_ok) {
            /* close_notify, best effort: an SSL freed without it marks its
             * session as not resumable */
            ERR_clear_error();
            SSL_shutdown(c->ssl);
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (!c->quit_ok && c->sess) { /* a failed session does not vouch for its ticket */
        SSL_SESSION_free(c->sess);
        c->sess = NULL;
    }
    c->quit_ok = 0;
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->st = S_FREE;
    c->rlen = 0;
    c->wleft = 0;
    c->gen++;
}

/* A session ended (well or not); in load mode the slot starts another. */
static void end_session(struct conn *c)
{
    close_conn(c);
    if (!opt_idle && !stopping)
        start_session(c);
}

void fail_session(struct conn *c, const char *fmt, const char *arg)
{
    note_error(c, fmt, arg);
    end_session(c);
}

/* Write what is pending; returns -1 when the session failed. */
static int flush_conn(struct conn *c)
{
    while (c->wleft > 0) {
        if (c->ssl) {
            ERR_clear_error();
            int n = SSL_write(c->ssl, c->wp, c->wleft > (size_t)INT_MAX ? INT_MAX : (int)c->wleft);
            if (n > 0) {
                c->wp += n;
                c->wleft -= (size_t)n;
                continue;
            }
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                set_events(c, EPOLLIN | (e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : 0));
                return 0;
            }
            fail_session(c, "TLS write: %s", tls_error_text(e));
            return -1;
        }
        ssize_t n = send(c->fd, c->wp, c->wleft, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            set_events(c, EPOLLIN | EPOLLOUT);
            return 0;
        }
        if (n < 0) {
            fail_session(c, "write: %s", strerror(errno));
            return -1;
        }
        c->wp += n;
        c->wleft -= (size_t)n;
    }
    set_events(c, EPOLLIN);
    return 0;
}

static int send_data(struct conn *c, enum state next, const char *p, size_t n)
{
    c->st = next;
    c->wp = p;
    c->wleft = n;
    c->deadline = now() + opt_timeout;
    return flush_conn(c);
}

int send_str(struct conn *c, enum state next, const char *s)
{
    return send_data(c, next, s, strlen(s));
}

void start_session(struct conn *c)
{
    if (opt_max_msgs > 0 && completed_total >= opt_max_msgs)
        stopping = 1;
    if (stopping)
        return;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->st = S_CONNECTING;
    c->rlen = 0;
    c->wleft = 0;
    c->msgs = 0;
    c->t_session = c->t_msg = now();
    c->deadline = c->t_session + opt_timeout;
    c->events = EPOLLOUT;
    sessions_started++;
    struct epoll_event e = {.events = EPOLLOUT, .data.u64 = ev_tag(c)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0)
        die("epoll_ctl: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&target, sizeof(target)) < 0 && errno != EINPROGRESS)
        fail_session(c, "%s", strerror(errno));
}

/* ---- replies ---- */

/* EHLO answered, in plaintext without -S, inside TLS with it. */
static void after_ehlo(struct conn *c)
{
    if (opt_idle) {
        c->st = S_IDLE;
        c->deadline = 0;
        return;
    }
    send_str(c, S_MAIL, cmd_mail);
}

/* One complete reply arrived in state c->st. */
static void on_reply(struct conn *c, int code, const char *line)
{
    if (code < 200 || code >= 400) {
        note_error(c, "%s", line);
        end_session(c);
        return;
    }
    switch (c->st) {
    case S_GREETING:
        send_str(c, S_EHLO, cmd_ehlo);
        return;
    case S_EHLO:
        if (opt_tls) {
            send_str(c, S_STARTTLS, "STARTTLS\r\n");
            return;
        }
        after_ehlo(c);
        return;
    case S_STARTTLS:
        if (code != 220) {
            note_error(c, "%s", line);
            end_session(c);
            return;
        }
        c->st = S_TLS; /* parse_replies starts the handshake */
        return;
    case S_EHLO2:
        after_ehlo(c);
        return;
    case S_MAIL:
        send_str(c, S_RCPT, cmd_rcpt);
        return;
    case S_RCPT:
        send_str(c, S_DATA, "DATA\r\n");
        return;
    case S_DATA:
        if (code != 354) {
            note_error(c, "%s", line);
            end_session(c);
            return;
        }
        if (opt_unique) {
            stamp_message(c);
            send_data(c, S_DOT, c->msg, message_len);
        } else {
            send_data(c, S_DOT, message, message_len);
        }
        return;
    case S_DOT: {
        double t = now();
        if (c->wleft > 0) { /* a reply before the whole message was taken */
            note_error(c, "early reply: %s", line);
            end_session(c);
            return;
        }
        record_message(c, t);
        c->msgs++;
        if (opt_max_msgs > 0 && completed_total >= opt_max_msgs)
            stopping = 1;
        if (c->msgs < opt_per_session && !stopping) {
            c->t_msg = t;
            send_str(c, S_MAIL, cmd_mail);
            return;
        }
        send_str(c, S_QUIT, "QUIT\r\n");
        return;
    }
    case S_QUIT:
        sessions_ok++;
        c->quit_ok = 1;
        end_session(c);
        return;
    case S_IDLE:
        /* e.g. a 421 would have been caught above; anything else is odd */
        note_error(c, "unsolicited: %s", line);
        end_session(c);
        return;
    default:
        note_error(c, "unexpected reply: %s", line);
        end_session(c);
        return;
    }
}

/* Parse complete replies out of rbuf. A reply ends with a line whose
 * fourth character is a space (or which is just the code). */
static void parse_replies(struct conn *c)
{
    size_t off = 0;
    while (c->fd >= 0) {
        size_t reply_start = off;
        int done = 0, code = -1;
        size_t p = off;
        while (p < c->rlen) {
            char *lf = memchr(c->rbuf + p, '\n', c->rlen - p);
            if (!lf)
                break;
            size_t l = (size_t)(lf - (c->rbuf + p));
            const char *ln = c->rbuf + p;
            if (l >= 3 && ln[0] >= '0' && ln[0] <= '9' && ln[1] >= '0' && ln[1] <= '9' &&
                ln[2] >= '0' && ln[2] <= '9')
                code = (ln[0] - '0') * 100 + (ln[1] - '0') * 10 + (ln[2] - '0');
            else
                code = 0; /* garbage counts as an error reply */
            p += l + 1;
            if (l < 4 || ln[3] != '-' || code == 0) {
                done = 1;
                break;
            }
        }
        if (!done) {
            if (reply_start > 0) {
                memmove(c->rbuf, c->rbuf + reply_start, c->rlen - reply_start);
                c->rlen -= reply_start;
            }
            if (c->rlen == RBUF) {
                note_error(c, "%s", "reply longer than the read buffer");
                end_session(c);
            }
            return;
        }
        /* the first line of the reply, for error reports */
        char first[120];
        size_t fl = strcspn(c->rbuf + reply_start, "\r\n");
        if (fl >= sizeof(first))
            fl = sizeof(first) - 1;
        memcpy(first, c->rbuf + reply_start, fl);
        first[fl] = 0;
        off = p;
        uint32_t gen = c->gen;
        on_reply(c, code, first);
        /* the session may have ended (and the slot started another): stop */
        if (c->gen != gen)
            return;
        if (c->st == S_TLS && !c->ssl) {
            /* RFC 3207: the handshake follows the 220 at once; anything
             * after it in plaintext is the server's mistake */
            if (off < c->rlen) {
                note_error(c, "%s", "data after the 220 to STARTTLS");
                end_session(c);
                return;
            }
            c->rlen = 0;
            tls_begin(c);
            return;
        }
        if (off >= c->rlen) {
            c->rlen = 0;
            return;
        }
    }
}

/* ---- events ---- */

/* Plaintext: one read per event; epoll is level-triggered, anything left
 * wakes us again. TLS: read until OpenSSL holds no decrypted bytes, which
 * the socket would not signal again. */
static void on_readable(struct conn *c)
{
    for (;;) {
        ssize_t n;
        const char *why = NULL;
        if (c->ssl) {
            n = tls_recv(c, &why);
        } else {
            do
                n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
            while (n < 0 && errno == EINTR);
        }
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            if (n == 0)
                err_closed++;
            fail_session(c, "%s", n == 0 ? "connection closed by server" : why ? why : strerror(errno));
            return;
        }
        c->rlen += (size_t)n;
        uint32_t gen = c->gen;
        parse_replies(c);
        if (c->gen != gen || !c->ssl || c->st == S_TLS || SSL_pending(c->ssl) == 0)
            return;
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->st == S_TLS) {
        tls_step(c);
        return;
    }
    if (c->st == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            fail_session(c, "%s", strerror(err));
            return;
        }
        c->st = S_GREETING;
        c->deadline = now() + opt_timeout;
        set_events(c, EPOLLIN);
        return;
    }
    if ((ev & EPOLLOUT) || (c->ssl && c->wleft > 0)) { /* SSL_write may wait for input */
        uint32_t gen = c->gen;
        if (flush_conn(c) < 0 || c->gen != gen)
            return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
}

void check_timeouts(double t)
{
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->st == S_FREE || c->deadline <= 0 || t < c->deadline)
            continue;
        err_timeouts++;
        fail_session(c, "%s", "timeout");
    }
}

int busy_sessions(void)
{
    int n = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].st != S_FREE)
            n++;
    return n;
}

void run_loop_once(int timeout_ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[(uint32_t)evs[i].data.u64];
        /* an event for a session that has ended since epoll_wait returned */
        if (c->st == S_FREE || c->gen != (uint32_t)(evs[i].data.u64 >> 32))
            continue;
        on_event(c, evs[i].events);
    }
}

