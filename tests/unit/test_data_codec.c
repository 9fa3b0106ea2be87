/*
 * test_data_codec.c: the DATA/BDAT decoder and the DATA encoder, as a table.
 *
 * Every decoder row is fed whole, split at every offset, split at every pair
 * of offsets (so empty spans and a CR or dot at each boundary are covered)
 * and byte by byte; all must give the row's result. Every row's output is
 * also checked to be canonical (CRLF only) and to survive encode + decode.
 */
#include <glib.h>
#include <string.h>

#include "data_codec.h"

enum { DATA, DATA_REJECT, BDAT, BDAT_REJECT };

typedef struct drow {
    const char *name;
    const char *in;
    size_t in_len;
    int mode;
    size_t max_line;
    int finish;     /* BDAT LAST: mx_data_dec_finish after the input */
    mx_rc rc;       /* MX_DONE or MX_AGAIN */
    size_t used;    /* for MX_DONE; MX_AGAIN consumes everything */
    const char *out;
    size_t out_len;
    unsigned flags;
} drow;

#define IN(s) .in = (s), .in_len = sizeof(s) - 1
#define OUT(s) .out = (s), .out_len = sizeof(s) - 1
#define DONE(n) .rc = MX_DONE, .used = (n)

/* The five smuggling variants of CVE-2023-51764 and friends: a fake end,
 * then a second transaction the attacker hopes we will run. */
#define SMUG_HEAD "From: a@example.org\r\n\r\nhello"
#define SMUG_TAIL "MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n" \
                  "From: ceo@bank.example\r\n\r\npay now\r\n"
#define SMUG_END ".\r\nQUIT\r\n"
#define SMUG(v) IN(SMUG_HEAD v SMUG_TAIL SMUG_END), DONE(sizeof(SMUG_HEAD v SMUG_TAIL ".\r\n") - 1)
#define SMUG_OUT OUT(SMUG_HEAD "\r\n.\r\n" SMUG_TAIL)

