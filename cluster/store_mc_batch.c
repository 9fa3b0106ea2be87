/*
 * store_mc_batch.c: the memcached store's pipelined traffic (see
 * store_mc_int.h): batches of writes (mxgatectl feed, the once-a-second
 * flushes) and the counters of a policy step (rate limits).
 *
 * Both go through exchange(): for every server with commands, one request
 * pipelined on a connection kept for that server, all servers in one poll
 * loop (mx_mc_exchange), every reply read. Keys go to the server
 * libmemcached would pick, through the same breakers as the single calls.
 * Not libmemcached's buffered requests: in 1.1.4 they lost writes and
 * tripped its own assertions here.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mc_pipe.h"
#include "store_mc_int.h"

/* ---- kept connections ---- */

static int conn_take(mc_store *s, breaker *b)
{
    g_mutex_lock(&s->lock);
    int fd = b->nidle ? b->idle[--b->nidle] : -1;
    g_mutex_unlock(&s->lock);
    return fd;
}

static void conn_put(mc_store *s, breaker *b, int fd)
{
    if (fd < 0)
        return;
    g_mutex_lock(&s->lock);
    if (b->nidle < IDLE_CONNS) {
        b->idle[b->nidle++] = fd;
        fd = -1;
    }
    g_mutex_unlock(&s->lock);
    if (fd >= 0)
        close(fd);
}

void mc_batch_init(mc_store *s)
{
    g_mutex_init(&s->comb_lock);
    g_cond_init(&s->comb_cond);
    s->comb_tail = &s->comb_head;
}

void mc_batch_clear(mc_store *s)
{
    for (int i = 0; i < s->nbr; i++)
        for (int k = 0; k < s->br[i].nidle; k++)
            close(s->br[i].idle[k]);
    g_mutex_clear(&s->comb_lock);
    g_cond_clear(&s->comb_cond);
}

/* ---- one exchange with every server ---- */

enum { SRV_OK, SRV_SKIPPED, SRV_REFUSED, SRV_SILENT };

typedef struct srv_io {
    GByteArray *req;        /* commands for this server, or NULL */
    size_t lines;           /* reply lines they get */
    unsigned char *reply;   /* lines: MX_MC_* (NULL when not sent) */
    uint64_t *num;          /* lines: values of number lines */
    int state;              /* SRV_*: how the server's part went */
} srv_io;

static GByteArray *srv_req(srv_io *io, int j)
{
    if (!io[j].req)
        io[j].req = g_byte_array_new();
    return io[j].req;
}

/*
 * Send every server its commands and read all replies, in one wait.
 * A server whose breaker is open is skipped. A kept connection that failed
 * at once with nothing answered was most likely closed by a restarted
 * server, as the others kept for it are: they are dropped and the request
 * goes once more on a new connection. A server that does not answer is a
 * breaker failure; one that refuses is too when refused_counts, otherwise
 * the caller's fallback judges it (a half-open probe passes to it).
 */
static void exchange(mc_store *s, srv_io *io, int refused_counts)
{
    mx_mc_req *rq = g_new0(mx_mc_req, s->nbr);
    int *who = g_new(int, s->nbr), *kept = g_new(int, s->nbr);
    size_t k = 0;
    uint64_t cmds = 0;
    for (int j = 0; j < s->nbr; j++) {
        io[j].state = SRV_SKIPPED;
        if (!io[j].req)
            continue;
        if (!mc_breaker_allows(s, &s->br[j])) {
            atomic_fetch_add(&s->stats.fast_failed, 1);
            continue;
        }
        io[j].reply = g_malloc(io[j].lines);
        io[j].num = g_new(uint64_t, io[j].lines);
        rq[k] = (mx_mc_req){.host = s->br[j].host, .port = s->br[j].port,
                            .fd = conn_take(s, &s->br[j]), .data = io[j].req->data,
                            .len = io[j].req->len, .n = io[j].lines, .reply = io[j].reply,
                            .number = io[j].num};
        kept[k] = rq[k].fd >= 0;
        who[k++] = j;
        cmds += io[j].lines;
    }
    if (k == 0)
        goto out;
    mc_sent(s, 1, cmds);
    mx_mc_exchange(rq, k, s->timeout_ms);
    size_t again = 0;
    uint64_t again_cmds = 0;
    mx_mc_req *rq2 = g_new0(mx_mc_req, k);
    int *who2 = g_new(int, k);
    for (size_t t = 0; t < k; t++) {
        if (!rq[t].err || rq[t].timed_out || !kept[t] || rq[t].got != 0)
            continue;
        int fd;
        while ((fd = conn_take(s, &s->br[who[t]])) >= 0)
            close(fd);
        g_clear_pointer(&rq[t].err, g_free);
        rq2[again] = rq[t];
        rq2[again].fd = -1;
        who2[again++] = (int)t;
        again_cmds += rq[t].n;
    }
    if (again) {
        mc_sent(s, 1, again_cmds);
        mx_mc_exchange(rq2, again, s->timeout_ms);
        for (size_t u = 0; u < again; u++)
            rq[who2[u]] = rq2[u];
    }
    g_free(rq2);
    g_free(who2);
    for (size_t t = 0; t < k; t++) {
        int j = who[t];
        breaker *b = &s->br[j];
        io[j].state = !rq[t].err ? SRV_OK : rq[t].timed_out ? SRV_SILENT : SRV_REFUSED;
        if (rq[t].err) {
            atomic_fetch_add(&s->stats.errors, 1);
            mc_log(s, 1, "store_batch_failed", "memcached %s", rq[t].err);
            g_free(rq[t].err);
        }
        if (io[j].state != SRV_REFUSED || refused_counts)
            mc_breaker_result(s, b, io[j].state == SRV_OK);
        else
            atomic_store(&b->probing, 0);
        conn_put(s, b, rq[t].fd);
    }
out:
    g_free(rq);
    g_free(who);
    g_free(kept);
}

