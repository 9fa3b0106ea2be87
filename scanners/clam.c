/*
 * clam.c: the libclamav scanner (see clam.h).
 *
 * Three kinds of thread touch this file:
 *  - scan threads (the caller's pool) call scan(): take a reference to the
 *    current engine under the lock, scan without it, drop the reference;
 *  - the scanner's own thread ("mx-clamav") builds engines, runs the
 *    canary and watches the database directory; it never holds the lock
 *    while it works, only to swap the engine pointer or update status;
 *  - anyone may read the status.
 *
 * libclamav reports problems through one process-wide message callback,
 * in the thread that hit them. Each scan points a thread-local at its own
 * record before calling libclamav, so an error logged during that scan
 * (the temp file it could not create, upstream issue #1353) turns the
 * scan's CL_CLEAN into an error.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <clamav.h>
#include <glib.h>

#include "clam.h"

typedef struct engine {
    struct cl_engine *cl;
    atomic_int refs;
    unsigned sigs;
    char db_version[48];
    char version[80]; /* "ClamAV 1.4.6/<db_version>" for results */
    uint64_t fingerprint; /* of the database directory it was loaded from */
    struct cl_scan_options opts; /* from the settings it was built with */
    uint64_t max_file_size;
    int alert_exceeds_max;
} engine;

/* What libclamav said while this thread was working for us. */
typedef struct cl_report {
    int errors;
    char first_error[160];
    uint64_t max_file_size; /* the engine's, for the inspection callback */
    int alert_exceeds_max;
    int trimmed;            /* an extracted file was cut at max_file_size */
} cl_report;

static _Thread_local cl_report *tl_report;

struct mx_clam {
    mx_scanner scanner; /* first: mx_scanner * casts back */
    GMutex lock;        /* guards eng, conf strings, status text */
    GCond cond;         /* wakes the thread */
    engine *eng;
    mx_clam_conf conf;  /* strings owned (copies) */
    mx_clam_conf next_conf; /* a pending reload's settings */
    int reload_pending;
    int have_next_conf;
    int canary_now;     /* a scan saw an error: check at once */
    int stop;
    GThread *thread;

    atomic_int healthy;
    char why[256];
    int64_t loaded_at;
    atomic_uint_fast64_t reloads, reload_failures, canaries, canary_failures;
    atomic_uint_fast64_t n_clean, n_infected, n_errors;

    char *canary;       /* the canary message */
    size_t canary_len;
};

/* ---- logging ---- */

static void (*log_hook)(int level, const char *event, const char *msg);

static void clam_log(int level, const char *event, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void clam_log(int level, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (log_hook)
        log_hook(level, event, m);
    else
        fprintf(stderr, "mxgate: %s: %s\n", event, m);
    g_free(m);
}

static void on_cl_msg(enum cl_msg severity, const char *fullmsg, const char *msg, void *ctx)
{
    cl_report *r = tl_report;
    char text[160];
    g_strlcpy(text, msg ? msg : fullmsg, sizeof(text));
    g_strchomp(text);
    if (severity == CL_MSG_ERROR) {
        if (r) {
            if (r->errors++ == 0)
                g_strlcpy(r->first_error, text, sizeof(r->first_error));
        }
        clam_log(r ? 1 : 0, "clamav_error", "%s", text);
    } else if (severity == CL_MSG_WARN) {
        clam_log(3, "clamav_warning", "%s", text);
    }
}

/* ---- engines ---- */

static void engine_unref(engine *e)
{
    if (e && atomic_fetch_sub(&e->refs, 1) == 1) {
        cl_engine_free(e->cl);
        g_free(e);
    }
}

static engine *engine_acquire(mx_clam *c)
{
    g_mutex_lock(&c->lock);
    engine *e = c->eng;
    atomic_fetch_add(&e->refs, 1);
    g_mutex_unlock(&c->lock);
    return e;
}

/* Signature files libclamav loads from a directory; anything else there
 * (freshclam.dat, logs, temp dirs) changes without meaning a reload. */
static int is_db_file(const char *name)
{
    static const char *const ext[] = {
        "cvd", "cld", "cud", "hdb", "hsb", "hdu", "hsu", "mdb", "msb", "mdu", "msu", "ndb",
        "ndu", "ldb", "ldu", "idb", "cdb", "cfg", "cat", "crb", "cbc", "ftm", "fp", "sfp",
        "ign", "ign2", "info", "wdb", "pdb", "gdb", "yar", "yara", "pwdb", "imp", NULL};
    const char *dot = strrchr(name, '.');
    if (!dot || name[0] == '.')
        return 0;
    for (int i = 0; ext[i]; i++)
        if (strcmp(dot + 1, ext[i]) == 0)
            return 1;
    return 0;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Names, sizes, inodes and mtimes of the signature files, order-free.
 * Returns the number of files, or -1 with errno set. */
static int dir_fingerprint(const char *dir, uint64_t *fp)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    uint64_t sum = 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_db_file(de->d_name))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
            continue;
        uint64_t h = fnv1a(14695981039346656037ULL, de->d_name, strlen(de->d_name));
        int64_t v[4] = {(int64_t)st.st_size, (int64_t)st.st_ino, (int64_t)st.st_mtim.tv_sec,
                        (int64_t)st.st_mtim.tv_nsec};
        h = fnv1a(h, v, sizeof(v));
        sum += h;
        n++;
    }
    closedir(d);
    *fp = sum;
    return n;
}

