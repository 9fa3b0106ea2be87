/*
 * fuzz_reply_parse.c: libFuzzer target for the backend reply parser.
 *
 * Input: bytes from the backend; the first two pick a split point. Beyond
 * "no crash", each run checks:
 *  - whole, split and byte-by-byte feeding give the same replies;
 *  - every reply is in range, its lines are NUL-terminated where len says,
 *    and its text fits;
 *  - every completed reply ends in CRLF in the input;
 *  - the lookups (EHLO keywords, enhanced codes) return spans inside the
 *    reply text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reply_parse.h"

#include "fuzz_check.h"

static uint64_t mix(uint64_t h, const void *p, size_t len)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 0x100000001b3ull; /* FNV-1a */
    return h;
}

static void inside_text(const mx_reply *r, mx_span sp)
{
    CHECK(sp.p >= r->text && sp.p + sp.len <= r->text + sizeof(r->text));
}

static uint64_t check_reply(const mx_reply *r, uint64_t h)
{
    static const char *const kws[] = { "SIZE", "PIPELINING", "AUTH", "XCLIENT", "8BITMIME" };
    mx_span sp;

    CHECK(r->code >= 200 && r->code <= 599);
    CHECK(r->nlines >= 1 && r->nlines <= MX_REPLY_MAX_LINES);
    CHECK(r->text_used <= sizeof(r->text));
    h = mix(h, &r->code, sizeof(r->code));
    h = mix(h, &r->nlines, sizeof(r->nlines));
    for (int i = 0; i < r->nlines; i++) {
        const char *l = mx_reply_line(r, i);

        CHECK((size_t)r->off[i] + r->len[i] < r->text_used);
        CHECK(l[r->len[i]] == '\0');
        CHECK(strlen(l) == r->len[i]);
        h = mix(h, l, r->len[i] + 1);
    }
    for (size_t k = 0; k < sizeof(kws) / sizeof(kws[0]); k++)
        if (mx_reply_has_ext(r, kws[k], &sp))
            inside_text(r, sp);
    if (mx_reply_enhanced(r, 0, &sp)) {
        inside_text(r, sp);
        CHECK(sp.len >= 5 && sp.p[0] - '0' == r->code / 100);
    }
    return h;
}

/*
 * Feed in pieces (first cut at first_cut, then step bytes) and fold every
 * reply and the final status into a hash.
 */
static uint64_t transcript(const char *in, size_t n, size_t first_cut, size_t step)
{
    mx_reply_parser *rp = malloc(sizeof(*rp));
    uint64_t h = 0xcbf29ce484222325ull;
    size_t a = 0, b = first_cut;
    int failed = 0;

    mx_reply_parser_init(rp);
    while (!failed) {
        while (a < b) {
            size_t used = 0;
            const char *why = NULL;
            mx_rc rc = mx_reply_parse(rp, in + a, in + b, &used, &why);

            CHECK(used <= b - a);
            a += used;
            if (rc == MX_AGAIN) {
                CHECK(a == b);
                break;
            }
            if (rc == MX_ERROR) {
                CHECK(why != NULL);
                h = mix(h, "!", 1);
                failed = 1;
                break;
            }
            CHECK(rc == MX_DONE);
            CHECK(a >= 2 && in[a - 2] == '\r' && in[a - 1] == '\n');
            h = check_reply(&rp->r, h);
        }
        if (b == n)
            break;
        a = b;
        b = n - a > step ? a + step : n;
    }
    free(rp);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in;
    size_t n, cut;
    uint64_t whole;

    if (size < 2)
        return 0;
    in = (const char *)data + 2;
    n = size - 2;
    cut = ((size_t)data[0] | (size_t)data[1] << 8) % (n + 1);

    whole = transcript(in, n, n, n);
    CHECK(transcript(in, n, cut, n) == whole);
    CHECK(transcript(in, n, 0, 1) == whole);
    return 0;
}
