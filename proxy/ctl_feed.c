/*
 * ctl_feed.c: mxgatectl feed: reputation updates from a file or stdin,
 * applied to memcached or posted to the node (see ctl_int.h).
 *
 * Feeds are read as they arrive and applied in batches of up to
 * FEED_BATCH updates, or fewer when the input pauses (an incremental feed
 * on a pipe). Against memcached a batch is spread over threads by key, so
 * two updates of one record keep their order. The reputation generation
 * is bumped after every FEED_BATCH updates, when the input has been idle
 * for a second, and at the end, so nodes drop their caches about once per
 * batch rather than once per line. Over HTTP a batch goes to the node as
 * protobuf, in POSTs of at most POST_MAX bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>

#include "ctl_int.h"
#include "feed.h"
#include "reputation.h"

#define FEED_BATCH 50000
#define READ_CHUNK (1 << 20)
/* what one POST /v1/feed carries: under the node's 16 MiB limit */
#define POST_MAX (15u << 20)

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

int cmd_feed(ctl *c, opts *o)
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
