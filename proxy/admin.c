/*
 * admin.c: /health, /metrics and the backend probe (see admin.h).
 *
 * A deliberately small HTTP/1.0 responder: one request per connection,
 * bounded request size and time. It is for a load balancer's health check
 * and a metrics scraper on a management network, not for the internet.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "admin.h"
#include "policy.h"
#include "log.h"

#define REQ_MAX 2048

struct mx_admin {
    mx_server *srv;
    struct ev_loop *loop;
    int fd;
    ev_io lsn;
    ev_timer probe_timer;
    int probing;       /* probes in flight */
    int probe_up;      /* some backend answered 220 in this round */
};

typedef struct http_conn {
    mx_admin *a;
    int fd;
    ev_io io;
    ev_timer timer;
    char req[REQ_MAX];
    size_t len;
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
    close(c->fd);
    g_free(c);
}

static void http_respond(http_conn *c, int code, const char *body)
{
    g_autofree char *resp = g_strdup_printf(
        "HTTP/1.0 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: %zu\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n%s",
        code, code == 200 ? "OK" : code == 503 ? "Service Unavailable" : code == 404 ? "Not Found" : "Bad Request",
        strlen(body), body);
    /* Small response into an empty socket buffer: one send suffices; if
     * not, the client sees a short response, which is its problem. */
    ssize_t w = send(c->fd, resp, strlen(resp), MSG_NOSIGNAL);
    (void)w;
    http_close(c);
}

static void handle_request(http_conn *c)
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
        g_autofree char *body = g_strdup_printf(
            "# TYPE mxgate_sessions gauge\nmxgate_sessions %d\n"
            "# TYPE mxgate_messages_total counter\n"
            "mxgate_messages_total{outcome=\"accepted\"} %llu\n"
            "mxgate_messages_total{outcome=\"rejected\"} %llu\n"
            "mxgate_messages_total{outcome=\"tempfail\"} %llu\n"
            "# TYPE mxgate_backend_up gauge\nmxgate_backend_up %d\n"
            "# TYPE mxgate_draining gauge\nmxgate_draining %d\n"
            "# TYPE mxgate_spool_bytes gauge\nmxgate_spool_bytes %lld\n",
            atomic_load(&srv->sessions),
            (unsigned long long)atomic_load(&srv->messages_accepted),
            (unsigned long long)atomic_load(&srv->messages_rejected),
            (unsigned long long)atomic_load(&srv->messages_tempfailed),
            atomic_load(&srv->backend_up), atomic_load(&srv->draining),
            (long long)atomic_load(&srv->spool.used));
        GString *m = g_string_new(body);
        if (srv->policy)
            mx_policy_metrics(srv->policy, m);
        if (srv->clam) {
            mx_clam_status cs;
            mx_clam_get_status(srv->clam, &cs);
            g_string_append_printf(
                m,
                "# HELP mxgate_scanner_up 1 when the temp dir is usable and the last EICAR canary was detected.\n"
                "# TYPE mxgate_scanner_up gauge\nmxgate_scanner_up %d\n"
                "# HELP mxgate_scanner_info The engine and signature version in use.\n"
                "# TYPE mxgate_scanner_info gauge\n"
                "mxgate_scanner_info{engine=\"%s\",db_version=\"%s\"} 1\n"
                "# TYPE mxgate_scanner_signatures gauge\nmxgate_scanner_signatures %u\n"
                "# TYPE mxgate_scanner_loaded_timestamp_seconds gauge\n"
                "mxgate_scanner_loaded_timestamp_seconds %lld\n"
                "# TYPE mxgate_scans_total counter\n"
                "mxgate_scans_total{verdict=\"clean\"} %llu\n"
                "mxgate_scans_total{verdict=\"infected\"} %llu\n"
                "mxgate_scans_total{verdict=\"error\"} %llu\n"
                "# TYPE mxgate_scanner_reloads_total counter\n"
                "mxgate_scanner_reloads_total{result=\"ok\"} %llu\n"
                "mxgate_scanner_reloads_total{result=\"failed\"} %llu\n"
                "# TYPE mxgate_scanner_canaries_total counter\n"
                "mxgate_scanner_canaries_total{result=\"detected\"} %llu\n"
                "mxgate_scanner_canaries_total{result=\"failed\"} %llu\n"
                "# TYPE mxgate_scan_queue gauge\nmxgate_scan_queue %d\n",
                cs.healthy, cs.engine, cs.db_version, cs.signatures, (long long)cs.loaded_at,
                (unsigned long long)cs.clean, (unsigned long long)cs.infected,
                (unsigned long long)cs.errors, (unsigned long long)cs.reloads,
                (unsigned long long)cs.reload_failures,
                (unsigned long long)(cs.canaries - cs.canary_failures),
                (unsigned long long)cs.canary_failures,
                srv->scan_pool ? mx_offload_pending(srv->scan_pool) : 0);
        }
        http_respond(c, 200, m->str);
        g_string_free(m, TRUE);
        return;
    }
    http_respond(c, 404, "not found\n");
}

static void on_http_read(struct ev_loop *loop, ev_io *w, int revents)
{
    http_conn *c = w->data;
    ssize_t n = recv(c->fd, c->req + c->len, REQ_MAX - 1 - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        http_close(c);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n")) {
        handle_request(c);
        return;
    }
    if (c->len >= REQ_MAX - 1)
        http_respond(c, 400, "request too large\n");
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
        ev_timer_init(&c->timer, on_http_timeout, 5., 0.);
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
