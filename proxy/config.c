/*
 * config.c: the option table and the GKeyFile loader.
 *
 * Every option lives in one table row: section, key, type, field offset,
 * default, bounds and one line of doc. deploy/mxgate.conf documents the same
 * set; tests/unit/test_config.c checks that nothing is missing there.
 */
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "clam.h"
#include "config.h"
#include "config_int.h"
#include "tls.h"

typedef enum { OPT_STR, OPT_INT, OPT_SIZE, OPT_ENUM, OPT_BOOL } opt_type;

typedef struct option {
    const char *section;
    const char *key;
    opt_type type;
    size_t off;
    const char *def;
    int64_t min, max;
    const char *const *names; /* OPT_ENUM: NULL-terminated, value = index */
    const char *doc;
} option;

static const char *const forward_names[] = {"xclient", "xforward", "proxy", "none", NULL};
static const char *const bare_names[] = {"normalize", "reject", NULL};
static const char *const level_names[] = {"error", "warning", "info", "debug", NULL};
static const char *const btls_names[] = {"none", "opportunistic", "required", NULL};
static const char *const tlsver_names[] = {"TLSv1.2", "TLSv1.3", NULL};
static const char *const onerr_names[] = {"tempfail", "accept", NULL};

#define O(f) offsetof(mx_config, f)
#define GiB (1024LL * 1024 * 1024)

