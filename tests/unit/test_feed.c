/*
 * test_feed.c: reputation feeds, as tables of lines and streams and what
 * each must give.
 *
 *  - text lines: every good form (kinds, ops, signs, TTLs, blanks and tabs,
 *    a final CR, comments) gives its normalised update; every bad one gives
 *    the message that names its field and what was expected, word for word;
 *  - the streaming reader numbers lines as they are in the file (blank and
 *    comment lines count), gives the same updates whatever the pieces the
 *    input arrives in, skips an over-long line and goes on;
 *  - protobuf streams, encoded here by hand (not by protobuf-c): good
 *    entries, a cut-off length or body, an oversized entry (skipped, the
 *    next one read), unknown versions, kinds and ops, missing or stray
 *    scores, NUL and control bytes in strings, a malformed length;
 *    (updates from arguments and applying them: test_feed_apply.c).
 */
#include <string.h>

#include <glib.h>

#include "feed.h"

/* ---- text lines ---- */

typedef struct line_row {
    const char *name;
    const char *in;
    size_t in_len;          /* 0: strlen(in) */
    int rc;                 /* 1 update, 0 skipped, -1 error */
    mx_rep_kind kind;
    const char *value;
    mx_feed_op op;
    int32_t score;
    uint32_t ttl;
    const char *err;        /* the exact message */
} line_row;

#define OK(k, v, o, s, t) .rc = 1, .kind = (k), .value = (v), .op = (o), .score = (s), .ttl = (t)
#define SKIP .rc = 0
#define BAD(m) .rc = -1, .err = (m)

