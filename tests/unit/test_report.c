/*
 * test_report.c: the report as each format renders it, from counts set
 * here by hand.
 *
 *  - a small known report, word for word in text and csv, and the numbers
 *    and shape of its json: totals, each direction's share and each
 *    outcome's share of its direction, with one decimal;
 *  - a report of nothing: no division by zero, "-" (text, html) and null
 *    (json) where there is no total to share;
 *  - what every format must and must not contain: the warning when
 *    counters could not be read, the store's name escaped for json and
 *    html, no script and nothing fetched from anywhere in html;
 *  - long reports: the text timeline leaves out the empty hours and says
 *    how many; every format copes with a single hour and with 30 days.
 */
#include <string.h>

#include <glib.h>

#include "report.h"

#define NOW 1714559400 /* 2024-05-01T10:30:00Z */

/* 3 hours from 08:00: messages and, in brackets, recipients
 *   08:00 inbound delivered 3 (4)
 *   09:00 inbound rejected-malware 1 (2), outbound delivered 1 (3)
 *   10:00 relay-denied rejected-relay 1 (3) */
static mx_report *known_report(void)
{
    mx_report *r = mx_report_new(NOW, 3);
    g_strlcpy(r->store, "memcached", sizeof(r->store));
    MX_REPORT_AT(r, 0, MX_DIR_INBOUND, MX_OUT_DELIVERED, MX_UNIT_MESSAGES) = 3;
    MX_REPORT_AT(r, 0, MX_DIR_INBOUND, MX_OUT_DELIVERED, MX_UNIT_RECIPIENTS) = 4;
    MX_REPORT_AT(r, 1, MX_DIR_INBOUND, MX_OUT_REJECTED_MALWARE, MX_UNIT_MESSAGES) = 1;
    MX_REPORT_AT(r, 1, MX_DIR_INBOUND, MX_OUT_REJECTED_MALWARE, MX_UNIT_RECIPIENTS) = 2;
    MX_REPORT_AT(r, 1, MX_DIR_OUTBOUND, MX_OUT_DELIVERED, MX_UNIT_MESSAGES) = 1;
    MX_REPORT_AT(r, 1, MX_DIR_OUTBOUND, MX_OUT_DELIVERED, MX_UNIT_RECIPIENTS) = 3;
    MX_REPORT_AT(r, 2, MX_DIR_RELAY_DENIED, MX_OUT_REJECTED_RELAY, MX_UNIT_MESSAGES) = 1;
    MX_REPORT_AT(r, 2, MX_DIR_RELAY_DENIED, MX_OUT_REJECTED_RELAY, MX_UNIT_RECIPIENTS) = 3;
    return r;
}

static mx_report *zero_report(void)
{
    mx_report *r = mx_report_new(NOW, 3);
    g_strlcpy(r->store, "embedded", sizeof(r->store));
    return r;
}

static char *render(const mx_report *r, mx_report_format fmt)
{
    GString *out = g_string_new(NULL);
    mx_report_render(out, r, fmt, NOW);
    return g_string_free(out, FALSE);
}

/* the first line where a and b differ, for a readable failure */
static void assert_same_text(const char *got, const char *want)
{
    if (strcmp(got, want) == 0)
        return;
    char **g = g_strsplit(got, "\n", -1), **w = g_strsplit(want, "\n", -1);
    for (int i = 0; g[i] || w[i]; i++) {
        if (!g[i] || !w[i] || strcmp(g[i], w[i]) != 0) {
            g_test_message("line %d differs:\n got: %s\nwant: %s\nall of it:\n%s", i + 1,
                           g[i] ? g[i] : "(end)", w[i] ? w[i] : "(end)", got);
            break;
        }
    }
    g_strfreev(g);
    g_strfreev(w);
    g_assert_cmpstr(got, ==, want);
}

/* ---- text ---- */

