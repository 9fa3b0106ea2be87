/*
 * relay_dialog.c: what a relay says to the backend and what its replies
 * mean: the greeting, EHLO and its extensions, STARTTLS, XCLIENT or
 * XFORWARD, then MAIL/RCPT/RSET/DATA one at a time (see relay.c for why
 * not pipelined). Parameters the backend did not advertise are dropped.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "relay_int.h"
#include "tls.h"

static int G_GNUC_PRINTF(2, 3) log_reply_error(mx_relay *r, const char *fmt, ...);

/* xtext (RFC 3461 4): what XCLIENT and XFORWARD values must be. */
static void append_xtext(GString *g, const char *v, size_t max)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p && n < max; p++, n++) {
        if (*p < '!' || *p > '~' || *p == '+' || *p == '=')
            g_string_append_printf(g, "+%02X", *p);
        else
            g_string_append_c(g, (char)*p);
    }
}

static int attr_ok(const char *attrs, const char *name)
{
    if (!attrs)
        return 0;
    g_auto(GStrv) words = g_strsplit_set(attrs, " ", -1);
    for (char **w = words; *w; w++)
        if (g_ascii_strcasecmp(*w, name) == 0)
            return 1;
    return 0;
}

static void add_attr(GString *g, const char *attrs, const char *name, const char *val)
{
    if (!attr_ok(attrs, name) || !val)
        return;
    g_string_append_printf(g, " %s=", name);
    append_xtext(g, val, 255);
}

static const char *addr_for_xattr(const mx_relay *r, char *buf, size_t n)
{
    /* Postfix wants IPv6 addresses tagged. */
    if (r->peer.ss_family == AF_INET6)
        snprintf(buf, n, "IPV6:%s", r->caddr);
    else
        snprintf(buf, n, "%s", r->caddr);
    return buf;
}

void mx_relay_dialog_send_xclient(mx_relay *r)
{
    GString *g = g_string_new("XCLIENT");
    char abuf[80], pbuf[16];
    snprintf(pbuf, sizeof(pbuf), "%d", r->cport);
    add_attr(g, r->xclient_attrs, "NAME", r->cname ? r->cname : "[UNAVAILABLE]");
    add_attr(g, r->xclient_attrs, "ADDR", addr_for_xattr(r, abuf, sizeof(abuf)));
    add_attr(g, r->xclient_attrs, "PORT", pbuf);
    add_attr(g, r->xclient_attrs, "HELO", r->chelo);
    add_attr(g, r->xclient_attrs, "PROTO", r->cproto);
    r->st = ST_XCLIENT;
    mx_relay_send_line(r, "%s", g->str);
    g_string_free(g, TRUE);
}

/* Returns 1 when a command went out (wait for its reply), 0 when the
 * backend advertised nothing for this part. */
static int send_xforward(mx_relay *r, int part)
{
    GString *g = g_string_new("XFORWARD");
    char abuf[80], pbuf[16];
    snprintf(pbuf, sizeof(pbuf), "%d", r->cport);
    if (part == 1) {
        add_attr(g, r->xforward_attrs, "NAME", r->cname ? r->cname : "[UNAVAILABLE]");
        add_attr(g, r->xforward_attrs, "ADDR", addr_for_xattr(r, abuf, sizeof(abuf)));
        add_attr(g, r->xforward_attrs, "PORT", pbuf);
        add_attr(g, r->xforward_attrs, "PROTO", r->cproto);
        add_attr(g, r->xforward_attrs, "HELO", r->chelo);
        r->st = ST_XFORWARD1;
    } else {
        add_attr(g, r->xforward_attrs, "IDENT", r->sid);
        add_attr(g, r->xforward_attrs, "SOURCE", "REMOTE");
        r->st = ST_XFORWARD2;
    }
    if (g->len == strlen("XFORWARD")) {
        g_string_free(g, TRUE);
        return 0;
    }
    mx_relay_set_timer(r, r->cfg->command_timeout);
    mx_relay_send_line(r, "%s", g->str);
    g_string_free(g, TRUE);
    return 1;
}

