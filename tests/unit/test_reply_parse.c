/*
 * test_reply_parse.c: backend replies, as a table of byte streams and the
 * replies each must yield.
 *
 * A row's expectation is a transcript: every reply completed, written as
 * code[line|line|...], then "!" if the stream ends in an error. Every row is
 * fed whole, split at every offset, split at every pair of offsets and byte
 * by byte; all must give the same transcript.
 */
#include <glib.h>
#include <string.h>

#include "reply_parse.h"

typedef struct rrow {
    const char *name;
    const char *in;
    size_t in_len;
    const char *want;
} rrow;

#define IN(s) .in = (s), .in_len = sizeof(s) - 1

static const rrow rows[] = {
    /* good replies */
    { "single line reply", IN("250 ok\r\n"), "250[ok]" },
    { "reply without text", IN("250\r\n"), "250[]" },
    { "reply with a space and no text", IN("250 \r\n"), "250[]" },
    { "text keeps inner and trailing spaces", IN("250 a  b \r\n"), "250[a  b ]" },
    { "text may hold TAB and UTF-8", IN("550 5.1.1 n\xc3\xa3o\texiste\r\n"),
      "550[5.1.1 n\xc3\xa3o\texiste]" },
    { "multiline EHLO reply",
      IN("250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"),
      "250[mx.example.org Hello|PIPELINING|SIZE 10240000|8BITMIME]" },
    { "continuation line without text", IN("250-\r\n250 x\r\n"), "250[|x]" },
    { "last line without text after continuations", IN("220-a\r\n220\r\n"), "220[a|]" },
    { "pipelined replies come out one at a time", IN("250 a\r\n251 b\r\n354 go\r\n"),
      "250[a]251[b]354[go]" },
    { "an unfinished reply waits for more", IN("250-a\r\n250 b"), "" },
    { "an unfinished line waits for more", IN("250 ok"), "" },
    { "a pending CR waits for its LF", IN("250 ok\r"), "" },
    { "lowest code is 200", IN("200 x\r\n"), "200[x]" },
    { "highest code is 599", IN("599 x\r\n"), "599[x]" },

    /* out of protocol */
    { "bare LF line end is an error", IN("250 ok\n"), "!" },
    { "bare LF inside a multiline reply is an error", IN("250-a\r\n250-b\n250 c\r\n"), "!" },
    { "bare CR is an error", IN("250 o\rk\r\n"), "!" },
    { "CR CR LF is an error", IN("250 ok\r\r\n"), "!" },
    { "NUL is an error", IN("250 o\0k\r\n"), "!" },
    { "escape character is an error", IN("250 \x1b[31mred\r\n"), "!" },
    { "DEL is an error", IN("250 a\x7f\r\n"), "!" },
    { "code 199 is out of range", IN("199 x\r\n"), "!" },
    { "code 100 is out of range", IN("100 x\r\n"), "!" },
    { "code 600 is out of range", IN("600 x\r\n"), "!" },
    { "code 000 is out of range", IN("000 x\r\n"), "!" },
    { "a code with a letter is malformed", IN("2x0 ok\r\n"), "!" },
    { "a two-digit code is malformed", IN("25 ok\r\n"), "!" },
    { "a four-digit code has a bad separator", IN("2500 ok\r\n"), "!" },
    { "an empty line is malformed", IN("\r\n"), "!" },
    { "a line of text alone is malformed", IN("hello\r\n"), "!" },
    { "underscore separator is an error", IN("250_ok\r\n"), "!" },
    { "colon separator is an error", IN("250:ok\r\n"), "!" },
    { "TAB separator is an error", IN("250\tok\r\n"), "!" },
    { "leading space is an error", IN(" 250 ok\r\n"), "!" },
    { "mismatched codes in a multiline reply are an error",
      IN("250-a\r\n251 b\r\n"), "!" },
    { "mismatched class in a multiline reply is an error", IN("250-a\r\n550 b\r\n"), "!" },
    { "an error after a good reply keeps the good reply", IN("250 ok\r\n250\n"), "250[ok]!" },
    { "a good reply after an error is not parsed", IN("250\n250 ok\r\n"), "!" },
};