static const option options[] = {
    {"smtp", "listen", OPT_STR, O(listen), "127.0.0.1:2525", 0, 0, NULL,
     "';'-separated ADDR:PORT [proxy_protocol] [tls] entries"},
    {"smtp", "hostname", OPT_STR, O(hostname), "", 0, 0, NULL,
     "name in the banner, EHLO reply and Received header; empty = system host name"},
    {"smtp", "max_message_size", OPT_SIZE, O(max_message_size), "10485760", 1024, 4 * GiB, NULL,
     "largest message accepted, in bytes (advertised as SIZE)"},
    {"smtp", "max_recipients", OPT_INT, O(max_recipients), "100", 1, 100000, NULL,
     "recipients per transaction; more get 452 4.5.3"},
    {"smtp", "idle_timeout", OPT_INT, O(idle_timeout), "300", 1, 86400, NULL,
     "seconds to wait for the next command (RFC 5321 4.5.3.2.7)"},
    {"smtp", "data_timeout", OPT_INT, O(data_timeout), "180", 1, 86400, NULL,
     "seconds to wait for the next data block (RFC 5321 4.5.3.2.5)"},
    {"smtp", "workers", OPT_INT, O(workers), "0", 0, 256, NULL,
     "event loops (threads); 0 = one per core"},
    {"smtp", "max_line_length", OPT_INT, O(max_line_length), "2048", 512, 65536, NULL,
     "longest command line, CRLF included; longer gets 500 5.5.2"},
    {"smtp", "max_text_line_length", OPT_INT, O(max_text_line_length), "998", 0, 1 << 30, NULL,
     "longest message line without CRLF (RFC 5321 4.5.3.1.6); longer gets 554 5.6.0; 0 = no limit"},
    {"smtp", "max_bad_commands", OPT_INT, O(max_bad_commands), "20", 1, 10000, NULL,
     "bad or out-of-sequence commands before 421 and disconnect"},
    {"smtp", "bare_newline", OPT_ENUM, O(bare_newline), "normalize", 0, 0, bare_names,
     "bare CR or LF in message data: normalize to CRLF, or reject with 554 5.6.0"},
    {"smtp", "greet_delay", OPT_INT, O(greet_delay), "0", 0, 60000, NULL,
     "milliseconds to hold the banner; a client talking before it gets 554"},
    {"smtp", "max_sessions", OPT_INT, O(max_sessions), "10000", 1, 1000000, NULL,
     "concurrent client sessions per node; more get 421 4.3.2"},
    {"smtp", "spool_budget", OPT_SIZE, O(spool_budget), "1073741824", 1 << 20, 1024 * GiB, NULL,
     "bytes of message data all sessions of the node may hold at once; past it 452 4.3.1"},
    {"smtp", "drain_timeout", OPT_INT, O(drain_timeout), "60", 0, 86400, NULL,
     "seconds SIGTERM waits for in-flight sessions before closing them with 421"},
    {"smtp", "drain_grace", OPT_INT, O(drain_grace), "0", 0, 3600, NULL,
     "seconds after SIGTERM during which /health says 503 but new sessions are still served"},
    {"smtp", "proxy_protocol_from", OPT_STR, O(proxy_protocol_from), "127.0.0.0/8;::1/128", 0, 0,
     NULL, "';'-separated networks allowed to send PROXY headers on proxy_protocol listeners"},
    {"smtp", "proxy_timeout", OPT_INT, O(proxy_timeout), "5", 1, 300, NULL,
     "seconds to wait for the PROXY header on a proxy_protocol listener"},
    {"smtp", "starttls", OPT_BOOL, O(starttls), "true", 0, 0, NULL,
     "offer STARTTLS (RFC 3207) when tls.cert and tls.key are set"},

    {"tls", "cert", OPT_STR, O(tls_cert), "", 0, 0, NULL,
     "PEM certificate chain for STARTTLS and tls listeners; empty = no TLS"},
    {"tls", "key", OPT_STR, O(tls_key), "", 0, 0, NULL, "PEM private key for tls.cert"},
    {"tls", "ciphers", OPT_STR, O(tls_ciphers),
     "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
     "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
     "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384", 0, 0, NULL,
     "OpenSSL cipher list for TLS 1.2 (forward secret AEAD only by default)"},
    {"tls", "ciphersuites", OPT_STR, O(tls_ciphersuites),
     "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256", 0, 0, NULL,
     "OpenSSL TLS 1.3 cipher suites"},
    {"tls", "min_version", OPT_ENUM, O(tls_min_version), "TLSv1.2", 0, 0, tlsver_names,
     "lowest protocol accepted: TLSv1.2 or TLSv1.3"},
    {"tls", "ticket_keys", OPT_STR, O(tls_ticket_keys), "", 0, 0, NULL,
     "file of 80-byte session ticket keys shared by all nodes; empty = per-process keys"},
    {"tls", "handshake_timeout", OPT_INT, O(tls_handshake_timeout), "30", 1, 600, NULL,
     "seconds a TLS handshake may take"},

    {"backend", "servers", OPT_STR, O(backend_servers), "127.0.0.1:10025", 0, 0, NULL,
     "';'-separated ADDR:PORT of backend MTAs, tried in order"},
    {"backend", "forward", OPT_ENUM, O(forward), "xclient", 0, 0, forward_names,
     "how the backend learns the client: xclient, xforward, proxy (PROXY v1 header) or none"},
    {"backend", "helo_name", OPT_STR, O(helo_name), "", 0, 0, NULL,
     "name mxgate gives in EHLO to the backend; empty = smtp.hostname"},
    {"backend", "connect_timeout", OPT_INT, O(connect_timeout), "10", 1, 3600, NULL,
     "seconds to connect to one backend server before trying the next"},
    {"backend", "command_timeout", OPT_INT, O(command_timeout), "300", 1, 3600, NULL,
     "seconds to wait for a backend reply to a command (RFC 5321 4.5.3.2)"},
    {"backend", "data_timeout", OPT_INT, O(backend_data_timeout), "180", 1, 3600, NULL,
     "seconds a block of message data may take to reach the backend"},
    {"backend", "dot_timeout", OPT_INT, O(dot_timeout), "600", 1, 3600, NULL,
     "seconds to wait for the backend's reply to the final dot (RFC 5321 4.5.3.2.6)"},
    {"backend", "health_interval", OPT_INT, O(health_interval), "5", 1, 3600, NULL,
     "seconds between backend reachability probes behind /health"},

    {"backend", "pool_size", OPT_INT, O(backend_pool_size), "32", 0, 10000, NULL,
     "idle backend connections each worker keeps for reuse (re-identified by XCLIENT); 0 = off"},
    {"backend", "pool_idle_timeout", OPT_INT, O(backend_pool_idle), "30", 1, 3600, NULL,
     "seconds an idle pooled backend connection is kept; keep below the backend's own timeout"},

    {"backend", "starttls", OPT_ENUM, O(backend_starttls), "none", 0, 0, btls_names,
     "TLS to the backend: none, opportunistic (when offered) or required"},
    {"backend", "tls_verify", OPT_BOOL, O(backend_tls_verify), "false", 0, 0, NULL,
     "verify the backend's certificate against backend.tls_ca"},
    {"backend", "tls_ca", OPT_STR, O(backend_tls_ca), "", 0, 0, NULL,
     "PEM CA file for backend.tls_verify; empty = the system store"},

    {"clamav", "enabled", OPT_BOOL, O(clamav_enabled), "true", 0, 0, NULL,
     "scan every message with libclamav; false = no virus scanning at all"},
    {"clamav", "database", OPT_STR, O(clamav_database), "/var/lib/clamav", 0, 0, NULL,
     "directory of signature files (.cvd .cld .hdb .ndb ...); reloaded when it changes"},
    {"clamav", "tmpdir", OPT_STR, O(clamav_tmpdir), "/dev/shm/mxgate", 0, 0, NULL,
     "libclamav's temp directory (made at start if missing); checked at start and by every canary"},
    {"clamav", "threads", OPT_INT, O(clamav_threads), "0", 0, 256, NULL,
     "scan threads; 0 = one per core"},
    {"clamav", "max_pending", OPT_INT, O(clamav_max_pending), "64", 1, 1000000, NULL,
     "scans queued or running; past it DATA gets 451 4.3.2 instead of a longer queue"},
    {"clamav", "max_scan_size", OPT_SIZE, O(clamav_max_scan_size), "104857600", 1 << 20,
     4 * GiB, NULL, "bytes scanned per message, extracted attachments included"},
    {"clamav", "max_file_size", OPT_SIZE, O(clamav_max_file_size), "26214400", 1 << 20, 4 * GiB,
     NULL, "largest single file scanned (the message itself too); see --check"},
    {"clamav", "max_recursion", OPT_INT, O(clamav_max_recursion), "16", 1, 1000, NULL,
     "nesting depth of archives and MIME parts"},
    {"clamav", "max_files", OPT_INT, O(clamav_max_files), "1000", 1, 1000000, NULL,
     "files extracted from one message"},
    {"clamav", "max_scan_time", OPT_INT, O(clamav_max_scan_time), "15000", 100, 3600000, NULL,
     "milliseconds one message may be scanned"},
    {"clamav", "alert_exceeds_max", OPT_BOOL, O(clamav_alert_exceeds_max), "true", 0, 0, NULL,
     "reject a message with a part past a limit (Heuristics.Limits.Exceeded.*) rather than "
     "pass it partly scanned"},
    {"clamav", "scan_html", OPT_BOOL, O(clamav_scan_html), "true", 0, 0, NULL,
     "normalise HTML parts (scripts, links) before matching; false saves CPU, loses detections"},
    {"clamav", "phishing_urls", OPT_BOOL, O(clamav_phishing_urls), "true", 0, 0, NULL,
     "check links in mail against phishing URL signatures (Heuristics.Phishing.*)"},
    {"clamav", "on_error", OPT_ENUM, O(clamav_on_error), "tempfail", 0, 0, onerr_names,
     "scan error or timeout: tempfail (451 4.7.0), or accept (UNSAFE: unscanned mail is delivered, tagged)"},
    {"clamav", "add_header", OPT_BOOL, O(clamav_add_header), "true", 0, 0, NULL,
     "add X-Virus-Scanned naming mxgate and the signature version to clean messages"},
    {"clamav", "canary_interval", OPT_INT, O(clamav_canary_interval), "60", 1, 86400, NULL,
     "seconds between EICAR canary scans (every 2 s while failing)"},
    {"clamav", "watch_interval", OPT_INT, O(clamav_watch_interval), "5", 0, 86400, NULL,
     "seconds between looks at clamav.database for new files; 0 = reload on SIGHUP only"},

    {"cluster", "memcached", OPT_STR, O(cluster_memcached), "", 0, 0, NULL,
     "';'-separated HOST:PORT memcached servers shared by all nodes; empty = embedded store"},
    {"cluster", "key_file", OPT_STR, O(cluster_key_file), "", 0, 0, NULL,
     "file holding the cluster key (16 to 64 bytes) that signs records in memcached"},
    {"cluster", "timeout", OPT_INT, O(cluster_timeout), "50", 1, 10000, NULL,
     "milliseconds for a memcached connect, send, receive or reply"},
    {"cluster", "dead_timeout", OPT_INT, O(cluster_dead_timeout), "5", 1, 3600, NULL,
     "seconds a memcached server that refuses connections stays ejected"},
    {"cluster", "breaker_failures", OPT_INT, O(cluster_breaker_failures), "3", 1, 1000, NULL,
     "failures in a row that open a server's circuit breaker"},
    {"cluster", "breaker_cooldown", OPT_INT, O(cluster_breaker_cooldown), "1000", 10, 600000, NULL,
     "milliseconds an open breaker fails calls at once before one probe"},
    {"cluster", "embedded_max_size", OPT_SIZE, O(cluster_embedded_max), "268435456", 1 << 20,
     1024 * GiB, NULL,
     "bytes the embedded store may hold (no memcached): past it the oldest entries are "
     "dropped, as memcached does when full"},
    {"cluster", "threads", OPT_INT, O(cluster_threads), "8", 1, 256, NULL,
     "threads for store calls (they wait on the network, not the CPU)"},
    {"cluster", "cache_ttl", OPT_INT, O(cluster_cache_ttl), "10", 0, 3600, NULL,
     "seconds a node caches a reputation read, found or not; 0 = no cache"},
    {"cluster", "generation_poll", OPT_INT, O(cluster_generation_poll), "1000", 100, 60000, NULL,
     "milliseconds between looks at the feed generation; a change empties the cache"},

    {"cluster", "client_concurrency", OPT_INT, O(cluster_client_concurrency), "0", 0, 1000000,
     NULL, "concurrent sessions one client IP may hold across the cluster; 0 = no limit"},
    {"cluster", "lease_period", OPT_INT, O(cluster_lease_period), "60", 5, 86400, NULL,
     "seconds a session's concurrency lease lasts before it is renewed"},

    {"reputation", "enabled", OPT_BOOL, O(rep_enabled), "true", 0, 0, NULL,
     "check and update sender reputation (client IP, network, sender domain and address)"},
    {"reputation", "connect_reject", OPT_INT, O(rep_connect_reject), "-100", -1000000, 1000000,
     NULL, "a client IP or network scoring this or less gets 554 at connect"},
    {"reputation", "mail_reject", OPT_INT, O(rep_mail_reject), "-50", -1000000, 1000000, NULL,
     "a score this or less (IP, domain or sender) gets 550 at MAIL"},
    {"reputation", "tempfail", OPT_INT, O(rep_tempfail), "-20", -1000000, 1000000, NULL,
     "a score this or less gets 451 at MAIL"},
    {"reputation", "penalty_malware", OPT_INT, O(rep_penalty_malware), "10", 0, 1000000, NULL,
     "points taken from client IP, sender domain and sender per infected message"},
    {"reputation", "penalty_ratelimit", OPT_INT, O(rep_penalty_ratelimit), "5", 0, 1000000, NULL,
     "points taken from the client IP per rate limit hit"},
    {"reputation", "penalty_pregreet", OPT_INT, O(rep_penalty_pregreet), "10", 0, 1000000, NULL,
     "points taken from the client IP for talking before the greeting"},
    {"reputation", "penalty_unknown_rcpt", OPT_INT, O(rep_penalty_unknown_rcpt), "2", 0, 1000000,
     NULL, "points taken from the client IP per recipient the backend refused with 5xx"},
    {"reputation", "credit_delivered", OPT_INT, O(rep_credit_delivered), "1", 0, 1000000, NULL,
     "points given to client IP, sender domain and sender per delivered clean message"},
    {"reputation", "decay", OPT_INT, O(rep_decay), "86400", 60, 31536000, NULL,
     "seconds after which automatic points count half, and after twice that not at all"},
    {"reputation", "history", OPT_INT, O(rep_history), "7776000", 0, 315360000, NULL,
     "seconds a sender's first/last seen times and message counters outlive its last "
     "activity (mxgatectl rep get); 0 = keep none"},

    {"domains", "local", OPT_STR, O(local_domains), "", 0, 0, NULL,
     "the domains this organisation receives mail for (spaces, commas or ';' between "
     "them; \".example.org\" matches its subdomains); mail from outside to any other "
     "domain is refused (550 5.7.1); empty = every domain counts as local and the backend "
     "alone judges relaying"},
    {"networks", "internal", OPT_STR, O(internal_networks), "", 0, 0, NULL,
     "ADDR or ADDR/BITS of the internal MTAs that send outbound mail through mxgate "
     "(the real client address, from PROXY or the connection)"},

    {"report", "days", OPT_INT, O(report_days), "35", 1, 3660, NULL,
     "days the cluster-wide hourly counters of mxgatectl report are kept"},
    {"report", "trace_ttl", OPT_INT, O(report_trace_ttl), "259200", 0, 31536000, NULL,
     "seconds each transaction's decision record (mxgatectl explain ID) is kept; 0 = none "
     "(memcached may evict records sooner when it runs out of memory)"},

    {"admin", "listen", OPT_STR, O(admin_listen), "127.0.0.1:8025", 0, 0, NULL,
     "ADDR:PORT of the HTTP endpoint for /health; empty = off"},

    {"log", "level", OPT_ENUM, O(log_level), "info", 0, 0, level_names,
     "error, warning, info or debug"},
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static const option *find_option(const char *section, const char *key)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strcmp(options[i].section, section) == 0 && strcmp(options[i].key, key) == 0)
            return &options[i];
    return NULL;
}

