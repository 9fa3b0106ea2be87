/*
 * clscan.c: libclamav alone, for the mxgate benchmark (tests/bench).
 *
 * Scans the benchmark's message N times in one thread, with the engine
 * settings and scan options mxgate uses (scanners/clam.c: every parser,
 * general heuristics, Heuristics.Limits.Exceeded alerts, mxgate's default
 * limits, the cache on), and prints the CPU and wall time per scan. This
 * is what libclamav costs with nothing else running: no SMTP, no proxy, no
 * other thread competing for the cores. run.sh prints it under the scan
 * table, next to what scanning adds to mxgate's CPU per message.
 *
 * The message is the one mxload sends (the same headers and body
 * generator) with a Received header in front, as mxgate prepends one; its
 * id changes with every scan, so the whole message is never in
 * libclamav's cache. With -u the body changes too (as mxload -u), so the
 * decoded text part is not either.
 *
 *   clscan -d DBDIR [-t TMPDIR] [-s BYTES] [-n SCANS] [-u] [-C]
 *
 *   -s  message size as mxload counts it (header + body; default 2048)
 *   -n  scans (default 1000)
 *   -u  a different body for every scan
 *   -C  engine cache off (CL_ENGINE_DISABLE_CACHE), for comparison
 *
 * Output: one line of key=value pairs: size (bytes scanned per message),
 * signatures, load_ms (cl_load + cl_engine_compile), scans, cpu_us and
 * wall_us (per scan), and the exit status is 1 if any scan was not clean.
 *
 * Build: cc -std=c11 -O2 -o clscan tests/bench/clscan.c -lclamav
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <clamav.h>

#include "benchmsg.h"

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "clscan: %s\n", what);
    exit(2);
}

/* mxload's message (benchmsg.h), CRLF lines, no final dot. */
static char *build_message(size_t size, size_t *len, size_t *body_off)
{
    char *m = bench_message(size, "bench-sender@example.com", "bench-rcpt@example.net", 0, len,
                            body_off);
    if (!m)
        die("cannot build the message");
    return m;
}

static void usage(void)
{
    fputs("usage: clscan -d DBDIR [-t TMPDIR] [-s BYTES] [-n SCANS] [-u] [-C]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *db = NULL, *tmpdir = "/tmp";
    size_t size = 2048;
    long n = 1000;
    int unique = 0, nocache = 0, ch;
    while ((ch = getopt(argc, argv, "d:t:s:n:uC")) != -1) {
        switch (ch) {
        case 'd': db = optarg; break;
        case 't': tmpdir = optarg; break;
        case 's': size = (size_t)strtoul(optarg, NULL, 10); break;
        case 'n': n = strtol(optarg, NULL, 10); break;
        case 'u': unique = 1; break;
        case 'C': nocache = 1; break;
        default: usage();
        }
    }
    if (!db || n < 1 || optind != argc)
        usage();

    if (cl_init(CL_INIT_DEFAULT) != CL_SUCCESS)
        die("cl_init failed");
    struct cl_engine *e = cl_engine_new();
    if (!e)
        die("cl_engine_new failed");
    /* mxgate's defaults (clamav.max_* settings) */
    cl_engine_set_num(e, CL_ENGINE_MAX_SCANSIZE, 104857600);
    cl_engine_set_num(e, CL_ENGINE_MAX_FILESIZE, 26214400);
    cl_engine_set_num(e, CL_ENGINE_MAX_RECURSION, 16);
    cl_engine_set_num(e, CL_ENGINE_MAX_FILES, 1000);
    cl_engine_set_num(e, CL_ENGINE_MAX_SCANTIME, 15000);
    if (cl_engine_set_str(e, CL_ENGINE_TMPDIR, tmpdir) != CL_SUCCESS)
        die("cannot set the temp directory");
    if (nocache)
        cl_engine_set_num(e, CL_ENGINE_DISABLE_CACHE, 1);
    unsigned sigs = 0;
    double t0 = clock_s(CLOCK_MONOTONIC);
    if (cl_load(db, e, &sigs, CL_DB_STDOPT) != CL_SUCCESS || cl_engine_compile(e) != CL_SUCCESS)
        die("cannot load the signatures");
    double load_ms = (clock_s(CLOCK_MONOTONIC) - t0) * 1e3;

    struct cl_scan_options o;
    memset(&o, 0, sizeof(o));
    o.parse = ~0u;
    o.general = CL_SCAN_GENERAL_HEURISTICS;
    o.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;

    /* Received header (as mxgate's, with a 16-digit id at a fixed place)
     * followed by the message. */
    static const char rcvd_fmt[] =
        "Received: from mxload.example (unknown [127.0.0.1])\r\n"
        "\tby mxgate.bench (mxgate) with ESMTP id %016lX\r\n"
        "\tfor <bench-rcpt@example.net>;\r\n"
        "\tSat, 28 Nov 2026 00:00:00 +0000\r\n";
    char rcvd[256];
    int rl = snprintf(rcvd, sizeof(rcvd), rcvd_fmt, 0UL);
    size_t mlen, body_off;
    char *msg = build_message(size, &mlen, &body_off);
    size_t len = (size_t)rl + mlen;
    char *buf = malloc(len + 1);
    if (!buf)
        die("out of memory");
    memcpy(buf + rl, msg, mlen);
    free(msg);
    body_off += (size_t)rl;
    size_t body_room = len - body_off;

    long bad = 0;
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID), w0 = clock_s(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) {
        snprintf(rcvd, sizeof(rcvd), rcvd_fmt, (unsigned long)i);
        memcpy(buf, rcvd, (size_t)rl);
        if (unique && body_room >= 18) {
            char stamp[17];
            snprintf(stamp, sizeof(stamp), "%06lx%010lx", (unsigned long)getpid() & 0xffffffUL,
                     (unsigned long)i & 0xffffffffffUL);
            memcpy(buf + body_off, stamp, 16);
        }
        cl_fmap_t *map = cl_fmap_open_memory(buf, len);
        if (!map)
            die("cl_fmap_open_memory failed");
        const char *vir = NULL;
        unsigned long scanned = 0;
        cl_error_t rc = cl_scanmap_callback(map, NULL, &vir, &scanned, e, &o, NULL);
        cl_fmap_close(map);
        if (rc != CL_CLEAN) {
            if (!bad)
                fprintf(stderr, "clscan: scan %ld: %s\n", i, rc == CL_VIRUS ? vir : cl_strerror(rc));
            bad++;
        }
    }
    double cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0, wall = clock_s(CLOCK_MONOTONIC) - w0;
    printf("clscan size=%zu unique=%d cache=%d signatures=%u load_ms=%.0f scans=%ld cpu_us=%.0f "
           "wall_us=%.0f not_clean=%ld\n",
           len, unique, !nocache, sigs, load_ms, n, cpu / (double)n * 1e6, wall / (double)n * 1e6, bad);
    cl_engine_free(e);
    free(buf);
    return bad ? 1 : 0;
}
