/*
 * admin.c: /health, /metrics, the /v1 reputation endpoints and the
 * backend probe (see admin.h).
 *
 * A deliberately small HTTP/1.0 responder: one request per connection,
 * bounded request size and time. It is for a load balancer's health check,
 * a metrics scraper and mxgatectl on a management network, not for the
 * internet. Bodies (POST) need a Content-Length, at most BODY_MAX bytes,
 * and only BODY_SLOTS of them are held at a time; changes are taken from
 * this host only.
 */
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "admin.h"
#include "feed.h"
#include "report.h"
#include "trace.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"

/* Request line and headers. */
#define REQ_MAX 8192
/* A feed's body (POST /v1/feed), and how many such bodies may be held or
 * applied at once: memory stays under BODY_SLOTS x BODY_MAX. */
#define BODY_MAX (16u << 20)
#define BODY_SLOTS 2
/* Updates applied per turn of the loop: the embedded store never blocks,
 * but a 16 MiB feed would hold /health and signals for a second or more. */
#define FEED_SLICE 2000
/* Bad lines listed in one reply; the summary counts them all. */
#define FEED_ERRORS_MAX 10000
#define REQ_TIMEOUT 5.
#define BODY_TIMEOUT 60.

struct mx_admin {
    mx_server *srv;
    struct ev_loop *loop;
    int fd;
    ev_io lsn;
    ev_timer probe_timer;
    int probing;       /* probes in flight */
    int probe_up;      /* some backend answered 220 in this round */
    int bodies;        /* requests holding a body slot */
};

typedef struct http_conn {
    mx_admin *a;
    int fd;
    ev_io io;
    ev_timer timer;
    ev_idle work;      /* a feed being applied, a slice per turn */
    char req[REQ_MAX];
    size_t len;
    size_t head;       /* bytes of request line and headers, once complete */
    char *body;        /* POST: body_want bytes, body_len of them read */
    size_t body_len, body_want;
    int slot;          /* holds one of a->bodies */
    char *target;      /* the request target, for the handler */
    /* POST /v1/feed */
    mx_feed_reader *feed;
    mx_store *store;
    GString *feed_out;
    char *source;
    uint64_t applied, bad, store_errors;
    int64_t now;
    gint64 t0;
    /* the response */
    char *out;
    size_t out_len, out_off;
} http_conn;

typedef struct probe {
    mx_admin *a;
    int fd;
    ev_io io;
    ev_timer timer;
    char buf[512];
    size_t len;
    int connected;
} probe;

static void http_close(http_conn *c)
{
    ev_io_stop(c->a->loop, &c->io);
    ev_timer_stop(c->a->loop, &c->timer);
    ev_idle_stop(c->a->loop, &c->work);
    close(c->fd);
    if (c->slot)
        c->a->bodies--;
    g_free(c->body);
    g_free(c->target);
    mx_feed_reader_free(c->feed);
    if (c->feed_out)
        g_string_free(c->feed_out, TRUE);
    g_free(c->source);
    g_free(c->out);
    g_free(c);
}

static const char *status_text(int code)
{
    switch (code) {
    case 200: return "OK";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Bad Request";
    }
}

static void on_http_write(struct ev_loop *loop, ev_io *w, int revents)
{
    http_conn *c = w->data;
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0)
            break; /* the client went away */
        c->out_off += (size_t)n;
    }
    http_close(c);
}

/* Send the response, as many writes as it takes, then close. */
static void http_respond_len(http_conn *c, int code, const char *body, size_t len)
{
    GString *r = g_string_sized_new(len + 200);
    g_string_printf(r,
                    "HTTP/1.0 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    "Content-Length: %zu\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
                    code, status_text(code), len);
    g_string_append_len(r, body, (gssize)len);
    c->out_len = r->len;
    c->out = g_string_free(r, FALSE);
    c->out_off = 0;
    /* a large reply to a slow reader gets its own time */
    ev_timer_stop(c->a->loop, &c->timer);
    ev_timer_set(&c->timer, BODY_TIMEOUT, 0.);
    ev_timer_start(c->a->loop, &c->timer);
    ev_io_stop(c->a->loop, &c->io);
    ev_io_init(&c->io, on_http_write, c->fd, EV_WRITE);
    c->io.data = c;
    ev_io_start(c->a->loop, &c->io);
    on_http_write(c->a->loop, &c->io, EV_WRITE);
}

