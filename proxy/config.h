/*
 * config.h: the configuration snapshot.
 *
 * Owns: the option table (name, type, default, bounds, one line of doc),
 * loading an INI file with GKeyFile plus "-o section.key=value" overrides,
 * and the derived values (parsed listen and backend addresses).
 * Promises: a loaded mx_config is immutable and reference-counted; a reload
 * builds a new one, and sessions keep the one they started with. An unknown
 * key or a bad value is an error that names it.
 */
#ifndef MX_CONFIG_H
#define MX_CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include <glib.h>

#include "ratelimit.h"

typedef struct mx_addr {
    struct sockaddr_storage sa;
    socklen_t len;
    char *text; /* as configured, for logs */
} mx_addr;

typedef struct mx_net {
    int family;         /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;         /* bits */
} mx_net;

typedef struct mx_listen {
    mx_addr addr;
    int proxy_protocol; /* require a PROXY v1/v2 header first */
    int tls;            /* implicit TLS (port 465 style) */
} mx_listen;

enum { MX_BACKEND_TLS_NONE, MX_BACKEND_TLS_OPPORTUNISTIC, MX_BACKEND_TLS_REQUIRED };
enum { MX_TLS_V12, MX_TLS_V13 };
enum { MX_FORWARD_XCLIENT, MX_FORWARD_XFORWARD, MX_FORWARD_PROXY, MX_FORWARD_NONE };
enum { MX_BARE_NORMALIZE, MX_BARE_REJECT };
enum { MX_SCAN_ON_ERROR_TEMPFAIL, MX_SCAN_ON_ERROR_ACCEPT };
enum { MX_LOG_ERROR, MX_LOG_WARNING, MX_LOG_INFO, MX_LOG_DEBUG };

typedef struct mx_config {
    gint refs;

    /* [smtp] */
    char *listen;
    char *hostname;
    uint64_t max_message_size;
    int max_recipients;
    int idle_timeout;
    int data_timeout;
    int workers;
    int max_line_length;
    int max_text_line_length;
    int max_bad_commands;
    int bare_newline;
    int greet_delay;
    int max_sessions;
    uint64_t spool_budget;
    int drain_timeout;
    int drain_grace;
    char *proxy_protocol_from;
    int proxy_timeout;
    int starttls;

    /* [tls] */
    char *tls_cert;
    char *tls_key;
    char *tls_ciphers;
    char *tls_ciphersuites;
    int tls_min_version;
    char *tls_ticket_keys;
    int tls_handshake_timeout;

    /* [backend] */
    char *backend_servers;
    int forward;
    char *helo_name;
    int connect_timeout;
    int command_timeout;
    int backend_data_timeout;
    int dot_timeout;
    int health_interval;
    int backend_pool_size;
    int backend_pool_idle;
    int backend_starttls;
    int backend_tls_verify;
    char *backend_tls_ca;

    /* [clamav] */
    int clamav_enabled;
    char *clamav_database;
    char *clamav_tmpdir;
    int clamav_threads;
    int clamav_max_pending;
    uint64_t clamav_max_scan_size;
    uint64_t clamav_max_file_size;
    int clamav_max_recursion;
    int clamav_max_files;
    int clamav_max_scan_time;
    int clamav_alert_exceeds_max;
    int clamav_scan_html;
    int clamav_phishing_urls;
    int clamav_on_error;
    int clamav_add_header;
    int clamav_canary_interval;
    int clamav_watch_interval;

    /* [cluster] */
    char *cluster_memcached;
    char *cluster_key_file;
    int cluster_timeout;
    int cluster_dead_timeout;
    int cluster_breaker_failures;
    int cluster_breaker_cooldown;
    int cluster_threads;
    uint64_t cluster_embedded_max;
    int cluster_cache_ttl;
    int cluster_generation_poll;
    int cluster_client_concurrency;
    int cluster_lease_period;

    /* [reputation] */
    int rep_enabled;
    int rep_connect_reject;
    int rep_mail_reject;
    int rep_tempfail;
    int rep_penalty_malware;
    int rep_penalty_ratelimit;
    int rep_penalty_pregreet;
    int rep_penalty_unknown_rcpt;
    int rep_credit_delivered;
    int rep_decay;
    int rep_history;

    /* [domains], [networks] */
    char *local_domains;
    char *internal_networks;

    /* [report] */
    int report_days;
    int report_trace_ttl;

    /* [admin] */
    char *admin_listen;

    /* [log] */
    int log_level;

    /* derived */
    mx_listen *listens;
    int nlistens;
    mx_addr *backends;
    int nbackends;
    mx_addr admin;     /* admin.len == 0: disabled */
    mx_net *proxy_nets; /* smtp.proxy_protocol_from */
    int nproxy_nets;
    mx_net *internal_nets; /* networks.internal */
    int ninternal_nets;
    char **local_list;  /* domains.local, lowercased; NULL-terminated */
    struct mx_tls *tls_server; /* NULL: no certificate configured */
    struct mx_tls *tls_client; /* NULL: backend.starttls = none */
    char *source_file; /* NULL when running on embedded defaults */
    mx_rl_rule *rules; /* [ratelimit:NAME] groups, in name order */
    int nrules;
    GHashTable *rl_raw; /* name -> (key -> value) as read, until derived */
} mx_config;

/*
 * Build a config from file (NULL: embedded defaults only) and overrides
 * ("section.key=value" strings, NULL-terminated, may be NULL). On error
 * returns NULL and sets *err to a message naming the file, key and value.
 */
mx_config *mx_config_load(const char *file, char **overrides, char **err);

mx_config *mx_config_ref(mx_config *c);
void mx_config_unref(mx_config *c);

/* Print every option as "section.key = default  # doc" (for --options). */
void mx_config_dump_options(FILE *out);

/* Is domain one of domains.local (or is that list empty)? */
int mx_config_domain_is_local(const mx_config *c, const char *domain);

/* Is the address in one of the networks? */
int mx_config_net_match(const mx_net *nets, int n, const struct sockaddr_storage *sa);

/* Parse "ADDR:PORT" / "[V6]:PORT" into *a; returns 0 on success. */
int mx_config_parse_addr(const char *s, mx_addr *a, char **err);

#endif