static const char known_text[] =
    "mxgate report\n"
    "  generated  2024-05-01T10:30:00Z\n"
    "  period     2024-05-01T08:00:00Z to 2024-05-01T11:00:00Z (3 hours)\n"
    "  store      memcached\n"
    "\n"
    "Totals                      messages          recipients\n"
    "  all                      6                  12\n"
    "  inbound                  4   66.7%           6   50.0%\n"
    "  outbound                 1   16.7%           3   25.0%\n"
    "  internal                 0    0.0%           0    0.0%\n"
    "  relay-denied             1   16.7%           3   25.0%\n"
    "\n"
    "Outcomes per direction, messages\n"
    "  direction       deliv  malware    reput  ratelim    relay  backend    proto tempfail     total\n"
    "  inbound             3        1        0        0        0        0        0        0         4\n"
    "                  75.0%    25.0%     0.0%     0.0%     0.0%     0.0%     0.0%     0.0%\n"
    "  outbound            1        0        0        0        0        0        0        0         1\n"
    "                 100.0%     0.0%     0.0%     0.0%     0.0%     0.0%     0.0%     0.0%\n"
    "  internal            0        0        0        0        0        0        0        0         0\n"
    "                      -        -        -        -        -        -        -        -\n"
    "  relay-denied        0        0        0        0        1        0        0        0         1\n"
    "                   0.0%     0.0%     0.0%     0.0%   100.0%     0.0%     0.0%     0.0%\n"
    "  all                 4        1        0        0        1        0        0        0         6\n"
    "                  66.7%    16.7%     0.0%     0.0%    16.7%     0.0%     0.0%     0.0%\n"
    "\n"
    "Outcomes per direction, recipients\n"
    "  direction       deliv  malware    reput  ratelim    relay  backend    proto tempfail     total\n"
    "  inbound             4        2        0        0        0        0        0        0         6\n"
    "                  66.7%    33.3%     0.0%     0.0%     0.0%     0.0%     0.0%     0.0%\n"
    "  outbound            3        0        0        0        0        0        0        0         3\n"
    "                 100.0%     0.0%     0.0%     0.0%     0.0%     0.0%     0.0%     0.0%\n"
    "  internal            0        0        0        0        0        0        0        0         0\n"
    "                      -        -        -        -        -        -        -        -\n"
    "  relay-denied        0        0        0        0        3        0        0        0         3\n"
    "                   0.0%     0.0%     0.0%     0.0%   100.0%     0.0%     0.0%     0.0%\n"
    "  all                 7        2        0        0        3        0        0        0        12\n"
    "                  58.3%    16.7%     0.0%     0.0%    25.0%     0.0%     0.0%     0.0%\n"
    "\n"
    "  deliv = delivered, malware = rejected-malware, reput = rejected-reputation,\n"
    "  ratelim = rejected-ratelimit, relay = rejected-relay, backend = rejected-backend,\n"
    "  proto = rejected-protocol, tempfail = tempfailed.\n"
    "  Percentages are of the row's total.\n"
    "\n"
    "Timeline (messages per hour)\n"
    "  hour (UTC)            inbound     outbound     internal relay-denied     total\n"
    "  2024-05-01 08:00            3            0            0            0         3\n"
    "  2024-05-01 09:00            1            1            0            0         2\n"
    "  2024-05-01 10:00            0            0            0            1         1\n";

static void test_text_width(void)
{
    mx_report *r = known_report();
    /* wide counts must not push the outcome tables past 100 columns */
    MX_REPORT_AT(r, 0, MX_DIR_INBOUND, MX_OUT_DELIVERED, MX_UNIT_MESSAGES) = 99999999;
    char *got = render(r, MX_REPORT_TEXT);
    char **lines = g_strsplit(got, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        g_assert_cmpuint(strlen(lines[i]), <=, 100);
        size_t n = strlen(lines[i]);
        g_assert_true(n == 0 || lines[i][n - 1] != ' ');
    }
    g_strfreev(lines);
    g_free(got);
    mx_report_free(r);
}

