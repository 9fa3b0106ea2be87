/*
 * smtp_server.c: the SMTP server side of a session (RFC 5321, 1870, 2920,
 * 3030, 3207, 3461, 6152, 6531) and its relay to the backend.
 *
 * Owns: command handling, the transaction (s->txn), the message spool, the
 * Received header, and mirroring MAIL/RCPT/DATA to the session's relay.
 * While the backend works on a command the session is in MX_PHASE_BACKEND
 * and parsing pauses, so replies leave in order; the client gets the
 * backend's reply, so our 250 is always the backend's.
 * Not here: buffers and the read/write loop (session.c), the PROXY header
 * and TLS handshakes (conn.c).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "account.h"
#include "log.h"
#include "session_int.h"
#include "tls.h"

static void relay_done(void *owner, mx_relay_status st, const mx_reply *r);
static void after_data_policy(mx_session *s, const mx_pol_result *r);

static void relay_client(mx_session *s)
{
    mx_relay_client cl = {
        .peer = s->peer,
        .local = s->local,
        .addr = s->addr,
        .port = s->port,
        .name = NULL,
        .helo = s->helo,
        .proto = s->esmtp ? "ESMTP" : "SMTP",
        .sid = s->sid,
    };
    if (!s->relay)
        s->relay = mx_relay_acquire(&s->w->pool, s->cfg, s->sid, relay_done, s);
    mx_relay_set_client(s->relay, &cl);
    mx_relay_set_trace(s->relay, s->acct ? mx_acct_id(s) : NULL);
}

static void wait_backend(mx_session *s, mx_cmd_verb v)
{
    s->pending = v;
    s->phase = MX_PHASE_BACKEND;
    mx_session_set_timer(s, 0); /* the relay times the backend */
    /* No flush here: a failed write would close the session under the
     * caller's feet. mx_session_process() and relay_done() flush on their way out, so
     * earlier pipelined replies still leave before we wait. */
}

static mx_reply_id failure_reply(mx_relay_status st)
{
    switch (st) {
    case MX_RELAY_DOWN: return MX_R_BACKEND_DOWN;
    case MX_RELAY_TIMEOUT: return MX_R_BACKEND_TIMEOUT;
    case MX_RELAY_PROTO: return MX_R_BACKEND_PROTO;
    default: return MX_R_BACKEND_LOST;
    }
}

/* Reset the backend's transaction too, then give reply id (MX_R__COUNT:
 * the reply was already queued). */
static void rset_then_reply(mx_session *s, mx_reply_id id, const char *arg)
{
    /* arg may live in the transaction (a signature name): copy it first */
    g_strlcpy(s->after_rset_arg, arg ? arg : "", sizeof(s->after_rset_arg));
    arg = s->after_rset_arg[0] ? s->after_rset_arg : NULL;
    mx_session_txn_reset(s);
    if (s->relay && mx_relay_connected(s->relay)) {
        s->after_rset = id;
        g_strlcpy(s->after_rset_id, mx_acct_id(s), sizeof(s->after_rset_id));
        wait_backend(s, MX_CMD_RSET);
        mx_relay_rset(s->relay);
        return;
    }
    if (id != MX_R__COUNT)
        mx_session_reply(s, id, arg);
}

/* The backend refused MAIL (mail = 1) or the last RCPT, or failed: note
 * it in the transaction's record. */
static void backend_refused(mx_session *s, mx_relay_status st, const mx_reply *r,
                            mx_reply_id fail_id, int mail)
{
    GString *t = g_string_new(NULL);
    if (st == MX_RELAY_REPLY)
        mx_replies_relay(t, r);
    else
        mx_replies_format(t, fail_id, NULL, mx_acct_id(s));
    mx_outcome o = st == MX_RELAY_REPLY && r->code / 100 == 5 ? MX_OUT_REJECTED_BACKEND
                                                               : MX_OUT_TEMPFAILED;
    const char *why = st == MX_RELAY_REPLY ? "the backend's reply" : mx_relay_error(s->relay);
    if (mail)
        mx_acct_mail_refused(s, o, t->str, why);
    else
        mx_acct_rcpt_refused(s, o, t->str);
    g_string_free(t, TRUE);
}

