/*
 * store_embedded.c: the in-process store (see store.h).
 *
 * One mutex over one hash table: the embedded store serves a single node,
 * where contention is bounded by the worker count. Expired entries are
 * removed when touched and by a sweep once the writes since the last one
 * reach a quarter of the entries (at least 1024), so a sweep costs a few
 * entries per write and memory follows the live key set. With a size
 * limit (mx_store_embedded_set_limit), the oldest entries go first when
 * the estimate (keys, values, a fixed overhead each) passes it, as
 * memcached evicts when its memory is full.
 */
#include <string.h>

#include "store.h"

typedef struct entry {
    GBytes *val;      /* NULL for a counter */
    uint64_t counter;
    int64_t expires;  /* seconds on the store clock; 0 = never */
    uint64_t seq;     /* when it was written: its place in the age queue */
    size_t size;      /* what it counts for in bytes */
    size_t *bytes;    /* the store's total, which freeing it lowers */
} entry;

#define ENTRY_OVERHEAD 96 /* hash node, entry, key and value headers */

typedef struct aged {
    char *key;
    uint64_t seq;
} aged;

typedef struct embedded {
    mx_store base;
    GMutex lock;
    GHashTable *map;  /* char* -> entry* */
    int64_t (*clock)(void);
    unsigned writes;  /* since the last sweep */
    size_t bytes, max_bytes; /* max_bytes 0: no limit */
    GQueue age;       /* aged*, oldest first; stale when the key was rewritten */
    uint64_t seq;
    uint64_t evicted;
} embedded;

static int64_t default_clock(void) { return g_get_monotonic_time() / G_USEC_PER_SEC; }

static void entry_free(gpointer p)
{
    entry *e = p;
    *e->bytes -= e->size;
    if (e->val)
        g_bytes_unref(e->val);
    g_free(e);
}

static void aged_free(gpointer p)
{
    aged *a = p;
    g_free(a->key);
    g_free(a);
}

/* Is a still the key's current entry? */
static int aged_current(embedded *s, const aged *a)
{
    entry *e = g_hash_table_lookup(s->map, a->key);
    return e && e->seq == a->seq;
}

/* Keep e under key (replacing what was there), counted and queued. */
static void put(embedded *s, const char *key, entry *e)
{
    e->seq = ++s->seq;
    e->size = strlen(key) + (e->val ? g_bytes_get_size(e->val) : 0) + ENTRY_OVERHEAD;
    e->bytes = &s->bytes;
    s->bytes += e->size;
    g_hash_table_replace(s->map, g_strdup(key), e);
    if (!s->max_bytes)
        return;
    aged *a = g_new(aged, 1);
    a->key = g_strdup(key);
    a->seq = e->seq;
    g_queue_push_tail(&s->age, a);
    /* the oldest go first */
    while (s->bytes > s->max_bytes && !g_queue_is_empty(&s->age)) {
        aged *old = g_queue_pop_head(&s->age);
        if (aged_current(s, old) && old->seq != e->seq) {
            g_hash_table_remove(s->map, old->key);
            s->evicted++;
        }
        aged_free(old);
    }
    /* rewritten keys leave stale places behind: drop them now and then */
    if (s->age.length > 2 * g_hash_table_size(s->map) + 1024) {
        GQueue keep = G_QUEUE_INIT;
        aged *a2;
        while ((a2 = g_queue_pop_head(&s->age)) != NULL) {
            if (aged_current(s, a2))
                g_queue_push_tail(&keep, a2);
            else
                aged_free(a2);
        }
        s->age = keep;
    }
}

static entry *lookup(embedded *s, const char *key)
{
    entry *e = g_hash_table_lookup(s->map, key);
    if (e && e->expires && e->expires <= s->clock()) {
        g_hash_table_remove(s->map, key);
        return NULL;
    }
    return e;
}

static gboolean expired(gpointer k, gpointer v, gpointer now)
{
    entry *e = v;
    return e->expires && e->expires <= *(int64_t *)now;
}

static void after_write(embedded *s)
{
    guint n = g_hash_table_size(s->map);
    if (++s->writes >= 1024 && s->writes >= n / 4) {
        s->writes = 0;
        int64_t now = s->clock();
        g_hash_table_foreach_remove(s->map, expired, &now);
    }
}

static mx_store_rc emb_get(mx_store *base, const char *key, GBytes **val)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    entry *e = lookup(s, key);
    mx_store_rc rc = MX_STORE_NOT_FOUND;
    if (e) {
        if (e->val) {
            *val = g_bytes_ref(e->val);
        } else {
            char num[24];
            int n = g_snprintf(num, sizeof(num), "%" G_GUINT64_FORMAT, e->counter);
            *val = g_bytes_new(num, (gsize)n);
        }
        rc = MX_STORE_OK;
    }
    g_mutex_unlock(&s->lock);
    return rc;
}