static void test_text_long_timeline(void)
{
    mx_report *r = mx_report_new(NOW, 48);
    MX_REPORT_AT(r, 5, MX_DIR_INTERNAL, MX_OUT_TEMPFAILED, MX_UNIT_MESSAGES) = 2;
    MX_REPORT_AT(r, 47, MX_DIR_OUTBOUND, MX_OUT_DELIVERED, MX_UNIT_MESSAGES) = 7;
    char *got = render(r, MX_REPORT_TEXT);
    g_assert_nonnull(strstr(got, "(48 hours)"));
    g_assert_nonnull(strstr(got, "  store      unknown\n"));
    const char *tl = strstr(got, "Timeline (messages per hour)\n");
    g_assert_nonnull(tl);
    g_assert_cmpstr(strchr(strchr(tl, '\n') + 1, '\n') + 1, ==,
                    "  2024-04-29 16:00            0            0            2            0"
                    "         2\n"
                    "  2024-05-01 10:00            0            7            0            0"
                    "         7\n"
                    "  (46 hours without messages left out)\n");
    g_free(got);
    mx_report_free(r);
}

/* ---- csv ---- */

static const char known_csv[] = "hour_start,direction,outcome,unit,count\r\n"
                                "2024-05-01T08:00:00Z,inbound,delivered,messages,3\r\n"
                                "2024-05-01T08:00:00Z,inbound,delivered,recipients,4\r\n"
                                "2024-05-01T09:00:00Z,inbound,rejected-malware,messages,1\r\n"
                                "2024-05-01T09:00:00Z,inbound,rejected-malware,recipients,2\r\n"
                                "2024-05-01T09:00:00Z,outbound,delivered,messages,1\r\n"
                                "2024-05-01T09:00:00Z,outbound,delivered,recipients,3\r\n"
                                "2024-05-01T10:00:00Z,relay-denied,rejected-relay,messages,1\r\n"
                                "2024-05-01T10:00:00Z,relay-denied,rejected-relay,recipients,3\r\n";

/* ---- the known report, word for word ---- */

typedef struct exact_row {
    const char *name;
    mx_report_format fmt;
    const char *want;
} exact_row;

static const exact_row exacts[] = {
    {"text, word for word", MX_REPORT_TEXT, known_text},
    {"csv, row for row", MX_REPORT_CSV, known_csv},
};

static void test_exact(gconstpointer data)
{
    const exact_row *row = data;
    mx_report *r = known_report();
    char *got = render(r, row->fmt);
    assert_same_text(got, row->want);
    g_free(got);
    mx_report_free(r);
}

/* ---- json ---- */

/* brackets balance outside strings, and the text is one object */
static void assert_json_shape(const char *s)
{
    int depth = 0, in_string = 0, objects = 0;
    for (const char *p = s; *p; p++) {
        if (in_string) {
            if (*p == '\\')
                p++;
            else if (*p == '"')
                in_string = 0;
            else
                g_assert_cmpint((unsigned char)*p, >=, 0x20);
            continue;
        }
        switch (*p) {
        case '"':
            in_string = 1;
            break;
        case '{':
        case '[':
            if (depth == 0)
                objects++;
            depth++;
            break;
        case '}':
        case ']':
            depth--;
            g_assert_cmpint(depth, >=, 0);
            break;
        }
    }
    g_assert_false(in_string);
    g_assert_cmpint(depth, ==, 0);
    g_assert_cmpint(objects, ==, 1);
    g_assert_cmpint(s[0], ==, '{');
    g_assert_cmpstr(s + strlen(s) - 2, ==, "}\n");
}

