/*
 * mxload.c: SMTP load generator for the mxgate benchmark (tests/bench).
 *
 * One thread, one epoll loop, non-blocking sockets with TCP_NODELAY. Each
 * session speaks the classic dialogue without pipelining, waiting for every
 * reply:
 *
 *   connect, 220 greeting, EHLO, [STARTTLS, 220, TLS handshake, EHLO,]
 *   MAIL, RCPT, DATA, 354, message + ".", 250, [MAIL ... again, -m],
 *   QUIT, 221, close
 *
 * Every command is one write; the message (headers, body and the final
 * ".") is prepared once and sent with as few, large writes as the socket
 * takes. With -u every message gets a body of its own: each slot sends its
 * own copy, with the process id and a message counter written over the
 * first 16 characters of the body (content scanners cache verdicts by
 * content, and real mail does not repeat). Any reply that is not 2xx/3xx,
 * a connection failure, an early close or a timeout counts as an error and
 * ends that session; the slot then starts a new session.
 *
 * Latency of a message: from connect() (first message of a session) or from
 * sending MAIL (later messages of the same session) to the 250 that answers
 * the final dot. With STARTTLS that includes the handshake.
 *
 * STARTTLS (-S full | resume | reuse, OpenSSL): after the first EHLO reply
 * the session sends STARTTLS, does the handshake (no certificate check: the
 * benchmark talks to its own throwaway certificate), sends EHLO again and
 * then the transaction, all inside TLS; QUIT is answered, then mxload sends
 * close_notify and closes. All modes use the same client settings and
 * accept session tickets.
 *
 *   full    never offers a session: every handshake is a full one.
 *   resume  each connection slot keeps the newest ticket its previous
 *           connection received (TLS 1.2: in the handshake; TLS 1.3: after
 *           it, read along with the first reply) and offers it on its next
 *           connection with SSL_set_session. OpenSSL uses a TLS 1.3
 *           session once (RFC 8446 C.4): a server that sends no new
 *           ticket on resumption gets a full handshake next.
 *   reuse   as resume, but the slot offers a fresh copy of its newest
 *           ticket (SSL_SESSION_dup), so a TLS 1.3 ticket is offered again
 *           and again until a newer one arrives: resumption whether or not
 *           the server renews tickets.
 *
 * A slot whose session failed (error, timeout) forgets its ticket. -V pins
 * the protocol version (1.2 or 1.3; default: the highest both sides speak).
 * *
 * Load mode runs -w seconds of warm-up, then -t measured seconds, then lets
 * the sessions in flight finish, and prints one line of key=value pairs:
 *
 *   unique             1 with -u
 *   msgs, msgs_per_s   messages whose 250 arrived in the measured window
 *   total_msgs         all messages, warm-up and drain included
 *   lat_n, p50_ms, p90_ms, p99_ms, max_ms, mean_ms
 *                      latency of the messages started in the window
 *   over_40ms          how many of them took 40 ms or more
 *   errors, err_STATE  failed sessions, by the step that failed
 *   err_timeouts, err_closed_by_server, first_error="..."
 *   cpu_s              CPU seconds mxload itself used
 *   with -S:
 *   tls, tls_version, tls_cipher   mode, and the last handshake's result
 *   tls_handshakes     completed handshakes, warm-up and drain included
 *   tls_offered        of those, how many offered a saved session
 *   tls_resumed        how many the server resumed (SSL_session_reused)
 *   tls_tickets        session tickets received
 *   tls_hs_mean_ms     mean time from ClientHello to the end of the handshake
 *
 * Idle mode (-I N) opens N sessions (at most 100 connecting at a time),
 * stops each after the EHLO reply, prints a "state=ready" line, holds them
 * until SIGTERM/SIGINT/SIGUSR1 or -h seconds, then QUITs them all and
 * prints a "state=done" line.
 *
 * Exit status: 0 without errors, 1 with errors, 2 on bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "benchmsg.h"

enum state {
    S_FREE,       /* slot without a session */
    S_CONNECTING,
    S_GREETING,
    S_EHLO,
    S_STARTTLS,   /* STARTTLS sent, waiting for 220 */
    S_TLS,        /* TLS handshake in progress */
    S_EHLO2,      /* EHLO again, inside TLS */
    S_MAIL,
    S_RCPT,
    S_DATA,
    S_DOT,        /* message written (or being written), waiting for 250 */
    S_IDLE,       /* idle mode: parked after the EHLO reply */
    S_QUIT,
    S_NSTATES
};

