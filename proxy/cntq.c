/*
 * cntq.c: rate-limit counters moved on memcached from a worker's event loop
 * (see cntq.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cntq.h"
#include "config.h"
#include "log.h"
#include "mc_pipe.h"

typedef struct call {
    mx_cnt_cb cb;
    void *ctx;
    size_t left;       /* keys not answered yet */
    mx_cnt_rc *rc;
    uint64_t *val;
    struct call *next; /* on the list of calls to call back */
} call;

typedef struct part { /* one key of a call */
    call *c;
    size_t idx;
    uint64_t delta;
    char wire[MX_STORE_WIRE_KEY];
} part;

typedef struct srv {
    mx_cntq *q;
    int id;
    int fd;            /* -1: none */
    int connecting;    /* a connection is being made on a store thread */
    ev_tstamp next_try; /* after a failed connect, not before this */
    ev_io io;
    ev_timer tmo;
    GArray *out;       /* parts of the batch out, in order */
    GArray *wait;      /* parts for the next batch */
    GByteArray *wbuf;  /* the batch's commands */
    size_t wsent;
    mx_mc_req rq;      /* its replies */
} srv;

struct mx_cntq {
    struct ev_loop *loop;
    mx_store *store;
    mx_offload *pool;
    mx_offload_port *port;
    srv *s;
    int ns;
    int pending;       /* calls not called back yet */
    int connects;      /* connect jobs out */
};

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents);

/* ---- calling back ---- */

/* Part p's answer; a call whose keys are all answered goes on *done. */
static void answer(part *p, mx_cnt_rc rc, uint64_t val, call **done)
{
    p->c->rc[p->idx] = rc;
    p->c->val[p->idx] = val;
    if (--p->c->left == 0) {
        p->c->next = *done;
        *done = p->c;
    }
}

static void answer_all(GArray *parts, mx_cnt_rc rc, call **done)
{
    for (guint i = 0; i < parts->len; i++)
        answer(&g_array_index(parts, part, i), rc, 0, done);
    g_array_set_size(parts, 0);
}

/* Last, once the servers' state is settled: a callback may count again. */
static void call_back(mx_cntq *q, call *done)
{
    while (done) {
        call *c = done;
        done = c->next;
        q->pending--;
        c->cb(c->ctx, c->rc, c->val);
        g_free(c->rc);
        g_free(c->val);
        g_free(c);
    }
}

/* ---- the connection ---- */

static void drop_conn(srv *s)
{
    if (s->fd < 0)
        return;
    ev_io_stop(s->q->loop, &s->io);
    ev_timer_stop(s->q->loop, &s->tmo);
    close(s->fd);
    s->fd = -1;
    s->wsent = 0;
    g_byte_array_set_size(s->wbuf, 0);
}

/* The batch out ends: the parts whose reply is in get what it said (each
 * of those was counted, or found absent, whatever happens next), the rest
 * rc_rest. */
static void settle_out(srv *s, mx_cnt_rc rc_rest, call **done)
{
    for (guint i = 0; i < s->out->len; i++) {
        part *p = &g_array_index(s->out, part, i);
        if (i >= s->rq.got) {
            answer(p, rc_rest, 0, done);
            continue;
        }
        switch (s->rq.reply[i]) {
        case MX_MC_NUMBER: answer(p, MX_CNT_OK, s->rq.number[i], done); break;
        case MX_MC_NOT_FOUND: answer(p, MX_CNT_ABSENT, 0, done); break;
        /* e.g. CLIENT_ERROR on a value that is not a number: not counted */
        default: answer(p, MX_CNT_RETRY, 0, done); break;
        }
    }
    g_array_set_size(s->out, 0);
    s->rq.got = 0;
}

/* The connection ends: what is out as settle_out(rc_out), what waits as
 * rc_wait. */
static void fail_server(srv *s, mx_cnt_rc rc_out, mx_cnt_rc rc_wait, call **done)
{
    drop_conn(s);
    settle_out(s, rc_out, done);
    answer_all(s->wait, rc_wait, done);
}

typedef struct conn_job {
    mx_job job;
    mx_cntq *q;
    int id;
    int fd;
    char *err;
} conn_job;

static void conn_work(mx_job *job)
{
    conn_job *c = (conn_job *)job;
    c->fd = mx_store_loop_connect(c->q->store, c->id, &c->err);
}

