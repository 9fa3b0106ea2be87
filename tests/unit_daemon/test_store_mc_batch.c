/*
 * test_store_mc_batch.c: the memcached store's pipelined traffic against
 * real memcached servers started by the test on loopback: batches of
 * writes, and the counters of a policy step.
 *
 * What must hold: a batch means what the single calls mean, and a hung
 * server fails only its share, within the timeout; round trips and
 * commands are counted as the servers count them; the counters of a step
 * take one exchange for all servers, created with their expiry, read
 * without being created, exact when sessions share an exchange, and
 * through a restarted, hung or dead server.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <libmemcached/memcached.h>

#include "mc_server.h"
#include "ratelimit.h"
#include "store.h"

/* Bulk: one pipelined write of many records, one multi-get back; a forged
 * one among them reads as absent. */
static void test_bulk_set_and_get(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    enum { N = 1000 };
    char *keys[N];
    GBytes *vals[N];
    int ttls[N];
    mx_store_rc rcs[N];
    for (int i = 0; i < N; i++) {
        keys[i] = g_strdup_printf("rep:sender:user%d@bulk.test", i);
        char *v = g_strdup_printf("value %d", i);
        vals[i] = g_bytes_new_take(v, strlen(v));
        ttls[i] = 60;
    }
    set_many(s, keys, vals, N, ttls[0], rcs);
    for (int i = 0; i < N; i++)
        g_assert_cmpint(rcs[i], ==, MX_STORE_OK);
    /* forge one record straight into memcached */
    char k[37];
    phys_key(keys[7], k);
    for (int i = 0; i < 2; i++) {
        memcached_st *raw = raw_client(&sv[i]);
        memcached_replace(raw, k, strlen(k), "forged", 6, 60, 0);
        memcached_free(raw);
    }
    GBytes *got[N + 1];
    mx_store_rc grc[N + 1];
    g_free(keys[N - 1]);
    keys[N - 1] = g_strdup("rep:sender:never-written@bulk.test"); /* and one absent */
    mx_store_get_many(s, (const char *const *)keys, N, got, grc);
    for (int i = 0; i < N - 1; i++) {
        if (i == 7) {
            g_assert_cmpint(grc[i], ==, MX_STORE_NOT_FOUND);
            continue;
        }
        g_assert_cmpint(grc[i], ==, MX_STORE_OK);
        g_assert_true(g_bytes_equal(got[i], vals[i]));
        g_bytes_unref(got[i]);
    }
    g_assert_cmpint(grc[N - 1], ==, MX_STORE_NOT_FOUND);
    g_assert_cmpuint(atomic_load(&s->ops->stats(s)->bad_records), ==, 1);
    for (int i = 0; i < N; i++) {
        g_free(keys[i]);
        g_bytes_unref(vals[i]);
    }
    mx_store_free(s);
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}

/* Bulk writes while one server hangs (SIGSTOP): its records fail within
 * the timeout and say so, the other server's are written, and every
 * record reported written reads back once the server answers again. */
