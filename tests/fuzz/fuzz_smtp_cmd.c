/*
 * fuzz_smtp_cmd.c: libFuzzer target for the command-line parser.
 *
 * Input: one command line, line ending already removed. Beyond "no crash",
 * each run checks:
 *  - every span in the result lies inside the input;
 *  - E_CHAR exactly when the line holds a control byte other than TAB;
 *  - an accepted MAIL/RCPT, rebuilt in canonical form from its path and
 *    parameters, parses again to the same result (what we would forward is
 *    something we accept ourselves);
 *  - path_utf8 exactly when the path has a byte >= 0x80.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_cmd.h"

#include "fuzz_check.h"

static void inside(mx_span sp, const char *p, size_t len)
{
    if (sp.len == 0)
        return;
    CHECK(sp.p >= p && sp.p + sp.len <= p + len);
}

static void check_spans(const mx_cmd *c, const char *p, size_t len)
{
    inside(c->verb_text, p, len);
    inside(c->arg, p, len);
    inside(c->path, p, len);
    CHECK(c->nparams <= MX_CMD_MAX_PARAMS);
    for (size_t i = 0; i < c->nparams; i++) {
        inside(c->params[i].key, p, len);
        inside(c->params[i].value, p, len);
    }
}

static void append(char *buf, size_t *n, const char *p, size_t len)
{
    memcpy(buf + *n, p, len);
    *n += len;
}

/* "MAIL FROM:<path> KEY=VALUE ...", rebuilt from the parse result */
static void check_rebuilt(const mx_cmd *c)
{
    /* the path and every parameter came from the input, so twice its
     * length is more than enough; the parser keeps them short anyway */
    size_t cap = 32 + c->path.len;
    size_t n = 0;
    char *buf;
    mx_cmd again;
    const char *why;

    for (size_t i = 0; i < c->nparams; i++)
        cap += 2 + c->params[i].key.len + c->params[i].value.len;
    buf = malloc(cap);
    if (c->verb == MX_CMD_MAIL)
        append(buf, &n, "MAIL FROM:<", 11);
    else
        append(buf, &n, "RCPT TO:<", 9);
    append(buf, &n, c->path.p, c->path.len);
    append(buf, &n, ">", 1);
    for (size_t i = 0; i < c->nparams; i++) {
        append(buf, &n, " ", 1);
        append(buf, &n, c->params[i].key.p, c->params[i].key.len);
        if (c->params[i].value.len > 0) {
            append(buf, &n, "=", 1);
            append(buf, &n, c->params[i].value.p, c->params[i].value.len);
        }
    }
    CHECK(n <= cap);

    CHECK(mx_cmd_parse(buf, buf + n, &again, &why) == MX_CMD_OK);
    CHECK(again.verb == c->verb);
    CHECK(again.path.len == c->path.len);
    CHECK(memcmp(again.path.p, c->path.p, c->path.len) == 0);
    CHECK(again.null_path == c->null_path);
    CHECK(again.postmaster == c->postmaster);
    CHECK(again.path_utf8 == c->path_utf8);
    CHECK(again.nparams == c->nparams);
    CHECK(again.size == c->size);
    CHECK(again.smtputf8 == c->smtputf8);
    for (size_t i = 0; i < c->nparams; i++)
        CHECK(again.params[i].kind == c->params[i].kind);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    const char *why = NULL;
    mx_cmd c;
    mx_cmd_status st;
    int ctl = 0;

    st = mx_cmd_parse(p, p + size, &c, &why);
    check_spans(&c, p, size);
    CHECK(mx_cmd_verb_name(c.verb) != NULL);
    if (st != MX_CMD_OK)
        CHECK(why != NULL && why[0] != '\0');

    for (size_t i = 0; i < size; i++)
        if ((data[i] < 0x20 && data[i] != '\t') || data[i] == 0x7f)
            ctl = 1;
    CHECK((st == MX_CMD_E_CHAR) == ctl);

    if (st != MX_CMD_OK)
        return 0;
    if (c.verb == MX_CMD_MAIL || c.verb == MX_CMD_RCPT) {
        int high = 0;

        CHECK(c.path.len + 2 <= MX_CMD_MAX_PATH);
        CHECK(!c.null_path || (c.verb == MX_CMD_MAIL && c.path.len == 0));
        CHECK(!c.postmaster || c.verb == MX_CMD_RCPT);
        for (size_t i = 0; i < c.path.len; i++)
            if ((unsigned char)c.path.p[i] >= 0x80)
                high = 1;
        CHECK(c.path_utf8 == high);
        check_rebuilt(&c);
    } else {
        CHECK(c.path.len == 0 && c.nparams == 0);
    }
    return 0;
}