static void conn_done(mx_job *job)
{
    conn_job *c = (conn_job *)job;
    srv *s = &c->q->s[c->id];
    s->connecting = 0;
    c->q->connects--;
    if (c->fd >= 0 && s->fd < 0) {
        s->fd = c->fd;
        ev_io_set(&s->io, s->fd, EV_READ);
        ev_io_start(c->q->loop, &s->io);
    } else if (c->fd >= 0) {
        close(c->fd);
    } else {
        s->next_try = ev_now(c->q->loop) + 1.0;
        mx_log_msg(MX_LOG_DEBUG, "store_loop_connect_failed", "%s", c->err ? c->err : "?");
    }
    g_free(c->err);
    g_free(c);
}

static void connect_later(mx_cntq *q, srv *s)
{
    if (s->connecting || ev_now(q->loop) < s->next_try)
        return;
    conn_job *c = g_new0(conn_job, 1);
    c->q = q;
    c->id = s->id;
    c->fd = -1;
    c->job.work = conn_work;
    c->job.done = conn_done;
    if (mx_offload_submit(q->pool, q->port, &c->job) != MX_OK) {
        g_free(c);
        return;
    }
    s->connecting = 1;
    q->connects++;
}

/* ---- batches ---- */

/* Write what is left of the batch; 0, or -1 when the connection failed. */
static int flush(srv *s)
{
    while (s->wsent < s->wbuf->len) {
        ssize_t w = send(s->fd, s->wbuf->data + s->wsent, s->wbuf->len - s->wsent,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            s->wsent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        return -1;
    }
    int want = EV_READ | (s->wsent < s->wbuf->len ? EV_WRITE : 0);
    if ((s->io.events & (EV_READ | EV_WRITE)) != want) {
        ev_io_stop(s->q->loop, &s->io);
        ev_io_set(&s->io, s->fd, want);
        ev_io_start(s->q->loop, &s->io);
    }
    return 0;
}

/* The waiting parts become the batch out. A failure to write shows in
 * on_io, so no callback runs from here. */
static void send_batch(srv *s)
{
    GArray *t = s->out;
    s->out = s->wait;
    s->wait = t;
    g_byte_array_set_size(s->wbuf, 0);
    s->wsent = 0;
    for (guint i = 0; i < s->out->len; i++) {
        part *p = &g_array_index(s->out, part, i);
        char line[MX_STORE_WIRE_KEY + 48];
        int n = snprintf(line, sizeof(line), "incr %s %llu\r\n", p->wire,
                         (unsigned long long)p->delta);
        g_byte_array_append(s->wbuf, (const guint8 *)line, (guint)n);
    }
    s->rq.n = s->out->len;
    s->rq.reply = g_renew(unsigned char, s->rq.reply, s->rq.n);
    s->rq.number = g_renew(uint64_t, s->rq.number, s->rq.n);
    mx_mc_reply_begin(&s->rq);
    mx_store_loop_sent(s->q->store, 1, s->out->len);
    ev_timer_set(&s->tmo, mx_store_loop_timeout_ms(s->q->store) / 1000.0, 0.);
    ev_timer_start(s->q->loop, &s->tmo);
    if (flush(s) < 0)
        ev_feed_event(s->q->loop, &s->io, EV_WRITE); /* on_io sees it fail */
}

/* The batch's replies are all in. */
static void batch_done(srv *s, call **done)
{
    ev_timer_stop(s->q->loop, &s->tmo);
    mx_store_loop_result(s->q->store, s->id, 1);
    settle_out(s, MX_CNT_RETRY, done); /* all replies are in */
}

/* Read what has come; a batch whose replies are all in is settled. */
static void read_replies(srv *s, call **done)
{
    char buf[16384];
    while (s->fd >= 0) {
        ssize_t n = recv(s->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            /* closed (a restarted server) or broken: what was answered
             * stands, the rest was not counted as far as we know */
            fail_server(s, MX_CNT_RETRY, MX_CNT_RETRY, done);
            break;
        }
        size_t took = s->out->len ? mx_mc_reply_take(&s->rq, buf, (size_t)n) : 0;
        if (s->out->len && s->rq.done)
            batch_done(s, done);
        if (took < (size_t)n) {
            /* bytes nobody asked for: the stream is in doubt */
            mx_log_msg(MX_LOG_WARNING, "store_loop_stray_reply",
                       "memcached server %d sent more than was asked; connection closed", s->id);
            fail_server(s, MX_CNT_RETRY, MX_CNT_RETRY, done);
            break;
        }
        if (!s->out->len)
            break;
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    srv *s = w->data;
    call *done = NULL;
    if ((revents & EV_WRITE) && s->out->len && flush(s) < 0) {
        fail_server(s, MX_CNT_RETRY, MX_CNT_RETRY, &done);
        call_back(s->q, done);
        return;
    }
    if (revents & EV_READ)
        read_replies(s, &done);
    if (s->fd >= 0 && !s->out->len && s->wait->len)
        send_batch(s);
    call_back(s->q, done);
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    srv *s = t->data;
    call *done = NULL;
    /* a loop busy for longer than the timeout may see the timer before the
     * replies that came in time: read first */
    read_replies(s, &done);
    if (s->out->len) {
        int port = 0;
        const char *host = mx_store_loop_server_name(s->q->store, s->id, &port);
        mx_log_msg(MX_LOG_WARNING, "store_loop_timeout",
                   "memcached %s:%d: no reply to %u increments in %d ms; connection closed",
                   host ? host : "?", port, s->out->len, mx_store_loop_timeout_ms(s->q->store));
        mx_store_loop_result(s->q->store, s->id, 0);
        fail_server(s, MX_CNT_FAILED, MX_CNT_RETRY, &done);
    } else if (s->fd >= 0 && s->wait->len) {
        send_batch(s);
    }
    call_back(s->q, done);
}

/* ---- the interface ---- */

mx_cntq *mx_cntq_new(struct ev_loop *loop, mx_store *store, mx_offload *pool,
                     mx_offload_port *port)
{
    int ns = store ? mx_store_loop_servers(store) : 0;
    if (ns <= 0)
        return NULL;
    mx_cntq *q = g_new0(mx_cntq, 1);
    q->loop = loop;
    q->store = store;
    q->pool = pool;
    q->port = port;
    q->ns = ns;
    q->s = g_new0(srv, ns);
    for (int i = 0; i < ns; i++) {
        srv *s = &q->s[i];
        s->q = q;
        s->id = i;
        s->fd = -1;
        ev_io_init(&s->io, on_io, -1, EV_READ);
        s->io.data = s;
        ev_timer_init(&s->tmo, on_timeout, 1., 0.);
        s->tmo.data = s;
        s->out = g_array_new(FALSE, FALSE, sizeof(part));
        s->wait = g_array_new(FALSE, FALSE, sizeof(part));
        s->wbuf = g_byte_array_new();
        s->rq.fd = -1;
    }
    return q;
}

void mx_cntq_free(mx_cntq *q)
{
    if (!q)
        return;
    call *done = NULL;
    for (int i = 0; i < q->ns; i++)
        fail_server(&q->s[i], MX_CNT_FAILED, MX_CNT_FAILED, &done);
    call_back(q, done);
    for (int i = 0; i < q->ns; i++) {
        srv *s = &q->s[i];
        g_array_free(s->out, TRUE);
        g_array_free(s->wait, TRUE);
        g_byte_array_free(s->wbuf, TRUE);
        g_free(s->rq.reply);
        g_free(s->rq.number);
    }
    g_free(q->s);
    g_free(q);
}

int mx_cntq_pending(const mx_cntq *q)
{
    return q ? q->pending + q->connects : 0;
}

int mx_cntq_incr(mx_cntq *q, const char *const *keys, const uint64_t *delta, size_t n,
                 mx_cnt_cb cb, void *ctx)
{
    if (!q || n == 0)
        return -1;
    int *to = g_new(int, n);
    char (*wire)[MX_STORE_WIRE_KEY] = g_malloc(n * sizeof(*wire));
    mx_store_loop_route(q->store, keys, n, wire, to);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        if (to[i] < 0 || to[i] >= q->ns || !mx_store_loop_ready(q->store, to[i])) {
            ok = 0;
        } else if (q->s[to[i]].fd < 0) {
            connect_later(q, &q->s[to[i]]);
            ok = 0;
        }
    }
    if (!ok) {
        g_free(to);
        g_free(wire);
        return -1;
    }
    call *c = g_new0(call, 1);
    c->cb = cb;
    c->ctx = ctx;
    c->left = n;
    c->rc = g_new0(mx_cnt_rc, n);
    c->val = g_new0(uint64_t, n);
    for (size_t i = 0; i < n; i++) {
        part p = {.c = c, .idx = i, .delta = delta[i]};
        memcpy(p.wire, wire[i], MX_STORE_WIRE_KEY);
        g_array_append_val(q->s[to[i]].wait, p);
    }
    q->pending++;
    for (size_t i = 0; i < n; i++) {
        srv *s = &q->s[to[i]];
        if (!s->out->len && s->wait->len)
            send_batch(s);
    }
    g_free(to);
    g_free(wire);
    return 0;
}
