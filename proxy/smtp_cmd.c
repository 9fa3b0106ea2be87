/*
 * smtp_cmd.c: one SMTP command line in, one mx_cmd out.
 *
 * Owns: the verb table, the RFC 5321 4.1.2 path grammar (with the UTF-8 of
 * RFC 6531 3.3) and the value syntax of the MAIL/RCPT parameters we relay.
 * Promises: strict; anything the grammar does not allow is refused with a
 * status the caller maps to a reply, and every span points into the input.
 * Not here: whether the command is allowed now, config limits, or what the
 * backend advertises.
 *
 * Why strict: the backend re-parses what we forward. A lenient front end
 * that accepts what the backend reads differently is how addresses (and
 * whole commands) get smuggled past policy.
 */
#include "smtp_cmd.h"

#include <string.h>

typedef const unsigned char *bp;

static const struct {
    const char *name;
    mx_cmd_verb verb;
} verbs[] = {
    { "HELO", MX_CMD_HELO },         { "EHLO", MX_CMD_EHLO },
    { "MAIL", MX_CMD_MAIL },         { "RCPT", MX_CMD_RCPT },
    { "DATA", MX_CMD_DATA },         { "BDAT", MX_CMD_BDAT },
    { "RSET", MX_CMD_RSET },         { "NOOP", MX_CMD_NOOP },
    { "QUIT", MX_CMD_QUIT },         { "VRFY", MX_CMD_VRFY },
    { "EXPN", MX_CMD_EXPN },         { "HELP", MX_CMD_HELP },
    { "STARTTLS", MX_CMD_STARTTLS }, { "AUTH", MX_CMD_AUTH },
    { "ETRN", MX_CMD_ETRN },
    /* A browser or proxy client pointed at port 25 (and the cross-protocol
     * attacks that use one): the session drops it rather than answering
     * every header line with a 500. */
    { "GET", MX_CMD_NONSMTP },       { "POST", MX_CMD_NONSMTP },
    { "HEAD", MX_CMD_NONSMTP },      { "PUT", MX_CMD_NONSMTP },
    { "CONNECT", MX_CMD_NONSMTP },   { "USER", MX_CMD_NONSMTP },
    { "PASS", MX_CMD_NONSMTP },
};

static const char *const verb_names[MX_CMD__COUNT] = {
    [MX_CMD_UNKNOWN] = "UNKNOWN", [MX_CMD_HELO] = "HELO",   [MX_CMD_EHLO] = "EHLO",
    [MX_CMD_MAIL] = "MAIL",       [MX_CMD_RCPT] = "RCPT",   [MX_CMD_DATA] = "DATA",
    [MX_CMD_BDAT] = "BDAT",       [MX_CMD_RSET] = "RSET",   [MX_CMD_NOOP] = "NOOP",
    [MX_CMD_QUIT] = "QUIT",       [MX_CMD_VRFY] = "VRFY",   [MX_CMD_EXPN] = "EXPN",
    [MX_CMD_HELP] = "HELP",       [MX_CMD_STARTTLS] = "STARTTLS",
    [MX_CMD_AUTH] = "AUTH",       [MX_CMD_ETRN] = "ETRN",   [MX_CMD_NONSMTP] = "NONSMTP",
};

enum { FOR_MAIL = 1, FOR_RCPT = 2 };

static const struct {
    const char *name;
    mx_param_kind kind;
    int verbs;
} params[] = {
    { "SIZE", MX_PARAM_SIZE, FOR_MAIL },   { "BODY", MX_PARAM_BODY, FOR_MAIL },
    { "SMTPUTF8", MX_PARAM_SMTPUTF8, FOR_MAIL }, { "RET", MX_PARAM_RET, FOR_MAIL },
    { "ENVID", MX_PARAM_ENVID, FOR_MAIL }, { "NOTIFY", MX_PARAM_NOTIFY, FOR_RCPT },
    { "ORCPT", MX_PARAM_ORCPT, FOR_RCPT },
};

const char *mx_cmd_verb_name(mx_cmd_verb v)
{
    if ((unsigned)v >= MX_CMD__COUNT)
        return "UNKNOWN";
    return verb_names[v];
}

static int is_alpha(unsigned c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static int is_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

static int is_alnum(unsigned c)
{
    return is_alpha(c) || is_digit(c);
}

static int is_hex(unsigned c)
{
    return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* RFC 5322 atext */
static int is_atext(unsigned c)
{
    return is_alnum(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", (int)c) != NULL);
}

static int ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);

    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++) {
        unsigned x = (unsigned char)a[i], y = (unsigned char)b[i];

        if (is_alpha(x))
            x |= 0x20;
        if (is_alpha(y))
            y |= 0x20;
        if (x != y)
            return 0;
    }
    return 1;
}