static const drow rows[] = {
    /* the end of DATA */
    { "empty message is a lone dot line", IN(".\r\n"), DONE(3), OUT("") },
    { "CRLF dot CRLF ends DATA", IN("hello\r\n.\r\n"), DONE(10), OUT("hello\r\n") },
    { "pipelined commands after the end are not consumed",
      IN("hi\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"), DONE(7),
      OUT("hi\r\n") },
    { "a second end sequence is left for the caller", IN("a\r\n.\r\n.\r\n"), DONE(6),
      OUT("a\r\n") },
    { "without the end sequence everything is consumed", IN("partial line"),
      .rc = MX_AGAIN, OUT("partial line") },
    { "CRLF dot at the end of input is pending", IN("a\r\n."), .rc = MX_AGAIN, OUT("a\r\n") },
    { "CRLF dot CR at the end of input is pending", IN("a\r\n.\r"), .rc = MX_AGAIN,
      OUT("a\r\n") },
    { "CR at the end of input is pending", IN("a\r"), .rc = MX_AGAIN, OUT("a") },
    { "finish after CRLF dot CR flushes a dot line and a bare CR", IN("a\r\n.\r"),
      .finish = 1, .rc = MX_AGAIN, OUT("a\r\n.\r\n"), .flags = MX_DATA_BARE_CR },
    { "empty lines are content", IN("\r\n\r\n.\r\n"), DONE(7), OUT("\r\n\r\n") },
    { "dot inside a line is content", IN("a.b\r\nc.\r\n.\r\n"), DONE(12), OUT("a.b\r\nc.\r\n") },
    { "space dot CRLF is content", IN("a\r\n .\r\n.\r\n"), DONE(10), OUT("a\r\n .\r\n") },
    { "CR CR LF dot CR LF ends DATA after a normalised CR", IN("a\r\r\n.\r\n"), DONE(7),
      OUT("a\r\n\r\n"), .flags = MX_DATA_BARE_CR },
    { "LF CR LF dot CR LF ends DATA after a normalised LF", IN("a\n\r\n.\r\n"), DONE(7),
      OUT("a\r\n\r\n"), .flags = MX_DATA_BARE_LF },

    /* dot-unstuffing, RFC 5321 4.5.2 */
    { "a stuffed dot is removed", IN("..hidden\r\n.\r\n"), DONE(13), OUT(".hidden\r\n") },
    { "a stuffed lone dot becomes a dot line", IN("a\r\n..\r\n.\r\n"), DONE(10),
      OUT("a\r\n.\r\n") },
    { "only the first of several dots is removed", IN("...x\r\n.\r\n"), DONE(9),
      OUT("..x\r\n") },
    { "dot space is unstuffed to space", IN(". \r\n.\r\n"), DONE(7), OUT(" \r\n") },
    { "the start of DATA counts as a line start", IN(".x\r\n.\r\n"), DONE(7), OUT("x\r\n") },
    { "a dot after a normalised LF is not unstuffed", IN("a\n..b\r\n.\r\n"), DONE(10),
      OUT("a\r\n..b\r\n"), .flags = MX_DATA_BARE_LF },

    /* smuggling: none of these ends the message */
    { "LF dot LF does not end DATA", SMUG("\n.\n"), SMUG_OUT, .flags = MX_DATA_BARE_LF },
    { "CR dot CR does not end DATA", SMUG("\r.\r"), SMUG_OUT, .flags = MX_DATA_BARE_CR },
    { "LF dot CRLF does not end DATA", SMUG("\n.\r\n"), SMUG_OUT, .flags = MX_DATA_BARE_LF },
    { "CRLF dot LF does not end DATA", SMUG("\r\n.\n"), SMUG_OUT, .flags = MX_DATA_BARE_LF },
    { "CRLF dot CR does not end DATA", SMUG("\r\n.\r"), SMUG_OUT, .flags = MX_DATA_BARE_CR },
    { "CR dot CRLF does not end DATA", SMUG("\r.\r\n"), SMUG_OUT, .flags = MX_DATA_BARE_CR },
    { "LF dot CR does not end DATA", SMUG("\n.\r"), SMUG_OUT,
      .flags = MX_DATA_BARE_LF | MX_DATA_BARE_CR },
    { "CR dot LF does not end DATA", SMUG("\r.\n"), SMUG_OUT,
      .flags = MX_DATA_BARE_LF | MX_DATA_BARE_CR },
    { "LF dot LF at the very start does not end DATA", IN("\n.\nX\r\n.\r\n"), DONE(9),
      OUT("\r\n.\r\nX\r\n"), .flags = MX_DATA_BARE_LF },
    { "CRLF dot CR CR LF does not end DATA", IN("a\r\n.\r\r\nX\r\n.\r\n"), DONE(13),
      OUT("a\r\n.\r\n\r\nX\r\n"), .flags = MX_DATA_BARE_CR },
    { "CRLF NUL dot CRLF does not end DATA", IN("a\r\n\0.\r\nX\r\n.\r\n"), DONE(13),
      OUT("a\r\n.\r\nX\r\n"), .flags = MX_DATA_NUL },
    { "CRLF dot NUL CRLF does not end DATA", IN("a\r\n.\0\r\nX\r\n.\r\n"), DONE(13),
      OUT("a\r\n\r\nX\r\n"), .flags = MX_DATA_NUL },
    { "CRLF dot dot CRLF does not end DATA", IN("a\r\n..\r\nX\r\n.\r\n"), DONE(13),
      OUT("a\r\n.\r\nX\r\n") },
    { "LF dot LF in reject mode is flagged and does not end DATA",
      IN("a\n.\nMAIL FROM:<x@y>\r\n.\r\n"), .mode = DATA_REJECT, DONE(24),
      OUT("a . MAIL FROM:<x@y>\r\n"), .flags = MX_DATA_BARE_LF },
    { "CRLF dot CR in reject mode is flagged and does not end DATA",
      IN("a\r\n.\rMAIL\r\n.\r\n"), .mode = DATA_REJECT, DONE(14), OUT("a\r\n. MAIL\r\n"),
      .flags = MX_DATA_BARE_CR },

    /* bare line ends: normalise or flag */
    { "bare LF becomes CRLF", IN("a\nb\r\n.\r\n"), DONE(8), OUT("a\r\nb\r\n"),
      .flags = MX_DATA_BARE_LF },
    { "bare CR becomes CRLF", IN("a\rb\r\n.\r\n"), DONE(8), OUT("a\r\nb\r\n"),
      .flags = MX_DATA_BARE_CR },
    { "LF CR is two line ends", IN("a\n\rb\r\n.\r\n"), DONE(9), OUT("a\r\n\r\nb\r\n"),
      .flags = MX_DATA_BARE_LF | MX_DATA_BARE_CR },
    { "bare LF in reject mode is flagged and becomes a space", IN("a\nb\r\n.\r\n"),
      .mode = DATA_REJECT, DONE(8), OUT("a b\r\n"), .flags = MX_DATA_BARE_LF },
    { "bare CR in reject mode is flagged and becomes a space", IN("a\rb\r\n.\r\n"),
      .mode = DATA_REJECT, DONE(8), OUT("a b\r\n"), .flags = MX_DATA_BARE_CR },
    { "clean message in reject mode has no flags", IN("a\r\nb\r\n.\r\n"), .mode = DATA_REJECT,
      DONE(9), OUT("a\r\nb\r\n") },

    /* NUL */
    { "NUL is dropped and flagged", IN("a\0b\r\n.\r\n"), DONE(8), OUT("ab\r\n"),
      .flags = MX_DATA_NUL },
    { "only NULs give no output", IN("\0\0\0"), .rc = MX_AGAIN, OUT(""), .flags = MX_DATA_NUL },

    /* line length */
    { "a line of exactly max_line octets is fine", IN("12345\r\n.\r\n"), .max_line = 5,
      DONE(10), OUT("12345\r\n") },
    { "a line over max_line is flagged", IN("123456\r\nab\r\n.\r\n"), .max_line = 5, DONE(15),
      OUT("123456\r\nab\r\n"), .flags = MX_DATA_LONG_LINE },
    { "line length counts output octets after unstuffing", IN("..2345\r\n.\r\n"),
      .max_line = 5, DONE(11), OUT(".2345\r\n") },
    { "line length counts the unfinished last line", IN("123456"), .max_line = 5,
      .rc = MX_AGAIN, OUT("123456"), .flags = MX_DATA_LONG_LINE },
    { "dropped NULs do not count toward line length", IN("12\0" "345\r\n.\r\n"), .max_line = 5,
      DONE(11), OUT("12345\r\n"), .flags = MX_DATA_NUL },
    { "normalised LF ends the line for the length count", IN("abc\ndef\r\n.\r\n"),
      .max_line = 3, DONE(12), OUT("abc\r\ndef\r\n"), .flags = MX_DATA_BARE_LF },
    { "in reject mode the stand-in space joins the lines", IN("abc\ndef\r\n.\r\n"),
      .mode = DATA_REJECT, .max_line = 3, DONE(12), OUT("abc def\r\n"),
      .flags = MX_DATA_BARE_LF | MX_DATA_LONG_LINE },

    /* BDAT (RFC 3030): no dots, no end */
    { "BDAT keeps a leading dot", IN(".x\r\n"), .mode = BDAT, .rc = MX_AGAIN, OUT(".x\r\n") },
    { "BDAT has no end sequence", IN("a\r\n.\r\nb\r\n"), .mode = BDAT, .rc = MX_AGAIN,
      OUT("a\r\n.\r\nb\r\n") },
    { "BDAT LAST with a final CRLF adds nothing", IN("abc\r\n"), .mode = BDAT, .finish = 1,
      .rc = MX_AGAIN, OUT("abc\r\n") },
    { "BDAT LAST without a final line end leaves the line open", IN("abc"), .mode = BDAT,
      .finish = 1, .rc = MX_AGAIN, OUT("abc") },
    { "BDAT LAST flushes a trailing CR as a bare CR", IN("abc\r"), .mode = BDAT, .finish = 1,
      .rc = MX_AGAIN, OUT("abc\r\n"), .flags = MX_DATA_BARE_CR },
    { "BDAT LAST in reject mode flushes a trailing CR as a space", IN("abc\r"),
      .mode = BDAT_REJECT, .finish = 1, .rc = MX_AGAIN, OUT("abc "),
      .flags = MX_DATA_BARE_CR },
    { "BDAT CR LF across chunks is one line end", IN("abc\r\ndef"), .mode = BDAT,
      .rc = MX_AGAIN, OUT("abc\r\ndef") },
    { "BDAT bare LF becomes CRLF", IN("a\nb"), .mode = BDAT, .rc = MX_AGAIN, OUT("a\r\nb"),
      .flags = MX_DATA_BARE_LF },
    { "BDAT bare CR in reject mode becomes a space", IN("a\rb"), .mode = BDAT_REJECT,
      .rc = MX_AGAIN, OUT("a b"), .flags = MX_DATA_BARE_CR },
    { "BDAT drops NUL", IN("a\0b"), .mode = BDAT, .rc = MX_AGAIN, OUT("ab"),
      .flags = MX_DATA_NUL },
    { "BDAT lone dot line is content", IN(".\r\n"), .mode = BDAT, .finish = 1, .rc = MX_AGAIN,
      OUT(".\r\n") },
    { "BDAT checks line length too", IN("123456\r\n"), .mode = BDAT, .max_line = 5,
      .rc = MX_AGAIN, OUT("123456\r\n"), .flags = MX_DATA_LONG_LINE },
};

