/*
 * mc_server.c: memcached servers for the store tests (see mc_server.h).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/params.h>

#include "mc_server.h"

const unsigned char KEY[] = "0123456789abcdef0123456789abcdef";

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

void kill_started(int sig)
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

void server_start(server *s)
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

void server_stop(server *s)
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
void wait_stopped(GPid pid)
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

mx_store *store_for(server *sv, int n, int breaker_failures)
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
void phys_key(const char *logical, char out[37])
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

memcached_st *raw_client(server *sv)
{
    memcached_st *m = memcached_create(NULL);
    memcached_server_add(m, "127.0.0.1", (in_port_t)sv->port);
    return m;
}

uint64_t items_on(server *sv)
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

void set_many(mx_store *s, char **keys, GBytes **vals, size_t n, int ttl, mx_store_rc *rcs)
{
    mx_store_write *w = g_new0(mx_store_write, n);
    for (size_t i = 0; i < n; i++)
        w[i] = (mx_store_write){.op = MX_STORE_W_SET, .key = keys[i], .val = vals[i], .ttl = ttl};
    mx_store_write_many(s, w, n, rcs);
    g_free(w);
}

/* The commands every server has executed, by its own statistics (a
 * multi-get counts each key, add counts as a set). */
uint64_t server_commands(server *sv, int n)
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
