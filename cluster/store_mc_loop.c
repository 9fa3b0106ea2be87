/*
 * store_mc_loop.c: what an event loop needs to move rate-limit counters
 * on memcached itself (see store.h, mx_store_loop_*): where a key goes,
 * whether its server's breaker is closed, how a call went, and a new
 * connection (blocking: made on a store thread).
 *
 * A round trip made by a store thread puts that thread to sleep in poll()
 * and wakes it for the reply: on a busy node those two context switches
 * per round trip cost the gateway more CPU than the round trip itself.
 * A loop that sends the increments and reads the replies with its other
 * events costs none. Everything here is computation and atomics: nothing
 * blocks but mx_store_loop_connect.
 */
#include <string.h>

#include "mc_pipe.h"
#include "store_mc_int.h"

static mc_store *as_mc(mx_store *s)
{
    return s && mc_is(s) ? (mc_store *)s : NULL;
}

int mx_store_loop_servers(mx_store *s)
{
    mc_store *m = as_mc(s);
    return m ? m->nbr : 0;
}

void mx_store_loop_route(mx_store *s, const char *const *keys, size_t n,
                         char (*wire)[MX_STORE_WIRE_KEY], int *server)
{
    mc_store *m = as_mc(s);
    if (m) {
        mc_place(m, keys, n, wire, server); /* placement only: no I/O */
        return;
    }
    for (size_t i = 0; i < n; i++)
        server[i] = -1;
}

int mx_store_loop_ready(mx_store *s, int server)
{
    mc_store *m = as_mc(s);
    /* closed only: a half-open breaker's probe is the store threads' */
    return m && server >= 0 && server < m->nbr && atomic_load(&m->br[server].open_until) == 0;
}

void mx_store_loop_result(mx_store *s, int server, int ok)
{
    mc_store *m = as_mc(s);
    if (m && server >= 0 && server < m->nbr)
        mc_breaker_result(m, &m->br[server], ok);
}

int mx_store_loop_connect(mx_store *s, int server, char **err)
{
    mc_store *m = as_mc(s);
    if (!m || server < 0 || server >= m->nbr) {
        *err = g_strdup("no such server");
        return -1;
    }
    return mx_mc_connect(m->br[server].host, m->br[server].port, m->timeout_ms, err);
}

const char *mx_store_loop_server_name(mx_store *s, int server, int *port)
{
    mc_store *m = as_mc(s);
    if (!m || server < 0 || server >= m->nbr)
        return NULL;
    *port = m->br[server].port;
    return m->br[server].host;
}

int mx_store_loop_timeout_ms(mx_store *s)
{
    mc_store *m = as_mc(s);
    return m ? m->timeout_ms : 0;
}

void mx_store_loop_sent(mx_store *s, uint64_t round_trips, uint64_t commands)
{
    mc_store *m = as_mc(s);
    if (m)
        mc_sent(m, round_trips, commands);
}