int mx_config_parse_int64(const char *s, int64_t *v, int allow_suffix)
{
    char *e;
    errno = 0;
    long long n = strtoll(s, &e, 10);
    if (errno || e == s || (n < 0 && allow_suffix))
        return -1;
    if (allow_suffix && *e) {
        long long m = 1;
        switch (*e) {
        case 'k': case 'K': m = 1024; break;
        case 'm': case 'M': m = 1024 * 1024; break;
        case 'g': case 'G': m = 1024LL * 1024 * 1024; break;
        default: return -1;
        }
        if (n > INT64_MAX / m)
            return -1;
        n *= m;
        e++;
    }
    if (*e)
        return -1;
    *v = n;
    return 0;
}

static int set_option(mx_config *c, const option *o, const char *raw, char **err)
{
    char *p = (char *)c + o->off;
    g_autofree char *val = g_strstrip(g_strdup(raw));
    int64_t n;

    switch (o->type) {
    case OPT_STR:
        g_free(*(char **)p);
        *(char **)p = g_steal_pointer(&val);
        return 0;
    case OPT_INT:
    case OPT_SIZE:
        if (mx_config_parse_int64(val, &n, o->type == OPT_SIZE) < 0 || n < o->min || n > o->max) {
            *err = g_strdup_printf("%s.%s: bad value \"%s\" (expected %s from %lld to %lld)",
                                   o->section, o->key, val,
                                   o->type == OPT_SIZE ? "a size in bytes (K/M/G suffix allowed)"
                                                       : "an integer",
                                   (long long)o->min, (long long)o->max);
            return -1;
        }
        if (o->type == OPT_INT)
            *(int *)p = (int)n;
        else
            *(uint64_t *)p = (uint64_t)n;
        return 0;
    case OPT_BOOL:
        if (g_ascii_strcasecmp(val, "true") == 0 || g_ascii_strcasecmp(val, "yes") == 0 ||
            g_ascii_strcasecmp(val, "on") == 0 || strcmp(val, "1") == 0) {
            *(int *)p = 1;
            return 0;
        }
        if (g_ascii_strcasecmp(val, "false") == 0 || g_ascii_strcasecmp(val, "no") == 0 ||
            g_ascii_strcasecmp(val, "off") == 0 || strcmp(val, "0") == 0) {
            *(int *)p = 0;
            return 0;
        }
        *err = g_strdup_printf("%s.%s: bad value \"%s\" (expected true or false)", o->section,
                               o->key, val);
        return -1;
    case OPT_ENUM:
        for (int i = 0; o->names[i]; i++) {
            if (g_ascii_strcasecmp(o->names[i], val) == 0) {
                *(int *)p = i;
                return 0;
            }
        }
        {
            g_autofree char *alts = g_strjoinv(", ", (char **)o->names);
            *err = g_strdup_printf("%s.%s: bad value \"%s\" (expected one of: %s)", o->section,
                                   o->key, val, alts);
        }
        return -1;
    }
    return -1;
}

