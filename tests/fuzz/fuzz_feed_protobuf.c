/*
 * fuzz_feed_protobuf.c: libFuzzer target for the length-delimited
 * FeedUpdate stream reader.
 *
 * Input: the first two bytes pick the size of the pieces the rest arrives
 * in; the rest is a stream. Beyond "no crash", each run checks:
 *  - the reader gives the same items (number, update or message) whether
 *    the stream comes whole or in pieces, and asks for more until it is
 *    told the stream is finished, unless a malformed length ended it;
 *  - those items are what an independent walk of the stream expects: a
 *    varint length per entry (cut off at the end: "truncated", and the
 *    end; more than 64 bits: "malformed", and the end), an entry over
 *    4096 bytes reported and skipped, a body shorter than announced at
 *    the end reported as truncated, and every whole entry exactly what
 *    mx_feed_parse_protobuf gives for its bytes;
 *  - every update is in range and normalised, its reason (if any) at most
 *    127 bytes of UTF-8 without control bytes, and it encodes and reads
 *    back the same.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "feed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) \
    do { \
        if (!(c)) \
            abort(); \
    } while (0)

static void check_update(const mx_feed_update *u)
{
    CHECK(u->kind >= MX_REP_IP && u->kind <= MX_REP_SENDER);
    CHECK(u->op >= MX_FEED_SET && u->op <= MX_FEED_ALLOW);
    CHECK(u->score >= -MX_FEED_SCORE_MAX && u->score <= MX_FEED_SCORE_MAX);
    CHECK(u->ttl <= MX_FEED_TTL_MAX);
    CHECK(u->op != MX_FEED_DEL || u->ttl == 0);
    CHECK(u->op == MX_FEED_SET || u->op == MX_FEED_ADD || u->score == 0);
    CHECK(u->flag == MX_FEED_KEEP);
    CHECK(u->value != NULL && u->value[0] != 0);
    char *err = NULL;
    char *again = mx_rep_normalize(u->kind, u->value, &err);
    CHECK(again != NULL && strcmp(again, u->value) == 0);
    g_free(again);
    if (u->reason) {
        size_t n = strlen(u->reason);
        CHECK(n > 0 && n <= MX_FEED_REASON_MAX && g_utf8_validate(u->reason, -1, NULL));
        for (size_t i = 0; i < n; i++)
            CHECK((unsigned char)u->reason[i] >= 0x20 && u->reason[i] != 0x7f);
    }

    GByteArray *b = g_byte_array_new();
    mx_feed_encode_protobuf(u, b);
    mx_feed_reader *r = mx_feed_reader_new(MX_FEED_PROTOBUF, 7);
    mx_feed_reader_push(r, b->data, b->len);
    mx_feed_reader_finish(r);
    mx_feed_update v;
    uint64_t n = 0;
    CHECK(mx_feed_reader_next(r, &v, &n, &err) == MX_FEED_UPDATE);
    CHECK(n == 7 && v.kind == u->kind && v.op == u->op && v.score == u->score &&
          v.ttl == u->ttl && strcmp(v.value, u->value) == 0);
    CHECK((v.reason == NULL) == (u->reason == NULL));
    CHECK(!v.reason || strcmp(v.reason, u->reason) == 0);
    mx_feed_update_clear(&v);
    CHECK(mx_feed_reader_next(r, &v, &n, &err) == MX_FEED_END);
    mx_feed_reader_free(r);
    g_byte_array_unref(b);
}

static void log_item(GString *log, int rc, uint64_t n, const mx_feed_update *u, const char *err)
{
    if (rc == MX_FEED_BAD) {
        CHECK(err != NULL && err[0] != 0);
        g_string_append_printf(log, "%llu!%s\n", (unsigned long long)n, err);
        return;
    }
    check_update(u);
    g_string_append_printf(log, "%llu:%d:%s:%d:%d:%u:%s\n", (unsigned long long)n, (int)u->kind,
                           u->value, (int)u->op, (int)u->score, u->ttl,
                           u->reason ? u->reason : "-");
}

static void drain(mx_feed_reader *r, GString *log, int finished)
{
    /* a malformed length ends the stream before its end */
    int stopped = strstr(log->str, "!malformed length prefix") != NULL;
    for (;;) {
        mx_feed_update u;
        uint64_t n = 0;
        char *err = NULL;
        int rc = mx_feed_reader_next(r, &u, &n, &err);
        if (rc == MX_FEED_AGAIN) {
            CHECK(!finished);
            return;
        }
        if (rc == MX_FEED_END) {
            CHECK(finished || stopped);
            return;
        }
        CHECK(rc == MX_FEED_BAD || rc == MX_FEED_UPDATE);
        CHECK(!stopped);
        log_item(log, rc, n, &u, err);
        stopped = err && strncmp(err, "malformed length prefix", 23) == 0;
        g_free(err);
        mx_feed_update_clear(&u);
    }
}

