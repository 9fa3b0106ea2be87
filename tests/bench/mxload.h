/*
 * mxload.h: internal header of mxload, the benchmark's SMTP load generator
 * (tests/bench). Shared by its files and by nothing else:
 *
 *   mxload.c          options, main, the load and idle drivers
 *   mxload_session.c  the connection slots, the per-connection SMTP client
 *                     state machine and the epoll loop
 *   mxload_tls.c      STARTTLS: the client context, session tickets for
 *                     -S resume/reuse, the handshake and TLS reads
 *   mxload_stats.c    counters, latencies and percentiles, the result line
 *
 * It holds the session states, the connection slot, and the state that
 * more than one of those files reads or writes.
 */
#ifndef MXLOAD_H
#define MXLOAD_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/ssl.h>

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

extern const char *const state_name[S_NSTATES];

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

/* ---- options and run state (mxload.c) ---- */

extern struct sockaddr_in target;
extern const char *target_text;
extern int opt_conc;
extern int opt_per_session;
extern long opt_max_msgs;
extern double opt_timeout;
extern const char *opt_from;
extern const char *opt_rcpt;
extern const char *opt_latfile; /* -L: every counted latency, one a line */
extern int opt_idle;
enum { TLS_OFF, TLS_FULL, TLS_RESUME, TLS_REUSE };
extern const char *const tls_mode_name[];
extern int opt_tls;
extern int opt_tls_version; /* 0: the highest both sides speak */
extern int opt_unique;      /* -u: a different body for every message */

extern double t_start, t_warm, t_end;
extern int stopping; /* no new sessions or messages */

_Noreturn void die(const char *fmt, ...);

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- connections and the SMTP dialogue (mxload_session.c) ---- */

extern int ep;
extern struct conn *conns;
extern int nconns;
extern size_t message_len;
extern char cmd_ehlo[300], cmd_mail[300], cmd_rcpt[300];

void build_message(size_t size);
void set_events(struct conn *c, uint32_t ev);
void close_conn(struct conn *c);
void fail_session(struct conn *c, const char *fmt, const char *arg);
int send_str(struct conn *c, enum state next, const char *s);
void start_session(struct conn *c);
void check_timeouts(double t);
int busy_sessions(void);
void run_loop_once(int timeout_ms);

/* ---- STARTTLS (mxload_tls.c) ---- */

const char *tls_error_text(int ssl_error);
void tls_init(void);
void tls_step(struct conn *c);
void tls_begin(struct conn *c);
ssize_t tls_recv(struct conn *c, const char **why);

/* ---- results (mxload_stats.c) ---- */

extern long completed_total;
extern long sessions_started, sessions_ok;
extern long errors, err_timeouts, err_closed;
extern long tls_handshakes, tls_offered, tls_resumed, tls_tickets;
extern double tls_hs_time;
extern char tls_last_version[32], tls_last_cipher[64];

void note_error(struct conn *c, const char *fmt, ...);
void record_message(struct conn *c, double t);
void print_errors(void);
void print_tls(void);
void print_load_result(double elapsed);

#endif