static const char *const state_name[S_NSTATES] = {
    [S_FREE] = "free",       [S_CONNECTING] = "connect", [S_GREETING] = "greeting",
    [S_EHLO] = "ehlo",       [S_STARTTLS] = "starttls",  [S_TLS] = "tls",
    [S_EHLO2] = "ehlo2",     [S_MAIL] = "mail",          [S_RCPT] = "rcpt",
    [S_DATA] = "data",       [S_DOT] = "dot",            [S_IDLE] = "idle",
    [S_QUIT] = "quit",
};

#define RBUF 4096

struct conn {
    int fd;
    enum state st;
    char rbuf[RBUF];
    size_t rlen;
    const char *wp; /* unsent output */
    size_t wleft;
    double t_session; /* connect() time */
    double t_msg;     /* start of the current message */
    double deadline;  /* the current step must finish by then */
    int msgs;         /* messages completed in this session */
    uint32_t events;  /* what epoll watches for */
    uint32_t gen;     /* bumped per session, so stale events are ignored */
    SSL *ssl;         /* set from the STARTTLS 220 on */
    SSL_SESSION *sess; /* -S resume/reuse: the slot's newest ticket, kept across sessions */
    int quit_ok;      /* 221 to QUIT arrived: close with close_notify */
    double t_hs;      /* handshake start */
    char *msg;        /* -u: this slot's copy of the message */
};

/* ---- options and global state ---- */

static struct sockaddr_in target;
static const char *target_text;
static int opt_conc = 1;
static size_t opt_size = 2048;
static int opt_per_session = 1;
static double opt_duration = 5.0;
static double opt_warmup = 1.0;
static long opt_max_msgs = 0;
static double opt_timeout = 10.0;
static const char *opt_helo = "mxload.example";
static const char *opt_from = "bench-sender@example.com";
static const char *opt_rcpt = "bench-rcpt@example.net";
static const char *opt_latfile; /* -L: every counted latency, one a line */
static int opt_idle = 0;
static double opt_hold = 60.0;
enum { TLS_OFF, TLS_FULL, TLS_RESUME, TLS_REUSE };
static const char *const tls_mode_name[] = {"off", "full", "resume", "reuse"};
static int opt_tls = TLS_OFF;
static int opt_tls_version = 0; /* 0: the highest both sides speak */
static int opt_unique = 0;      /* -u: a different body for every message */
static SSL_CTX *tls_ctx;

static int ep = -1;
static struct conn *conns;
static int nconns;
static char *message;  /* the DATA payload, dot-terminated */
static size_t message_len;
static size_t body_off; /* where the body starts in message */
static unsigned long msg_seq; /* -u: messages started */
static char cmd_ehlo[300], cmd_mail[300], cmd_rcpt[300];

static double t_start, t_warm, t_end;
static int stopping;   /* no new sessions or messages */
static volatile sig_atomic_t got_signal;

/* results */
static double *lat;    /* latencies in seconds of counted messages */
static double *lat_start; /* their start times, for -L */
static size_t nlat, caplat;
static long completed_in_window; /* messages whose 250 arrived in [t_warm, t_end] */
static long completed_total;
static long sessions_started, sessions_ok;
static long errors, err_by_state[S_NSTATES], err_timeouts, err_closed;
static char first_error[200];
static long tls_handshakes, tls_offered, tls_resumed, tls_tickets;
static double tls_hs_time;
static char tls_last_version[32] = "-", tls_last_cipher[64] = "-";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mxload: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void usage(void)
{
    fputs("usage: mxload [options] HOST:PORT\n"
          "  -c N      concurrent sessions (default 1)\n"
          "  -s BYTES  message size: header + body, before the final dot (default 2048)\n"
          "  -m N      messages per session (default 1)\n"
          "  -t SECS   measured duration (default 5)\n"
          "  -w SECS   warm-up before measuring (default 1)\n"
          "  -n N      stop starting messages after N completed (default: no limit)\n"
          "  -T SECS   timeout for one SMTP step (default 10)\n"
          "  -H NAME   EHLO name\n"
          "  -L FILE   write each measured message as \"start_s latency_ms\" lines\n"
          "  -I N      idle mode: hold N sessions open after EHLO\n"
          "  -h SECS   idle mode: longest hold (default 60)\n"
          "  -S MODE   STARTTLS after EHLO: full (a full handshake every session),\n"
          "            resume (each slot offers the ticket its previous session got;\n"
          "            TLS 1.3 tickets once) or reuse (as resume, offering a ticket\n"
          "            again until a newer one arrives)\n"
          "  -V VER    with -S: TLS version 1.2 or 1.3 (default: highest possible)\n"
          "  -u        a different body for every message (pid and counter in its\n"
          "            first line)\n",
          stderr);
    exit(2);
}