static void http_respond(http_conn *c, int code, const char *body)
{
    http_respond_len(c, code, body, strlen(body));
}

static void http_respond_printf(http_conn *c, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void http_respond_printf(http_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *body = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    http_respond(c, code, body);
}

/* ---- /v1: reputation and rate limits in the node's embedded store ---- */

/* The value of query parameter name in target, unescaped; NULL when
 * absent. *bad is set when it is present but not decodable. */
static char *query_param(const char *target, const char *name, int *bad)
{
    const char *q = strchr(target, '?');
    if (!q)
        return NULL;
    size_t nl = strlen(name);
    for (const char *p = q + 1; *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            g_autofree char *raw = g_strndup(p + nl + 1, len - nl - 1);
            char *v = g_uri_unescape_string(raw, NULL);
            if (!v)
                *bad = 1;
            return v;
        }
        if (len == nl && strncmp(p, name, nl) == 0)
            return g_strdup("");
        p += len + (amp ? 1 : 0);
    }
    return NULL;
}

/* Changes come from this host only: admin.listen also serves the load
 * balancer and the metrics scraper, which must not be able to allow-list
 * a sender. Loopback, or the very address the request came in on. */
static int same_host(int fd)
{
    struct sockaddr_storage peer, self;
    socklen_t pl = sizeof(peer), sl = sizeof(self);
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) < 0 ||
        getsockname(fd, (struct sockaddr *)&self, &sl) < 0)
        return 0;
    if (peer.ss_family == AF_INET) {
        const struct sockaddr_in *p = (const struct sockaddr_in *)&peer;
        const struct sockaddr_in *s = (const struct sockaddr_in *)&self;
        return (ntohl(p->sin_addr.s_addr) >> 24) == 127 ||
               (self.ss_family == AF_INET && p->sin_addr.s_addr == s->sin_addr.s_addr);
    }
    if (peer.ss_family == AF_INET6) {
        const struct sockaddr_in6 *p = (const struct sockaddr_in6 *)&peer;
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&self;
        if (IN6_IS_ADDR_LOOPBACK(&p->sin6_addr))
            return 1;
        if (IN6_IS_ADDR_V4MAPPED(&p->sin6_addr) && p->sin6_addr.s6_addr[12] == 127)
            return 1;
        return self.ss_family == AF_INET6 &&
               memcmp(&p->sin6_addr, &s->sin6_addr, sizeof(p->sin6_addr)) == 0;
    }
    return peer.ss_family == AF_UNIX;
}

/* The node's store when it is the embedded one; otherwise a reply. */
static mx_store *embedded_store(http_conn *c)
{
    mx_server *srv = c->a->srv;
    mx_store *st = srv->policy ? mx_policy_store(srv->policy) : NULL;
    if (!st) {
        http_respond(c, 503, "no store: the policy is not running\n");
        return NULL;
    }
    if (strcmp(st->ops->name, "embedded") != 0) {
        /* a remote store would block this loop: mxgatectl reaches it itself */
        http_respond(c, 409,
                     "this node uses memcached (cluster.memcached); run mxgatectl with the "
                     "node's configuration to reach it directly\n");
        return NULL;
    }
    return st;
}

