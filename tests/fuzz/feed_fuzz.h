/*
 * feed_fuzz.h: what the two feed fuzz targets (fuzz_feed_text.c,
 * fuzz_feed_protobuf.c) share: the check macro, the protobuf round trip
 * every update must survive, feeding the reader in pieces, and the driver
 * that compares whole, in pieces and the target's own oracle.
 * Included by one target each, so its functions are static.
 */
#ifndef MX_FEED_FUZZ_H
#define MX_FEED_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "feed.h"

#include "fuzz_check.h"

/* u encoded as one protobuf entry reads back the same, numbered first. */
static void check_roundtrip(const mx_feed_update *u, uint64_t first)
{
    char *err = NULL;
    GByteArray *b = g_byte_array_new();
    mx_feed_encode_protobuf(u, b);
    mx_feed_reader *r = mx_feed_reader_new(MX_FEED_PROTOBUF, first);
    mx_feed_reader_push(r, b->data, b->len);
    mx_feed_reader_finish(r);
    mx_feed_update v;
    uint64_t n = 0;
    CHECK(mx_feed_reader_next(r, &v, &n, &err) == MX_FEED_UPDATE);
    CHECK(n == first && v.kind == u->kind && v.op == u->op && v.score == u->score &&
          v.ttl == u->ttl && strcmp(v.value, u->value) == 0);
    CHECK((v.reason == NULL) == (u->reason == NULL));
    CHECK(!v.reason || strcmp(v.reason, u->reason) == 0);
    mx_feed_update_clear(&v);
    CHECK(mx_feed_reader_next(r, &v, &n, &err) == MX_FEED_END);
    mx_feed_reader_free(r);
    g_byte_array_unref(b);
}

/* Each target's own checks of an update it read. */
static void check_update(const mx_feed_update *u);

/* One item the reader gave, as a log line: whole and in pieces must log
 * the same, and the same as the target's oracle. */
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

typedef void (*feed_drain_fn)(mx_feed_reader *r, GString *log, int finished);

/* The reader's items when the input arrives step bytes at a time, each
 * piece from its own allocation (ASan sees a read past one). */
static char *read_in_pieces(mx_feed_format format, feed_drain_fn drain, const uint8_t *in,
                            size_t n, size_t step)
{
    mx_feed_reader *r = mx_feed_reader_new(format, 1);
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

/* The first two bytes pick the piece size; whole == in pieces == oracle. */
static int feed_fuzz_one(const uint8_t *data, size_t size, mx_feed_format format,
                         feed_drain_fn drain, char *(*oracle)(const uint8_t *, size_t))
{
    if (size < 2)
        return 0;
    const uint8_t *in = data + 2;
    size_t n = size - 2;
    size_t step = ((size_t)data[0] | (size_t)data[1] << 8) % (n + 1);
    if (step == 0)
        step = 1;
    char *whole = read_in_pieces(format, drain, in, n, n ? n : 1);
    char *pieces = read_in_pieces(format, drain, in, n, step);
    CHECK(strcmp(whole, pieces) == 0);
    char *expect = oracle(in, n);
    CHECK(strcmp(whole, expect) == 0);
    g_free(whole);
    g_free(pieces);
    g_free(expect);
    return 0;
}

#endif
