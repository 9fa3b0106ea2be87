/*
 * report_render.c: the report as people, programs and browsers read it
 * (see report.h).
 *
 * Owns: the sums every format shows, computed once in a summary (totals
 * per unit, direction and outcome, messages per hour, and every
 * percentage, with one decimal, as text: "" where the total is 0), and the
 * layout of each format:
 *  text  header, totals, outcomes per direction, timeline; within 96
 *        columns for counts of up to 8 digits, outcome headers abbreviated
 *        with a legend;
 *  json  { "generated", "from", "to": ISO 8601 UTC, "store": string,
 *          "missing": counters not read,
 *          "units": { "messages"|"recipients": { "total": N,
 *              "directions": { DIRECTION: { "count": N,
 *                  "percent": x.x of the unit's total, or null if it is 0,
 *                  "outcomes": { OUTCOME: N, ... all 8 } }, ... all 4 } } },
 *          "hours": [ { "start": ISO, "messages": { DIRECTION: { OUTCOME: N } },
 *                       "recipients": { ... } }, ... every hour, oldest first ] };
 *  csv   RFC 4180 (CRLF), a "# warning: ..." line first when counters are
 *        missing;
 *  html  one page, inline CSS and SVG, nothing fetched, no script.
 * Every format says when counters could not be read (r->missing).
 */
#include <inttypes.h>
#include <string.h>

#include "report.h"

#define NDIR MX_DIR__COUNT
#define NOUT MX_OUT__COUNT
#define NUNIT MX_UNIT__COUNT
#define MSG MX_UNIT_MESSAGES

/* reports of at most this many hours list every hour in the text timeline */
#define TIMELINE_ALL_HOURS 24
/* the text format stays within this many columns */
#define TEXT_WIDTH 96

/* "100.0" and a NUL; "" when there is no total to share */
typedef char pct_str[8];

typedef struct summary {
    const mx_report *r;
    char generated[24], from[24], to[24]; /* ISO 8601 UTC */
    char *store;                          /* printable UTF-8 */
    uint64_t cell[NUNIT][NDIR][NOUT];     /* over all hours */
    uint64_t dir[NUNIT][NDIR];
    uint64_t out[NUNIT][NOUT];
    uint64_t total[NUNIT];
    pct_str dir_pct[NUNIT][NDIR];        /* of the unit's total */
    pct_str cell_pct[NUNIT][NDIR][NOUT]; /* of the direction's total */
    pct_str out_pct[NUNIT][NOUT];        /* of the unit's total */
    uint64_t *hour_dir;                  /* messages, hours x NDIR */
    uint64_t *hour_out;                  /* messages, hours x NOUT */
    uint64_t *hour_total;                /* messages, per hour */
    uint64_t hour_max;                   /* the largest of hour_total */
} summary;

/* ---- the summary ---- */

static void format_time(char *buf, size_t len, int64_t t, const char *fmt)
{
    GDateTime *dt = g_date_time_new_from_unix_utc(t);
    char *s = dt ? g_date_time_format(dt, fmt) : NULL;
    g_strlcpy(buf, s ? s : "?", len);
    g_free(s);
    if (dt)
        g_date_time_unref(dt);
}

static void iso_time(char buf[24], int64_t t)
{
    format_time(buf, 24, t, "%Y-%m-%dT%H:%M:%SZ");
}

static void percent(pct_str p, uint64_t n, uint64_t total)
{
    if (total == 0)
        p[0] = '\0';
    else
        g_ascii_formatd(p, sizeof(pct_str), "%.1f", 100.0 * (double)n / (double)total);
}

/* the store's name as valid UTF-8 without control bytes */
static char *printable_store(const mx_report *r)
{
    size_t len = strnlen(r->store, sizeof(r->store));
    if (len == 0)
        return g_strdup("unknown");
    char *s = g_utf8_make_valid(r->store, (gssize)len);
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return s;
}

static void summary_add(summary *s, int h, mx_direction d, mx_outcome o, int u)
{
    uint64_t n = MX_REPORT_AT(s->r, h, d, o, u);
    s->cell[u][d][o] += n;
    s->dir[u][d] += n;
    s->out[u][o] += n;
    s->total[u] += n;
    if (u == MSG) {
        s->hour_dir[(size_t)h * NDIR + d] += n;
        s->hour_out[(size_t)h * NOUT + o] += n;
        s->hour_total[h] += n;
    }
}

static void summary_percentages(summary *s)
{
    for (int u = 0; u < NUNIT; u++) {
        for (int d = 0; d < NDIR; d++) {
            percent(s->dir_pct[u][d], s->dir[u][d], s->total[u]);
            for (int o = 0; o < NOUT; o++)
                percent(s->cell_pct[u][d][o], s->cell[u][d][o], s->dir[u][d]);
        }
        for (int o = 0; o < NOUT; o++)
            percent(s->out_pct[u][o], s->out[u][o], s->total[u]);
    }
}

