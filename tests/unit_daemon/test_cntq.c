/*
 * test_cntq.c: rate-limit counters moved from an event loop (proxy/cntq.c)
 * against real memcached servers started by the test on loopback.
 *
 * What must hold: every key of a call comes back once, with the exact
 * value the server holds after it; an absent counter is reported and not
 * created; calls made while a batch is out share the next one and still
 * each get their own value; a hung server fails its keys within the
 * store's timeout and opens its breaker, a restarted one makes its keys
 * retry (never a wrong value) until a new connection is up; a reply that
 * came in time counts even when a busy loop sees its timer first; callbacks
 * never run from inside mx_cntq_incr, and whatever is still out when the
 * queue is freed is called back as failed.
 *
 * Every wait runs the loop once at a time up to a deadline; a timer that
 * ticks every 10 ms keeps each turn short.
 */
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include <ev.h>
#include <glib.h>

#include "cntq.h"
#include "mc_server.h"
#include "offload.h"
#include "store.h"

typedef struct fx {
    server sv[2];
    mx_store *store;
    struct ev_loop *loop;
    ev_timer tick;
    mx_offload *pool;
    mx_offload_port port;
    mx_cntq *q;
} fx;

/* One call's answer, as its callback saw it. */
typedef struct reply {
    int calls;
    size_t n;
    mx_cnt_rc rc[8];
    uint64_t val[8];
    gint64 at;
} reply;

static int in_incr; /* set while mx_cntq_incr runs */
static int replies; /* callbacks run, all calls together */

static void on_reply(void *ctx, const mx_cnt_rc *rc, const uint64_t *val)
{
    g_assert_false(in_incr); /* never from inside mx_cntq_incr */
    reply *r = ctx;
    r->calls++;
    replies++;
    r->at = g_get_monotonic_time();
    for (size_t i = 0; i < r->n; i++) {
        r->rc[i] = rc[i];
        r->val[i] = val[i];
    }
}

static int incr(fx *f, const char *const *keys, const uint64_t *delta, size_t n, reply *r)
{
    memset(r, 0, sizeof(*r));
    r->n = n;
    in_incr = 1;
    int rc = mx_cntq_incr(f->q, keys, delta, n, on_reply, r);
    in_incr = 0;
    if (rc == 0)
        g_assert_cmpint(r->calls, ==, 0);
    return rc;
}

static void on_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
}

/* Run the loop until cond holds, for at most secs seconds. */
#define RUN_UNTIL(f, cond, secs)                                                       \
    do {                                                                               \
        gint64 end_ = g_get_monotonic_time() + (gint64)((secs) * G_USEC_PER_SEC);      \
        while (!(cond) && g_get_monotonic_time() < end_)                               \
            ev_run((f)->loop, EVRUN_ONCE);                                             \
        g_assert_true(cond);                                                           \
    } while (0)

static void run_for(fx *f, double secs)
{
    gint64 end = g_get_monotonic_time() + (gint64)(secs * G_USEC_PER_SEC);
    while (g_get_monotonic_time() < end)
        ev_run(f->loop, EVRUN_ONCE);
}

/* The n-th logical key under prefix that the store places on server srv. */
static char *key_on(fx *f, const char *prefix, int srv, int nth)
{
    char wire[1][MX_STORE_WIRE_KEY];
    for (int i = 0; i < 10000; i++) {
        char *k = g_strdup_printf("%s%d", prefix, i);
        const char *one[1] = {k};
        int to;
        mx_store_loop_route(f->store, one, 1, wire, &to);
        if (to == srv && nth-- == 0)
            return k;
        g_free(k);
    }
    g_error("no key for server %d", srv);
}

/* A counter created by the store itself at start (incr creates at delta). */
static void create(fx *f, const char *key, uint64_t start)
{
    uint64_t v = 0;
    g_assert_cmpint(mx_store_incr(f->store, key, start, 60, &v), ==, MX_STORE_OK);
    g_assert_cmpuint(v, ==, start);
}

/* The counter's value by the store: OK with *v, or NOT_FOUND. */
static mx_store_rc read_counter(fx *f, const char *key, uint64_t *v)
{
    mx_store_rc rc;
    *v = 0;
    mx_store_counters(f->store, &key, 1, v, &rc);
    return rc;
}

/* Retry the call until the loop has a connection for it (the first try
 * finds none and starts one: -1), then wait for its answer. */
