/*
 * report_sample.c: a realistic day of traffic, rendered in the format
 * given (text, json, csv or html) on stdout, for the tests that check the
 * output with other programs (python3's JSON parser, headless Chromium).
 *
 * The counts follow an office day: little at night, a peak in the
 * morning and the afternoon; every direction and every outcome occurs.
 * A fixed clock and a fixed pseudo-random sequence make the output the
 * same on every run.
 */
#include <stdio.h>

#include <glib.h>

#include "report.h"

#define SAMPLE_NOW 1714643200 /* 2024-05-02T09:46:40Z */
#define SAMPLE_HOURS 24

/* traffic by hour of the day (UTC), in percent of the peak */
static const int day_curve[24] = {22, 18, 15,  14, 15, 20, 34, 58, 86, 100, 104, 98,
                                  90, 96, 102, 99, 92, 80, 64, 52, 44, 38,  32,  26};

typedef struct direction_profile {
    int peak;                 /* messages in an hour at 100% */
    int rcpt_tenths;          /* recipients per message, in tenths */
    int share[MX_OUT__COUNT]; /* per mille of the direction's messages */
} direction_profile;

static const direction_profile profiles[MX_DIR__COUNT] = {
    [MX_DIR_INBOUND] = {1400, 14, {855, 12, 70, 15, 0, 8, 25, 15}},
    [MX_DIR_OUTBOUND] = {520, 21, {935, 6, 0, 25, 0, 10, 4, 20}},
    [MX_DIR_INTERNAL] = {260, 30, {975, 3, 0, 5, 0, 7, 2, 8}},
    [MX_DIR_RELAY_DENIED] = {45, 10, {0, 0, 25, 30, 930, 0, 15, 0}},
};

/* a number from 85 to 115 (percent), the same sequence every run */
static int jitter(guint32 *state)
{
    *state = *state * 1103515245u + 12345u;
    return 85 + (int)((*state >> 16) % 31);
}

static void fill(mx_report *r)
{
    guint32 state = 2024;
    for (int h = 0; h < r->hours; h++) {
        int hour_of_day = (int)((r->first_hour + h) % 24);
        for (int d = 0; d < MX_DIR__COUNT; d++) {
            const direction_profile *p = &profiles[d];
            for (int o = 0; o < MX_OUT__COUNT; o++) {
                uint64_t n = (uint64_t)p->peak * (uint64_t)day_curve[hour_of_day] *
                             (uint64_t)p->share[o] * (uint64_t)jitter(&state) / 10000000u;
                if (p->share[o] && n == 0)
                    n = 1;
                MX_REPORT_AT(r, h, d, o, MX_UNIT_MESSAGES) = n;
                /* at least one recipient a message */
                MX_REPORT_AT(r, h, d, o, MX_UNIT_RECIPIENTS) =
                    n + n * (uint64_t)(p->rcpt_tenths - 10) * (uint64_t)jitter(&state) / 1000u;
            }
        }
    }
}

int main(int argc, char **argv)
{
    int fmt = argc == 2 ? mx_report_format_parse(argv[1]) : -1;
    if (fmt < 0) {
        fprintf(stderr, "usage: report_sample text|json|csv|html\n");
        return 2;
    }
    mx_report *r = mx_report_new(SAMPLE_NOW, SAMPLE_HOURS);
    g_strlcpy(r->store, "memcached", sizeof(r->store));
    fill(r);
    GString *out = g_string_new(NULL);
    mx_report_render(out, r, (mx_report_format)fmt, SAMPLE_NOW);
    fwrite(out->str, 1, out->len, stdout);
    g_string_free(out, TRUE);
    mx_report_free(r);
    return 0;
}
