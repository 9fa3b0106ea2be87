/*
 * report.c: the classes, the counters and the node's tally (see report.h).
 * Rendering is in report_render.c.
 */
#include <string.h>

#include "report.h"

static const char *const dir_names[MX_DIR__COUNT] = {"inbound", "outbound", "internal",
                                                     "relay-denied"};
static const char *const out_names[MX_OUT__COUNT] = {
    "delivered",          "rejected-malware", "rejected-reputation", "rejected-ratelimit",
    "rejected-relay",     "rejected-backend", "rejected-protocol",   "tempfailed"};
static const char *const unit_names[MX_UNIT__COUNT] = {"messages", "recipients"};

const char *mx_direction_name(mx_direction d) { return dir_names[d]; }
const char *mx_outcome_name(mx_outcome o) { return out_names[o]; }
const char *mx_unit_name(int unit) { return unit_names[unit]; }

int mx_report_format_parse(const char *s)
{
    static const char *const names[] = {"text", "json", "csv", "html"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

char *mx_report_key(int64_t hour, mx_direction d, mx_outcome o, int unit)
{
    return g_strdup_printf("stats:%lld:%s:%s:%c", (long long)hour, dir_names[d], out_names[o],
                           unit == MX_UNIT_MESSAGES ? 'm' : 'r');
}

#define CELLS ((size_t)MX_DIR__COUNT * MX_OUT__COUNT * MX_UNIT__COUNT)

mx_report *mx_report_new(int64_t now, int hours)
{
    mx_report *r = g_new0(mx_report, 1);
    r->hours = hours > 0 ? hours : 1;
    r->first_hour = now / 3600 - r->hours + 1;
    r->count = g_new0(uint64_t, (size_t)r->hours * CELLS);
    return r;
}

void mx_report_free(mx_report *r)
{
    if (!r)
        return;
    g_free(r->count);
    g_free(r);
}

#define READ_CHUNK 1024

void mx_report_read(mx_store *s, mx_report *r)
{
    g_strlcpy(r->store, s->ops->name, sizeof(r->store));
    size_t n = (size_t)r->hours * CELLS;
    char **keys = g_new(char *, READ_CHUNK);
    uint64_t *vals = g_new(uint64_t, READ_CHUNK);
    mx_store_rc *rcs = g_new(mx_store_rc, READ_CHUNK);
    for (size_t from = 0; from < n; from += READ_CHUNK) {
        size_t m = n - from < READ_CHUNK ? n - from : READ_CHUNK;
        for (size_t i = 0; i < m; i++) {
            size_t c = from + i;
            int u = (int)(c % MX_UNIT__COUNT);
            size_t rest = c / MX_UNIT__COUNT;
            mx_outcome o = (mx_outcome)(rest % MX_OUT__COUNT);
            rest /= MX_OUT__COUNT;
            mx_direction d = (mx_direction)(rest % MX_DIR__COUNT);
            int64_t h = r->first_hour + (int64_t)(rest / MX_DIR__COUNT);
            keys[i] = mx_report_key(h, d, o, u);
        }
        mx_store_counters(s, (const char *const *)keys, m, vals, rcs);
        for (size_t i = 0; i < m; i++) {
            if (rcs[i] == MX_STORE_OK)
                r->count[from + i] = vals[i];
            else if (rcs[i] == MX_STORE_ERROR)
                r->missing++;
            g_free(keys[i]);
        }
    }
    g_free(keys);
    g_free(vals);
    g_free(rcs);
}

void mx_report_produce(GString *out, mx_store *s, int hours, mx_report_format fmt, int64_t now)
{
    mx_report *r = mx_report_new(now, hours);
    mx_report_read(s, r);
    mx_report_render(out, r, fmt, now);
    mx_report_free(r);
}

int mx_report_parse_since(const char *s, int max_hours)
{
    char *end = NULL;
    guint64 n = g_ascii_strtoull(s, &end, 10);
    if (end == s || n == 0 || n > 100000)
        return -1;
    if (*end == 'd' && end[1] == 0)
        n *= 24;
    else if (!(*end == 0 || (*end == 'h' && end[1] == 0)))
        return -1;
    return n > (guint64)max_hours ? -1 : (int)n;
}

/* ---- the node's tally ---- */

struct mx_report_tally {
    GMutex lock;
    GHashTable *counts; /* key (mx_report_key) -> uint64_t* */
};

mx_report_tally *mx_report_tally_new(void)
{
    mx_report_tally *t = g_new0(mx_report_tally, 1);
    g_mutex_init(&t->lock);
    t->counts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    return t;
}

void mx_report_tally_free(mx_report_tally *t)
{
    if (!t)
        return;
    g_hash_table_destroy(t->counts);
    g_mutex_clear(&t->lock);
    g_free(t);
}

void mx_report_tally_add(mx_report_tally *t, int64_t now, mx_direction d, mx_outcome o, int unit,
                         uint64_t n)
{
    if (n == 0)
        return;
    char *k = mx_report_key(now / 3600, d, o, unit);
    g_mutex_lock(&t->lock);
    uint64_t *have = g_hash_table_lookup(t->counts, k);
    if (have) {
        *have += n;
        g_free(k);
    } else {
        uint64_t *v = g_new(uint64_t, 1);
        *v = n;
        g_hash_table_insert(t->counts, k, v);
    }
    g_mutex_unlock(&t->lock);
}

uint64_t mx_report_tally_flush(mx_report_tally *t, mx_store *s, int ttl)
{
    g_mutex_lock(&t->lock);
    GHashTable *batch = t->counts;
    t->counts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_mutex_unlock(&t->lock);
    guint n = g_hash_table_size(batch);
    uint64_t lost = 0;
    if (n) {
        mx_store_write *w = g_new0(mx_store_write, n);
        mx_store_rc *rcs = g_new(mx_store_rc, n);
        GHashTableIter it;
        gpointer k, v;
        size_t i = 0;
        g_hash_table_iter_init(&it, batch);
        while (g_hash_table_iter_next(&it, &k, &v))
            w[i++] = (mx_store_write){
                .op = MX_STORE_W_INCR, .key = k, .delta = *(uint64_t *)v, .ttl = ttl};
        mx_store_write_many(s, w, n, rcs);
        for (i = 0; i < n; i++)
            if (rcs[i] != MX_STORE_OK)
                lost += w[i].delta;
        g_free(w);
        g_free(rcs);
    }
    g_hash_table_destroy(batch);
    return lost;
}