static void srv_io_reset(mc_store *s, srv_io *io)
{
    for (int j = 0; j < s->nbr; j++) {
        if (io[j].req)
            g_byte_array_free(io[j].req, TRUE);
        g_free(io[j].reply);
        g_free(io[j].num);
        memset(&io[j], 0, sizeof(io[j]));
    }
}

void mc_place(mc_store *s, const char *const *keys, size_t n, mc_keybuf *pk, int *srv)
{
    memcached_st *m = mc_borrow(s);
    for (size_t i = 0; i < n; i++) {
        mc_key(s, keys[i], pk[i]);
        breaker *b = m ? mc_breaker_for(s, m, pk[i]) : NULL;
        srv[i] = b ? (int)(b - s->br) : -1;
    }
    if (m)
        mc_give_back(s, m);
}

/* ---- batches of writes ---- */

/* One operation as commands; how many reply lines they get, and which of
 * them says how it went (*decisive, counted from the first). An increment
 * is "add 0 with the expiry" then "incr" (then "touch" when asked): the
 * counter never exists without its expiry, and no reply is awaited in
 * between. */
static int encode_write(mc_store *s, const mx_store_write *w, const char *k, GByteArray *req,
                        int *decisive)
{
    *decisive = 0;
    char head[160];
    int hl;
    switch (w->op) {
    case MX_STORE_W_SET:
    case MX_STORE_W_ADD: {
        gsize len = w->val ? g_bytes_get_size(w->val) : 0;
        hl = snprintf(head, sizeof(head), "%s %s 0 %lld %zu\r\n",
                      w->op == MX_STORE_W_SET ? "set" : "add", k, (long long)mc_ttl(w->ttl),
                      (size_t)(1 + MAC_LEN + len));
        g_byte_array_append(req, (const guint8 *)head, (guint)hl);
        mc_rec_seal(s, k, w->val, req);
        g_byte_array_append(req, (const guint8 *)"\r\n", 2);
        return 1;
    }
    case MX_STORE_W_INCR:
        hl = snprintf(head, sizeof(head), "add %s 0 %lld 1\r\n0\r\nincr %s %llu\r\n", k,
                      (long long)mc_ttl(w->ttl), k, (unsigned long long)w->delta);
        g_byte_array_append(req, (const guint8 *)head, (guint)hl);
        *decisive = 1;
        if (!w->touch)
            return 2;
        hl = snprintf(head, sizeof(head), "touch %s %lld\r\n", k, (long long)mc_ttl(w->ttl));
        g_byte_array_append(req, (const guint8 *)head, (guint)hl);
        return 3;
    case MX_STORE_W_DEL:
        hl = snprintf(head, sizeof(head), "delete %s\r\n", k);
        g_byte_array_append(req, (const guint8 *)head, (guint)hl);
        return 1;
    }
    return 0;
}