/* Drop MAIL/RCPT parameters whose extension the backend did not advertise
 * (RFC 5321 4.1.1.11: sending them would be a protocol error). */
static void filter_params(mx_relay *r, GString *out, const char *line)
{
    const char *gt = strrchr(line, '>');
    if (!gt) {
        g_string_append(out, line);
        return;
    }
    g_string_append_len(out, line, gt + 1 - line);
    g_auto(GStrv) words = g_strsplit(gt + 1, " ", -1);
    for (char **w = words; *w; w++) {
        if (!**w)
            continue;
        size_t klen = strcspn(*w, "=");
        const char *ext = "DSN"; /* RET ENVID NOTIFY ORCPT */
        if (klen == 4 && g_ascii_strncasecmp(*w, "SIZE", 4) == 0)
            ext = "SIZE";
        else if (klen == 4 && g_ascii_strncasecmp(*w, "BODY", 4) == 0)
            ext = "8BITMIME";
        else if (klen == 8 && g_ascii_strncasecmp(*w, "SMTPUTF8", 8) == 0)
            ext = "SMTPUTF8";
        if (!mx_relay_has_ext(r, ext))
            continue;
        g_string_append_c(out, ' ');
        g_string_append(out, *w);
    }
}

static void send_command(mx_relay *r, state st)
{
    GString *g = g_string_sized_new(256);
    filter_params(r, g, r->line);
    r->st = st;
    mx_relay_set_timer(r, r->cfg->command_timeout);
    mx_relay_send_line(r, "%s", g->str);
    g_string_free(g, TRUE);
}

void mx_relay_dialog_send_op(mx_relay *r)
{
    switch (r->op) {
    case OP_MAIL:
        /* XFORWARD attributes last one transaction: send before each MAIL. */
        if (r->cfg->forward == MX_FORWARD_XFORWARD && r->st == ST_READY &&
            (send_xforward(r, 1) || send_xforward(r, 2)))
            return;
        send_command(r, ST_MAIL);
        break;
    case OP_RCPT:
        send_command(r, ST_RCPT);
        break;
    case OP_RSET:
        r->st = ST_RSET;
        mx_relay_set_timer(r, r->cfg->command_timeout);
        mx_relay_send_line(r, "RSET");
        break;
    case OP_DATA:
        r->st = ST_DATA;
        mx_relay_set_timer(r, r->cfg->command_timeout);
        mx_relay_send_line(r, "DATA");
        break;
    case OP_NONE:
        break;
    }
}

static void capture_ehlo(mx_relay *r, const mx_reply *rep)
{
    mx_span p;
    g_free(r->ehlo);
    r->ehlo = g_memdup2(rep, sizeof(*rep));
    r->caps = 0;
    g_clear_pointer(&r->xclient_attrs, g_free);
    g_clear_pointer(&r->xforward_attrs, g_free);
    if (mx_reply_has_ext(rep, "XCLIENT", &p)) {
        r->caps |= CAP_XCLIENT;
        r->xclient_attrs = g_strndup(p.p, p.len);
    }
    if (mx_reply_has_ext(rep, "XFORWARD", &p)) {
        r->caps |= CAP_XFORWARD;
        r->xforward_attrs = g_strndup(p.p, p.len);
    }
}

/* The handshake is done: forward the client identity if configured, else
 * the pending operation. */