static void get_rep(http_conn *c, const char *target, int change)
{
    mx_store *st = embedded_store(c);
    if (!st)
        return;
    int bad = 0;
    g_autofree char *kind = query_param(target, "kind", &bad);
    g_autofree char *value = query_param(target, "value", &bad);
    g_autofree char *op = change ? query_param(target, "op", &bad) : NULL;
    g_autofree char *score = change ? query_param(target, "score", &bad) : NULL;
    g_autofree char *ttl = change ? query_param(target, "ttl", &bad) : NULL;
    g_autofree char *flag = change ? query_param(target, "flag", &bad) : NULL;
    g_autofree char *reason = change ? query_param(target, "reason", &bad) : NULL;
    g_autofree char *source = change ? query_param(target, "source", &bad) : NULL;
    if (bad) {
        http_respond(c, 400, "bad percent-encoding in the query\n");
        return;
    }
    mx_feed_update u;
    char *err = NULL;
    /* a read is checked as an update would be, for the same messages */
    if (mx_feed_update_build(&u, change ? op : "del", kind, value, change ? score : NULL,
                             change ? ttl : NULL, flag, change ? reason : NULL, &err) < 0) {
        http_respond_printf(c, 400, "%s\n", err);
        g_free(err);
        return;
    }
    if (source && (strlen(source) > 63 || strpbrk(source, "\r\n\t"))) {
        mx_feed_update_clear(&u);
        http_respond(c, 400, "source: at most 63 bytes on one line\n");
        return;
    }
    int64_t now = (int64_t)time(NULL);
    if (change) {
        if (mx_feed_apply(st, &u, now, source && *source ? source : "admin") != MX_STORE_OK) {
            mx_feed_update_clear(&u);
            http_respond(c, 503, "store error\n");
            return;
        }
        mx_rep_bump_generation(st);
        mx_log_msg(MX_LOG_INFO, "reputation_changed", "%s:%s %s by %s",
                   mx_rep_kind_name(u.kind), u.value, mx_feed_op_name(u.op),
                   source && *source ? source : "admin");
    }
    mx_config *cfg = mx_server_config(c->a->srv);
    mx_rep r;
    mx_rep_history h;
    mx_store_rc rc = mx_rep_read(st, u.kind, u.value, now, cfg->rep_decay, &r);
    if (rc == MX_STORE_OK)
        rc = mx_rep_read_history(st, u.kind, u.value, cfg->rep_history, &h);
    mx_config_unref(cfg);
    if (rc != MX_STORE_OK) {
        mx_feed_update_clear(&u);
        http_respond(c, 503, "store error\n");
        return;
    }
    GString *out = g_string_new(NULL);
    mx_feed_describe_rep(out, u.kind, u.value, &r, &h, now);
    mx_feed_update_clear(&u);
    http_respond_len(c, 200, out->str, out->len);
    g_string_free(out, TRUE);
}

static void get_limits(http_conn *c, const char *target)
{
    mx_store *st = embedded_store(c);
    if (!st)
        return;
    int bad = 0;
    g_autofree char *key = query_param(target, "key", &bad);
    if (bad || !key) {
        http_respond(c, 400, bad ? "bad percent-encoding in the query\n"
                                 : "key: missing (GET /v1/limits?key=IP|ADDRESS|DOMAIN)\n");
        return;
    }
    mx_config *cfg = mx_server_config(c->a->srv);
    GString *out = g_string_new(NULL);
    int n = mx_feed_describe_limits(out, st, cfg->rules, cfg->nrules, key, (int64_t)time(NULL));
    mx_config_unref(cfg);
    http_respond_len(c, n < 0 ? 400 : 200, out->str, out->len);
    g_string_free(out, TRUE);
}

static void get_report(http_conn *c, const char *target)
{
    mx_store *st = embedded_store(c);
    if (!st)
        return;
    int bad = 0;
    g_autofree char *hours = query_param(target, "hours", &bad);
    g_autofree char *format = query_param(target, "format", &bad);
    mx_config *cfg = mx_server_config(c->a->srv);
    int max = cfg->report_days * 24;
    mx_config_unref(cfg);
    int h = hours ? mx_report_parse_since(hours, max) : 24;
    int fmt = mx_report_format_parse(format ? format : "text");
    if (bad || h < 0 || fmt < 0) {
        http_respond_printf(c, 400, "GET /v1/report?hours=1..%d&format=text|json|csv|html\n",
                            max);
        return;
    }
    GString *out = g_string_new(NULL);
    mx_report_produce(out, st, h, (mx_report_format)fmt, (int64_t)time(NULL));
    http_respond_len(c, 200, out->str, out->len);
    g_string_free(out, TRUE);
}

static void get_explain(http_conn *c, const char *target)
{
    mx_store *st = embedded_store(c);
    if (!st)
        return;
    int bad = 0;
    g_autofree char *id = query_param(target, "id", &bad);
    g_autofree char *format = query_param(target, "format", &bad);
    if (bad || !id || (format && strcmp(format, "json") != 0 && strcmp(format, "text") != 0)) {
        http_respond(c, 400, "GET /v1/explain?id=ID&format=text|json\n");
        return;
    }
    GString *out = g_string_new(NULL);
    char *err = NULL;
    int r = mx_trace_explain(out, st, id, format && format[0] == 'j', (int64_t)time(NULL), &err);
    if (r < 0) {
        http_respond_printf(c, r == -1 ? 404 : 503, "%s\n", err);
        g_free(err);
    } else {
        http_respond_len(c, 200, out->str, out->len);
    }
    g_string_free(out, TRUE);
}

