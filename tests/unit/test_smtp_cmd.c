/*
 * test_smtp_cmd.c: the command-line parser, as one big table of good and
 * bad lines with the status each must get.
 *
 * The parser takes a whole line, so instead of splitting the input every
 * row is parsed from an exact-size copy (ASan catches a read past the end)
 * and every prefix and suffix of it is parsed too: no crash, no span
 * outside the input, whatever the status.
 */
#include <glib.h>
#include <string.h>

#include "smtp_cmd.h"

enum {
    IS_NULL = 1 << 0,     /* null_path */
    IS_PM = 1 << 1,       /* postmaster */
    IS_UTF8 = 1 << 2,     /* path_utf8 */
    IS_SMTPUTF8 = 1 << 3, /* smtputf8 */
    IS_LAST = 1 << 4,     /* BDAT ... LAST */
};

typedef struct crow {
    const char *line;
    size_t len;
    mx_cmd_status st;
    mx_cmd_verb verb;
    const char *path; /* checked when the row is OK and this is not NULL */
    unsigned is;      /* IS_* expected (OK rows) */
    uint64_t num;     /* SIZE= for MAIL, chunk size for BDAT (OK rows) */
    size_t nparams;   /* OK rows */
} crow;

#define L(s) s, sizeof(s) - 1
#define OK MX_CMD_OK
#define E_UNKNOWN MX_CMD_E_UNKNOWN
#define E_CHAR MX_CMD_E_CHAR
#define E_SYNTAX MX_CMD_E_SYNTAX
#define E_SENDER MX_CMD_E_SENDER
#define E_RCPT MX_CMD_E_RCPT
#define E_PARAM MX_CMD_E_PARAM