static void summary_init(summary *s, const mx_report *r, int64_t now)
{
    memset(s, 0, sizeof(*s));
    s->r = r;
    iso_time(s->generated, now);
    iso_time(s->from, r->first_hour * 3600);
    iso_time(s->to, (r->first_hour + r->hours) * 3600);
    s->store = printable_store(r);
    s->hour_dir = g_new0(uint64_t, (size_t)r->hours * NDIR);
    s->hour_out = g_new0(uint64_t, (size_t)r->hours * NOUT);
    s->hour_total = g_new0(uint64_t, (size_t)r->hours);
    for (int h = 0; h < r->hours; h++) {
        for (int d = 0; d < NDIR; d++)
            for (int o = 0; o < NOUT; o++)
                for (int u = 0; u < NUNIT; u++)
                    summary_add(s, h, (mx_direction)d, (mx_outcome)o, u);
        if (s->hour_total[h] > s->hour_max)
            s->hour_max = s->hour_total[h];
    }
    summary_percentages(s);
}

static void summary_clear(summary *s)
{
    g_free(s->store);
    g_free(s->hour_dir);
    g_free(s->hour_out);
    g_free(s->hour_total);
}

static int64_t hour_start(const summary *s, int h)
{
    return (s->r->first_hour + h) * 3600;
}

/* the sentence every format gives when counters are missing, between
 * before and after; nothing when none are (it has no characters that html
 * or csv would need escaped) */
static void missing_warning(GString *o, const summary *s, const char *before, const char *after)
{
    int n = s->r->missing;
    if (n > 0)
        g_string_append_printf(o,
                               "%s%d counter%s could not be read from the store; the counts "
                               "shown may be too low%s",
                               before, n, n == 1 ? "" : "s", after);
}

/* ---- text ---- */

static const char *const out_abbrev[NOUT] = {"deliv", "malware", "reput", "ratelim",
                                             "relay", "backend", "proto", "tempfail"};

/* p with a percent sign, or "-" when there was no total */
static const char *text_pct(char buf[9], const char *p)
{
    if (!*p)
        return "-";
    g_snprintf(buf, 9, "%s%%", p);
    return buf;
}

/* ends the line being written, without trailing blanks */
static void end_line(GString *o)
{
    while (o->len && o->str[o->len - 1] == ' ')
        g_string_truncate(o, o->len - 1);
    g_string_append_c(o, '\n');
}

static void text_header(GString *o, const summary *s)
{
    missing_warning(o, s, "WARNING: ", ".\n\n");
    int n = s->r->hours;
    g_string_append(o, "mxgate report\n");
    g_string_append_printf(o, "  generated  %s\n", s->generated);
    g_string_append_printf(o, "  period     %s to %s (%d hour%s)\n", s->from, s->to, n,
                           n == 1 ? "" : "s");
    g_string_append_printf(o, "  store      %s\n", s->store);
}

static void text_totals(GString *o, const summary *s)
{
    char b[9];
    g_string_append_printf(o, "\n%-16s", "Totals");
    for (int u = 0; u < NUNIT; u++)
        g_string_append_printf(o, " %19s", mx_unit_name(u));
    end_line(o);
    g_string_append_printf(o, "  %-14s", "all");
    for (int u = 0; u < NUNIT; u++)
        g_string_append_printf(o, " %11" PRIu64 " %7s", s->total[u], "");
    end_line(o);
    for (int d = 0; d < NDIR; d++) {
        g_string_append_printf(o, "  %-14s", mx_direction_name((mx_direction)d));
        for (int u = 0; u < NUNIT; u++)
            g_string_append_printf(o, " %11" PRIu64 " %7s", s->dir[u][d],
                                   text_pct(b, s->dir_pct[u][d]));
        end_line(o);
    }
}

/* one direction's (or all directions') counts, and their percentages below */
static void text_outcome_rows(GString *o, const char *name, const uint64_t *counts,
                              const pct_str *pcts, uint64_t total)
{
    char b[9];
    g_string_append_printf(o, "  %-12s", name);
    for (int i = 0; i < NOUT; i++)
        g_string_append_printf(o, " %8" PRIu64, counts[i]);
    g_string_append_printf(o, " %9" PRIu64, total);
    end_line(o);
    g_string_append_printf(o, "  %-12s", "");
    for (int i = 0; i < NOUT; i++)
        g_string_append_printf(o, " %8s", text_pct(b, pcts[i]));
    end_line(o);
}

