/*
 * test_ratelimit.c: window arithmetic, exactness under concurrent nodes,
 * key isolation between rules, and each on_store_down policy, on the
 * embedded store with a test clock and on a store that always fails.
 */
#include <stdatomic.h>
#include <string.h>

#include <glib.h>

#include "ratelimit.h"

static int64_t test_now;
static int64_t test_clock(void) { return test_now; }

static mx_rl_rule rule(const char *name, mx_rl_algo algo, uint64_t limit, int window,
                       mx_rl_down down)
{
    mx_rl_rule r = {
        .name = (char *)name,
        .key = MX_RL_SENDER,
        .count = MX_RL_MESSAGES,
        .limit = limit,
        .window = window,
        .algorithm = algo,
        .action = MX_RL_TEMPFAIL,
        .on_store_down = down,
    };
    return r;
}

static int passes(mx_store *s, mx_store *local, const mx_rl_rule *r, const char *v, int n,
                  int64_t now)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        mx_rl_result res;
        mx_rl_hit(s, local, r, v, 1, now, &res);
        if (res.verdict == MX_RL_PASS || res.verdict == MX_RL_UNCHECKED)
            ok++;
    }
    return ok;
}

static void test_fixed_window_is_exact(void)
{
    test_now = 1000000;
    mx_store *s = mx_store_embedded_new(test_clock);
    mx_rl_rule r = rule("msgs", MX_RL_FIXED, 10, 3600, MX_RL_DOWN_CLOSED);
    int64_t start = test_now - test_now % 3600;
    g_assert_cmpint(passes(s, NULL, &r, "a@x.test", 30, start + 5), ==, 10);
    mx_rl_result res;
    mx_rl_hit(s, NULL, &r, "a@x.test", 1, start + 100, &res);
    g_assert_cmpint(res.verdict, ==, MX_RL_OVER);
    g_assert_cmpuint(res.before, ==, 30);
    g_assert_cmpuint(res.after, ==, 31);
    g_assert_cmpint(res.retry_after, ==, 3500);
    /* another sender, another rule: their own counters */
    g_assert_cmpint(passes(s, NULL, &r, "b@x.test", 3, start + 5), ==, 3);
    mx_rl_rule r2 = rule("other", MX_RL_FIXED, 5, 3600, MX_RL_DOWN_CLOSED);
    g_assert_cmpint(passes(s, NULL, &r2, "a@x.test", 7, start + 5), ==, 5);
    /* the next window starts afresh */
    g_assert_cmpint(passes(s, NULL, &r, "a@x.test", 12, start + 3600), ==, 10);
    /* peek does not count */
    mx_rl_peek(s, &r, "b@x.test", start + 10, &res);
    g_assert_cmpuint(res.after, ==, 3);
    mx_rl_peek(s, &r, "b@x.test", start + 10, &res);
    g_assert_cmpuint(res.after, ==, 3);
    g_assert_cmpint(res.verdict, ==, MX_RL_PASS);
    mx_store_free(s);
}

typedef struct node {
    mx_store *s;
    mx_rl_rule *r;
    int64_t now;
    atomic_int *passed;
} node;

static gpointer node_run(gpointer p)
{
    node *n = p;
    atomic_fetch_add(n->passed, passes(n->s, NULL, n->r, "shared@x.test", 10, n->now));
    return NULL;
}

/* Three nodes (threads) sharing one store send 10 each: 10 pass in all. */
static void test_exact_across_nodes(void)
{
    test_now = 2000000;
    mx_store *s = mx_store_embedded_new(test_clock);
    mx_rl_rule r = rule("cluster", MX_RL_FIXED, 10, 60, MX_RL_DOWN_CLOSED);
    atomic_int passed = 0;
    node n = {.s = s, .r = &r, .now = test_now, .passed = &passed};
    GThread *t[3];
    for (int i = 0; i < 3; i++)
        t[i] = g_thread_new("node", node_run, &n);
    for (int i = 0; i < 3; i++)
        g_thread_join(t[i]);
    g_assert_cmpint(atomic_load(&passed), ==, 10);
    mx_store_free(s);
}

static void test_sliding_window_bound(void)
{
    test_now = 3000000;
    mx_store *s = mx_store_embedded_new(test_clock);
    mx_rl_rule r = rule("slide", MX_RL_SLIDING, 100, 60, MX_RL_DOWN_CLOSED);
    int64_t start = test_now - test_now % 60;
    /* a full previous window */
    g_assert_cmpint(passes(s, NULL, &r, "s@x.test", 100, start), ==, 100);
    /* half-way through the next one, half of it still weighs: ~50 more */
    int got = passes(s, NULL, &r, "s@x.test", 100, start + 60 + 30);
    g_assert_cmpint(got, >=, 49);
    g_assert_cmpint(got, <=, 51);
    /* a fixed window would have let 100 through at once: the sliding
     * estimate keeps any 60 s span under 1.5 x limit here */
    mx_rl_result res;
    mx_rl_hit(s, NULL, &r, "s@x.test", 1, start + 60 + 31, &res);
    g_assert_cmpint(res.verdict, ==, MX_RL_OVER);
    g_assert_cmpint(res.retry_after, >=, 1);
    g_assert_cmpint(res.retry_after, <=, 29);
    /* after two quiet windows everything has decayed */
    g_assert_cmpint(passes(s, NULL, &r, "s@x.test", 100, start + 180), ==, 100);
    mx_store_free(s);
}