/* ---- the message ---- */

static void build_message(size_t size)
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

static void note_error(struct conn *c, const char *fmt, ...)
{
    errors++;
    err_by_state[c->st]++;
    if (!first_error[0]) {
        char what[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        snprintf(first_error, sizeof(first_error), "%s: %s", state_name[c->st], what);
        /* keep it one token-safe value for the output line */
        for (char *p = first_error; *p; p++)
            if (*p == '"' || *p == '\r' || *p == '\n' || (unsigned char)*p < ' ')
                *p = ' ';
    }
}

static uint64_t ev_tag(const struct conn *c)
{
    return ((uint64_t)c->gen << 32) | (uint64_t)(c - conns);
}

static void set_events(struct conn *c, uint32_t ev)
{
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.u64 = ev_tag(c)};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->events = ev;
}

static void close_conn(struct conn *c)
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

static void start_session(struct conn *c);

/* What went wrong in a TLS call, for first_error. */
static const char *tls_error_text(int ssl_error)
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

/* A session ended (well or not); in load mode the slot starts another. */
static void end_session(struct conn *c)
{
    close_conn(c);
    if (!opt_idle && !stopping)
        start_session(c);
}

static void fail_session(struct conn *c, const char *fmt, const char *arg)
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

static int send_str(struct conn *c, enum state next, const char *s)
{
    return send_data(c, next, s, strlen(s));
}

static void start_session(struct conn *c)
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

static void record_message(struct conn *c, double t)
{
    completed_total++;
    if (t >= t_warm && t <= t_end)
        completed_in_window++;
    if (c->t_msg >= t_warm && c->t_msg < t_end) {
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 65536;
            lat = realloc(lat, caplat * sizeof(*lat));
            lat_start = realloc(lat_start, caplat * sizeof(*lat_start));
            if (!lat || !lat_start)
                die("out of memory");
        }
        lat_start[nlat] = c->t_msg - t_start;
        lat[nlat++] = t - c->t_msg;
    }
}

/* ---- TLS ---- */

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

static void tls_init(void)
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
static void tls_step(struct conn *c)
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
static void tls_begin(struct conn *c)
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

/* Inside TLS: like recv(2), with -1 and errno EAGAIN for "wait". */
static ssize_t tls_recv(struct conn *c, const char **why)
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

static void check_timeouts(double t)
{
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->st == S_FREE || c->deadline <= 0 || t < c->deadline)
            continue;
        err_timeouts++;
        fail_session(c, "%s", "timeout");
    }
}

static int busy_sessions(void)
{
    int n = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].st != S_FREE)
            n++;
    return n;
}

static void run_loop_once(int timeout_ms)
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

/* ---- results ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (nlat == 0)
        return 0;
    /* nearest rank */
    size_t k = (size_t)(p / 100.0 * (double)nlat + 0.999999);
    if (k < 1)
        k = 1;
    if (k > nlat)
        k = nlat;
    return lat[k - 1];
}

/* CPU seconds this process used, user + system */
static double self_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void print_errors(void)
{
    printf(" errors=%ld", errors);
    for (int s = S_CONNECTING; s < S_NSTATES; s++)
        if (err_by_state[s])
            printf(" err_%s=%ld", state_name[s], err_by_state[s]);
    if (err_timeouts)
        printf(" err_timeouts=%ld", err_timeouts);
    if (err_closed)
        printf(" err_closed_by_server=%ld", err_closed);
    if (first_error[0])
        printf(" first_error=\"%s\"", first_error);
}

static void print_tls(void)
{
    if (!opt_tls)
        return;
    printf(" tls=%s tls_version=%s tls_cipher=%s tls_handshakes=%ld tls_offered=%ld tls_resumed=%ld"
           " tls_tickets=%ld tls_hs_mean_ms=%.3f",
           tls_mode_name[opt_tls], tls_last_version, tls_last_cipher,
           tls_handshakes, tls_offered, tls_resumed, tls_tickets,
           tls_handshakes ? tls_hs_time / (double)tls_handshakes * 1e3 : 0.0);
}