static void incr_when_up(fx *f, const char *const *keys, const uint64_t *delta, size_t n,
                         reply *r)
{
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    int rc;
    while ((rc = incr(f, keys, delta, n, r)) != 0 && g_get_monotonic_time() < end)
        ev_run(f->loop, EVRUN_ONCE);
    g_assert_cmpint(rc, ==, 0);
    RUN_UNTIL(f, r->calls == 1, 2);
}

/* A connection to server srv: a probe of an absent key, which counts
 * nothing. */
static void up(fx *f, int srv)
{
    char *k = key_on(f, "cntq:probe:", srv, 0);
    const char *keys[1] = {k};
    uint64_t d = 1;
    reply r;
    incr_when_up(f, keys, &d, 1, &r);
    g_assert_cmpint(r.rc[0], ==, MX_CNT_ABSENT);
    g_free(k);
}

static void fx_setup(fx *f, gconstpointer breaker_failures)
{
    memset(f, 0, sizeof(*f));
    server_start(&f->sv[0]);
    server_start(&f->sv[1]);
    f->store = store_for(f->sv, 2, GPOINTER_TO_INT(breaker_failures));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&f->tick, on_tick, 0.01, 0.01);
    ev_timer_start(f->loop, &f->tick);
    f->pool = mx_offload_new(2, 16);
    mx_offload_port_init(&f->port, f->loop);
    f->q = mx_cntq_new(f->loop, f->store, f->pool, &f->port);
    g_assert_nonnull(f->q);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 0);
}

static void fx_teardown(fx *f, gconstpointer unused)
{
    for (int i = 0; i < 2; i++)
        if (f->sv[i].pid > 0)
            kill(f->sv[i].pid, SIGCONT);
    if (f->q) {
        /* a connect job still out would finish on a freed queue */
        RUN_UNTIL(f, mx_cntq_pending(f->q) == 0, 5);
        mx_cntq_free(f->q);
    }
    mx_offload_free(f->pool);
    mx_offload_port_close(&f->port);
    ev_timer_stop(f->loop, &f->tick);
    ev_loop_destroy(f->loop);
    mx_store_free(f->store);
    server_stop(&f->sv[0]);
    server_stop(&f->sv[1]);
}

/* One call over both servers: each key answered with its exact value
 * after, an absent key reported and not created, the callback run once;
 * one round trip per server, one command per key. */
static void test_counts(fx *f, gconstpointer unused)
{
    up(f, 0);
    up(f, 1);
    enum { N = 7 };
    char *k[N];
    uint64_t start[N] = {10, 20, 30, 0, 40, 50, 60};
    for (int i = 0; i < N; i++)
        k[i] = i == 3 ? key_on(f, "cntq:none:", 0, 0) : key_on(f, "cntq:cnt:", i % 2, i / 2);
    for (int i = 0; i < N; i++)
        if (i != 3)
            create(f, k[i], start[i]);
    const mx_store_stats *st = f->store->ops->stats(f->store);
    uint64_t rt = atomic_load(&st->round_trips), cmd = atomic_load(&st->commands);
    uint64_t delta[N] = {1, 2, 3, 4, 5, 6, 7};
    reply r;
    g_assert_cmpint(incr(f, (const char *const *)k, delta, N, &r), ==, 0);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 1);
    RUN_UNTIL(f, r.calls == 1, 2);
    g_assert_cmpuint(atomic_load(&st->round_trips) - rt, ==, 2);
    g_assert_cmpuint(atomic_load(&st->commands) - cmd, ==, N);
    run_for(f, 0.05);
    g_assert_cmpint(r.calls, ==, 1);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 0);
    for (int i = 0; i < N; i++) {
        uint64_t v;
        if (i == 3) {
            g_assert_cmpint(r.rc[i], ==, MX_CNT_ABSENT);
            g_assert_cmpint(read_counter(f, k[i], &v), ==, MX_STORE_NOT_FOUND);
        } else {
            g_assert_cmpint(r.rc[i], ==, MX_CNT_OK);
            g_assert_cmpuint(r.val[i], ==, start[i] + delta[i]);
            g_assert_cmpint(read_counter(f, k[i], &v), ==, MX_STORE_OK);
            g_assert_cmpuint(v, ==, start[i] + delta[i]);
        }
    }
    for (int i = 0; i < N; i++)
        g_free(k[i]);
}

/* 200 calls on one hot counter without the loop running in between: the
 * first goes out alone, the rest wait and share the next batch. Each call
 * gets its own value, in the order of the calls, and the exchanges are a
 * handful, not 200. */