/* What the decisive reply line of one operation means. */
static mx_store_rc decode_write(mx_store_wop op, unsigned char r)
{
    switch (op) {
    case MX_STORE_W_SET: return r == MX_MC_STORED ? MX_STORE_OK : MX_STORE_ERROR;
    case MX_STORE_W_ADD:
        return r == MX_MC_STORED ? MX_STORE_OK : r == MX_MC_NOT_STORED ? MX_STORE_NOT_FOUND
                                                                        : MX_STORE_ERROR;
    case MX_STORE_W_INCR: return r == MX_MC_NUMBER ? MX_STORE_OK : MX_STORE_ERROR;
    case MX_STORE_W_DEL:
        return r == MX_MC_DELETED ? MX_STORE_OK : r == MX_MC_NOT_FOUND ? MX_STORE_NOT_FOUND
                                                                        : MX_STORE_ERROR;
    }
    return MX_STORE_ERROR;
}

/* A round trip per record would cap a feed at a few tens of thousands a
 * second: one exchange for the whole batch. */
void mc_write_many(mx_store *base, const mx_store_write *w, size_t n, mx_store_rc *rcs)
{
    mc_store *s = (mc_store *)base;
    mc_keybuf *pk = g_new(mc_keybuf, n ? n : 1);
    int *srv = g_new(int, n ? n : 1);
    size_t *line = g_new(size_t, n ? n : 1); /* op -> its decisive reply line */
    srv_io *io = g_new0(srv_io, s->nbr);
    const char **keys = g_new(const char *, n ? n : 1);
    for (size_t i = 0; i < n; i++)
        keys[i] = w[i].key;
    mc_place(s, keys, n, pk, srv);
    for (size_t i = 0; i < n; i++) {
        rcs[i] = MX_STORE_ERROR;
        if (srv[i] < 0)
            continue;
        int decisive = 0;
        size_t first = io[srv[i]].lines;
        io[srv[i]].lines += (size_t)encode_write(s, &w[i], pk[i], srv_req(io, srv[i]), &decisive);
        line[i] = first + (size_t)decisive;
    }
    exchange(s, io, 1);
    for (size_t i = 0; i < n; i++)
        if (srv[i] >= 0 && io[srv[i]].reply)
            rcs[i] = decode_write(w[i].op, io[srv[i]].reply[line[i]]);
    srv_io_reset(s, io);
    /* a key with no server known to the breakers: one by one */
    for (size_t i = 0; i < n; i++)
        if (srv[i] < 0)
            mx_store_write_each(base, &w[i], 1, &rcs[i]);
    g_free(pk);
    g_free(srv);
    g_free(line);
    g_free(io);
    g_free(keys);
}

/* ---- the counters of a policy step ---- */

/*
 * "incr" for every key, in one exchange. Keys absent and to be created
 * take a second, "add 0 with the expiry" then "incr", as write_many does
 * (the first event of a window only). A server that refuses has its keys
 * done by the single calls, so libmemcached ejects it and moves its keys
 * as it does for them; one that does not answer fails its keys (the
 * rule's on_store_down).
 */
enum { K_DONE, K_SINGLE, K_CREATE };

static void incr_many_now(mx_store *base, const char *const *keys, const uint64_t *delta,
                          const int *ttl, size_t n, uint64_t *now, mx_store_rc *rcs)
{
    mc_store *s = (mc_store *)base;
    mc_keybuf *pk = g_new(mc_keybuf, n ? n : 1);
    int *srv = g_new(int, n ? n : 1);
    int *todo = g_new(int, n ? n : 1);       /* K_*, what is left for the key */
    size_t *line = g_new(size_t, n ? n : 1); /* key -> its decisive reply line */
    srv_io *io = g_new0(srv_io, s->nbr);
    mc_place(s, keys, n, pk, srv);
    for (size_t i = 0; i < n; i++) {
        now[i] = 0;
        rcs[i] = MX_STORE_ERROR;
        todo[i] = srv[i] < 0 ? K_SINGLE : K_DONE;
    }
    for (int pass = 0; pass < 2; pass++) {
        int want = pass == 0 ? K_DONE : K_CREATE; /* the keys this pass sends */
        for (size_t i = 0; i < n; i++) {
            if (srv[i] < 0 || todo[i] != want)
                continue;
            srv_io *o = &io[srv[i]];
            char cmd[160];
            int len = 0;
            if (pass == 1) {
                len = snprintf(cmd, sizeof(cmd), "add %s 0 %lld 1\r\n0\r\n", pk[i],
                               (long long)mc_ttl(ttl[i]));
                o->lines++;
            }
            len += snprintf(cmd + len, sizeof(cmd) - (size_t)len, "incr %s %llu\r\n", pk[i],
                            (unsigned long long)delta[i]);
            g_byte_array_append(srv_req(io, srv[i]), (const guint8 *)cmd, (guint)len);
            line[i] = o->lines++;
        }
        exchange(s, io, 0);
        for (size_t i = 0; i < n; i++) {
            if (srv[i] < 0 || todo[i] != want || !io[srv[i]].reply)
                continue;
            unsigned char r = io[srv[i]].reply[line[i]];
            todo[i] = K_DONE;
            if (r == MX_MC_NUMBER) {
                now[i] = io[srv[i]].num[line[i]];
                rcs[i] = MX_STORE_OK;
            } else if (io[srv[i]].state == SRV_REFUSED && r == MX_MC_NONE) {
                /* not answered: whether it was applied is unknown, and a
                 * count twice is the safe side of a limit */
                todo[i] = K_SINGLE;
            } else if (r == MX_MC_NOT_FOUND && pass == 0) {
                rcs[i] = MX_STORE_NOT_FOUND;
                todo[i] = delta[i] ? K_CREATE : K_DONE;
            }
        }
        srv_io_reset(s, io);
    }
    for (size_t i = 0; i < n; i++) {
        if (todo[i] != K_SINGLE)
            continue;
        if (delta[i])
            rcs[i] = mc_incr(base, keys[i], delta[i], ttl[i], &now[i]);
        else
            mc_counters(base, &keys[i], 1, &now[i], &rcs[i]);
    }
    g_free(pk);
    g_free(srv);
    g_free(todo);
    g_free(line);
    g_free(io);
}