static guint count_of(const char *hay, const char *needle)
{
    guint n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_json_known(void)
{
    mx_report *r = known_report();
    char *got = render(r, MX_REPORT_JSON);
    assert_json_shape(got);
    static const char *const want[] = {
        "{\n  \"generated\": \"2024-05-01T10:30:00Z\",\n  \"from\": \"2024-05-01T08:00:00Z\",\n"
        "  \"to\": \"2024-05-01T11:00:00Z\",\n  \"store\": \"memcached\",\n  \"missing\": 0,\n",
        "\"messages\": {\n      \"total\": 6,\n",
        "\"recipients\": {\n      \"total\": 12,\n",
        "\"inbound\": {\"count\": 4, \"percent\": 66.7, \"outcomes\": {\"delivered\": 3, "
        "\"rejected-malware\": 1, \"rejected-reputation\": 0, \"rejected-ratelimit\": 0, "
        "\"rejected-relay\": 0, \"rejected-backend\": 0, \"rejected-protocol\": 0, "
        "\"tempfailed\": 0}}",
        "\"inbound\": {\"count\": 6, \"percent\": 50.0, ",
        "\"internal\": {\"count\": 0, \"percent\": 0.0, ",
        "\"relay-denied\": {\"count\": 1, \"percent\": 16.7, ",
        "\"relay-denied\": {\"count\": 3, \"percent\": 25.0, ",
        "{\"start\": \"2024-05-01T10:00:00Z\",\n     \"messages\": {\"inbound\": {\"delivered\": 0",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(want); i++)
        if (!strstr(got, want[i]))
            g_error("json lacks %s\nin:\n%s", want[i], got);
    g_assert_cmpuint(count_of(got, "\"start\": "), ==, 3);
    g_assert_cmpuint(count_of(got, "\"tempfailed\": "), ==, 3 * 8 + 8);
    g_free(got);
    mx_report_free(r);
}

static void test_json_zero(void)
{
    mx_report *r = zero_report();
    char *got = render(r, MX_REPORT_JSON);
    assert_json_shape(got);
    g_assert_cmpuint(count_of(got, "\"percent\": null"), ==, 8);
    g_assert_cmpuint(count_of(got, "\"total\": 0,"), ==, 2);
    g_free(got);
    mx_report_free(r);
}

/* ---- what each format must and must not say ---- */

typedef struct say_row {
    const char *name;
    mx_report_format fmt;
    int zero;             /* the report of nothing, else the known one */
    int missing;          /* r->missing */
    const char *store;    /* NULL: the report's own */
    const char *has[6];   /* substrings it must contain */
    const char *hasnt[8]; /* and must not */
    const char *starts;   /* its beginning, or NULL */
} say_row;

#define NO_FETCH "<script", "http:", "https:", "//", "@import", "url(", "<link"

static const say_row says[] = {
    {"text/zero",
     MX_REPORT_TEXT,
     1,
     0,
     NULL,
     {"  all                      0                   0\n",
      "  inbound                  0       -           0       -\n",
      "                      -        -        -        -        -        -        -        -\n"},
     {"nan", "inf", "WARNING"},
     "mxgate report\n"},
    {"text/missing",
     MX_REPORT_TEXT,
     0,
     3,
     NULL,
     {"  inbound                  4   66.7%"},
     {NULL},
     "WARNING: 3 counters could not be read from the store; the counts shown may be too "
     "low.\n\nmxgate report\n"},
    {"text/one missing",
     MX_REPORT_TEXT,
     0,
     1,
     NULL,
     {NULL},
     {NULL},
     "WARNING: 1 counter could not be read"},
    {"text/control bytes in the store",
     MX_REPORT_TEXT,
     0,
     0,
     "a\x1b[2J\tb",
     {"store      a?[2J?b\n"},
     {"\x1b"},
     NULL},
    {"json/missing", MX_REPORT_JSON, 0, 3, NULL, {"  \"missing\": 3,\n"}, {NULL}, "{\n"},
    {"json/store escaped",
     MX_REPORT_JSON,
     0,
     0,
     "a\"b\\c\nd",
     {"  \"store\": \"a\\\"b\\\\c?d\",\n"},
     {NULL},
     NULL},
    {"json/store not UTF-8",
     MX_REPORT_JSON,
     0,
     0,
     "b\xff",
     {"\"store\": \"b\xef\xbf\xbd\""},
     {"\xff"},
     NULL},
    {"csv/zero",
     MX_REPORT_CSV,
     1,
     0,
     NULL,
     {NULL},
     {"# warning", "embedded"},
     "hour_start,direction,outcome,unit,count\r\n"},
    {"csv/missing",
     MX_REPORT_CSV,
     0,
     3,
     NULL,
     {known_csv},
     {NULL},
     "# warning: 3 counters could not be read from the store; the counts shown may be too "
     "low\r\nhour_start,"},
    {"html/known",
     MX_REPORT_HTML,
     0,
     0,
     NULL,
     {"<svg", "<meta charset=\"utf-8\">", "66.7%", "50.0%", "rejected-ratelimit", "</html>\n"},
     {NO_FETCH, "class=\"warning\""},
     "<!DOCTYPE html>\n<html lang=\"en\">\n"},
    {"html/zero",
     MX_REPORT_HTML,
     1,
     0,
     NULL,
     {"no messages in this period", "none in this period", "<td>-</td>"},
     {NO_FETCH, "nan"},
     "<!DOCTYPE html>\n"},
    {"html/missing",
     MX_REPORT_HTML,
     0,
     3,
     NULL,
     {"<p class=\"warning\" role=\"alert\">Warning: 3 counters could not be read from the "
      "store; the counts shown may be too low.</p>"},
     {NO_FETCH},
     NULL},
    {"html/store escaped",
     MX_REPORT_HTML,
     0,
     0,
     "<&>\"x'",
     {"<dd>&lt;&amp;&gt;&quot;x&apos;</dd>"},
     {NO_FETCH, "<&>"},
     NULL},
};

static void test_says(gconstpointer data)
{
    const say_row *row = data;
    mx_report *r = row->zero ? zero_report() : known_report();
    r->missing = row->missing;
    if (row->store)
        g_strlcpy(r->store, row->store, sizeof(r->store));
    char *got = render(r, row->fmt);
    for (size_t i = 0; i < G_N_ELEMENTS(row->has) && row->has[i]; i++)
        if (!strstr(got, row->has[i]))
            g_error("%s: lacks \"%s\" in:\n%s", row->name, row->has[i], got);
    for (size_t i = 0; i < G_N_ELEMENTS(row->hasnt) && row->hasnt[i]; i++)
        if (strstr(got, row->hasnt[i]))
            g_error("%s: has \"%s\" in:\n%s", row->name, row->hasnt[i], got);
    if (row->starts && !g_str_has_prefix(got, row->starts))
        g_error("%s: does not start with \"%s\":\n%s", row->name, row->starts, got);
    if (row->fmt == MX_REPORT_JSON)
        assert_json_shape(got);
    g_free(got);
    mx_report_free(r);
}

/* ---- sizes ---- */

static void test_sizes(void)
{
    static const int hours[] = {1, 2, 24, 25, 168, 720};
    for (size_t i = 0; i < G_N_ELEMENTS(hours); i++) {
        mx_report *r = mx_report_new(NOW, hours[i]);
        for (int h = 0; h < r->hours; h += 3)
            MX_REPORT_AT(r, h, h % MX_DIR__COUNT, h % MX_OUT__COUNT, h % MX_UNIT__COUNT) =
                (uint64_t)h * 1000 + 1;
        for (int fmt = MX_REPORT_TEXT; fmt <= MX_REPORT_HTML; fmt++) {
            char *got = render(r, (mx_report_format)fmt);
            g_assert_cmpuint(strlen(got), >, 0);
            if (fmt == MX_REPORT_JSON) {
                assert_json_shape(got);
                g_assert_cmpuint(count_of(got, "\"start\": "), ==, (guint)hours[i]);
            }
            if (fmt == MX_REPORT_HTML)
                g_assert_null(strstr(got, "nan"));
            g_free(got);
        }
        mx_report_free(r);
    }
}

/* registers /report/GROUP/NAME for each of n rows of size bytes, every
 * row type starting with its name */
static void add_rows(const char *group, const void *rows, size_t n, size_t size, GTestDataFunc f)
{
    for (size_t i = 0; i < n; i++) {
        const void *row = (const char *)rows + i * size;
        char *name = g_strdup_printf("/report/%s/%s", group, *(const char *const *)row);
        g_test_add_data_func(name, row, f);
        g_free(name);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    add_rows("known", exacts, G_N_ELEMENTS(exacts), sizeof(exacts[0]), test_exact);
    add_rows("says", says, G_N_ELEMENTS(says), sizeof(says[0]), test_says);
    g_test_add_func("/report/text/at most 100 columns, no trailing blanks", test_text_width);
    g_test_add_func("/report/text/long timelines leave out empty hours", test_text_long_timeline);
    g_test_add_func("/report/json/a known report: numbers and shape", test_json_known);
    g_test_add_func("/report/json/a report of nothing: null percentages", test_json_zero);
    g_test_add_func("/report/sizes/from one hour to thirty days, every format", test_sizes);
    return g_test_run();
}