/*
 * Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF), or 0. Only called for s[0] >= 0x80.
 */
static size_t utf8_len(bp s, bp end)
{
    unsigned c = s[0];
    size_t n, i;
    unsigned lo = 0x80, hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if ((size_t)(end - s) < n)
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

/* Path parsing state: a cursor and whether any UTF-8 was accepted. */
typedef struct pcur {
    bp s;
    bp end;
    int utf8;
} pcur;

/* One more UTF-8 character if there is one at the cursor. */
static int take_utf8(pcur *c)
{
    size_t n;

    if (c->s >= c->end || *c->s < 0x80)
        return 0;
    n = utf8_len(c->s, c->end);
    if (n == 0)
        return 0;
    c->s += n;
    c->utf8 = 1;
    return 1;
}

/*
 * Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str],
 * or a U-label (RFC 6531). Labels of at most 63 octets (RFC 1035), the
 * whole at most 255 (RFC 5321 4.5.3.1.2).
 */
static int parse_domain(pcur *c)
{
    bp start = c->s;

    for (;;) {
        bp label = c->s;

        while (c->s < c->end) {
            if (is_alnum(*c->s) || *c->s == '-')
                c->s++;
            else if (!take_utf8(c))
                break;
        }
        if (c->s == label || c->s - label > 63 || *label == '-' || c->s[-1] == '-')
            return -1;
        if (c->s < c->end && *c->s == '.') {
            c->s++;
            continue;
        }
        break;
    }
    return c->s - start <= 255 ? 0 : -1;
}

/* Snum = 1*3DIGIT with a value of 0..255 */
static int parse_snum(pcur *c)
{
    unsigned v = 0;
    int n = 0;

    while (n < 3 && c->s < c->end && is_digit(*c->s)) {
        v = v * 10 + (*c->s++ - '0');
        n++;
    }
    return n > 0 && v <= 255 ? 0 : -1;
}

static int parse_ipv4(pcur *c)
{
    for (int i = 0; i < 4; i++) {
        if (i > 0) {
            if (c->s >= c->end || *c->s != '.')
                return -1;
            c->s++;
        }
        if (parse_snum(c) < 0)
            return -1;
    }
    return 0;
}

/* Does an IPv4 literal start here (digits then '.')? */
static int ipv4_ahead(const pcur *c)
{
    bp s = c->s;

    while (s < c->end && is_digit(*s) && s - c->s < 4)
        s++;
    return s > c->s && s < c->end && *s == '.';
}

/*
 * RFC 5321 4.1.3 IPv6-addr: eight groups; or "::" with at most six groups
 * besides it; an embedded IPv4 address counts as two groups and comes last.
 */
static int parse_ipv6(pcur *c)
{
    int groups = 0, compressed = 0;

    if (c->end - c->s >= 2 && c->s[0] == ':' && c->s[1] == ':') {
        compressed = 1;
        c->s += 2;
        if (c->s < c->end && *c->s == ']')
            return 0;
    }
    for (;;) {
        if (ipv4_ahead(c)) {
            if (parse_ipv4(c) < 0)
                return -1;
            groups += 2;
            break;
        }
        bp g = c->s;

        while (c->s < c->end && is_hex(*c->s) && c->s - g < 4)
            c->s++;
        if (c->s == g)
            return -1;
        groups++;
        if (c->s >= c->end || *c->s != ':')
            break;
        if (c->end - c->s >= 2 && c->s[1] == ':') {
            if (compressed)
                return -1;
            compressed = 1;
            c->s += 2;
            if (c->s < c->end && *c->s == ']')
                break;
        } else {
            c->s++;
        }
    }
    return compressed ? (groups <= 6 ? 0 : -1) : (groups == 8 ? 0 : -1);
}

/*
 * address-literal: IPv4 or "IPv6:". General-address-literal is refused:
 * no tag besides IPv6 has ever been registered, so it can only be junk.
 */
static int parse_literal(pcur *c)
{
    c->s++; /* '[' */
    if (c->end - c->s >= 5 && ieq((const char *)c->s, 5, "IPv6:")) {
        c->s += 5;
        if (parse_ipv6(c) < 0)
            return -1;
    } else if (parse_ipv4(c) < 0) {
        return -1;
    }
    if (c->s >= c->end || *c->s != ']')
        return -1;
    c->s++;
    return 0;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE */
static int parse_quoted(pcur *c)
{
    c->s++; /* '"' */
    while (c->s < c->end) {
        unsigned ch = *c->s;

        if (ch == '"') {
            c->s++;
            return 0;
        }
        if (ch == '\\') {
            /* quoted-pairSMTP = %d92 %d32-126 */
            if (c->end - c->s < 2 || c->s[1] < 32 || c->s[1] > 126)
                return -1;
            c->s += 2;
        } else if (ch >= 32 && ch <= 126) {
            c->s++;
        } else if (!take_utf8(c)) {
            return -1;
        }
    }
    return -1;
}

/* Dot-string = Atom *("." Atom) */
static int parse_dot_string(pcur *c)
{
    for (;;) {
        bp atom = c->s;

        while (c->s < c->end) {
            if (*c->s < 0x80 && is_atext(*c->s))
                c->s++;
            else if (!take_utf8(c))
                break;
        }
        if (c->s == atom)
            return -1;
        if (c->s < c->end && *c->s == '.') {
            c->s++;
            continue;
        }
        return 0;
    }
}

/*
 * Path = "<" [ A-d-l ":" ] Mailbox ">", or "<>" for MAIL, or
 * "<Postmaster>" for RCPT. On success c->s is just past the '>'.
 */
static int parse_path(pcur *c, mx_cmd *out, int mail)
{
    bp lt = c->s;
    bp mbox;
    int routed = 0;

    if (c->s >= c->end || *c->s != '<')
        return -1;
    c->s++;
    if (mail && c->s < c->end && *c->s == '>') {
        c->s++;
        out->null_path = 1;
        out->path.p = (const char *)c->s - 1;
        out->path.len = 0;
        return 0;
    }
    /* A-d-l: obsolete source route, "MUST BE accepted, SHOULD NOT be
     * used, and SHOULD be ignored" (RFC 5321 4.1.1.3, C.). Dropped. */
    if (c->s < c->end && *c->s == '@') {
        routed = 1;
        for (;;) {
            c->s++; /* '@' */
            if (parse_domain(c) < 0 || c->s >= c->end)
                return -1;
            if (*c->s == ':') {
                c->s++;
                break;
            }
            if (*c->s != ',' || c->end - c->s < 2 || c->s[1] != '@')
                return -1;
            c->s++;
        }
        c->utf8 = 0; /* path_utf8 speaks of the mailbox, not the route */
    }
    mbox = c->s;
    if (c->s < c->end && *c->s == '"') {
        if (parse_quoted(c) < 0)
            return -1;
    } else if (parse_dot_string(c) < 0) {
        return -1;
    }
    if (!mail && !routed && c->s < c->end && *c->s == '>' &&
        ieq((const char *)mbox, (size_t)(c->s - mbox), "postmaster")) {
        out->postmaster = 1;
    } else {
        if (c->s >= c->end || *c->s != '@')
            return -1;
        c->s++;
        if (c->s < c->end && *c->s == '[') {
            if (parse_literal(c) < 0)
                return -1;
        } else if (parse_domain(c) < 0) {
            return -1;
        }
    }
    if (c->s >= c->end || *c->s != '>')
        return -1;
    out->path.p = (const char *)mbox;
    out->path.len = (size_t)(c->s - mbox);
    c->s++;
    /* RFC 5321 4.5.3.1.3: 256 octets "including the punctuation and
     * element separators", so from '<' to '>'. */
    if (c->s - lt > MX_CMD_MAX_PATH)
        return -1;
    out->path_utf8 = c->utf8;
    return 0;
}

/* 1*DIGIT into a uint64_t, refusing overflow. */
static int parse_u64(const char *s, size_t len, uint64_t *v)
{
    uint64_t n = 0;

    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned dg = (unsigned char)s[i] - '0';

        if (dg > 9 || n > (UINT64_MAX - dg) / 10)
            return -1;
        n = n * 10 + dg;
    }
    *v = n;
    return 0;
}

/* RFC 3461 4: xtext = *( xchar / hexchar ), hexchar = "+" 2(upper hex) */
static int is_xtext(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned ch = (unsigned char)s[i];

        if (ch == '+') {
            if (len - i < 3)
                return 0;
            for (size_t k = 1; k <= 2; k++) {
                unsigned h = (unsigned char)s[i + k];

                if (!is_digit(h) && !(h >= 'A' && h <= 'F'))
                    return 0;
            }
            i += 2;
        } else if (ch < 33 || ch > 126 || ch == '=') {
            return 0;
        }
    }
    return 1;
}