static void relay_done(void *owner, mx_relay_status st, const mx_reply *r)
{
    mx_session *s = mx_session_ref(owner);
    g_assert(s->phase == MX_PHASE_BACKEND);
    mx_cmd_verb v = s->pending;
    s->pending = MX_CMD_UNKNOWN;
    int ok = st == MX_RELAY_REPLY && r->code / 100 == 2;
    mx_reply_id fail_id = failure_reply(st);

    mx_session_to_cmd_phase(s);

    switch (v) {
    case MX_CMD_MAIL:
        if (st == MX_RELAY_REPLY)
            mx_session_reply_relayed(s, r);
        else
            mx_session_reply(s, fail_id, NULL);
        if (ok) {
            s->txn.active = 1;
        } else {
            if (st != MX_RELAY_REPLY)
                mx_session_log_reject(s, "mail", NULL, 0, fail_id, mx_relay_error(s->relay));
            backend_refused(s, st, r, fail_id, 1);
            mx_session_txn_reset(s);
        }
        break;
    case MX_CMD_RCPT:
        if (st == MX_RELAY_REPLY) {
            mx_session_reply_relayed(s, r);
            if (ok) {
                s->txn.nrcpt++;
                GString *t = g_string_new(NULL);
                mx_replies_relay(t, r);
                mx_acct_rcpt_accepted(s, t->str);
                g_string_free(t, TRUE);
            } else {
                g_clear_pointer(&s->txn.first_rcpt, g_free);
                backend_refused(s, st, r, fail_id, 0);
            }
            if (r->code / 100 == 5)
                mx_policy_feedback(s, MX_FB_UNKNOWN_RCPT);
        } else {
            mx_session_reply(s, fail_id, NULL);
            mx_session_log_reject(s, "rcpt", NULL, 0, fail_id, mx_relay_error(s->relay));
            backend_refused(s, st, r, fail_id, 0);
            mx_session_txn_reset(s); /* the backend transaction is gone with the connection */
        }
        break;
    case MX_CMD_RSET:
        /* Whatever the backend said, the client's RSET succeeded: a
         * backend that cannot reset is dropped and reconnected later. */
        if (!ok && s->relay) {
            mx_relay_free(s->relay);
            s->relay = NULL;
        }
        if (s->after_rset != MX_R__COUNT)
            mx_replies_format(s->out, s->after_rset, s->after_rset_arg[0] ? s->after_rset_arg : NULL,
                              s->after_rset_id);
        break;
    case MX_CMD_DATA:
    case MX_CMD_BDAT: {
        GString *t = g_string_new(NULL);
        const char *outcome;
        if (st == MX_RELAY_REPLY) {
            mx_replies_relay(t, r);
            outcome = ok ? "accepted" : r->code / 100 == 4 ? "tempfail" : "rejected";
        } else {
            mx_replies_format(t, fail_id, NULL, mx_acct_id(s));
            outcome = "tempfail";
        }
        g_string_append_len(s->out, t->str, t->len);
        if (ok) {
            s->nmsgs++;
            mx_policy_feedback(s, MX_FB_DELIVERED);
        }
        mx_session_log_message(s, outcome, t->str);
        if (st == MX_RELAY_REPLY)
            mx_acct_backend_reply(s, t->str);
        mx_acct_end(s,
                    ok                                              ? MX_OUT_DELIVERED
                    : st == MX_RELAY_REPLY && r->code / 100 == 5 ? MX_OUT_REJECTED_BACKEND
                                                                    : MX_OUT_TEMPFAILED,
                    t->str, ok ? NULL : st == MX_RELAY_REPLY ? "the backend's reply"
                                                            : mx_relay_error(s->relay));
        g_string_free(t, TRUE);
        /* A 4xx/5xx to DATA leaves the backend in a transaction. */
        if (st == MX_RELAY_REPLY && !ok)
            rset_then_reply(s, MX_R__COUNT, NULL);
        else
            mx_session_txn_reset(s);
        break;
    }
    default:
        g_assert_not_reached();
    }
    if (s->phase == MX_PHASE_BACKEND) {
        mx_session_flush(s);
    } else if (s->phase != MX_PHASE_CLOSED) {
        mx_session_process(s);
    }
    mx_session_unref(s);
}

/* Rebuild MAIL/RCPT for the backend in canonical spelling (no space after
 * the colon, source route dropped); the relay drops parameters whose
 * extension the backend did not advertise. */
