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
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <glib.h>
#include <libmemcached/memcached.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "ratelimit.h"
#include "store.h"

static const unsigned char KEY[] = "0123456789abcdef0123456789abcdef";

typedef struct server {
    GPid pid;
    int port;
} server;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&a, sizeof(a)), ==, 0);
    g_assert_cmpint(getsockname(fd, (struct sockaddr *)&a, &l), ==, 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* A test that aborts must not leave its servers behind. memcached drops
 * to nobody, which clears a parent-death signal, so the test also kills
 * what it started when a failed assertion aborts it. */
static void die_with_parent(gpointer unused)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static volatile sig_atomic_t started_pids[16];

static void kill_started(int sig)
{
    for (int i = 0; i < 16; i++)
        if (started_pids[i] > 0)
            kill((pid_t)started_pids[i], SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void remember_pid(GPid pid, int add)
{
    for (int i = 0; i < 16; i++) {
        if (add ? started_pids[i] == 0 : started_pids[i] == pid) {
            started_pids[i] = add ? pid : 0;
            return;
        }
    }
}

static void server_start(server *s)
{
    if (s->port == 0) /* a restart keeps the port */
        s->port = free_port();
    char port[16];
    snprintf(port, sizeof(port), "%d", s->port);
    const char *bin = g_file_test("/usr/bin/memcached", G_FILE_TEST_IS_EXECUTABLE)
                          ? "/usr/bin/memcached" : "memcached";
    char *argv[] = {(char *)bin, "-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "16",
                    "-u", "nobody", NULL};
    GError *e = NULL;
    if (!g_spawn_async(NULL, argv, NULL,
                       G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH |
                           G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL,
                       die_with_parent, NULL, &s->pid, &e))
        g_error("memcached: %s (install Debian package memcached)", e->message);
    remember_pid(s->pid, 1);
    for (int i = 0; i < 200 && !port_open(s->port); i++)
        g_usleep(10000);
    g_assert_true(port_open(s->port));
}

static void server_stop(server *s)
{
    if (s->pid > 0) {
        remember_pid(s->pid, 0);
        kill(s->pid, SIGCONT);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        g_spawn_close_pid(s->pid);
        s->pid = 0;
    }
}

/* SIGSTOP is asynchronous: wait until the process is really stopped. */
static void wait_stopped(GPid pid)
{
    char path[64], *text = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 500; i++) {
        if (g_file_get_contents(path, &text, NULL, NULL)) {
            const char *rp = strrchr(text, ')');
            int stopped = rp && (rp[2] == 'T' || rp[2] == 't');
            g_free(text);
            if (stopped)
                return;
        }
        g_usleep(2000);
    }
    g_error("memcached %d did not stop", (int)pid);
}

static mx_store *store_for(server *sv, int n, int breaker_failures)
{
    GString *list = g_string_new(NULL);
    for (int i = 0; i < n; i++)
        g_string_append_printf(list, "%s127.0.0.1:%d", i ? ";" : "", sv[i].port);
    mx_memcached_conf c = {
        .servers = list->str,
        .key = KEY,
        .keylen = 32,
        .timeout_ms = 50,
        .dead_timeout = 2,
        .breaker_failures = breaker_failures,
        .breaker_cooldown_ms = 500,
    };
    char *err = NULL;
    mx_store *s = mx_store_memcached_new(&c, &err);
    if (!s)
        g_error("%s", err);
    g_string_free(list, TRUE);
    return s;
}

/* The physical key, as the store derives it (the test knows the cluster key). */
static void phys_key(const char *logical, char out[37])
{
    unsigned char mac[32];
    unsigned int n = 0;
    GString *in = g_string_new_len("key\0", 4);
    g_string_append(in, logical);
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(m);
    OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                      OSSL_PARAM_construct_end()};
    size_t outl = 0;
    g_assert_true(EVP_MAC_init(c, KEY, 32, p));
    EVP_MAC_update(c, (const unsigned char *)in->str, in->len);
    EVP_MAC_final(c, mac, &outl, sizeof(mac));
    n = (unsigned)outl;
    g_assert_cmpuint(n, ==, 32);
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(m);
    g_string_free(in, TRUE);
    memcpy(out, "mx1:", 4);
    for (int i = 0; i < 16; i++)
        snprintf(out + 4 + 2 * i, 3, "%02x", mac[i]);
}

static memcached_st *raw_client(server *sv)
{
    memcached_st *m = memcached_create(NULL);
    memcached_server_add(m, "127.0.0.1", (in_port_t)sv->port);
    return m;
}

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

static uint64_t items_on(server *sv)
{
    memcached_st *raw = raw_client(sv);
    memcached_return_t rc;
    memcached_stat_st *st = memcached_stat(raw, NULL, &rc);
    g_assert_nonnull(st);
    uint64_t n = st[0].curr_items;
    memcached_stat_free(raw, st);
    memcached_free(raw);
    return n;
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
static void set_many(mx_store *s, char **keys, GBytes **vals, size_t n, int ttl, mx_store_rc *rcs)
{
    mx_store_write *w = g_new0(mx_store_write, n);
    for (size_t i = 0; i < n; i++)
        w[i] = (mx_store_write){.op = MX_STORE_W_SET, .key = keys[i], .val = vals[i], .ttl = ttl};
    mx_store_write_many(s, w, n, rcs);
    g_free(w);
}

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

/* The commands every server has executed, by its own statistics (a
 * multi-get counts each key, add counts as a set). */
static uint64_t server_commands(server *sv, int n)
{
    static const char *const names[] = {"cmd_get", "cmd_set", "cmd_touch", "incr_hits",
                                        "incr_misses", "decr_hits", "decr_misses",
                                        "delete_hits", "delete_misses", NULL};
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sv[i].port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        g_assert_cmpint(connect(fd, (struct sockaddr *)&a, sizeof(a)), ==, 0);
        g_assert_cmpint(write(fd, "stats\r\n", 7), ==, 7);
        GString *buf = g_string_new(NULL);
        char chunk[4096];
        while (!g_str_has_suffix(buf->str, "END\r\n")) {
            ssize_t r = read(fd, chunk, sizeof(chunk));
            g_assert_cmpint(r, >, 0);
            g_string_append_len(buf, chunk, r);
        }
        close(fd);
        char **lines = g_strsplit(buf->str, "\r\n", -1);
        for (char **l = lines; *l; l++) {
            char name[64];
            unsigned long long v;
            if (sscanf(*l, "STAT %63s %llu", name, &v) != 2)
                continue;
            for (int k = 0; names[k]; k++)
                if (strcmp(name, names[k]) == 0)
                    total += v;
        }
        g_strfreev(lines);
        g_string_free(buf, TRUE);
    }
    return total;
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
}

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
    g_test_add_func("/store_memcached/bulk_set_and_get", test_bulk_set_and_get);
    g_test_add_func("/store_memcached/bulk_set_with_a_hung_server",
                    test_bulk_set_with_a_hung_server);
    g_test_add_func("/store_memcached/write_many_semantics", test_write_many_semantics);
    g_test_add_func("/store_memcached/round_trips_are_counted", test_round_trips_are_counted);
    g_test_add_func("/store_memcached/incr_many", test_incr_many);
    g_test_add_func("/store_memcached/concurrent_incr_many_share_round_trips",
                    test_concurrent_incr_many_share_round_trips);
    g_test_add_func("/store_memcached/rules_of_a_step_cost_one_round_trip",
                    test_rules_of_a_step_cost_one_round_trip);
    g_test_add_func("/store_memcached/bad_config", test_bad_config);
    return g_test_run();
}