/* set, or add (only when absent: NOT_FOUND when the key exists) */
static mx_store_rc emb_store(mx_store *base, const char *key, const void *val, size_t len,
                             int ttl, int add)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    if (add && lookup(s, key)) {
        g_mutex_unlock(&s->lock);
        return MX_STORE_NOT_FOUND;
    }
    entry *e = g_new0(entry, 1);
    e->val = g_bytes_new(val, len);
    e->expires = ttl > 0 ? s->clock() + ttl : 0;
    put(s, key, e);
    after_write(s);
    g_mutex_unlock(&s->lock);
    return MX_STORE_OK;
}

static mx_store_rc emb_set(mx_store *base, const char *key, const void *val, size_t len, int ttl)
{
    return emb_store(base, key, val, len, ttl, 0);
}

static mx_store_rc emb_add(mx_store *base, const char *key, const void *val, size_t len, int ttl)
{
    return emb_store(base, key, val, len, ttl, 1);
}

static mx_store_rc emb_incr(mx_store *base, const char *key, uint64_t delta, int ttl,
                            uint64_t *now)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    entry *e = lookup(s, key);
    if (e && e->val) {
        /* memcached semantics: incr on a non-number fails */
        g_mutex_unlock(&s->lock);
        return MX_STORE_ERROR;
    }
    if (!e) {
        e = g_new0(entry, 1);
        e->expires = ttl > 0 ? s->clock() + ttl : 0;
        put(s, key, e);
        after_write(s);
    }
    e->counter += delta;
    if (now)
        *now = e->counter;
    g_mutex_unlock(&s->lock);
    return MX_STORE_OK;
}

static mx_store_rc emb_decr(mx_store *base, const char *key, uint64_t delta)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    entry *e = lookup(s, key);
    mx_store_rc rc = MX_STORE_NOT_FOUND;
    if (e && !e->val) {
        e->counter = e->counter > delta ? e->counter - delta : 0; /* memcached floors at 0 */
        rc = MX_STORE_OK;
    } else if (e) {
        rc = MX_STORE_ERROR;
    }
    g_mutex_unlock(&s->lock);
    return rc;
}

static mx_store_rc emb_del(mx_store *base, const char *key)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    gboolean found = lookup(s, key) != NULL && g_hash_table_remove(s->map, key);
    g_mutex_unlock(&s->lock);
    return found ? MX_STORE_OK : MX_STORE_NOT_FOUND;
}

static mx_store_rc emb_touch(mx_store *base, const char *key, int ttl)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    entry *e = lookup(s, key);
    if (e)
        e->expires = ttl > 0 ? s->clock() + ttl : 0;
    g_mutex_unlock(&s->lock);
    return e ? MX_STORE_OK : MX_STORE_NOT_FOUND;
}

static void emb_counters(mx_store *base, const char *const *keys, size_t n, uint64_t *vals,
                         mx_store_rc *rcs)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        entry *e = lookup(s, keys[i]);
        vals[i] = e && !e->val ? e->counter : 0;
        rcs[i] = e && !e->val ? MX_STORE_OK : MX_STORE_NOT_FOUND;
    }
    g_mutex_unlock(&s->lock);
}

static void emb_destroy(mx_store *base)
{
    embedded *s = (embedded *)base;
    g_queue_clear_full(&s->age, aged_free);
    g_hash_table_destroy(s->map);
    g_mutex_clear(&s->lock);
    g_free(s);
}

static const mx_store_ops embedded_ops = {
    .name = "embedded",
    .get = emb_get,
    .set = emb_set,
    .incr = emb_incr,
    .del = emb_del,
    .destroy = emb_destroy,
    .decr = emb_decr,
    .add = emb_add,
    .touch = emb_touch,
    .counters = emb_counters,
};

mx_store *mx_store_embedded_new(int64_t (*clock)(void))
{
    embedded *s = g_new0(embedded, 1);
    s->base.ops = &embedded_ops;
    g_mutex_init(&s->lock);
    s->map = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, entry_free);
    s->clock = clock ? clock : default_clock;
    return &s->base;
}

void mx_store_embedded_set_limit(mx_store *base, size_t max_bytes)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    s->max_bytes = max_bytes;
    g_mutex_unlock(&s->lock);
}

size_t mx_store_embedded_bytes(mx_store *base, uint64_t *evicted)
{
    embedded *s = (embedded *)base;
    g_mutex_lock(&s->lock);
    size_t n = s->bytes;
    if (evicted)
        *evicted = s->evicted;
    g_mutex_unlock(&s->lock);
    return n;
}