static const crow rows[] = {
    /* HELO / EHLO */
    { L("EHLO mx.example.org"), .st = OK, .verb = MX_CMD_EHLO },
    { L("ehlo mx.example.org"), .st = OK, .verb = MX_CMD_EHLO },
    { L("HELO example.org"), .st = OK, .verb = MX_CMD_HELO },
    { L("EHLO [192.0.2.1]"), .st = OK, .verb = MX_CMD_EHLO },
    { L("EHLO mx.example.org "), .st = OK, .verb = MX_CMD_EHLO },
    { L("EHLO"), .st = E_SYNTAX, .verb = MX_CMD_EHLO },
    { L("EHLO "), .st = E_SYNTAX, .verb = MX_CMD_EHLO },
    { L("HELO"), .st = E_SYNTAX, .verb = MX_CMD_HELO },
    { L("EHLO a b"), .st = E_SYNTAX, .verb = MX_CMD_EHLO },
    { L("EHLO  a"), .st = E_SYNTAX, .verb = MX_CMD_EHLO },
    { L("EHLO a\tb"), .st = E_SYNTAX, .verb = MX_CMD_EHLO },
    { L("EHLO a\rb"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("EHLO a\nb"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("EHLO a\0b"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("EHLO a\x7f"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("EHLO a\x1b[0m"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("EHLO\ta"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("EHLOx a"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L(" EHLO a"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L(""), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },

    /* MAIL: good paths */
    { L("MAIL FROM:<alice@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "alice@example.org" },
    { L("mail from:<alice@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "alice@example.org" },
    { L("Mail From:<alice@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "alice@example.org" },
    { L("MAIL FROM: <alice@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "alice@example.org" },
    { L("MAIL FROM:<alice@example.org> "), .st = OK, .verb = MX_CMD_MAIL,
          .path = "alice@example.org" },
    { L("MAIL FROM:<>"), .st = OK, .verb = MX_CMD_MAIL, .path = "", .is = IS_NULL },
    { L("MAIL FROM:<a.b.c@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a.b.c@example.org" },
    { L("MAIL FROM:<a+tag@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a+tag@example.org" },
    { L("MAIL FROM:<!#$%&'*+-/=?^_`{|}~@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "!#$%&'*+-/=?^_`{|}~@example.org" },
    { L("MAIL FROM:<\"john doe\"@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\"john doe\"@example.org" },
    { L("MAIL FROM:<\"a\\\"b\"@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\"a\\\"b\"@example.org" },
    { L("MAIL FROM:<\"\"@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\"\"@example.org" },
    { L("MAIL FROM:<\"a>b\"@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\"a>b\"@example.org" },
    { L("MAIL FROM:<\"a@b\"@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\"a@b\"@example.org" },
    { L("MAIL FROM:<a@localhost>"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@localhost" },
    { L("MAIL FROM:<a@example-1.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@example-1.org" },
    { L("MAIL FROM:<a@xn--bcher-kva.example>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@xn--bcher-kva.example" },
    { L("MAIL FROM:<a@1.2.3.4>"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@1.2.3.4" },
    { L("MAIL FROM:<a@[192.0.2.1]>"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@[192.0.2.1]" },
    { L("MAIL FROM:<a@[0.0.0.0]>"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@[0.0.0.0]" },
    { L("MAIL FROM:<a@[255.255.255.255]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[255.255.255.255]" },
    { L("MAIL FROM:<a@[IPv6:2001:db8::1]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[IPv6:2001:db8::1]" },
    { L("MAIL FROM:<a@[ipv6:2001:db8:0:0:0:0:0:1]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[ipv6:2001:db8:0:0:0:0:0:1]" },
    { L("MAIL FROM:<a@[IPv6:::]>"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@[IPv6:::]" },
    { L("MAIL FROM:<a@[IPv6:::1]>"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@[IPv6:::1]" },
    { L("MAIL FROM:<a@[IPv6:fe80::]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[IPv6:fe80::]" },
    { L("MAIL FROM:<a@[IPv6:1:2:3::4:5:6]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[IPv6:1:2:3::4:5:6]" },
    { L("MAIL FROM:<a@[IPv6:::ffff:192.0.2.1]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[IPv6:::ffff:192.0.2.1]" },
    { L("MAIL FROM:<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@[IPv6:1:2:3:4:5:6:192.0.2.1]" },
    { L("MAIL FROM:<@relay.example:a@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@example.org" },
    { L("MAIL FROM:<@r1.example,@r2.example:a@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@example.org" },
    { L("MAIL FROM:<jos\xc3\xa9@example.org> SMTPUTF8"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "jos\xc3\xa9@example.org", .is = IS_UTF8 | IS_SMTPUTF8, .num = 0,
          .nparams = 1 },
    { L("MAIL FROM:<a@b\xc3\xbc" "cher.example>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@b\xc3\xbc" "cher.example", .is = IS_UTF8 },
    { L("MAIL FROM:<\"\xe2\x82\xac\"@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\"\xe2\x82\xac\"@example.org", .is = IS_UTF8 },
    { L("MAIL FROM:<\xf0\x9f\x93\xa7@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "\xf0\x9f\x93\xa7@example.org", .is = IS_UTF8 },
    { L("MAIL FROM:<@r\xc3\xa9lay.example:a@example.org>"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@example.org" },

    /* MAIL: good parameters */
    { L("MAIL FROM:<> SIZE=0"), .st = OK, .verb = MX_CMD_MAIL, .path = "", .is = IS_NULL,
          .num = 0, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> SIZE=1000"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = 0, .num = 1000, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> size=1000"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = 0, .num = 1000, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> SIZE=18446744073709551615"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@b.c", .is = 0, .num = UINT64_MAX, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> SIZE=000123"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = 0, .num = 123, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> BODY=8BITMIME"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = 0, .num = 0, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> body=7bit"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = 0, .num = 0, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> SMTPUTF8"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = IS_SMTPUTF8, .num = 0, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> RET=HDRS ENVID=QQ314159"), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@b.c", .is = 0, .num = 0, .nparams = 2 },
    { L("MAIL FROM:<a@b.c> RET=full"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c", .is = 0,
          .num = 0, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> ENVID=a+2Bb+3Dc"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c",
          .is = 0, .num = 0, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> SIZE=1 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x"), .st = OK,
          .verb = MX_CMD_MAIL, .path = "a@b.c", .is = IS_SMTPUTF8, .num = 1, .nparams = 5 },
    { L("MAIL FROM:<a@b.c>  SIZE=1"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c", .is = 0,
          .num = 1, .nparams = 1 },
    { L("MAIL FROM:<a@b.c> SIZE=1  BODY=7BIT "), .st = OK, .verb = MX_CMD_MAIL,
          .path = "a@b.c", .is = 0, .num = 1, .nparams = 2 },
    { L("MAIL FROM: <a@b.c> SIZE=1"), .st = OK, .verb = MX_CMD_MAIL, .path = "a@b.c", .is = 0,
          .num = 1, .nparams = 1 },

    /* MAIL: bad syntax around the path */
    { L("MAIL"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL "), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL FROM"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL TO:<a@b.c>"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL FROM <a@b.c>"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL  FROM:<a@b.c>"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAILFROM:<a@b.c>"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("MAIL FROM:<a@b.c>>"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<>x"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c>SIZE=1"), .st = E_SYNTAX, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c>\rRCPT TO:<x@y.z>"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("MAIL FROM:<a@b.c>\nRCPT TO:<x@y.z>"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },

    /* MAIL: bad paths */
    { L("MAIL FROM:"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:a@b.c"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:  <a@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<<a@b.c>>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<postmaster>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b..c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@.b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c.>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@-b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b-.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b_c.d>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<.a@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a.@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a..b@c.d>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a b@c.d>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c@d.e>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a(comment)@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c (comment)>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<\"unterminated@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<\"a\"b@c.d>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<\"a\\\xc3\xa9\"@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<\"a\\\"@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<\"a\\\x80\"@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[192.0.2.256]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[192.0.2]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[192.0.2.1.5]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[1234.0.2.1]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[192.0.2.1>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:2001:db8::1::2]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7::]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:1:2:3:4:5::192.0.2.1]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:12345::1]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:g::1]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:1:]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[IPv6:::192.0.2.256]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[x-tag:foo]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[example.org]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<@relay:>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<@relay,a@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<@relay,@:a@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<@[192.0.2.1]:a@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<@relay:<>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<jos\xe9@example.org>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\xc0\xaf@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\xe0\x80\xaf@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\xed\xa0\x80@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\xf4\x90\x80\x80@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\xf8\x88\x80\x80\x80@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\xc3@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a\x80@b.c>"), .st = E_SENDER, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@[19\xc3\xa9.0.2.1]>"), .st = E_SENDER, .verb = MX_CMD_MAIL },

    /* MAIL: bad parameters */
    { L("MAIL FROM:<a@b.c> SIZE="), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=-1"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=1k"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=18446744073709551616"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=99999999999999999999999"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=1 SIZE=2"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> size=1 SIZE=1"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=1=2"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE==1"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> BODY=BINARYMIME"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> BODY=8bit"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> BODY"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> BODY=8BITMIME\t"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SMTPUTF8=yes"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SMTPUTF8 SMTPUTF8"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> RET=ALL"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> RET"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ENVID=a+2b"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ENVID=a+2"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ENVID=a+"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ENVID="), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ENVID"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ENVID=caf\xc3\xa9"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> NOTIFY=NEVER"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> ORCPT=rfc822;a@b.c"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> AUTH=<>"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> XFOO=bar"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> =bar"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> -X=1"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=1\xc3\xa9"), .st = E_PARAM, .verb = MX_CMD_MAIL },
    { L("MAIL FROM:<a@b.c> SIZE=1,2"), .st = E_PARAM, .verb = MX_CMD_MAIL },

    /* RCPT: good */
    { L("RCPT TO:<bob@example.org>"), .st = OK, .verb = MX_CMD_RCPT, .path = "bob@example.org" },
    { L("rcpt to:<bob@example.org>"), .st = OK, .verb = MX_CMD_RCPT, .path = "bob@example.org" },
    { L("RCPT TO: <bob@example.org>"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "bob@example.org" },
    { L("RCPT TO:<Postmaster>"), .st = OK, .verb = MX_CMD_RCPT, .path = "Postmaster",
          .is = IS_PM },
    { L("RCPT TO:<postmaster>"), .st = OK, .verb = MX_CMD_RCPT, .path = "postmaster",
          .is = IS_PM },
    { L("RCPT TO:<POSTMASTER> NOTIFY=NEVER"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "POSTMASTER", .is = IS_PM, .num = 0, .nparams = 1 },
    { L("RCPT TO:<postmaster@example.org>"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "postmaster@example.org" },
    { L("RCPT TO:<bob@example.org> NOTIFY=SUCCESS,FAILURE,DELAY"), .st = OK,
          .verb = MX_CMD_RCPT, .path = "bob@example.org", .is = 0, .num = 0, .nparams = 1 },
    { L("RCPT TO:<bob@example.org> NOTIFY=failure"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "bob@example.org", .is = 0, .num = 0, .nparams = 1 },
    { L("RCPT TO:<bob@example.org> NOTIFY=delay,Success"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "bob@example.org", .is = 0, .num = 0, .nparams = 1 },
    { L("RCPT TO:<bob@example.org> ORCPT=rfc822;bob@example.org"), .st = OK,
          .verb = MX_CMD_RCPT, .path = "bob@example.org", .is = 0, .num = 0, .nparams = 1 },
    { L("RCPT TO:<bob@example.org> ORCPT=rfc822;bob+2Bx@example.org NOTIFY=DELAY"), .st = OK,
          .verb = MX_CMD_RCPT, .path = "bob@example.org", .is = 0, .num = 0, .nparams = 2 },
    { L("RCPT TO:<bob@example.org> ORCPT=utf-8;b\\x{E9}b@example.org"), .st = OK,
          .verb = MX_CMD_RCPT, .path = "bob@example.org", .is = 0, .num = 0, .nparams = 1 },
    { L("RCPT TO:<@hop.example:bob@example.org>"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "bob@example.org" },
    { L("RCPT TO:<b\xc3\xb6" "b@example.org>"), .st = OK, .verb = MX_CMD_RCPT,
          .path = "b\xc3\xb6" "b@example.org", .is = IS_UTF8 },

    /* RCPT: bad */
    { L("RCPT"), .st = E_SYNTAX, .verb = MX_CMD_RCPT },
    { L("RCPT TO"), .st = E_SYNTAX, .verb = MX_CMD_RCPT },
    { L("RCPT FROM:<bob@example.org>"), .st = E_SYNTAX, .verb = MX_CMD_RCPT },
    { L("RCPT TO <bob@example.org>"), .st = E_SYNTAX, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<>"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:bob@example.org"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob>"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<postmaster2>"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<\"postmaster\">"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<@hop.example:postmaster>"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example..org>"), .st = E_RCPT, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> SIZE=10"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> SMTPUTF8"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> BODY=8BITMIME"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> RET=FULL"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ENVID=x"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY=NEVER,SUCCESS"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY=SUCCESS,SUCCESS"), .st = E_PARAM,
          .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY=SUCCESS,"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY=,DELAY"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY=SOMETIMES"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> NOTIFY=DELAY NOTIFY=DELAY"), .st = E_PARAM,
          .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ORCPT=bob@example.org"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ORCPT=rfc822;"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ORCPT=;bob@example.org"), .st = E_PARAM,
          .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ORCPT=rfc822;a+zz"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ORCPT=rfc(822);a"), .st = E_PARAM, .verb = MX_CMD_RCPT },
    { L("RCPT TO:<bob@example.org> ORCPT"), .st = E_PARAM, .verb = MX_CMD_RCPT },

    /* BDAT, RFC 3030 */
    { L("BDAT 0"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = 0, .num = 0 },
    { L("BDAT 1000"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = 0, .num = 1000 },
    { L("BDAT 1000 LAST"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = IS_LAST,
          .num = 1000 },
    { L("bdat 5 last"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = IS_LAST, .num = 5 },
    { L("BDAT 0 LAST"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = IS_LAST, .num = 0 },
    { L("BDAT 007"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = 0, .num = 7 },
    { L("BDAT 10 "), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = 0, .num = 10 },
    { L("BDAT 18446744073709551615"), .st = OK, .verb = MX_CMD_BDAT, .path = NULL, .is = 0,
          .num = UINT64_MAX },
    { L("BDAT"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT "), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT LAST"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT -1"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT +1"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 1e3"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 0x10"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 18446744073709551616"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 10 LAST more"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 10 FIRST"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 10  LAST"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT  10"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },
    { L("BDAT 10\tLAST"), .st = E_SYNTAX, .verb = MX_CMD_BDAT },

    /* verbs without arguments */
    { L("DATA"), .st = OK, .verb = MX_CMD_DATA },
    { L("data"), .st = OK, .verb = MX_CMD_DATA },
    { L("DATA "), .st = OK, .verb = MX_CMD_DATA },
    { L("DATA now"), .st = E_SYNTAX, .verb = MX_CMD_DATA },
    { L("RSET"), .st = OK, .verb = MX_CMD_RSET },
    { L("RSET x"), .st = E_SYNTAX, .verb = MX_CMD_RSET },
    { L("QUIT"), .st = OK, .verb = MX_CMD_QUIT },
    { L("QUIT now"), .st = E_SYNTAX, .verb = MX_CMD_QUIT },
    { L("STARTTLS"), .st = OK, .verb = MX_CMD_STARTTLS },
    { L("starttls"), .st = OK, .verb = MX_CMD_STARTTLS },
    { L("STARTTLS x"), .st = E_SYNTAX, .verb = MX_CMD_STARTTLS },
    { L("QUIT\r"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("RSET\n"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },
    { L("DATA\0"), .st = E_CHAR, .verb = MX_CMD_UNKNOWN },

    /* verbs with optional or required arguments */
    { L("NOOP"), .st = OK, .verb = MX_CMD_NOOP },
    { L("NOOP anything at all"), .st = OK, .verb = MX_CMD_NOOP },
    { L("NOOP \t"), .st = OK, .verb = MX_CMD_NOOP },
    { L("HELP"), .st = OK, .verb = MX_CMD_HELP },
    { L("HELP MAIL"), .st = OK, .verb = MX_CMD_HELP },
    { L("VRFY bob"), .st = OK, .verb = MX_CMD_VRFY },
    { L("VRFY"), .st = E_SYNTAX, .verb = MX_CMD_VRFY },
    { L("EXPN staff"), .st = OK, .verb = MX_CMD_EXPN },
    { L("EXPN"), .st = E_SYNTAX, .verb = MX_CMD_EXPN },
    { L("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q="), .st = OK, .verb = MX_CMD_AUTH },
    { L("AUTH"), .st = E_SYNTAX, .verb = MX_CMD_AUTH },
    { L("ETRN example.org"), .st = OK, .verb = MX_CMD_ETRN },
    { L("ETRN"), .st = E_SYNTAX, .verb = MX_CMD_ETRN },

    /* not SMTP at all */
    { L("GET / HTTP/1.1"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("get /"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("POST /x HTTP/1.0"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("HEAD /"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("PUT /x"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("CONNECT mx.example:25 HTTP/1.1"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("USER bob"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("PASS secret"), .st = OK, .verb = MX_CMD_NONSMTP },
    { L("GET"), .st = OK, .verb = MX_CMD_NONSMTP },

    /* unknown verbs, including ones only the backend may hear from us */
    { L("XCLIENT ADDR=192.0.2.1"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("XFORWARD NAME=spoofed"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("TURN"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("SEND FROM:<a@b.c>"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("\tNOOP"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("NOOP\t"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("MAI"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("MAILX FROM:<a@b.c>"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
    { L("\xc3\xa9HLO x"), .st = E_UNKNOWN, .verb = MX_CMD_UNKNOWN },
};

static const char *status_name(mx_cmd_status st)
{
    switch (st) {
    case MX_CMD_OK: return "is accepted";
    case MX_CMD_E_UNKNOWN: return "is an unknown command";
    case MX_CMD_E_CHAR: return "has a forbidden byte";
    case MX_CMD_E_SYNTAX: return "is a syntax error";
    case MX_CMD_E_SENDER: return "has a bad sender";
    case MX_CMD_E_RCPT: return "has a bad recipient";
    case MX_CMD_E_PARAM: return "has a bad parameter";
    }
    return "?";
}

/* A printable, slash-free test name for a raw line. */
static char *row_name(const crow *r)
{
    GString *s = g_string_new("/cmd/");

    g_string_append_c(s, '"');
    for (size_t i = 0; i < r->len; i++) {
        unsigned char c = (unsigned char)r->line[i];

        if (c < 0x20 || c >= 0x7f || c == '/' || c == '\\')
            g_string_append_printf(s, "\\x%02x", c);
        else
            g_string_append_c(s, (char)c);
    }
    g_string_append_printf(s, "\" %s", status_name(r->st));
    return g_string_free(s, FALSE);
}

static int span_inside(mx_span sp, const char *p, size_t len)
{
    if (sp.len == 0)
        return 1;
    return sp.p >= p && sp.p + sp.len <= p + len;
}

static void assert_spans_inside(const mx_cmd *c, const char *p, size_t len)
{
    g_assert_true(span_inside(c->verb_text, p, len));
    g_assert_true(span_inside(c->arg, p, len));
    g_assert_true(span_inside(c->path, p, len));
    g_assert_cmpuint(c->nparams, <=, MX_CMD_MAX_PARAMS);
    for (size_t i = 0; i < c->nparams; i++) {
        g_assert_true(span_inside(c->params[i].key, p, len));
        g_assert_true(span_inside(c->params[i].value, p, len));
    }
}

/* Parse an exact-size copy of [p, p + len). */
static mx_cmd_status parse_copy(const char *p, size_t len, mx_cmd *c, const char **why)
{
    char *buf = g_malloc(len > 0 ? len : 1); /* g_memdup2 gives NULL for 0 */
    mx_cmd_status st;

    memcpy(buf, p, len);
    *why = NULL;
    st = mx_cmd_parse(buf, buf + len, c, why);
    assert_spans_inside(c, buf, len);
    if (st != MX_CMD_OK)
        g_assert_nonnull(*why);
    g_free(buf);
    return st;
}

static void test_row(gconstpointer data)
{
    const crow *r = data;
    const char *why = NULL;
    mx_cmd c;
    mx_cmd_status st;

    st = mx_cmd_parse(r->line, r->line + r->len, &c, &why);
    if (st != r->st)
        g_test_message("why: %s", why ? why : "(none)");
    g_assert_cmpint(st, ==, r->st);
    g_assert_cmpint(c.verb, ==, r->verb);
    assert_spans_inside(&c, r->line, r->len);
    if (st != MX_CMD_OK) {
        g_assert_nonnull(why);
        g_assert_cmpuint(strlen(why), >, 0);
    } else {
        if (r->path != NULL)
            g_assert_cmpmem(c.path.p, c.path.len, r->path, strlen(r->path));
        g_assert_cmpint(c.null_path, ==, !!(r->is & IS_NULL));
        g_assert_cmpint(c.postmaster, ==, !!(r->is & IS_PM));
        g_assert_cmpint(c.path_utf8, ==, !!(r->is & IS_UTF8));
        g_assert_cmpint(c.smtputf8, ==, !!(r->is & IS_SMTPUTF8));
        g_assert_cmpint(c.last, ==, !!(r->is & IS_LAST));
        g_assert_cmpuint(c.verb == MX_CMD_BDAT ? c.chunk_size : c.size, ==, r->num);
        g_assert_cmpuint(c.nparams, ==, r->nparams);
    }

    /* the same bytes in an exact-size buffer, then every prefix and suffix */
    g_assert_cmpint(parse_copy(r->line, r->len, &c, &why), ==, r->st);
    for (size_t i = 0; i < r->len; i++) {
        parse_copy(r->line, i, &c, &why);
        parse_copy(r->line + i + 1, r->len - i - 1, &c, &why);
    }
}

/* ---- limits, built at run time ---- */

static mx_cmd_status parse_str(const char *s, mx_cmd *c)
{
    const char *why;

    return parse_copy(s, strlen(s), c, &why);
}

/* "MAIL FROM:<l...l@d...d.d...d>" whose path, '<' to '>', is total octets */
static char *path_of_length(size_t total)
{
    GString *s = g_string_new("MAIL FROM:<");
    size_t left = total - 3 - 64; /* the domain's share */

    for (int i = 0; i < 64; i++)
        g_string_append_c(s, 'l');
    g_string_append_c(s, '@');
    while (left > 0) {
        size_t n = left > 63 ? 63 : left;

        if (left - n == 1)
            n--; /* a dot must be followed by a label */
        for (size_t i = 0; i < n; i++)
            g_string_append_c(s, 'd');
        left -= n;
        if (left > 0) {
            g_string_append_c(s, '.');
            left--;
        }
    }
    g_string_append_c(s, '>');
    return g_string_free(s, FALSE);
}

static void test_path_length(void)
{
    mx_cmd c;

    for (size_t n = 250; n <= 260; n++) {
        char *line = path_of_length(n);
        const char *lt = strchr(line, '<');

        g_assert_cmpuint(strlen(lt), ==, n);
        g_assert_cmpint(parse_str(line, &c), ==, n <= 256 ? MX_CMD_OK : MX_CMD_E_SENDER);
        g_free(line);
    }
}

static void test_label_length(void)
{
    mx_cmd c;
    char *l63 = g_strnfill(63, 'a'), *l64 = g_strnfill(64, 'a');
    char *ok = g_strdup_printf("RCPT TO:<bob@%s.example>", l63);
    char *bad = g_strdup_printf("RCPT TO:<bob@%s.example>", l64);

    g_assert_cmpint(parse_str(ok, &c), ==, MX_CMD_OK);
    g_assert_cmpint(parse_str(bad, &c), ==, MX_CMD_E_RCPT);
    g_free(l63), g_free(l64), g_free(ok), g_free(bad);
}

static void test_envid_length(void)
{
    mx_cmd c;
    char *v100 = g_strnfill(100, 'e'), *v101 = g_strnfill(101, 'e');
    char *ok = g_strdup_printf("MAIL FROM:<a@b.c> ENVID=%s", v100);
    char *bad = g_strdup_printf("MAIL FROM:<a@b.c> ENVID=%s", v101);

    g_assert_cmpint(parse_str(ok, &c), ==, MX_CMD_OK);
    g_assert_cmpint(parse_str(bad, &c), ==, MX_CMD_E_PARAM);
    g_free(v100), g_free(v101), g_free(ok), g_free(bad);
}

static void test_orcpt_length(void)
{
    mx_cmd c;
    char *v = g_strnfill(500 - 7, 'o'), *w = g_strnfill(501 - 7, 'o');
    char *ok = g_strdup_printf("RCPT TO:<a@b.c> ORCPT=rfc822;%s", v);
    char *bad = g_strdup_printf("RCPT TO:<a@b.c> ORCPT=rfc822;%s", w);

    g_assert_cmpint(parse_str(ok, &c), ==, MX_CMD_OK);
    g_assert_cmpint(parse_str(bad, &c), ==, MX_CMD_E_PARAM);
    g_free(v), g_free(w), g_free(ok), g_free(bad);
}

/* ---- what the result holds ---- */

static void assert_span(mx_span sp, const char *want)
{
    g_assert_cmpmem(sp.p, sp.len, want, strlen(want));
}

static void test_params_point_into_the_line(void)
{
    mx_cmd c;
    const char *why;
    static const char line[] = "MAIL FROM:<a@b.c> SIZE=100 body=8BITMIME SMTPUTF8";

    g_assert_cmpint(mx_cmd_parse(line, line + sizeof(line) - 1, &c, &why), ==, MX_CMD_OK);
    g_assert_cmpuint(c.nparams, ==, 3);
    g_assert_cmpint(c.params[0].kind, ==, MX_PARAM_SIZE);
    assert_span(c.params[0].key, "SIZE");
    assert_span(c.params[0].value, "100");
    g_assert_cmpint(c.params[1].kind, ==, MX_PARAM_BODY);
    assert_span(c.params[1].key, "body");
    assert_span(c.params[1].value, "8BITMIME");
    g_assert_cmpint(c.params[2].kind, ==, MX_PARAM_SMTPUTF8);
    assert_span(c.params[2].key, "SMTPUTF8");
    g_assert_cmpuint(c.params[2].value.len, ==, 0);
    g_assert_cmpuint(c.size, ==, 100);
    g_assert_true(c.smtputf8);
}

static void test_rcpt_params_kinds(void)
{
    mx_cmd c;
    const char *why;
    static const char line[] = "RCPT TO:<a@b.c> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40b.c";

    g_assert_cmpint(mx_cmd_parse(line, line + sizeof(line) - 1, &c, &why), ==, MX_CMD_OK);
    g_assert_cmpuint(c.nparams, ==, 2);
    g_assert_cmpint(c.params[0].kind, ==, MX_PARAM_NOTIFY);
    assert_span(c.params[0].value, "SUCCESS,DELAY");
    g_assert_cmpint(c.params[1].kind, ==, MX_PARAM_ORCPT);
    assert_span(c.params[1].value, "rfc822;a+40b.c");
}

static void test_verb_and_arg_spans(void)
{
    mx_cmd c;
    const char *why;
    static const char line[] = "mail FROM:<a@b.c>   ";

    g_assert_cmpint(mx_cmd_parse(line, line + sizeof(line) - 1, &c, &why), ==, MX_CMD_OK);
    assert_span(c.verb_text, "mail");
    assert_span(c.arg, "FROM:<a@b.c>");
}

static void test_source_route_is_dropped(void)
{
    static const char line[] = "RCPT TO:<@a.example,@b.example:bob@c.example>";
    mx_cmd c;
    const char *why;

    g_assert_cmpint(mx_cmd_parse(line, line + sizeof(line) - 1, &c, &why), ==, MX_CMD_OK);
    assert_span(c.path, "bob@c.example");
}

static void test_failure_clears_the_path(void)
{
    mx_cmd c;

    g_assert_cmpint(parse_str("RCPT TO:<bob@example.org", &c), ==, MX_CMD_E_RCPT);
    g_assert_cmpuint(c.path.len, ==, 0);
    g_assert_false(c.postmaster);
}

static void test_verb_names(void)
{
    for (int v = 0; v < MX_CMD__COUNT; v++) {
        g_assert_nonnull(mx_cmd_verb_name((mx_cmd_verb)v));
        for (int w = 0; w < v; w++)
            g_assert_cmpstr(mx_cmd_verb_name((mx_cmd_verb)v), !=,
                            mx_cmd_verb_name((mx_cmd_verb)w));
    }
    g_assert_cmpstr(mx_cmd_verb_name(MX_CMD_MAIL), ==, "MAIL");
    g_assert_cmpstr(mx_cmd_verb_name(MX_CMD_STARTTLS), ==, "STARTTLS");
    g_assert_cmpstr(mx_cmd_verb_name(MX_CMD__COUNT), ==, "UNKNOWN");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        char *name = row_name(&rows[i]);

        g_test_add_data_func(name, &rows[i], test_row);
        g_free(name);
    }
    g_test_add_func("/cmd/limits/a path of 256 octets is accepted, 257 is not",
                    test_path_length);
    g_test_add_func("/cmd/limits/a domain label of 63 octets is accepted, 64 is not",
                    test_label_length);
    g_test_add_func("/cmd/limits/ENVID of 100 characters is accepted, 101 is not",
                    test_envid_length);
    g_test_add_func("/cmd/limits/ORCPT of 500 characters is accepted, 501 is not",
                    test_orcpt_length);
    g_test_add_func("/cmd/result/MAIL parameters point into the line",
                    test_params_point_into_the_line);
    g_test_add_func("/cmd/result/RCPT parameters have their kinds", test_rcpt_params_kinds);
    g_test_add_func("/cmd/result/verb and argument spans, trailing spaces trimmed",
                    test_verb_and_arg_spans);
    g_test_add_func("/cmd/result/a source route is dropped from the path",
                    test_source_route_is_dropped);
    g_test_add_func("/cmd/result/a bad path leaves no path behind", test_failure_clears_the_path);
    g_test_add_func("/cmd/result/every verb has its own name", test_verb_names);
    return g_test_run();
}