static char *backend_line(const char *verb, const mx_cmd *c)
{
    GString *g = g_string_new(verb);
    g_string_append_c(g, '<');
    g_string_append_len(g, c->path.p, c->path.len);
    g_string_append_c(g, '>');
    for (size_t i = 0; i < c->nparams; i++) {
        g_string_append_c(g, ' ');
        g_string_append_len(g, c->params[i].key.p, c->params[i].key.len);
        if (c->params[i].value.len) {
            g_string_append_c(g, '=');
            g_string_append_len(g, c->params[i].value.p, c->params[i].value.len);
        }
    }
    return g_string_free(g, FALSE);
}

static void cmd_ehlo(mx_session *s, const mx_cmd *c, int esmtp)
{
    mx_acct_close(s);
    if (s->txn.active) {
        /* RFC 5321 4.1.4: EHLO resets the transaction. Dropping the
         * backend connection is the simplest complete reset. */
        mx_session_txn_reset(s);
        if (s->relay) {
            mx_relay_free(s->relay);
            s->relay = NULL;
        }
    }
    g_free(s->helo);
    s->helo = g_strndup(c->arg.p, c->arg.len);
    s->esmtp = esmtp;
    if (!esmtp) {
        mx_session_reply(s, MX_R_HELO, s->cfg->hostname);
        return;
    }
    g_string_append_printf(s->out, "250-%s\r\n", s->cfg->hostname);
    if (s->cfg->tls_server && s->cfg->starttls && !s->ssl)
        g_string_append(s->out, "250-STARTTLS\r\n");
    g_string_append_printf(s->out,
                           "250-PIPELINING\r\n"
                           "250-SIZE %llu\r\n"
                           "250-8BITMIME\r\n"
                           "250-SMTPUTF8\r\n"
                           "250-ENHANCEDSTATUSCODES\r\n"
                           "250-CHUNKING\r\n"
                           "250 DSN\r\n",
                           (unsigned long long)s->cfg->max_message_size);
}

/* A policy check runs on the store pool: wait as for the backend. */
static void wait_policy(mx_session *s)
{
    s->phase = MX_PHASE_BACKEND;
    s->pending = MX_CMD_UNKNOWN;
    mx_session_set_timer(s, 0);
}

static void policy_refused(mx_session *s, const char *what, const mx_pol_result *r)
{
    g_autofree char *t = mx_session_reply_text(s, r->reply, r->arg[0] ? r->arg : NULL);
    g_string_append(s->out, t);
    mx_session_log_reject(s, what, NULL, 0, r->reply, r->why);
    if (r->ratelimited)
        mx_policy_feedback(s, MX_FB_RATELIMIT);
    if (strcmp(what, "mail") == 0) {
        mx_acct_mail_refused(s, r->outcome, t, r->why);
    } else {
        mx_acct_rcpt_refused(s, r->outcome, t);
        mx_acct_why(s, r->why);
    }
}

static void after_mail_policy(mx_session *s, const mx_pol_result *r)
{
    if (r->refuse) {
        policy_refused(s, "mail", r);
        mx_session_txn_reset(s);
        return;
    }
    relay_client(s);
    char *bl = g_steal_pointer(&s->pol_line);
    wait_backend(s, MX_CMD_MAIL);
    mx_relay_mail(s->relay, bl);
    g_free(bl);
}

/* Refuse the RCPT being handled with reply id, for the log and the record. */
static void refuse_rcpt(mx_session *s, mx_reply_id id, const char *arg, const char *line,
                        size_t len, const char *why)
{
    g_autofree char *t = mx_session_reply_text(s, id, arg);
    g_string_append(s->out, t);
    mx_session_log_reject(s, "rcpt", line, len, id, why);
    mx_acct_rcpt_refused(s, mx_acct_outcome_of(id), t);
    if (why)
        mx_acct_why(s, why);
}

static void after_rcpt_policy(mx_session *s, const mx_pol_result *r)
{
    if (r->refuse) {
        policy_refused(s, "rcpt", r);
        g_clear_pointer(&s->pol_line, g_free);
        if (s->txn.nrcpt == 0)
            g_clear_pointer(&s->txn.first_rcpt, g_free);
        return;
    }
    if (!s->relay || !mx_relay_connected(s->relay)) {
        refuse_rcpt(s, MX_R_BACKEND_LOST, NULL, NULL, 0, "backend connection lost");
        mx_session_txn_reset(s);
        g_clear_pointer(&s->pol_line, g_free);
        return;
    }
    char *bl = g_steal_pointer(&s->pol_line);
    s->txn.rcpt_tried++;
    wait_backend(s, MX_CMD_RCPT);
    mx_relay_rcpt(s->relay, bl);
    g_free(bl);
}