static const line_row lines[] = {
    {"set", "ip 192.0.2.1 set -50", 0, OK(MX_REP_IP, "192.0.2.1", MX_FEED_SET, -50, 0)},
    {"set with plus and ttl", "ip 192.0.2.1 set +20 3600", 0,
     OK(MX_REP_IP, "192.0.2.1", MX_FEED_SET, 20, 3600)},
    {"add to an IPv4 net, host bits cleared", "net 192.0.2.77/24 add 5", 0,
     OK(MX_REP_NET, "192.0.2.0/24", MX_FEED_ADD, 5, 0)},
    {"block an IPv6 net", "net 2001:DB8:0:0:1::1/64 block 60", 0,
     OK(MX_REP_NET, "2001:db8::/64", MX_FEED_BLOCK, 0, 60)},
    {"allow a domain, lowercased", "domain Example.COM allow", 0,
     OK(MX_REP_DOMAIN, "example.com", MX_FEED_ALLOW, 0, 0)},
    {"del ignores its ttl", "sender Foo@Example.com del 100", 0,
     OK(MX_REP_SENDER, "foo@example.com", MX_FEED_DEL, 0, 0)},
    {"tabs and runs of blanks", " \tip\t::FFFF:1.2.3.4   set  0 \t", 0,
     OK(MX_REP_IP, "::ffff:1.2.3.4", MX_FEED_SET, 0, 0)},
    {"a final CR", "ip 198.51.100.9 add -3\r", 0,
     OK(MX_REP_IP, "198.51.100.9", MX_FEED_ADD, -3, 0)},
    {"lowest score", "ip 192.0.2.1 set -1000000", 0,
     OK(MX_REP_IP, "192.0.2.1", MX_FEED_SET, -1000000, 0)},
    {"highest score", "ip 192.0.2.1 set 1000000", 0,
     OK(MX_REP_IP, "192.0.2.1", MX_FEED_SET, 1000000, 0)},
    {"longest ttl", "ip 192.0.2.1 set 5 315360000", 0,
     OK(MX_REP_IP, "192.0.2.1", MX_FEED_SET, 5, 315360000)},
    {"ttl 0 is no expiry", "ip 192.0.2.1 block 0", 0,
     OK(MX_REP_IP, "192.0.2.1", MX_FEED_BLOCK, 0, 0)},
    {"UTF-8 domain", "domain ÉXAMPLE.test allow", 0,
     OK(MX_REP_DOMAIN, "éxample.test", MX_FEED_ALLOW, 0, 0)},
    {"empty line", "", 0, SKIP},
    {"blank line", " \t ", 0, SKIP},
    {"CR only", "\r", 0, SKIP},
    {"comment", "# ip 192.0.2.1 set 5", 0, SKIP},
    {"indented comment", "   #", 0, SKIP},

    {"unknown kind", "ipx 1.2.3.4 set 5", 0,
     BAD("kind: \"ipx\" is not one of ip, net, domain, sender "
         "(expected KIND VALUE OP [SCORE] [TTL])")},
    {"kinds are lowercase", "IP 1.2.3.4 set 5", 0,
     BAD("kind: \"IP\" is not one of ip, net, domain, sender "
         "(expected KIND VALUE OP [SCORE] [TTL])")},
    {"value missing", "ip", 0, BAD("value: missing (expected KIND VALUE OP [SCORE] [TTL])")},
    {"op missing", "ip 1.2.3.4", 0,
     BAD("op: missing after the value (expected set, add, del, block or allow)")},
    {"unknown op", "ip 1.2.3.4 sett 5", 0,
     BAD("op: \"sett\" is not one of set, add, del, block, allow")},
    {"bad IP", "ip 1.2.3.400 set 5", 0, BAD("value: \"1.2.3.400\" is not an IP address")},
    {"net of an odd prefix", "net 1.2.3.0/20 set 5", 0,
     BAD("value: \"1.2.3.0/20\": IPv4 networks are /16 or /24 (what nodes look up); use ip "
         "for a single address")},
    {"net without prefix", "net 1.2.3.0 set 5", 0,
     BAD("value: \"1.2.3.0\" is not a network (ADDR/PREFIX)")},
    {"sender without @", "sender nobody set 5", 0,
     BAD("value: \"nobody\" is not a sender address (local@domain)")},
    {"domain with @", "domain a@b allow", 0, BAD("value: \"a@b\" is not a domain")},
    {"score missing", "ip 1.2.3.4 set", 0,
     BAD("score: missing (set needs a SCORE from -1000000 to 1000000)")},
    {"score missing for add", "ip 1.2.3.4 add", 0,
     BAD("score: missing (add needs a SCORE from -1000000 to 1000000)")},
    {"score not a number", "ip 1.2.3.4 add x", 0,
     BAD("score: \"x\" is not an integer (expected e.g. -50 or 20)")},
    {"score a lone sign", "ip 1.2.3.4 add -", 0,
     BAD("score: \"-\" is not an integer (expected e.g. -50 or 20)")},
    {"score a decimal", "ip 1.2.3.4 add 1.5", 0,
     BAD("score: \"1.5\" is not an integer (expected e.g. -50 or 20)")},
    {"score too high", "ip 1.2.3.4 set 1000001", 0,
     BAD("score: 1000001 is out of range (-1000000 to 1000000)")},
    {"score too low", "ip 1.2.3.4 set -1000001", 0,
     BAD("score: -1000001 is out of range (-1000000 to 1000000)")},
    {"score of many digits", "ip 1.2.3.4 set 99999999999", 0,
     BAD("score: \"99999999999\" is out of range (-1000000 to 1000000)")},
    {"negative ttl", "ip 1.2.3.4 set 5 -1", 0, BAD("ttl: \"-1\" is not a number of seconds")},
    {"ttl with a unit", "ip 1.2.3.4 block 1h", 0, BAD("ttl: \"1h\" is not a number of seconds")},
    {"ttl too long", "ip 1.2.3.4 set 5 315360001", 0,
     BAD("ttl: 315360001 s is more than ten years (315360000 s)")},
    {"ttl of many digits", "ip 1.2.3.4 set 5 99999999999", 0,
     BAD("ttl: \"99999999999\" s is more than ten years (315360000 s)")},
    {"a field too many", "ip 1.2.3.4 set 5 60 extra", 0,
     BAD("unexpected \"extra\" at column 21 (expected KIND VALUE set SCORE [TTL])")},
    {"a field too many for block", "ip 1.2.3.4 block 5 6", 0,
     BAD("unexpected \"6\" at column 20 (expected KIND VALUE block [TTL])")},
    {"a trailing comment is a field", "ip 1.2.3.4 allow 60 # why", 0,
     BAD("unexpected \"#\" at column 21 (expected KIND VALUE allow [TTL])")},
    {"NUL byte", "ip 1.2.3.4\0 set 5", 17, BAD("NUL byte at column 11")},
    {"control byte", "ip 1.2.3.4 set\a 5", 0, BAD("control byte 0x07 at column 15")},
    {"DEL byte", "ip 1.2.3.4 set 5\x7f", 0, BAD("control byte 0x7f at column 17")},
    {"CR inside", "ip 1.2.3.4\r set 5", 0, BAD("control byte 0x0d at column 11")},
    {"control byte in a comment", "# \x1b[2J", 0, BAD("control byte 0x1b at column 3")},
    {"not UTF-8", "domain b\xff" "ad.test allow", 0,
     BAD("value: \"b\\xffad.test\" is not valid UTF-8")},
    {"a long bad field is cut in the message",
     "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk x set 1",
     0,
     BAD("kind: \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...\" is not one "
         "of ip, net, domain, sender (expected KIND VALUE OP [SCORE] [TTL])")},
};

