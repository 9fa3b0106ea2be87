/*
 * replies.h: every reply text mxgate itself produces, in one table.
 *
 * Owns: codes, enhanced codes (RFC 3463) and texts. Tests assert on ids; an
 * operator can grep every reply here. Replies relayed from the backend are
 * not here: they pass through mx_replies_relay, which only adds a missing
 * enhanced status code.
 */
#ifndef MX_REPLIES_H
#define MX_REPLIES_H

#include <glib.h>

#include "reply_parse.h"

typedef enum {
    MX_R_GREETING,
    MX_R_HELO,
    MX_R_OK,
    MX_R_QUIT,
    MX_R_VRFY,
    MX_R_HELP,
    MX_R_DATA_GO,
    MX_R_BDAT_OK,
    MX_R_PREGREET,
    MX_R_UNKNOWN,
    MX_R_BAD_CHAR,
    MX_R_LINE_TOO_LONG,
    MX_R_NONSMTP,
    MX_R_SYNTAX,
    MX_R_BAD_SENDER,
    MX_R_BAD_RCPT,
    MX_R_BAD_PARAM,
    MX_R_NOT_IMPL,
    MX_R_NEED_HELO,
    MX_R_NESTED_MAIL,
    MX_R_NEED_MAIL,
    MX_R_NEED_RCPT,
    MX_R_NO_VALID_RCPT,
    MX_R_BDAT_MIX,
    MX_R_BDAT_FAILED,
    MX_R_TOO_MANY_RCPT,
    MX_R_SIZE_DECLARED,
    MX_R_SIZE_EXCEEDED,
    MX_R_UTF8_NEEDED,
    MX_R_BARE_NEWLINE,
    MX_R_NUL,
    MX_R_LONG_LINE,
    MX_R_SPOOL_FULL,
    MX_R_TOO_MANY_ERRORS,
    MX_R_TIMEOUT,
    MX_R_SHUTDOWN,
    MX_R_TOO_MANY_SESSIONS,
    MX_R_BACKEND_DOWN,
    MX_R_BACKEND_LOST,
    MX_R_BACKEND_PROTO,
    MX_R_BACKEND_TIMEOUT,
    MX_R_TLS_GO,
    MX_R_TLS_ACTIVE,
    MX_R_TXN_IN_PROGRESS,
    MX_R_MALWARE,
    MX_R_SCAN_FAILED,
    MX_R_SCANNER_BUSY,
    MX_R_SCANNER_DOWN,
    MX_R_REP_CONNECT,
    MX_R_REP_MAIL,
    MX_R_REP_TEMP,
    MX_R_RATE_CONNECT,
    MX_R_RATE_TEMP,
    MX_R_RATE_REJECT,
    MX_R_STORE_DOWN_CONNECT,
    MX_R_STORE_DOWN,
    MX_R_CONCURRENCY,
    MX_R_RELAY_DENIED,
    MX_R__COUNT
} mx_reply_id;

/* Append reply id, with its one %s filled by arg (may be NULL), as wire
 * text ending in CRLF. A 4xx or 5xx ends with " [id TRACE]" when trace is
 * not NULL: the id `mxgatectl explain` takes, so a sender who calls can
 * be answered. */
void mx_replies_format(GString *out, mx_reply_id id, const char *arg, const char *trace);

/* The reply's code (for logs and outcome classes). */
int mx_replies_code(mx_reply_id id);

/* Append a backend reply as wire text, adding "X.0.0 " to lines without an
 * enhanced status code, since we advertise ENHANCEDSTATUSCODES. */
void mx_replies_relay(GString *out, const mx_reply *r);

#endif