/* ---- helpers ---- */

static void emit_gstring(void *ctx, const char *p, size_t len)
{
    g_assert_cmpuint(len, >, 0); /* the mx_emit_fn contract */
    g_string_append_len(ctx, p, (gssize)len);
}

typedef struct result {
    mx_rc rc;
    size_t used;
    GString *out;
    mx_data_dec d;
} result;

static void dec_init_mode(mx_data_dec *d, int mode, size_t max_line)
{
    mx_data_dec_init(d, mode == BDAT || mode == BDAT_REJECT, mode == DATA || mode == BDAT,
                     max_line);
}

/* Feed r->in cut at cuts[0..n) (ascending, may repeat); stop at MX_DONE. */
static void feed(const drow *row, const size_t *cuts, size_t n, result *res)
{
    /* An exact-size copy, so ASan sees any read past the end. */
    char *buf = g_memdup2(row->in, row->in_len);
    size_t a = 0;

    dec_init_mode(&res->d, row->mode, row->max_line);
    res->out = g_string_new(NULL);
    res->rc = MX_AGAIN;
    res->used = 0;
    for (size_t i = 0; i <= n; i++) {
        size_t b = i < n ? cuts[i] : row->in_len;
        size_t used = 12345;

        res->rc = mx_data_decode(&res->d, buf + a, buf + b, &used, emit_gstring, res->out);
        if (res->rc == MX_DONE) {
            res->used = a + used;
            break;
        }
        g_assert_cmpint(res->rc, ==, MX_AGAIN);
        g_assert_cmpuint(used, ==, b - a);
        res->used = b;
        a = b;
    }
    if (res->rc == MX_AGAIN && row->finish)
        mx_data_dec_finish(&res->d, emit_gstring, res->out);
    g_free(buf);
}