static void text_legend(GString *o)
{
    GString *line = g_string_new("  ");
    for (int i = 0; i < NOUT; i++) {
        char *item = g_strdup_printf("%s = %s%s", out_abbrev[i], mx_outcome_name((mx_outcome)i),
                                     i + 1 < NOUT ? "," : ".");
        if (line->len > 2 && line->len + 1 + strlen(item) > TEXT_WIDTH) {
            g_string_append_printf(o, "%s\n", line->str);
            g_string_assign(line, "  ");
        }
        g_string_append_printf(line, "%s%s", line->len > 2 ? " " : "", item);
        g_free(item);
    }
    g_string_append_printf(o, "%s\n", line->str);
    g_string_append(o, "  Percentages are of the row's total.\n");
    g_string_free(line, TRUE);
}

static void text_outcomes(GString *o, const summary *s)
{
    for (int u = 0; u < NUNIT; u++) {
        g_string_append_printf(o, "\nOutcomes per direction, %s\n", mx_unit_name(u));
        g_string_append_printf(o, "  %-12s", "direction");
        for (int i = 0; i < NOUT; i++)
            g_string_append_printf(o, " %8s", out_abbrev[i]);
        g_string_append_printf(o, " %9s\n", "total");
        for (int d = 0; d < NDIR; d++)
            text_outcome_rows(o, mx_direction_name((mx_direction)d), s->cell[u][d],
                              s->cell_pct[u][d], s->dir[u][d]);
        text_outcome_rows(o, "all", s->out[u], s->out_pct[u], s->total[u]);
    }
    g_string_append_c(o, '\n');
    text_legend(o);
}

static void text_timeline(GString *o, const summary *s)
{
    int all = s->r->hours <= TIMELINE_ALL_HOURS, left_out = 0;
    g_string_append(o, "\nTimeline (messages per hour)\n");
    g_string_append_printf(o, "  %-16s", "hour (UTC)");
    for (int d = 0; d < NDIR; d++)
        g_string_append_printf(o, " %12s", mx_direction_name((mx_direction)d));
    g_string_append_printf(o, " %9s\n", "total");
    for (int h = 0; h < s->r->hours; h++) {
        if (!all && s->hour_total[h] == 0) {
            left_out++;
            continue;
        }
        char when[24];
        format_time(when, sizeof(when), hour_start(s, h), "%Y-%m-%d %H:%M");
        g_string_append_printf(o, "  %-16s", when);
        for (int d = 0; d < NDIR; d++)
            g_string_append_printf(o, " %12" PRIu64, s->hour_dir[(size_t)h * NDIR + d]);
        g_string_append_printf(o, " %9" PRIu64 "\n", s->hour_total[h]);
    }
    if (left_out)
        g_string_append_printf(o, "  (%d hour%s without messages left out)\n", left_out,
                               left_out == 1 ? "" : "s");
}

static void render_text(GString *o, const summary *s)
{
    text_header(o, s);
    text_totals(o, s);
    text_outcomes(o, s);
    text_timeline(o, s);
}

/* ---- json ---- */

/* s is valid UTF-8 without control bytes (printable_store): only " and \
 * need escaping */
static void json_string(GString *o, const char *s)
{
    g_string_append_c(o, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            g_string_append_c(o, '\\');
        g_string_append_c(o, *s);
    }
    g_string_append_c(o, '"');
}

/* {"delivered": N, ...} */
static void json_outcomes(GString *o, const uint64_t counts[NOUT])
{
    g_string_append_c(o, '{');
    for (int i = 0; i < NOUT; i++)
        g_string_append_printf(o, "%s\"%s\": %" PRIu64, i ? ", " : "",
                               mx_outcome_name((mx_outcome)i), counts[i]);
    g_string_append_c(o, '}');
}

static void json_unit(GString *o, const summary *s, int u)
{
    g_string_append_printf(o, "    \"%s\": {\n      \"total\": %" PRIu64 ",\n", mx_unit_name(u),
                           s->total[u]);
    g_string_append(o, "      \"directions\": {\n");
    for (int d = 0; d < NDIR; d++) {
        const char *p = s->dir_pct[u][d];
        g_string_append_printf(
            o, "        \"%s\": {\"count\": %" PRIu64 ", \"percent\": %s, \"outcomes\": ",
            mx_direction_name((mx_direction)d), s->dir[u][d], *p ? p : "null");
        json_outcomes(o, s->cell[u][d]);
        g_string_append_printf(o, "}%s\n", d + 1 < NDIR ? "," : "");
    }
    g_string_append_printf(o, "      }\n    }%s\n", u + 1 < NUNIT ? "," : "");
}