static void dump_latencies(void)
{
    FILE *f = fopen(opt_latfile, "w");
    if (!f)
        die("%s: %s", opt_latfile, strerror(errno));
    for (size_t i = 0; i < nlat; i++)
        fprintf(f, "%.6f %.3f\n", lat_start[i], lat[i] * 1e3);
    if (fclose(f) != 0)
        die("%s: %s", opt_latfile, strerror(errno));
}

static void print_load_result(double elapsed)
{
    if (opt_latfile)
        dump_latencies();
    qsort(lat, nlat, sizeof(*lat), cmp_double);
    double sum = 0;
    long over40 = 0;
    for (size_t i = 0; i < nlat; i++) {
        sum += lat[i];
        if (lat[i] >= 0.040)
            over40++;
    }
    printf("mode=load target=%s conc=%d size=%zu per_session=%d unique=%d duration=%.3f"
           " msgs=%ld msgs_per_s=%.1f total_msgs=%ld sessions=%ld sessions_ok=%ld"
           " lat_n=%zu p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f mean_ms=%.3f"
           " over_40ms=%ld cpu_s=%.3f",
           target_text, opt_conc, message_len - 3, opt_per_session, opt_unique, elapsed,
           completed_in_window, elapsed > 0 ? (double)completed_in_window / elapsed : 0.0,
           completed_total, sessions_started, sessions_ok, nlat, pct(50) * 1e3, pct(90) * 1e3, pct(99) * 1e3,
           nlat ? lat[nlat - 1] * 1e3 : 0.0, nlat ? sum / (double)nlat * 1e3 : 0.0, over40,
           self_cpu());
    print_tls();
    print_errors();
    putchar('\n');
    fflush(stdout);
}

/* ---- modes ---- */

static int run_load(void)
{
    nconns = opt_conc;
    conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns)
        die("out of memory");
    for (int i = 0; i < nconns; i++)
        conns[i].fd = -1;
    t_start = now();
    t_warm = t_start + opt_warmup;
    t_end = t_warm + opt_duration;
    for (int i = 0; i < nconns; i++)
        start_session(&conns[i]);
    double last_check = t_start;
    for (;;) {
        double t = now();
        if (!stopping && (t >= t_end || got_signal))
            stopping = 1;
        if (stopping && busy_sessions() == 0)
            break;
        if (stopping && t > t_end + opt_timeout + 5) {
            /* in-flight sessions that never finish: count and give up */
            for (int i = 0; i < nconns; i++)
                if (conns[i].st != S_FREE) {
                    err_timeouts++;
                    note_error(&conns[i], "%s", "timeout");
                    close_conn(&conns[i]);
                }
            break;
        }
        if (t - last_check >= 0.1) {
            check_timeouts(t);
            last_check = t;
        }
        run_loop_once(20);
    }
    double end = now();
    double measured = (end < t_end ? end : t_end) - t_warm;
    if (opt_max_msgs > 0 && end < t_end)
        measured = end - t_warm;
    print_load_result(measured > 0 ? measured : 0);
    return errors ? 1 : 0;
}

static int run_idle(void)
{
    nconns = opt_idle;
    conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns)
        die("out of memory");
    for (int i = 0; i < nconns; i++)
        conns[i].fd = -1;
    t_start = now();
    t_warm = t_end = 1e300; /* nothing is a "message" here */
    /* open in waves so the listen queue never overflows */
    int next = 0;
    double last_check = t_start;
    for (;;) {
        int pending = 0, idle = 0;
        for (int i = 0; i < next; i++) {
            if (conns[i].st == S_IDLE)
                idle++;
            else if (conns[i].st != S_FREE)
                pending++;
        }
        while (next < nconns && pending < 100) {
            start_session(&conns[next++]);
            pending++;
        }
        if (next == nconns && pending == 0)
            break;
        double t = now();
        if (t - t_start > opt_timeout * 3 || got_signal)
            break;
        if (t - last_check >= 0.1) {
            check_timeouts(t);
            last_check = t;
        }
        run_loop_once(20);
    }
    int open = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].st == S_IDLE)
            open++;
    printf("mode=idle state=ready target=%s requested=%d open=%d setup_s=%.3f", target_text,
           nconns, open, now() - t_start);
    print_tls();
    print_errors();
    putchar('\n');
    fflush(stdout);

    /* hold: the sessions stay silent; we only watch for the server closing */
    double hold_until = now() + opt_hold;
    while (!got_signal && now() < hold_until)
        run_loop_once(100);
    int still_open = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].st == S_IDLE)
            still_open++;

    /* QUIT them all and wait for the 221s */
    stopping = 1;
    for (int i = 0; i < nconns; i++)
        if (conns[i].st == S_IDLE)
            send_str(&conns[i], S_QUIT, "QUIT\r\n");
    double quit_start = now();
    while (busy_sessions() > 0 && now() - quit_start < opt_timeout) {
        check_timeouts(now());
        run_loop_once(20);
    }
    for (int i = 0; i < nconns; i++)
        if (conns[i].st != S_FREE) {
            note_error(&conns[i], "%s", "no reply to QUIT");
            close_conn(&conns[i]);
        }
    printf("mode=idle state=done target=%s open_at_end=%d quit_ok=%ld", target_text,
           still_open, sessions_ok);
    print_errors();
    putchar('\n');
    fflush(stdout);
    return errors ? 1 : 0;
}

