/*
 * mxdefs.h: the small vocabulary every mxgate module shares.
 *
 * Owns: the return codes and the byte-span type. Nothing else belongs here;
 * this is not an umbrella header.
 */
#ifndef MX_MXDEFS_H
#define MX_MXDEFS_H

#include <stddef.h>

typedef enum {
    MX_OK = 0,
    MX_ERROR = -1,
    MX_AGAIN = -2, /* need more input, or would block */
    MX_EOF = -3,   /* peer closed */
    MX_DONE = -4,  /* a complete unit (line, reply, message) was recognised */
} mx_rc;

/* A view into someone else's bytes; never owns them, never NUL-terminated. */
typedef struct mx_span {
    const char *p;
    size_t len;
} mx_span;

/* Sink for codec output: called with runs of bytes, never with len == 0. */
typedef void (*mx_emit_fn)(void *ctx, const char *p, size_t len);

#endif