/* Only CRLF line ends: no CR without LF after it, no LF without CR before. */
static void assert_canonical(const char *p, size_t len, int complete)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\r')
            g_assert_true(i + 1 < len ? p[i + 1] == '\n' : !complete);
        if (p[i] == '\n')
            g_assert_true(i > 0 && p[i - 1] == '\r');
    }
}

static uint64_t count_crlf(const char *p, size_t len)
{
    uint64_t n = 0;

    for (size_t i = 0; i + 1 < len; i++)
        n += p[i] == '\r' && p[i + 1] == '\n';
    return n;
}

static void check(const drow *row, result *res)
{
    g_assert_cmpint(res->rc, ==, row->rc);
    g_assert_cmpuint(res->used, ==, row->rc == MX_DONE ? row->used : row->in_len);
    g_assert_cmpmem(res->out->str, res->out->len, row->out, row->out_len);
    g_assert_cmphex(res->d.flags, ==, row->flags);
    g_assert_cmpuint(res->d.out_bytes, ==, res->out->len);
    g_assert_cmpuint(res->d.lines, ==, count_crlf(res->out->str, res->out->len));
    assert_canonical(res->out->str, res->out->len, 1);
    g_string_free(res->out, TRUE);
}

static void test_row(gconstpointer data)
{
    const drow *row = data;
    size_t n = row->in_len;
    size_t cuts[2];
    size_t *all = g_new(size_t, 2 * n + 1);
    result res;

    feed(row, NULL, 0, &res);
    check(row, &res);

    for (size_t i = 0; i <= n; i++) {
        cuts[0] = i;
        feed(row, cuts, 1, &res);
        check(row, &res);
        for (size_t j = i; j <= n; j++) {
            cuts[1] = j;
            feed(row, cuts, 2, &res);
            check(row, &res);
        }
    }

    /* byte by byte, with an empty span before every byte */
    for (size_t i = 0; i < n; i++) {
        all[2 * i] = i;
        all[2 * i + 1] = i;
    }
    feed(row, all, n > 0 ? 2 * n - 1 : 0, &res);
    check(row, &res);
    g_free(all);
}

/* ---- encoder ---- */