static char *row_name(const char *group, const char *name)
{
    return g_strdup_printf("/feed/%s/%s", group, name);
}

static void test_line(gconstpointer data)
{
    const line_row *r = data;
    size_t len = r->in_len ? r->in_len : strlen(r->in);
    /* from an allocation of exactly the line: ASan sees a read past it */
    char *copy = g_memdup2(r->in, len ? len : 1);
    mx_feed_update u;
    char *err = NULL;
    int rc = mx_feed_parse_line(copy, len, &u, &err);
    g_free(copy);
    g_assert_cmpint(rc, ==, r->rc);
    if (rc < 0) {
        g_assert_cmpstr(err, ==, r->err);
        g_assert_null(u.value);
        g_free(err);
        return;
    }
    g_assert_null(err);
    if (rc == 0) {
        g_assert_null(u.value);
        return;
    }
    g_assert_cmpint(u.kind, ==, r->kind);
    g_assert_cmpstr(u.value, ==, r->value);
    g_assert_cmpint(u.op, ==, r->op);
    g_assert_cmpint(u.score, ==, r->score);
    g_assert_cmpuint(u.ttl, ==, r->ttl);
    g_assert_cmpint(u.flag, ==, MX_FEED_KEEP);
    g_assert_null(u.reason);
    mx_feed_update_clear(&u);
}

static void test_line_length(void)
{
    mx_feed_update u;
    char *err = NULL;
    char *l = g_malloc(MX_FEED_LINE_MAX + 2);
    memset(l, ' ', MX_FEED_LINE_MAX + 2);
    memcpy(l, "ip 192.0.2.1 set 5", 18);
    /* 4096 bytes (and a CR) is a line; 4097 is not */
    g_assert_cmpint(mx_feed_parse_line(l, MX_FEED_LINE_MAX, &u, &err), ==, 1);
    mx_feed_update_clear(&u);
    l[MX_FEED_LINE_MAX] = '\r';
    g_assert_cmpint(mx_feed_parse_line(l, MX_FEED_LINE_MAX + 1, &u, &err), ==, 1);
    mx_feed_update_clear(&u);
    l[MX_FEED_LINE_MAX] = ' ';
    g_assert_cmpint(mx_feed_parse_line(l, MX_FEED_LINE_MAX + 1, &u, &err), ==, -1);
    g_assert_cmpstr(err, ==, "line longer than 4096 bytes");
    g_free(err);
    g_free(l);

    /* a value of 320 bytes is looked at, 321 is refused as such */
    GString *s = g_string_new("sender ");
    for (int i = 0; i < 310; i++)
        g_string_append_c(s, 'a');
    g_string_append(s, "@x.test");
    g_string_append(s, "aaa del"); /* 320 bytes */
    g_string_truncate(s, 7 + 320);
    g_string_append(s, " del");
    g_assert_cmpint(mx_feed_parse_line(s->str, s->len, &u, &err), ==, 1);
    mx_feed_update_clear(&u);
    g_string_insert_c(s, 7, 'b');
    g_assert_cmpint(mx_feed_parse_line(s->str, s->len, &u, &err), ==, -1);
    g_assert_cmpstr(err, ==, "value: 321 bytes, at most 320");
    g_free(err);
    g_string_free(s, TRUE);
}