static void refuse_mail(mx_session *s, mx_reply_id id, const char *line, size_t len,
                        const char *why)
{
    g_autofree char *t = mx_session_reply_text(s, id, NULL);
    g_string_append(s->out, t);
    mx_session_log_reject(s, "mail", line, len, id, why);
    mx_acct_mail_refused(s, mx_acct_outcome_of(id), t, why);
}

static void cmd_mail(mx_session *s, const mx_cmd *c, const char *line, size_t len)
{
    if (!s->helo) {
        mx_session_bad_command(s, MX_R_NEED_HELO, NULL, line, len);
        return;
    }
    if (s->txn.active) {
        mx_session_bad_command(s, MX_R_NESTED_MAIL, NULL, line, len);
        return;
    }
    g_autofree char *from = g_strndup(c->path.p, c->path.len);
    mx_acct_open(s, from);
    if (c->size > s->cfg->max_message_size) {
        refuse_mail(s, MX_R_SIZE_DECLARED, line, len, "declared SIZE over the limit");
        return;
    }
    if (c->path_utf8 && !c->smtputf8) {
        refuse_mail(s, MX_R_UTF8_NEEDED, line, len, "non-ASCII sender without SMTPUTF8");
        return;
    }
    mx_session_txn_reset(s);
    s->txn.from = g_strndup(c->path.p, c->path.len);
    s->txn.smtputf8 = c->smtputf8;
    s->txn.started = g_get_monotonic_time();
    g_free(s->pol_line);
    s->pol_line = backend_line("MAIL FROM:", c);
    mx_policy_check(s, MX_POL_MAIL, NULL, 0, after_mail_policy);
    if (s->policy_wait)
        wait_policy(s);
}

static void cmd_rcpt(mx_session *s, const mx_cmd *c, const char *line, size_t len)
{
    if (!s->txn.active) {
        /* after a refused MAIL: the recipient shares its fate */
        mx_acct_rcpt(s, c->path.p, c->path.len);
        mx_session_bad_command(s, MX_R_NEED_MAIL, NULL, line, len);
        return;
    }
    if (s->txn.bdat) {
        mx_session_bad_command(s, MX_R_BDAT_MIX, NULL, line, len);
        return;
    }
    mx_acct_rcpt(s, c->path.p, c->path.len);
    /* Relaying: a client outside networks.internal may only send to the
     * local domains, whatever the backend would say. */
    const char *at = memrchr(c->path.p, '@', c->path.len);
    g_autofree char *domain =
        at ? g_strndup(at + 1, c->path.len - (size_t)(at + 1 - c->path.p)) : NULL;
    if (!mx_acct_internal(s) && !mx_config_domain_is_local(s->cfg, domain)) {
        refuse_rcpt(s, MX_R_RELAY_DENIED, domain, line, len,
                    "relay denied: client not in networks.internal, domain not in "
                    "domains.local");
        return;
    }
    if (s->txn.nrcpt >= s->cfg->max_recipients) {
        refuse_rcpt(s, MX_R_TOO_MANY_RCPT, NULL, line, len, "smtp.max_recipients reached");
        return;
    }
    if (c->path_utf8 && !s->txn.smtputf8) {
        refuse_rcpt(s, MX_R_UTF8_NEEDED, NULL, line, len, "non-ASCII recipient without SMTPUTF8");
        return;
    }
    if (!s->relay || !mx_relay_connected(s->relay)) {
        refuse_rcpt(s, MX_R_BACKEND_LOST, NULL, NULL, 0, "backend connection lost");
        mx_session_txn_reset(s);
        return;
    }
    if (!s->txn.first_rcpt && s->txn.nrcpt == 0)
        s->txn.first_rcpt = g_strndup(c->path.p, c->path.len);
    g_free(s->pol_line);
    s->pol_line = backend_line("RCPT TO:", c);
    g_autofree char *rcpt = g_strndup(c->path.p, c->path.len);
    mx_policy_check(s, MX_POL_RCPT, rcpt, 0, after_rcpt_policy);
    if (s->policy_wait)
        wait_policy(s);
}