/* NOTIFY = "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" ), each once */
static int is_notify(const char *s, size_t len)
{
    static const char *const words[] = { "SUCCESS", "FAILURE", "DELAY" };
    unsigned seen = 0;
    size_t i = 0;

    if (ieq(s, len, "NEVER"))
        return 1;
    while (i <= len) {
        size_t j = i;
        size_t w;

        while (j < len && s[j] != ',')
            j++;
        for (w = 0; w < 3; w++)
            if (ieq(s + i, j - i, words[w]))
                break;
        if (w == 3 || (seen & (1u << w)))
            return 0;
        seen |= 1u << w;
        i = j + 1;
    }
    return 1;
}

/* ORCPT = addr-type ";" xtext, at most 500 characters (RFC 3461 4.2) */
static int is_orcpt(const char *s, size_t len)
{
    size_t i = 0;

    if (len > 500)
        return 0;
    while (i < len && is_atext((unsigned char)s[i]))
        i++;
    if (i == 0 || i == len || s[i] != ';' || i + 1 == len)
        return 0;
    return is_xtext(s + i + 1, len - i - 1);
}

static int check_value(mx_cmd *out, mx_param_kind kind, const char *v, size_t len)
{
    switch (kind) {
    case MX_PARAM_SIZE:
        return parse_u64(v, len, &out->size) == 0;
    case MX_PARAM_BODY:
        return ieq(v, len, "7BIT") || ieq(v, len, "8BITMIME");
    case MX_PARAM_SMTPUTF8:
        return 0; /* takes no value */
    case MX_PARAM_RET:
        return ieq(v, len, "FULL") || ieq(v, len, "HDRS");
    case MX_PARAM_ENVID:
        return len > 0 && len <= 100 && is_xtext(v, len);
    case MX_PARAM_NOTIFY:
        return len > 0 && is_notify(v, len);
    case MX_PARAM_ORCPT:
        return is_orcpt(v, len);
    }
    return 0;
}