/* ---- the streaming reader ---- */

typedef struct got {
    GString *log; /* "N:kind:value:op:score:ttl" or "N!message" per item */
} got;

static GString *drain(mx_feed_reader *r, GString *log)
{
    for (;;) {
        mx_feed_update u;
        uint64_t n = 0;
        char *err = NULL;
        int rc = mx_feed_reader_next(r, &u, &n, &err);
        if (rc == MX_FEED_AGAIN || rc == MX_FEED_END)
            return log;
        if (rc == MX_FEED_BAD) {
            g_string_append_printf(log, "%" G_GUINT64_FORMAT "!%s\n", n, err);
            g_free(err);
            continue;
        }
        g_assert_cmpint(rc, ==, MX_FEED_UPDATE);
        g_string_append_printf(log, "%" G_GUINT64_FORMAT ":%s:%s:%s:%d:%u%s%s\n", n,
                               mx_rep_kind_name(u.kind), u.value, mx_feed_op_name(u.op),
                               (int)u.score, u.ttl, u.reason ? ":" : "",
                               u.reason ? u.reason : "");
        mx_feed_update_clear(&u);
    }
}

/* Read in as pieces of step bytes (0: all at once); the log of items. */
static char *read_all(mx_feed_format f, const void *in, size_t len, size_t step)
{
    mx_feed_reader *r = mx_feed_reader_new(f, 1);
    GString *log = g_string_new(NULL);
    const uint8_t *p = in;
    if (step == 0)
        step = len ? len : 1;
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        void *piece = g_memdup2(p + off, n);
        mx_feed_reader_push(r, piece, n);
        g_free(piece);
        drain(r, log);
    }
    mx_feed_reader_finish(r);
    drain(r, log);
    /* and nothing after the end */
    mx_feed_update u;
    uint64_t n;
    char *err;
    g_assert_cmpint(mx_feed_reader_next(r, &u, &n, &err), ==, MX_FEED_END);
    mx_feed_reader_free(r);
    return g_string_free(log, FALSE);
}

static void check_stream(mx_feed_format f, const void *in, size_t len, const char *want)
{
    static const size_t steps[] = {0, 1, 2, 3, 7, 64, 4095, 4096, 4097, 4098, 5000};
    for (size_t i = 0; i < G_N_ELEMENTS(steps); i++) {
        char *log = read_all(f, in, len, steps[i]);
        if (strcmp(log, want) != 0)
            g_test_message("in pieces of %zu bytes", steps[i]);
        g_assert_cmpstr(log, ==, want);
        g_free(log);
    }
}

static void test_text_stream(void)
{
    static const char in[] = "# a feed\n"
                             "ip 192.0.2.1 set -50 600\n"
                             "\n"
                             "ip 192.0.2.2 sett 5\r\n"
                             "domain example.org allow\r\n"
                             "net 10.1.2.3/16 add 7";
    check_stream(MX_FEED_TEXT, in, sizeof(in) - 1,
                 "2:ip:192.0.2.1:set:-50:600\n"
                 "4!op: \"sett\" is not one of set, add, del, block, allow\n"
                 "5:domain:example.org:allow:0:0\n"
                 "6:net:10.1.0.0/16:add:7:0\n");
}