/* "messages": {"inbound": {...}, ...} for hour h */
static void json_hour_unit(GString *o, const mx_report *r, int h, int u)
{
    g_string_append_printf(o, "\"%s\": {", mx_unit_name(u));
    for (int d = 0; d < NDIR; d++) {
        uint64_t counts[NOUT];
        for (int i = 0; i < NOUT; i++)
            counts[i] = MX_REPORT_AT(r, h, d, i, u);
        g_string_append_printf(o, "%s\"%s\": ", d ? ", " : "", mx_direction_name((mx_direction)d));
        json_outcomes(o, counts);
    }
    g_string_append_c(o, '}');
}

static void json_hours(GString *o, const summary *s)
{
    g_string_append(o, "  \"hours\": [\n");
    for (int h = 0; h < s->r->hours; h++) {
        char start[24];
        iso_time(start, hour_start(s, h));
        g_string_append_printf(o, "    {\"start\": \"%s\",", start);
        for (int u = 0; u < NUNIT; u++) {
            g_string_append(o, "\n     ");
            json_hour_unit(o, s->r, h, u);
            g_string_append(o, u + 1 < NUNIT ? "," : "}");
        }
        g_string_append(o, h + 1 < s->r->hours ? ",\n" : "\n");
    }
    g_string_append(o, "  ]\n");
}

static void render_json(GString *o, const summary *s)
{
    g_string_append_printf(o,
                           "{\n  \"generated\": \"%s\",\n  \"from\": \"%s\",\n  \"to\": \"%s\",\n",
                           s->generated, s->from, s->to);
    g_string_append(o, "  \"store\": ");
    json_string(o, s->store);
    g_string_append_printf(o, ",\n  \"missing\": %d,\n  \"units\": {\n", s->r->missing);
    for (int u = 0; u < NUNIT; u++)
        json_unit(o, s, u);
    g_string_append(o, "  },\n");
    json_hours(o, s);
    g_string_append(o, "}\n");
}

/* ---- csv ---- */

static void render_csv(GString *o, const summary *s)
{
    missing_warning(o, s, "# warning: ", "\r\n");
    g_string_append(o, "hour_start,direction,outcome,unit,count\r\n");
    for (int h = 0; h < s->r->hours; h++) {
        char start[24];
        iso_time(start, hour_start(s, h));
        for (int d = 0; d < NDIR; d++)
            for (int i = 0; i < NOUT; i++)
                for (int u = 0; u < NUNIT; u++) {
                    uint64_t n = MX_REPORT_AT(s->r, h, d, i, u);
                    if (n)
                        g_string_append_printf(o, "%s,%s,%s,%s,%" PRIu64 "\r\n", start,
                                               mx_direction_name((mx_direction)d),
                                               mx_outcome_name((mx_outcome)i), mx_unit_name(u), n);
                }
    }
}

/* ---- html ---- */

/* Okabe-Ito, by outcome; Tol's "vibrant", by direction */
static const char *const out_colour[NOUT] = {"#009E73", "#D55E00", "#CC79A7", "#E69F00",
                                             "#0072B2", "#56B4E9", "#F0E442", "#8C8C8C"};
static const char *const dir_colour[NDIR] = {"#0077BB", "#EE7733", "#009988", "#CC3311"};

/* the timeline chart's frame, in SVG user units */
#define TL_W 1000.0
#define TL_H 352.0
#define TL_LEFT 72.0
#define TL_RIGHT 988.0
#define TL_TOP 74.0
#define TL_BOTTOM 282.0
/* the direction mix bar */
#define MIX_W 480.0
#define MIX_H 30.0

