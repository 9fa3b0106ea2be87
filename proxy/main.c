/*
 * main.c: command line, signals, and the process lifecycle.
 *
 *   mxgate [-c FILE] [-o section.key=value ...] [--check] [--version]
 *
 * Without -c, mxgate runs on its embedded defaults (listen on
 * 127.0.0.1:2525, relay to 127.0.0.1:10025). SIGTERM drains: stop accepting,
 * let in-flight sessions finish for smtp.drain_timeout, then close the rest
 * with 421 and exit 0. SIGHUP reloads the config for new sessions.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ev.h>
#include <glib.h>

#include "admin.h"
#include "clam.h"
#include "config.h"
#include "log.h"
#include "policy.h"
#include "server.h"

typedef struct app {
    struct ev_loop *loop;
    mx_server *srv;
    mx_admin *admin;
    mx_clam *clam;
    char *file;
    char **overrides;
    ev_signal sigterm, sigint, sighup;
    ev_timer drain_timer;
    ev_timer grace_timer;
    int draining;
} app;

static void clam_log(int level, const char *event, const char *msg)
{
    mx_log_msg(level, event, "%s", msg);
}

/* The scanner's settings, as views into cfg (the scanner copies them). */
static mx_clam_conf clam_conf(const mx_config *cfg)
{
    mx_clam_conf c = {
        .database = cfg->clamav_database,
        .tmpdir = cfg->clamav_tmpdir,
        .max_scan_size = cfg->clamav_max_scan_size,
        .max_file_size = cfg->clamav_max_file_size,
        .max_recursion = (uint32_t)cfg->clamav_max_recursion,
        .max_files = (uint32_t)cfg->clamav_max_files,
        .max_scan_time = (uint32_t)cfg->clamav_max_scan_time,
        .alert_exceeds_max = cfg->clamav_alert_exceeds_max,
        .scan_html = cfg->clamav_scan_html,
        .phishing_urls = cfg->clamav_phishing_urls,
        .canary_interval = cfg->clamav_canary_interval,
        .watch_interval = cfg->clamav_watch_interval,
        .log = clam_log,
    };
    return c;
}

/* The temp dir is made at start if missing (its parent must exist). */
static void make_tmpdir(const char *dir)
{
    if (mkdir(dir, 0700) == 0)
        mx_log_msg(MX_LOG_INFO, "clamav_tmpdir", "created %s", dir);
}

static void on_drain_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    app *a = t->data;
    mx_log_msg(MX_LOG_WARNING, "drain_timeout",
               "sessions still open after smtp.drain_timeout; closing them with 421");
    mx_server_force_close(a->srv);
}

static void start_drain(app *a)
{
    mx_config *cfg = mx_server_config(a->srv);
    mx_log_msg(MX_LOG_INFO, "drain", "no new sessions; waiting up to %d s for %d open ones",
               cfg->drain_timeout, atomic_load(&a->srv->sessions));
    ev_timer_init(&a->drain_timer, on_drain_timeout, cfg->drain_timeout, 0.);
    a->drain_timer.data = a;
    ev_timer_start(a->loop, &a->drain_timer);
    mx_config_unref(cfg);
    mx_server_drain(a->srv);
}

static void on_grace_over(struct ev_loop *loop, ev_timer *t, int revents)
{
    start_drain(t->data);
}

/*
 * SIGTERM: /health turns 503 at once, so the balancer stops sending new
 * sessions; for smtp.drain_grace seconds we still serve whatever it sends
 * meanwhile, then stop accepting and let open sessions finish.
 */