static void test_text_stream_long_line(void)
{
    GString *in = g_string_new("ip 192.0.2.1 block\n");
    for (int i = 0; i < 9000; i++)
        g_string_append_c(in, 'x');
    g_string_append(in, "\nip 192.0.2.3 allow\n");
    /* exactly at the limit, with its CR: still a line */
    g_string_append(in, "#");
    for (int i = 1; i < MX_FEED_LINE_MAX; i++)
        g_string_append_c(in, 'y');
    g_string_append(in, "\r\nip 192.0.2.4 del\n");
    /* one byte over, at the very end, without its LF */
    for (int i = 0; i < MX_FEED_LINE_MAX + 1; i++)
        g_string_append_c(in, 'z');
    check_stream(MX_FEED_TEXT, in->str, in->len,
                 "1:ip:192.0.2.1:block:0:0\n"
                 "2!line longer than 4096 bytes\n"
                 "3:ip:192.0.2.3:allow:0:0\n"
                 "5:ip:192.0.2.4:del:0:0\n"
                 "6!line longer than 4096 bytes\n");
    g_string_free(in, TRUE);
}

static void test_text_stream_numbering(void)
{
    mx_feed_reader *r = mx_feed_reader_new(MX_FEED_TEXT, 1001);
    g_assert_cmpstr(mx_feed_reader_unit(r), ==, "line");
    mx_feed_reader_push(r, "\nip 1.2.3.4 block\n", 18);
    mx_feed_reader_finish(r);
    GString *log = drain(r, g_string_new(NULL));
    g_assert_cmpstr(log->str, ==, "1002:ip:1.2.3.4:block:0:0\n");
    g_string_free(log, TRUE);
    mx_feed_reader_free(r);
}

/* ---- protobuf, encoded by hand ---- */

static void put_varint(GByteArray *b, uint64_t v)
{
    do {
        uint8_t c = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            c |= 0x80;
        g_byte_array_append(b, &c, 1);
    } while (v);
}

static void put_uint(GByteArray *b, unsigned field, uint64_t v)
{
    put_varint(b, field << 3 | 0);
    put_varint(b, v);
}

static void put_sint(GByteArray *b, unsigned field, int32_t v)
{
    uint32_t u = (uint32_t)v;
    put_uint(b, field, (u << 1) ^ (v < 0 ? 0xffffffffu : 0)); /* zigzag */
}

static void put_bytes(GByteArray *b, unsigned field, const void *p, size_t n)
{
    put_varint(b, field << 3 | 2);
    put_varint(b, n);
    g_byte_array_append(b, p, (guint)n);
}

static void put_str(GByteArray *b, unsigned field, const char *s)
{
    put_bytes(b, field, s, strlen(s));
}

/* FeedUpdate fields: version 1, kind 2, value 3, op 4, score 5 (sint32),
 * ttl 6, reason 7. Zero means the usual: version 1, kind IP, value
 * 192.0.2.1, op SET, no score, no ttl, no reason. */
typedef struct msg {
    int version;        /* V_ABSENT, V_ZERO, or 2 and up */
    int kind;
    const char *value;  /* VALUE_ABSENT: left out */
    int op;             /* OP_ABSENT: left out */
    int has_score;
    int32_t score;
    int has_ttl;
    uint32_t ttl;
    const char *reason;
} msg;

#define V_ABSENT (-1)
#define V_ZERO (-2)
#define OP_ABSENT (-1)
static const char VALUE_ABSENT[] = "";
#define S(x) .has_score = 1, .score = (x)
#define T(x) .has_ttl = 1, .ttl = (x)

static GByteArray *encode(const msg *m)
{
    GByteArray *b = g_byte_array_new();
    if (m->version != V_ABSENT)
        put_uint(b, 1, m->version == V_ZERO ? 0 : m->version ? (uint64_t)m->version : 1);
    put_uint(b, 2, m->kind ? (uint64_t)m->kind : 1);
    if (m->value != VALUE_ABSENT)
        put_str(b, 3, m->value ? m->value : "192.0.2.1");
    if (m->op != OP_ABSENT)
        put_uint(b, 4, m->op ? (uint64_t)m->op : 1);
    if (m->has_score)
        put_sint(b, 5, m->score);
    if (m->has_ttl)
        put_uint(b, 6, m->ttl);
    if (m->reason)
        put_str(b, 7, m->reason);
    return b;
}