static const char html_style[] =
    "body{margin:0;background:#f3f4f7;color:#1c2230;"
    "font:14px/1.45 \"DejaVu Sans\",\"Segoe UI\",Roboto,Helvetica,Arial,sans-serif}\n"
    "main{max-width:1100px;margin:0 auto;padding:22px 28px 32px}\n"
    "h1{font-size:24px;margin:0 0 6px}\n"
    "h2{font-size:17px;margin:0 0 10px}\n"
    "h3{font-size:15px;margin:0;display:flex;justify-content:space-between;align-items:baseline}\n"
    ".facts{display:flex;flex-wrap:wrap;gap:4px 28px;margin:0;color:#475063}\n"
    ".facts div{display:flex;gap:6px}\n"
    ".facts dt{font-weight:700;color:#1c2230}\n"
    ".facts dd{margin:0}\n"
    ".warning{margin:14px 0 0;padding:10px 14px;border:2px solid #b45309;border-radius:6px;"
    "background:#fff3dc;color:#6b3400;font-weight:700}\n"
    "section{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:14px 18px;"
    "margin:14px 0 0}\n"
    ".cards{display:grid;grid-template-columns:1fr 1fr;gap:28px}\n"
    ".big{font-size:22px;font-weight:700}\n"
    ".unit{color:#475063;font-weight:400;font-size:14px}\n"
    "svg{display:block;width:100%;height:auto}\n"
    "svg text{font-family:inherit}\n"
    ".mix{margin:8px 0 6px}\n"
    "table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\n"
    "th,td{padding:3px 6px;text-align:right;border-bottom:1px solid #e8eaef}\n"
    "th:first-child,td:first-child{text-align:left}\n"
    "thead th{font-size:12px;color:#475063;vertical-align:bottom;line-height:1.25}\n"
    "tr.all td{font-weight:700;border-top:2px solid #c5cad4;border-bottom:0}\n"
    ".outcomes td{vertical-align:top}\n"
    ".outcomes thead th{border-bottom:2px solid #c5cad4}\n"
    ".outcomes td,.outcomes th{width:9%}\n"
    ".outcomes td:first-child,.outcomes th:first-child{width:auto}\n"
    ".sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;"
    "vertical-align:-1px;border:1px solid rgba(0,0,0,.25);box-sizing:border-box}\n"
    ".pct{display:block;color:#677084;font-size:12px;font-weight:400}\n"
    ".zero{color:#a5abb8}\n"
    ".note{color:#677084;font-size:12px;margin:8px 0 0}\n"
    "footer{color:#677084;font-size:12px;margin-top:14px}\n";

/* s with &, <, >, " and ' as references (&apos; for ') */
static void html_text(GString *o, const char *s)
{
    char *e = g_markup_escape_text(s, -1);
    g_string_append(o, e);
    g_free(e);
}

/* a number for SVG, whatever the locale */
static const char *num(char buf[G_ASCII_DTOSTR_BUF_SIZE], double v)
{
    return g_ascii_formatd(buf, G_ASCII_DTOSTR_BUF_SIZE, "%.1f", v);
}

/* 1234567 as "1,234,567" */
static const char *grouped(char buf[32], uint64_t n)
{
    char digits[24];
    int len = g_snprintf(digits, sizeof(digits), "%" PRIu64, n), j = 0;
    for (int i = 0; i < len; i++) {
        if (i && (len - i) % 3 == 0)
            buf[j++] = ',';
        buf[j++] = digits[i];
    }
    buf[j] = '\0';
    return buf;
}

/* an axis label: 900, 2500, 25k, 2.5M */
static const char *short_count(char buf[24], uint64_t n)
{
    static const struct {
        uint64_t from, div;
        const char *suffix;
    } units[] = {{1000000000, 1000000000, "G"}, {1000000, 1000000, "M"}, {10000, 1000, "k"}};
    for (size_t i = 0; i < G_N_ELEMENTS(units); i++) {
        if (n < units[i].from)
            continue;
        uint64_t div = units[i].div, tenth = n % div / (div / 10);
        if (tenth)
            g_snprintf(buf, 24, "%" PRIu64 ".%" PRIu64 "%s", n / div, tenth, units[i].suffix);
        else
            g_snprintf(buf, 24, "%" PRIu64 "%s", n / div, units[i].suffix);
        return buf;
    }
    g_snprintf(buf, 24, "%" PRIu64, n);
    return buf;
}

static void html_swatch(GString *o, const char *colour)
{
    g_string_append_printf(o, "<span class=\"sw\" style=\"background:%s\"></span>", colour);
}

static void svg_rect(GString *o, double x, double y, double w, double h, const char *fill,
                     const char *title)
{
    char bx[G_ASCII_DTOSTR_BUF_SIZE], by[G_ASCII_DTOSTR_BUF_SIZE], bw[G_ASCII_DTOSTR_BUF_SIZE],
        bh[G_ASCII_DTOSTR_BUF_SIZE];
    g_string_append_printf(o, "<rect x=\"%s\" y=\"%s\" width=\"%s\" height=\"%s\" fill=\"%s\">",
                           num(bx, x), num(by, y), num(bw, w), num(bh, h), fill);
    if (title) {
        g_string_append(o, "<title>");
        html_text(o, title);
        g_string_append(o, "</title>");
    }
    g_string_append(o, "</rect>\n");
}

/* text at (x, y); anchor "start", "middle" or "end"; extra attributes may be "" */
static void svg_text(GString *o, double x, double y, const char *anchor, const char *extra,
                     const char *text)
{
    char bx[G_ASCII_DTOSTR_BUF_SIZE], by[G_ASCII_DTOSTR_BUF_SIZE];
    g_string_append_printf(o, "<text x=\"%s\" y=\"%s\" text-anchor=\"%s\"%s%s>", num(bx, x),
                           num(by, y), anchor, *extra ? " " : "", extra);
    html_text(o, text);
    g_string_append(o, "</text>\n");
}