static char *read_in_pieces(const uint8_t *in, size_t n, size_t step)
{
    mx_feed_reader *r = mx_feed_reader_new(MX_FEED_PROTOBUF, 1);
    GString *log = g_string_new(NULL);
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        uint8_t *piece = malloc(k);
        memcpy(piece, in + off, k);
        mx_feed_reader_push(r, piece, k);
        free(piece);
        drain(r, log, 0);
    }
    mx_feed_reader_finish(r);
    drain(r, log, 1);
    mx_feed_reader_free(r);
    return g_string_free(log, FALSE);
}

/* The oracle's varint: 1 read, 0 cut off, -1 more than 64 bits. */
static int varint(const uint8_t *p, size_t n, uint64_t *v, size_t *used)
{
    uint64_t x = 0;
    for (size_t i = 0; i < 10; i++) {
        if (i == n)
            return 0;
        if (i == 9 && p[i] > 1)
            return -1;
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            *used = i + 1;
            return 1;
        }
    }
    return -1;
}

static char *walk(const uint8_t *in, size_t n)
{
    GString *log = g_string_new(NULL);
    uint64_t number = 0;
    size_t at = 0;
    while (at < n) {
        uint64_t len;
        size_t used;
        int v = varint(in + at, n - at, &len, &used);
        number++;
        if (v == 0) {
            g_string_append_printf(log, "%llu!truncated: the stream ends inside the length "
                                   "prefix\n", (unsigned long long)number);
            break;
        }
        if (v < 0) {
            g_string_append_printf(log, "%llu!malformed length prefix (a varint of more than "
                                   "64 bits); the rest of the stream cannot be read\n",
                                   (unsigned long long)number);
            break;
        }
        at += used;
        if (len > MX_FEED_LINE_MAX) {
            g_string_append_printf(log, "%llu!%llu bytes, more than %d; skipped\n",
                                   (unsigned long long)number, (unsigned long long)len,
                                   MX_FEED_LINE_MAX);
            if (len > n - at)
                break;
            at += (size_t)len;
            continue;
        }
        if (len > n - at) {
            g_string_append_printf(log, "%llu!truncated: %llu bytes announced, %zu present\n",
                                   (unsigned long long)number, (unsigned long long)len, n - at);
            break;
        }
        uint8_t *body = malloc(len ? (size_t)len : 1);
        memcpy(body, in + at, (size_t)len);
        mx_feed_update u;
        char *err = NULL;
        int rc = mx_feed_parse_protobuf(body, (size_t)len, &u, &err);
        free(body);
        CHECK(rc == 1 || rc == -1);
        if (rc < 0)
            CHECK(u.value == NULL && u.reason == NULL);
        log_item(log, rc > 0 ? MX_FEED_UPDATE : MX_FEED_BAD, number, &u, err);
        g_free(err);
        mx_feed_update_clear(&u);
        at += (size_t)len;
    }
    return g_string_free(log, FALSE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const uint8_t *in = data + 2;
    size_t n = size - 2;
    size_t step = ((size_t)data[0] | (size_t)data[1] << 8) % (n + 1);
    if (step == 0)
        step = 1;

    char *whole = read_in_pieces(in, n, n ? n : 1);
    char *pieces = read_in_pieces(in, n, step);
    CHECK(strcmp(whole, pieces) == 0);
    char *oracle = walk(in, n);
    CHECK(strcmp(whole, oracle) == 0);
    g_free(whole);
    g_free(pieces);
    g_free(oracle);
    return 0;
}