/* A store that is always down. */
static mx_store_rc down_get(mx_store *s, const char *k, GBytes **v) { return MX_STORE_ERROR; }
static mx_store_rc down_set(mx_store *s, const char *k, const void *v, size_t n, int t)
{
    return MX_STORE_ERROR;
}
static mx_store_rc down_incr(mx_store *s, const char *k, uint64_t d, int t, uint64_t *now)
{
    return MX_STORE_ERROR;
}
static mx_store_rc down_del(mx_store *s, const char *k) { return MX_STORE_ERROR; }
static void down_destroy(mx_store *s) {}
static const mx_store_ops down_ops = {
    .name = "down",
    .get = down_get,
    .set = down_set,
    .incr = down_incr,
    .del = down_del,
    .destroy = down_destroy,
};

static void test_store_down_policies(void)
{
    test_now = 4000000;
    mx_store down = {.ops = &down_ops};
    mx_store *local = mx_store_embedded_new(test_clock);
    mx_rl_result res;

    mx_rl_rule open = rule("o", MX_RL_FIXED, 1, 60, MX_RL_DOWN_OPEN);
    mx_rl_hit(&down, local, &open, "x@x.test", 1, test_now, &res);
    g_assert_cmpint(res.verdict, ==, MX_RL_UNCHECKED);

    mx_rl_rule closed = rule("c", MX_RL_FIXED, 1000, 60, MX_RL_DOWN_CLOSED);
    mx_rl_hit(&down, local, &closed, "x@x.test", 1, test_now, &res);
    g_assert_cmpint(res.verdict, ==, MX_RL_STORE_DOWN);

    /* local: the node's own counter enforces the limit */
    mx_rl_rule loc = rule("l", MX_RL_FIXED, 4, 60, MX_RL_DOWN_LOCAL);
    g_assert_cmpint(passes(&down, local, &loc, "x@x.test", 10, test_now), ==, 4);
    mx_rl_hit(&down, local, &loc, "x@x.test", 1, test_now, &res);
    g_assert_true(res.local);
    g_assert_cmpint(res.verdict, ==, MX_RL_OVER);
    mx_store_free(local);
}

static void test_values(void)
{
    char *v;
    v = mx_rl_value(MX_RL_CLIENT_NET, "192.0.2.77", NULL, NULL, NULL);
    g_assert_cmpstr(v, ==, "192.0.2.0/24");
    g_free(v);
    v = mx_rl_value(MX_RL_CLIENT_NET, "2001:db8:1:2:3:4:5:6", NULL, NULL, NULL);
    g_assert_cmpstr(v, ==, "2001:db8:1:2::/64");
    g_free(v);
    v = mx_rl_value(MX_RL_SENDER_DOMAIN, NULL, NULL, "Bob@Example.TEST", NULL);
    g_assert_cmpstr(v, ==, "example.test");
    g_free(v);
    v = mx_rl_value(MX_RL_SENDER, NULL, NULL, "Bob@Example.TEST", NULL);
    g_assert_cmpstr(v, ==, "bob@example.test");
    g_free(v);
    g_assert_null(mx_rl_value(MX_RL_SENDER_DOMAIN, NULL, NULL, "", NULL));
    g_assert_null(mx_rl_value(MX_RL_SENDER, NULL, NULL, "", NULL));
    v = mx_rl_value(MX_RL_RECIPIENT_DOMAIN, NULL, NULL, NULL, "a@Δ.test");
    g_assert_cmpstr(v, ==, "δ.test");
    g_free(v);
    g_assert_cmpint(mx_rl_key_parse("client_net"), ==, MX_RL_CLIENT_NET);
    g_assert_cmpint(mx_rl_key_parse("bogus"), ==, -1);
    g_assert_cmpint(mx_rl_down_parse("local"), ==, MX_RL_DOWN_LOCAL);
    g_assert_cmpint(mx_rl_algo_parse("sliding"), ==, MX_RL_SLIDING);
    g_assert_cmpint(mx_rl_count_parse("bytes"), ==, MX_RL_BYTES);
    g_assert_cmpint(mx_rl_action_parse("reject"), ==, MX_RL_REJECT);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/ratelimit/fixed_window_is_exact", test_fixed_window_is_exact);
    g_test_add_func("/ratelimit/exact_across_nodes", test_exact_across_nodes);
    g_test_add_func("/ratelimit/sliding_window_bound", test_sliding_window_bound);
    g_test_add_func("/ratelimit/store_down_policies", test_store_down_policies);
    g_test_add_func("/ratelimit/values", test_values);
    return g_test_run();
}