static void svg_line(GString *o, double x1, double y1, double x2, double y2, const char *stroke)
{
    char a[G_ASCII_DTOSTR_BUF_SIZE], b[G_ASCII_DTOSTR_BUF_SIZE], c[G_ASCII_DTOSTR_BUF_SIZE],
        d[G_ASCII_DTOSTR_BUF_SIZE];
    g_string_append_printf(o, "<line x1=\"%s\" y1=\"%s\" x2=\"%s\" y2=\"%s\" stroke=\"%s\"/>\n",
                           num(a, x1), num(b, y1), num(c, x2), num(d, y2), stroke);
}

static void html_head(GString *o, const summary *s)
{
    g_string_append(o, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                       "<title>mxgate report, ");
    html_text(o, s->from);
    g_string_append(o, " to ");
    html_text(o, s->to);
    g_string_append_printf(o, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<main>\n",
                           html_style);
}

static void html_fact(GString *o, const char *name, const char *value)
{
    g_string_append(o, "<div><dt>");
    html_text(o, name);
    g_string_append(o, "</dt><dd>");
    html_text(o, value);
    g_string_append(o, "</dd></div>\n");
}

static void html_header(GString *o, const summary *s)
{
    char *period = g_strdup_printf("%s to %s (%d hour%s)", s->from, s->to, s->r->hours,
                                   s->r->hours == 1 ? "" : "s");
    g_string_append(o, "<header>\n<h1>mxgate traffic report</h1>\n<dl class=\"facts\">\n");
    html_fact(o, "Period", period);
    html_fact(o, "Generated", s->generated);
    html_fact(o, "Store", s->store);
    g_string_append(o, "</dl>\n");
    missing_warning(o, s, "<p class=\"warning\" role=\"alert\">Warning: ", ".</p>\n");
    g_string_append(o, "</header>\n");
    g_free(period);
}

/* one horizontal bar, split by direction, percentages written in the wide parts */
static void html_mix_bar(GString *o, const summary *s, int u)
{
    g_string_append_printf(o,
                           "<svg class=\"mix\" viewBox=\"0 0 %d %d\" role=\"img\" "
                           "aria-label=\"%s by direction\">\n",
                           (int)MIX_W, (int)MIX_H, mx_unit_name(u));
    if (s->total[u] == 0) {
        svg_rect(o, 0, 0, MIX_W, MIX_H, "#e8eaef", NULL);
        svg_text(o, MIX_W / 2, MIX_H / 2 + 5, "middle", "font-size=\"13\" fill=\"#677084\"",
                 "none in this period");
        g_string_append(o, "</svg>\n");
        return;
    }
    double x = 0;
    for (int d = 0; d < NDIR; d++) {
        if (s->dir[u][d] == 0)
            continue;
        double w = MIX_W * (double)s->dir[u][d] / (double)s->total[u];
        char *title =
            g_strdup_printf("%s: %s%%", mx_direction_name((mx_direction)d), s->dir_pct[u][d]);
        svg_rect(o, x, 0, w, MIX_H, dir_colour[d], title);
        if (w >= 46) {
            char *label = g_strdup_printf("%s%%", s->dir_pct[u][d]);
            svg_text(o, x + w / 2, MIX_H / 2 + 5, "middle",
                     "font-size=\"13\" font-weight=\"700\" fill=\"#fff\"", label);
            g_free(label);
        }
        g_free(title);
        x += w;
    }
    g_string_append(o, "</svg>\n");
}

/* one unit's card: its total, the mix bar and the table that is its legend */
static void html_total_card(GString *o, const summary *s, int u)
{
    char b[32];
    g_string_append_printf(o,
                           "<div>\n<h3><span>%s</span><span class=\"big\">%s "
                           "<span class=\"unit\">%s</span></span></h3>\n",
                           u == MSG ? "Messages" : "Recipients", grouped(b, s->total[u]),
                           mx_unit_name(u));
    html_mix_bar(o, s, u);
    g_string_append(o, "<table>\n<thead><tr><th>direction</th><th>count</th><th>share</th>"
                       "</tr></thead>\n<tbody>\n");
    for (int d = 0; d < NDIR; d++) {
        const char *p = s->dir_pct[u][d];
        g_string_append(o, "<tr><td>");
        html_swatch(o, dir_colour[d]);
        html_text(o, mx_direction_name((mx_direction)d));
        g_string_append_printf(o, "</td><td%s>%s</td><td>%s%s</td></tr>\n",
                               s->dir[u][d] ? "" : " class=\"zero\"", grouped(b, s->dir[u][d]),
                               *p ? p : "-", *p ? "%" : "");
    }
    g_string_append_printf(o, "<tr class=\"all\"><td>all</td><td>%s</td><td>%s</td></tr>\n",
                           grouped(b, s->total[u]), s->total[u] ? "100.0%" : "-");
    g_string_append(o, "</tbody>\n</table>\n</div>\n");
}