/* Append m to the stream with its length prefix. */
static void entry(GByteArray *s, const msg *m)
{
    GByteArray *b = encode(m);
    put_varint(s, b->len);
    g_byte_array_append(s, b->data, b->len);
    g_byte_array_unref(b);
}

#define M(...) (&(msg){__VA_ARGS__})

typedef struct pb_row {
    const char *name;
    const msg *m;
    const char *want; /* the log line of entry 1 */
} pb_row;

static const pb_row pb_rows[] = {
    {"set with ttl and reason", M(S(-40), T(600), .reason = "trap hits"),
     "1:ip:192.0.2.1:set:-40:600:trap hits\n"},
    {"add to a net", M(.kind = 2, .value = "2001:db8:1:2::9/48", .op = 2, S(3)),
     "1:net:2001:db8:1::/48:add:3:0\n"},
    {"del, ttl dropped", M(.kind = 4, .value = "A@B.test", .op = 3, T(60)),
     "1:sender:a@b.test:del:0:0\n"},
    {"block a domain", M(.kind = 3, .value = "Spam.Example", .op = 4, T(0)),
     "1:domain:spam.example:block:0:0\n"},
    {"allow", M(.op = 5), "1:ip:192.0.2.1:allow:0:0\n"},
    {"an unknown field is ignored", M(.op = 5), "1:ip:192.0.2.1:allow:0:0\n"},
    {"version 2", M(.version = 2, S(1)), "1!version 2 is not supported (expected 1)\n"},
    {"version 0", M(.version = V_ZERO, S(1)), "1!version 0 is not supported (expected 1)\n"},
    {"no version", M(.version = V_ABSENT, S(1)),
     "1!undecodable: not a FeedUpdate message, or one without version, kind, value or op "
     "(17 bytes)\n"},
    {"no op", M(.op = OP_ABSENT), "1!undecodable: not a FeedUpdate message, or one without version, "
                           "kind, value or op (15 bytes)\n"},
    {"unknown kind", M(.kind = 9, S(1)),
     "1!kind 9 is not IP (1), NET (2), DOMAIN (3) or SENDER (4)\n"},
    {"unknown op", M(.op = 6),
     "1!op 6 is not SET (1), ADD (2), DEL (3), BLOCK (4) or ALLOW (5)\n"},
    {"set without score", M(.op = 1), "1!score: missing (SET needs a score from -1000000 to "
                                      "1000000)\n"},
    {"add without score", M(.op = 2), "1!score: missing (ADD needs a score from -1000000 to "
                                      "1000000)\n"},
    {"block with a score", M(.op = 4, S(5)),
     "1!score: given with BLOCK; only SET and ADD take one\n"},
    {"score out of range", M(S(1000001)),
     "1!score: 1000001 is out of range (-1000000 to 1000000)\n"},
    {"ttl too long", M(S(1), T(315360001)),
     "1!ttl: 315360001 s is more than ten years (315360000 s)\n"},
    {"bad value", M(.value = "1.2.3", S(1)), "1!value: \"1.2.3\" is not an IP address\n"},
    {"empty value", M(.value = "", S(1)), "1!value: empty\n"},
    {"newline in value", M(.value = "192.0.2.1\nip 1.1.1.1 allow", S(1)),
     "1!value: control byte 0x0a at column 10\n"},
    {"reason with a control byte", M(S(1), .reason = "a\tb"),
     "1!reason: control byte 0x09 at column 2\n"},
    {"reason of 128 bytes",
     M(S(1), .reason = "0123456789012345678901234567890123456789012345678901234567890123"
                             "0123456789012345678901234567890123456789012345678901234567890123"),
     "1!reason: 128 bytes, at most 127\n"},
};