/* Can libclamav create files in dir? (It needs to, even for a message in
 * memory: decoded attachments go through temp files.) */
static int tmpdir_usable(const char *dir, char *why, size_t n)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        snprintf(why, n, "temp directory %s: %s", dir, g_strerror(errno));
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, n, "temp directory %s is not a directory", dir);
        return 0;
    }
    char *path = g_build_filename(dir, "mxgate-probe-XXXXXX", NULL);
    int fd = g_mkstemp(path);
    if (fd < 0) {
        snprintf(why, n, "temp directory %s is not writable: %s", dir, g_strerror(errno));
        g_free(path);
        return 0;
    }
    int ok = write(fd, "x", 1) == 1;
    int saved = errno;
    close(fd);
    unlink(path);
    g_free(path);
    if (!ok) {
        snprintf(why, n, "temp directory %s: write failed: %s", dir, g_strerror(saved));
        return 0;
    }
    return 1;
}

static struct cl_scan_options scan_options(const mx_clam_conf *conf)
{
    struct cl_scan_options o;
    memset(&o, 0, sizeof(o));
    o.parse = ~0u;                         /* every parser, as clamd does */
    if (!conf->scan_html)
        o.parse &= ~(unsigned)CL_SCAN_PARSE_HTML;
    o.general = CL_SCAN_GENERAL_HEURISTICS;
    if (conf->alert_exceeds_max)
        o.heuristic |= CL_SCAN_HEURISTIC_EXCEEDS_MAX;
    return o;
}

/* Scan len bytes at p with engine e. Returns the libclamav result, with
 * any error libclamav logged meanwhile in *r. */
static cl_error_t scan_memory(engine *e, const char *p, size_t len, const char **virname,
                              cl_report *r)
{
    memset(r, 0, sizeof(*r));
    r->max_file_size = e->max_file_size;
    r->alert_exceeds_max = e->alert_exceeds_max;
    cl_fmap_t *map = cl_fmap_open_memory(p, len);
    if (!map) {
        r->errors = 1;
        g_strlcpy(r->first_error, "cl_fmap_open_memory failed", sizeof(r->first_error));
        return CL_EMEM;
    }
    struct cl_scan_options o = e->opts;
    unsigned long scanned = 0;
    *virname = NULL;
    tl_report = r;
    cl_error_t rc = cl_scanmap_callback(map, NULL, virname, &scanned, e->cl, &o, r);
    tl_report = NULL;
    cl_fmap_close(map);
    if (rc == CL_VIRUS && r->trimmed)
        *virname = "Heuristics.Limits.Exceeded.MaxFileSize";
    return rc;
}