static int after_ehlo(mx_relay *r)
{
    if (r->cfg->tls_client && !r->ssl && !r->tls_refused && r->st == ST_EHLO) {
        if (mx_relay_has_ext(r, "STARTTLS")) {
            r->st = ST_STARTTLS;
            mx_relay_set_timer(r, r->cfg->command_timeout);
            mx_relay_send_line(r, "STARTTLS");
            return 0;
        }
        if (r->cfg->backend_starttls == MX_BACKEND_TLS_REQUIRED) {
            mx_relay_fail(r, MX_RELAY_DOWN, "backend does not offer STARTTLS (backend.starttls = required)");
            return 1;
        }
    }
    if (r->cfg->forward == MX_FORWARD_XCLIENT && r->st == ST_EHLO) {
        if (!(r->caps & CAP_XCLIENT)) {
            /* Fail closed: without XCLIENT the backend would judge relay
             * permission by our address, which it likely trusts. */
            mx_relay_fail(r, MX_RELAY_DOWN, "backend does not offer XCLIENT");
            return 1;
        }
        mx_relay_set_timer(r, r->cfg->command_timeout);
        mx_relay_dialog_send_xclient(r);
        return 0;
    }
    if (r->cfg->forward == MX_FORWARD_XFORWARD && !(r->caps & CAP_XFORWARD)) {
        mx_relay_fail(r, MX_RELAY_DOWN, "backend does not offer XFORWARD");
        return 1;
    }
    r->st = ST_READY;
    mx_relay_dialog_send_op(r);
    return 0;
}

static void tls_start(mx_relay *r)
{
    r->st = ST_TLS;
    mx_buf_reset(&r->in); /* nothing sent before the handshake counts */
    r->ssl = SSL_new(mx_tls_ctx(r->cfg->tls_client));
    SSL_set_fd(r->ssl, r->fd);
    SSL_set_connect_state(r->ssl);
    if (r->cfg->backend_tls_verify) {
        /* The backend is named by address: its certificate must carry that
         * IP (subjectAltName) and chain to backend.tls_ca. */
        char host[INET6_ADDRSTRLEN] = "";
        const struct sockaddr_storage *sa = &r->cfg->backends[r->server].sa;
        if (sa->ss_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
        else
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host,
                      sizeof(host));
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(r->ssl), host);
    }
    mx_relay_set_timer(r, r->cfg->command_timeout);
    mx_relay_dialog_tls_step(r);
}

void mx_relay_dialog_tls_step(mx_relay *r)
{
    ERR_clear_error();
    int k = SSL_do_handshake(r->ssl);
    if (k != 1) {
        int e = SSL_get_error(r->ssl, k);
        if (e == SSL_ERROR_WANT_READ) {
            ev_io_stop(r->loop, &r->wio);
            ev_io_start(r->loop, &r->rio);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            ev_io_start(r->loop, &r->wio);
            return;
        }
        unsigned long err = ERR_get_error();
        char buf[200] = "handshake failed";
        if (err)
            ERR_error_string_n(err, buf, sizeof(buf));
        long v = SSL_get_verify_result(r->ssl);
        if (v != X509_V_OK)
            g_strlcpy(buf, X509_verify_cert_error_string(v), sizeof(buf));
        /* A failed handshake is a backend failure whatever the mode: the
         * session is unusable in plaintext after STARTTLS was accepted. */
        mx_relay_fail(r, MX_RELAY_DOWN, "TLS: %s", buf);
        return;
    }
    ev_io_stop(r->loop, &r->wio);
    ev_io_start(r->loop, &r->rio);
    /* RFC 3207 4.2: EHLO again inside TLS; the reply path then continues
     * with XCLIENT and the pending operation. */
    r->st = ST_EHLO;
    mx_relay_set_timer(r, r->cfg->command_timeout);
    mx_relay_send_line(r, "EHLO %s", r->cfg->helo_name);
}

