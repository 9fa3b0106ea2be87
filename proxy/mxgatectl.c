/*
 * mxgatectl.c: the operator's tool for reputation records, feeds and rate
 * limit counters.
 *
 *   mxgatectl [-c FILE] [-o section.key=value ...] rep get|set|add|del|block|allow ...
 *   mxgatectl [-c FILE] feed [--format text|protobuf] [--threads N] [FILE|-]
 *   mxgatectl [-c FILE] limits KEY
 *   mxgatectl [-c FILE] report [--since 24h|7d] [--format text|json|csv|html]
 *   mxgatectl [-c FILE] explain ID [--format text|json]
 *
 * This file has the command line, its dispatch and the small commands (rep,
 * limits, report, explain). Where the store is (memcached, or the node over
 * HTTP at admin.listen) is ctl_http.c; the feed command is ctl_feed.c.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>

#include "config.h"
#include "ctl_int.h"
#include "feed.h"
#include "log.h"
#include "report.h"
#include "trace.h"
#include "policy.h"
#include "reputation.h"

static const char usage_text[] =
    "usage: mxgatectl [-c FILE] [-o section.key=value]... COMMAND\n"
    "\n"
    "commands:\n"
    "  rep get KIND VALUE\n"
    "  rep set KIND VALUE SCORE [--ttl S] [--block|--allow] [--reason TEXT]\n"
    "  rep add KIND VALUE SCORE [--ttl S] [--block|--allow] [--reason TEXT]\n"
    "  rep block|allow KIND VALUE [--ttl S] [--reason TEXT]\n"
    "  rep del KIND VALUE\n"
    "  feed [--format text|protobuf] [--threads N] [FILE|-]\n"
    "  limits KEY\n"
    "  report [--since 24h|7d|HOURS] [--format text|json|csv|html]\n"
    "  explain ID [--format text|json] [--json]\n"
    "\n"
    "KIND is ip, net, domain or sender; a net is ADDR/16 or /24 (IPv6: /48 or /64).\n"
    "SCORE is an integer from -1000000 to 1000000 (negative is bad). --ttl S makes\n"
    "the record expire after S seconds (0: never). set and add keep block/allow\n"
    "unless --block or --allow is given; block and allow keep the score.\n"
    "\n"
    "A text feed holds one update per line ('#' starts a comment line):\n"
    "  KIND VALUE set|add SCORE [TTL]\n"
    "  KIND VALUE del|block|allow [TTL]\n"
    "A protobuf feed is length-delimited FeedUpdate messages (proto/mxgate.proto).\n"
    "Bad lines are reported on stderr as 'line N: what' and the others applied.\n"
    "\n"
    "limits KEY shows the counters of every rule that counts KEY: an IP address\n"
    "(client_ip, client_net), an address (sender, recipient and their domains) or\n"
    "a domain (sender_domain, recipient_domain); helo rules count any KEY.\n"
    "\n"
    "report shows the mail the cluster handled (default: the last 24 hours), by\n"
    "direction (inbound, outbound, internal, relay-denied) and outcome, in\n"
    "messages and in recipients, with a timeline by hour. html is a page of its\n"
    "own (no scripts, nothing fetched). explain ID prints the decision record of\n"
    "a transaction: ID is the one in a reply's \"[id ...]\" or a log line's trace=.\n"
    "\n"
    "With cluster.memcached set, mxgatectl uses memcached directly (cluster.key_file\n"
    "must be readable); otherwise it asks the node at admin.listen.\n"
    "Exit status: 0 done; 1 bad lines, or the store or node failed; 2 usage or\n"
    "configuration error.\n";

void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mxgatectl: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(mxgatectl --help for usage)\n", stderr);
    exit(2);
}

/* ---- the command line ---- */

