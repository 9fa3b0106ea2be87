/*
 * session.c: one client SMTP session's lifecycle (see session.h).
 *
 * Owns: accepting the session, its buffers, the read/write loop that feeds
 * commands and message data to smtp_server.c, timeouts, the reply queue
 * and the log lines. Output is queued and flushed when the input is
 * exhausted or before waiting on the backend, so replies to pipelined
 * commands (RFC 2920) leave together and in order.
 *
 * Lifetime: a reference is held by the open connection and one by every
 * callback while it runs; mx_session_close() drops the first, and the last
 * release frees. Nothing frees a session from inside its own callback.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "account.h"
#include "log.h"
#include "session.h"
#include "session_int.h"
#include "tls.h"

static const char *const phase_action[] = {
    [MX_PHASE_PROXY] = "reading PROXY header",
    [MX_PHASE_TLS] = "in TLS handshake",
    [MX_PHASE_GREET] = "before greeting",
    [MX_PHASE_CMD] = "reading command",
    [MX_PHASE_DATA] = "receiving DATA",
    [MX_PHASE_BDAT] = "receiving BDAT chunk",
    [MX_PHASE_BACKEND] = "waiting for backend",
    [MX_PHASE_CLOSING] = "closing",
    [MX_PHASE_CLOSED] = "closed",
};


mx_session *mx_session_ref(mx_session *s)
{
    s->refs++;
    return s;
}

void mx_session_unref(mx_session *s)
{
    if (--s->refs > 0)
        return;
    g_free(s->pol_line);
    mx_config_unref(s->cfg);
    g_free(s);
}

void mx_session_txn_reset(mx_session *s)
{
    g_clear_pointer(&s->txn.from, g_free);
    g_clear_pointer(&s->txn.first_rcpt, g_free);
    memset(&s->txn, 0, sizeof(s->txn));
    mx_spool_free(&s->spool);
    if (s->received) {
        g_string_free(s->received, TRUE);
        s->received = NULL;
    }
}

void mx_session_set_timer(mx_session *s, double seconds)
{
    ev_timer_stop(s->w->loop, &s->timer);
    if (seconds > 0) {
        ev_timer_set(&s->timer, seconds, 0.);
        ev_timer_start(s->w->loop, &s->timer);
    }
}

/* Every reply goes through here (and reply_relayed, for the backend's).
 * A 4xx or 5xx carries the trace id. */
void mx_session_reply(mx_session *s, mx_reply_id id, const char *arg)
{
    mx_replies_format(s->out, id, arg, mx_acct_id(s));
}

void mx_session_log_ids(GString *l, const mx_session *s)
{
    mx_log_kv(l, "sid", s->sid);
    if (s->acct)
        mx_log_kv(l, "trace", mx_acct_id(s));
}

char *mx_session_reply_text(mx_session *s, mx_reply_id id, const char *arg)
{
    GString *t = g_string_new(NULL);
    mx_replies_format(t, id, arg, mx_acct_id(s));
    return g_string_free(t, FALSE);
}

/* Refuse the connection before any transaction: reply, log, keep the
 * decision record, close. */
static void refuse_connection(mx_session *s, mx_reply_id id, const char *arg, const char *why,
                              const char *reason)
{
    g_autofree char *t = mx_session_reply_text(s, id, arg);
    g_string_append(s->out, t);
    mx_session_log_reject(s, "connect", NULL, 0, id, why);
    mx_acct_connection_refused(s, t, why);
    mx_session_close_after_reply(s, reason);
}

void mx_session_reply_relayed(mx_session *s, const mx_reply *r)
{
    mx_replies_relay(s->out, r);
}

static void log_disconnect(mx_session *s)
{
    int level = s->health_check ? MX_LOG_DEBUG : MX_LOG_INFO;
    if (!mx_log_enabled(level))
        return;
    GString *l = mx_log_begin(level, "disconnect");
    mx_session_log_ids(l, s);
    mx_log_kv(l, "client", s->addr);
    mx_log_kvi(l, "port", s->port);
    mx_log_kv(l, "helo", s->helo);
    mx_log_kvi(l, "messages", s->nmsgs);
    mx_log_kvi(l, "bad", s->bad);
    mx_log_kv(l, "reason", s->close_reason ? s->close_reason : "quit");
    mx_log_kv(l, "phase", phase_action[s->phase]);
    mx_log_kvi(l, "ms", (g_get_monotonic_time() - s->started) / 1000);
    mx_log_end(l);
}