static void html_totals(GString *o, const summary *s)
{
    g_string_append(o, "<section>\n<h2>Totals and direction mix</h2>\n<div class=\"cards\">\n");
    for (int u = 0; u < NUNIT; u++)
        html_total_card(o, s, u);
    g_string_append(o, "</div>\n</section>\n");
}

/* about five steps of 1, 2 or 5 times a power of ten up to max */
static uint64_t nice_step(uint64_t max)
{
    static const uint64_t mult[] = {1, 2, 5};
    for (uint64_t p = 1; p < UINT64_MAX / 100; p *= 10)
        for (size_t i = 0; i < G_N_ELEMENTS(mult); i++)
            if (mult[i] * p * 5 >= max)
                return mult[i] * p;
    return UINT64_MAX / 100;
}

/* hours between labelled ticks, so that labels are at least 64 units apart */
static int hour_step(double slot)
{
    static const int steps[] = {1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720};
    for (size_t i = 0; i < G_N_ELEMENTS(steps); i++)
        if (slot * steps[i] >= 64)
            return steps[i];
    return 720;
}

static void timeline_legend(GString *o)
{
    for (int i = 0; i < NOUT; i++) {
        double x = TL_LEFT + (i % 4) * 230.0, y = 8 + (i / 4) * 24.0;
        svg_rect(o, x, y, 14, 14, out_colour[i], NULL);
        svg_text(o, x + 20, y + 12, "start", "font-size=\"13\"", mx_outcome_name((mx_outcome)i));
    }
}

static void timeline_y_axis(GString *o, uint64_t ymax, uint64_t step)
{
    char b[24];
    for (uint64_t v = 0; v <= ymax; v += step) {
        double y = TL_BOTTOM - (TL_BOTTOM - TL_TOP) * (double)v / (double)ymax;
        svg_line(o, TL_LEFT, y, TL_RIGHT, y, v ? "#e3e6ec" : "#5a6273");
        svg_text(o, TL_LEFT - 8, y + 4, "end", "font-size=\"12\" fill=\"#475063\"",
                 short_count(b, v));
    }
    double mid = (TL_TOP + TL_BOTTOM) / 2;
    char rot[64], bm[G_ASCII_DTOSTR_BUF_SIZE];
    g_snprintf(rot, sizeof(rot), "font-size=\"13\" transform=\"rotate(-90 18 %s)\"", num(bm, mid));
    svg_text(o, 18, mid, "middle", rot, "messages per hour");
}

static void timeline_x_axis(GString *o, const summary *s, double slot)
{
    int step = hour_step(slot), labelled = 0;
    for (int h = 0; h < s->r->hours; h++) {
        int64_t hour = s->r->first_hour + h;
        if (hour % step != 0)
            continue;
        double cx = TL_LEFT + slot * (h + 0.5);
        char clock[8], day[8];
        format_time(clock, sizeof(clock), hour * 3600, "%H:%M");
        format_time(day, sizeof(day), hour * 3600, "%m-%d");
        svg_line(o, cx, TL_BOTTOM, cx, TL_BOTTOM + 5, "#5a6273");
        const char *attrs = "font-size=\"12\" fill=\"#475063\"";
        if (step >= 24) {
            svg_text(o, cx, TL_BOTTOM + 19, "middle", attrs, day);
        } else {
            svg_text(o, cx, TL_BOTTOM + 19, "middle", attrs, clock);
            if (!labelled || hour % 24 == 0)
                svg_text(o, cx, TL_BOTTOM + 34, "middle", attrs, day);
        }
        labelled = 1;
    }
    svg_text(o, (TL_LEFT + TL_RIGHT) / 2, TL_H - 8, "middle", "font-size=\"13\"",
             "hour starting (UTC), date as month-day");
}

/* hour h's bar: outcomes stacked from the axis up, in enum order */
static void timeline_bar(GString *o, const summary *s, int h, double slot, uint64_t ymax)
{
    double w = slot >= 6 ? slot * 0.74 : slot * 0.9;
    double x = TL_LEFT + slot * h + (slot - w) / 2, y = TL_BOTTOM;
    char when[24];
    format_time(when, sizeof(when), hour_start(s, h), "%Y-%m-%d %H:%M UTC");
    for (int i = 0; i < NOUT; i++) {
        uint64_t n = s->hour_out[(size_t)h * NOUT + i];
        if (!n)
            continue;
        double bh = (TL_BOTTOM - TL_TOP) * (double)n / (double)ymax;
        char *title = g_strdup_printf("%s, %s: %" PRIu64, when, mx_outcome_name((mx_outcome)i), n);
        y -= bh;
        svg_rect(o, x, y, w, bh, out_colour[i], title);
        g_free(title);
    }
}