/* An option's value: "--name=V" or the next argument. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) == 0 && a[n] == '=')
        return a + n + 1;
    if (*i + 1 >= argc)
        die_usage("%s needs a value", name);
    return argv[++*i];
}

static int is_opt(const char *a, const char *name)
{
    size_t n = strlen(name);
    return strncmp(a, name, n) == 0 && (a[n] == 0 || a[n] == '=');
}

static void parse_args(int argc, char **argv, opts *o)
{
    o->overrides = g_ptr_array_new();
    o->args = g_ptr_array_new();
    int positional_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        /* "-" is stdin, and "-50" is a score, not an option */
        if (positional_only || a[0] != '-' || a[1] == 0 || g_ascii_isdigit(a[1])) {
            g_ptr_array_add(o->args, (gpointer)a);
        } else if (strcmp(a, "--") == 0) {
            positional_only = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        } else if (strcmp(a, "-c") == 0 || is_opt(a, "--config")) {
            o->config = opt_value(argc, argv, &i, a[1] == 'c' ? "-c" : "--config");
        } else if (strcmp(a, "-o") == 0) {
            g_ptr_array_add(o->overrides, (gpointer)opt_value(argc, argv, &i, "-o"));
        } else if (is_opt(a, "--ttl")) {
            o->ttl = opt_value(argc, argv, &i, "--ttl");
        } else if (strcmp(a, "--block") == 0 || strcmp(a, "--allow") == 0) {
            if (o->flag && strcmp(o->flag, a + 2) != 0)
                die_usage("--block and --allow exclude each other");
            o->flag = a + 2;
        } else if (is_opt(a, "--reason")) {
            o->reason = opt_value(argc, argv, &i, "--reason");
        } else if (is_opt(a, "--format")) {
            o->format = opt_value(argc, argv, &i, "--format");
        } else if (strcmp(a, "--json") == 0) {
            o->format = "json";
        } else if (is_opt(a, "--since")) {
            o->since = opt_value(argc, argv, &i, "--since");
        } else if (is_opt(a, "--threads")) {
            const char *v = opt_value(argc, argv, &i, "--threads");
            guint64 n;
            if (!g_ascii_string_to_unsigned(v, 10, 1, THREADS_MAX, &n, NULL))
                die_usage("--threads: \"%s\" is not a number from 1 to %d", v, THREADS_MAX);
            o->threads = (int)n;
        } else {
            die_usage("unknown option %s", a);
        }
    }
    g_ptr_array_add(o->overrides, NULL);
}

/* ---- rep ---- */