void mx_session_close(mx_session *s, const char *reason)
{
    if (s->phase == MX_PHASE_CLOSED)
        return;
    if (reason && !s->close_reason)
        s->close_reason = reason;
    log_disconnect(s);
    mx_acct_free(s);
    s->phase = MX_PHASE_CLOSED;
    mx_policy_release(s);
    ev_io_stop(s->w->loop, &s->rio);
    ev_io_stop(s->w->loop, &s->wio);
    ev_timer_stop(s->w->loop, &s->timer);
    if (s->ssl) {
        SSL_shutdown(s->ssl); /* close_notify, best effort: we do not wait */
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    close(s->fd);
    s->fd = -1;
    if (s->relay) {
        mx_relay_release(s->relay); /* parked for the next session when clean */
        s->relay = NULL;
    }
    mx_session_txn_reset(s);
    mx_buf_free(&s->in);
    g_string_free(s->out, TRUE);
    s->out = NULL;
    g_free(s->helo);
    s->helo = NULL;
    g_queue_unlink(&s->w->sessions, &s->link);
    atomic_fetch_sub(&s->w->srv->sessions, 1);
    mx_session_unref(s); /* the connection's reference */
}

/* Send what is queued, then close. */
void mx_session_close_after_reply(mx_session *s, const char *reason)
{
    s->close_reason = reason;
    s->phase = MX_PHASE_CLOSING;
    ev_io_stop(s->w->loop, &s->rio);
    mx_session_set_timer(s, 10.); /* a client that never reads does not hold us */
    mx_session_flush(s);
}

void mx_session_log_message(mx_session *s, const char *outcome, const char *replytext)
{
    atomic_uint_fast64_t *ctr = &s->w->srv->messages_tempfailed;
    if (strcmp(outcome, "accepted") == 0)
        ctr = &s->w->srv->messages_accepted;
    else if (strcmp(outcome, "rejected") == 0)
        ctr = &s->w->srv->messages_rejected;
    atomic_fetch_add(ctr, 1);
    if (!mx_log_enabled(MX_LOG_INFO))
        return;
    GString *l = mx_log_begin(MX_LOG_INFO, "message");
    mx_session_log_ids(l, s);
    mx_log_kv(l, "client", s->addr);
    mx_log_kv(l, "helo", s->helo);
    mx_log_kv(l, "from", s->txn.from);
    mx_log_kvi(l, "nrcpt", s->txn.nrcpt);
    mx_log_kvi(l, "size", (int64_t)s->spool.size);
    mx_log_kv(l, "outcome", outcome);
    /* the reply without its CRLF, first line only */
    size_t n = strcspn(replytext, "\r\n");
    mx_log_kvn(l, "reply", replytext, n);
    mx_log_kv(l, "tls", s->ssl ? mx_tls_version(s->ssl) : "none");
    if (s->ssl)
        mx_log_kv(l, "cipher", mx_tls_cipher(s->ssl));
    if (s->txn.scanned) {
        const mx_scan_result *r = &s->txn.scan;
        mx_log_kv(l, "scan", r->verdict == MX_SCAN_CLEAN      ? "clean"
                             : r->verdict == MX_SCAN_INFECTED ? "infected"
                                                              : "error");
        if (r->verdict == MX_SCAN_INFECTED)
            mx_log_kv(l, "virus", r->name);
        if (r->verdict == MX_SCAN_ERROR)
            mx_log_kv(l, "scan_error", r->why);
        mx_log_kv(l, "engine", r->version);
        char ms[32];
        snprintf(ms, sizeof(ms), "%.2f", (double)s->txn.scan_us / 1000.0);
        mx_log_kv(l, "scan_ms", ms);
    }
    mx_log_kv(l, "backend", s->relay ? mx_relay_server(s->relay) : "-");
    if (s->relay && *mx_relay_error(s->relay) && outcome[0] == 't')
        mx_log_kv(l, "error", mx_relay_error(s->relay));
    mx_log_kvi(l, "ms", (g_get_monotonic_time() - s->txn.started) / 1000);
    mx_log_end(l);
}

void mx_session_log_reject(mx_session *s, const char *what, const char *line, size_t len,
                       mx_reply_id id, const char *why)
{
    if (!mx_log_enabled(MX_LOG_INFO))
        return;
    GString *l = mx_log_begin(MX_LOG_INFO, "reject");
    mx_session_log_ids(l, s);
    mx_log_kv(l, "client", s->addr);
    mx_log_kv(l, "what", what);
    mx_log_kvi(l, "code", mx_replies_code(id));
    if (why)
        mx_log_kv(l, "why", why);
    if (line)
        mx_log_kvn(l, "command", line, len > 200 ? 200 : len);
    mx_log_end(l);
}

/* A client error: reply, log, and count towards max_bad_commands. */
void mx_session_bad_command(mx_session *s, mx_reply_id id, const char *arg, const char *line,
                        size_t len)
{
    mx_session_reply(s, id, arg);
    mx_session_log_reject(s, "command", line, len, id, arg);
    if (++s->bad >= s->cfg->max_bad_commands) {
        mx_session_reply(s, MX_R_TOO_MANY_ERRORS, s->cfg->hostname);
        mx_session_close_after_reply(s, "too_many_errors");
    }
}

/* ---- the connection: plain or TLS ---- */



/* ---- output ---- */

static void update_interest(mx_session *s)
{
    if (s->phase == MX_PHASE_CLOSED || s->phase == MX_PHASE_TLS)
        return;
    /* While the backend works we keep reading (into the buffer, without
     * parsing): stopping and restarting the watcher for every relayed
     * command costs two epoll_ctl calls each time. */
    int want_read = (s->phase == MX_PHASE_CMD || s->phase == MX_PHASE_DATA ||
                     s->phase == MX_PHASE_PROXY ||
                     s->phase == MX_PHASE_BDAT || s->phase == MX_PHASE_GREET ||
                     s->phase == MX_PHASE_BACKEND) &&
                    !s->client_eof && s->out->len <= OUT_HIGH &&
                    mx_buf_room(&s->in) + (size_t)(s->in.pos - s->in.start) > 0;
    if (want_read)
        ev_io_start(s->w->loop, &s->rio);
    else
        ev_io_stop(s->w->loop, &s->rio);
    /* OpenSSL may hold decrypted bytes the socket will never signal again:
     * drain them now that there is room. */
    if (want_read && s->ssl && SSL_has_pending(s->ssl) && mx_buf_room(&s->in) > 0)
        ev_feed_event(s->w->loop, &s->rio, EV_READ);
}

void mx_session_flush(mx_session *s)
{
    while (s->out->len > 0) {
        ssize_t n = mx_conn_send(s, s->out->str, s->out->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            ev_io_start(s->w->loop, &s->wio);
            return;
        }
        if (n < 0) {
            s->close_reason = "write_error";
            mx_session_close(s, NULL);
            return;
        }
        g_string_erase(s->out, 0, n);
    }
    ev_io_stop(s->w->loop, &s->wio);
    if (s->phase == MX_PHASE_CLOSING)
        mx_session_close(s, NULL);
    else if (s->phase == MX_PHASE_TLS && !s->ssl)
        mx_conn_tls_begin(s); /* the 220 to STARTTLS has left in plaintext */
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_session *s = mx_session_ref(w->data);
    if (s->phase == MX_PHASE_TLS && s->ssl) {
        mx_conn_tls_step(s);
        mx_session_unref(s);
        return;
    }
    mx_session_flush(s);
    if (s->phase != MX_PHASE_CLOSED && s->phase != MX_PHASE_CLOSING && s->out->len <= OUT_HIGH) {
        mx_session_process(s); /* backpressure released */
    }
    mx_session_unref(s);
}

/* ---- the backend ---- */




void mx_session_to_cmd_phase(mx_session *s)
{
    s->phase = MX_PHASE_CMD;
    mx_session_set_timer(s, s->cfg->idle_timeout);
}



/* ---- commands ---- */















/* ---- input ---- */

static int active_phase(const mx_session *s)
{
    return s->phase == MX_PHASE_CMD || s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT;
}

static void discard_emit(void *ctx, const char *p, size_t len) {}

/* Dropped bytes (NULs) do not reach the spool, so bound the raw input too:
 * a message far over the limit on the wire is over the limit. */
static void count_raw(mx_session *s, size_t n)
{
    s->raw_bytes += n;
    if (s->raw_bytes / 2 > s->cfg->max_message_size)
        s->spool.over_limit = 1;
}

void mx_session_process(mx_session *s)
{
    while (active_phase(s) && s->out->len <= OUT_HIGH) {
        if (s->phase == MX_PHASE_DATA) {
            if (mx_buf_used(&s->in) == 0)
                break;
            size_t used = 0;
            mx_rc rc = mx_data_decode(&s->dec, s->in.pos, s->in.last, &used, mx_spool_emit,
                                      &s->spool);
            s->in.pos += used;
            count_raw(s, used);
            if (rc != MX_DONE)
                break;
            mx_session_to_cmd_phase(s);
            mx_smtp_message_complete(s);
            continue;
        }
        if (s->phase == MX_PHASE_BDAT) {
            if (s->chunk_left > 0) {
                size_t avail = mx_buf_used(&s->in);
                if (avail == 0)
                    break;
                size_t n = avail < s->chunk_left ? avail : (size_t)s->chunk_left;
                size_t used = 0;
                if (s->chunk_error < 0 && !s->txn.failed)
                    mx_data_decode(&s->dec, s->in.pos, s->in.pos + n, &used, mx_spool_emit,
                                   &s->spool);
                else
                    mx_data_decode(&s->dec, s->in.pos, s->in.pos, &used, discard_emit, NULL);
                s->in.pos += n;
                s->chunk_left -= n;
                count_raw(s, n);
                if (s->chunk_left > 0)
                    break;
            }
            mx_smtp_bdat_chunk_done(s);
            continue;
        }

        /* MX_PHASE_CMD */
        if (atomic_load(&s->w->srv->draining) && !s->txn.active) {
            mx_session_reply(s, MX_R_SHUTDOWN, s->cfg->hostname);
            mx_session_close_after_reply(s, "shutdown");
            break;
        }
        char *lf = memchr(s->in.pos, '\n', mx_buf_used(&s->in));
        if (!lf) {
            if (s->discard_line) {
                s->in.pos = s->in.last;
            } else if (mx_buf_used(&s->in) >= (size_t)s->cfg->max_line_length) {
                s->in.pos = s->in.last;
                s->discard_line = 1;
                mx_session_bad_command(s, MX_R_LINE_TOO_LONG, NULL, NULL, 0);
            }
            break;
        }
        char *line = s->in.pos;
        size_t len = (size_t)(lf - line);
        s->in.pos = lf + 1;
        if (s->discard_line) {
            s->discard_line = 0;
            continue;
        }
        if (len + 1 > (size_t)s->cfg->max_line_length) {
            mx_session_bad_command(s, MX_R_LINE_TOO_LONG, NULL, NULL, 0);
            continue;
        }
        if (len > 0 && line[len - 1] == '\r')
            len--;
        mx_smtp_handle_line(s, line, len);
    }
    if (s->phase == MX_PHASE_CLOSED)
        return;
    if (mx_buf_used(&s->in) == 0)
        mx_buf_reset(&s->in);
    if (s->client_eof && active_phase(s)) {
        /* Everything the client sent before its EOF has been answered. */
        if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT ||
            (s->phase == MX_PHASE_CMD && s->txn.bdat))
            mx_session_log_message(s, "aborted", "(client disconnected before end of data)");
        mx_session_close_after_reply(s, "client_closed");
        return;
    }
    mx_session_flush(s);
    if (s->phase != MX_PHASE_CLOSED)
        update_interest(s);
}

