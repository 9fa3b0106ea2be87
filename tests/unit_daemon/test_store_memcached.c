/*
 * test_store_memcached.c: the memcached store against real memcached
 * servers started by the test on loopback.
 *
 * What must hold: records round-trip and counters are exact under
 * concurrent increments from many threads (incr -> add -> incr); counters
 * are created with their expiry; a forged record, or a genuine one copied
 * under another key, reads as absent and is counted; keys spread over the
 * servers; a killed server fails its keys without hanging the others; a
 * hung server (SIGSTOP) opens its breaker, after which its keys fail at
 * once, and it closes again after SIGCONT.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <libmemcached/memcached.h>

#include "mc_server.h"
#include "ratelimit.h"
#include "store.h"


static void test_roundtrip_and_expiry(void)
{
    server sv = {0};
    server_start(&sv);
    mx_store *s = store_for(&sv, 1, 3);
    GBytes *v = NULL;
    g_assert_cmpint(mx_store_get(s, "rep:ip:192.0.2.1", &v), ==, MX_STORE_NOT_FOUND);
    const char rec[] = "a record \0 with a NUL";
    g_assert_cmpint(mx_store_set(s, "rep:ip:192.0.2.1", rec, sizeof(rec), 60), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_get(s, "rep:ip:192.0.2.1", &v), ==, MX_STORE_OK);
    gsize n = 0;
    const char *d = g_bytes_get_data(v, &n);
    g_assert_cmpmem(d, n, rec, sizeof(rec));
    g_bytes_unref(v);

    /* logical keys may hold anything memcached keys may not */
    g_assert_cmpint(mx_store_set(s, "rep:sender:a b\r\nc@δ.test", "x", 1, 60), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_get(s, "rep:sender:a b\r\nc@δ.test", &v), ==, MX_STORE_OK);
    g_bytes_unref(v);

    uint64_t now = 0;
    g_assert_cmpint(mx_store_incr(s, "rl:x", 5, 1, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 5);
    g_assert_cmpint(mx_store_incr(s, "rl:x", 2, 1, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 7);
    /* created with its expiry: gone after it (memcached counts whole seconds) */
    g_usleep(2200000);
    g_assert_cmpint(mx_store_incr(s, "rl:x", 1, 1, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 1);
    g_assert_cmpint(mx_store_del(s, "rl:x"), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_incr(s, "rl:x", 3, 60, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 3);
    mx_store_free(s);
    server_stop(&sv);
}

typedef struct incr_ctx {
    mx_store *s;
    atomic_int errors;
} incr_ctx;

static gpointer incr_loop(gpointer p)
{
    incr_ctx *c = p;
    for (int i = 0; i < 500; i++) {
        uint64_t now;
        if (mx_store_incr(c->s, "rl:hot", 1, 60, &now) != MX_STORE_OK)
            atomic_fetch_add(&c->errors, 1);
    }
    return NULL;
}

static void test_concurrent_incr_is_exact(void)
{
    server sv = {0};
    server_start(&sv);
    mx_store *s = store_for(&sv, 1, 3);
    incr_ctx c = {.s = s};
    GThread *t[8];
    for (int i = 0; i < 8; i++)
        t[i] = g_thread_new("incr", incr_loop, &c);
    for (int i = 0; i < 8; i++)
        g_thread_join(t[i]);
    g_assert_cmpint(atomic_load(&c.errors), ==, 0);
    uint64_t now = 0;
    g_assert_cmpint(mx_store_incr(s, "rl:hot", 0, 60, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 8 * 500);
    mx_store_free(s);
    server_stop(&sv);
}

static void test_tampered_records_are_ignored(void)
{
    server sv = {0};
    server_start(&sv);
    mx_store *s = store_for(&sv, 1, 3);
    memcached_st *raw = raw_client(&sv);
    char k[37], k2[37];
    phys_key("rep:ip:203.0.113.9", k);
    phys_key("rep:ip:198.51.100.1", k2);

    /* 1: plain bytes written straight into memcached (no HMAC) */
    const char forged[] = "allow me";
    g_assert_cmpint(memcached_set(raw, k, strlen(k), forged, sizeof(forged), 60, 0), ==,
                    MEMCACHED_SUCCESS);
    GBytes *v = NULL;
    g_assert_cmpint(mx_store_get(s, "rep:ip:203.0.113.9", &v), ==, MX_STORE_NOT_FOUND);
    g_assert_null(v);

    /* 2: right format, made-up MAC */
    char buf[1 + 32 + 8];
    buf[0] = 1;
    memset(buf + 1, 0xAB, 32);
    memcpy(buf + 33, "allow me", 8);
    memcached_set(raw, k, strlen(k), buf, sizeof(buf), 60, 0);
    g_assert_cmpint(mx_store_get(s, "rep:ip:203.0.113.9", &v), ==, MX_STORE_NOT_FOUND);

    /* 3: a genuine record, copied under another key */
    g_assert_cmpint(mx_store_set(s, "rep:ip:198.51.100.1", "allowed", 7, 60), ==, MX_STORE_OK);
    size_t len = 0;
    uint32_t flags;
    memcached_return_t rc;
    char *genuine = memcached_get(raw, k2, strlen(k2), &len, &flags, &rc);
    g_assert_nonnull(genuine);
    memcached_set(raw, k, strlen(k), genuine, len, 60, 0);
    free(genuine);
    g_assert_cmpint(mx_store_get(s, "rep:ip:203.0.113.9", &v), ==, MX_STORE_NOT_FOUND);
    /* the original still reads */
    g_assert_cmpint(mx_store_get(s, "rep:ip:198.51.100.1", &v), ==, MX_STORE_OK);
    g_bytes_unref(v);

    /* 4: one flipped bit in a genuine record */
    genuine = memcached_get(raw, k2, strlen(k2), &len, &flags, &rc);
    genuine[len - 1] ^= 1;
    memcached_set(raw, k2, strlen(k2), genuine, len, 60, 0);
    free(genuine);
    g_assert_cmpint(mx_store_get(s, "rep:ip:198.51.100.1", &v), ==, MX_STORE_NOT_FOUND);

    g_assert_cmpuint(atomic_load(&s->ops->stats(s)->bad_records), ==, 4);
    memcached_free(raw);
    mx_store_free(s);
    server_stop(&sv);
}


static void test_two_servers_spread_and_a_killed_one(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    char key[64];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "rl:k%d", i);
        g_assert_cmpint(mx_store_incr(s, key, 1, 60, NULL), ==, MX_STORE_OK);
    }
    uint64_t a = items_on(&sv[0]), b = items_on(&sv[1]);
    g_assert_cmpuint(a + b, ==, 200);
    g_assert_cmpuint(a, >, 40);
    g_assert_cmpuint(b, >, 40);

    /* kill one: calls fail or succeed, each within a bounded time */
    server_stop(&sv[1]);
    int ok = 0, failed = 0;
    gint64 worst = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "rl:k%d", i);
        gint64 t0 = g_get_monotonic_time();
        mx_store_rc rc = mx_store_incr(s, key, 1, 60, NULL);
        gint64 dt = g_get_monotonic_time() - t0;
        if (dt > worst)
            worst = dt;
        if (rc == MX_STORE_OK)
            ok++;
        else
            failed++;
    }
    g_assert_cmpint(ok, >=, (int)a); /* the live server's keys never fail */
    g_assert_cmpint(failed, >, 0);   /* the dead one's do, at least until ejected */
    g_assert_cmpint(worst, <, 500000);
    mx_store_free(s);
    server_stop(&sv[0]);
}