static void test_pb_row(gconstpointer data)
{
    const pb_row *r = data;
    GByteArray *s = g_byte_array_new();
    entry(s, r->m);
    if (strcmp(r->name, "an unknown field is ignored") == 0) {
        /* field 15, a string, appended inside the entry */
        GByteArray *b = encode(r->m);
        put_str(b, 15, "later");
        g_byte_array_set_size(s, 0);
        put_varint(s, b->len);
        g_byte_array_append(s, b->data, b->len);
        g_byte_array_unref(b);
    }
    /* and a good entry after it: a bad entry never takes the next one along */
    entry(s, M(.value = "198.51.100.1", .op = 5));
    g_autofree char *want = g_strconcat(r->want, "2:ip:198.51.100.1:allow:0:0\n", NULL);
    check_stream(MX_FEED_PROTOBUF, s->data, s->len, want);
    g_byte_array_unref(s);
}

static void test_pb_nul_in_strings(void)
{
    GByteArray *s = g_byte_array_new();
    GByteArray *b = encode(M(.value = VALUE_ABSENT, .op = 5));
    put_bytes(b, 3, "192.0.2.1\0x", 11);
    put_varint(s, b->len);
    g_byte_array_append(s, b->data, b->len);
    g_byte_array_unref(b);
    b = encode(M(.op = 5));
    put_bytes(b, 7, "why\0not", 7);
    put_varint(s, b->len);
    g_byte_array_append(s, b->data, b->len);
    g_byte_array_unref(b);
    check_stream(MX_FEED_PROTOBUF, s->data, s->len,
                 "1!value: holds a NUL byte\n"
                 "2!reason: holds a NUL byte\n");
    g_byte_array_unref(s);
}

static void test_pb_garbage(void)
{
    /* a length that is readable, a body that is not a message */
    static const uint8_t in[] = {3, 0xff, 0xff, 0xff, 0};
    check_stream(MX_FEED_PROTOBUF, in, sizeof(in),
                 "1!undecodable: not a FeedUpdate message, or one without version, kind, value "
                 "or op (3 bytes)\n"
                 "2!undecodable: not a FeedUpdate message, or one without version, kind, value "
                 "or op (0 bytes)\n");
}

static void test_pb_truncated(void)
{
    GByteArray *s = g_byte_array_new();
    entry(s, M(S(1)));
    GByteArray *b = encode(M(S(2), .reason = "cut short"));
    put_varint(s, b->len);
    g_byte_array_append(s, b->data, 5);
    g_autofree char *want = g_strdup_printf("1:ip:192.0.2.1:set:1:0\n"
                                            "2!truncated: %u bytes announced, 5 present\n",
                                            b->len);
    check_stream(MX_FEED_PROTOBUF, s->data, s->len, want);
    g_byte_array_unref(b);

    /* cut inside the second entry's length prefix */
    g_byte_array_set_size(s, 0);
    entry(s, M(S(1)));
    uint8_t half = 0x81;
    g_byte_array_append(s, &half, 1);
    check_stream(MX_FEED_PROTOBUF, s->data, s->len,
                 "1:ip:192.0.2.1:set:1:0\n"
                 "2!truncated: the stream ends inside the length prefix\n");
    g_byte_array_unref(s);
}

static void test_pb_oversized(void)
{
    GByteArray *s = g_byte_array_new();
    entry(s, M(S(1)));
    /* 5000 bytes announced and present: skipped, the next entry read */
    put_varint(s, 5000);
    guint at = s->len;
    g_byte_array_set_size(s, at + 5000);
    memset(s->data + at, 0x08, 5000);
    entry(s, M(S(3)));
    /* 4096 is the largest entry: one of exactly that passes (padded with
     * an unknown field 15: a tag byte, a 2-byte length, the bytes) */
    GByteArray *b = encode(M(S(4)));
    size_t room = MX_FEED_LINE_MAX - b->len - 3;
    guint8 *pad = g_malloc0(room);
    put_bytes(b, 15, pad, room);
    g_free(pad);
    g_assert_cmpuint(b->len, ==, MX_FEED_LINE_MAX);
    put_varint(s, b->len);
    g_byte_array_append(s, b->data, b->len);
    g_byte_array_unref(b);
    /* and a last one whose oversized body the stream does not hold */
    put_varint(s, 1u << 30);
    g_byte_array_append(s, (const guint8 *)"abc", 3);
    check_stream(MX_FEED_PROTOBUF, s->data, s->len,
                 "1:ip:192.0.2.1:set:1:0\n"
                 "2!5000 bytes, more than 4096; skipped\n"
                 "3:ip:192.0.2.1:set:3:0\n"
                 "4:ip:192.0.2.1:set:4:0\n"
                 "5!1073741824 bytes, more than 4096; skipped\n");
    g_byte_array_unref(s);
}

