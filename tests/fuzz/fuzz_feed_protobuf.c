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
#include "feed_fuzz.h"

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

    check_roundtrip(u, 7);
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
    return feed_fuzz_one(data, size, MX_FEED_PROTOBUF, drain, walk);
}