static void add_reply(GString *t, const mx_reply *r)
{
    g_string_append_printf(t, "%d[", r->code);
    for (int i = 0; i < r->nlines; i++) {
        const char *l = mx_reply_line(r, i);

        /* every line is NUL-terminated and its length is right */
        g_assert_cmpuint(strlen(l), ==, r->len[i]);
        g_string_append_printf(t, "%s%s", i ? "|" : "", l);
    }
    g_string_append_c(t, ']');
}

/* The transcript of in cut at cuts[0..n) (ascending, may repeat). */
static char *transcript(const char *in, size_t len, const size_t *cuts, size_t n)
{
    char *buf = g_memdup2(in, len); /* exact size: ASan sees overreads */
    GString *t = g_string_new(NULL);
    mx_reply_parser *rp = g_new(mx_reply_parser, 1);
    size_t a = 0;
    int failed = 0;

    mx_reply_parser_init(rp);
    for (size_t i = 0; i <= n && !failed; i++) {
        size_t b = i < n ? cuts[i] : len;

        for (;;) {
            size_t used = 999999;
            const char *why = NULL;
            mx_rc rc = mx_reply_parse(rp, buf + a, buf + b, &used, &why);

            g_assert_cmpuint(used, <=, b - a);
            a += used;
            if (rc == MX_AGAIN) {
                g_assert_cmpuint(a, ==, b);
                break;
            }
            if (rc == MX_ERROR) {
                g_assert_nonnull(why);
                g_string_append_c(t, '!');
                failed = 1;
                break;
            }
            g_assert_cmpint(rc, ==, MX_DONE);
            g_assert_cmpint(rp->r.code, >=, 200);
            g_assert_cmpint(rp->r.code, <=, 599);
            g_assert_cmpint(rp->r.nlines, >=, 1);
            g_assert_cmpint(rp->r.nlines, <=, MX_REPLY_MAX_LINES);
            add_reply(t, &rp->r);
            if (a == b)
                break;
        }
    }
    g_free(rp);
    g_free(buf);
    return g_string_free(t, FALSE);
}

static void check_all_splits(const char *in, size_t n, const char *want)
{
    size_t cuts[2];
    size_t *all = g_new(size_t, 2 * n + 1);
    char *got = transcript(in, n, NULL, 0);

    g_assert_cmpstr(got, ==, want);
    g_free(got);
    for (size_t i = 0; i <= n; i++) {
        cuts[0] = i;
        got = transcript(in, n, cuts, 1);
        g_assert_cmpstr(got, ==, want);
        g_free(got);
        /* pairs of cuts are quadratic: keep them for the short rows */
        for (size_t j = i; n <= 300 && j <= n; j++) {
            cuts[1] = j;
            got = transcript(in, n, cuts, 2);
            g_assert_cmpstr(got, ==, want);
            g_free(got);
        }
    }
    for (size_t i = 0; i < n; i++) {
        all[2 * i] = i;
        all[2 * i + 1] = i;
    }
    got = transcript(in, n, all, n > 0 ? 2 * n - 1 : 0);
    g_assert_cmpstr(got, ==, want);
    g_free(got);
    g_free(all);
}

static void test_row(gconstpointer data)
{
    const rrow *r = data;

    check_all_splits(r->in, r->in_len, r->want);
}

/* ---- limits, built at run time ---- */

static void test_line_length(void)
{
    /* MX_REPLY_MAX_LINE counts the code, not the CRLF */
    for (size_t n = MX_REPLY_MAX_LINE - 1; n <= MX_REPLY_MAX_LINE + 1; n++) {
        char *text = g_strnfill(n - 4, 'x');
        char *in = g_strdup_printf("250 %s\r\n", text);
        char *want = g_strdup_printf("250[%s]", text);

        check_all_splits(in, strlen(in), n <= MX_REPLY_MAX_LINE ? want : "!");
        g_free(text);
        g_free(in);
        g_free(want);
    }
}

static GString *many_lines(int nlines, size_t textlen)
{
    GString *s = g_string_new(NULL);

    for (int i = 0; i < nlines; i++) {
        g_string_append_printf(s, "250%c", i + 1 < nlines ? '-' : ' ');
        for (size_t k = 0; k < textlen; k++)
            g_string_append_c(s, (char)('a' + i % 26));
        g_string_append(s, "\r\n");
    }
    return s;
}