/* Checks shared by DATA and the first BDAT; returns a reply id or -1. */
static int data_precheck(mx_session *s)
{
    if (!s->txn.active)
        return MX_R_NEED_MAIL;
    /* RFC 5321 3.3: 503 when no RCPT came, 554 when all were refused. */
    if (s->txn.nrcpt == 0)
        return s->txn.rcpt_tried ? MX_R_NO_VALID_RCPT : MX_R_NEED_RCPT;
    if (!s->relay || !mx_relay_connected(s->relay))
        return MX_R_BACKEND_LOST;
    /* Refuse before the upload rather than after it. */
    if (s->w->srv->clam && !mx_clam_healthy(s->w->srv->clam) &&
        s->cfg->clamav_on_error != MX_SCAN_ON_ERROR_ACCEPT)
        return MX_R_SCANNER_DOWN;
    if (mx_scan_busy(s))
        return MX_R_SCANNER_BUSY;
    return -1;
}

static void start_body(mx_session *s, int bdat)
{
    s->raw_bytes = 0;
    mx_data_dec_init(&s->dec, bdat, s->cfg->bare_newline == MX_BARE_NORMALIZE,
                     (size_t)s->cfg->max_text_line_length);
    mx_spool_init(&s->spool, s->cfg->max_message_size, &s->w->srv->spool);
}

static void cmd_data(mx_session *s, const char *line, size_t len)
{
    if (s->txn.bdat) {
        mx_session_bad_command(s, MX_R_BDAT_MIX, NULL, line, len);
        return;
    }
    int id = data_precheck(s);
    if (id >= 0) {
        if (id == MX_R_BACKEND_LOST) {
            g_autofree char *t = mx_session_reply_text(s, (mx_reply_id)id, NULL);
            g_string_append(s->out, t);
            mx_acct_end(s, MX_OUT_TEMPFAILED, t, "backend connection lost");
            mx_session_txn_reset(s);
        } else if (id == MX_R_SCANNER_DOWN || id == MX_R_SCANNER_BUSY) {
            /* Not the client's fault: no bad-command count, and the
             * transaction stays, so DATA may be tried again. */
            g_autofree char *t = mx_session_reply_text(s, (mx_reply_id)id, NULL);
            g_string_append(s->out, t);
            const char *why = id == MX_R_SCANNER_BUSY ? "scanner_busy" : "scanner_failing";
            mx_session_log_reject(s, "data", line, len, (mx_reply_id)id, why);
            mx_acct_refusal(s, MX_OUT_TEMPFAILED, t, why);
        } else {
            mx_session_bad_command(s, (mx_reply_id)id, NULL, line, len);
        }
        return;
    }
    start_body(s, 0);
    mx_session_reply(s, MX_R_DATA_GO, NULL);
    s->phase = MX_PHASE_DATA;
    mx_session_set_timer(s, s->cfg->data_timeout);
}

static void cmd_bdat(mx_session *s, const mx_cmd *c)
{
    /* RFC 3030 3: the chunk is read whatever we answer, or we would take
     * message data for commands. */
    s->chunk_left = s->chunk_size = c->chunk_size;
    s->chunk_last = c->last;
    s->chunk_error = -1;
    if (s->txn.failed) {
        s->chunk_error = MX_R_BDAT_FAILED;
    } else if (!s->txn.bdat) { /* the first chunk of this transaction */
        int id = data_precheck(s);
        if (id >= 0) {
            s->chunk_error = id;
        } else {
            s->txn.bdat = 1;
            start_body(s, 1);
        }
    }
    s->phase = MX_PHASE_BDAT;
    mx_session_set_timer(s, s->cfg->data_timeout);
}

static void build_received(mx_session *s)
{
    GString *g = g_string_sized_new(256);
    g_string_append(g, "Received: from ");
    /* The HELO name is the client's word: keep what is safe in a header
     * comment, so it can neither fold nor close the comment. */
    for (const char *h = s->helo; *h && h - s->helo < 255; h++) {
        unsigned char ch = (unsigned char)*h;
        g_string_append_c(g, (ch > ' ' && ch < 0x7f && ch != '(' && ch != ')' && ch != '\\')
                                 ? (char)ch : '?');
    }
    g_string_append_printf(g, " (unknown [%s])\r\n", s->addr);
    if (s->ssl)
        g_string_append_printf(g, "\t(using %s with cipher %s)\r\n", mx_tls_version(s->ssl),
                               mx_tls_cipher(s->ssl));
    /* RFC 3848 / RFC 6531 protocol names */
    g_string_append_printf(g, "\tby %s (mxgate) with %s%s id %s", s->cfg->hostname,
                           s->txn.smtputf8 ? "UTF8SMTP" : s->esmtp ? "ESMTP" : "SMTP",
                           s->ssl && (s->esmtp || s->txn.smtputf8) ? "S" : "", s->sid);
    if (s->txn.nrcpt == 1 && s->txn.first_rcpt)
        g_string_append_printf(g, "\r\n\tfor <%s>", s->txn.first_rcpt);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
    g_string_append_printf(g, ";\r\n\t%s\r\n", date);
    s->received = g;
}

