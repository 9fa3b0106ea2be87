/*
 * replies.c: the reply table (see replies.h).
 */
#include <stdio.h>
#include <string.h>

#include "replies.h"

typedef struct reply {
    int code;
    const char *esc; /* NULL: none (greeting, 354, 221 from RFC 2034 3) */
    const char *text; /* may hold one %s */
} reply;

static const reply table[MX_R__COUNT] = {
    [MX_R_GREETING] = {220, NULL, "%s ESMTP mxgate"},
    [MX_R_HELO] = {250, NULL, "%s"},
    [MX_R_OK] = {250, "2.0.0", "Ok"},
    [MX_R_QUIT] = {221, "2.0.0", "Bye"},
    [MX_R_VRFY] = {252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"},
    [MX_R_HELP] = {214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP; see RFC 5321"},
    [MX_R_DATA_GO] = {354, NULL, "End data with <CR><LF>.<CR><LF>"},
    [MX_R_BDAT_OK] = {250, "2.0.0", "%s octets received"},
    [MX_R_PREGREET] = {554, "5.5.0", "Protocol error: talking before the greeting"},
    [MX_R_UNKNOWN] = {500, "5.5.2", "Error: command not recognized"},
    [MX_R_BAD_CHAR] = {500, "5.5.2", "Error: control characters in command"},
    [MX_R_LINE_TOO_LONG] = {500, "5.5.2", "Error: line too long"},
    [MX_R_NONSMTP] = {500, "5.5.2", "Error: not an SMTP command; closing connection"},
    [MX_R_SYNTAX] = {501, "5.5.4", "Syntax error: %s"},
    [MX_R_BAD_SENDER] = {501, "5.1.7", "Bad sender address syntax: %s"},
    [MX_R_BAD_RCPT] = {501, "5.1.3", "Bad recipient address syntax: %s"},
    [MX_R_BAD_PARAM] = {555, "5.5.4", "Unsupported parameter: %s"},
    [MX_R_NOT_IMPL] = {502, "5.5.1", "Error: command not implemented"},
    [MX_R_NEED_HELO] = {503, "5.5.1", "Error: send HELO/EHLO first"},
    [MX_R_NESTED_MAIL] = {503, "5.5.1", "Error: nested MAIL command"},
    [MX_R_NEED_MAIL] = {503, "5.5.1", "Error: need MAIL command"},
    [MX_R_NEED_RCPT] = {503, "5.5.1", "Error: need RCPT command"},
    [MX_R_NO_VALID_RCPT] = {554, "5.5.1", "Error: no valid recipients"},
    [MX_R_BDAT_MIX] = {503, "5.5.1", "Error: DATA and BDAT cannot be mixed in one transaction"},
    [MX_R_BDAT_FAILED] = {503, "5.5.1", "Error: transaction already failed; send RSET"},
    [MX_R_TOO_MANY_RCPT] = {452, "4.5.3", "Error: too many recipients"},
    [MX_R_SIZE_DECLARED] = {552, "5.3.4", "Message size exceeds fixed limit"},
    [MX_R_SIZE_EXCEEDED] = {552, "5.3.4", "Message size exceeds fixed limit"},
    [MX_R_UTF8_NEEDED] = {553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"},
    [MX_R_BARE_NEWLINE] = {554, "5.6.0", "Message contains bare CR or LF (RFC 5321 2.3.8)"},
    [MX_R_NUL] = {554, "5.6.0", "Message contains NUL characters"},
    [MX_R_LONG_LINE] = {554, "5.6.0", "Message has a line longer than %s octets"},
    [MX_R_SPOOL_FULL] = {452, "4.3.1", "Insufficient system storage, try again later"},
    [MX_R_TOO_MANY_ERRORS] = {421, "4.7.0", "%s Error: too many errors"},
    [MX_R_TIMEOUT] = {421, "4.4.2", "%s Error: timeout exceeded"},
    [MX_R_SHUTDOWN] = {421, "4.3.2", "%s Service shutting down, try again later"},
    [MX_R_TOO_MANY_SESSIONS] = {421, "4.3.2", "%s Too many connections, try again later"},
    [MX_R_BACKEND_DOWN] = {451, "4.4.1", "Backend unavailable, try again later"},
    [MX_R_BACKEND_LOST] = {451, "4.4.2", "Lost connection to backend, try again later"},
    [MX_R_BACKEND_PROTO] = {451, "4.5.0", "Backend protocol error, try again later"},
    [MX_R_BACKEND_TIMEOUT] = {451, "4.4.2", "Backend timed out, try again later"},
    [MX_R_TLS_GO] = {220, "2.0.0", "Ready to start TLS"},
    [MX_R_TLS_ACTIVE] = {503, "5.5.1", "Error: TLS already active"},
    [MX_R_TXN_IN_PROGRESS] = {503, "5.5.1", "Error: MAIL transaction in progress"},
    [MX_R_MALWARE] = {554, "5.7.1", "Message rejected: virus found: %s"},
    [MX_R_SCAN_FAILED] = {451, "4.7.0", "Message could not be scanned for viruses, try again later"},
    [MX_R_SCANNER_BUSY] = {451, "4.3.2", "Virus scanner busy, try again later"},
    [MX_R_SCANNER_DOWN] = {451, "4.7.0", "Virus scanner unavailable, try again later"},
    [MX_R_REP_CONNECT] = {554, "5.7.1", "Service refused to your address by policy"},
    [MX_R_REP_MAIL] = {550, "5.7.1", "Sender refused by policy"},
    [MX_R_REP_TEMP] = {451, "4.7.1", "Sender temporarily deferred by policy, try again later"},
    [MX_R_RATE_CONNECT] = {421, "4.7.0", "Too many connections from your address, try again later"},
    [MX_R_RATE_TEMP] = {451, "4.7.0", "Rate limit exceeded, try again later"},
    [MX_R_RATE_REJECT] = {550, "5.7.0", "Rate limit exceeded"},
    [MX_R_STORE_DOWN_CONNECT] = {421, "4.3.0", "Policy store unavailable, try again later"},
    [MX_R_CONCURRENCY] = {421, "4.7.0", "Too many concurrent connections from your address, try again later"},
    [MX_R_STORE_DOWN] = {451, "4.3.0", "Policy store unavailable, try again later"},
    [MX_R_RELAY_DENIED] = {550, "5.7.1", "Relay access denied: %s is not a local domain"},
};

int mx_replies_code(mx_reply_id id) { return table[id].code; }

void mx_replies_format(GString *out, mx_reply_id id, const char *arg, const char *trace)
{
    const reply *r = &table[id];
    g_string_append_printf(out, "%d ", r->code);
    if (r->esc)
        g_string_append_printf(out, "%s ", r->esc);
    const char *pct = strstr(r->text, "%s");
    if (pct) {
        g_string_append_len(out, r->text, pct - r->text);
        /* Never let an argument (a client's word echoed back) break the
         * line: keep printable ASCII only. */
        for (const char *a = arg ? arg : ""; *a; a++)
            g_string_append_c(out, (*a >= ' ' && *a < 0x7f) ? *a : '?');
        g_string_append(out, pct + 2);
    } else {
        g_string_append(out, r->text);
    }
    if (trace && r->code >= 400)
        g_string_append_printf(out, " [id %s]", trace);
    g_string_append(out, "\r\n");
}

void mx_replies_relay(GString *out, const mx_reply *r)
{
    int cls = r->code / 100;
    for (int i = 0; i < r->nlines; i++) {
        const char *t = mx_reply_line(r, i);
        g_string_append_printf(out, "%d%c", r->code, i + 1 < r->nlines ? '-' : ' ');
        if (!mx_reply_enhanced(r, i, NULL) && r->code != 220 && r->code != 354)
            g_string_append_printf(out, "%d.0.0 ", cls);
        g_string_append(out, t);
        g_string_append(out, "\r\n");
    }
}