static void test_shared_batches_in_order(fx *f, gconstpointer unused)
{
    enum { CALLS = 200, START = 1000 };
    char *hot = key_on(f, "cntq:hot:", 0, 0);
    const char *keys[1] = {hot};
    up(f, 0);
    create(f, hot, START);
    const mx_store_stats *st = f->store->ops->stats(f->store);
    uint64_t rt = atomic_load(&st->round_trips), cmd = atomic_load(&st->commands);
    reply *r = g_new0(reply, CALLS);
    uint64_t one = 1;
    int before = replies;
    for (int i = 0; i < CALLS; i++)
        g_assert_cmpint(incr(f, keys, &one, 1, &r[i]), ==, 0);
    g_assert_cmpint(replies, ==, before);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, CALLS);
    RUN_UNTIL(f, replies == before + CALLS, 5);
    for (int i = 0; i < CALLS; i++) {
        g_assert_cmpint(r[i].calls, ==, 1);
        g_assert_cmpint(r[i].rc[0], ==, MX_CNT_OK);
        g_assert_cmpuint(r[i].val[0], ==, START + i + 1); /* so each value once */
    }
    uint64_t rts = atomic_load(&st->round_trips) - rt;
    if (g_test_verbose())
        g_printerr("%d calls, %llu round trips\n", CALLS, (unsigned long long)rts);
    g_assert_cmpuint(rts, <=, 3);
    g_assert_cmpuint(atomic_load(&st->commands) - cmd, ==, CALLS);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 0);
    uint64_t v;
    g_assert_cmpint(read_counter(f, hot, &v), ==, MX_STORE_OK);
    g_assert_cmpuint(v, ==, START + CALLS);
    g_free(r);
    g_free(hot);
}

/* A hung server (SIGSTOP): its key fails within about the store's timeout
 * (50 ms), the other server's key in the same call counts; the breaker
 * (one failure opens it here) then keeps the loop off that server, so a
 * call touching it is refused whole and nothing of it is sent. Once the
 * server answers a store thread's probe again, the loop reconnects. */
static void test_hung_server(fx *f, gconstpointer unused)
{
    char *ka = key_on(f, "cntq:hung:", 0, 0), *kb = key_on(f, "cntq:hung:", 1, 0);
    const char *both[2] = {ka, kb};
    up(f, 0);
    up(f, 1);
    create(f, ka, 5);
    create(f, kb, 7);
    const mx_store_stats *st = f->store->ops->stats(f->store);
    kill(f->sv[1].pid, SIGSTOP);
    wait_stopped(f->sv[1].pid);
    uint64_t d[2] = {1, 1};
    reply r;
    ev_now_update(f->loop); /* the timer starts from the loop's clock */
    gint64 t0 = g_get_monotonic_time();
    g_assert_cmpint(incr(f, both, d, 2, &r), ==, 0);
    RUN_UNTIL(f, r.calls == 1, 3);
    gint64 took = r.at - t0;
    if (g_test_verbose())
        g_printerr("failed after %lld us\n", (long long)took);
    g_assert_cmpint(took, >=, 40000);
    g_assert_cmpint(took, <, 1000000);
    g_assert_cmpint(r.rc[0], ==, MX_CNT_OK);
    g_assert_cmpuint(r.val[0], ==, 6);
    g_assert_cmpint(r.rc[1], ==, MX_CNT_FAILED);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 0);

    /* the breaker is open: that server's keys are refused, at once */
    g_assert_false(mx_store_loop_ready(f->store, 1));
    g_assert_true(mx_store_loop_ready(f->store, 0));
    g_assert_cmpuint(atomic_load(&st->breaker_opened), ==, 1);
    reply r2;
    g_assert_cmpint(incr(f, &both[1], d, 1, &r2), ==, -1);
    g_assert_cmpint(incr(f, both, d, 2, &r2), ==, -1);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 0);
    run_for(f, 0.1);
    g_assert_cmpint(r2.calls, ==, 0);
    uint64_t v;
    g_assert_cmpint(read_counter(f, ka, &v), ==, MX_STORE_OK);
    g_assert_cmpuint(v, ==, 6); /* the refused call sent nothing */
    /* the other server is not held up */
    g_assert_cmpint(incr(f, both, d, 1, &r2), ==, 0);
    RUN_UNTIL(f, r2.calls == 1, 2);
    g_assert_cmpint(r2.rc[0], ==, MX_CNT_OK);
    g_assert_cmpuint(r2.val[0], ==, 7);

    /* back: after the cool-down (500 ms) a store call probes and closes
     * the breaker; the failed increment may or may not have counted */
    kill(f->sv[1].pid, SIGCONT);
    g_usleep(600000);
    mx_store_rc rc = MX_STORE_ERROR;
    for (int i = 0; i < 60 && !mx_store_loop_ready(f->store, 1); i++) {
        rc = read_counter(f, kb, &v);
        if (!mx_store_loop_ready(f->store, 1))
            g_usleep(50000);
    }
    g_assert_true(mx_store_loop_ready(f->store, 1));
    g_assert_cmpint(rc, ==, MX_STORE_OK);
    g_assert_true(v == 7 || v == 8);
    incr_when_up(f, &both[1], d, 1, &r2); /* the loop connects again */
    g_assert_cmpint(r2.rc[0], ==, MX_CNT_OK);
    g_assert_cmpuint(r2.val[0], ==, v + 1);
    g_free(ka);
    g_free(kb);
}