static GString *encode_split(const char *p, size_t len, size_t cut)
{
    GString *out = g_string_new(NULL);
    mx_data_enc e;

    mx_data_enc_init(&e);
    mx_data_encode(&e, p, p + cut, emit_gstring, out);
    mx_data_encode(&e, p + cut, p + len, emit_gstring, out);
    mx_data_encode_finish(&e, emit_gstring, out);
    return out;
}

typedef struct erow {
    const char *in;
    size_t in_len;
    const char *out;
    size_t out_len;
} erow;

static const erow erows[] = {
    { IN(""), OUT(".\r\n") },
    { IN("a\r\n"), OUT("a\r\n.\r\n") },
    { IN("abc"), OUT("abc\r\n.\r\n") },
    { IN(".\r\n"), OUT("..\r\n.\r\n") },
    { IN(".x"), OUT("..x\r\n.\r\n") },
    { IN("a\r\n.b\r\n"), OUT("a\r\n..b\r\n.\r\n") },
    { IN("a\r\n..\r\n"), OUT("a\r\n...\r\n.\r\n") },
    { IN("a.\r\nb.c"), OUT("a.\r\nb.c\r\n.\r\n") },
    { IN("\r\n.\r\n.\r\n"), OUT("\r\n..\r\n..\r\n.\r\n") },
};

static void test_encoder_table(void)
{
    for (size_t r = 0; r < G_N_ELEMENTS(erows); r++) {
        for (size_t cut = 0; cut <= erows[r].in_len; cut++) {
            GString *out = encode_split(erows[r].in, erows[r].in_len, cut);

            g_assert_cmpmem(out->str, out->len, erows[r].out, erows[r].out_len);
            g_string_free(out, TRUE);
        }
    }
}

/* decode(encode(x)) == x, with CRLF added when x did not end in one */
static void assert_round_trip(const char *p, size_t len)
{
    for (size_t cut = 0; cut <= len; cut++) {
        GString *enc = encode_split(p, len, cut);
        GString *back = g_string_new(NULL);
        mx_data_dec d;
        size_t used = 0;
        mx_rc rc;

        mx_data_dec_init(&d, 0, 1, 0);
        rc = mx_data_decode(&d, enc->str, enc->str + enc->len, &used, emit_gstring, back);
        g_assert_cmpint(rc, ==, MX_DONE);
        g_assert_cmpuint(used, ==, enc->len);
        g_assert_cmphex(d.flags, ==, 0);
        if (len >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n') {
            g_assert_cmpmem(back->str, back->len, p, len);
        } else if (len > 0) {
            g_assert_cmpuint(back->len, ==, len + 2);
            g_assert_cmpmem(back->str, len, p, len);
            g_assert_cmpmem(back->str + len, 2, "\r\n", 2);
        } else {
            g_assert_cmpuint(back->len, ==, 0);
        }
        g_string_free(enc, TRUE);
        g_string_free(back, TRUE);
    }
}

static void test_round_trip_rows(void)
{
    for (size_t r = 0; r < G_N_ELEMENTS(rows); r++) {
        result res;

        if (rows[r].rc != MX_DONE && !rows[r].finish)
            continue;
        feed(&rows[r], NULL, 0, &res);
        assert_round_trip(res.out->str, res.out->len);
        g_string_free(res.out, TRUE);
    }
}

/* Random bytes drawn mostly from the interesting ones: CR, LF, '.', NUL. */
static void test_round_trip_random(void)
{
    static const char alphabet[] = "\r\n.\0ab";

    for (int iter = 0; iter < 3000; iter++) {
        size_t len = (size_t)g_test_rand_int_range(0, 40);
        char *in = g_malloc(len + 1);
        GString *out = g_string_new(NULL);
        mx_data_dec d;
        size_t used;

        for (size_t i = 0; i < len; i++)
            in[i] = alphabet[g_test_rand_int_range(0, sizeof(alphabet) - 1)];
        mx_data_dec_init(&d, 1, 1, 0);
        g_assert_cmpint(mx_data_decode(&d, in, in + len, &used, emit_gstring, out), ==, MX_AGAIN);
        mx_data_dec_finish(&d, emit_gstring, out);
        assert_canonical(out->str, out->len, 1);
        assert_round_trip(out->str, out->len);
        g_string_free(out, TRUE);
        g_free(in);
    }
}

/* ---- single behaviours that are not one row ---- */

/* feed a whole string literal */
#define DECODE(d, lit, used, out) \
    mx_data_decode((d), (lit), &(lit)[sizeof(lit) - 1], (used), emit_gstring, (out))