static void test_bulk_set_with_a_hung_server(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    enum { N = 400 };
    char *keys[N];
    GBytes *vals[N];
    int ttls[N];
    mx_store_rc rcs[N];
    for (int i = 0; i < N; i++) {
        keys[i] = g_strdup_printf("rep:ip:10.9.%d.%d", i / 256, i % 256);
        char *v = g_strdup_printf("hung %d", i);
        vals[i] = g_bytes_new_take(v, strlen(v));
        ttls[i] = 60;
    }
    kill(sv[1].pid, SIGSTOP);
    wait_stopped(sv[1].pid);
    gint64 t0 = g_get_monotonic_time();
    set_many(s, keys, vals, N, ttls[0], rcs);
    gint64 dt = g_get_monotonic_time() - t0;
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += rcs[i] == MX_STORE_OK;
    /* both servers hold a share of 400 keys; the hung one's all fail */
    g_assert_cmpint(ok, >, 0);
    g_assert_cmpint(ok, <, N);
    g_assert_cmpuint(items_on(&sv[0]), ==, (guint64)ok);
    g_assert_cmpint(dt, <, 1000000); /* one timeout (50 ms) plus the work, not one per key */
    g_assert_cmpuint(atomic_load(&s->ops->stats(s)->errors), >=, 1);
    kill(sv[1].pid, SIGCONT);
    GBytes *got[N];
    mx_store_rc grc[N];
    mx_store_get_many(s, (const char *const *)keys, N, got, grc);
    for (int i = 0; i < N; i++) {
        if (rcs[i] == MX_STORE_OK) {
            g_assert_cmpint(grc[i], ==, MX_STORE_OK);
            g_assert_true(g_bytes_equal(got[i], vals[i]));
        }
        if (got[i])
            g_bytes_unref(got[i]);
    }
    /* and a server that refuses connections: its share fails, the rest is written */
    server_stop(&sv[1]);
    set_many(s, keys, vals, N, ttls[0], rcs);
    int ok2 = 0;
    for (int i = 0; i < N; i++)
        ok2 += rcs[i] == MX_STORE_OK;
    g_assert_cmpint(ok2, >=, ok);
    for (int i = 0; i < N; i++) {
        g_free(keys[i]);
        g_bytes_unref(vals[i]);
    }
    mx_store_free(s);
    server_stop(&sv[0]);
}

/* Every kind of batched write, against two servers, means what the single
 * calls mean: add only when absent, an increment created at its delta,
 * delete, and records that read back signed. */
static void test_write_many_semantics(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    enum { N = 50 };
    char *rec[N], *cnt[N];
    GBytes *v1 = g_bytes_new_static("first", 5), *v2 = g_bytes_new_static("second", 6);
    mx_store_write w[5 * N];
    mx_store_rc rcs[5 * N];
    for (int i = 0; i < N; i++) {
        rec[i] = g_strdup_printf("wm:rec:%d", i);
        cnt[i] = g_strdup_printf("wm:cnt:%d", i);
        w[5 * i] = (mx_store_write){.op = MX_STORE_W_ADD, .key = rec[i], .val = v1, .ttl = 60};
        w[5 * i + 1] = (mx_store_write){.op = MX_STORE_W_ADD, .key = rec[i], .val = v2, .ttl = 60};
        w[5 * i + 2] = (mx_store_write){.op = MX_STORE_W_INCR, .key = cnt[i], .delta = 5, .ttl = 60};
        w[5 * i + 3] = (mx_store_write){
            .op = MX_STORE_W_INCR, .key = cnt[i], .delta = 2, .ttl = 60, .touch = 1};
        w[5 * i + 4] = (mx_store_write){.op = MX_STORE_W_DEL, .key = i % 2 ? rec[i] : "wm:none"};
    }
    mx_store_write_many(s, w, 5 * N, rcs);
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(rcs[5 * i], ==, MX_STORE_OK);
        g_assert_cmpint(rcs[5 * i + 1], ==, MX_STORE_NOT_FOUND); /* it existed */
        g_assert_cmpint(rcs[5 * i + 2], ==, MX_STORE_OK);
        g_assert_cmpint(rcs[5 * i + 3], ==, MX_STORE_OK);
        g_assert_cmpint(rcs[5 * i + 4], ==, i % 2 ? MX_STORE_OK : MX_STORE_NOT_FOUND);
        uint64_t v = 0;
        g_assert_cmpint(mx_store_incr(s, cnt[i], 0, 60, &v), ==, MX_STORE_OK);
        g_assert_cmpuint(v, ==, 7);
        GBytes *got = NULL;
        mx_store_rc rc = mx_store_get(s, rec[i], &got);
        if (i % 2) {
            g_assert_cmpint(rc, ==, MX_STORE_NOT_FOUND);
        } else {
            g_assert_cmpint(rc, ==, MX_STORE_OK);
            g_assert_true(g_bytes_equal(got, v1)); /* the first add won */
            g_bytes_unref(got);
        }
    }
    /* the single call agrees */
    g_assert_cmpint(mx_store_add(s, rec[0], "x", 1, 60), ==, MX_STORE_NOT_FOUND);
    g_assert_cmpint(mx_store_add(s, rec[1], "x", 1, 60), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_touch(s, rec[1], 1), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_touch(s, "wm:never", 60), ==, MX_STORE_NOT_FOUND);
    GBytes *gone = NULL;
    g_usleep(2100000); /* memcached's clock ticks in whole seconds */
    g_assert_cmpint(mx_store_get(s, rec[1], &gone), ==, MX_STORE_NOT_FOUND);
    g_assert_cmpuint(atomic_load(&s->ops->stats(s)->errors), ==, 0);
    mx_store_free(s);
    g_bytes_unref(v1);
    g_bytes_unref(v2);
    for (int i = 0; i < N; i++) {
        g_free(rec[i]);
        g_free(cnt[i]);
    }
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}