/*
 * libclamav cuts an extracted file at max_file_size ("trimming output
 * size") and scans the rest of the message without a word, even with
 * CL_SCAN_HEURISTIC_EXCEEDS_MAX: a zip holding one huge member (a zip bomb,
 * or malware past 25 MiB of padding) would pass partly unscanned. The
 * inspection callback sees every extracted file with its size, so a file
 * that reached the limit is flagged here instead.
 */
static cl_error_t on_inspect(int fd, const char *type, const char **ancestors,
                             size_t parent_file_size, const char *file_name, size_t file_size,
                             const char *file_buffer, uint32_t recursion_level,
                             uint32_t layer_attributes, void *context)
{
    cl_report *r = context;
    if (r && r->alert_exceeds_max && recursion_level > 0 && r->max_file_size &&
        (uint64_t)file_size >= r->max_file_size) {
        r->trimmed = 1;
        return CL_VIRUS;
    }
    return CL_CLEAN;
}

static void set_num(struct cl_engine *cl, enum cl_engine_field f, long long v, int *bad)
{
    if (cl_engine_set_num(cl, f, v) != CL_SUCCESS)
        *bad = 1;
}

/* The canary: EICAR as a base64 attachment of a MIME message, so it
 * exercises the mail parser and the temp files, as real mail does. The
 * test string is assembled at run time so this binary is not itself a
 * detection. */
