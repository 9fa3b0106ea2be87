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
 * Where the store is: with cluster.memcached set, mxgatectl talks to
 * memcached itself, with the cluster key (the same store a node builds,
 * without its threads). Without it the store is embedded in the running
 * node, so mxgatectl asks the node over HTTP at admin.listen (/v1/rep,
 * /v1/feed, /v1/limits; see admin.c).
 *
 * Feeds are read as they arrive and applied in batches of up to
 * FEED_BATCH updates, or fewer when the input pauses (an incremental feed
 * on a pipe). Against memcached a batch is spread over threads by key, so
 * two updates of one record keep their order. The reputation generation
 * is bumped after every FEED_BATCH updates, when the input has been idle
 * for a second, and at the end, so nodes drop their caches about once per
 * batch rather than once per line.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>

#include "config.h"
#include "feed.h"
#include "log.h"
#include "report.h"
#include "trace.h"
#include "policy.h"
#include "ratelimit.h"
#include "reputation.h"

#define FEED_BATCH 50000
#define READ_CHUNK (1 << 20)
/* what one POST /v1/feed carries: under the node's 16 MiB limit */
#define POST_MAX (15u << 20)
#define HTTP_CONNECT_MS 5000
#define HTTP_IO_SECONDS 120
#define THREADS_MAX 64
#define CTL_STORE_TIMEOUT_MS 2000

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

static void die_usage(const char *fmt, ...) G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN;
static void die_usage(const char *fmt, ...)
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

typedef struct opts {
    const char *config;
    GPtrArray *overrides;   /* char*, NULL-terminated when used */
    const char *ttl;
    const char *flag;       /* "block", "allow" or NULL */
    const char *reason;
    const char *format;
    const char *since;
    int threads;
    GPtrArray *args;        /* positionals */
} opts;

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

/* ---- where the store is ---- */

typedef struct ctl {
    mx_config *cfg;
    mx_policy *policy;      /* memcached: the store's owner */
    mx_store *store;        /* NULL: ask the node over HTTP */
    struct sockaddr_storage node;
    socklen_t node_len;
} ctl;

static int open_store(ctl *c, char **err)
{
    if (*c->cfg->cluster_memcached) {
        /* not on the mail path: a slow answer beats a line reported as
         * failed (and a breaker opened by a busy machine) */
        if (c->cfg->cluster_timeout < CTL_STORE_TIMEOUT_MS)
            c->cfg->cluster_timeout = CTL_STORE_TIMEOUT_MS;
        c->policy = mx_policy_new(c->cfg, err);
        if (!c->policy)
            return -1;
        c->store = mx_policy_store(c->policy);
        return 0;
    }
    if (!c->cfg->admin.len) {
        *err = g_strdup("cluster.memcached is empty, so the store is embedded in the node, "
                        "and admin.listen is empty, so the node cannot be reached: set one");
        return -1;
    }
    memcpy(&c->node, &c->cfg->admin.sa, sizeof(c->node));
    c->node_len = c->cfg->admin.len;
    /* a wildcard listener is reached on loopback */
    if (c->node.ss_family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&c->node;
        if (s->sin_addr.s_addr == htonl(INADDR_ANY))
            s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (c->node.ss_family == AF_INET6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&c->node;
        if (IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr))
            s->sin6_addr = in6addr_loopback;
    }
    return 0;
}

/* open_store, saying why it failed: 0, or the exit status 2. */
static int open_store_or_say(ctl *c)
{
    char *err = NULL;
    if (open_store(c, &err) == 0)
        return 0;
    fprintf(stderr, "mxgatectl: %s\n", err);
    g_free(err);
    return 2;
}

/* ---- HTTP to the node ---- */

typedef struct http_reply {
    int status;
    char *body;
    size_t len;
} http_reply;