/* The store's own count of round trips and commands, which /metrics
 * shows: the commands agree with the servers' statistics; a batch is one
 * round trip for all servers, a multi-get one per server. */
static void test_round_trips_are_counted(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    const mx_store_stats *st = s->ops->stats(s);
    uint64_t srv0 = server_commands(sv, 2);
    uint64_t rt = atomic_load(&st->round_trips), cmd = atomic_load(&st->commands);
#define DELTA(rt_want, cmd_want)                                               \
    do {                                                                       \
        g_assert_cmpuint(atomic_load(&st->round_trips) - rt, ==, (rt_want));   \
        g_assert_cmpuint(atomic_load(&st->commands) - cmd, ==, (cmd_want));    \
        rt = atomic_load(&st->round_trips);                                    \
        cmd = atomic_load(&st->commands);                                      \
    } while (0)
    uint64_t v = 0;
    g_assert_cmpint(mx_store_incr(s, "rt:counter", 1, 60, &v), ==, MX_STORE_OK);
    DELTA(2, 2); /* incr finds nothing, add creates it */
    g_assert_cmpint(mx_store_incr(s, "rt:counter", 1, 60, &v), ==, MX_STORE_OK);
    DELTA(1, 1); /* the common case: one incr */
    g_assert_cmpuint(v, ==, 2);
    GBytes *got = NULL;
    g_assert_cmpint(mx_store_get(s, "rt:absent", &got), ==, MX_STORE_NOT_FOUND);
    DELTA(1, 1);
    enum { N = 200 };
    char *keys[N];
    GBytes *vals[N];
    mx_store_rc rcs[N];
    GBytes *out[N];
    for (int i = 0; i < N; i++) {
        keys[i] = g_strdup_printf("rt:rec:%d", i);
        vals[i] = g_bytes_new_static("v", 1);
    }
    set_many(s, keys, vals, N, 60, rcs);
    DELTA(1, N); /* 200 keys on both servers: one pipeline each, sent and read at once */
    mx_store_get_many(s, (const char *const *)keys, N, out, rcs);
    DELTA(2, N); /* a multi-get goes server by server */
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(rcs[i], ==, MX_STORE_OK);
        g_bytes_unref(out[i]);
        g_bytes_unref(vals[i]);
        g_free(keys[i]);
    }
#undef DELTA
    g_assert_cmpuint(server_commands(sv, 2) - srv0, ==, atomic_load(&st->commands));
    mx_store_free(s);
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}

/* Several rules of one step, fixed and sliding, on two servers: one
 * round trip per event once their windows exist, and the same verdicts
 * as the rules counted one by one. */