/* Returns 1 when the operation ended (we may be freed or closed). */
int mx_relay_dialog_on_reply(mx_relay *r, const mx_reply *rep)
{
    int cls = rep->code / 100;

    switch (r->st) {
    case ST_GREETING:
        if (rep->code != 220) {
            mx_relay_fail(r, MX_RELAY_DOWN, "greeting %d %s", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        r->st = ST_EHLO;
        mx_relay_set_timer(r, r->cfg->command_timeout);
        mx_relay_send_line(r, "EHLO %s", r->cfg->helo_name);
        return 0;
    case ST_EHLO:
    case ST_EHLO2:
        if (cls != 2) {
            mx_relay_fail(r, MX_RELAY_DOWN, "EHLO answered %d %s", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        capture_ehlo(r, rep);
        return after_ehlo(r);
    case ST_STARTTLS:
        if (rep->code != 220) {
            if (r->cfg->backend_starttls == MX_BACKEND_TLS_REQUIRED) {
                mx_relay_fail(r, MX_RELAY_DOWN, "STARTTLS answered %d %s", rep->code,
                     mx_reply_line(rep, 0));
                return 1;
            }
            /* opportunistic: carry on in plaintext, as if not offered */
            r->st = ST_EHLO;
            r->tls_refused = 1;
            return after_ehlo(r);
        }
        tls_start(r);
        return 1; /* nothing more to parse in plaintext */
    case ST_XCLIENT:
        if (cls != 2) {
            mx_relay_fail(r, MX_RELAY_DOWN, "XCLIENT answered %d %s (is mxgate in "
                 "smtpd_authorized_xclient_hosts?)", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        /* Postfix answers XCLIENT with a new greeting; EHLO again either
         * way, since the session was reset. */
        r->st = ST_EHLO2;
        mx_relay_set_timer(r, r->cfg->command_timeout);
        mx_relay_send_line(r, "EHLO %s", r->cfg->helo_name);
        return 0;
    case ST_XFORWARD1:
    case ST_XFORWARD2:
        if (cls != 2) {
            mx_relay_fail(r, MX_RELAY_DOWN, "XFORWARD answered %d %s", rep->code, mx_reply_line(rep, 0));
            return 1;
        }
        if (r->st == ST_XFORWARD1 && send_xforward(r, 2))
            return 0;
        send_command(r, ST_MAIL);
        return 0;
    case ST_MAIL:
    case ST_RCPT:
    case ST_RSET:
    case ST_DOT:
        if (r->st == ST_DOT && cls == 3) {
            return log_reply_error(r, "%d after end of data", rep->code);
        }
        r->st = ST_READY;
        mx_relay_finish(r, MX_RELAY_REPLY, rep);
        return 1;
    case ST_DATA:
        if (rep->code == 354) {
            r->st = ST_BODY;
            mx_relay_set_timer(r, r->cfg->backend_data_timeout);
            mx_data_enc_init(&r->enc);
            mx_relay_flush(r); /* starts the stream */
            return 0;
        }
        if (cls == 4 || cls == 5) {
            r->st = ST_READY;
            mx_relay_finish(r, MX_RELAY_REPLY, rep);
            return 1;
        }
        return log_reply_error(r, "%d to DATA", rep->code);
    case ST_BODY:
        /* An early reply while we stream: the backend gave up on the
         * message. Pass a 4xx/5xx on; the connection state is unclear, so
         * drop it after reporting. */
        if (cls == 4 || cls == 5) {
            mx_reply copy = *rep;
            mx_relay_close_conn(r);
            mx_relay_finish(r, MX_RELAY_REPLY, &copy);
            return 1;
        }
        return log_reply_error(r, "%d during message body", rep->code);
    case ST_READY:
        /* Unsolicited, e.g. "421 timeout" from an idle backend. */
        mx_log_msg(MX_LOG_INFO, "backend_closed", "sid=%s backend said %d while idle", r->sid,
                   rep->code);
        mx_relay_close_conn(r);
        if (r->parked)
            mx_relay_free(r);
        return 1;
    default:
        return log_reply_error(r, "unexpected reply %d", rep->code);
    }
}

static int log_reply_error(mx_relay *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char what[160];
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    mx_relay_fail(r, MX_RELAY_PROTO, "out-of-protocol reply: %s", what);
    return 1;
}