static void client_gone(mx_session *s, const char *reason)
{
    if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT ||
        (s->phase == MX_PHASE_CMD && s->txn.bdat)) {
        /* Nothing was sent to the backend yet: closing the relay without
         * a final dot is the abort, and nothing is delivered. */
        GString *t = g_string_new("(client disconnected before end of data)");
        mx_session_log_message(s, "aborted", t->str);
        g_string_free(t, TRUE);
    }
    mx_session_close(s, reason);
}








static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_session *s = mx_session_ref(w->data);

    if (s->phase == MX_PHASE_PROXY) {
        mx_conn_proxy_read(s);
        goto out;
    }
    if (s->phase == MX_PHASE_TLS) {
        if (s->ssl)
            mx_conn_tls_step(s);
        goto out;
    }
    mx_buf_compact(&s->in);
    if (mx_buf_room(&s->in) == 0) {
        ev_io_stop(loop, w);
        goto out;
    }
    ssize_t n = mx_conn_recv(s, s->in.last, mx_buf_room(&s->in));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        goto out;
    if (n == 0 && s->phase == MX_PHASE_BACKEND) {
        /* The client half-closed after pipelining its last commands: they
         * are answered once the backend has, then we close. */
        s->client_eof = 1;
        ev_io_stop(loop, w);
        goto out;
    }
    if (n <= 0) {
        client_gone(s, n == 0 ? "client_closed" : "read_error");
        goto out;
    }
    s->in.last += n;
    if (s->phase == MX_PHASE_BACKEND)
        goto out; /* parsed when the backend has answered */
    if (s->phase == MX_PHASE_GREET) {
        /* RFC 5321 3.1: the client waits for the greeting. */
        mx_policy_feedback(s, MX_FB_PREGREET);
        refuse_connection(s, MX_R_PREGREET, NULL, "pregreet", "pregreet");
        goto out;
    }
    if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT)
        mx_session_set_timer(s, s->cfg->data_timeout);
    else if (s->phase == MX_PHASE_CMD)
        mx_session_set_timer(s, s->cfg->idle_timeout);
    mx_session_process(s);
