/*
 * admin_v1.c: the endpoints mxgatectl uses when the store is embedded in
 * the node: /v1/rep, /v1/limits, /v1/feed, /v1/report, /v1/explain.
 *
 * They work on the node's embedded store only (a memcached store would
 * block the admin loop; mxgatectl reaches memcached itself). Changes
 * (POST) are taken from this host only; a feed is applied a slice per
 * turn of the loop, so /health keeps answering.
 */
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include "admin_int.h"
#include "log.h"
#include "policy.h"
#include "report.h"
#include "trace.h"

/* Updates applied per turn of the loop: the embedded store never blocks,
 * but a 16 MiB feed would hold /health and signals for a second or more. */
#define FEED_SLICE 2000
/* Bad lines listed in one reply; the summary counts them all. */
#define FEED_ERRORS_MAX 10000

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

/* GET /v1/rep reads a record; POST changes it (same handler). */
static void post_rep(http_conn *c, const char *target) { get_rep(c, target, 1); }
static void read_rep(http_conn *c, const char *target) { get_rep(c, target, 0); }

static const struct route {
    const char *path;
    void (*get)(http_conn *c, const char *target);  /* NULL: not allowed */
    void (*post)(http_conn *c, const char *target);
    const char *allowed;                             /* for the 405 */
} routes[] = {
    {"/v1/rep", read_rep, post_rep, "GET or POST /v1/rep\n"},
    {"/v1/limits", get_limits, NULL, "GET /v1/limits\n"},
    {"/v1/report", get_report, NULL, "GET /v1/report\n"},
    {"/v1/explain", get_explain, NULL, "GET /v1/explain\n"},
    {"/v1/feed", NULL, post_feed, "POST /v1/feed\n"},
};

void handle_v1(http_conn *c, const char *method, const char *target)
{
    size_t plen = strcspn(target, "?");
    int post = strcmp(method, "POST") == 0;
    int get = strcmp(method, "GET") == 0;
    if (post && !same_host(c->fd)) {
        http_respond(c, 403, "changes are accepted from this host only\n");
        return;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(routes); i++) {
        const struct route *r = &routes[i];
        if (strlen(r->path) != plen || strncmp(target, r->path, plen) != 0)
            continue;
        void (*h)(http_conn *, const char *) = get ? r->get : post ? r->post : NULL;
        if (h)
            h(c, target);
        else
            http_respond(c, 405, r->allowed);
        return;
    }
    http_respond(c, 404, "not found\n");
}