static void test_pb_malformed_length(void)
{
    GByteArray *s = g_byte_array_new();
    entry(s, M(S(1)));
    for (int i = 0; i < 11; i++) {
        uint8_t c = 0xff;
        g_byte_array_append(s, &c, 1);
    }
    entry(s, M(S(2))); /* lost: nothing says where it starts */
    check_stream(MX_FEED_PROTOBUF, s->data, s->len,
                 "1:ip:192.0.2.1:set:1:0\n"
                 "2!malformed length prefix (a varint of more than 64 bits); the rest of the "
                 "stream cannot be read\n");
    g_byte_array_unref(s);
}

static void test_pb_empty_and_unit(void)
{
    check_stream(MX_FEED_PROTOBUF, "", 0, "");
    mx_feed_reader *r = mx_feed_reader_new(MX_FEED_PROTOBUF, 1);
    g_assert_cmpstr(mx_feed_reader_unit(r), ==, "entry");
    mx_feed_reader_free(r);
}

static void test_pb_encode_round_trip(void)
{
    mx_feed_update u;
    char *err = NULL;
    g_assert_cmpint(mx_feed_update_build(&u, "add", "sender", "X@Y.test", "-7", "30", "block",
                                         "bounced", &err), ==, 0);
    GByteArray *s = g_byte_array_new();
    mx_feed_encode_protobuf(&u, s);
    mx_feed_update_clear(&u);
    g_assert_cmpint(mx_feed_update_build(&u, "del", "ip", "192.0.2.9", NULL, NULL, NULL, NULL,
                                         &err), ==, 0);
    mx_feed_encode_protobuf(&u, s);
    mx_feed_update_clear(&u);
    /* the flag is not part of a feed entry */
    check_stream(MX_FEED_PROTOBUF, s->data, s->len,
                 "1:sender:x@y.test:add:-7:30:bounced\n"
                 "2:ip:192.0.2.9:del:0:0\n");
    g_byte_array_unref(s);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(lines); i++) {
        char *name = row_name("line", lines[i].name);
        g_test_add_data_func(name, &lines[i], test_line);
        g_free(name);
    }
    g_test_add_func("/feed/line/4096 bytes is a line, 4097 is not; values to 320 bytes",
                    test_line_length);
    g_test_add_func("/feed/text/pieces of any size give the same lines and numbers",
                    test_text_stream);
    g_test_add_func("/feed/text/an over-long line is reported and skipped", test_text_stream_long_line);
    g_test_add_func("/feed/text/numbering starts where told", test_text_stream_numbering);
    for (size_t i = 0; i < G_N_ELEMENTS(pb_rows); i++) {
        char *name = row_name("protobuf", pb_rows[i].name);
        g_test_add_data_func(name, &pb_rows[i], test_pb_row);
        g_free(name);
    }
    g_test_add_func("/feed/protobuf/NUL bytes in value and reason", test_pb_nul_in_strings);
    g_test_add_func("/feed/protobuf/bodies that are not messages", test_pb_garbage);
    g_test_add_func("/feed/protobuf/truncated entry or length", test_pb_truncated);
    g_test_add_func("/feed/protobuf/oversized entries are skipped", test_pb_oversized);
    g_test_add_func("/feed/protobuf/a malformed length stops the stream", test_pb_malformed_length);
    g_test_add_func("/feed/protobuf/empty stream", test_pb_empty_and_unit);
    g_test_add_func("/feed/protobuf/encoded updates read back", test_pb_encode_round_trip);
    return g_test_run();
}
