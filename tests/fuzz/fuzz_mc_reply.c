/*
 * fuzz_mc_reply.c: libFuzzer target for the memcached reply reader
 * (cluster/mc_pipe.c: mx_mc_reply_take), what the store threads and the
 * event loops (proxy/cntq.c) read replies to pipelined commands with.
 *
 * Input: the first byte is how many reply lines are expected (0-63), the
 * second a split point; the rest is what the server sent. Beyond "no
 * crash", each run checks:
 *  - it never takes more than it is given, nor past the n-th line's end;
 *  - done exactly when n lines are in, and then nothing more is taken;
 *  - every line read is classified (no MX_MC_NONE before the got-th);
 *  - whole, split in two, and byte by byte give the same lines, values
 *    and bytes taken.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mc_pipe.h"

#include "fuzz_check.h"

#define MAXN 64

typedef struct run {
    mx_mc_req r;
    unsigned char reply[MAXN];
    uint64_t number[MAXN];
    size_t took;
} run;

static void start(run *x, size_t n)
{
    memset(x, 0, sizeof(*x));
    x->r.fd = -1;
    x->r.n = n;
    x->r.reply = x->reply;
    x->r.number = x->number;
    mx_mc_reply_begin(&x->r);
}

static void feed(run *x, const char *p, size_t len)
{
    size_t t = mx_mc_reply_take(&x->r, p, len);
    CHECK(t <= len);
    CHECK(x->r.got <= x->r.n);
    if (t < len)
        CHECK(x->r.done); /* it stops early only at the n-th line's end */
    if (x->r.done && t > 0)
        CHECK(p[t - 1] == '\n' || x->r.n == 0);
    x->took += t;
}

static void same(const run *a, const run *b)
{
    CHECK(a->r.got == b->r.got);
    CHECK(a->r.done == b->r.done);
    CHECK(a->took == b->took);
    CHECK(memcmp(a->reply, b->reply, a->r.got) == 0);
    CHECK(memcmp(a->number, b->number, a->r.got * sizeof(uint64_t)) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t n = data[0] % MAXN;
    const char *p = (const char *)data + 2;
    size_t len = size - 2;
    size_t cut = len ? data[1] % (len + 1) : 0;

    run whole, split, bytes;
    start(&whole, n);
    start(&split, n);
    start(&bytes, n);

    feed(&whole, p, len);
    feed(&split, p, cut);
    if (!split.r.done)
        feed(&split, p + cut, len - cut);
    for (size_t i = 0; i < len && !bytes.r.done; i++)
        feed(&bytes, p + i, 1);

    CHECK(whole.r.done == (whole.r.got == n));
    for (size_t i = 0; i < whole.r.got; i++)
        CHECK(whole.reply[i] >= MX_MC_STORED && whole.reply[i] <= MX_MC_OTHER);
    if (whole.r.done) {
        size_t extra = mx_mc_reply_take(&whole.r, p, len);
        CHECK(extra == 0); /* done: nothing more is taken */
    }
    same(&whole, &split);
    same(&whole, &bytes);
    return 0;
}