/* A server restarted on the same port closes the loop's connection. An
 * increment sent on it before the loop has seen the close comes back
 * RETRY, never with a value; once the loop has seen it, the call is
 * refused and a new connection made. The restarted server has lost the
 * counter: ABSENT, and not created, until the store creates it again. */
static void test_restarted_server(fx *f, gconstpointer unused)
{
    char *ka = key_on(f, "cntq:restart:", 0, 0);
    const char *keys[1] = {ka};
    up(f, 0);
    create(f, ka, 40);
    uint64_t d = 1, v;
    reply r;
    g_assert_cmpint(incr(f, keys, &d, 1, &r), ==, 0);
    RUN_UNTIL(f, r.calls == 1, 2);
    g_assert_cmpint(r.rc[0], ==, MX_CNT_OK);
    g_assert_cmpuint(r.val[0], ==, 41);

    for (int round = 0; round < 2; round++) {
        server_stop(&f->sv[0]);
        server_start(&f->sv[0]);
        if (round == 0) { /* the loop has not run since: sent on the old one */
            g_assert_cmpint(incr(f, keys, &d, 1, &r), ==, 0);
            RUN_UNTIL(f, r.calls == 1, 2);
            g_assert_cmpint(r.rc[0], ==, MX_CNT_RETRY);
        } else { /* the loop has seen the close: nothing is sent */
            run_for(f, 0.1);
            g_assert_cmpint(incr(f, keys, &d, 1, &r), ==, -1);
        }
        incr_when_up(f, keys, &d, 1, &r);
        g_assert_cmpint(r.rc[0], ==, MX_CNT_ABSENT);
        g_assert_cmpuint(items_on(&f->sv[0]), ==, 0); /* nothing created */
        /* the store's own kept connection to the old server fails its
         * first call (ERROR): read until it has reconnected */
        mx_store_rc rc = MX_STORE_ERROR;
        for (int tries = 0; tries < 5 && rc == MX_STORE_ERROR; tries++)
            rc = read_counter(f, ka, &v);
        g_assert_cmpint(rc, ==, MX_STORE_NOT_FOUND);

        create(f, ka, 3);
        uint64_t two = 2;
        g_assert_cmpint(incr(f, keys, &two, 1, &r), ==, 0);
        RUN_UNTIL(f, r.calls == 1, 2);
        g_assert_cmpint(r.rc[0], ==, MX_CNT_OK);
        g_assert_cmpuint(r.val[0], ==, 5);
    }
    g_assert_true(mx_store_loop_ready(f->store, 0));
    g_assert_cmpuint(atomic_load(&f->store->ops->stats(f->store)->breaker_opened), ==, 0);
    g_free(ka);
}

/* A loop busy for longer than the timeout (here: not run for 200 ms) sees
 * the timer expire together with the reply that came in time: the reply
 * counts, the key is OK with its value, and the breaker (one failure
 * opens it here) is not told of a failure. */
static void test_slow_loop(fx *f, gconstpointer unused)
{
    char *ka = key_on(f, "cntq:slow:", 0, 0);
    const char *keys[1] = {ka};
    up(f, 0);
    create(f, ka, 9);
    uint64_t d = 4;
    reply r;
    g_assert_cmpint(incr(f, keys, &d, 1, &r), ==, 0);
    g_usleep(200000);
    RUN_UNTIL(f, r.calls == 1, 2);
    g_assert_cmpint(r.rc[0], ==, MX_CNT_OK);
    g_assert_cmpuint(r.val[0], ==, 13);
    g_assert_true(mx_store_loop_ready(f->store, 0));
    g_assert_cmpuint(atomic_load(&f->store->ops->stats(f->store)->breaker_opened), ==, 0);
    /* and the connection still serves */
    g_assert_cmpint(incr(f, keys, &d, 1, &r), ==, 0);
    RUN_UNTIL(f, r.calls == 1, 2);
    g_assert_cmpint(r.rc[0], ==, MX_CNT_OK);
    g_assert_cmpuint(r.val[0], ==, 17);
    g_free(ka);
}

