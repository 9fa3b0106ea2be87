/*
 * test_clam.c: the libclamav scanner (scanners/clam.c) with real libclamav
 * and a signature set written by the test: EICAR by MD5 (.hdb) and body
 * markers (.ndb).
 *
 * What must hold: detections and clean verdicts; a message in several runs
 * scans like the same bytes in one; no database, an empty one, one that
 * misses EICAR or an unusable temp dir refuse to start; a temp dir that
 * disappears turns scans into errors, never clean (upstream #1353); a
 * reload under concurrent scans swaps the engine without one scan failing
 * or going unscanned, and a failed reload keeps the old engine; the
 * directory watch picks up a new file on its own.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "clam.h"

static char *eicar(void)
{
    return g_strdup_printf("%s%s", "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
                           "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char *tmp = g_strdup_printf("%s/.%s.tmp", dir, name);
    char *path = g_build_filename(dir, name, NULL);
    g_assert_true(g_file_set_contents(tmp, text, -1, NULL));
    g_assert_cmpint(rename(tmp, path), ==, 0);
    g_free(tmp);
    g_free(path);
}

static char *hex(const char *s)
{
    GString *g = g_string_new(NULL);
    for (; *s; s++)
        g_string_append_printf(g, "%02x", (unsigned char)*s);
    return g_string_free(g, FALSE);
}

static void add_marker(const char *dir, const char *file, const char *name, const char *marker)
{
    char *h = hex(marker);
    char *line = g_strdup_printf("%s:0:*:%s\n", name, h);
    write_file(dir, file, line);
    g_free(h);
    g_free(line);
}

static void add_eicar(const char *dir)
{
    char *e = eicar();
    char *md5 = g_compute_checksum_for_string(G_CHECKSUM_MD5, e, -1);
    char *line = g_strdup_printf("%s:%zu:Test.EICAR\n", md5, strlen(e));
    write_file(dir, "eicar.hdb", line);
    g_free(e);
    g_free(md5);
    g_free(line);
}

typedef struct fixture {
    char *root, *db, *tmp;
    mx_clam_conf conf;
} fixture;

static void quiet_log(int level, const char *event, const char *msg)
{
    if (g_test_verbose())
        g_printerr("%d %s %s\n", level, event, msg);
}

static void fx_setup(fixture *f, gconstpointer data)
{
    f->root = g_dir_make_tmp("mxclam-XXXXXX", NULL);
    g_assert_nonnull(f->root);
    f->db = g_build_filename(f->root, "db", NULL);
    f->tmp = g_build_filename(f->root, "tmp", NULL);
    g_assert_cmpint(g_mkdir(f->db, 0755), ==, 0);
    g_assert_cmpint(g_mkdir(f->tmp, 0755), ==, 0);
    add_eicar(f->db);
    add_marker(f->db, "marker.ndb", "Test.Marker", "MXGATE-UNIT-MARKER-ONE");
    f->conf = (mx_clam_conf){
        .database = f->db,
        .tmpdir = f->tmp,
        .max_scan_size = 50u << 20,
        .max_file_size = 20u << 20,
        .max_recursion = 16,
        .max_files = 1000,
        .max_scan_time = 10000,
        .alert_exceeds_max = 1,
        .scan_html = 1,
        .phishing_urls = 1,
        .canary_interval = 3600,
        .watch_interval = 0,
        .log = quiet_log,
    };
}

static void rm_rf(const char *path)
{
    GDir *d = g_dir_open(path, 0, NULL);
    if (d) {
        const char *n;
        while ((n = g_dir_read_name(d))) {
            char *p = g_build_filename(path, n, NULL);
            if (g_file_test(p, G_FILE_TEST_IS_DIR))
                rm_rf(p);
            else
                g_unlink(p);
            g_free(p);
        }
        g_dir_close(d);
    }
    g_rmdir(path);
}

static void fx_teardown(fixture *f, gconstpointer data)
{
    rm_rf(f->root);
    g_free(f->root);
    g_free(f->db);
    g_free(f->tmp);
}

/* ---- input as runs ---- */