out:
    mx_session_unref(s);
}

static void send_greeting(mx_session *s)
{
    mx_session_reply(s, MX_R_GREETING, s->cfg->hostname);
    mx_session_to_cmd_phase(s);
    mx_session_process(s);
}

static void after_connect_policy(mx_session *s, const mx_pol_result *r)
{
    if (!r->refuse) {
        send_greeting(s);
        return;
    }
    s->phase = MX_PHASE_CMD;
    if (r->ratelimited)
        mx_policy_feedback(s, MX_FB_RATELIMIT);
    refuse_connection(s, r->reply, r->arg[0] ? r->arg : NULL, r->why,
                      r->ratelimited ? "ratelimit" : "policy");
}

/* Reputation and connection limits decide before the banner. Meanwhile
 * the session stays in MX_PHASE_GREET: a client that talks is a pregreet. */
static void greet(mx_session *s)
{
    s->phase = MX_PHASE_GREET;
    mx_session_set_timer(s, 0);
    ev_io_start(s->w->loop, &s->rio);
    mx_policy_check(s, MX_POL_CONNECT, NULL, 0, after_connect_policy);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    mx_session *s = mx_session_ref(w->data);
    switch (s->phase) {
    case MX_PHASE_PROXY:
        mx_conn_proxy_fail(s, "no PROXY header in time");
        break;
    case MX_PHASE_TLS:
        mx_conn_tls_fail(s, "handshake timed out");
        break;
    case MX_PHASE_GREET:
        greet(s);
        break;
    case MX_PHASE_CLOSING:
        mx_session_close(s, NULL);
        break;
    case MX_PHASE_CMD:
    case MX_PHASE_DATA:
    case MX_PHASE_BDAT: {
        if (s->phase != MX_PHASE_CMD || s->txn.bdat) {
            GString *t = g_string_new("(timeout before end of data)");
            mx_session_log_message(s, "aborted", t->str);
            g_string_free(t, TRUE);
        }
        GString *l = mx_log_begin(MX_LOG_INFO, "timeout");
        mx_session_log_ids(l, s);
        mx_log_kv(l, "client", s->addr);
        mx_log_kv(l, "phase", phase_action[s->phase]);
        mx_log_end(l);
        s->phase = MX_PHASE_CMD;
        mx_session_reply(s, MX_R_TIMEOUT, s->cfg->hostname);
        mx_session_close_after_reply(s, "timeout");
        break;
    }
    default:
        break;
    }
    mx_session_unref(s);
}