static void feed_finish(http_conn *c)
{
    ev_idle_stop(c->a->loop, &c->work);
    if (c->applied)
        mx_rep_bump_generation(c->store);
    double ms = (double)(g_get_monotonic_time() - c->t0) / 1000.;
    if (c->bad > FEED_ERRORS_MAX)
        g_string_append_printf(c->feed_out, "(%" G_GUINT64_FORMAT " more bad %ss not listed)\n",
                               c->bad - FEED_ERRORS_MAX, mx_feed_reader_unit(c->feed));
    g_string_append_printf(c->feed_out, "applied %" G_GUINT64_FORMAT ", bad %" G_GUINT64_FORMAT
                           ", in %.0f ms (%.0f/s)\n",
                           c->applied, c->bad, ms, ms > 0 ? (double)c->applied * 1000. / ms : 0.);
    mx_log_msg(MX_LOG_INFO, "reputation_feed", "source=%s applied=%" G_GUINT64_FORMAT
               " bad=%" G_GUINT64_FORMAT " ms=%.0f", c->source, c->applied, c->bad, ms);
    GString *out = c->feed_out;
    c->feed_out = NULL;
    http_respond_len(c, c->store_errors ? 503 : 200, out->str, out->len);
    g_string_free(out, TRUE);
}

static void on_feed_work(struct ev_loop *loop, ev_idle *w, int revents)
{
    http_conn *c = w->data;
    for (int i = 0; i < FEED_SLICE; i++) {
        mx_feed_update u;
        uint64_t number = 0;
        char *err = NULL;
        int rc = mx_feed_reader_next(c->feed, &u, &number, &err);
        if (rc == MX_FEED_END || rc == MX_FEED_AGAIN) {
            feed_finish(c);
            return;
        }
        if (rc == MX_FEED_UPDATE && mx_feed_apply(c->store, &u, c->now, c->source) != MX_STORE_OK) {
            c->store_errors++;
            err = g_strdup("store error");
            rc = MX_FEED_BAD;
        }
        if (rc == MX_FEED_BAD) {
            if (++c->bad <= FEED_ERRORS_MAX)
                g_string_append_printf(c->feed_out, "%s %" G_GUINT64_FORMAT ": %s\n",
                                       mx_feed_reader_unit(c->feed), number, err);
            g_free(err);
        } else {
            c->applied++;
        }
        mx_feed_update_clear(&u);
    }
}

static void post_feed(http_conn *c, const char *target)
{
    mx_store *st = embedded_store(c);
    if (!st)
        return;
    int bad = 0;
    g_autofree char *format = query_param(target, "format", &bad);
    g_autofree char *first = query_param(target, "first", &bad);
    g_autofree char *source = query_param(target, "source", &bad);
    if (bad) {
        http_respond(c, 400, "bad percent-encoding in the query\n");
        return;
    }
    mx_feed_format f = MX_FEED_TEXT;
    if (format && strcmp(format, "protobuf") == 0) {
        f = MX_FEED_PROTOBUF;
    } else if (format && strcmp(format, "text") != 0) {
        http_respond(c, 400, "format: text or protobuf\n");
        return;
    }
    guint64 n1 = 1;
    if (first && (!g_ascii_string_to_unsigned(first, 10, 1, G_MAXUINT64 / 2, &n1, NULL))) {
        http_respond(c, 400, "first: the number of the body's first line, from 1\n");
        return;
    }
    if (source && (strlen(source) > 63 || strpbrk(source, "\r\n\t"))) {
        http_respond(c, 400, "source: at most 63 bytes on one line\n");
        return;
    }
    c->store = st;
    c->source = g_strdup(source && *source ? source : "admin");
    c->feed = mx_feed_reader_new(f, n1);
    mx_feed_reader_push(c->feed, c->body, c->body_len);
    mx_feed_reader_finish(c->feed);
    g_free(c->body);
    c->body = NULL;
    c->feed_out = g_string_new(NULL);
    c->now = (int64_t)time(NULL);
    c->t0 = g_get_monotonic_time();
    ev_io_stop(c->a->loop, &c->io);
    ev_idle_init(&c->work, on_feed_work);
    c->work.data = c;
    ev_idle_start(c->a->loop, &c->work);
}

