/*
 * mxload_stats.c: mxload's results (see mxload.c for the keys it prints).
 *
 * Owns the counters (messages, sessions, errors by step, the first error's
 * text, TLS handshakes), the latency of every message started in the
 * measured window (nearest-rank percentiles, the -L file), mxload's own
 * CPU time, and the load mode's result line; the idle mode's lines, which
 * mxload.c prints, end with print_tls and print_errors from here.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "mxload.h"

static double *lat;       /* latencies in seconds of counted messages */
static double *lat_start; /* their start times, for -L */
static size_t nlat, caplat;
static long completed_in_window; /* messages whose 250 arrived in [t_warm, t_end] */
long completed_total;
long sessions_started, sessions_ok;
long errors, err_timeouts, err_closed;
static long err_by_state[S_NSTATES];
static char first_error[200];
long tls_handshakes, tls_offered, tls_resumed, tls_tickets;
double tls_hs_time;
char tls_last_version[32] = "-", tls_last_cipher[64] = "-";

/* ---- recording ---- */

void note_error(struct conn *c, const char *fmt, ...)
{
    errors++;
    err_by_state[c->st]++;
    if (!first_error[0]) {
        char what[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        snprintf(first_error, sizeof(first_error), "%s: %s", state_name[c->st], what);
        /* keep it one token-safe value for the output line */
        for (char *p = first_error; *p; p++)
            if (*p == '"' || *p == '\r' || *p == '\n' || (unsigned char)*p < ' ')
                *p = ' ';
    }
}

void record_message(struct conn *c, double t)
{
    completed_total++;
    if (t >= t_warm && t <= t_end)
        completed_in_window++;
    if (c->t_msg >= t_warm && c->t_msg < t_end) {
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 65536;
            lat = realloc(lat, caplat * sizeof(*lat));
            lat_start = realloc(lat_start, caplat * sizeof(*lat_start));
            if (!lat || !lat_start)
                die("out of memory");
        }
        lat_start[nlat] = c->t_msg - t_start;
        lat[nlat++] = t - c->t_msg;
    }
}

/* ---- the result line ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (nlat == 0)
        return 0;
    /* nearest rank */
    size_t k = (size_t)(p / 100.0 * (double)nlat + 0.999999);
    if (k < 1)
        k = 1;
    if (k > nlat)
        k = nlat;
    return lat[k - 1];
}

/* CPU seconds this process used, user + system */
static double self_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

void print_errors(void)
{
    printf(" errors=%ld", errors);
    for (int s = S_CONNECTING; s < S_NSTATES; s++)
        if (err_by_state[s])
            printf(" err_%s=%ld", state_name[s], err_by_state[s]);
    if (err_timeouts)
        printf(" err_timeouts=%ld", err_timeouts);
    if (err_closed)
        printf(" err_closed_by_server=%ld", err_closed);
    if (first_error[0])
        printf(" first_error=\"%s\"", first_error);
}

void print_tls(void)
{
    if (!opt_tls)
        return;
    printf(" tls=%s tls_version=%s tls_cipher=%s tls_handshakes=%ld tls_offered=%ld tls_resumed=%ld"
           " tls_tickets=%ld tls_hs_mean_ms=%.3f",
           tls_mode_name[opt_tls], tls_last_version, tls_last_cipher,
           tls_handshakes, tls_offered, tls_resumed, tls_tickets,
           tls_handshakes ? tls_hs_time / (double)tls_handshakes * 1e3 : 0.0);
}

static void dump_latencies(void)
{
    FILE *f = fopen(opt_latfile, "w");
    if (!f)
        die("%s: %s", opt_latfile, strerror(errno));
    for (size_t i = 0; i < nlat; i++)
        fprintf(f, "%.6f %.3f\n", lat_start[i], lat[i] * 1e3);
    if (fclose(f) != 0)
        die("%s: %s", opt_latfile, strerror(errno));
}

void print_load_result(double elapsed)
{
    if (opt_latfile)
        dump_latencies();
    qsort(lat, nlat, sizeof(*lat), cmp_double);
    double sum = 0;
    long over40 = 0;
    for (size_t i = 0; i < nlat; i++) {
        sum += lat[i];
        if (lat[i] >= 0.040)
            over40++;
    }
    printf("mode=load target=%s conc=%d size=%zu per_session=%d unique=%d duration=%.3f"
           " msgs=%ld msgs_per_s=%.1f total_msgs=%ld sessions=%ld sessions_ok=%ld"
           " lat_n=%zu p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f mean_ms=%.3f"
           " over_40ms=%ld cpu_s=%.3f",
           target_text, opt_conc, message_len - 3, opt_per_session, opt_unique, elapsed,
           completed_in_window, elapsed > 0 ? (double)completed_in_window / elapsed : 0.0,
           completed_total, sessions_started, sessions_ok, nlat, pct(50) * 1e3, pct(90) * 1e3, pct(99) * 1e3,
           nlat ? lat[nlat - 1] * 1e3 : 0.0, nlat ? sum / (double)nlat * 1e3 : 0.0, over40,
           self_cpu());
    print_tls();
    print_errors();
    putchar('\n');
    fflush(stdout);
}

