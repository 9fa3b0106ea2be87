/*
 * clam.h: the libclamav scanner.
 *
 * Owns: one compiled engine shared by every scan thread, its reload (SIGHUP,
 * or a change in the database directory) and the checks that make it fail
 * safe: the temp directory, libclamav errors during each scan, and a
 * periodic EICAR canary.
 *
 * Promises:
 *  - mx_clam_new() either returns a scanner with a compiled engine that has
 *    just detected the EICAR canary, or refuses with a message saying why;
 *  - a reload builds the new engine on the scanner's own thread while scans
 *    continue on the old one, and swaps it by reference count: scans in
 *    flight finish on the engine they started with; a reload that fails
 *    (unreadable database, no signatures, canary not detected) keeps the
 *    old engine and says so;
 *  - a scan answers clean only when libclamav said CL_CLEAN and reported no
 *    error while scanning, and the scanner is healthy (temp directory
 *    usable, last canary detected). Anything else is MX_SCAN_ERROR.
 * Not here: threads that run scans (the caller's pool), sessions, replies.
 */
#ifndef MX_CLAM_H
#define MX_CLAM_H

#include <stdint.h>

#include "scanner.h"

typedef struct mx_clam_conf {
    const char *database;     /* directory of signature files */
    const char *tmpdir;       /* libclamav's temp directory */
    uint64_t max_scan_size;   /* bytes scanned per message, extracted data included */
    uint64_t max_file_size;   /* largest single file (the message itself too) */
    uint32_t max_recursion;   /* archive / MIME nesting */
    uint32_t max_files;       /* files extracted per message */
    uint32_t max_scan_time;   /* milliseconds per message */
    int alert_exceeds_max;    /* a part past a limit is a detection, not a partial scan */
    int scan_html;            /* normalise HTML (scripts, URLs) before matching */
    int phishing_urls;        /* load phishing URL signatures and check URLs in mail */
    int canary_interval;      /* seconds between EICAR canaries */
    int watch_interval;       /* seconds between looks at the database dir; 0 = off */
    /* Where the scanner's own log lines go (level: 0 error .. 3 debug);
     * may be called from any thread. NULL: stderr. */
    void (*log)(int level, const char *event, const char *msg);
} mx_clam_conf;

typedef struct mx_clam mx_clam;

typedef struct mx_clam_status {
    int healthy;
    char why[256];          /* when not healthy */
    char engine[32];        /* "ClamAV 1.4.6" */
    char db_version[48];    /* the daily version, or "local-XXXXXXXX" for a custom set */
    unsigned signatures;
    int64_t loaded_at;      /* unix seconds */
    uint64_t reloads, reload_failures, canaries, canary_failures;
    uint64_t clean, infected, errors;
} mx_clam_status;

/* Load and compile the engine, check the temp dir, run the canary once.
 * NULL with *err set when any of it fails. */
mx_clam *mx_clam_new(const mx_clam_conf *conf, char **err);

/* Start the scanner's own thread (canary, database watch, reloads). */
void mx_clam_start(mx_clam *c);

/* Stop the thread and free the engine (after all scans have returned). */
void mx_clam_free(mx_clam *c);

/* Ask for a reload, with new settings (NULL: keep them). Returns at once;
 * the thread logs the outcome. */
void mx_clam_reload(mx_clam *c, const mx_clam_conf *conf);

/* The scanner interface: blocking, thread-safe. */
mx_scanner *mx_clam_scanner(mx_clam *c);

void mx_clam_get_status(mx_clam *c, mx_clam_status *st);

/* Cheap: temp dir usable and the last canary detected? */
int mx_clam_healthy(mx_clam *c);

/* What --check can verify without loading: the database directory holds
 * signature files and the temp directory is writable. Returns 0 or -1
 * with *err set. */
int mx_clam_check(const mx_clam_conf *conf, char **err);

/* Bytes mxgate adds to a message before scanning it (its trace headers):
 * the margin between smtp.max_message_size and the scanner's limits. */
#define MX_CLAM_HEADER_SLACK 4096

#endif