static void handle_v1(http_conn *c, const char *method, const char *target)
{
    size_t plen = strcspn(target, "?");
    int post = strcmp(method, "POST") == 0;
    int get = strcmp(method, "GET") == 0;
    if (post && !same_host(c->fd)) {
        http_respond(c, 403, "changes are accepted from this host only\n");
        return;
    }
    if (plen == 7 && strncmp(target, "/v1/rep", 7) == 0) {
        if (get || post)
            get_rep(c, target, post);
        else
            http_respond(c, 405, "GET or POST /v1/rep\n");
    } else if (plen == 10 && strncmp(target, "/v1/limits", 10) == 0) {
        if (get)
            get_limits(c, target);
        else
            http_respond(c, 405, "GET /v1/limits\n");
    } else if (plen == 10 && strncmp(target, "/v1/report", 10) == 0) {
        if (get)
            get_report(c, target);
        else
            http_respond(c, 405, "GET /v1/report\n");
    } else if (plen == 11 && strncmp(target, "/v1/explain", 11) == 0) {
        if (get)
            get_explain(c, target);
        else
            http_respond(c, 405, "GET /v1/explain\n");
    } else if (plen == 8 && strncmp(target, "/v1/feed", 8) == 0) {
        if (post)
            post_feed(c, target);
        else
            http_respond(c, 405, "POST /v1/feed\n");
    } else {
        http_respond(c, 404, "not found\n");
    }
}

/* ---- GET /metrics: Prometheus text format 0.0.4 ---- */

static void family(GString *out, const char *name, const char *type, const char *help)
{
    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the text format wants it: \\, \" and \n escaped. */
static void label_value(GString *out, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            g_string_append_c(out, '\\');
        if (*v == '\n')
            g_string_append(out, "\\n");
        else
            g_string_append_c(out, *v);
    }
}

static void scanner_metrics(mx_server *srv, GString *m)
{
    mx_clam_status cs;
    mx_clam_get_status(srv->clam, &cs);
    family(m, "mxgate_scanner_up", "gauge",
           "1 when the temp dir is usable and the last EICAR canary was detected.");
    g_string_append_printf(m, "mxgate_scanner_up %d\n", cs.healthy);
    family(m, "mxgate_scanner_info", "gauge", "The engine and signature version in use; always 1.");
    g_string_append(m, "mxgate_scanner_info{engine=\"");
    label_value(m, cs.engine);
    g_string_append(m, "\",db_version=\"");
    label_value(m, cs.db_version);
    g_string_append(m, "\"} 1\n");
    family(m, "mxgate_scanner_signatures", "gauge", "Signatures loaded in the engine in use.");
    g_string_append_printf(m, "mxgate_scanner_signatures %u\n", cs.signatures);
    family(m, "mxgate_scanner_loaded_timestamp_seconds", "gauge",
           "When the engine in use was loaded, in seconds since the epoch.");
    g_string_append_printf(m, "mxgate_scanner_loaded_timestamp_seconds %lld\n",
                           (long long)cs.loaded_at);
    family(m, "mxgate_scans_total", "counter", "Messages scanned, by verdict.");
    g_string_append_printf(m,
                           "mxgate_scans_total{verdict=\"clean\"} %llu\n"
                           "mxgate_scans_total{verdict=\"infected\"} %llu\n"
                           "mxgate_scans_total{verdict=\"error\"} %llu\n",
                           (unsigned long long)cs.clean, (unsigned long long)cs.infected,
                           (unsigned long long)cs.errors);
    family(m, "mxgate_scanner_reloads_total", "counter", "Signature reloads, by result.");
    g_string_append_printf(m,
                           "mxgate_scanner_reloads_total{result=\"ok\"} %llu\n"
                           "mxgate_scanner_reloads_total{result=\"failed\"} %llu\n",
                           (unsigned long long)cs.reloads, (unsigned long long)cs.reload_failures);
    family(m, "mxgate_scanner_canaries_total", "counter", "EICAR canary scans, by result.");
    g_string_append_printf(m,
                           "mxgate_scanner_canaries_total{result=\"detected\"} %llu\n"
                           "mxgate_scanner_canaries_total{result=\"failed\"} %llu\n",
                           (unsigned long long)(cs.canaries - cs.canary_failures),
                           (unsigned long long)cs.canary_failures);
    family(m, "mxgate_scan_queue", "gauge", "Scans queued or running.");
    g_string_append_printf(m, "mxgate_scan_queue %d\n",
                           srv->scan_pool ? mx_offload_pending(srv->scan_pool) : 0);
}