static char *make_canary(size_t *len)
{
    char eicar[80];
    snprintf(eicar, sizeof(eicar), "%s%s", "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
             "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    gchar *b64 = g_base64_encode((const guchar *)eicar, strlen(eicar));
    char *m = g_strdup_printf(
        "Received: from canary (localhost [127.0.0.1])\r\n"
        "\tby mxgate (canary); Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        "From: mxgate canary <canary@mxgate.invalid>\r\n"
        "To: canary@mxgate.invalid\r\n"
        "Subject: mxgate scanner canary\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"mxgate-canary\"\r\n"
        "\r\n"
        "--mxgate-canary\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "This message must be detected.\r\n"
        "--mxgate-canary\r\n"
        "Content-Type: application/octet-stream; name=\"canary.com\"\r\n"
        "Content-Disposition: attachment; filename=\"canary.com\"\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "%s\r\n"
        "--mxgate-canary--\r\n",
        b64);
    g_free(b64);
    *len = strlen(m);
    return m;
}

/* Run the canary on engine e; returns 1 when it was detected cleanly. */
static int canary_detected(mx_clam *c, engine *e, const mx_clam_conf *conf, char *why, size_t n)
{
    if (!tmpdir_usable(conf->tmpdir, why, n))
        return 0;
    const char *vir = NULL;
    cl_report r;
    cl_error_t rc = scan_memory(e, c->canary, c->canary_len, &vir, &r);
    if (rc == CL_VIRUS && r.errors == 0)
        return 1;
    if (r.errors)
        snprintf(why, n, "EICAR canary: libclamav error: %s", r.first_error);
    else if (rc == CL_CLEAN)
        snprintf(why, n, "EICAR canary not detected (does %s detect the EICAR test file?)",
                 conf->database);
    else
        snprintf(why, n, "EICAR canary: %s", cl_strerror(rc));
    return 0;
}

static engine *engine_build(mx_clam *c, const mx_clam_conf *conf, char *why, size_t n)
{
    uint64_t fp = 0;
    int nfiles = dir_fingerprint(conf->database, &fp);
    if (nfiles < 0) {
        snprintf(why, n, "database directory %s: %s", conf->database, g_strerror(errno));
        return NULL;
    }
    if (nfiles == 0) {
        snprintf(why, n, "database directory %s holds no signature files", conf->database);
        return NULL;
    }
    struct cl_engine *cl = cl_engine_new();
    if (!cl) {
        snprintf(why, n, "cl_engine_new failed");
        return NULL;
    }
    int bad = 0;
    set_num(cl, CL_ENGINE_MAX_SCANSIZE, (long long)conf->max_scan_size, &bad);
    set_num(cl, CL_ENGINE_MAX_FILESIZE, (long long)conf->max_file_size, &bad);
    set_num(cl, CL_ENGINE_MAX_RECURSION, conf->max_recursion, &bad);
    set_num(cl, CL_ENGINE_MAX_FILES, conf->max_files, &bad);
    set_num(cl, CL_ENGINE_MAX_SCANTIME, conf->max_scan_time, &bad);
    if (bad || cl_engine_set_str(cl, CL_ENGINE_TMPDIR, conf->tmpdir) != CL_SUCCESS) {
        snprintf(why, n, "cannot set the engine limits");
        cl_engine_free(cl);
        return NULL;
    }
    cl_engine_set_clcb_file_inspection(cl, on_inspect);
    unsigned sigs = 0;
    cl_report r = {0};
    tl_report = &r;
    unsigned dbopts = CL_DB_STDOPT;
    if (!conf->phishing_urls)
        dbopts &= ~(unsigned)CL_DB_PHISHING_URLS;
    cl_error_t rc = cl_load(conf->database, cl, &sigs, dbopts);
    if (rc == CL_SUCCESS)
        rc = cl_engine_compile(cl);
    tl_report = NULL;
    if (rc != CL_SUCCESS) {
        snprintf(why, n, "loading %s: %s%s%s", conf->database, cl_strerror(rc),
                 r.errors ? ": " : "", r.errors ? r.first_error : "");
        cl_engine_free(cl);
        return NULL;
    }
    if (sigs == 0) {
        snprintf(why, n, "database directory %s: no signatures loaded", conf->database);
        cl_engine_free(cl);
        return NULL;
    }
    engine *e = g_new0(engine, 1);
    e->cl = cl;
    atomic_init(&e->refs, 1);
    e->sigs = sigs;
    e->fingerprint = fp;
    e->opts = scan_options(conf);
    e->max_file_size = conf->max_file_size;
    e->alert_exceeds_max = conf->alert_exceeds_max;
    int err = 0;
    long long dbv = cl_engine_get_num(cl, CL_ENGINE_DB_VERSION, &err);
    if (!err && dbv > 0)
        snprintf(e->db_version, sizeof(e->db_version), "%lld", dbv);
    else
        snprintf(e->db_version, sizeof(e->db_version), "local-%08x",
                 (unsigned)(fp ^ (fp >> 32)));
    snprintf(e->version, sizeof(e->version), "ClamAV %s/%s", cl_retver(), e->db_version);
    if (!canary_detected(c, e, conf, why, n)) {
        engine_unref(e);
        return NULL;
    }
    return e;
}

/* ---- settings ---- */

static void conf_copy(mx_clam_conf *dst, const mx_clam_conf *src)
{
    *dst = *src;
    dst->database = g_strdup(src->database);
    dst->tmpdir = g_strdup(src->tmpdir);
}

static void conf_clear(mx_clam_conf *c)
{
    g_free((char *)c->database);
    g_free((char *)c->tmpdir);
    c->database = c->tmpdir = NULL;
}

static void set_health(mx_clam *c, int ok, const char *why)
{
    g_mutex_lock(&c->lock);
    int was = atomic_exchange(&c->healthy, ok);
    if (!ok)
        g_strlcpy(c->why, why, sizeof(c->why));
    else
        c->why[0] = 0;
    g_mutex_unlock(&c->lock);
    if (was && !ok)
        clam_log(0, "scanner_unhealthy", "%s; messages get 451 until it recovers", why);
    else if (!was && ok)
        clam_log(2, "scanner_healthy", "canary detected again; scanning resumed");
}

/* ---- the scanner's thread ---- */

static void do_reload(mx_clam *c, const char *cause)
{
    g_mutex_lock(&c->lock);
    if (c->have_next_conf) {
        conf_clear(&c->conf);
        c->conf = c->next_conf;
        c->have_next_conf = 0;
    }
    mx_clam_conf conf;
    conf_copy(&conf, &c->conf);
    engine *old = c->eng;
    atomic_fetch_add(&old->refs, 1);
    g_mutex_unlock(&c->lock);

    char why[256];
    gint64 t0 = g_get_monotonic_time();
    engine *e = engine_build(c, &conf, why, sizeof(why));
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    if (!e) {
        atomic_fetch_add(&c->reload_failures, 1);
        clam_log(0, "clamav_reload_failed", "%s (%s); keeping the running engine (db %s, %u signatures)",
                 why, cause, old->db_version, old->sigs);
        /* Do not retry the same files every poll: remember them as seen. */
        uint64_t fp = 0;
        if (dir_fingerprint(conf.database, &fp) >= 0) {
            g_mutex_lock(&c->lock);
            old->fingerprint = fp;
            g_mutex_unlock(&c->lock);
        }
        engine_unref(old);
        conf_clear(&conf);
        return;
    }
    g_mutex_lock(&c->lock);
    engine *prev = c->eng;
    c->eng = e;
    c->loaded_at = (int64_t)time(NULL);
    g_mutex_unlock(&c->lock);
    atomic_fetch_add(&c->reloads, 1);
    clam_log(2, "clamav_reload", "%s: db %s -> %s, %u -> %u signatures, built in %lld ms", cause,
             old->db_version, e->db_version, old->sigs, e->sigs, (long long)ms);
    engine_unref(prev); /* the scanner's reference: scans in flight keep theirs */
    engine_unref(old);
    set_health(c, 1, NULL);
    conf_clear(&conf);
}

static void run_canary(mx_clam *c)
{
    engine *e = engine_acquire(c);
    g_mutex_lock(&c->lock);
    mx_clam_conf conf;
    conf_copy(&conf, &c->conf);
    g_mutex_unlock(&c->lock);
    char why[256];
    atomic_fetch_add(&c->canaries, 1);
    int ok = canary_detected(c, e, &conf, why, sizeof(why));
    if (!ok)
        atomic_fetch_add(&c->canary_failures, 1);
    set_health(c, ok, why);
    engine_unref(e);
    conf_clear(&conf);
}

static gpointer clam_thread(gpointer data)
{
    mx_clam *c = data;
    gint64 now = g_get_monotonic_time();
    gint64 next_canary = now + (gint64)c->conf.canary_interval * G_USEC_PER_SEC;
    gint64 next_watch = now + (gint64)c->conf.watch_interval * G_USEC_PER_SEC;
    uint64_t seen_fp = 0; /* last fingerprint that differed from the engine's */
    int seen_valid = 0;

    g_mutex_lock(&c->lock);
    while (!c->stop) {
        gint64 wake = next_canary;
        if (c->conf.watch_interval > 0 && next_watch < wake)
            wake = next_watch;
        if (!c->reload_pending && !c->canary_now)
            g_cond_wait_until(&c->cond, &c->lock, wake);
        if (c->stop)
            break;
        int reload = c->reload_pending, canary = c->canary_now;
        c->reload_pending = c->canary_now = 0;
        int watch = c->conf.watch_interval;
        char *db = g_strdup(c->conf.database);
        uint64_t eng_fp = c->eng->fingerprint;
        g_mutex_unlock(&c->lock);

        now = g_get_monotonic_time();
        if (reload) {
            do_reload(c, "reload requested");
            seen_valid = 0;
        } else if (watch > 0 && now >= next_watch) {
            /* freshclam replaces files one by one: reload when the
             * directory differs from the engine's and has stayed the same
             * for one interval. */
            uint64_t fp = 0;
            if (dir_fingerprint(db, &fp) >= 0 && fp != eng_fp) {
                if (seen_valid && fp == seen_fp) {
                    do_reload(c, "database changed");
                    seen_valid = 0;
                } else {
                    seen_fp = fp;
                    seen_valid = 1;
                }
            } else {
                seen_valid = 0;
            }
        }
        g_free(db);
        now = g_get_monotonic_time();
        if (watch > 0 && now >= next_watch)
            next_watch = now + (gint64)watch * G_USEC_PER_SEC;
        if (canary || now >= next_canary) {
            run_canary(c);
            /* While unhealthy, look again soon: recovery should not wait a
             * whole interval. */
            int interval = c->conf.canary_interval;
            if (!atomic_load(&c->healthy) && interval > 2)
                interval = 2;
            next_canary = g_get_monotonic_time() + (gint64)interval * G_USEC_PER_SEC;
        }
        g_mutex_lock(&c->lock);
    }
    g_mutex_unlock(&c->lock);
    return NULL;
}

/* ---- scanning ---- */

static void clam_scan(mx_scanner *s, const mx_scan_input *in, mx_scan_result *out)
{
    mx_clam *c = (mx_clam *)s;
    memset(out, 0, sizeof(*out));
    engine *e = engine_acquire(c);
    g_strlcpy(out->version, e->version, sizeof(out->version));
    if (!atomic_load(&c->healthy)) {
        out->verdict = MX_SCAN_ERROR;
        g_mutex_lock(&c->lock);
        snprintf(out->why, sizeof(out->why), "scanner unhealthy: %.170s", c->why);
        g_mutex_unlock(&c->lock);
        atomic_fetch_add(&c->n_errors, 1);
        engine_unref(e);
        return;
    }

    /* libclamav maps one contiguous region: a message held in one run is
     * scanned in place, otherwise it is gathered once (bounded by the
     * message size limit, one per scan thread). */
    const char *p = NULL, *whole = NULL;
    size_t len = 0;
    char *copy = NULL;
    if (in->next(in->ctx, &p, &len) && len == in->size) {
        whole = p;
    } else {
        copy = g_malloc(in->size ? in->size : 1);
        size_t have = 0;
        if (len && len <= in->size) {
            memcpy(copy, p, len);
            have = len;
        }
        while (in->next(in->ctx, &p, &len)) {
            if (len > in->size - have)
                len = in->size - have;
            memcpy(copy + have, p, len);
            have += len;
        }
        whole = copy;
        len = have;
    }
    const char *vir = NULL;
    cl_report r;
    cl_error_t rc = scan_memory(e, whole, len, &vir, &r);
    g_free(copy);

    if (rc == CL_VIRUS) {
        out->verdict = MX_SCAN_INFECTED;
        g_strlcpy(out->name, vir ? vir : "unknown", sizeof(out->name));
        atomic_fetch_add(&c->n_infected, 1);
    } else if (rc == CL_CLEAN && r.errors == 0) {
        out->verdict = MX_SCAN_CLEAN;
        atomic_fetch_add(&c->n_clean, 1);
    } else {
        out->verdict = MX_SCAN_ERROR;
        if (rc != CL_CLEAN)
            snprintf(out->why, sizeof(out->why), "%s%s%s", cl_strerror(rc),
                     r.errors ? ": " : "", r.errors ? r.first_error : "");
        else
            snprintf(out->why, sizeof(out->why), "libclamav error while scanning: %s",
                     r.first_error);
        atomic_fetch_add(&c->n_errors, 1);
        /* Maybe this message, maybe the temp directory: the canary tells. */
        g_mutex_lock(&c->lock);
        c->canary_now = 1;
        g_cond_signal(&c->cond);
        g_mutex_unlock(&c->lock);
    }
    engine_unref(e);
}

static void clam_destroy(mx_scanner *s) { mx_clam_free((mx_clam *)s); }

static const mx_scanner_ops clam_ops = {
    .name = "clamav",
    .scan = clam_scan,
    .destroy = clam_destroy,
};

/* ---- public ---- */

static gpointer init_once(gpointer unused)
{
    cl_set_clcb_msg(on_cl_msg);
    cl_error_t rc = cl_init(CL_INIT_DEFAULT);
    return GINT_TO_POINTER(rc == CL_SUCCESS ? 1 : 2);
}

mx_clam *mx_clam_new(const mx_clam_conf *conf, char **err)
{
    static GOnce once = G_ONCE_INIT;
    if (conf->log)
        log_hook = conf->log;
    if (GPOINTER_TO_INT(g_once(&once, init_once, NULL)) != 1) {
        *err = g_strdup("libclamav: cl_init failed");
        return NULL;
    }
    char why[256];
    if (!tmpdir_usable(conf->tmpdir, why, sizeof(why))) {
        *err = g_strdup_printf("clamav.tmpdir: %s", why);
        return NULL;
    }
    mx_clam *c = g_new0(mx_clam, 1);
    c->scanner.ops = &clam_ops;
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    conf_copy(&c->conf, conf);
    c->canary = make_canary(&c->canary_len);
    gint64 t0 = g_get_monotonic_time();
    c->eng = engine_build(c, &c->conf, why, sizeof(why));
    if (!c->eng) {
        *err = g_strdup_printf("clamav: %s (set clamav.database, or clamav.enabled = false "
                               "to run without scanning)", why);
        conf_clear(&c->conf);
        g_free(c->canary);
        g_mutex_clear(&c->lock);
        g_cond_clear(&c->cond);
        g_free(c);
        return NULL;
    }
    c->loaded_at = (int64_t)time(NULL);
    atomic_store(&c->healthy, 1);
    clam_log(2, "clamav_loaded", "%s from %s: %u signatures, compiled in %lld ms",
             c->eng->version, c->conf.database, c->eng->sigs,
             (long long)((g_get_monotonic_time() - t0) / 1000));
    return c;
}

void mx_clam_start(mx_clam *c)
{
    c->thread = g_thread_new("mx-clamav", clam_thread, c);
}

void mx_clam_free(mx_clam *c)
{
    if (!c)
        return;
    if (c->thread) {
        g_mutex_lock(&c->lock);
        c->stop = 1;
        g_cond_signal(&c->cond);
        g_mutex_unlock(&c->lock);
        g_thread_join(c->thread);
    }
    engine_unref(c->eng);
    conf_clear(&c->conf);
    if (c->have_next_conf)
        conf_clear(&c->next_conf);
    g_free(c->canary);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->cond);
    g_free(c);
}

