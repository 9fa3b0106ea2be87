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
 *
 * Files: this one has the options, main and the load and idle drivers;
 * mxload_session.c the connection slots, the SMTP client state machine and
 * the epoll loop; mxload_tls.c STARTTLS; mxload_stats.c the counters,
 * latencies and the result line; mxload.h what they share. Build:
 *
 *   cc -std=c11 -O2 -o mxload mxload.c mxload_session.c mxload_tls.c \
 *      mxload_stats.c -lssl -lcrypto
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "mxload.h"

/* ---- options and run state ---- */

struct sockaddr_in target;
const char *target_text;
int opt_conc = 1;
static size_t opt_size = 2048;
int opt_per_session = 1;
static double opt_duration = 5.0;
static double opt_warmup = 1.0;
long opt_max_msgs = 0;
double opt_timeout = 10.0;
static const char *opt_helo = "mxload.example";
const char *opt_from = "bench-sender@example.com";
const char *opt_rcpt = "bench-rcpt@example.net";
const char *opt_latfile; /* -L: every counted latency, one a line */
int opt_idle = 0;
static double opt_hold = 60.0;
const char *const tls_mode_name[] = {"off", "full", "resume", "reuse"};
int opt_tls = TLS_OFF;
int opt_tls_version = 0; /* 0: the highest both sides speak */
int opt_unique = 0;      /* -u: a different body for every message */

double t_start, t_warm, t_end;
int stopping;   /* no new sessions or messages */
static volatile sig_atomic_t got_signal;

_Noreturn void die(const char *fmt, ...)
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