static void render_metrics(mx_server *srv, GString *m)
{
    family(m, "mxgate_build_info", "gauge", "The version of mxgate running; always 1.");
    g_string_append(m, "mxgate_build_info{version=\"");
    label_value(m, MX_VERSION);
    g_string_append(m, "\"} 1\n");
    family(m, "mxgate_sessions", "gauge", "Client SMTP sessions open now.");
    g_string_append_printf(m, "mxgate_sessions %d\n", atomic_load(&srv->sessions));
    family(m, "mxgate_backend_up", "gauge",
           "1 when some backend server answered the last health probe with 220.");
    g_string_append_printf(m, "mxgate_backend_up %d\n", atomic_load(&srv->backend_up));
    family(m, "mxgate_draining", "gauge", "1 once the node stopped accepting connections.");
    g_string_append_printf(m, "mxgate_draining %d\n", atomic_load(&srv->draining));
    family(m, "mxgate_spool_bytes", "gauge", "Message bytes held in memory by open transactions.");
    g_string_append_printf(m, "mxgate_spool_bytes %lld\n", (long long)atomic_load(&srv->spool.used));
    mx_metrics_render(m);
    if (srv->policy)
        mx_policy_metrics(srv->policy, m);
    if (srv->clam)
        scanner_metrics(srv, m);
}

static void handle_request(http_conn *c, const char *method, const char *target)
{
    mx_server *srv = c->a->srv;
    if (g_str_has_prefix(c->req, "GET /health ") || g_str_has_prefix(c->req, "HEAD /health ")) {
        int draining = atomic_load(&srv->stopping) || atomic_load(&srv->draining);
        int up = atomic_load(&srv->backend_up);
        mx_clam_status cs = {.healthy = 1};
        if (srv->clam)
            mx_clam_get_status(srv->clam, &cs);
        /* A node whose scanner fails would tempfail every message: the
         * balancer should send them to a node that can take them. */
        g_autofree char *body = g_strdup_printf(
            "%s\nsessions=%d\nbackend=%s\nscanner=%s%s%s\ndraining=%s\n",
            draining ? "draining" : !up ? "backend unreachable" : !cs.healthy ? "scanner failing" : "ok",
            atomic_load(&srv->sessions), up ? "up" : "down",
            !srv->clam ? "off" : cs.healthy ? "ok" : "failing", cs.healthy ? "" : ": ", cs.why,
            draining ? "yes" : "no");
        http_respond(c, draining || !up || !cs.healthy ? 503 : 200, body);
        return;
    }
    if (g_str_has_prefix(c->req, "GET /metrics ")) {
        GString *m = g_string_new(NULL);
        render_metrics(srv, m);
        http_respond_len(c, 200, m->str, m->len);
        g_string_free(m, TRUE);
        return;
    }
    handle_v1(c, method, target);
}

/* The request line and headers are in c->req[0..c->head). For a POST,
 * the body's length, or a reply and -1. */