static void test_line_count(void)
{
    GString *ok = many_lines(MX_REPLY_MAX_LINES, 3);
    GString *bad = many_lines(MX_REPLY_MAX_LINES + 1, 3);
    char *got;

    got = transcript(ok->str, ok->len, NULL, 0);
    g_assert_true(g_str_has_prefix(got, "250[aaa|bbb|"));
    g_free(got);
    check_all_splits(bad->str, bad->len, "!");
    g_string_free(ok, TRUE);
    g_string_free(bad, TRUE);
}

static void test_text_total(void)
{
    /* 64 lines of 127 octets fill text[] exactly (each has a NUL); 128 do not */
    GString *ok = many_lines(MX_REPLY_MAX_LINES, 127);
    GString *bad = many_lines(MX_REPLY_MAX_LINES, 128);
    char *got = transcript(ok->str, ok->len, NULL, 0);

    g_assert_cmpint(got[0], !=, '!');
    g_assert_cmpint(got[strlen(got) - 1], ==, ']');
    g_free(got);
    got = transcript(bad->str, bad->len, NULL, 0);
    g_assert_cmpstr(got, ==, "!");
    g_free(got);
    /* exactly one octet over: the last line's NUL would not fit */
    g_string_truncate(ok, ok->len - 2);
    g_string_append(ok, "z\r\n");
    got = transcript(ok->str, ok->len, NULL, 0);
    g_assert_cmpstr(got, ==, "!");
    g_free(got);
    g_string_free(ok, TRUE);
    g_string_free(bad, TRUE);
}

/* ---- behaviour around one reply ---- */

static void test_used_stops_after_the_reply(void)
{
    static const char in[] = "250-a\r\n250 b\r\n354 go\r\n";
    mx_reply_parser rp;
    size_t used;
    const char *why;

    mx_reply_parser_init(&rp);
    g_assert_cmpint(mx_reply_parse(&rp, in, in + sizeof(in) - 1, &used, &why), ==, MX_DONE);
    g_assert_cmpuint(used, ==, 14);
    g_assert_cmpint(rp.r.code, ==, 250);
    g_assert_cmpint(rp.r.nlines, ==, 2);
    /* the finished reply stays readable until the next byte is fed */
    g_assert_cmpint(mx_reply_parse(&rp, in + 14, in + 14, &used, &why), ==, MX_AGAIN);
    g_assert_cmpint(rp.r.code, ==, 250);
    g_assert_cmpint(mx_reply_parse(&rp, in + 14, in + sizeof(in) - 1, &used, &why), ==, MX_DONE);
    g_assert_cmpint(rp.r.code, ==, 354);
    g_assert_cmpint(rp.r.nlines, ==, 1);
    g_assert_cmpstr(mx_reply_line(&rp.r, 0), ==, "go");
}

static void test_error_is_sticky(void)
{
    static const char in[] = "250\n";
    static const char good[] = "250 ok\r\n";
    mx_reply_parser rp;
    size_t used;
    const char *why = NULL;

    mx_reply_parser_init(&rp);
    g_assert_cmpint(mx_reply_parse(&rp, in, in + 4, &used, &why), ==, MX_ERROR);
    g_assert_nonnull(why);
    g_assert_cmpint(mx_reply_parse(&rp, good, good + 8, &used, &why), ==, MX_ERROR);
}

static void test_line_out_of_range(void)
{
    static const char in[] = "250 ok\r\n";
    mx_reply_parser rp;
    size_t used;
    const char *why;

    mx_reply_parser_init(&rp);
    g_assert_cmpint(mx_reply_parse(&rp, in, in + 8, &used, &why), ==, MX_DONE);
    g_assert_cmpstr(mx_reply_line(&rp.r, 1), ==, "");
    g_assert_cmpstr(mx_reply_line(&rp.r, -1), ==, "");
}

static mx_reply parse_one(const char *in)
{
    mx_reply_parser rp;
    size_t used;
    const char *why;

    mx_reply_parser_init(&rp);
    g_assert_cmpint(mx_reply_parse(&rp, in, in + strlen(in), &used, &why), ==, MX_DONE);
    return rp.r;
}

static void assert_span(mx_span sp, const char *want)
{
    g_assert_cmpmem(sp.p, sp.len, want, strlen(want));
}

