/*
 * buf.h: the one buffer type for bytes on the wire.
 *
 * A fixed-capacity window [start, end) with unread bytes in [pos, last).
 * A full buffer is a protocol decision for the caller (reply "line too long",
 * stop reading until drained), never a realloc.
 */
#ifndef MX_BUF_H
#define MX_BUF_H

#include <string.h>

#include <glib.h>

typedef struct mx_buf {
    char *start;
    char *pos;  /* next byte to consume */
    char *last; /* one past the last byte filled */
    char *end;
} mx_buf;

static inline void mx_buf_alloc(mx_buf *b, size_t cap)
{
    b->start = b->pos = b->last = g_malloc(cap);
    b->end = b->start + cap;
}

static inline void mx_buf_free(mx_buf *b)
{
    g_free(b->start);
    b->start = b->pos = b->last = b->end = NULL;
}

static inline size_t mx_buf_used(const mx_buf *b) { return (size_t)(b->last - b->pos); }
static inline size_t mx_buf_room(const mx_buf *b) { return (size_t)(b->end - b->last); }

/* Move unread bytes to the front so the room is contiguous. */
static inline void mx_buf_compact(mx_buf *b)
{
    size_t n = mx_buf_used(b);
    if (b->pos != b->start) {
        memmove(b->start, b->pos, n);
        b->pos = b->start;
        b->last = b->start + n;
    }
}

static inline void mx_buf_reset(mx_buf *b) { b->pos = b->last = b->start; }

/* Append; returns 0 when it does not fit (nothing is written then). */
static inline int mx_buf_put(mx_buf *b, const void *p, size_t n)
{
    if (mx_buf_room(b) < n) {
        mx_buf_compact(b);
        if (mx_buf_room(b) < n)
            return 0;
    }
    memcpy(b->last, p, n);
    b->last += n;
    return 1;
}

#endif