static void html_timeline(GString *o, const summary *s)
{
    uint64_t max = s->hour_max ? s->hour_max : 1;
    uint64_t step = nice_step(max);
    uint64_t ymax = (max + step - 1) / step * step;
    double slot = (TL_RIGHT - TL_LEFT) / s->r->hours;
    g_string_append(o, "<section>\n<h2>Outcomes over time (messages per hour)</h2>\n");
    g_string_append_printf(o,
                           "<svg viewBox=\"0 0 %d %d\" role=\"img\" "
                           "aria-label=\"messages per hour by outcome\">\n",
                           (int)TL_W, (int)TL_H);
    timeline_legend(o);
    timeline_y_axis(o, ymax, step);
    for (int h = 0; h < s->r->hours; h++)
        timeline_bar(o, s, h, slot, ymax);
    if (s->hour_max == 0)
        svg_text(o, (TL_LEFT + TL_RIGHT) / 2, (TL_TOP + TL_BOTTOM) / 2, "middle",
                 "font-size=\"15\" fill=\"#677084\"", "no messages in this period");
    timeline_x_axis(o, s, slot);
    g_string_append(o, "</svg>\n</section>\n");
}

/* a row of the outcomes table: counts with the row's percentages under them */
static void html_outcome_row(GString *o, const char *name, const char *colour,
                             const uint64_t *counts, const pct_str *pcts, uint64_t total)
{
    char b[32];
    g_string_append_printf(o, "<tr%s><td>", colour ? "" : " class=\"all\"");
    if (colour)
        html_swatch(o, colour);
    html_text(o, name);
    g_string_append(o, "</td>");
    for (int i = 0; i < NOUT; i++)
        g_string_append_printf(o, "<td%s>%s<span class=\"pct\">%s%s</span></td>",
                               counts[i] ? "" : " class=\"zero\"", grouped(b, counts[i]),
                               *pcts[i] ? pcts[i] : "-", *pcts[i] ? "%" : "");
    g_string_append_printf(o, "<td>%s</td></tr>\n", grouped(b, total));
}

static void html_outcome_table(GString *o, const summary *s, int u)
{
    g_string_append_printf(o, "<section>\n<h2>Outcomes per direction, %s</h2>\n", mx_unit_name(u));
    g_string_append(o, "<table class=\"outcomes\">\n<thead><tr><th>direction</th>");
    /* each outcome's colour underlines its name */
    for (int i = 0; i < NOUT; i++) {
        g_string_append_printf(o, "<th style=\"border-bottom:4px solid %s\">", out_colour[i]);
        html_text(o, mx_outcome_name((mx_outcome)i));
        g_string_append(o, "</th>");
    }
    g_string_append(o, "<th>total</th></tr></thead>\n<tbody>\n");
    for (int d = 0; d < NDIR; d++)
        html_outcome_row(o, mx_direction_name((mx_direction)d), dir_colour[d], s->cell[u][d],
                         s->cell_pct[u][d], s->dir[u][d]);
    html_outcome_row(o, "all", NULL, s->out[u], s->out_pct[u], s->total[u]);
    g_string_append(o, "</tbody>\n</table>\n<p class=\"note\">Percentages are of the row's "
                       "total.</p>\n</section>\n");
}

static void render_html(GString *o, const summary *s)
{
    html_head(o, s);
    html_header(o, s);
    html_totals(o, s);
    html_timeline(o, s);
    for (int u = 0; u < NUNIT; u++)
        html_outcome_table(o, s, u);
    g_string_append(o, "<footer>Counts are summed over the cluster by hour; hours are UTC."
                       "</footer>\n</main>\n</body>\n</html>\n");
}

typedef void (*renderer)(GString *o, const summary *s);

static const renderer renderers[] = {
    [MX_REPORT_TEXT] = render_text,
    [MX_REPORT_JSON] = render_json,
    [MX_REPORT_CSV] = render_csv,
    [MX_REPORT_HTML] = render_html,
};

void mx_report_render(GString *out, const mx_report *r, mx_report_format fmt, int64_t now)
{
    if ((size_t)fmt >= G_N_ELEMENTS(renderers))
        return;
    summary s;
    summary_init(&s, r, now);
    renderers[fmt](out, &s);
    summary_clear(&s);
}
