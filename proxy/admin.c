/*
 * admin.c: the HTTP responder, /health, /metrics and the backend probe
 * (see admin.h); the /v1 endpoints for mxgatectl are in admin_v1.c.
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

#include "admin_int.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"

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

/* Changes come from this host only: admin.listen also serves the load
 * balancer and the metrics scraper, which must not be able to allow-list
 * a sender. Loopback, or the very address the request came in on. */
int same_host(int fd)
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
void http_respond_len(http_conn *c, int code, const char *body, size_t len)
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

void http_respond(http_conn *c, int code, const char *body)
{
    http_respond_len(c, code, body, strlen(body));
}

void http_respond_printf(http_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *body = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    http_respond(c, code, body);
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