/*
 * Mail-parameters = esmtp-param *(SP esmtp-param), from just after the
 * path. Runs of SP are tolerated between parameters: harmless, and some
 * clients send them.
 */
static mx_cmd_status parse_params(bp s, bp end, mx_cmd *out, int which, const char **why)
{
    unsigned seen = 0;

    if (s < end && *s != ' ') {
        *why = "Syntax error after address";
        return MX_CMD_E_SYNTAX;
    }
    for (;;) {
        bp key, val = NULL;
        size_t klen, vlen = 0, k;

        while (s < end && *s == ' ')
            s++;
        if (s == end)
            return MX_CMD_OK;
        key = s;
        /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
        if (!is_alnum(*s))
            goto bad;
        while (s < end && (is_alnum(*s) || *s == '-'))
            s++;
        klen = (size_t)(s - key);
        if (s < end && *s == '=') {
            /* esmtp-value = 1*(%d33-60 / %d62-126) */
            val = ++s;
            while (s < end && *s >= 33 && *s <= 126 && *s != '=')
                s++;
            vlen = (size_t)(s - val);
            if (vlen == 0)
                goto bad;
        }
        if (s < end && *s != ' ')
            goto bad;
        for (k = 0; k < sizeof(params) / sizeof(params[0]); k++)
            if (ieq((const char *)key, klen, params[k].name))
                break;
        if (k == sizeof(params) / sizeof(params[0]) || !(params[k].verbs & which) ||
            (seen & (1u << k)) || out->nparams == MX_CMD_MAX_PARAMS)
            goto bad;
        if (val != NULL ? !check_value(out, params[k].kind, (const char *)val, vlen)
                        : params[k].kind != MX_PARAM_SMTPUTF8)
            goto bad;
        if (params[k].kind == MX_PARAM_SMTPUTF8)
            out->smtputf8 = 1;
        seen |= 1u << k;
        out->params[out->nparams].kind = params[k].kind;
        out->params[out->nparams].key.p = (const char *)key;
        out->params[out->nparams].key.len = klen;
        out->params[out->nparams].value.p = val != NULL ? (const char *)val : (const char *)s;
        out->params[out->nparams].value.len = vlen;
        out->nparams++;
    }
bad:
    *why = "Unknown or malformed parameter";
    return MX_CMD_E_PARAM;
}