static void test_rules_of_a_step_cost_one_round_trip(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    const mx_store_stats *st = s->ops->stats(s);
    mx_rl_rule r[4] = {
        {.name = (char *)"ip", .key = MX_RL_CLIENT_IP, .count = MX_RL_MESSAGES, .limit = 1000,
         .window = 60, .algorithm = MX_RL_FIXED},
        {.name = (char *)"snd", .key = MX_RL_SENDER, .count = MX_RL_MESSAGES, .limit = 5,
         .window = 3600, .algorithm = MX_RL_FIXED},
        {.name = (char *)"dom", .key = MX_RL_SENDER_DOMAIN, .count = MX_RL_MESSAGES,
         .limit = 1000, .window = 600, .algorithm = MX_RL_SLIDING},
        {.name = (char *)"net", .key = MX_RL_CLIENT_NET, .count = MX_RL_MESSAGES, .limit = 8,
         .window = 600, .algorithm = MX_RL_SLIDING},
    };
    const mx_rl_rule *rules[4] = {&r[0], &r[1], &r[2], &r[3]};
    const char *values[4] = {"192.0.2.7", "a@x.test", "x.test", "192.0.2.0/24"};
    uint64_t amounts[4] = {1, 1, 1, 1};
    mx_rl_result res[4];
    int64_t now = 1700000000;
    mx_rl_hit_many(s, NULL, rules, values, amounts, 4, now, res); /* creates the windows */
    for (int ev = 2; ev <= 10; ev++) {
        uint64_t rt = atomic_load(&st->round_trips);
        mx_rl_hit_many(s, NULL, rules, values, amounts, 4, now, res);
        g_assert_cmpuint(atomic_load(&st->round_trips) - rt, ==, 1);
        g_assert_cmpint(res[0].verdict, ==, MX_RL_PASS);
        g_assert_cmpint(res[1].verdict, ==, ev <= 5 ? MX_RL_PASS : MX_RL_OVER);
        g_assert_cmpint(res[2].verdict, ==, MX_RL_PASS);
        g_assert_cmpint(res[3].verdict, ==, ev <= 8 ? MX_RL_PASS : MX_RL_OVER);
        for (int i = 0; i < 4; i++) {
            g_assert_cmpuint(res[i].after, ==, (uint64_t)ev);
            g_assert_cmpuint(res[i].before, ==, (uint64_t)ev - 1);
        }
        /* the single call agrees */
        mx_rl_result one;
        mx_rl_peek(s, &r[3], values[3], now, &one);
        g_assert_cmpuint(one.after, ==, (uint64_t)ev);
    }
    /* the previous window counts in the sliding estimate: 10 events in
     * the last window, a quarter into the next one weigh 7.5 */
    mx_rl_hit_many(s, NULL, rules, values, amounts, 4, now - now % 600 + 600 + 150, res);
    g_assert_cmpuint(res[3].after, ==, 1);
    g_assert_cmpfloat(res[3].estimate, ==, 1 + 10 * 0.75);
    g_assert_cmpint(res[3].verdict, ==, MX_RL_OVER);
    mx_store_free(s);
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}

typedef struct comb_ctx {
    mx_store *s;
    int id;
    uint64_t *seen; /* the hot counter's value after each of this thread's calls */
} comb_ctx;

enum { COMB_THREADS = 8, COMB_CALLS = 200 };

static gpointer comb_loop(gpointer p)
{
    comb_ctx *c = p;
    char own[32];
    snprintf(own, sizeof(own), "comb:own:%d", c->id);
    const char *keys[2] = {"comb:hot", own};
    uint64_t delta[2] = {1, 1}, now[2];
    int ttl[2] = {60, 60};
    mx_store_rc rcs[2];
    for (int i = 0; i < COMB_CALLS; i++) {
        mx_store_incr_many(c->s, keys, delta, ttl, 2, now, rcs);
        g_assert_cmpint(rcs[0], ==, MX_STORE_OK);
        g_assert_cmpint(rcs[1], ==, MX_STORE_OK);
        g_assert_cmpuint(now[1], ==, (uint64_t)i + 1);
        c->seen[i] = now[0];
    }
    return NULL;
}

/* Callers at the same time share exchanges, and each still gets its own
 * value: 8 threads on one hot counter see every value from 1 to 1600
 * exactly once, in fewer round trips than calls. */