static void on_signal(int sig) { got_signal = sig; }

static double parse_double(const char *s, const char *what)
{
    char *e;
    double v = strtod(s, &e);
    if (e == s || *e || v < 0)
        die("bad %s: %s", what, s);
    return v;
}

static long parse_long(const char *s, const char *what)
{
    char *e;
    long v = strtol(s, &e, 10);
    if (e == s || *e || v < 0)
        die("bad %s: %s", what, s);
    return v;
}

int main(int argc, char **argv)
{
    int ch;
    while ((ch = getopt(argc, argv, "c:s:m:t:w:n:T:H:L:I:h:S:V:u")) != -1) {
        switch (ch) {
        case 'c': opt_conc = (int)parse_long(optarg, "concurrency"); break;
        case 's': opt_size = (size_t)parse_long(optarg, "size"); break;
        case 'm': opt_per_session = (int)parse_long(optarg, "messages per session"); break;
        case 't': opt_duration = parse_double(optarg, "duration"); break;
        case 'w': opt_warmup = parse_double(optarg, "warm-up"); break;
        case 'n': opt_max_msgs = parse_long(optarg, "message count"); break;
        case 'T': opt_timeout = parse_double(optarg, "timeout"); break;
        case 'H': opt_helo = optarg; break;
        case 'L': opt_latfile = optarg; break;
        case 'I': opt_idle = (int)parse_long(optarg, "idle sessions"); break;
        case 'h': opt_hold = parse_double(optarg, "hold"); break;
        case 'u': opt_unique = 1; break;
        case 'S':
            if (strcmp(optarg, "full") == 0)
                opt_tls = TLS_FULL;
            else if (strcmp(optarg, "resume") == 0)
                opt_tls = TLS_RESUME;
            else if (strcmp(optarg, "reuse") == 0)
                opt_tls = TLS_REUSE;
            else
                die("bad -S: %s (full, resume or reuse)", optarg);
            break;
        case 'V':
            if (strcmp(optarg, "1.2") == 0)
                opt_tls_version = TLS1_2_VERSION;
            else if (strcmp(optarg, "1.3") == 0)
                opt_tls_version = TLS1_3_VERSION;
            else
                die("bad -V: %s (1.2 or 1.3)", optarg);
            break;
        default: usage();
        }
    }
    if (optind != argc - 1 || opt_conc < 1 || opt_per_session < 1)
        usage();
    target_text = argv[optind];
    const char *colon = strrchr(target_text, ':');
    if (!colon)
        usage();
    char host[64];
    size_t hl = (size_t)(colon - target_text);
    if (hl == 0 || hl >= sizeof(host))
        usage();
    memcpy(host, target_text, hl);
    host[hl] = 0;
    memset(&target, 0, sizeof(target));
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)parse_long(colon + 1, "port"));
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1)
        die("HOST must be an IPv4 address: %s", host);

    snprintf(cmd_ehlo, sizeof(cmd_ehlo), "EHLO %s\r\n", opt_helo);
    snprintf(cmd_mail, sizeof(cmd_mail), "MAIL FROM:<%s>\r\n", opt_from);
    snprintf(cmd_rcpt, sizeof(cmd_rcpt), "RCPT TO:<%s>\r\n", opt_rcpt);
    build_message(opt_size);
    if (opt_tls)
        tls_init();

    int want_fds = (opt_idle > opt_conc ? opt_idle : opt_conc) + 64;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want_fds) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)want_fds ? rl.rlim_max : (rlim_t)want_fds;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)want_fds)
            die("need %d file descriptors, the limit is %ld (raise ulimit -n)", want_fds,
                (long)rl.rlim_cur);
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    return opt_idle ? run_idle() : run_load();
}