static void on_term(struct ev_loop *loop, ev_signal *w, int revents)
{
    app *a = w->data;
    if (a->draining) {
        if (w->signum == SIGINT) { /* a second ^C: do not wait */
            ev_timer_stop(loop, &a->grace_timer);
            if (!atomic_load(&a->srv->draining))
                start_drain(a);
            mx_server_force_close(a->srv);
        }
        return;
    }
    a->draining = 1;
    atomic_store(&a->srv->stopping, 1);
    mx_config *cfg = mx_server_config(a->srv);
    int grace = cfg->drain_grace;
    mx_config_unref(cfg);
    mx_log_msg(MX_LOG_INFO, "stopping", "signal %d: /health now 503; accepting for %d s more",
               w->signum, grace);
    if (grace > 0) {
        ev_timer_init(&a->grace_timer, on_grace_over, grace, 0.);
        a->grace_timer.data = a;
        ev_timer_start(loop, &a->grace_timer);
        return;
    }
    start_drain(a);
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents)
{
    app *a = w->data;
    char *err = NULL;
    mx_config *nc = mx_config_load(a->file, a->overrides, &err);
    if (!nc) {
        mx_log_msg(MX_LOG_ERROR, "reload_failed", "%s; keeping the running config", err);
        g_free(err);
        return;
    }
    mx_config *old = mx_server_config(a->srv);
    if (strcmp(old->listen, nc->listen) != 0 || old->workers != nc->workers ||
        strcmp(old->admin_listen, nc->admin_listen) != 0)
        mx_log_msg(MX_LOG_WARNING, "reload",
                   "smtp.listen, smtp.workers and admin.listen change only on restart");
    if (strcmp(old->cluster_memcached, nc->cluster_memcached) != 0 ||
        strcmp(old->cluster_key_file, nc->cluster_key_file) != 0 ||
        old->rep_decay != nc->rep_decay || old->rep_history != nc->rep_history)
        mx_log_msg(MX_LOG_WARNING, "reload",
                   "cluster.memcached, cluster.key_file, reputation.decay and "
                   "reputation.history change only on restart");
    if (old->clamav_enabled != nc->clamav_enabled || old->clamav_threads != nc->clamav_threads)
        mx_log_msg(MX_LOG_WARNING, "reload",
                   "clamav.enabled and clamav.threads change only on restart");
    mx_config_unref(old);
    mx_log_set_level(nc->log_level);
    if (a->clam) {
        /* The new engine is built on the scanner's thread; scans go on
         * with the old one until it is ready. */
        mx_clam_conf cc = clam_conf(nc);
        mx_clam_reload(a->clam, &cc);
    }
    mx_server_set_config(a->srv, nc);
    mx_log_msg(MX_LOG_INFO, "reload", "configuration reloaded for new sessions");
}