/* Refuse the message with reply id: log it, and abort the backend's
 * transaction (nothing was sent past RCPT, so nothing is delivered). */
static void refuse_message(mx_session *s, mx_reply_id id, const char *arg, const char *why)
{
    g_autofree char *t = mx_session_reply_text(s, id, arg);
    mx_session_log_message(s, mx_replies_code(id) / 100 == 4 ? "tempfail" : "rejected", t);
    rset_then_reply(s, id, arg); /* the reply keeps this transaction's id */
    mx_acct_end(s, mx_acct_outcome_of(id), t, why);
}

static void send_to_backend(mx_session *s)
{
    if (!s->relay || !mx_relay_connected(s->relay)) {
        g_autofree char *t = mx_session_reply_text(s, MX_R_BACKEND_LOST, NULL);
        mx_session_log_message(s, "tempfail", t);
        g_string_append(s->out, t);
        mx_acct_end(s, MX_OUT_TEMPFAILED, t, "backend connection lost");
        mx_session_txn_reset(s);
        return;
    }
    wait_backend(s, s->txn.bdat ? MX_CMD_BDAT : MX_CMD_DATA);
    mx_relay_data(s->relay, s->received->str, s->received->len, &s->spool);
}

/* The whole message is in: reject it locally, scan it, or send it on. */
void mx_smtp_message_complete(mx_session *s)
{
    mx_reply_id id = MX_R__COUNT;
    const char *arg = NULL;
    char num[24];

    if (s->spool.over_budget) {
        id = MX_R_SPOOL_FULL;
    } else if (s->spool.over_limit) {
        id = MX_R_SIZE_EXCEEDED;
    } else if (s->dec.flags & MX_DATA_NUL) {
        id = MX_R_NUL;
    } else if (s->dec.flags & (MX_DATA_BARE_LF | MX_DATA_BARE_CR) &&
               s->cfg->bare_newline == MX_BARE_REJECT) {
        id = MX_R_BARE_NEWLINE;
    } else if (s->dec.flags & MX_DATA_LONG_LINE) {
        id = MX_R_LONG_LINE;
        snprintf(num, sizeof(num), "%d", s->cfg->max_text_line_length);
        arg = num;
    }
    if (id != MX_R__COUNT) {
        refuse_message(s, id, arg,
                       id == MX_R_SPOOL_FULL      ? "node spool budget full"
                       : id == MX_R_SIZE_EXCEEDED ? "message over smtp.max_message_size"
                       : id == MX_R_NUL           ? "NUL in the message"
                       : id == MX_R_LONG_LINE     ? "line over smtp.max_text_line_length"
                                                  : "bare CR or LF in the message");
        return;
    }
    /* byte-count rate limits, now that the size is known */
    mx_policy_check(s, MX_POL_DATA, NULL, s->spool.size, after_data_policy);
    if (s->policy_wait)
        wait_policy(s);
}

static void after_data_policy(mx_session *s, const mx_pol_result *r)
{
    if (r->refuse) {
        const char *arg = r->arg[0] ? r->arg : NULL;
        g_autofree char *t = mx_session_reply_text(s, r->reply, arg);
        mx_session_log_message(s, mx_replies_code(r->reply) / 100 == 4 ? "tempfail" : "rejected",
                               t);
        mx_session_log_reject(s, "data", NULL, 0, r->reply, r->why);
        if (r->ratelimited)
            mx_policy_feedback(s, MX_FB_RATELIMIT);
        rset_then_reply(s, r->reply, arg);
        mx_acct_end(s, r->outcome, t, r->why);
        return;
    }
    build_received(s);
    if (!s->w->srv->scanner) {
        send_to_backend(s);
        return;
    }
    /* The scan sees exactly what the backend would get: our Received
     * header (which also tells libclamav this is mail) and the message. */
    if (mx_scan_start(s) != MX_OK) {
        refuse_message(s, MX_R_SCANNER_BUSY, NULL, "scan queue full");
        return;
    }
    wait_backend(s, s->txn.bdat ? MX_CMD_BDAT : MX_CMD_DATA);
}

