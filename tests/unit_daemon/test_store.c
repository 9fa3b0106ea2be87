/*
 * test_store.c: the embedded store keeps memcached's semantics.
 */
#include <string.h>

#include <glib.h>

#include "store.h"

static int64_t fake_now = 1000;
static int64_t fake_clock(void) { return fake_now; }

static void test_set_get_delete(void)
{
    mx_store *s = mx_store_embedded_new(fake_clock);
    GBytes *v = NULL;
    g_assert_cmpint(mx_store_get(s, "k", &v), ==, MX_STORE_NOT_FOUND);
    g_assert_cmpint(mx_store_set(s, "k", "abc", 3, 0), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_get(s, "k", &v), ==, MX_STORE_OK);
    gsize n;
    const char *p = g_bytes_get_data(v, &n);
    g_assert_cmpmem(p, n, "abc", 3);
    g_bytes_unref(v);
    g_assert_cmpint(mx_store_del(s, "k"), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_del(s, "k"), ==, MX_STORE_NOT_FOUND);
    mx_store_free(s);
}

static void test_ttl_expires(void)
{
    mx_store *s = mx_store_embedded_new(fake_clock);
    GBytes *v = NULL;
    mx_store_set(s, "t", "x", 1, 10);
    fake_now += 9;
    g_assert_cmpint(mx_store_get(s, "t", &v), ==, MX_STORE_OK);
    g_bytes_unref(v);
    fake_now += 1;
    g_assert_cmpint(mx_store_get(s, "t", &v), ==, MX_STORE_NOT_FOUND);
    mx_store_free(s);
}