static void test_bdat_cr_waits_for_next_chunk(void)
{
    static const char c1[] = "abc\r", c2[] = "\ndef";
    GString *out = g_string_new(NULL);
    mx_data_dec d;
    size_t used;

    mx_data_dec_init(&d, 1, 1, 0);
    DECODE(&d, c1, &used, out);
    g_assert_cmpuint(used, ==, 4);
    g_assert_cmpstr(out->str, ==, "abc"); /* the CR is held back */
    DECODE(&d, c2, &used, out);
    g_assert_cmpstr(out->str, ==, "abc\r\ndef");
    g_assert_cmphex(d.flags, ==, 0);
    g_string_free(out, TRUE);
}

static void test_bdat_cr_then_other_byte(void)
{
    static const char c1[] = "abc\r", c2[] = "x";
    GString *out = g_string_new(NULL);
    mx_data_dec d;
    size_t used;

    mx_data_dec_init(&d, 1, 1, 0);
    DECODE(&d, c1, &used, out);
    DECODE(&d, c2, &used, out);
    g_assert_cmpstr(out->str, ==, "abc\r\nx");
    g_assert_cmphex(d.flags, ==, MX_DATA_BARE_CR);
    g_string_free(out, TRUE);
}

static void test_decode_after_end(void)
{
    static const char c1[] = ".\r\n", c2[] = "x\r\n";
    GString *out = g_string_new(NULL);
    mx_data_dec d;
    size_t used = 99;

    mx_data_dec_init(&d, 0, 1, 0);
    g_assert_cmpint(DECODE(&d, c1, &used, out), ==, MX_DONE);
    g_assert_cmpint(DECODE(&d, c2, &used, out), ==, MX_DONE);
    g_assert_cmpuint(used, ==, 0);
    g_assert_cmpuint(out->len, ==, 0);
    g_string_free(out, TRUE);
}

static void count_emit(void *ctx, const char *p, size_t len)
{
    (void)p;
    g_assert_cmpuint(len, >, 0);
    (*(int *)ctx)++;
}

static void test_clean_span_is_one_emit(void)
{
    static const char body[] = "line one\r\nline two\r\nline three\r\n.\r\n";
    mx_data_dec d;
    size_t used;
    int calls = 0;

    mx_data_dec_init(&d, 0, 1, 0);
    g_assert_cmpint(mx_data_decode(&d, body, body + sizeof(body) - 1, &used, count_emit, &calls),
                    ==, MX_DONE);
    g_assert_cmpint(calls, ==, 1);
    g_assert_cmpuint(d.lines, ==, 3);
    g_assert_cmpuint(d.out_bytes, ==, sizeof(body) - 1 - 3);
}

static void test_encoder_never_emits_end_early(void)
{
    /* Even fed bare LFs (outside its contract) the encoder stuffs every
     * line start, so the backend can not see an end before finish(). */
    static const char in[] = "a\n.\r\n.\n.\r\n";
    GString *out = encode_split(in, sizeof(in) - 1, 0);

    g_assert_null(g_strstr_len(out->str, (gssize)out->len - 5, "\r\n.\r\n"));
    g_assert_true(g_str_has_suffix(out->str, "\r\n.\r\n"));
    g_string_free(out, TRUE);
}

static char *test_name(const char *prefix, const char *name)
{
    return g_strconcat(prefix, name, NULL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        char *path = test_name("/data/decoder/", rows[i].name);

        g_test_add_data_func(path, &rows[i], test_row);
        g_free(path);
    }
    g_test_add_func("/data/decoder/BDAT CR at a chunk end waits for the next chunk",
                    test_bdat_cr_waits_for_next_chunk);
    g_test_add_func("/data/decoder/BDAT CR at a chunk end then another byte is a bare CR",
                    test_bdat_cr_then_other_byte);
    g_test_add_func("/data/decoder/after the end nothing more is consumed",
                    test_decode_after_end);
    g_test_add_func("/data/decoder/a clean span is emitted in one run",
                    test_clean_span_is_one_emit);
    g_test_add_func("/data/encoder/dot-stuffs line starts and terminates", test_encoder_table);
    g_test_add_func("/data/encoder/never emits the end sequence before finish",
                    test_encoder_never_emits_end_early);
    g_test_add_func("/data/round trip/every decoded row survives encode and decode",
                    test_round_trip_rows);
    g_test_add_func("/data/round trip/random CR LF dot NUL soup survives encode and decode",
                    test_round_trip_random);
    return g_test_run();
}