/* One caller's counters, waiting for an exchange. */
typedef struct incr_req {
    const char *const *keys;
    const uint64_t *delta;
    const int *ttl;
    size_t n;
    uint64_t *now;
    mx_store_rc *rcs;
    int done;
    struct incr_req *next;
} incr_req;

/* Everything in the list as one incr_many_now: the same key twice gets
 * two increments, answered in order, so each caller sees its own value. */
static void incr_batch(mc_store *s, incr_req *list)
{
    if (!list->next) {
        incr_many_now(&s->base, list->keys, list->delta, list->ttl, list->n, list->now,
                      list->rcs);
        return;
    }
    size_t n = 0;
    for (incr_req *r = list; r; r = r->next)
        n += r->n;
    const char **keys = g_new(const char *, n);
    uint64_t *delta = g_new(uint64_t, n), *now = g_new(uint64_t, n);
    int *ttl = g_new(int, n);
    mx_store_rc *rcs = g_new(mx_store_rc, n);
    size_t i = 0;
    for (incr_req *r = list; r; r = r->next)
        for (size_t k = 0; k < r->n; k++, i++) {
            keys[i] = r->keys[k];
            delta[i] = r->delta[k];
            ttl[i] = r->ttl[k];
        }
    incr_many_now(&s->base, keys, delta, ttl, n, now, rcs);
    atomic_fetch_add(&s->stats.combined, 1);
    i = 0;
    for (incr_req *r = list; r; r = r->next)
        for (size_t k = 0; k < r->n; k++, i++) {
            r->now[k] = now[i];
            r->rcs[k] = rcs[i];
        }
    g_free(keys);
    g_free(delta);
    g_free(now);
    g_free(ttl);
    g_free(rcs);
}

/*
 * Callers that arrive while an exchange is out wait for it, and the next
 * exchange carries all of them: under load, sessions share round trips.
 * One thread at a time leads (sends the batch and hands out the results);
 * the others sleep until their counters are done or the lead is free.
 */
void mc_incr_many(mx_store *base, const char *const *keys, const uint64_t *delta,
                         const int *ttl, size_t n, uint64_t *now, mx_store_rc *rcs)
{
    mc_store *s = (mc_store *)base;
    incr_req me = {.keys = keys, .delta = delta, .ttl = ttl, .n = n, .now = now, .rcs = rcs};
    g_mutex_lock(&s->comb_lock);
    *s->comb_tail = &me;
    s->comb_tail = &me.next;
    while (!me.done) {
        if (s->comb_leading) {
            g_cond_wait(&s->comb_cond, &s->comb_lock);
            continue;
        }
        s->comb_leading = 1;
        incr_req *batch = s->comb_head;
        s->comb_head = NULL;
        s->comb_tail = &s->comb_head;
        g_mutex_unlock(&s->comb_lock);
        incr_batch(s, batch);
        g_mutex_lock(&s->comb_lock);
        for (incr_req *r = batch, *next; r; r = next) {
            next = r->next; /* r may return (and be gone) once done is seen */
            r->done = 1;
        }
        s->comb_leading = 0;
        g_cond_broadcast(&s->comb_cond);
    }
    g_mutex_unlock(&s->comb_lock);
}
