/*
 * mc_server.h: real memcached servers on loopback for the store tests,
 * started and stopped by them (killed with the test if it dies), and the
 * store and raw clients the tests point at them.
 */
#ifndef MX_TEST_MC_SERVER_H
#define MX_TEST_MC_SERVER_H

#include <stdint.h>

#include <glib.h>
#include <libmemcached/memcached.h>

#include "store.h"

extern const unsigned char KEY[]; /* the cluster key, 32 bytes */

typedef struct server {
    GPid pid;
    int port;                 /* 0: pick a free one; a restart keeps it */
} server;

void server_start(server *s);
void server_stop(server *s);
void wait_stopped(GPid pid);  /* after SIGSTOP: until it really is */
void kill_started(int sig);   /* a signal handler: stop every server started */

/* A memcached store on the first n servers. */
mx_store *store_for(server *sv, int n, int breaker_failures);
/* The memcached key the store derives from a logical key. */
void phys_key(const char *logical, char out[37]);
memcached_st *raw_client(server *sv);
uint64_t items_on(server *sv);
/* The commands the n servers have executed, by their own statistics. */
uint64_t server_commands(server *sv, int n);
void set_many(mx_store *s, char **keys, GBytes **vals, size_t n, int ttl, mx_store_rc *rcs);

#endif
