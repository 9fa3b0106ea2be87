/*
 * report.h: what the gateway handled, cluster-wide, by hour.
 *
 * Owns: the classes every transaction is counted in (direction, outcome,
 * unit), the counters in the store that hold them, the node-local tally
 * that writes them in batches, and the report read back from them and
 * rendered for people (text), programs (json, csv) and browsers (html).
 *
 * Counters live under "stats:<hour>:<direction>:<outcome>:<unit>", where
 * hour is unix time / 3600, as plain increment counters in the cluster
 * store, kept report.days days. Each node adds its transactions to a
 * local tally and writes it about once a second in one batch
 * (mx_report_tally_flush), so counting costs no round trip per message.
 */
#ifndef MX_REPORT_H
#define MX_REPORT_H

#include <stdint.h>

#include <glib.h>

#include "store.h"

typedef enum {
    MX_DIR_INBOUND,      /* from outside, to a local domain */
    MX_DIR_OUTBOUND,     /* from an internal network, to outside */
    MX_DIR_INTERNAL,     /* from an internal network, to a local domain */
    MX_DIR_RELAY_DENIED, /* from outside, to outside: refused */
    MX_DIR__COUNT
} mx_direction;

typedef enum {
    MX_OUT_DELIVERED,           /* the backend answered 250 */
    MX_OUT_REJECTED_MALWARE,    /* the scanner found malware: 554 */
    MX_OUT_REJECTED_REPUTATION, /* the sender's or client's reputation */
    MX_OUT_REJECTED_RATELIMIT,  /* a rate limit (4xx or 5xx, as the rule says) */
    MX_OUT_REJECTED_RELAY,      /* not internal and not to a local domain: 550 5.7.1 */
    MX_OUT_REJECTED_BACKEND,    /* the backend answered 5xx */
    MX_OUT_REJECTED_PROTOCOL,   /* bad SMTP or message: syntax, size, bare LF ... */
    MX_OUT_TEMPFAILED,          /* any other 4xx: backend or scanner down ... */
    MX_OUT__COUNT
} mx_outcome;

enum { MX_UNIT_MESSAGES, MX_UNIT_RECIPIENTS, MX_UNIT__COUNT };

/* "inbound", "outbound", "internal", "relay-denied" */
const char *mx_direction_name(mx_direction d);
/* "delivered", "rejected-malware", "rejected-reputation",
 * "rejected-ratelimit", "rejected-relay", "rejected-backend",
 * "rejected-protocol", "tempfailed" */
const char *mx_outcome_name(mx_outcome o);
/* "messages", "recipients" */
const char *mx_unit_name(int unit);

/* The store key of one counter (g_free it). */
char *mx_report_key(int64_t hour, mx_direction d, mx_outcome o, int unit);

/* ---- the report: counts per hour, direction, outcome and unit ---- */

typedef struct mx_report {
    int64_t first_hour;   /* unix time / 3600 of bucket 0 */
    int hours;            /* buckets, oldest first */
    uint64_t *count;      /* hours * MX_DIR__COUNT * MX_OUT__COUNT * MX_UNIT__COUNT */
    int missing;          /* counters that could not be read (store errors) */
    char store[32];       /* "memcached" or "embedded", for the header */
} mx_report;

#define MX_REPORT_AT(r, h, d, o, u)                                                      \
    ((r)->count[((((size_t)(h) * MX_DIR__COUNT + (size_t)(d)) * MX_OUT__COUNT +          \
                  (size_t)(o)) * MX_UNIT__COUNT) + (size_t)(u)])

/* hours buckets ending with the hour that holds now (all counts 0). */
mx_report *mx_report_new(int64_t now, int hours);
void mx_report_free(mx_report *r);

/* Read every counter of r from the store (a few multi-gets). Counters
 * that could not be read count as 0 and are added to r->missing. */
void mx_report_read(mx_store *s, mx_report *r);

typedef enum { MX_REPORT_TEXT, MX_REPORT_JSON, MX_REPORT_CSV, MX_REPORT_HTML } mx_report_format;

int mx_report_format_parse(const char *s); /* "text", "json", "csv", "html"; -1 */

/*
 * Render r (report_render.c), generated at unix time now:
 *  text  totals and the share of each direction, in messages and in
 *        recipients, as counts and percentages; outcomes per direction;
 *        a timeline by hour;
 *  json  the same numbers, one object (schema in report_render.c);
 *  csv   one row per hour, direction, outcome and unit with a non-zero
 *        count: hour_start (ISO 8601 UTC), direction, outcome, unit, count;
 *  html  a self-contained page (inline CSS and SVG, no scripts, no
 *        external fetches): the tables of the text format, a chart of the
 *        direction mix and one of the outcomes over time.
 */
void mx_report_render(GString *out, const mx_report *r, mx_report_format fmt, int64_t now);

/* The report of the hours up to now, read from s and rendered. */
void mx_report_produce(GString *out, mx_store *s, int hours, mx_report_format fmt, int64_t now);

/* "24h", "7d", "36" (hours): the hours it spans, 1 to max_hours; -1 if bad. */
int mx_report_parse_since(const char *s, int max_hours);

/* ---- the node's tally ---- */

typedef struct mx_report_tally mx_report_tally;

mx_report_tally *mx_report_tally_new(void);
void mx_report_tally_free(mx_report_tally *t);

/* Count n of unit at unix time now. Thread-safe, never blocks on the store. */
void mx_report_tally_add(mx_report_tally *t, int64_t now, mx_direction d, mx_outcome o, int unit,
                         uint64_t n);

/* Write what was counted since the last flush, in one batch; counters
 * expire ttl seconds after they were created. Returns the counts that
 * could not be written (lost: the report then undercounts, and says so
 * nowhere but in this return and the node's log). */
uint64_t mx_report_tally_flush(mx_report_tally *t, mx_store *s, int ttl);

#endif