static void test_concurrent_incr_many_share_round_trips(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    const mx_store_stats *st = s->ops->stats(s);
    uint64_t rt0 = atomic_load(&st->round_trips);
    comb_ctx c[COMB_THREADS];
    GThread *t[COMB_THREADS];
    uint64_t *seen = g_new0(uint64_t, COMB_THREADS * COMB_CALLS);
    for (int i = 0; i < COMB_THREADS; i++) {
        c[i] = (comb_ctx){.s = s, .id = i, .seen = seen + i * COMB_CALLS};
        t[i] = g_thread_new("comb", comb_loop, &c[i]);
    }
    for (int i = 0; i < COMB_THREADS; i++)
        g_thread_join(t[i]);
    unsigned char *hit = g_new0(unsigned char, COMB_THREADS * COMB_CALLS + 1);
    for (int i = 0; i < COMB_THREADS * COMB_CALLS; i++) {
        g_assert_cmpuint(seen[i], >=, 1);
        g_assert_cmpuint(seen[i], <=, COMB_THREADS * COMB_CALLS);
        g_assert_cmpint(hit[seen[i]], ==, 0);
        hit[seen[i]] = 1;
    }
    uint64_t rts = atomic_load(&st->round_trips) - rt0;
    if (g_test_verbose())
        g_printerr("%d calls, %llu round trips, %llu combined\n", COMB_THREADS * COMB_CALLS,
                   (unsigned long long)rts, (unsigned long long)atomic_load(&st->combined));
    g_assert_cmpuint(rts, <, COMB_THREADS * COMB_CALLS);
    g_assert_cmpuint(atomic_load(&st->combined), >, 0);
    g_free(hit);
    g_free(seen);
    mx_store_free(s);
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}

/* Keys: n counters, the first half on server 0, the rest on server 1. */
static char **keys_on_both(mx_store *s, server *sv, const char *prefix, int n)
{
    char **k = g_new0(char *, n + 1);
    int have[2] = {0, 0};
    for (int i = 0; have[0] + have[1] < n && i < 10000; i++) {
        char *key = g_strdup_printf("%s%d", prefix, i);
        uint64_t before = items_on(&sv[1]);
        g_assert_cmpint(mx_store_incr(s, key, 1, 60, NULL), ==, MX_STORE_OK);
        int on = items_on(&sv[1]) > before;
        mx_store_del(s, key);
        if (have[on] < n / 2 + (on ? n % 2 : 0)) {
            k[on ? n / 2 + have[1] : have[0]] = key;
            have[on]++;
        } else {
            g_free(key);
        }
    }
    g_assert_cmpint(have[0] + have[1], ==, n);
    return k;
}

/* The counters of a policy step in one exchange: created at their delta
 * with their expiry, moved when present, read (and not created) with a
 * delta of 0; both servers at once, on kept connections that survive a
 * server's restart. */
