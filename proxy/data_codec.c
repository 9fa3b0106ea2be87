/*
 * data_codec.c: the DATA/BDAT decoder and the DATA encoder.
 *
 * Owns: the byte state machine that decides where a client's DATA ends and
 * what canonical bytes it carried, and the dot-stuffing for the backend.
 * Promises: the anti-smuggling contract in data_codec.h. The decoder looks
 * at every byte exactly once, never allocates, and hands out plain text as
 * runs that point into the caller's input.
 * Not here: size limits, spooling, the reply to a flagged message.
 *
 * Why a state machine and not "search for \r\n.\r\n": SMTP smuggling
 * (CVE-2023-51764/51765/51766) works because sender and receiver disagree
 * on which byte sequence ends DATA. Here exactly one sequence does, and a
 * line that began at a bare CR or LF we normalised is marked (BOL_SOFT) so
 * its '.' can never be read as the start of that sequence.
 */
#include "data_codec.h"

#include <string.h>

enum {
    ST_BOL,      /* after a real CRLF, or at the start: a '.' is special */
    ST_BOL_SOFT, /* after a normalised bare CR/LF: a '.' is plain content */
    ST_DOT,      /* ST_BOL then '.': a stuffed dot or the end sequence */
    ST_DOTCR,    /* ST_DOT then CR: one LF away from the end */
    ST_TEXT,     /* inside a line */
    ST_CR,       /* a CR ended the previous span; the next byte says what it was */
    ST_END,      /* the end sequence was seen; nothing more is ours */
};

/* Bytes that interrupt a run of plain text. */
static const unsigned char special[256] = {
    ['\0'] = 1,
    ['\n'] = 1,
    ['\r'] = 1,
};

typedef struct sink {
    mx_data_dec *d;
    mx_emit_fn emit;
    void *ctx;
} sink;

static void put(sink *o, const char *p, size_t len)
{
    if (len == 0)
        return;
    o->d->out_bytes += len;
    o->emit(o->ctx, p, len);
}

static void grow_line(mx_data_dec *d, size_t n)
{
    d->line_len += n;
    if (d->max_line != 0 && d->line_len > d->max_line)
        d->flags |= MX_DATA_LONG_LINE;
}

static void end_line(mx_data_dec *d)
{
    d->lines++;
    d->line_len = 0;
}

/*
 * A bare CR or LF. Never passed through: some MTAs read it as a line end,
 * others as content, and that disagreement is the smuggling. With normalize
 * it becomes CRLF; without, the caller will reject the message, and a SP
 * stands in so the output stays canonical and out_bytes still grows with
 * the input (a stream of bare LFs must not slip under the size limit).
 */
static void soft_newline(sink *o, unsigned flag)
{
    mx_data_dec *d = o->d;

    d->flags |= flag;
    if (d->normalize) {
        put(o, "\r\n", 2);
        end_line(d);
    } else {
        put(o, " ", 1);
        grow_line(d, 1);
    }
}

void mx_data_dec_init(mx_data_dec *d, int bdat, int normalize, size_t max_line)
{
    memset(d, 0, sizeof(*d));
    /* RFC 5321 4.1.1.4: the CRLF ending the DATA command counts, so an
     * immediate ".\r\n" is an empty message. */
    d->state = ST_BOL;
    d->bdat = bdat;
    d->normalize = normalize;
    d->max_line = max_line;
}