typedef struct runs {
    const char *p;
    size_t len, step, off;
} runs;

static int next_run(void *ctx, const char **p, size_t *len)
{
    runs *r = ctx;
    if (r->off >= r->len)
        return 0;
    size_t n = r->len - r->off < r->step ? r->len - r->off : r->step;
    *p = r->p + r->off;
    *len = n;
    r->off += n;
    return 1;
}

static mx_scan_verdict scan(mx_clam *c, const char *msg, size_t step, mx_scan_result *res)
{
    runs r = {.p = msg, .len = strlen(msg), .step = step ? step : strlen(msg) + 1};
    mx_scan_input in = {.next = next_run, .ctx = &r, .size = r.len};
    mx_scanner *s = mx_clam_scanner(c);
    s->ops->scan(s, &in, res);
    return res->verdict;
}

/* A MIME message with payload as a base64 attachment: decoding it makes
 * libclamav use its temp directory. */
static char *mime_with(const char *payload)
{
    char *b64 = g_base64_encode((const guchar *)payload, strlen(payload));
    char *m = g_strdup_printf(
        "Received: from client (client [192.0.2.1])\r\n\tby mxgate; Sat, 28 Nov 2026 00:00:00 +0000\r\n"
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: unit\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "--b1\r\nContent-Type: application/octet-stream; name=\"x.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n--b1--\r\n",
        b64);
    g_free(b64);
    return m;
}

static char *plain_with(const char *body)
{
    return g_strdup_printf("Received: from client (client [192.0.2.1])\r\n\tby mxgate; Sat, 28 Nov "
                           "2026 00:00:00 +0000\r\nFrom: a@example.test\r\nSubject: "
                           "unit\r\n\r\n%s\r\n",
                           body);
}

/* ---- tests ---- */

static void test_verdicts(fixture *f, gconstpointer data)
{
    char *err = NULL;
    mx_clam *c = mx_clam_new(&f->conf, &err);
    if (!c)
        g_error("mx_clam_new: %s", err);
    mx_scan_result r;

    char *e = eicar();
    char *m = mime_with(e);
    /* whole, in runs of 7 bytes, and in runs of 1000 */
    size_t steps[] = {0, 7, 1000};
    for (size_t i = 0; i < G_N_ELEMENTS(steps); i++) {
        g_assert_cmpint(scan(c, m, steps[i], &r), ==, MX_SCAN_INFECTED);
        g_assert_nonnull(strstr(r.name, "Test.EICAR"));
        g_assert_true(g_str_has_prefix(r.version, "ClamAV "));
    }
    g_free(m);

    m = plain_with("see MXGATE-UNIT-MARKER-ONE here");
    g_assert_cmpint(scan(c, m, 5, &r), ==, MX_SCAN_INFECTED);
    g_assert_nonnull(strstr(r.name, "Test.Marker"));
    g_free(m);

    /* look-alikes: one byte of EICAR changed; the marker cut short */
    e[10] = 'Q';
    m = mime_with(e);
    g_assert_cmpint(scan(c, m, 0, &r), ==, MX_SCAN_CLEAN);
    g_free(m);
    m = plain_with("MXGATE-UNIT-MARKER-ON");
    g_assert_cmpint(scan(c, m, 3, &r), ==, MX_SCAN_CLEAN);
    g_free(m);
    g_free(e);

    mx_clam_status st;
    mx_clam_get_status(c, &st);
    g_assert_true(st.healthy);
    g_assert_cmpuint(st.infected, ==, 4);
    g_assert_cmpuint(st.clean, ==, 2);
    g_assert_cmpuint(st.signatures, >=, 2);
    g_assert_true(g_str_has_prefix(st.db_version, "local-"));
    mx_clam_free(c);
}