static int cmd_rep(ctl *c, opts *o)
{
    if (o->args->len < 2)
        die_usage("rep: which? get, set, add, del, block or allow");
    const char *what = g_ptr_array_index(o->args, 1);
    int get = strcmp(what, "get") == 0;
    int op = get ? -1 : mx_feed_op_parse(what);
    if (!get && op < 0)
        die_usage("rep %s: not one of get, set, add, del, block, allow", what);
    int scored = op == MX_FEED_SET || op == MX_FEED_ADD;
    guint want = 4 + (scored ? 1 : 0);
    if (o->args->len < 3)
        die_usage("rep %s: KIND missing (ip, net, domain or sender)", what);
    if (o->args->len < 4)
        die_usage("rep %s: VALUE missing", what);
    if (scored && o->args->len < 5)
        die_usage("rep %s: SCORE missing (an integer from %d to %d)", what, -MX_FEED_SCORE_MAX,
                  MX_FEED_SCORE_MAX);
    if (o->args->len > want)
        die_usage("rep %s: unexpected \"%s\"", what, (char *)g_ptr_array_index(o->args, want));
    const char *kind = g_ptr_array_index(o->args, 2);
    const char *value = g_ptr_array_index(o->args, 3);
    const char *score = scored ? g_ptr_array_index(o->args, 4) : NULL;
    if (get && (o->ttl || o->flag || o->reason))
        die_usage("rep get takes no --ttl, --block, --allow or --reason");
    /* checked here whatever the store, so both ways give the same errors */
    mx_feed_update u;
    char *err = NULL;
    if (mx_feed_update_build(&u, get ? "del" : what, kind, value, score, get ? NULL : o->ttl,
                             get ? NULL : o->flag, get ? NULL : o->reason, &err) < 0)
        die_usage("rep %s: %s", what, err);
    if (o->format)
        die_usage("rep takes no --format");

    char *oerr = NULL;
    if (open_store(c, &oerr) < 0) {
        fprintf(stderr, "mxgatectl: %s\n", oerr);
        g_free(oerr);
        mx_feed_update_clear(&u);
        return 2;
    }
    int rc = 0;
    int64_t now = (int64_t)time(NULL);
    if (c->store) {
        if (!get) {
            if (mx_feed_apply(c->store, &u, now, "mxgatectl") != MX_STORE_OK) {
                fprintf(stderr, "mxgatectl: store error: memcached (%s) unreachable or failing; "
                                "nothing changed\n", c->cfg->cluster_memcached);
                mx_feed_update_clear(&u);
                return 1;
            }
            if (mx_rep_bump_generation(c->store) != MX_STORE_OK)
                fprintf(stderr, "mxgatectl: changed, but the generation could not be bumped: "
                                "nodes see the change when their cache entry expires\n");
        }
        mx_rep r;
        mx_rep_history h;
        if (mx_rep_read(c->store, u.kind, u.value, now, c->cfg->rep_decay, &r) != MX_STORE_OK ||
            mx_rep_read_history(c->store, u.kind, u.value, c->cfg->rep_history, &h) !=
                MX_STORE_OK) {
            fprintf(stderr, "mxgatectl: store error: memcached (%s) unreachable or failing\n",
                    c->cfg->cluster_memcached);
            rc = 1;
        } else {
            GString *s = g_string_new(NULL);
            mx_feed_describe_rep(s, u.kind, u.value, &r, &h, now);
            fputs(s->str, stdout);
            g_string_free(s, TRUE);
        }
    } else {
        GString *q = g_string_new("/v1/rep");
        query_add(q, "kind", mx_rep_kind_name(u.kind));
        query_add(q, "value", u.value);
        if (!get) {
            query_add(q, "op", what);
            query_add(q, "score", score);
            query_add(q, "ttl", o->ttl);
            query_add(q, "flag", o->flag);
            query_add(q, "reason", o->reason);
            query_add(q, "source", "mxgatectl");
        }
        http_reply hr;
        if (http_call(c, get ? "GET" : "POST", q->str, NULL, 0, &hr, &err) < 0) {
            fprintf(stderr, "mxgatectl: %s\n", err);
            g_free(err);
            rc = 1;
        } else {
            fputs(hr.body, hr.status == 200 ? stdout : stderr);
            rc = hr.status == 200 ? 0 : 1;
            g_free(hr.body);
        }
        g_string_free(q, TRUE);
    }
    mx_feed_update_clear(&u);
    return rc;
}

/* ---- limits ---- */

static int cmd_limits(ctl *c, opts *o)
{
    if (o->args->len < 2)
        die_usage("limits: KEY missing (an IP address, an address or a domain)");
    if (o->args->len > 2)
        die_usage("limits: unexpected \"%s\"", (char *)g_ptr_array_index(o->args, 2));
    if (o->ttl || o->flag || o->reason || o->format)
        die_usage("limits takes no options");
    const char *key = g_ptr_array_index(o->args, 1);
    if (open_store_or_say(c))
        return 2;
    if (c->store) {
        GString *s = g_string_new(NULL);
        int n = mx_feed_describe_limits(s, c->store, c->cfg->rules, c->cfg->nrules, key,
                                        (int64_t)time(NULL));
        fputs(s->str, n < 0 ? stderr : stdout);
        g_string_free(s, TRUE);
        return n < 0 ? 1 : 0;
    }
    GString *q = g_string_new("/v1/limits");
    query_add(q, "key", key);
    int rc = ask_node(c, q);
    g_string_free(q, TRUE);
    return rc;
}

/* ---- report and explain ---- */