/* mx_cntq_pending counts a connection being made and every call not yet
 * called back, and drops to 0; freeing the queue with calls out (a hung
 * server never answers them) calls them back as FAILED. */
static void test_pending_and_free(fx *f, gconstpointer unused)
{
    char *ka = key_on(f, "cntq:pend:", 0, 0), *kb = key_on(f, "cntq:pend:", 1, 0);
    const char *both[2] = {ka, kb};
    uint64_t d[2] = {1, 1};
    reply r1, r2, r3;
    g_assert_cmpint(incr(f, both, d, 1, &r1), ==, -1); /* no connection yet */
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 1);     /* the connect job */
    RUN_UNTIL(f, mx_cntq_pending(f->q) == 0, 5);
    g_assert_cmpint(r1.calls, ==, 0);
    up(f, 1);
    create(f, ka, 1);
    create(f, kb, 1);
    g_assert_cmpint(incr(f, both, d, 1, &r1), ==, 0);
    g_assert_cmpint(incr(f, both, d, 2, &r2), ==, 0);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 2);
    RUN_UNTIL(f, mx_cntq_pending(f->q) == 0, 2);
    g_assert_cmpint(r1.calls, ==, 1);
    g_assert_cmpint(r2.calls, ==, 1);
    g_assert_cmpuint(r1.val[0], ==, 2);
    g_assert_cmpuint(r2.val[0], ==, 3);
    g_assert_cmpuint(r2.val[1], ==, 2);

    kill(f->sv[1].pid, SIGSTOP);
    wait_stopped(f->sv[1].pid);
    g_assert_cmpint(incr(f, &both[1], d, 1, &r1), ==, 0); /* sent */
    g_assert_cmpint(incr(f, both, d, 2, &r2), ==, 0);     /* waits behind it */
    g_assert_cmpint(incr(f, &both[1], d, 1, &r3), ==, 0);
    g_assert_cmpint(mx_cntq_pending(f->q), ==, 3);
    mx_cntq_free(f->q);
    f->q = NULL;
    g_assert_cmpint(r1.calls, ==, 1);
    g_assert_cmpint(r2.calls, ==, 1);
    g_assert_cmpint(r3.calls, ==, 1);
    g_assert_cmpint(r1.rc[0], ==, MX_CNT_FAILED);
    g_assert_cmpint(r2.rc[0], ==, MX_CNT_FAILED);
    g_assert_cmpint(r2.rc[1], ==, MX_CNT_FAILED);
    g_assert_cmpint(r3.rc[0], ==, MX_CNT_FAILED);
    g_free(ka);
    g_free(kb);
}

/* Only the memcached store can be reached from a loop. */
static void test_not_memcached(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    mx_offload *pool = mx_offload_new(1, 4);
    mx_offload_port port;
    mx_offload_port_init(&port, loop);
    mx_store *emb = mx_store_embedded_new(NULL);
    g_assert_null(mx_cntq_new(loop, emb, pool, &port));
    g_assert_null(mx_cntq_new(loop, NULL, pool, &port));
    g_assert_cmpint(mx_cntq_pending(NULL), ==, 0);
    mx_cntq_free(NULL);
    mx_store_free(emb);
    mx_offload_free(pool);
    mx_offload_port_close(&port);
    ev_loop_destroy(loop);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGABRT, kill_started);
    signal(SIGTERM, kill_started); /* ctest's timeout */
#define ADD(path, fn, breaker_failures)                                                \
    g_test_add("/cntq/" path, fx, GINT_TO_POINTER(breaker_failures), fx_setup, fn,    \
               fx_teardown)
    ADD("counts", test_counts, 3);
    ADD("shared_batches_in_order", test_shared_batches_in_order, 3);
    ADD("hung_server", test_hung_server, 1);
    ADD("restarted_server", test_restarted_server, 3);
    ADD("slow_loop", test_slow_loop, 1);
    ADD("pending_and_free", test_pending_and_free, 3);
#undef ADD
    g_test_add_func("/cntq/not_memcached", test_not_memcached);
    return g_test_run();
}
