/*
 * cntq.h: rate-limit counters moved on memcached from a worker's event loop.
 *
 * Owns: one non-blocking connection per memcached server for its loop,
 * the increments sent on it and the replies read from it with the loop's
 * other events. While a batch is out, new increments for that server wait
 * and go together in the next one (memcached answers in order).
 *
 * Why: a store thread that makes a round trip sleeps in poll() and is
 * woken for the reply, two context switches per round trip, which on a
 * busy node cost more than the round trip. The loop is awake anyway.
 *
 * Only what is simple to do without blocking is done here: "incr" of
 * counters that exist, on servers whose breaker is closed and whose
 * connection is up. Each key comes back as one of:
 *   MX_CNT_OK      counted; val is the value after
 *   MX_CNT_ABSENT  the counter does not exist yet (a new window): nothing
 *                  was counted; the caller counts it on a store thread,
 *                  which creates it with its expiry
 *   MX_CNT_RETRY   nothing was counted (no connection, the server closed
 *                  it, an odd reply): the caller counts it on a store thread
 *   MX_CNT_FAILED  no reply within the store's timeout: the server may or
 *                  may not have counted it, as with the store's own calls;
 *                  the breaker has been told
 * Loop thread only.
 */
#ifndef MX_CNTQ_H
#define MX_CNTQ_H

#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "offload.h"
#include "store.h"

typedef enum { MX_CNT_OK, MX_CNT_ABSENT, MX_CNT_RETRY, MX_CNT_FAILED } mx_cnt_rc;

typedef struct mx_cntq mx_cntq;

/* rc[i], val[i] for key i; both live until the callback returns. */
typedef void (*mx_cnt_cb)(void *ctx, const mx_cnt_rc *rc, const uint64_t *val);

/* NULL when the store is not memcached. Connections are made on pool
 * (blocking), finishing on port's loop. */
mx_cntq *mx_cntq_new(struct ev_loop *loop, mx_store *store, mx_offload *pool,
                     mx_offload_port *port);
/* After the loop has ended, and with no connection being made (the worker
 * waits for mx_cntq_pending to reach 0): a call still out gets
 * MX_CNT_FAILED. */
void mx_cntq_free(mx_cntq *q);
/* Increments sent or waiting, whose callbacks have not run. */
int mx_cntq_pending(const mx_cntq *q);

/*
 * Add delta[i] to each of the n counters keys[i] (logical keys, as given
 * to mx_store_incr). Returns 0 when under way (cb runs later on the loop,
 * never from inside this call), -1 when the loop cannot do it now (a
 * server's breaker is not closed, or it has no connection yet: one is
 * being made): nothing was sent, and the caller uses a store thread.
 */
int mx_cntq_incr(mx_cntq *q, const char *const *keys, const uint64_t *delta, size_t n,
                 mx_cnt_cb cb, void *ctx);

#endif