void mx_session_start(mx_worker *w, int fd, const struct sockaddr_storage *peer,
                      const mx_listen *l)
{
    mx_server *srv = w->srv;
    mx_session *s = g_new0(mx_session, 1);
    s->refs = 1;
    s->w = w;
    s->cfg = mx_server_config(srv);
    s->fd = fd;
    s->peer = *peer;
    s->implicit_tls = l->tls;
    s->started = g_get_monotonic_time();
    s->chunk_error = -1;
    s->link.data = s;
    s->lease = -1;
    mx_server_session_id(srv, s->sid);
    socklen_t ll = sizeof(s->local);
    getsockname(fd, (struct sockaddr *)&s->local, &ll);
    mx_conn_set_peer_text(s);
    mx_buf_alloc(&s->in, IN_SIZE);
    s->out = g_string_sized_new(256);
    ev_io_init(&s->rio, on_read, fd, EV_READ);
    ev_io_init(&s->wio, on_write, fd, EV_WRITE);
    ev_init(&s->timer, on_timer);
    s->rio.data = s->wio.data = s->timer.data = s;
    g_queue_push_tail_link(&w->sessions, &s->link);
    atomic_fetch_add(&srv->sessions, 1);

    if (mx_log_enabled(MX_LOG_DEBUG)) {
        GString *lg = mx_log_begin(MX_LOG_DEBUG, "connect");
        mx_session_log_ids(lg, s);
        mx_log_kv(lg, "client", s->addr);
        mx_log_kvi(lg, "port", s->port);
        mx_log_end(lg);
    }

    if (l->proxy_protocol) {
        /* Only the balancer may speak PROXY: anyone else could claim any
         * address. No banner and no reply: the peer is not a client. */
        if (!mx_config_net_match(s->cfg->proxy_nets, s->cfg->nproxy_nets, peer)) {
            GString *lg = mx_log_begin(MX_LOG_WARNING, "proxy_refused");
            mx_session_log_ids(lg, s);
            mx_log_kv(lg, "peer", s->addr);
            mx_log_kv(lg, "why", "not in smtp.proxy_protocol_from");
            mx_log_end(lg);
            mx_session_close(s, "proxy_not_allowed");
            return;
        }
        s->phase = MX_PHASE_PROXY;
        mx_session_set_timer(s, s->cfg->proxy_timeout);
        ev_io_start(w->loop, &s->rio);
        return;
    }
    mx_session_begin_smtp(s);
}