static void test_ehlo_extensions(void)
{
    mx_reply r = parse_one("250-SIZE mx.example.org greets you\r\n"
                           "250-PIPELINING\r\n"
                           "250-size 10240000\r\n"
                           "250-AUTH PLAIN LOGIN\r\n"
                           "250-AUTH=LOGIN\r\n"
                           "250-8BITMIME\r\n"
                           "250 XCLIENT NAME ADDR PORT  \r\n");
    mx_span p;

    g_assert_true(mx_reply_has_ext(&r, "PIPELINING", &p));
    g_assert_cmpuint(p.len, ==, 0);
    g_assert_true(mx_reply_has_ext(&r, "SIZE", &p));
    assert_span(p, "10240000"); /* from line 1 on, not the greeting */
    g_assert_true(mx_reply_has_ext(&r, "auth", &p));
    assert_span(p, "PLAIN LOGIN");
    g_assert_true(mx_reply_has_ext(&r, "XCLIENT", &p));
    assert_span(p, "NAME ADDR PORT");
    g_assert_true(mx_reply_has_ext(&r, "8BITMIME", NULL));
    g_assert_false(mx_reply_has_ext(&r, "8BIT", &p));
    g_assert_false(mx_reply_has_ext(&r, "CHUNKING", &p));
    g_assert_false(mx_reply_has_ext(&r, "mx.example.org", &p));
}

static void test_greeting_is_not_an_extension(void)
{
    mx_reply r = parse_one("250 STARTTLS\r\n");

    g_assert_false(mx_reply_has_ext(&r, "STARTTLS", NULL));
}

static void test_enhanced_codes(void)
{
    static const struct {
        const char *in;
        const char *esc; /* NULL: none */
    } cases[] = {
        { "550 5.1.1 User unknown\r\n", "5.1.1" },
        { "250 2.0.0 Ok: queued\r\n", "2.0.0" },
        { "250 2.0.0\r\n", "2.0.0" },
        { "452 4.5.3 Too many recipients\r\n", "4.5.3" },
        { "554 5.123.456 x\r\n", "5.123.456" },
        { "550-5.7.1 first\r\n550 5.7.1 second\r\n", "5.7.1" },
        { "250 ok\r\n", NULL },
        { "550 4.1.1 class differs from the code\r\n", NULL },
        { "354 3.0.0 no class 3\r\n", NULL },
        { "250 2.0.0x\r\n", NULL },
        { "550 5.1234.1 x\r\n", NULL },
        { "550 5.1.1234 x\r\n", NULL },
        { "550 5..1 x\r\n", NULL },
        { "550 5.1 x\r\n", NULL },
        { "550 5.1.\r\n", NULL },
        { "550\r\n", NULL },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        mx_reply r = parse_one(cases[i].in);
        mx_span esc = { NULL, 0 };
        int has = mx_reply_enhanced(&r, 0, &esc);

        if (cases[i].esc == NULL) {
            g_assert_false(has);
        } else {
            g_assert_true(has);
            assert_span(esc, cases[i].esc);
        }
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        char *path = g_strconcat("/reply/stream/", rows[i].name, NULL);

        g_test_add_data_func(path, &rows[i], test_row);
        g_free(path);
    }
    g_test_add_func("/reply/limits/a line of MX_REPLY_MAX_LINE octets is fine, one more is not",
                    test_line_length);
    g_test_add_func("/reply/limits/MX_REPLY_MAX_LINES lines are fine, one more is not",
                    test_line_count);
    g_test_add_func("/reply/limits/text that overflows the reply is an error", test_text_total);
    g_test_add_func("/reply/parser/used stops after the reply's last CRLF",
                    test_used_stops_after_the_reply);
    g_test_add_func("/reply/parser/after an error every call fails", test_error_is_sticky);
    g_test_add_func("/reply/parser/a line index out of range is empty", test_line_out_of_range);
    g_test_add_func("/reply/ehlo/extensions are found by keyword, case-insensitively",
                    test_ehlo_extensions);
    g_test_add_func("/reply/ehlo/the greeting line is not an extension",
                    test_greeting_is_not_an_extension);
    g_test_add_func("/reply/ehlo/enhanced status codes match the reply class",
                    test_enhanced_codes);
    return g_test_run();
}
