/*
 * reply_parse.h: the parser for replies from the backend MTA (RFC 5321 4.2).
 *
 * Owns: assembling one complete, possibly multi-line, reply from a byte
 * stream split anywhere. Pure and bounded: at most MX_REPLY_MAX_LINES lines
 * of at most MX_REPLY_MAX_LINE octets each; no I/O, no logging.
 * Not here: what a reply means for the session (relay.c decides).
 *
 * "Out of protocol" is an error, never a guess: a code outside 200..599,
 * a separator other than SP/'-' (or end of line), lines of one reply with
 * different codes, a NUL or bare CR, an over-long line or too many lines.
 * The caller answers the client with a 4xx when it sees MX_ERROR.
 */
#ifndef MX_REPLY_PARSE_H
#define MX_REPLY_PARSE_H

#include "mxdefs.h"

#define MX_REPLY_MAX_LINES 64
#define MX_REPLY_MAX_LINE 1024 /* octets, code included, CRLF excluded */
/* and the text of all lines together fits in mx_reply.text (else MX_ERROR) */

typedef struct mx_reply {
    int code;                /* 200..599 */
    int nlines;
    /* Each line's text after "ddd-"/"ddd " (may be empty), NUL-terminated,
     * stored back to back in text[]; line i starts at text + off[i]. */
    unsigned short off[MX_REPLY_MAX_LINES];
    unsigned short len[MX_REPLY_MAX_LINES];
    char text[MX_REPLY_MAX_LINES * 128];
    size_t text_used;
} mx_reply;

typedef struct mx_reply_parser {
    mx_reply r;              /* the reply being assembled / just completed */
    char line[MX_REPLY_MAX_LINE];
    size_t line_len;         /* private */
    int cr;                  /* private: previous byte was CR */
    int phase;               /* private: assembling, complete (r is reset by the
                                next byte) or failed (every later call fails) */
} mx_reply_parser;

void mx_reply_parser_init(mx_reply_parser *rp);

/*
 * Consume bytes from [p, end). Returns MX_DONE when a complete reply is in
 * rp->r (*used says how many bytes were consumed; call again with the rest
 * for the next reply, which resets rp->r first), MX_AGAIN when all input was
 * consumed without completing one, MX_ERROR with *why on a protocol error.
 */
mx_rc mx_reply_parse(mx_reply_parser *rp, const char *p, const char *end, size_t *used,
                     const char **why);

/* Line i of the reply's text (0-based), NUL-terminated. */
const char *mx_reply_line(const mx_reply *r, int i);

/*
 * For an EHLO reply: find extension keyword kw (case-insensitive) among
 * lines 1..n-1; returns 1 and its parameters (possibly empty) in *params,
 * else 0.
 */
int mx_reply_has_ext(const mx_reply *r, const char *kw, mx_span *params);

/* The "x.y.z" enhanced status code (RFC 3463) at the start of line i, if
 * any; its class must match the reply code's. */
int mx_reply_enhanced(const mx_reply *r, int i, mx_span *esc);

#endif
