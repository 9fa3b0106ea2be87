/*
 * spool.h: the bounded in-memory spool of one message.
 *
 * Owns: the decoded message bytes between end of DATA/BDAT and the backend,
 * in a chain of blocks. Promises: never holds more than its limit (the
 * session's max_message_size), and charges every block to a node-wide
 * budget shared by all sessions; past either, further bytes are counted but
 * dropped and the spool says which limit was hit, so the session can still
 * read to the end of the message and then answer 552 or 452.
 * Not here: encoding for the backend (data_codec.c), scanning.
 */
#ifndef MX_SPOOL_H
#define MX_SPOOL_H

#include <stdatomic.h>
#include <stdint.h>

#include <glib.h>

typedef struct mx_spool_budget {
    int64_t limit;        /* bytes */
    _Atomic int64_t used; /* bytes charged by all spools of the node */
} mx_spool_budget;

typedef struct mx_spool_block mx_spool_block;

typedef struct mx_spool {
    mx_spool_block *head, *tail;
    uint64_t size;      /* bytes offered, including dropped ones */
    uint64_t kept;      /* bytes held */
    uint64_t limit;
    int over_limit;     /* size exceeded limit */
    int over_budget;    /* the node-wide budget ran out */
    mx_spool_budget *budget;
    int64_t charged;    /* bytes charged to the budget */
} mx_spool;

void mx_spool_init(mx_spool *s, uint64_t limit, mx_spool_budget *budget);
void mx_spool_append(mx_spool *s, const char *p, size_t len);
/* mx_emit_fn-compatible wrapper: ctx is the mx_spool. */
void mx_spool_emit(void *ctx, const char *p, size_t len);
void mx_spool_free(mx_spool *s); /* releases blocks and budget; reusable after init */

/* Iterate held bytes: *cursor starts NULL; returns 0 when done. */
int mx_spool_next(const mx_spool *s, const mx_spool_block **cursor, const char **p, size_t *len);

#endif