mx_rc mx_data_decode(mx_data_dec *d, const char *p, const char *end, size_t *used,
                     mx_emit_fn emit, void *ctx)
{
    sink o = { d, emit, ctx };
    const char *q = p;
    const char *run = p; /* input from here to q goes out verbatim */

    if (d->state == ST_END) {
        *used = 0;
        return MX_DONE;
    }

    while (q < end) {
        switch (d->state) {
        case ST_BOL:
            if (*q == '.' && !d->bdat) {
                put(&o, run, (size_t)(q - run));
                run = ++q;
                d->state = ST_DOT;
                break;
            }
            d->state = ST_TEXT;
            break;

        case ST_DOT:
            if (*q == '\r') {
                run = ++q;
                d->state = ST_DOTCR;
                break;
            }
            /*
             * RFC 5321 4.5.2 removes the dot only when "there are other
             * characters on the line". A "." ended by a bare LF has none:
             * it is a would-be terminator, kept as a content line ".".
             */
            if (*q == '\n') {
                put(&o, ".", 1);
                grow_line(d, 1);
            }
            d->state = ST_TEXT;
            break;

        case ST_DOTCR:
            if (*q == '\n') {
                d->state = ST_END;
                *used = (size_t)(q + 1 - p);
                return MX_DONE;
            }
            /* ".<CR>x": the CR is bare, so the line was "." (see ST_DOT). */
            put(&o, ".", 1);
            grow_line(d, 1);
            soft_newline(&o, MX_DATA_BARE_CR);
            d->state = ST_BOL_SOFT;
            break;

        case ST_CR:
            if (*q == '\n') {
                put(&o, "\r\n", 2);
                end_line(d);
                run = ++q;
                d->state = ST_BOL;
                break;
            }
            soft_newline(&o, MX_DATA_BARE_CR);
            d->state = ST_BOL_SOFT;
            break;

        case ST_BOL_SOFT: /* a '.' here is content: nothing to look for */
        case ST_TEXT: {
            const char *s = q;

            while (q < end && !special[(unsigned char)*q])
                q++;
            grow_line(d, (size_t)(q - s));
            if (q == end)
                break;
            if (*q == '\r') {
                if (q + 1 == end) {
                    /* Can't tell yet whether it is a line end: hold it. */
                    put(&o, run, (size_t)(q - run));
                    run = ++q;
                    d->state = ST_CR;
                    break;
                }
                if (q[1] == '\n') {
                    /* A real line end: stays in the run. */
                    q += 2;
                    end_line(d);
                    d->state = ST_BOL;
                    break;
                }
                put(&o, run, (size_t)(q - run));
                run = ++q;
                soft_newline(&o, MX_DATA_BARE_CR);
                d->state = ST_BOL_SOFT;
                break;
            }
            put(&o, run, (size_t)(q - run));
            run = q + 1;
            if (*q++ == '\n') {
                soft_newline(&o, MX_DATA_BARE_LF);
                d->state = ST_BOL_SOFT;
            } else {
                /* NUL: dropped. The line is no longer at its start, so
                 * "<CRLF><NUL>.<CRLF>" can not end DATA. */
                d->flags |= MX_DATA_NUL;
                d->state = ST_TEXT;
            }
            break;
        }

        default: /* ST_END is handled above */
            break;
        }
    }
    put(&o, run, (size_t)(end - run));
    *used = (size_t)(end - p);
    return MX_AGAIN;
}

void mx_data_dec_finish(mx_data_dec *d, mx_emit_fn emit, void *ctx)
{
    sink o = { d, emit, ctx };

    switch (d->state) {
    case ST_CR:
        soft_newline(&o, MX_DATA_BARE_CR);
        d->state = ST_BOL_SOFT;
        break;
    case ST_DOTCR: /* DATA cut short after "<CRLF>.<CR>": as in decode */
        put(&o, ".", 1);
        grow_line(d, 1);
        soft_newline(&o, MX_DATA_BARE_CR);
        d->state = ST_BOL_SOFT;
        break;
    default:
        break;
    }
}

void mx_data_enc_init(mx_data_enc *e)
{
    e->bol = 1;
}

/*
 * A line starts after every LF, bare or not, so even non-canonical input
 * can never produce "<CRLF>.<CRLF>" before mx_data_encode_finish.
 */
void mx_data_encode(mx_data_enc *e, const char *p, const char *end, mx_emit_fn emit, void *ctx)
{
    const char *run = p;
    const char *q = p;

    if (p == end)
        return;
    if (e->bol && *q == '.') {
        emit(ctx, ".", 1);
    }
    while (q < end) {
        const char *nl = memchr(q, '\n', (size_t)(end - q));

        if (nl == NULL)
            break;
        q = nl + 1;
        if (q < end && *q == '.') {
            emit(ctx, run, (size_t)(q - run));
            emit(ctx, ".", 1);
            run = q;
        }
    }
    emit(ctx, run, (size_t)(end - run));
    e->bol = end[-1] == '\n';
}

void mx_data_encode_finish(mx_data_enc *e, mx_emit_fn emit, void *ctx)
{
    if (!e->bol)
        emit(ctx, "\r\n.\r\n", 5);
    else
        emit(ctx, ".\r\n", 3);
    e->bol = 1;
}
