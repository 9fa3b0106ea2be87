/*
 * trace.h: the decision record of one transaction, and how it reads.
 *
 * Owns: the record being built while a transaction runs (client facts,
 * each rule evaluated with its counter before and after, each reputation
 * record read, the scanner's verdict, the backend's reply, the final
 * reply), its stored form (proto/mxgate.proto Trace, under
 * "trace:<id>"), and the text and JSON that `mxgatectl explain ID`
 * prints. Built on the event loop and by policy jobs on store threads:
 * every call takes the record's lock. Knows no sessions.
 */
#ifndef MX_TRACE_H
#define MX_TRACE_H

#include <stdint.h>

#include <glib.h>

#include "store.h"

typedef struct mx_trace mx_trace;

typedef enum {
    MX_TF_CLIENT,         /* address as the gateway saw it (PROXY, connection) */
    MX_TF_HELO,
    MX_TF_TLS,            /* "none" or "TLSv1.3 TLS_AES_256_GCM_SHA384" */
    MX_TF_SENDER,
    MX_TF_SCAN_VERDICT,   /* clean, infected, error */
    MX_TF_SCAN_SIGNATURE, /* the signature name, or why the scan failed */
    MX_TF_SCAN_ENGINE,    /* engine and signature version */
    MX_TF_BACKEND_REPLY,  /* the backend's reply to the message */
    MX_TF_FINAL_REPLY,    /* what the client was told last */
    MX_TF_DIRECTION,
    MX_TF_OUTCOME,
    MX_TF_WHY,            /* the rule or record that decided, in the log's words */
} mx_trace_field;

/* id: the trace id; sid: the session's; node: this node's name. */
mx_trace *mx_trace_new(const char *id, const char *sid, const char *node, int64_t started_unix);
mx_trace *mx_trace_ref(mx_trace *t);
void mx_trace_unref(mx_trace *t);
const char *mx_trace_id(const mx_trace *t);

/* Set a field (NULL clears it); the value is copied. Values are stored as
 * given; explain makes them printable. */
void mx_trace_set(mx_trace *t, mx_trace_field f, const char *value);
void mx_trace_rcpt(mx_trace *t, const char *address, const char *direction, const char *outcome,
                   const char *reply);
void mx_trace_rule(mx_trace *t, const char *stage, const char *name, const char *key,
                   const char *count, const char *input, uint64_t before, uint64_t after,
                   uint64_t limit, const char *verdict);
void mx_trace_rep(mx_trace *t, const char *stage, const char *key, int found, int32_t score,
                  int block, int allow, const char *source, uint64_t age_seconds);
/* Copy src's rules and reputation reads into dst (the connection's checks
 * into each of its transactions' records). */
void mx_trace_adopt(mx_trace *dst, mx_trace *src);

/* The stored form. */
GBytes *mx_trace_encode(mx_trace *t, uint64_t duration_ms);
char *mx_trace_key(const char *id);

/* A stored record for people (json = 0) or programs (json = 1), as seen
 * at unix time now. Returns 0, or -1 with *err when data is not a record
 * of a known version. */
int mx_trace_describe(GString *out, const void *data, size_t n, int json, int64_t now,
                      char **err);

/* Read record id from s and describe it: 0; -1 with *err when there is
 * none (or it is unreadable); -2 with *err when the store failed. */
int mx_trace_explain(GString *out, mx_store *s, const char *id, int json, int64_t now,
                     char **err);

#endif