static void test_refuses_to_start(fixture *f, gconstpointer data)
{
    char *err = NULL;
    mx_clam_conf conf = f->conf;

    /* no such directory */
    conf.database = "/nonexistent/mxgate-db";
    g_assert_null(mx_clam_new(&conf, &err));
    g_assert_nonnull(strstr(err, "/nonexistent/mxgate-db"));
    g_clear_pointer(&err, g_free);
    g_assert_cmpint(mx_clam_check(&conf, &err), ==, -1);
    g_clear_pointer(&err, g_free);

    /* a directory with no signature files */
    char *empty = g_build_filename(f->root, "empty", NULL);
    g_mkdir(empty, 0755);
    write_file(empty, "freshclam.dat", "not signatures");
    conf.database = empty;
    g_assert_null(mx_clam_new(&conf, &err));
    g_assert_nonnull(strstr(err, "no signature files"));
    g_clear_pointer(&err, g_free);

    /* signatures, but not EICAR: the canary could never pass */
    char *noeicar = g_build_filename(f->root, "noeicar", NULL);
    g_mkdir(noeicar, 0755);
    add_marker(noeicar, "m.ndb", "Test.Only", "SOMETHING-ELSE-ENTIRELY");
    conf.database = noeicar;
    g_assert_null(mx_clam_new(&conf, &err));
    g_assert_nonnull(strstr(err, "EICAR"));
    g_clear_pointer(&err, g_free);

    /* an unusable temp directory */
    conf = f->conf;
    conf.tmpdir = "/nonexistent/mxgate-tmp";
    g_assert_null(mx_clam_new(&conf, &err));
    g_assert_nonnull(strstr(err, "clamav.tmpdir"));
    g_clear_pointer(&err, g_free);
    g_assert_cmpint(mx_clam_check(&conf, &err), ==, -1);
    g_clear_pointer(&err, g_free);

    g_assert_cmpint(mx_clam_check(&f->conf, &err), ==, 0);
    g_free(empty);
    g_free(noeicar);
}

/* Upstream #1353: without its temp dir libclamav calls EICAR clean. */
static void test_tmpdir_gone_is_an_error(fixture *f, gconstpointer data)
{
    char *err = NULL;
    mx_clam *c = mx_clam_new(&f->conf, &err);
    g_assert_nonnull(c);
    g_assert_cmpint(g_rmdir(f->tmp), ==, 0);
    char *e = eicar();
    char *m = mime_with(e);
    mx_scan_result r;
    g_assert_cmpint(scan(c, m, 0, &r), ==, MX_SCAN_ERROR);
    g_assert_cmpstr(r.why, !=, "");
    /* the scanner thread's canary notices and holds the scanner unhealthy */
    mx_clam_start(c);
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (mx_clam_healthy(c) && g_get_monotonic_time() < end)
        g_usleep(20000);
    g_assert_false(mx_clam_healthy(c));
    char *clean = plain_with("nothing here");
    g_assert_cmpint(scan(c, clean, 0, &r), ==, MX_SCAN_ERROR);
    g_assert_nonnull(strstr(r.why, "unhealthy"));
    /* and recovers once the directory is back */
    g_assert_cmpint(g_mkdir(f->tmp, 0755), ==, 0);
    end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!mx_clam_healthy(c) && g_get_monotonic_time() < end)
        g_usleep(20000);
    g_assert_true(mx_clam_healthy(c));
    g_assert_cmpint(scan(c, m, 0, &r), ==, MX_SCAN_INFECTED);
    g_assert_cmpint(scan(c, clean, 0, &r), ==, MX_SCAN_CLEAN);
    g_free(clean);
    g_free(m);
    g_free(e);
    mx_clam_free(c);
}

typedef struct loader {
    mx_clam *c;
    atomic_int stop;
    atomic_int scans, errors, detected_new;
    const char *msg;
} loader;

static gpointer scan_loop(gpointer data)
{
    loader *l = data;
    while (!atomic_load(&l->stop)) {
        mx_scan_result r;
        mx_scan_verdict v = scan(l->c, l->msg, 512, &r);
        atomic_fetch_add(&l->scans, 1);
        if (v == MX_SCAN_ERROR)
            atomic_fetch_add(&l->errors, 1);
        else if (v == MX_SCAN_INFECTED)
            atomic_fetch_add(&l->detected_new, 1);
    }
    return NULL;
}

