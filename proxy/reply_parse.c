/*
 * reply_parse.c: backend replies, byte stream in, one mx_reply out.
 *
 * Owns: line framing (CRLF only), the RFC 5321 4.2 reply-line grammar, the
 * multi-line rules, and lookups in a finished reply (EHLO keywords, RFC 3463
 * enhanced codes).
 * Promises: bounded (the fixed arrays in mx_reply_parser, nothing else);
 * anything out of protocol is MX_ERROR with a reason, never a guess, because
 * a reply we misread becomes a wrong answer to the client.
 * Not here: what a code means to the session.
 */
#include "reply_parse.h"

#include <string.h>

enum {
    PH_ASSEMBLING = 0,
    PH_COMPLETE,
    PH_FAILED,
};

static mx_rc fail(mx_reply_parser *rp, const char **why, const char *text)
{
    rp->phase = PH_FAILED;
    *why = text;
    return MX_ERROR;
}

static int is_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

/*
 * One line without its CRLF. Reply-line = *( Reply-code "-" [ textstring ]
 * CRLF ) Reply-code [ SP textstring ] CRLF. "ddd SP" with no text is
 * outside the grammar but harmless and seen in the wild: empty text.
 */
static mx_rc end_line(mx_reply_parser *rp, const char **why)
{
    mx_reply *r = &rp->r;
    const char *l = rp->line;
    size_t n = rp->line_len;
    size_t tlen;
    int code, last;

    rp->line_len = 0;
    if (n < 3 || !is_digit((unsigned char)l[0]) || !is_digit((unsigned char)l[1]) ||
        !is_digit((unsigned char)l[2]))
        return fail(rp, why, "malformed reply code");
    code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    if (code < 200 || code > 599)
        return fail(rp, why, "reply code out of range");
    if (n == 3 || l[3] == ' ')
        last = 1;
    else if (l[3] == '-')
        last = 0;
    else
        return fail(rp, why, "bad separator after reply code");
    if (r->nlines > 0 && code != r->code)
        return fail(rp, why, "reply code changed within a multiline reply");
    if (r->nlines == MX_REPLY_MAX_LINES)
        return fail(rp, why, "too many lines in reply");
    tlen = n > 4 ? n - 4 : 0;
    if (r->text_used + tlen + 1 > sizeof(r->text))
        return fail(rp, why, "reply text too long");

    r->code = code;
    r->off[r->nlines] = (unsigned short)r->text_used;
    r->len[r->nlines] = (unsigned short)tlen;
    memcpy(r->text + r->text_used, l + 4, tlen);
    r->text[r->text_used + tlen] = '\0';
    r->text_used += tlen + 1;
    r->nlines++;
    if (!last)
        return MX_AGAIN;
    rp->phase = PH_COMPLETE;
    return MX_DONE;
}

void mx_reply_parser_init(mx_reply_parser *rp)
{
    memset(rp, 0, sizeof(*rp));
}

mx_rc mx_reply_parse(mx_reply_parser *rp, const char *p, const char *end, size_t *used,
                     const char **why)
{
    const char *q = p;

    if (rp->phase == PH_FAILED) {
        *used = 0;
        *why = "reply parser already failed";
        return MX_ERROR;
    }
    while (q < end) {
        unsigned char c = (unsigned char)*q++;

        *used = (size_t)(q - p);
        if (rp->phase == PH_COMPLETE) {
            memset(&rp->r, 0, sizeof(rp->r));
            rp->phase = PH_ASSEMBLING;
        }
        if (rp->cr) {
            mx_rc rc;

            if (c != '\n')
                return fail(rp, why, "bare CR in reply");
            rp->cr = 0;
            rc = end_line(rp, why);
            if (rc != MX_AGAIN)
                return rc;
            continue;
        }
        if (c == '\r') {
            rp->cr = 1;
            continue;
        }
        /* RFC 5321 2.3.8: only CRLF ends a line; a backend that sends a
         * bare LF is not one we understand. */
        if (c == '\n')
            return fail(rp, why, "bare LF in reply");
        if (c == '\0')
            return fail(rp, why, "NUL in reply");
        /* textstring = 1*(%d09 / %d32-126); UTF-8 text is let through. */
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(rp, why, "control character in reply");
        if (rp->line_len == MX_REPLY_MAX_LINE)
            return fail(rp, why, "reply line too long");
        rp->line[rp->line_len++] = (char)c;
    }
    *used = (size_t)(end - p);
    return MX_AGAIN;
}

const char *mx_reply_line(const mx_reply *r, int i)
{
    if (i < 0 || i >= r->nlines)
        return "";
    return r->text + r->off[i];
}

static int ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned x = (unsigned char)a[i], y = (unsigned char)b[i];

        if (x >= 'A' && x <= 'Z')
            x += 'a' - 'A';
        if (y >= 'A' && y <= 'Z')
            y += 'a' - 'A';
        if (x != y)
            return 0;
    }
    return 1;
}

/*
 * ehlo-line = ehlo-keyword *( SP ehlo-param ). Line 0 is the greeting and
 * is skipped: a server named "SIZE" must not advertise SIZE.
 */
int mx_reply_has_ext(const mx_reply *r, const char *kw, mx_span *params)
{
    size_t kwlen = strlen(kw);

    for (int i = 1; i < r->nlines; i++) {
        const char *t = r->text + r->off[i];
        size_t n = r->len[i], k;

        if (n < kwlen || !ieq(t, kw, kwlen) || (n > kwlen && t[kwlen] != ' '))
            continue;
        k = kwlen;
        while (k < n && t[k] == ' ')
            k++;
        while (n > k && t[n - 1] == ' ')
            n--;
        if (params != NULL) {
            params->p = t + k;
            params->len = n - k;
        }
        return 1;
    }
    return 0;
}

/* 1*3DIGIT at t[*k], advancing *k */
static int digits3(const char *t, size_t n, size_t *k)
{
    size_t s = *k;

    while (*k < n && *k - s < 3 && is_digit((unsigned char)t[*k]))
        (*k)++;
    return *k > s;
}

/*
 * RFC 3463: class "." subject "." detail, class 2/4/5 and (RFC 2034) equal
 * to the first digit of the reply code, followed by SP or the end.
 */
int mx_reply_enhanced(const mx_reply *r, int i, mx_span *esc)
{
    const char *t;
    size_t n, k;

    if (i < 0 || i >= r->nlines)
        return 0;
    t = r->text + r->off[i];
    n = r->len[i];
    if (n < 5 || t[0] - '0' != r->code / 100 || (t[0] != '2' && t[0] != '4' && t[0] != '5') ||
        t[1] != '.')
        return 0;
    k = 2;
    if (!digits3(t, n, &k) || k >= n || t[k] != '.')
        return 0;
    k++;
    if (!digits3(t, n, &k) || (k < n && t[k] != ' '))
        return 0;
    if (esc != NULL) {
        esc->p = t;
        esc->len = k;
    }
    return 1;
}