static void on_workers_done(struct ev_loop *loop, ev_async *w, int revents)
{
    app *a = w->data;
    if (atomic_load(&a->srv->workers_running) == 0)
        ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    g_autofree gchar *file = NULL;
    g_auto(GStrv) overrides = NULL;
    gboolean check = FALSE, version = FALSE, dump = FALSE;
    GOptionEntry entries[] = {
        {"config", 'c', 0, G_OPTION_ARG_FILENAME, &file, "configuration file (INI)", "FILE"},
        {"option", 'o', 0, G_OPTION_ARG_STRING_ARRAY, &overrides,
         "override one option, e.g. -o smtp.listen=127.0.0.1:25", "SECTION.KEY=VALUE"},
        {"check", 0, 0, G_OPTION_ARG_NONE, &check, "validate the configuration and exit", NULL},
        {"version", 0, 0, G_OPTION_ARG_NONE, &version, "print the version and exit", NULL},
        {"options", 0, 0, G_OPTION_ARG_NONE, &dump, "list every option with its default", NULL},
        {NULL, 0, 0, 0, NULL, NULL, NULL},
    };
    GError *ge = NULL;
    GOptionContext *ctx = g_option_context_new("- SMTP gateway");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &ge)) {
        fprintf(stderr, "mxgate: %s\n", ge->message);
        g_error_free(ge);
        g_option_context_free(ctx);
        return 2;
    }
    g_option_context_free(ctx);

    if (version) {
        printf("mxgate %s\n", MX_VERSION);
        return 0;
    }
    if (dump) {
        mx_config_dump_options(stdout);
        return 0;
    }

    char *err = NULL;
    mx_config *cfg = mx_config_load(file, overrides, &err);
    if (!cfg) {
        fprintf(stderr, "mxgate: %s\n", err);
        g_free(err);
        return 1;
    }
    if (check) {
        if (cfg->clamav_enabled) {
            make_tmpdir(cfg->clamav_tmpdir);
            mx_clam_conf cc = clam_conf(cfg);
            if (mx_clam_check(&cc, &err) < 0) {
                fprintf(stderr, "mxgate: %s\n", err);
                g_free(err);
                mx_config_unref(cfg);
                return 1;
            }
        }
        printf("mxgate: %s: configuration OK\n", file ? file : "(embedded defaults)");
        mx_config_unref(cfg);
        return 0;
    }
    mx_log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);

    app a = {0};
    a.loop = ev_default_loop(0);
    a.file = file;
    a.overrides = overrides;
    if (cfg->clamav_enabled) {
        /* One engine, loaded and checked before the first session. */
        make_tmpdir(cfg->clamav_tmpdir);
        mx_clam_conf cc = clam_conf(cfg);
        a.clam = mx_clam_new(&cc, &err);
        if (!a.clam) {
            fprintf(stderr, "mxgate: %s\n", err);
            mx_log_msg(MX_LOG_ERROR, "startup_failed", "%s", err);
            return 1;
        }
    } else {
        mx_log_msg(MX_LOG_WARNING, "clamav_disabled",
                   "clamav.enabled = false: messages are relayed without virus scanning");
    }
    mx_policy *policy = mx_policy_new(cfg, &err);
    if (!policy) {
        fprintf(stderr, "mxgate: %s\n", err);
        mx_log_msg(MX_LOG_ERROR, "startup_failed", "%s", err);
        return 1;
    }
    a.srv = mx_server_new(cfg, a.loop, &err);
    if (!a.srv) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    a.srv->policy = policy;
    mx_policy_start(policy);
    if (a.clam) {
        mx_server_set_scanner(a.srv, a.clam, cfg->clamav_threads, cfg->clamav_max_pending);
        mx_clam_start(a.clam);
    }
    a.admin = mx_admin_start(a.srv, a.loop, &err);
    if (!a.admin) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    ev_async_init(&a.srv->workers_done, on_workers_done);
    a.srv->workers_done.data = &a;
    ev_async_start(a.loop, &a.srv->workers_done);
    ev_signal_init(&a.sigterm, on_term, SIGTERM);
    ev_signal_init(&a.sigint, on_term, SIGINT);
    ev_signal_init(&a.sighup, on_hup, SIGHUP);
    a.sigterm.data = a.sigint.data = a.sighup.data = &a;
    ev_signal_start(a.loop, &a.sigterm);
    ev_signal_start(a.loop, &a.sigint);
    ev_signal_start(a.loop, &a.sighup);

    mx_server_start(a.srv);
    {
        GString *l = mx_log_begin(MX_LOG_INFO, "start");
        mx_log_kv(l, "version", MX_VERSION);
        mx_log_kv(l, "config", file ? file : "(embedded defaults)");
        mx_log_kv(l, "listen", cfg->listen);
        mx_log_kvi(l, "workers", a.srv->nworkers);
        mx_log_kv(l, "backend", cfg->backend_servers);
        mx_log_kv(l, "forward", (const char *[]){"xclient", "xforward", "proxy", "none"}[cfg->forward]);
        mx_log_kv(l, "admin", cfg->admin_listen);
        mx_log_kv(l, "store", *cfg->cluster_memcached ? cfg->cluster_memcached : "embedded");
        mx_log_kvi(l, "ratelimits", cfg->nrules);
        mx_log_end(l);
    }
    mx_config_unref(cfg);

    ev_run(a.loop, 0);

    mx_admin_stop(a.admin);
    mx_server_join_free(a.srv);
    mx_policy_free(policy);
    mx_clam_free(a.clam); /* after the scan pool: no scan still holds the engine */
    mx_log_msg(MX_LOG_INFO, "stop", "all sessions finished");
    return 0;
}