static uint64_t wait_reloads(mx_clam *c, uint64_t ok, uint64_t failed)
{
    mx_clam_status st;
    gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    do {
        mx_clam_get_status(c, &st);
        if (st.reloads >= ok && st.reload_failures >= failed)
            break;
        g_usleep(10000);
    } while (g_get_monotonic_time() < end);
    g_assert_cmpuint(st.reloads, ==, ok);
    g_assert_cmpuint(st.reload_failures, ==, failed);
    return st.reloads;
}

static void test_reload_under_scans(fixture *f, gconstpointer data)
{
    char *err = NULL;
    mx_clam *c = mx_clam_new(&f->conf, &err);
    g_assert_nonnull(c);
    mx_clam_start(c);
    char *msg = mime_with("payload with MXGATE-UNIT-MARKER-TWO inside an attachment");
    loader l = {.c = c, .msg = msg};
    GThread *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = g_thread_new("scan", scan_loop, &l);
    g_usleep(200000);
    g_assert_cmpint(atomic_load(&l.detected_new), ==, 0);

    /* a new signature, then a reload while the threads scan */
    add_marker(f->db, "two.ndb", "Test.MarkerTwo", "MXGATE-UNIT-MARKER-TWO");
    mx_clam_reload(c, NULL);
    wait_reloads(c, 1, 0);
    int before = atomic_load(&l.scans);
    g_usleep(200000);
    atomic_store(&l.stop, 1);
    for (int i = 0; i < 4; i++)
        g_thread_join(t[i]);
    g_assert_cmpint(atomic_load(&l.errors), ==, 0);
    g_assert_cmpint(atomic_load(&l.scans), >, before);
    mx_scan_result r;
    g_assert_cmpint(scan(c, msg, 0, &r), ==, MX_SCAN_INFECTED);
    g_assert_nonnull(strstr(r.name, "Test.MarkerTwo"));

    /* a broken file: the reload fails, the running engine stays */
    write_file(f->db, "broken.ndb", "this is not:a valid signature line\n");
    mx_clam_reload(c, NULL);
    wait_reloads(c, 1, 1);
    g_assert_cmpint(scan(c, msg, 0, &r), ==, MX_SCAN_INFECTED);
    g_assert_true(mx_clam_healthy(c));
    char *e = eicar();
    char *m = mime_with(e);
    g_assert_cmpint(scan(c, m, 0, &r), ==, MX_SCAN_INFECTED);
    g_free(m);
    g_free(e);
    g_free(msg);
    mx_clam_free(c);
}

static void test_watch_picks_up_changes(fixture *f, gconstpointer data)
{
    char *err = NULL;
    f->conf.watch_interval = 1;
    mx_clam *c = mx_clam_new(&f->conf, &err);
    g_assert_nonnull(c);
    mx_clam_start(c);
    char *msg = plain_with("MXGATE-UNIT-MARKER-THREE");
    mx_scan_result r;
    g_assert_cmpint(scan(c, msg, 0, &r), ==, MX_SCAN_CLEAN);
    add_marker(f->db, "three.ndb", "Test.MarkerThree", "MXGATE-UNIT-MARKER-THREE");
    wait_reloads(c, 1, 0);
    g_assert_cmpint(scan(c, msg, 0, &r), ==, MX_SCAN_INFECTED);
    /* files that are not signatures do not cause reloads */
    write_file(f->db, "freshclam.dat", "state");
    g_usleep(2500000);
    wait_reloads(c, 1, 0);
    g_free(msg);
    mx_clam_free(c);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add("/clam/verdicts", fixture, NULL, fx_setup, test_verdicts, fx_teardown);
    g_test_add("/clam/refuses_to_start", fixture, NULL, fx_setup, test_refuses_to_start,
               fx_teardown);
    g_test_add("/clam/tmpdir_gone_is_an_error", fixture, NULL, fx_setup,
               test_tmpdir_gone_is_an_error, fx_teardown);
    g_test_add("/clam/reload_under_scans", fixture, NULL, fx_setup, test_reload_under_scans,
               fx_teardown);
    g_test_add("/clam/watch_picks_up_changes", fixture, NULL, fx_setup,
               test_watch_picks_up_changes, fx_teardown);
    return g_test_run();
}