static void test_incr_creates_and_adds(void)
{
    mx_store *s = mx_store_embedded_new(fake_clock);
    uint64_t now = 0;
    g_assert_cmpint(mx_store_incr(s, "c", 5, 60, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 5);
    g_assert_cmpint(mx_store_incr(s, "c", 2, 60, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 7);
    fake_now += 60; /* the window's key expires with its ttl */
    g_assert_cmpint(mx_store_incr(s, "c", 1, 60, &now), ==, MX_STORE_OK);
    g_assert_cmpuint(now, ==, 1);
    mx_store_set(s, "blob", "x", 1, 0);
    g_assert_cmpint(mx_store_incr(s, "blob", 1, 0, &now), ==, MX_STORE_ERROR);
    mx_store_free(s);
}

/* add writes only when absent, and a batch means what its calls mean */
static void test_add_and_batches(void)
{
    mx_store *s = mx_store_embedded_new(fake_clock);
    GBytes *v = NULL;
    g_assert_cmpint(mx_store_add(s, "a", "one", 3, 10), ==, MX_STORE_OK);
    g_assert_cmpint(mx_store_add(s, "a", "two", 3, 10), ==, MX_STORE_NOT_FOUND);
    g_assert_cmpint(mx_store_get(s, "a", &v), ==, MX_STORE_OK);
    g_assert_cmpmem(g_bytes_get_data(v, NULL), g_bytes_get_size(v), "one", 3);
    g_bytes_unref(v);
    fake_now += 10; /* expired: absent again */
    g_assert_cmpint(mx_store_add(s, "a", "two", 3, 10), ==, MX_STORE_OK);

    GBytes *rec = g_bytes_new_static("r", 1);
    mx_store_write w[] = {
        {.op = MX_STORE_W_SET, .key = "b", .val = rec},
        {.op = MX_STORE_W_ADD, .key = "b", .val = rec},
        {.op = MX_STORE_W_INCR, .key = "n", .delta = 3, .ttl = 60},
        {.op = MX_STORE_W_INCR, .key = "n", .delta = 4, .ttl = 60},
        {.op = MX_STORE_W_DEL, .key = "a"},
        {.op = MX_STORE_W_DEL, .key = "a"},
    };
    mx_store_rc rcs[G_N_ELEMENTS(w)];
    mx_store_write_many(s, w, G_N_ELEMENTS(w), rcs);
    mx_store_rc want[] = {MX_STORE_OK, MX_STORE_NOT_FOUND, MX_STORE_OK,
                          MX_STORE_OK, MX_STORE_OK,        MX_STORE_NOT_FOUND};
    for (size_t i = 0; i < G_N_ELEMENTS(w); i++)
        g_assert_cmpint(rcs[i], ==, want[i]);
    uint64_t n = 0;
    g_assert_cmpint(mx_store_incr(s, "n", 0, 60, &n), ==, MX_STORE_OK);
    g_assert_cmpuint(n, ==, 7);
    g_bytes_unref(rec);
    mx_store_free(s);
}

/* With a size limit the oldest entries go first, the newest stay, and
 * the estimate stays under the limit; rewriting a key moves it to the back. */
static void test_size_limit_drops_the_oldest(void)
{
    mx_store *s = mx_store_embedded_new(fake_clock);
    mx_store_embedded_set_limit(s, 64 * 1024);
    char val[200];
    memset(val, 'v', sizeof(val));
    mx_store_set(s, "keep", "k", 1, 0);
    uint64_t n = 0;
    for (int i = 0; i < 2000; i++) {
        char key[32];
        g_snprintf(key, sizeof(key), "trace:%d", i);
        mx_store_set(s, key, val, sizeof(val), 3600);
        if (i % 50 == 0)
            mx_store_set(s, "keep", "k", 1, 0); /* rewritten: never the oldest */
        g_assert_cmpuint(mx_store_embedded_bytes(s, NULL), <=, 64 * 1024);
    }
    uint64_t evicted = 0;
    mx_store_embedded_bytes(s, &evicted);
    g_assert_cmpuint(evicted, >, 1500);
    GBytes *v = NULL;
    g_assert_cmpint(mx_store_get(s, "trace:0", &v), ==, MX_STORE_NOT_FOUND);
    g_assert_cmpint(mx_store_get(s, "trace:1999", &v), ==, MX_STORE_OK);
    g_bytes_unref(v);
    g_assert_cmpint(mx_store_get(s, "keep", &v), ==, MX_STORE_OK);
    g_bytes_unref(v);
    g_assert_cmpint(mx_store_incr(s, "counter", 5, 60, &n), ==, MX_STORE_OK);
    g_assert_cmpuint(n, ==, 5);
    /* deleting and expiring give the bytes back */
    size_t before = mx_store_embedded_bytes(s, NULL);
    g_assert_cmpint(mx_store_del(s, "trace:1999"), ==, MX_STORE_OK);
    g_assert_cmpuint(mx_store_embedded_bytes(s, NULL), <, before);
    mx_store_free(s);
}

/* Expired entries nobody touches again are swept by later writes. */
static void test_expired_entries_are_swept(void)
{
    mx_store *s = mx_store_embedded_new(fake_clock);
    char val[1000];
    memset(val, 'v', sizeof(val));
    for (int i = 0; i < 200; i++) {
        char key[32];
        g_snprintf(key, sizeof(key), "old:%d", i);
        mx_store_set(s, key, val, sizeof(val), 10);
    }
    g_assert_cmpuint(mx_store_embedded_bytes(s, NULL), >, 200 * 1000);
    fake_now += 10;
    for (int i = 0; i < 1024; i++) {
        char key[32];
        g_snprintf(key, sizeof(key), "n:%d", i);
        mx_store_incr(s, key, 1, 0, NULL);
    }
    /* 1024 small counters are left, not the 200 kB that expired */
    g_assert_cmpuint(mx_store_embedded_bytes(s, NULL), <, 1024 * 200);
    mx_store_free(s);
}

typedef struct { mx_store *s; int n; } hammer_arg;

static gpointer hammer(gpointer data)
{
    hammer_arg *a = data;
    for (int i = 0; i < a->n; i++)
        mx_store_incr(a->s, "hot", 1, 0, NULL);
    return NULL;
}

static void test_incr_is_atomic_across_threads(void)
{
    mx_store *s = mx_store_embedded_new(NULL);
    hammer_arg a = {s, 20000};
    GThread *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = g_thread_new("hammer", hammer, &a);
    for (int i = 0; i < 4; i++)
        g_thread_join(t[i]);
    uint64_t now = 0;
    mx_store_incr(s, "hot", 0, 0, &now);
    g_assert_cmpuint(now, ==, 80000);
    mx_store_free(s);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/store/set, get and delete", test_set_get_delete);
    g_test_add_func("/store/a key expires with its ttl", test_ttl_expires);
    g_test_add_func("/store/incr creates at delta and adds", test_incr_creates_and_adds);
    g_test_add_func("/store/incr is atomic across threads", test_incr_is_atomic_across_threads);
    g_test_add_func("/store/add and batches", test_add_and_batches);
    g_test_add_func("/store/a size limit drops the oldest", test_size_limit_drops_the_oldest);
    g_test_add_func("/store/expired entries are swept", test_expired_entries_are_swept);
    return g_test_run();
}