static int apply_keyfile(mx_config *c, GKeyFile *kf, const char *file, char **err)
{
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);
    for (char **g = groups; *g; g++) {
        g_auto(GStrv) keys = g_key_file_get_keys(kf, *g, NULL, NULL);
        for (char **k = keys; k && *k; k++) {
            if (g_str_has_prefix(*g, "ratelimit:")) {
                g_autofree char *v = g_key_file_get_value(kf, *g, *k, NULL);
                char *e = NULL;
                if (mx_config_rl_set(c, *g, *k, v ? v : "", &e) < 0) {
                    *err = g_strdup_printf("%s: %s", file, e);
                    g_free(e);
                    return -1;
                }
                continue;
            }
            const option *o = find_option(*g, *k);
            if (!o) {
                *err = g_strdup_printf("%s: unknown option %s.%s", file, *g, *k);
                return -1;
            }
            g_autofree char *v = g_key_file_get_value(kf, *g, *k, NULL);
            char *e = NULL;
            if (set_option(c, o, v, &e) < 0) {
                *err = g_strdup_printf("%s: %s", file, e);
                g_free(e);
                return -1;
            }
        }
    }
    return 0;
}

mx_config *mx_config_load(const char *file, char **overrides, char **err)
{
    mx_config *c = g_new0(mx_config, 1);
    c->refs = 1;

    for (size_t i = 0; i < NOPTIONS; i++) {
        char *e = NULL;
        if (set_option(c, &options[i], options[i].def, &e) < 0)
            g_error("built-in default: %s", e); /* our own table is wrong */
    }

    if (file) {
        g_autoptr(GKeyFile) kf = g_key_file_new();
        GError *ge = NULL;
        if (!g_key_file_load_from_file(kf, file, G_KEY_FILE_NONE, &ge)) {
            *err = g_strdup_printf("%s: %s", file, ge->message);
            g_error_free(ge);
            goto fail;
        }
        if (apply_keyfile(c, kf, file, err) < 0)
            goto fail;
        c->source_file = g_strdup(file);
    }

    for (char **ov = overrides; ov && *ov; ov++) {
        const char *eq = strchr(*ov, '=');
        const char *dot = strchr(*ov, '.');
        if (!eq || !dot || dot > eq) {
            *err = g_strdup_printf("-o %s: expected section.key=value", *ov);
            goto fail;
        }
        g_autofree char *section = g_strndup(*ov, (size_t)(dot - *ov));
        g_autofree char *key = g_strndup(dot + 1, (size_t)(eq - dot - 1));
        if (g_str_has_prefix(section, "ratelimit:")) {
            char *e = NULL;
            if (mx_config_rl_set(c, section, key, eq + 1, &e) < 0) {
                *err = g_strdup_printf("-o: %s", e);
                g_free(e);
                goto fail;
            }
            continue;
        }
        const option *o = find_option(section, key);
        if (!o) {
            *err = g_strdup_printf("-o: unknown option %s.%s", section, key);
            goto fail;
        }
        char *e = NULL;
        if (set_option(c, o, eq + 1, &e) < 0) {
            *err = g_strdup_printf("-o: %s", e);
            g_free(e);
            goto fail;
        }
    }

    if (mx_config_derive(c, err) < 0)
        goto fail;
    c->tls_server = mx_tls_server_new(c, err);
    if (!c->tls_server && *err)
        goto fail;
    for (int i = 0; i < c->nlistens; i++) {
        if (c->listens[i].tls && !c->tls_server) {
            *err = g_strdup_printf("smtp.listen: %s has the tls flag, but tls.cert and tls.key "
                                   "are not set", c->listens[i].addr.text);
            goto fail;
        }
    }
    c->tls_client = mx_tls_client_new(c, err);
    if (!c->tls_client && *err)
        goto fail;
    return c;

fail:
    mx_config_unref(c);
    return NULL;
}