/* The client's real address is known: admission, then the banner. */
void mx_session_begin_smtp(mx_session *s)
{
    mx_worker *w = s->w;
    int fd = s->fd;
    if (s->implicit_tls && !s->ssl) {
        /* Port 465 style (RFC 8314): TLS first, the banner inside it. */
        if (!s->cfg->tls_server) {
            mx_session_close(s, "tls_not_configured");
            return;
        }
        s->after_tls_banner = 1;
        s->phase = MX_PHASE_TLS;
        mx_conn_tls_begin(s);
        return;
    }
    if (atomic_load(&w->srv->sessions) > s->cfg->max_sessions || w->draining) {
        s->phase = MX_PHASE_CMD;
        mx_session_reply(s, w->draining ? MX_R_SHUTDOWN : MX_R_TOO_MANY_SESSIONS, s->cfg->hostname);
        mx_session_close_after_reply(s, w->draining ? "shutdown" : "too_many_sessions");
        return;
    }
    if (s->cfg->greet_delay > 0) {
        s->phase = MX_PHASE_GREET;
        mx_session_set_timer(s, s->cfg->greet_delay / 1000.0);
        ev_io_start(w->loop, &s->rio);
        return;
    }
    /* Without a delay, still catch a client whose first bytes arrived
     * with its handshake: it did not wait for us. */
    char peek;
    if (!s->ssl && recv(fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 1) {
        s->phase = MX_PHASE_CMD;
        mx_policy_feedback(s, MX_FB_PREGREET);
        refuse_connection(s, MX_R_PREGREET, NULL, "pregreet", "pregreet");
        return;
    }
    greet(s);
}

void mx_session_drain_all(mx_worker *w, int force)
{
    GList *l = w->sessions.head;
    while (l) {
        GList *next = l->next;
        mx_session *s = mx_session_ref(l->data);
        if (force && s->phase != MX_PHASE_CLOSED && s->phase != MX_PHASE_CLOSING) {
            if (s->phase == MX_PHASE_DATA || s->phase == MX_PHASE_BDAT) {
                GString *t = g_string_new("(shutdown before end of data)");
                mx_session_log_message(s, "aborted", t->str);
                g_string_free(t, TRUE);
            }
            s->phase = MX_PHASE_CMD;
            mx_session_reply(s, MX_R_SHUTDOWN, s->cfg->hostname);
            mx_session_close_after_reply(s, "shutdown_forced");
        } else if (force && s->phase == MX_PHASE_CLOSING) {
            mx_session_close(s, NULL);
        } else if (s->phase == MX_PHASE_CMD && !s->txn.active && mx_buf_used(&s->in) == 0) {
            mx_session_reply(s, MX_R_SHUTDOWN, s->cfg->hostname);
            mx_session_close_after_reply(s, "shutdown");
        }
        mx_session_unref(s); /* next was taken before: s may have unlinked itself */
        l = next;
    }
}
