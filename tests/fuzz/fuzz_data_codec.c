/*
 * fuzz_data_codec.c: libFuzzer target for the DATA/BDAT decoder and the
 * encoder.
 *
 * Input: byte 0 picks the mode (bit 0 BDAT, bit 1 reject instead of
 * normalise, bits 2-7 max_line), bytes 1-2 a split point, the rest is what
 * the client sent. Beyond "no crash", each run checks:
 *  - DATA ends exactly after the first "\r\n.\r\n" of "\r\n" + input, and
 *    nowhere else: the anti-smuggling contract, from an independent oracle;
 *  - split input gives the same result as whole input, and byte by byte too;
 *  - the output never holds a bare CR or LF, the counters match it, and the
 *    flags match their definitions;
 *  - decode(encode(output)) gives the output back, ending in CRLF.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data_codec.h"

#include "fuzz_check.h"

typedef struct obuf {
    char *p;
    size_t len;
    size_t cap;
} obuf;

static void emit_obuf(void *ctx, const char *p, size_t len)
{
    obuf *o = ctx;

    CHECK(len > 0);
    CHECK(o->len + len <= o->cap);
    memcpy(o->p + o->len, p, len);
    o->len += len;
}

typedef struct run {
    mx_rc rc;
    size_t used;
    mx_data_dec d;
    obuf out;
} run;

/*
 * Decode in[0..n) in pieces of at most step bytes, the first piece cut at
 * first_cut. Decoded output is at most twice the input (a bare LF becomes
 * two bytes; a dot kept as "." came with a bare newline that was one).
 */
static void decode(const char *in, size_t n, int bdat, int normalize, size_t max_line,
                   size_t first_cut, size_t step, run *r)
{
    size_t a = 0, b = first_cut;

    mx_data_dec_init(&r->d, bdat, normalize, max_line);
    r->out.cap = 2 * n + 2;
    r->out.p = malloc(r->out.cap);
    r->out.len = 0;
    r->rc = MX_AGAIN;
    r->used = 0;
    for (;;) {
        size_t used = 0;

        r->rc = mx_data_decode(&r->d, in + a, in + b, &used, emit_obuf, &r->out);
        if (r->rc == MX_DONE) {
            CHECK(used <= b - a);
            r->used = a + used;
            break;
        }
        CHECK(r->rc == MX_AGAIN);
        CHECK(used == b - a);
        r->used = b;
        if (b == n)
            break;
        a = b;
        b = n - a > step ? a + step : n;
    }
    if (bdat)
        mx_data_dec_finish(&r->d, emit_obuf, &r->out);
}

static void same(const run *x, const run *y)
{
    CHECK(x->rc == y->rc);
    CHECK(x->used == y->used);
    CHECK(x->d.flags == y->d.flags);
    CHECK(x->d.lines == y->d.lines);
    CHECK(x->out.len == y->out.len);
    CHECK(memcmp(x->out.p, y->out.p, x->out.len) == 0);
}

/* Where DATA must end: just after the first CRLF.CRLF, counting the CRLF
 * of the DATA command; 0 when there is none. */
static size_t oracle_end(const char *in, size_t n)
{
    static const char seq[] = "\r\n.\r\n";

    if (n >= 3 && memcmp(in, ".\r\n", 3) == 0)
        return 3;
    for (size_t i = 0; i + 5 <= n; i++)
        if (memcmp(in + i, seq, 5) == 0)
            return i + 5;
    return 0;
}

static void check_output(const char *in, const run *r, int bdat, size_t max_line)
{
    const char *o = r->out.p;
    size_t len = r->out.len, line = 0;
    uint64_t lines = 0;
    unsigned want = 0;
    int long_line = 0;

    /* canonical: CR only before LF, LF only after CR */
    for (size_t i = 0; i < len; i++) {
        if (o[i] == '\r') {
            CHECK(i + 1 < len && o[i + 1] == '\n');
        } else if (o[i] == '\n') {
            CHECK(i > 0 && o[i - 1] == '\r');
            lines++;
            line = 0;
            continue;
        } else if (o[i] == '\0') {
            abort();
        }
        if (o[i] != '\r' && ++line > max_line && max_line != 0)
            long_line = 1;
    }
    CHECK(r->d.out_bytes == len);
    CHECK(r->d.lines == lines);

    /* flags, from their definitions over the consumed input */
    for (size_t i = 0; i < r->used; i++) {
        if (in[i] == '\0')
            want |= MX_DATA_NUL;
        if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
            want |= MX_DATA_BARE_LF;
        if (in[i] == '\r' && (i + 1 < r->used ? in[i + 1] != '\n' : bdat))
            want |= MX_DATA_BARE_CR;
    }
    if (long_line)
        want |= MX_DATA_LONG_LINE;
    CHECK(r->d.flags == want);
}

static void check_round_trip(const run *r)
{
    obuf enc, back;
    mx_data_enc e;
    mx_data_dec d;
    size_t used = 0;
    const char *o = r->out.p;
    size_t len = r->out.len;
    int crlf_end = len >= 2 && o[len - 2] == '\r' && o[len - 1] == '\n';

    enc.cap = 2 * len + 8;
    enc.p = malloc(enc.cap);
    enc.len = 0;
    mx_data_enc_init(&e);
    /* in two pieces, so the line-start state crosses a call */
    mx_data_encode(&e, o, o + len / 2, emit_obuf, &enc);
    mx_data_encode(&e, o + len / 2, o + len, emit_obuf, &enc);
    mx_data_encode_finish(&e, emit_obuf, &enc);

    back.cap = 2 * enc.len + 2;
    back.p = malloc(back.cap);
    back.len = 0;
    mx_data_dec_init(&d, 0, 1, 0);
    CHECK(mx_data_decode(&d, enc.p, enc.p + enc.len, &used, emit_obuf, &back) == MX_DONE);
    CHECK(used == enc.len);
    CHECK(d.flags == 0);
    if (len == 0 || crlf_end) {
        CHECK(back.len == len);
    } else {
        CHECK(back.len == len + 2);
        CHECK(memcmp(back.p + len, "\r\n", 2) == 0);
    }
    CHECK(memcmp(back.p, o, len) == 0);
    free(enc.p);
    free(back.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in;
    size_t n, cut;
    int bdat, normalize;
    size_t max_line;
    run whole, split, bytes;

    if (size < 3)
        return 0;
    bdat = data[0] & 1;
    normalize = !(data[0] & 2);
    max_line = data[0] >> 2;
    in = (const char *)data + 3;
    n = size - 3;
    cut = ((size_t)data[1] | (size_t)data[2] << 8) % (n + 1);

    decode(in, n, bdat, normalize, max_line, n, n, &whole);
    decode(in, n, bdat, normalize, max_line, cut, n, &split);
    decode(in, n, bdat, normalize, max_line, 0, 1, &bytes);
    same(&whole, &split);
    same(&whole, &bytes);

    if (bdat) {
        CHECK(whole.rc == MX_AGAIN && whole.used == n);
    } else {
        size_t end = oracle_end(in, n);

        CHECK(whole.rc == (end ? MX_DONE : MX_AGAIN));
        CHECK(whole.used == (end ? end : n));
    }
    check_output(in, &whole, bdat, max_line);
    if (bdat || whole.rc == MX_DONE)
        check_round_trip(&whole);

    free(whole.out.p);
    free(split.out.p);
    free(bytes.out.p);
    return 0;
}