/* Header values from the scanner or the config: printable ASCII only, so
 * nothing can fold or end the header. */
static void append_safe(GString *g, const char *v)
{
    for (; *v; v++)
        g_string_append_c(g, (*v >= ' ' && *v < 0x7f) ? *v : '?');
}

/* The scan job is back (scan.c): the message is the session's again. */
void mx_smtp_scan_done(mx_session *s)
{
    const mx_scan_result *r = &s->txn.scan;
    char why[sizeof(r->why) + 32];
    int tag_unscanned = 0;

    mx_session_to_cmd_phase(s);
    mx_acct_scan(s, r);
    switch (r->verdict) {
    case MX_SCAN_CLEAN:
        break;
    case MX_SCAN_INFECTED:
        mx_policy_feedback(s, MX_FB_MALWARE);
        snprintf(why, sizeof(why), "malware %s", r->name);
        refuse_message(s, MX_R_MALWARE, r->name, why);
        goto out;
    case MX_SCAN_ERROR:
    default:
        if (s->cfg->clamav_on_error == MX_SCAN_ON_ERROR_ACCEPT) {
            tag_unscanned = 1;
            break;
        }
        snprintf(why, sizeof(why), "scan failed: %s", r->why);
        refuse_message(s, MX_R_SCAN_FAILED, NULL, why);
        goto out;
    }
    if (tag_unscanned || s->cfg->clamav_add_header) {
        g_string_append(s->received, "X-Virus-Scanned: ");
        g_string_append(s->received, tag_unscanned ? "NOT SCANNED (scanner error), passed by "
                                                   : "clean by ");
        g_string_append(s->received, "mxgate (");
        append_safe(s->received, r->version);
        g_string_append(s->received, ") on ");
        g_string_append(s->received, s->cfg->hostname);
        g_string_append(s->received, "\r\n");
    }
    send_to_backend(s);
out:
    if (s->phase == MX_PHASE_BACKEND)
        mx_session_flush(s);
    else if (s->phase != MX_PHASE_CLOSED)
        mx_session_process(s);
}

void mx_smtp_bdat_chunk_done(mx_session *s)
{
    char num[24];
    mx_session_to_cmd_phase(s);
    if (s->chunk_error >= 0) {
        mx_reply_id id = (mx_reply_id)s->chunk_error;
        g_autofree char *t = mx_session_reply_text(s, id, NULL);
        g_string_append(s->out, t);
        mx_session_log_reject(s, "bdat", NULL, 0, id, NULL);
        if (id == MX_R_SCANNER_DOWN || id == MX_R_SCANNER_BUSY)
            mx_acct_refusal(s, MX_OUT_TEMPFAILED, t,
                            id == MX_R_SCANNER_BUSY ? "scanner_busy" : "scanner_failing");
        if (s->txn.bdat)
            s->txn.failed = 1;
        return;
    }
    if (s->spool.over_limit || s->spool.over_budget) {
        mx_reply_id id = s->spool.over_budget ? MX_R_SPOOL_FULL : MX_R_SIZE_EXCEEDED;
        g_autofree char *t = mx_session_reply_text(s, id, NULL);
        mx_session_log_message(s, id == MX_R_SPOOL_FULL ? "tempfail" : "rejected", t);
        /* RFC 3030: after a failed chunk the client must RSET; until it
         * does, further chunks are read and refused. */
        s->txn.failed = 1;
        g_string_append(s->out, t);
        mx_acct_refusal(s, mx_acct_outcome_of(id), t,
                        id == MX_R_SPOOL_FULL ? "node spool budget full"
                                              : "message over smtp.max_message_size");
        return;
    }
    if (!s->chunk_last) {
        snprintf(num, sizeof(num), "%llu", (unsigned long long)s->chunk_size);
        mx_session_reply(s, MX_R_BDAT_OK, num);
        return;
    }
    mx_data_dec_finish(&s->dec, mx_spool_emit, &s->spool);
    mx_smtp_message_complete(s);
}

static void cmd_rset(mx_session *s)
{
    mx_acct_close(s);
    if (s->txn.active && s->relay && mx_relay_connected(s->relay)) {
        rset_then_reply(s, MX_R_OK, NULL);
        return;
    }
    mx_session_txn_reset(s);
    mx_session_reply(s, MX_R_OK, NULL);
}