static void test_hung_server_opens_the_breaker(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_store *s = store_for(sv, 2, 3);
    /* keys on server 1 */
    GPtrArray *keys = g_ptr_array_new_with_free_func(g_free);
    char *on0 = NULL; /* and one on server 0 */
    for (int i = 0; keys->len < 20 && i < 1000; i++) {
        char *k = g_strdup_printf("rl:h%d", i);
        uint64_t before = items_on(&sv[1]);
        mx_store_incr(s, k, 1, 60, NULL);
        if (items_on(&sv[1]) > before)
            g_ptr_array_add(keys, k);
        else if (!on0)
            on0 = k;
        else
            g_free(k);
    }
    g_assert_cmpuint(keys->len, ==, 20);
    g_assert_nonnull(on0);

    kill(sv[1].pid, SIGSTOP);
    wait_stopped(sv[1].pid);
    gint64 slow = 0, fast_worst = 0;
    int failed = 0;
    for (guint i = 0; i < keys->len; i++) {
        gint64 t0 = g_get_monotonic_time();
        mx_store_rc rc = mx_store_incr(s, keys->pdata[i], 1, 60, NULL);
        gint64 dt = g_get_monotonic_time() - t0;
        if (rc != MX_STORE_OK)
            failed++;
        if (g_test_verbose())
            g_printerr("call %u rc %d %lld us\n", i, rc, (long long)dt);
        if (i < 3)
            slow += dt;
        else if (dt > fast_worst)
            fast_worst = dt;
    }
    g_assert_cmpint(failed, ==, (int)keys->len);
    char name[64];
    g_assert_cmpint(s->ops->server_state(s, 1, name, sizeof(name)), ==, MX_BREAKER_OPEN);
    g_assert_cmpuint(atomic_load(&s->ops->stats(s)->breaker_opened), ==, 1);
    g_assert_cmpuint(atomic_load(&s->ops->stats(s)->fast_failed), >=, 17);
    /* the first calls pay the timeout; once open, calls do not wait */
    g_assert_cmpint(fast_worst, <, 5000);
    g_assert_cmpint(slow, <, 3 * 400000);
    /* the other server is unaffected */
    g_assert_cmpint(mx_store_incr(s, "rl:elsewhere-probe", 1, 60, NULL) == MX_STORE_OK ||
                        items_on(&sv[0]) > 0, ==, 1);
    /* a multi-get goes through the same breakers: the hung server's keys
     * fail at once, the other's are read */
    const char *mk[3] = {keys->pdata[0], on0, keys->pdata[1]};
    uint64_t mv[3];
    mx_store_rc mrc[3];
    gint64 t0 = g_get_monotonic_time();
    mx_store_counters(s, mk, 3, mv, mrc);
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 5000);
    g_assert_cmpint(mrc[0], ==, MX_STORE_ERROR);
    g_assert_cmpint(mrc[2], ==, MX_STORE_ERROR);
    g_assert_cmpint(mrc[1], ==, MX_STORE_OK);
    g_assert_cmpuint(mv[1], ==, 1);
    g_free(on0);

    kill(sv[1].pid, SIGCONT);
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    mx_store_rc rc = MX_STORE_ERROR;
    while (g_get_monotonic_time() < end) {
        rc = mx_store_incr(s, keys->pdata[0], 1, 60, NULL);
        if (rc == MX_STORE_OK)
            break;
        g_usleep(50000);
    }
    g_assert_cmpint(rc, ==, MX_STORE_OK);
    g_assert_cmpint(s->ops->server_state(s, 1, name, sizeof(name)), ==, MX_BREAKER_CLOSED);
    g_ptr_array_free(keys, TRUE);
    mx_store_free(s);
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}

