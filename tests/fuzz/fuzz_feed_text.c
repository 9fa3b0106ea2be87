/*
 * fuzz_feed_text.c: libFuzzer target for the text feed parser and the
 * streaming reader over it.
 *
 * Input: the first two bytes pick the size of the pieces the rest arrives
 * in; the rest is a feed. Beyond "no crash", each run checks:
 *  - the reader gives the same items (number, update or message) whether
 *    the feed comes whole or in pieces;
 *  - those items are exactly what mx_feed_parse_line gives for each line
 *    cut at its LF here, numbered from 1 with blank and comment lines
 *    counted, an unterminated last line included;
 *  - every error has a message; every update is in range (kind, op, score
 *    within +-1000000, ttl within ten years and 0 for del, no reason) and
 *    its value is already normalised (normalising it again changes
 *    nothing);
 *  - every update encoded as a protobuf entry reads back the same.
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
    CHECK(u->flag == MX_FEED_KEEP && u->reason == NULL);
    CHECK(u->value != NULL && u->value[0] != 0);
    char *err = NULL;
    char *again = mx_rep_normalize(u->kind, u->value, &err);
    CHECK(again != NULL && strcmp(again, u->value) == 0);
    g_free(again);

    check_roundtrip(u, 7);
}

static void drain(mx_feed_reader *r, GString *log, int finished)
{
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
            CHECK(finished);
            return;
        }
        CHECK(rc == MX_FEED_BAD || rc == MX_FEED_UPDATE);
        log_item(log, rc, n, &u, err);
        g_free(err);
        mx_feed_update_clear(&u);
    }
}

/* The oracle: cut at every LF, parse each line on its own. */
static char *line_by_line(const uint8_t *in, size_t n)
{
    GString *log = g_string_new(NULL);
    uint64_t number = 0;
    size_t start = 0;
    while (start < n) {
        const uint8_t *lf = memchr(in + start, '\n', n - start);
        size_t len = lf ? (size_t)(lf - (in + start)) : n - start;
        char *line = malloc(len ? len : 1);
        memcpy(line, in + start, len);
        mx_feed_update u;
        char *err = NULL;
        int rc = mx_feed_parse_line(line, len, &u, &err);
        free(line);
        number++;
        CHECK(rc == -1 || rc == 0 || rc == 1);
        if (rc == 0)
            CHECK(err == NULL && u.value == NULL);
        if (rc == -1)
            CHECK(u.value == NULL);
        if (rc != 0)
            log_item(log, rc > 0 ? MX_FEED_UPDATE : MX_FEED_BAD, number, &u, err);
        g_free(err);
        mx_feed_update_clear(&u);
        start += len + 1;
    }
    return g_string_free(log, FALSE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return feed_fuzz_one(data, size, MX_FEED_TEXT, drain, line_by_line);
}
