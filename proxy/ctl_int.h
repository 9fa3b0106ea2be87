/*
 * ctl_int.h: what mxgatectl's files share and nothing else uses:
 * mxgatectl.c (the command line, rep, limits, report and explain),
 * ctl_http.c (the store, or the node over HTTP) and ctl_feed.c (feed).
 */
#ifndef MX_CTL_INT_H
#define MX_CTL_INT_H

#include <stddef.h>
#include <sys/socket.h>

#include <glib.h>

#include "config.h"
#include "policy.h"
#include "store.h"

#define THREADS_MAX 64

/* mxgatectl.c: the command line */
typedef struct opts {
    const char *config;
    GPtrArray *overrides;   /* char*, NULL-terminated when used */
    const char *ttl;
    const char *flag;       /* "block", "allow" or NULL */
    const char *reason;
    const char *format;
    const char *since;
    int threads;
    GPtrArray *args;        /* positionals */
} opts;

/* The message and a pointer to --help on stderr; exits with status 2. */
void die_usage(const char *fmt, ...) G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN;

/* ctl_http.c: where the store is, and HTTP to the node */
typedef struct ctl {
    mx_config *cfg;
    mx_policy *policy;      /* memcached: the store's owner */
    mx_store *store;        /* NULL: ask the node over HTTP */
    struct sockaddr_storage node;
    socklen_t node_len;
} ctl;

typedef struct http_reply {
    int status;
    char *body;
    size_t len;
} http_reply;

/* memcached (c->store set), or the node at admin.listen (c->store NULL). */
int open_store(ctl *c, char **err);
/* open_store, saying why it failed: 0, or the exit status 2. */
int open_store_or_say(ctl *c);
/* One request, HTTP/1.0, the reply read to its end. */
int http_call(ctl *c, const char *method, const char *target, const void *body, size_t len,
              http_reply *out, char **err);
/* Appends name=value (escaped) to the query; nothing when value is NULL. */
void query_add(GString *q, const char *name, const char *value);
/* What the node answered to GET target, on stdout (200) or stderr. */
int ask_node(ctl *c, GString *q);

/* ctl_feed.c */
int cmd_feed(ctl *c, opts *o);

#endif