typedef struct node {
    mx_store *s;
    const mx_rl_rule *r;
    int64_t now;
    atomic_int *passed;
} node;

static gpointer node_run(gpointer p)
{
    node *n = p;
    for (int i = 0; i < 10; i++) {
        mx_rl_result res;
        mx_rl_hit(n->s, NULL, n->r, "sender@x.test", 1, n->now, &res);
        g_assert_cmpint(res.verdict, !=, MX_RL_STORE_DOWN);
        if (res.verdict == MX_RL_PASS)
            atomic_fetch_add(n->passed, 1);
    }
    return NULL;
}

/* Three nodes, each with its own store handle on the same two servers,
 * send 10 each against a limit of 10: exactly 10 pass. */
static void test_rate_limit_exact_across_three_nodes(void)
{
    server sv[2] = {{0}, {0}};
    server_start(&sv[0]);
    server_start(&sv[1]);
    mx_rl_rule r = {.name = (char *)"msgs", .key = MX_RL_SENDER, .count = MX_RL_MESSAGES,
                    .limit = 10, .window = 3600, .algorithm = MX_RL_FIXED,
                    .on_store_down = MX_RL_DOWN_CLOSED};
    atomic_int passed = 0;
    node n[3];
    GThread *t[3];
    for (int i = 0; i < 3; i++) {
        n[i] = (node){.s = store_for(sv, 2, 3), .r = &r, .now = 1700000000, .passed = &passed};
        t[i] = g_thread_new("node", node_run, &n[i]);
    }
    for (int i = 0; i < 3; i++) {
        g_thread_join(t[i]);
        mx_store_free(n[i].s);
    }
    g_assert_cmpint(atomic_load(&passed), ==, 10);
    server_stop(&sv[0]);
    server_stop(&sv[1]);
}

/* n sets through one batch. */

static void test_bad_config(void)
{
    char *err = NULL;
    mx_memcached_conf c = {.servers = "127.0.0.1", .key = KEY, .keylen = 32};
    g_assert_null(mx_store_memcached_new(&c, &err));
    g_assert_nonnull(strstr(err, "HOST:PORT"));
    g_clear_pointer(&err, g_free);
    c.servers = "127.0.0.1:11211";
    c.keylen = 8;
    g_assert_null(mx_store_memcached_new(&c, &err));
    g_assert_nonnull(strstr(err, "key"));
    g_free(err);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGABRT, kill_started);
    signal(SIGTERM, kill_started); /* ctest's timeout */
    g_test_add_func("/store_memcached/roundtrip_and_expiry", test_roundtrip_and_expiry);
    g_test_add_func("/store_memcached/concurrent_incr_is_exact", test_concurrent_incr_is_exact);
    g_test_add_func("/store_memcached/tampered_records_are_ignored",
                    test_tampered_records_are_ignored);
    g_test_add_func("/store_memcached/two_servers_spread_and_a_killed_one",
                    test_two_servers_spread_and_a_killed_one);
    g_test_add_func("/store_memcached/hung_server_opens_the_breaker",
                    test_hung_server_opens_the_breaker);
    g_test_add_func("/store_memcached/rate_limit_exact_across_three_nodes",
                    test_rate_limit_exact_across_three_nodes);
    g_test_add_func("/store_memcached/bad_config", test_bad_config);
    return g_test_run();
}