mx_config *mx_config_ref(mx_config *c)
{
    g_atomic_int_inc(&c->refs);
    return c;
}

void mx_config_unref(mx_config *c)
{
    if (!c || !g_atomic_int_dec_and_test(&c->refs))
        return;
    for (size_t i = 0; i < NOPTIONS; i++)
        if (options[i].type == OPT_STR)
            g_free(*(char **)((char *)c + options[i].off));
    for (int i = 0; i < c->nlistens; i++)
        g_free(c->listens[i].addr.text);
    g_free(c->listens);
    for (int i = 0; i < c->nbackends; i++)
        g_free(c->backends[i].text);
    g_free(c->backends);
    g_free(c->admin.text);
    g_free(c->proxy_nets);
    g_free(c->internal_nets);
    g_strfreev(c->local_list);
    mx_tls_free(c->tls_server);
    mx_tls_free(c->tls_client);
    g_free(c->source_file);
    for (int i = 0; i < c->nrules; i++)
        g_free(c->rules[i].name);
    g_free(c->rules);
    if (c->rl_raw)
        g_hash_table_unref(c->rl_raw);
    g_free(c);
}

void mx_config_dump_options(FILE *out)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        fprintf(out, "%s.%s = %s\t# %s\n", options[i].section, options[i].key, options[i].def,
                options[i].doc);
}