static int parse_head(http_conn *c, char *method, size_t mlen, char **target)
{
    const char *end = c->req + c->head;
    const char *eol = memchr(c->req, '\n', c->head);
    const char *sp1 = memchr(c->req, ' ', (size_t)(eol - c->req));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || (size_t)(sp1 - c->req) >= mlen || sp2 == sp1 + 1) {
        http_respond(c, 400, "bad request line\n");
        return -1;
    }
    memcpy(method, c->req, (size_t)(sp1 - c->req));
    method[sp1 - c->req] = 0;
    *target = g_strndup(sp1 + 1, (size_t)(sp2 - sp1 - 1));
    if (strcmp(method, "POST") != 0)
        return 0;
    int have = 0;
    guint64 want = 0;
    for (const char *l = eol + 1; l < end;) {
        const char *nl = memchr(l, '\n', (size_t)(end - l));
        size_t n = nl ? (size_t)(nl - l) : (size_t)(end - l);
        g_autofree char *line = g_strstrip(g_strndup(l, n));
        if (g_ascii_strncasecmp(line, "transfer-encoding:", 18) == 0) {
            http_respond(c, 501, "Transfer-Encoding is not supported: send Content-Length\n");
            return -1;
        }
        if (g_ascii_strncasecmp(line, "content-length:", 15) == 0) {
            const char *v = line + 15;
            while (*v == ' ' || *v == '\t')
                v++;
            guint64 x;
            if (!g_ascii_string_to_unsigned(v, 10, 0, G_MAXUINT64, &x, NULL) ||
                (have && x != want)) {
                http_respond(c, 400, "bad Content-Length\n");
                return -1;
            }
            want = x;
            have = 1;
        }
        l += n + 1;
    }
    if (!have) {
        http_respond(c, 411, "Content-Length required\n");
        return -1;
    }
    if (want > BODY_MAX) {
        http_respond_printf(c, 413, "body of %" G_GUINT64_FORMAT " bytes; at most %u per request "
                            "(send a larger feed in parts)\n", want, BODY_MAX);
        return -1;
    }
    /* decided before the body is read: nobody else uploads a feed */
    if (!same_host(c->fd)) {
        http_respond(c, 403, "changes are accepted from this host only\n");
        return -1;
    }
    if (c->a->bodies >= BODY_SLOTS) {
        http_respond(c, 503, "busy: other feeds are being applied; retry\n");
        return -1;
    }
    c->a->bodies++;
    c->slot = 1;
    c->body_want = (size_t)want;
    c->body = g_malloc(c->body_want ? c->body_want : 1);
    size_t have_now = c->len - c->head;
    c->body_len = have_now < c->body_want ? have_now : c->body_want;
    memcpy(c->body, c->req + c->head, c->body_len);
    return 1;
}

static void dispatch(http_conn *c)
{
    char method[16];
    /* the request line again: c->target was kept for the body's wait */
    const char *sp = memchr(c->req, ' ', c->head);
    size_t ml = sp ? (size_t)(sp - c->req) : 0;
    memcpy(method, c->req, ml < sizeof(method) ? ml : 0);
    method[ml < sizeof(method) ? ml : 0] = 0;
    handle_request(c, method, c->target);
}

static void on_http_read(struct ev_loop *loop, ev_io *w, int revents)
{
    http_conn *c = w->data;
    if (c->head && c->body) {
        ssize_t n = recv(c->fd, c->body + c->body_len, c->body_want - c->body_len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            http_close(c); /* gone before the whole body */
            return;
        }
        c->body_len += (size_t)n;
        if (c->body_len == c->body_want)
            dispatch(c);
        return;
    }
    ssize_t n = recv(c->fd, c->req + c->len, REQ_MAX - 1 - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        http_close(c);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    const char *crlf = memmem(c->req, c->len, "\r\n\r\n", 4);
    const char *lf = memmem(c->req, c->len, "\n\n", 2);
    if (crlf && (!lf || crlf < lf))
        c->head = (size_t)(crlf - c->req) + 4;
    else if (lf)
        c->head = (size_t)(lf - c->req) + 2;
    if (!c->head) {
        if (c->len >= REQ_MAX - 1)
            http_respond(c, 400, "request too large\n");
        return;
    }
    char method[16];
    int rc = parse_head(c, method, sizeof(method), &c->target);
    if (rc < 0)
        return;
    if (rc == 0 || c->body_len == c->body_want) {
        dispatch(c);
        return;
    }
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, BODY_TIMEOUT, 0.);
    ev_timer_start(loop, &c->timer);
}

static void on_http_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    http_close(t->data);
}

static void on_admin_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    mx_admin *a = w->data;
    for (int i = 0; i < 16; i++) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        http_conn *c = g_new0(http_conn, 1);
        c->a = a;
        c->fd = fd;
        ev_io_init(&c->io, on_http_read, fd, EV_READ);
        ev_timer_init(&c->timer, on_http_timeout, REQ_TIMEOUT, 0.);
        c->io.data = c->timer.data = c;
        ev_io_start(loop, &c->io);
        ev_timer_start(loop, &c->timer);
    }
}

/* ---- backend probe: connect, wait for a 220 line, QUIT ---- */

static void probe_end(probe *p, int up)
{
    mx_admin *a = p->a;
    ev_io_stop(a->loop, &p->io);
    ev_timer_stop(a->loop, &p->timer);
    if (p->fd >= 0) {
        if (up) {
            ssize_t w = send(p->fd, "QUIT\r\n", 6, MSG_NOSIGNAL);
            (void)w;
        }
        close(p->fd);
    }
    g_free(p);
    if (up)
        a->probe_up = 1;
    if (--a->probing == 0) {
        int was = atomic_exchange(&a->srv->backend_up, a->probe_up);
        if (was != a->probe_up)
            mx_log_msg(a->probe_up ? MX_LOG_INFO : MX_LOG_WARNING, "backend_health",
                       "backend %s", a->probe_up ? "reachable again" : "unreachable");
    }
}

