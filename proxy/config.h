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

typedef struct mx_addr {
    struct sockaddr_storage sa;
    socklen_t len;
    char *text; /* as configured, for logs */
} mx_addr;

typedef struct mx_listen {
    mx_addr addr;
    int proxy_protocol; /* require a PROXY v1/v2 header first */
    int tls;            /* implicit TLS (port 465 style) */
} mx_listen;

enum { MX_FORWARD_XCLIENT, MX_FORWARD_XFORWARD, MX_FORWARD_PROXY, MX_FORWARD_NONE };
enum { MX_BARE_NORMALIZE, MX_BARE_REJECT };
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
    char *source_file; /* NULL when running on embedded defaults */
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

/* Parse "ADDR:PORT" / "[V6]:PORT" into *a; returns 0 on success. */
int mx_config_parse_addr(const char *s, mx_addr *a, char **err);

#endif