static int send_all(int fd, const void *p, size_t n)
{
    const char *d = p;
    while (n > 0) {
        ssize_t w = send(fd, d, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request, HTTP/1.0, the reply read to its end. */
static int http_call(ctl *c, const char *method, const char *target, const void *body,
                     size_t len, http_reply *out, char **err)
{
    memset(out, 0, sizeof(*out));
    const char *where = c->cfg->admin.text;
    int fd = socket(c->node.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *err = g_strdup_printf("socket: %s", g_strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&c->node, c->node_len) < 0 && errno != EINPROGRESS) {
        *err = g_strdup_printf("cannot connect to the node at admin.listen %s: %s", where,
                               g_strerror(errno));
        close(fd);
        return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (poll(&p, 1, HTTP_CONNECT_MS) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 ||
        soerr) {
        *err = g_strdup_printf("cannot connect to the node at admin.listen %s: %s", where,
                               soerr ? g_strerror(soerr) : "timed out");
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = HTTP_IO_SECONDS};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    g_autofree char *head = g_strdup_printf(
        "%s %s HTTP/1.0\r\nHost: mxgate\r\nUser-Agent: mxgatectl/%s\r\n"
        "Content-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
        method, target, MX_VERSION, body ? "application/octet-stream" : "text/plain", len);
    if (send_all(fd, head, strlen(head)) < 0 || (len && send_all(fd, body, len) < 0)) {
        *err = g_strdup_printf("sending to the node at %s: %s", where, g_strerror(errno));
        close(fd);
        return -1;
    }
    GString *r = g_string_new(NULL);
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = g_strdup_printf("reading from the node at %s: %s", where, g_strerror(errno));
            close(fd);
            g_string_free(r, TRUE);
            return -1;
        }
        if (n == 0)
            break;
        g_string_append_len(r, buf, n);
    }
    close(fd);
    const char *sep = strstr(r->str, "\r\n\r\n");
    if (!g_str_has_prefix(r->str, "HTTP/1.") || r->len < 12 || !sep) {
        *err = g_strdup_printf("the node at %s sent no HTTP reply", where);
        g_string_free(r, TRUE);
        return -1;
    }
    out->status = atoi(r->str + 9);
    out->len = r->len - (size_t)(sep + 4 - r->str);
    out->body = g_strndup(sep + 4, out->len);
    g_string_free(r, TRUE);
    return 0;
}

static void query_add(GString *q, const char *name, const char *value)
{
    if (!value)
        return;
    g_autofree char *e = g_uri_escape_string(value, NULL, FALSE);
    g_string_append_printf(q, "%c%s=%s", strchr(q->str, '?') ? '&' : '?', name, e);
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

/* What the node answered to GET target, on stdout (200) or stderr. */
static int ask_node(ctl *c, GString *q)
{
    char *err = NULL;
    http_reply hr;
    int rc = http_call(c, "GET", q->str, NULL, 0, &hr, &err);
    if (rc < 0) {
        fprintf(stderr, "mxgatectl: %s\n", err);
        g_free(err);
        return 1;
    }
    fwrite(hr.body, 1, hr.len, hr.status == 200 ? stdout : stderr);
    g_free(hr.body);
    return hr.status == 200 ? 0 : 1;
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

/* ---- feed ---- */

typedef struct item {
    uint64_t number;
    mx_feed_update u;
    char *err;              /* a bad line, or what applying it gave */
} item;

typedef struct feed {
    ctl *c;
    mx_feed_reader *rd;
    const char *unit;
    const char *source;
    int threads;
    GArray *batch;          /* item */
    uint64_t applied, bad, unbumped;
    int failed;             /* the node refused a batch: stop */
} feed;

typedef struct part {
    feed *f;
    GArray *idx;            /* guint: this thread's items, in order */
    int64_t now;
} part;

/* Updates per multi-get. */
#define APPLY_CHUNK 512

static gpointer apply_part(gpointer data)
{
    part *p = data;
    item *items = (item *)(void *)p->f->batch->data;
    const mx_feed_update *u[APPLY_CHUNK];
    mx_store_rc rcs[APPLY_CHUNK];
    for (guint from = 0; from < p->idx->len; from += APPLY_CHUNK) {
        guint n = p->idx->len - from < APPLY_CHUNK ? p->idx->len - from : APPLY_CHUNK;
        for (guint i = 0; i < n; i++)
            u[i] = &items[g_array_index(p->idx, guint, from + i)].u;
        mx_feed_apply_many(p->f->c->store, u, n, p->now, p->f->source, rcs);
        for (guint i = 0; i < n; i++) {
            item *it = &items[g_array_index(p->idx, guint, from + i)];
            if (rcs[i] != MX_STORE_OK)
                it->err = g_strdup("store error (memcached unreachable or failing)");
        }
    }
    return NULL;
}

static void apply_store(feed *f)
{
    GArray *b = f->batch;
    item *items = (item *)(void *)b->data;
    int t = f->threads;
    if ((guint)t > b->len / 64 + 1)
        t = (int)(b->len / 64 + 1); /* few updates: no thread would pay for itself */
    part parts[THREADS_MAX];
    int64_t now = (int64_t)time(NULL);
    for (int i = 0; i < t; i++) {
        parts[i].f = f;
        parts[i].idx = g_array_new(FALSE, FALSE, sizeof(guint));
        parts[i].now = now;
    }
    /* by record, so the updates of one record stay in feed order */
    for (guint i = 0; i < b->len; i++) {
        if (items[i].err)
            continue;
        guint h = g_str_hash(items[i].u.value) * 31u + (guint)items[i].u.kind;
        g_array_append_val(parts[h % (guint)t].idx, i);
    }
    GThread *th[THREADS_MAX];
    for (int i = 1; i < t; i++)
        th[i] = g_thread_new("mxgatectl-feed", apply_part, &parts[i]);
    apply_part(&parts[0]);
    for (int i = 1; i < t; i++)
        g_thread_join(th[i]);
    for (int i = 0; i < t; i++)
        g_array_free(parts[i].idx, TRUE);
}

/* One POST of items [from, to) that parsed, as protobuf entries. */
static int post_part(feed *f, guint from, guint to)
{
    item *items = (item *)(void *)f->batch->data;
    GByteArray *body = g_byte_array_new();
    GArray *numbers = g_array_new(FALSE, FALSE, sizeof(guint));
    for (guint i = from; i < to; i++) {
        if (items[i].err)
            continue;
        mx_feed_encode_protobuf(&items[i].u, body);
        g_array_append_val(numbers, i);
    }
    int rc = 0;
    if (numbers->len == 0)
        goto out;
    GString *q = g_string_new("/v1/feed");
    query_add(q, "format", "protobuf");
    query_add(q, "source", f->source);
    http_reply hr;
    char *err = NULL;
    int tries = 0;
    for (;;) {
        if (http_call(f->c, "POST", q->str, body->data, body->len, &hr, &err) < 0) {
            fprintf(stderr, "mxgatectl: %s\n", err);
            g_free(err);
            rc = -1;
            break;
        }
        /* another feed holds the node's slots: wait for it */
        if (hr.status == 503 && g_str_has_prefix(hr.body, "busy") && ++tries < 60) {
            g_free(hr.body);
            g_usleep(G_USEC_PER_SEC);
            continue;
        }
        break;
    }
    g_string_free(q, TRUE);
    if (rc < 0)
        goto out;
    if (hr.status != 200 && !strstr(hr.body, "\napplied ") && !g_str_has_prefix(hr.body, "applied ")) {
        fprintf(stderr, "mxgatectl: the node answered %d: %s", hr.status, hr.body);
        g_free(hr.body);
        rc = -1;
        goto out;
    }
    /* "entry K: what" names the K-th entry of this body: give it back its line */
    gchar **lines = g_strsplit(hr.body, "\n", -1);
    guint64 listed = 0, node_bad = 0;
    for (int i = 0; lines[i]; i++) {
        const char *l = lines[i];
        guint64 k, a, b;
        char *end;
        if (g_str_has_prefix(l, "entry ")) {
            k = g_ascii_strtoull(l + 6, &end, 10);
            if (end != l + 6 && *end == ':' && k >= 1 && k <= numbers->len) {
                item *it = &items[g_array_index(numbers, guint, k - 1)];
                it->err = g_strdup(end[1] == ' ' ? end + 2 : end + 1);
                listed++;
                continue;
            }
        }
        if (sscanf(l, "applied %" SCNu64 ", bad %" SCNu64, &a, &b) == 2) {
            f->applied += a;
            node_bad = b;
            continue;
        }
        if (*l)
            fprintf(stderr, "%s\n", l);
    }
    g_strfreev(lines);
    g_free(hr.body);
    /* listed ones are counted when their lines are printed; the rest here */
    if (node_bad > listed)
        f->bad += node_bad - listed;
out:
    g_byte_array_unref(body);
    g_array_free(numbers, TRUE);
    return rc;
}

static void apply_node(feed *f)
{
    item *items = (item *)(void *)f->batch->data;
    guint from = 0;
    size_t bytes = 0;
    for (guint i = 0; i < f->batch->len && !f->failed; i++) {
        /* an entry is at most about MX_FEED_LINE_MAX bytes encoded */
        bytes += items[i].err ? 0 : strlen(items[i].u.value) + 32 +
                                        (items[i].u.reason ? strlen(items[i].u.reason) : 0);
        if (bytes >= POST_MAX) {
            if (post_part(f, from, i + 1) < 0)
                f->failed = 1;
            from = i + 1;
            bytes = 0;
        }
    }
    if (!f->failed && from < f->batch->len && post_part(f, from, f->batch->len) < 0)
        f->failed = 1;
}

static void bump(feed *f)
{
    if (!f->c->store || !f->unbumped)
        return;
    if (mx_rep_bump_generation(f->c->store) != MX_STORE_OK)
        fprintf(stderr, "mxgatectl: the generation could not be bumped: nodes see these "
                        "changes when their cache entries expire\n");
    f->unbumped = 0;
}

static void flush(feed *f)
{
    GArray *b = f->batch;
    if (b->len == 0)
        return;
    if (f->c->store) {
        apply_store(f);
    } else {
        apply_node(f);
    }
    item *items = (item *)(void *)b->data;
    uint64_t good = 0;
    for (guint i = 0; i < b->len; i++) {
        if (items[i].err) {
            fprintf(stderr, "%s %" PRIu64 ": %s\n", f->unit, items[i].number, items[i].err);
            f->bad++;
            g_free(items[i].err);
        } else {
            good++;
        }
        mx_feed_update_clear(&items[i].u);
    }
    if (f->c->store)
        f->applied += good; /* over HTTP, the node's summaries counted them */
    f->unbumped += good;
    g_array_set_size(b, 0);
    if (f->unbumped >= FEED_BATCH)
        bump(f);
}

static int cmd_feed(ctl *c, opts *o)
{
    if (o->args->len > 2)
        die_usage("feed: one FILE (or - for stdin); unexpected \"%s\"",
                  (char *)g_ptr_array_index(o->args, 2));
    if (o->ttl || o->flag || o->reason)
        die_usage("feed takes no --ttl, --block, --allow or --reason: they are in its lines");
    mx_feed_format fmt = MX_FEED_TEXT;
    if (o->format && strcmp(o->format, "protobuf") == 0)
        fmt = MX_FEED_PROTOBUF;
    else if (o->format && strcmp(o->format, "text") != 0)
        die_usage("--format: \"%s\" is neither text nor protobuf", o->format);
    const char *path = o->args->len > 1 ? g_ptr_array_index(o->args, 1) : "-";
    int fd = 0;
    if (strcmp(path, "-") != 0) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "mxgatectl: %s: %s\n", path, g_strerror(errno));
            return 2;
        }
    }
    char *err = NULL;
    if (open_store(c, &err) < 0) {
        fprintf(stderr, "mxgatectl: %s\n", err);
        g_free(err);
        if (fd > 0)
            close(fd);
        return 2;
    }
    g_autofree char *base = g_path_get_basename(path);
    g_autofree char *source = g_strdup_printf("feed:%s", strcmp(path, "-") ? base : "stdin");
    feed f = {
        .c = c,
        .rd = mx_feed_reader_new(fmt, 1),
        .source = source,
        .threads = o->threads ? o->threads : c->cfg->cluster_threads,
        .batch = g_array_new(FALSE, TRUE, sizeof(item)),
    };
    if (f.threads > THREADS_MAX)
        f.threads = THREADS_MAX;
    f.unit = mx_feed_reader_unit(f.rd);
    gint64 t0 = g_get_monotonic_time();
    char *buf = g_malloc(READ_CHUNK);
    int rc = 0;
    while (!f.failed) {
        item it;
        memset(&it, 0, sizeof(it));
        int r = mx_feed_reader_next(f.rd, &it.u, &it.number, &it.err);
        if (r == MX_FEED_UPDATE || r == MX_FEED_BAD) {
            g_array_append_val(f.batch, it);
            if (f.batch->len >= FEED_BATCH)
                flush(&f);
            continue;
        }
        if (r == MX_FEED_END)
            break;
        /* the reader wants more: apply what is pending if the input pauses */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int wait = f.batch->len ? 0 : f.unbumped ? 1000 : -1;
        int ready = poll(&p, 1, wait);
        if (ready == 0) {
            if (f.batch->len)
                flush(&f);
            else
                bump(&f); /* idle for a second: let the nodes see what came */
            continue;
        }
        if (ready < 0 && errno == EINTR)
            continue;
        ssize_t n = read(fd, buf, READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "mxgatectl: reading %s: %s\n", path, g_strerror(errno));
            rc = 1;
            break;
        }
        if (n == 0)
            mx_feed_reader_finish(f.rd);
        else
            mx_feed_reader_push(f.rd, buf, (size_t)n);
    }
    flush(&f);
    bump(&f);
    double ms = (double)(g_get_monotonic_time() - t0) / 1000.;
    printf("applied %" PRIu64 ", bad %" PRIu64 ", in %.0f ms (%.0f/s)\n", f.applied, f.bad, ms,
           ms > 0 ? (double)f.applied * 1000. / ms : 0.);
    if (f.failed)
        fprintf(stderr, "mxgatectl: stopped: the node did not take the feed; lines after the "
                        "last one reported may not be applied\n");
    g_free(buf);
    g_array_free(f.batch, TRUE);
    mx_feed_reader_free(f.rd);
    if (fd > 0)
        close(fd);
    return rc || f.bad || f.failed ? 1 : 0;
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
