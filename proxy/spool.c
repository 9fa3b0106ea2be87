/*
 * spool.c: see spool.h.
 *
 * Blocks grow from 4 KiB to 64 KiB so a typical 2-10 KB message costs one or
 * two allocations, and a large one does not pay for a realloc-and-copy.
 */
#include <string.h>

#include "spool.h"

struct mx_spool_block {
    mx_spool_block *next;
    size_t len, cap;
    char data[];
};

#define BLOCK_MIN 4096
#define BLOCK_MAX 65536

void mx_spool_init(mx_spool *s, uint64_t limit, mx_spool_budget *budget)
{
    memset(s, 0, sizeof(*s));
    s->limit = limit;
    s->budget = budget;
}

static mx_spool_block *grow(mx_spool *s, size_t want)
{
    size_t cap = s->tail ? s->tail->cap * 2 : BLOCK_MIN;
    if (cap > BLOCK_MAX)
        cap = BLOCK_MAX;
    if (cap < want && want <= BLOCK_MAX)
        cap = BLOCK_MAX;
    if (s->budget) {
        int64_t after = atomic_fetch_add(&s->budget->used, (int64_t)cap) + (int64_t)cap;
        if (after > s->budget->limit) {
            atomic_fetch_sub(&s->budget->used, (int64_t)cap);
            s->over_budget = 1;
            return NULL;
        }
        s->charged += (int64_t)cap;
    }
    mx_spool_block *b = g_malloc(sizeof(*b) + cap);
    b->next = NULL;
    b->len = 0;
    b->cap = cap;
    if (s->tail)
        s->tail->next = b;
    else
        s->head = b;
    s->tail = b;
    return b;
}

void mx_spool_append(mx_spool *s, const char *p, size_t len)
{
    s->size += len;
    if (s->size > s->limit)
        s->over_limit = 1;
    if (s->over_limit || s->over_budget)
        return;
    while (len > 0) {
        mx_spool_block *b = s->tail;
        if (!b || b->len == b->cap) {
            b = grow(s, len);
            if (!b)
                return;
        }
        size_t n = b->cap - b->len;
        if (n > len)
            n = len;
        memcpy(b->data + b->len, p, n);
        b->len += n;
        s->kept += n;
        p += n;
        len -= n;
    }
}

void mx_spool_emit(void *ctx, const char *p, size_t len) { mx_spool_append(ctx, p, len); }

void mx_spool_free(mx_spool *s)
{
    mx_spool_block *b = s->head;
    while (b) {
        mx_spool_block *n = b->next;
        g_free(b);
        b = n;
    }
    if (s->budget && s->charged)
        atomic_fetch_sub(&s->budget->used, s->charged);
    s->head = s->tail = NULL;
    s->size = s->kept = 0;
    s->charged = 0;
    s->over_limit = s->over_budget = 0;
}

int mx_spool_next(const mx_spool *s, const mx_spool_block **cursor, const char **p, size_t *len)
{
    const mx_spool_block *b = *cursor ? (*cursor)->next : s->head;
    while (b && b->len == 0)
        b = b->next;
    if (!b)
        return 0;
    *cursor = b;
    *p = b->data;
    *len = b->len;
    return 1;
}
