/*
 * data_codec.h: the message-content codecs.
 *
 * Owns: decoding what a client sends after DATA (or inside BDAT chunks) into
 * canonical message bytes, and encoding canonical bytes for the backend's
 * DATA phase. Pure and resumable: state lives in the struct, input may be
 * split at any byte, output goes to an mx_emit_fn in runs.
 *
 * Promises (the anti-smuggling contract, RFC 5321 2.3.8 and 4.1.1.4):
 *  - Only <CR><LF>.<CR><LF> ends DATA. The start of the data counts as just
 *    after a <CR><LF> (the one ending the DATA command).
 *  - A bare LF or bare CR never reaches the output as such. With
 *    normalize=1 it is emitted as <CR><LF>; a line begun by such a
 *    normalised newline can NOT start the end sequence, so <LF>.<LF>,
 *    <CR>.<CR>, <LF>.<CR><LF>, <CR><LF>.<LF> and <CR><LF>.<CR> followed by
 *    anything are all content, never the end. With normalize=0 the flag is
 *    set, a SP stands in for the byte (so out_bytes still grows), and the
 *    caller rejects the message once the real end arrives.
 *  - NUL bytes are dropped from the output and flagged.
 *  - Output is un-dot-stuffed: a leading "." on a line that began after a
 *    real <CR><LF> is removed (RFC 5321 4.5.2).
 *  - Every output line ends in <CR><LF>, except possibly the last of a BDAT
 *    message (which mx_data_encode_finish terminates).
 * Not here: size limits (the caller counts d->out_bytes), spooling.
 */
#ifndef MX_DATA_CODEC_H
#define MX_DATA_CODEC_H

#include <stdint.h>

#include "mxdefs.h"

enum {
    MX_DATA_BARE_LF = 1u << 0,
    MX_DATA_BARE_CR = 1u << 1,
    MX_DATA_NUL = 1u << 2,
    MX_DATA_LONG_LINE = 1u << 3, /* a line exceeded max_line (without CRLF) */
};

typedef struct mx_data_dec {
    int state;         /* private */
    int bdat;          /* 1: no dot handling, no end detection (RFC 3030) */
    int normalize;     /* 1: bare CR/LF become CRLF; 0: flagged only */
    unsigned flags;    /* MX_DATA_* seen so far */
    size_t max_line;   /* 0 = unlimited */
    size_t line_len;   /* private: octets on the current output line */
    uint64_t out_bytes;/* total octets emitted */
    uint64_t lines;    /* complete lines emitted */
} mx_data_dec;

void mx_data_dec_init(mx_data_dec *d, int bdat, int normalize, size_t max_line);

/*
 * Decode [p, end). Returns MX_DONE when the end of DATA was recognised; then
 * *used is the number of input bytes that belonged to the message, end
 * sequence included, and the rest is the client's next command. Otherwise
 * returns MX_AGAIN with *used = end - p. In BDAT mode never returns MX_DONE.
 */
mx_rc mx_data_decode(mx_data_dec *d, const char *p, const char *end, size_t *used,
                     mx_emit_fn emit, void *ctx);

/* BDAT LAST: flush a CR held back at the end of the last chunk. */
void mx_data_dec_finish(mx_data_dec *d, mx_emit_fn emit, void *ctx);

typedef struct mx_data_enc {
    int bol; /* at the start of a line */
} mx_data_enc;

void mx_data_enc_init(mx_data_enc *e);

/* Dot-stuff canonical message bytes for a DATA phase (RFC 5321 4.5.2). */
void mx_data_encode(mx_data_enc *e, const char *p, const char *end, mx_emit_fn emit, void *ctx);

/* Terminate: add CRLF if the message did not end with one, then ".\r\n". */
void mx_data_encode_finish(mx_data_enc *e, mx_emit_fn emit, void *ctx);

#endif