static int cmd_report(ctl *c, opts *o)
{
    if (o->args->len > 1)
        die_usage("report: unexpected \"%s\"", (char *)g_ptr_array_index(o->args, 1));
    if (o->ttl || o->flag || o->reason)
        die_usage("report takes --since and --format");
    int fmt = mx_report_format_parse(o->format ? o->format : "text");
    if (fmt < 0)
        die_usage("report: --format %s: expected text, json, csv or html", o->format);
    int max = c->cfg->report_days * 24;
    int hours = mx_report_parse_since(o->since ? o->since : "24h", max);
    if (hours < 0)
        die_usage("report: --since %s: expected HOURS, Nh or Nd, at most report.days (%d days)",
                  o->since, c->cfg->report_days);
    if (open_store_or_say(c))
        return 2;
    if (c->store) {
        GString *out = g_string_new(NULL);
        mx_report_produce(out, c->store, hours, (mx_report_format)fmt, (int64_t)time(NULL));
        fwrite(out->str, 1, out->len, stdout);
        g_string_free(out, TRUE);
        return 0;
    }
    GString *q = g_string_new("/v1/report");
    g_autofree char *h = g_strdup_printf("%d", hours);
    query_add(q, "hours", h);
    query_add(q, "format", o->format ? o->format : "text");
    int rc = ask_node(c, q);
    g_string_free(q, TRUE);
    return rc;
}

static int cmd_explain(ctl *c, opts *o)
{
    if (o->args->len < 2)
        die_usage("explain: ID missing (from a reply's \"[id ...]\" or a log line's trace=)");
    if (o->args->len > 2)
        die_usage("explain: unexpected \"%s\"", (char *)g_ptr_array_index(o->args, 2));
    if (o->ttl || o->flag || o->reason || o->since)
        die_usage("explain takes --format text|json");
    const char *fmt = o->format ? o->format : "text";
    if (strcmp(fmt, "text") != 0 && strcmp(fmt, "json") != 0)
        die_usage("explain: --format %s: expected text or json", fmt);
    const char *id = g_ptr_array_index(o->args, 1);
    if (open_store_or_say(c))
        return 2;
    if (c->store) {
        GString *out = g_string_new(NULL);
        char *err = NULL;
        int r = mx_trace_explain(out, c->store, id, fmt[0] == 'j', (int64_t)time(NULL), &err);
        if (r < 0) {
            fprintf(stderr, "mxgatectl: %s\n", err);
            g_free(err);
        } else {
            fwrite(out->str, 1, out->len, stdout);
        }
        g_string_free(out, TRUE);
        return r < 0 ? 1 : 0;
    }
    GString *q = g_string_new("/v1/explain");
    query_add(q, "id", id);
    query_add(q, "format", fmt);
    int rc = ask_node(c, q);
    g_string_free(q, TRUE);
    return rc;
}

int main(int argc, char **argv)
{
    opts o = {0};
    parse_args(argc, argv, &o);
    static const char *const commands[] = {"rep", "feed", "limits", "report", "explain", NULL};
    if (o.args->len == 0)
        die_usage("a command is needed: rep, feed, limits, report or explain");
    const char *cmd = g_ptr_array_index(o.args, 0);
    if (!g_strv_contains(commands, cmd))
        die_usage("unknown command \"%s\": rep, feed, limits, report or explain", cmd);
    if (strcmp(cmd, "feed") != 0 && o.threads)
        die_usage("--threads is for feed");
    if (strcmp(cmd, "report") != 0 && o.since)
        die_usage("--since is for report");

    mx_log_set_level(MX_LOG_WARNING);
    char *err = NULL;
    ctl c = {0};
    c.cfg = mx_config_load(o.config, (char **)o.overrides->pdata, &err);
    if (!c.cfg) {
        fprintf(stderr, "mxgatectl: %s\n", err);
        g_free(err);
        return 2;
    }
    int rc;
    if (strcmp(cmd, "rep") == 0)
        rc = cmd_rep(&c, &o);
    else if (strcmp(cmd, "feed") == 0)
        rc = cmd_feed(&c, &o);
    else if (strcmp(cmd, "report") == 0)
        rc = cmd_report(&c, &o);
    else if (strcmp(cmd, "explain") == 0)
        rc = cmd_explain(&c, &o);
    else
        rc = cmd_limits(&c, &o);
    fflush(stdout);
    mx_policy_free(c.policy);
    mx_config_unref(c.cfg);
    g_ptr_array_free(o.overrides, TRUE);
    g_ptr_array_free(o.args, TRUE);
    return rc;
}