/* "MAIL FROM:" / "RCPT TO:" then the path and the parameters */
static mx_cmd_status parse_mail_rcpt(mx_cmd *out, const char **why)
{
    int mail = out->verb == MX_CMD_MAIL;
    const char *kw = mail ? "FROM:" : "TO:";
    size_t kwlen = strlen(kw);
    pcur c = { (bp)out->arg.p, (bp)out->arg.p + out->arg.len, 0 };

    if (out->arg.len < kwlen || !ieq(out->arg.p, kwlen, kw)) {
        *why = mail ? "Syntax: MAIL FROM:<address>" : "Syntax: RCPT TO:<address>";
        return MX_CMD_E_SYNTAX;
    }
    c.s += kwlen;
    if (c.s < c.end && *c.s == ' ')
        c.s++;
    if (parse_path(&c, out, mail) < 0) {
        out->path.p = NULL;
        out->path.len = 0;
        out->null_path = out->postmaster = out->path_utf8 = 0;
        if (mail) {
            *why = "Bad sender address syntax";
            return MX_CMD_E_SENDER;
        }
        *why = "Bad recipient address syntax";
        return MX_CMD_E_RCPT;
    }
    return parse_params(c.s, c.end, out, mail ? FOR_MAIL : FOR_RCPT, why);
}

/* RFC 3030: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] */
static mx_cmd_status parse_bdat(mx_cmd *out, const char **why)
{
    const char *s = out->arg.p;
    size_t len = out->arg.len, n = 0;

    while (n < len && s[n] != ' ')
        n++;
    if (parse_u64(s, n, &out->chunk_size) < 0) {
        *why = "Syntax: BDAT size [LAST]";
        return MX_CMD_E_SYNTAX;
    }
    if (n == len)
        return MX_CMD_OK;
    if (ieq(s + n + 1, len - n - 1, "LAST")) {
        out->last = 1;
        return MX_CMD_OK;
    }
    out->chunk_size = 0;
    *why = "Syntax: BDAT size [LAST]";
    return MX_CMD_E_SYNTAX;
}

mx_cmd_status mx_cmd_parse(const char *p, const char *end, mx_cmd *out, const char **why)
{
    const char *s = p;
    size_t vlen, k;

    memset(out, 0, sizeof(*out));
    /*
     * RFC 5321 2.3.8: a bare CR or LF is not a line ending and has no place
     * inside one; NUL and other controls in a command are an attack or a
     * broken client. TAB is let through for the argument's sake.
     */
    for (const char *t = p; t < end; t++) {
        unsigned char ch = (unsigned char)*t;

        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            *why = "Invalid character in command";
            return MX_CMD_E_CHAR;
        }
    }
    while (s < end && *s != ' ')
        s++;
    vlen = (size_t)(s - p);
    out->verb_text.p = p;
    out->verb_text.len = vlen;
    out->arg.p = s < end ? s + 1 : s;
    out->arg.len = (size_t)(end - out->arg.p);
    while (out->arg.len > 0 && out->arg.p[out->arg.len - 1] == ' ')
        out->arg.len--;

    for (k = 0; k < sizeof(verbs) / sizeof(verbs[0]); k++)
        if (ieq(p, vlen, verbs[k].name))
            break;
    if (k == sizeof(verbs) / sizeof(verbs[0])) {
        *why = "Command not recognized";
        return MX_CMD_E_UNKNOWN;
    }
    out->verb = verbs[k].verb;

    switch (out->verb) {
    case MX_CMD_HELO:
    case MX_CMD_EHLO:
        /* One word: a domain or address literal. Whether it is a good one
         * is policy, not syntax. */
        if (out->arg.len == 0 || memchr(out->arg.p, ' ', out->arg.len) != NULL ||
            memchr(out->arg.p, '\t', out->arg.len) != NULL) {
            *why = out->verb == MX_CMD_HELO ? "Syntax: HELO hostname" : "Syntax: EHLO hostname";
            return MX_CMD_E_SYNTAX;
        }
        return MX_CMD_OK;
    case MX_CMD_MAIL:
    case MX_CMD_RCPT:
        return parse_mail_rcpt(out, why);
    case MX_CMD_BDAT:
        return parse_bdat(out, why);
    case MX_CMD_DATA:
    case MX_CMD_RSET:
    case MX_CMD_QUIT:
    case MX_CMD_STARTTLS:
        if (out->arg.len != 0) {
            *why = "Syntax error, no parameters allowed";
            return MX_CMD_E_SYNTAX;
        }
        return MX_CMD_OK;
    case MX_CMD_VRFY:
    case MX_CMD_EXPN:
    case MX_CMD_AUTH:
    case MX_CMD_ETRN:
        if (out->arg.len == 0) {
            *why = "Argument required";
            return MX_CMD_E_SYNTAX;
        }
        return MX_CMD_OK;
    default: /* NOOP, HELP, NONSMTP: any argument */
        return MX_CMD_OK;
    }
}