void mx_clam_reload(mx_clam *c, const mx_clam_conf *conf)
{
    g_mutex_lock(&c->lock);
    if (conf) {
        if (c->have_next_conf)
            conf_clear(&c->next_conf);
        conf_copy(&c->next_conf, conf);
        c->next_conf.log = c->conf.log;
        c->have_next_conf = 1;
    }
    c->reload_pending = 1;
    g_cond_signal(&c->cond);
    g_mutex_unlock(&c->lock);
}

mx_scanner *mx_clam_scanner(mx_clam *c) { return &c->scanner; }

int mx_clam_healthy(mx_clam *c) { return atomic_load(&c->healthy); }

void mx_clam_get_status(mx_clam *c, mx_clam_status *st)
{
    memset(st, 0, sizeof(*st));
    g_mutex_lock(&c->lock);
    st->healthy = atomic_load(&c->healthy);
    g_strlcpy(st->why, c->why, sizeof(st->why));
    snprintf(st->engine, sizeof(st->engine), "ClamAV %s", cl_retver());
    g_strlcpy(st->db_version, c->eng->db_version, sizeof(st->db_version));
    st->signatures = c->eng->sigs;
    st->loaded_at = c->loaded_at;
    g_mutex_unlock(&c->lock);
    st->reloads = atomic_load(&c->reloads);
    st->reload_failures = atomic_load(&c->reload_failures);
    st->canaries = atomic_load(&c->canaries);
    st->canary_failures = atomic_load(&c->canary_failures);
    st->clean = atomic_load(&c->n_clean);
    st->infected = atomic_load(&c->n_infected);
    st->errors = atomic_load(&c->n_errors);
}

int mx_clam_check(const mx_clam_conf *conf, char **err)
{
    char why[256];
    uint64_t fp;
    int n = dir_fingerprint(conf->database, &fp);
    if (n < 0) {
        *err = g_strdup_printf("clamav.database: %s: %s", conf->database, g_strerror(errno));
        return -1;
    }
    if (n == 0) {
        *err = g_strdup_printf("clamav.database: %s holds no signature files", conf->database);
        return -1;
    }
    if (!tmpdir_usable(conf->tmpdir, why, sizeof(why))) {
        *err = g_strdup_printf("clamav.tmpdir: %s", why);
        return -1;
    }
    return 0;
}