static void test_incr_many(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    const mx_store_stats *st = s->ops->stats(s);
    enum { N = 6 };
    char **k = keys_on_both(s, sv, "im:", N);
    uint64_t delta[N] = {1, 5, 0, 1, 7, 0};
    int ttl[N] = {60, 60, 60, 1, 60, 60};
    uint64_t now[N];
    mx_store_rc rcs[N];
    uint64_t rt = atomic_load(&st->round_trips);
    mx_store_incr_many(s, (const char *const *)k, delta, ttl, N, now, rcs);
    /* all absent: one exchange, then one more to create those with a delta */
    g_assert_cmpuint(atomic_load(&st->round_trips) - rt, ==, 2);
    uint64_t want[N] = {1, 5, 0, 1, 7, 0};
    mx_store_rc want_rc[N] = {MX_STORE_OK, MX_STORE_OK, MX_STORE_NOT_FOUND,
                              MX_STORE_OK, MX_STORE_OK, MX_STORE_NOT_FOUND};
    for (int i = 0; i < N; i++) {
        g_assert_cmpint(rcs[i], ==, want_rc[i]);
        g_assert_cmpuint(now[i], ==, want[i]);
    }
    uint64_t v = 0;
    mx_store_rc rc;
    mx_store_counters(s, (const char *const *)&k[2], 1, &v, &rc);
    g_assert_cmpint(rc, ==, MX_STORE_NOT_FOUND); /* a read created nothing */

    uint64_t again[N] = {2, 0, 0, 3, 1, 0};
    rt = atomic_load(&st->round_trips);
    mx_store_incr_many(s, (const char *const *)k, again, ttl, N, now, rcs);
    g_assert_cmpuint(atomic_load(&st->round_trips) - rt, ==, 1); /* both servers, one wait */
    uint64_t want2[N] = {3, 5, 0, 4, 8, 0};
    for (int i = 0; i < N; i++)
        g_assert_cmpuint(now[i], ==, want2[i]);

    /* created with its expiry: k[3] (ttl 1) is gone after it */
    g_usleep(2200000);
    mx_store_counters(s, (const char *const *)&k[3], 1, &v, &rc);
    g_assert_cmpint(rc, ==, MX_STORE_NOT_FOUND);

    /* a restarted server closed the kept connections: the next call still
     * counts, and no breaker opens */
    server_stop(&sv[1]);
    server_start(&sv[1]);
    for (int round = 0; round < 5; round++) {
        uint64_t one[N] = {1, 1, 1, 1, 1, 1};
        mx_store_incr_many(s, (const char *const *)k, one, ttl, N, now, rcs);
        for (int i = 0; i < N; i++)
            g_assert_cmpint(rcs[i], ==, MX_STORE_OK);
    }
    g_assert_cmpuint(now[0], ==, 3 + 5);
    g_assert_cmpuint(now[N / 2], ==, 5); /* server 1 started empty */
    g_assert_cmpuint(atomic_load(&st->breaker_opened), ==, 0);

    /* a hung server: its keys fail within the timeout, the others count */
    kill(sv[1].pid, SIGSTOP);
    wait_stopped(sv[1].pid);
    uint64_t one[N] = {1, 1, 1, 1, 1, 1};
    gint64 t0 = g_get_monotonic_time();
    mx_store_incr_many(s, (const char *const *)k, one, ttl, N, now, rcs);
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 400000);
    for (int i = 0; i < N; i++)
        g_assert_cmpint(rcs[i], ==, i < N / 2 ? MX_STORE_OK : MX_STORE_ERROR);
    g_assert_cmpuint(now[0], ==, 3 + 5 + 1);
    kill(sv[1].pid, SIGCONT);

    /* a dead one: its keys fail (or move, once libmemcached has ejected
     * it), each call in bounded time; the live server's keys count */
    server_stop(&sv[1]);
    for (int round = 0; round < 10; round++) {
        t0 = g_get_monotonic_time();
        mx_store_incr_many(s, (const char *const *)k, one, ttl, N, now, rcs);
        g_assert_cmpint(g_get_monotonic_time() - t0, <, 400000);
        for (int i = 0; i < N / 2; i++)
            g_assert_cmpint(rcs[i], ==, MX_STORE_OK);
    }
    /* back on its port: its keys count again, once the breaker's
     * cool-down (500 ms here) and the dead timeout (2 s) are over */
    server_start(&sv[1]);
    int back = 0;
    for (int round = 0; round < 60 && !back; round++) {
        g_usleep(100000);
        mx_store_incr_many(s, (const char *const *)k, one, ttl, N, now, rcs);
        back = 1;
        for (int i = 0; i < N; i++)
            back &= rcs[i] == MX_STORE_OK;
    }
    g_assert_true(back);
    for (int i = 0; i < N; i++)
        g_free(k[i]);
    g_free(k);
    mx_store_free(s);
    server_stop(&sv[0]);
    server_stop(&sv[1]); /* the one started again above */
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGABRT, kill_started);
    signal(SIGTERM, kill_started); /* ctest's timeout */
    g_test_add_func("/store_memcached/batch/bulk_set_and_get", test_bulk_set_and_get);
    g_test_add_func("/store_memcached/batch/bulk_set_with_a_hung_server",
                    test_bulk_set_with_a_hung_server);
    g_test_add_func("/store_memcached/batch/write_many_semantics", test_write_many_semantics);
    g_test_add_func("/store_memcached/batch/round_trips_are_counted", test_round_trips_are_counted);
    g_test_add_func("/store_memcached/batch/incr_many", test_incr_many);
    g_test_add_func("/store_memcached/batch/concurrent_incr_many_share_round_trips",
                    test_concurrent_incr_many_share_round_trips);
    g_test_add_func("/store_memcached/batch/rules_of_a_step_cost_one_round_trip",
                    test_rules_of_a_step_cost_one_round_trip);
    return g_test_run();
}