/* RFC 3207. */
static void cmd_starttls(mx_session *s, const char *line, size_t len)
{
    if (!s->cfg->tls_server || !s->cfg->starttls) {
        mx_session_bad_command(s, MX_R_NOT_IMPL, NULL, line, len);
        return;
    }
    if (s->ssl) {
        mx_session_bad_command(s, MX_R_TLS_ACTIVE, NULL, line, len);
        return;
    }
    if (s->txn.active) {
        mx_session_bad_command(s, MX_R_TXN_IN_PROGRESS, NULL, line, len);
        return;
    }
    mx_session_reply(s, MX_R_TLS_GO, NULL);
    /* CVE-2011-0411: anything pipelined after STARTTLS arrived in
     * plaintext, where a man in the middle could have put it. It is
     * dropped, never run inside the TLS session. */
    size_t injected = mx_buf_used(&s->in);
    if (injected > 0) {
        GString *l = mx_log_begin(MX_LOG_WARNING, "starttls_injection");
        mx_session_log_ids(l, s);
        mx_log_kv(l, "client", s->addr);
        mx_log_kvi(l, "discarded", (int64_t)injected);
        mx_log_kvn(l, "data", s->in.pos, MIN(injected, 100));
        mx_log_end(l);
    }
    mx_buf_reset(&s->in);
    s->phase = MX_PHASE_TLS;
    mx_session_set_timer(s, s->cfg->tls_handshake_timeout);
    ev_io_stop(s->w->loop, &s->rio);
    /* the handshake starts once the 220 is written (flush_out) */
}

void mx_smtp_handle_line(mx_session *s, const char *line, size_t len)
{
    mx_cmd c;
    const char *why = NULL;
    mx_cmd_status st = mx_cmd_parse(line, line + len, &c, &why);

    switch (st) {
    case MX_CMD_OK:
        break;
    case MX_CMD_E_UNKNOWN:
        mx_session_bad_command(s, MX_R_UNKNOWN, NULL, line, len);
        return;
    case MX_CMD_E_CHAR:
        mx_session_bad_command(s, MX_R_BAD_CHAR, NULL, line, len);
        return;
    case MX_CMD_E_SYNTAX:
        mx_session_bad_command(s, MX_R_SYNTAX, why, line, len);
        return;
    case MX_CMD_E_SENDER:
        mx_session_bad_command(s, MX_R_BAD_SENDER, why, line, len);
        return;
    case MX_CMD_E_RCPT:
        mx_session_bad_command(s, MX_R_BAD_RCPT, why, line, len);
        return;
    case MX_CMD_E_PARAM:
        mx_session_bad_command(s, MX_R_BAD_PARAM, why, line, len);
        return;
    }

    switch (c.verb) {
    case MX_CMD_EHLO: cmd_ehlo(s, &c, 1); break;
    case MX_CMD_HELO: cmd_ehlo(s, &c, 0); break;
    case MX_CMD_MAIL: cmd_mail(s, &c, line, len); break;
    case MX_CMD_RCPT: cmd_rcpt(s, &c, line, len); break;
    case MX_CMD_DATA: cmd_data(s, line, len); break;
    case MX_CMD_BDAT: cmd_bdat(s, &c); break;
    case MX_CMD_RSET: cmd_rset(s); break;
    case MX_CMD_NOOP: mx_session_reply(s, MX_R_OK, NULL); break;
    case MX_CMD_VRFY: mx_session_reply(s, MX_R_VRFY, NULL); break;
    case MX_CMD_HELP: mx_session_reply(s, MX_R_HELP, NULL); break;
    case MX_CMD_QUIT:
        mx_acct_close(s);
        mx_session_reply(s, MX_R_QUIT, NULL);
        mx_session_close_after_reply(s, "quit");
        break;
    case MX_CMD_NONSMTP:
        /* A web client or proxy probe: no point in a dialogue. */
        mx_session_reply(s, MX_R_NONSMTP, NULL);
        mx_session_log_reject(s, "command", line, len, MX_R_NONSMTP, "non-SMTP command");
        mx_session_close_after_reply(s, "non_smtp_command");
        break;
    case MX_CMD_STARTTLS:
        cmd_starttls(s, line, len);
        break;
    case MX_CMD_EXPN:
    case MX_CMD_AUTH:
    case MX_CMD_ETRN:
        mx_session_bad_command(s, MX_R_NOT_IMPL, NULL, line, len);
        break;
    default:
        mx_session_bad_command(s, MX_R_UNKNOWN, NULL, line, len);
        break;
    }
}