static void on_probe_io(struct ev_loop *loop, ev_io *w, int revents)
{
    probe *p = w->data;
    if (!p->connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            probe_end(p, 0);
            return;
        }
        p->connected = 1;
        ev_io_stop(loop, &p->io);
        ev_io_set(&p->io, p->fd, EV_READ);
        ev_io_start(loop, &p->io);
        return;
    }
    ssize_t n = recv(p->fd, p->buf + p->len, sizeof(p->buf) - 1 - p->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        probe_end(p, 0);
        return;
    }
    p->len += (size_t)n;
    p->buf[p->len] = '\0';
    char *lf = strchr(p->buf, '\n');
    if (lf) {
        /* The greeting's last line is "220 " (multi-line uses "220-"). */
        probe_end(p, strncmp(p->buf, "220", 3) == 0);
        return;
    }
    if (p->len >= sizeof(p->buf) - 1)
        probe_end(p, 0);
}

static void on_probe_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    probe_end(t->data, 0);
}

static void on_probe_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    mx_admin *a = t->data;
    if (a->probing)
        return;
    mx_config *cfg = mx_server_config(a->srv);
    a->probe_up = 0;
    a->probing = cfg->nbackends;
    for (int i = 0; i < cfg->nbackends; i++) {
        probe *p = g_new0(probe, 1);
        p->a = a;
        p->fd = socket(cfg->backends[i].sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ev_init(&p->io, on_probe_io);
        ev_init(&p->timer, on_probe_timeout);
        p->io.data = p->timer.data = p;
        if (p->fd < 0 || (connect(p->fd, (const struct sockaddr *)&cfg->backends[i].sa,
                                  cfg->backends[i].len) < 0 && errno != EINPROGRESS)) {
            /* keep the bookkeeping in one place: end from the loop */
            ev_timer_set(&p->timer, 0., 0.);
            ev_timer_start(loop, &p->timer);
            continue;
        }
        ev_io_set(&p->io, p->fd, EV_WRITE);
        ev_io_start(loop, &p->io);
        ev_timer_set(&p->timer, cfg->connect_timeout < 5 ? cfg->connect_timeout : 5, 0.);
        ev_timer_start(loop, &p->timer);
    }
    ev_timer_set(t, cfg->health_interval, cfg->health_interval);
    ev_timer_again(loop, t);
    mx_config_unref(cfg);
}

mx_admin *mx_admin_start(mx_server *srv, struct ev_loop *loop, char **err)
{
    mx_admin *a = g_new0(mx_admin, 1);
    a->srv = srv;
    a->loop = loop;
    a->fd = -1;
    mx_config *cfg = mx_server_config(srv);

    if (cfg->admin.len) {
        a->fd = socket(cfg->admin.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (a->fd >= 0)
            setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (a->fd < 0 ||
            bind(a->fd, (const struct sockaddr *)&cfg->admin.sa, cfg->admin.len) < 0 ||
            listen(a->fd, 64) < 0) {
            *err = g_strdup_printf("admin.listen %s: %s", cfg->admin.text, g_strerror(errno));
            if (a->fd >= 0)
                close(a->fd);
            g_free(a);
            mx_config_unref(cfg);
            return NULL;
        }
        ev_io_init(&a->lsn, on_admin_accept, a->fd, EV_READ);
        a->lsn.data = a;
        ev_io_start(loop, &a->lsn);
    }
    /* Only /health reads the probe's result: without the endpoint, do not
     * knock on the backend every few seconds. */
    ev_timer_init(&a->probe_timer, on_probe_timer, 0., cfg->health_interval);
    a->probe_timer.data = a;
    if (cfg->admin.len)
        ev_timer_start(loop, &a->probe_timer);
    mx_config_unref(cfg);
    return a;
}

void mx_admin_stop(mx_admin *a)
{
    if (!a)
        return;
    if (a->fd >= 0) {
        ev_io_stop(a->loop, &a->lsn);
        close(a->fd);
    }
    ev_timer_stop(a->loop, &a->probe_timer);
    /* Probes and HTTP connections in flight die with the loop. */
    g_free(a);
}
