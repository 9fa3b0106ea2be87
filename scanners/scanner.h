/*
 * scanner.h: "is this message acceptable?"
 *
 * Owns: the interface every scanner implements (libclamav first; DNSBL and
 * rspamd/spamd clients later). Blocking and thread-safe: scans run on
 * worker threads, never on an event loop. Knows nothing of sessions: a
 * message is a sequence of byte runs.
 */
#ifndef MX_SCANNER_H
#define MX_SCANNER_H

#include <stddef.h>

typedef enum {
    MX_SCAN_CLEAN = 0,
    MX_SCAN_INFECTED, /* name says what was found */
    MX_SCAN_ERROR,    /* why says what went wrong; the caller tempfails */
} mx_scan_verdict;

typedef struct mx_scan_result {
    mx_scan_verdict verdict;
    char name[128];    /* infected: the signature */
    char why[192];     /* error: what went wrong */
    char version[80];  /* the engine and signature version that decided */
} mx_scan_result;

/* The message as runs of bytes: next() returns 0 when exhausted. */
typedef struct mx_scan_input {
    int (*next)(void *ctx, const char **p, size_t *len);
    void *ctx;
    size_t size;
} mx_scan_input;

typedef struct mx_scanner mx_scanner;

typedef struct mx_scanner_ops {
    const char *name;
    void (*scan)(mx_scanner *s, const mx_scan_input *in, mx_scan_result *out);
    void (*destroy)(mx_scanner *s);
} mx_scanner_ops;

struct mx_scanner {
    const mx_scanner_ops *ops;
};

/* Run scanners in order; the first verdict other than clean wins. */
void mx_scanner_chain(mx_scanner *const *list, int n, const mx_scan_input *in,
                      mx_scan_result *out);

#endif
