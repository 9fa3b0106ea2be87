/*
 * feed_apply.c: what a feed update does to the store, and the records and
 * limits as operators read them (see feed.h).
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "feed.h"
#include "feed_int.h"

/* memcached reads an expiry above 30 days as a unix time: records that
 * live longer get no store expiry and rely on their own expires_unix. */
#define STORE_TTL_MAX (30 * 24 * 3600)

/* ---- applying ---- */

/* What u does to record r (found or not); the store TTL to write it with. */
static int apply_to(mx_rep *r, const mx_feed_update *u, int64_t now, const char *source)
{
    if (!r->found)
        memset(r, 0, sizeof(*r));
    mx_feed_flag flag = u->flag;
    switch (u->op) {
    case MX_FEED_SET:
        r->score = u->score;
        break;
    case MX_FEED_ADD: {
        int64_t v = (int64_t)r->score + u->score;
        r->score = (int32_t)(v > MX_FEED_SCORE_MAX    ? MX_FEED_SCORE_MAX
                             : v < -MX_FEED_SCORE_MAX ? -MX_FEED_SCORE_MAX
                                                      : v);
        break;
    }
    case MX_FEED_BLOCK: flag = MX_FEED_FLAG_BLOCK; break;
    case MX_FEED_ALLOW: flag = MX_FEED_FLAG_ALLOW; break;
    case MX_FEED_DEL: break;
    }
    if (flag == MX_FEED_FLAG_BLOCK) {
        r->block = 1;
        r->allow = 0;
    } else if (flag == MX_FEED_FLAG_ALLOW) {
        r->allow = 1;
        r->block = 0;
    }
    if (u->reason && *u->reason)
        g_strlcpy(r->reason, u->reason, sizeof(r->reason));
    g_strlcpy(r->source, source ? source : "", sizeof(r->source));
    r->updated = now > 0 ? (uint64_t)now : 0;
    r->expires = u->ttl ? (uint64_t)now + u->ttl : 0;
    r->found = 1;
    return u->ttl && u->ttl <= STORE_TTL_MAX ? (int)u->ttl : 0;
}

mx_store_rc mx_feed_apply(mx_store *s, const mx_feed_update *u, int64_t now, const char *source)
{
    if (u->op == MX_FEED_DEL)
        return mx_rep_delete(s, u->kind, u->value);
    mx_rep r;
    mx_store_rc rc = mx_rep_read_record(s, u->kind, u->value, now, &r);
    if (rc == MX_STORE_ERROR)
        return rc;
    int ttl = apply_to(&r, u, now, source);
    return mx_rep_write(s, u->kind, u->value, &r, ttl);
}

typedef struct slot {
    char *key;
    mx_rep rep;
    mx_store_rc read_rc;
    int ttl;
    int dirty, deleted;
    mx_store_rc write_rc;
} slot;

void mx_feed_apply_many(mx_store *s, const mx_feed_update *const *u, size_t n, int64_t now,
                        const char *source, mx_store_rc *rcs)
{
    GHashTable *by_key = g_hash_table_new(g_str_hash, g_str_equal);
    slot *slots = g_new0(slot, n ? n : 1);
    size_t *of = g_new(size_t, n ? n : 1); /* update -> slot */
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        char *k = mx_rep_key(u[i]->kind, u[i]->value);
        gpointer have = g_hash_table_lookup(by_key, k);
        if (have) {
            of[i] = GPOINTER_TO_SIZE(have) - 1;
            g_free(k);
        } else {
            slots[ns].key = k;
            g_hash_table_insert(by_key, k, GSIZE_TO_POINTER(ns + 1));
            of[i] = ns++;
        }
    }
    /* one multi-get of every record touched */
    const char **keys = g_new(const char *, ns ? ns : 1);
    GBytes **vals = g_new0(GBytes *, ns ? ns : 1);
    mx_store_rc *got = g_new(mx_store_rc, ns ? ns : 1);
    for (size_t j = 0; j < ns; j++)
        keys[j] = slots[j].key;
    mx_store_get_many(s, keys, ns, vals, got);
    for (size_t j = 0; j < ns; j++) {
        slots[j].read_rc = got[j];
        if (got[j] == MX_STORE_OK) {
            gsize len = 0;
            const void *d = g_bytes_get_data(vals[j], &len);
            mx_rep_decode(d, len, now, &slots[j].rep);
        }
        if (vals[j])
            g_bytes_unref(vals[j]);
    }
    /* the updates in feed order, in memory */
    for (size_t i = 0; i < n; i++) {
        slot *sl = &slots[of[i]];
        if (sl->read_rc == MX_STORE_ERROR)
            continue;
        if (u[i]->op == MX_FEED_DEL) {
            memset(&sl->rep, 0, sizeof(sl->rep));
            sl->deleted = 1;
            sl->dirty = 0;
            continue;
        }
        sl->ttl = apply_to(&sl->rep, u[i], now, source);
        sl->dirty = 1;
        sl->deleted = 0;
    }
    /* one batch: a write of each changed record, a delete of each deleted one */
    mx_store_write *w = g_new0(mx_store_write, ns ? ns : 1);
    size_t *wslot = g_new(size_t, ns ? ns : 1);
    size_t nw = 0;
    for (size_t j = 0; j < ns; j++) {
        slot *sl = &slots[j];
        sl->write_rc = sl->read_rc == MX_STORE_ERROR ? MX_STORE_ERROR : MX_STORE_OK;
        if (sl->read_rc == MX_STORE_ERROR || (!sl->dirty && !sl->deleted))
            continue;
        w[nw].key = sl->key;
        if (sl->dirty) {
            w[nw].op = MX_STORE_W_SET;
            w[nw].val = mx_rep_encode(&sl->rep);
            w[nw].ttl = sl->ttl;
        } else {
            w[nw].op = MX_STORE_W_DEL;
        }
        wslot[nw++] = j;
    }
    mx_store_rc *wrc = g_new(mx_store_rc, nw ? nw : 1);
    mx_store_write_many(s, w, nw, wrc);
    for (size_t k = 0; k < nw; k++) {
        /* deleting what is not there is done */
        slots[wslot[k]].write_rc = wrc[k] == MX_STORE_NOT_FOUND ? MX_STORE_OK : wrc[k];
        if (w[k].val)
            g_bytes_unref(w[k].val);
    }
    for (size_t i = 0; i < n; i++)
        rcs[i] = slots[of[i]].write_rc;
    for (size_t j = 0; j < ns; j++)
        g_free(slots[j].key);
    g_hash_table_destroy(by_key);
    g_free(slots);
    g_free(of);
    g_free(keys);
    g_free(vals);
    g_free(got);
    g_free(w);
    g_free(wslot);
    g_free(wrc);
}

/* ---- what operators read ---- */

static void append_time(GString *out, const char *name, uint64_t t, int64_t now)
{
    if (!t) {
        g_string_append_printf(out, "%s: never\n", name);
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    char iso[32] = "?";
    if (gmtime_r(&tt, &tm))
        strftime(iso, sizeof(iso), "%Y-%m-%dT%H:%M:%SZ", &tm);
    int64_t d = (int64_t)t - now;
    if (d > 0)
        g_string_append_printf(out, "%s: %s (in %" PRId64 " s)\n", name, iso, d);
    else
        g_string_append_printf(out, "%s: %s (%" PRId64 " s ago)\n", name, iso, -d);
}

static char *one_line(const char *s)
{
    char *c = g_strdup(s);
    for (char *p = c; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return c;
}

void mx_feed_describe_rep(GString *out, mx_rep_kind kind, const char *value, const mx_rep *r,
                          const mx_rep_history *h, int64_t now)
{
    g_string_append_printf(out, "record: rep:%s:%s\n", mx_rep_kind_name(kind), value);
    g_string_append_printf(out, "found: %s\n", r->found ? "yes" : "no");
    g_string_append_printf(out, "score: %d\n", (int)r->score);
    g_string_append_printf(out, "automatic: %d\n", (int)r->auto_points);
    g_string_append_printf(out, "total: %d\n", (int)mx_rep_total(r));
    g_string_append_printf(out, "block: %s\n", r->block ? "yes" : "no");
    g_string_append_printf(out, "allow: %s\n", r->allow ? "yes" : "no");
    if (r->found) {
        append_time(out, "updated", r->updated, now);
        append_time(out, "expires", r->expires, now);
        /* written by any tool that holds the key: one line each, whatever they hold */
        g_autofree char *src = one_line(r->source);
        g_autofree char *why = one_line(r->reason);
        g_string_append_printf(out, "source: %s\n", src);
        g_string_append_printf(out, "reason: %s\n", why);
    }
    if (h) {
        append_time(out, "first seen", h->first_seen, now);
        append_time(out, "last seen", h->last_seen, now);
        g_string_append_printf(out, "delivered: %" PRIu64 " messages\n", h->delivered);
        g_string_append_printf(out, "penalised: %" PRIu64 " times\n", h->penalised);
    }
}

static const char *const algo_names[] = {"fixed", "sliding"};

int mx_feed_describe_limits(GString *out, mx_store *s, const mx_rl_rule *rules, int nrules,
                            const char *key, int64_t now)
{
    size_t kn = strlen(key);
    g_autofree char *bad = mx_feed_control_byte(key, kn, 0);
    if (kn == 0 || kn > MX_FEED_VALUE_MAX || bad || !g_utf8_validate(key, -1, NULL)) {
        g_string_append_printf(out, "key: %s\n",
                               bad ? bad : kn == 0 ? "empty" : kn > MX_FEED_VALUE_MAX
                                                                    ? "too long"
                                                                    : "not valid UTF-8");
        return -1;
    }
    if (nrules == 0) {
        g_string_append(out, "no rate limits are configured ([ratelimit:NAME] sections)\n");
        return 0;
    }
    unsigned char a[16];
    int is_ip = inet_pton(AF_INET, key, a) == 1 || inet_pton(AF_INET6, key, a) == 1;
    const char *at = strrchr(key, '@');
    int is_addr = !is_ip && at && at != key && at[1];
    char *nerr = NULL;
    g_autofree char *ip = is_ip ? mx_rep_normalize(MX_REP_IP, key, &nerr) : NULL;
    g_free(nerr);
    /* a bare domain is counted as the domain of an address in it */
    g_autofree char *as_addr = !is_ip && !is_addr ? g_strconcat("@", key, NULL) : NULL;
    const char *addr = is_addr ? key : as_addr;
    int shown = 0;
    for (int i = 0; i < nrules; i++) {
        const mx_rl_rule *r = &rules[i];
        char *v = NULL;
        switch (r->key) {
        case MX_RL_CLIENT_IP:
        case MX_RL_CLIENT_NET:
            if (ip)
                v = mx_rl_value(r->key, ip, NULL, NULL, NULL);
            break;
        case MX_RL_HELO: v = mx_rl_value(r->key, NULL, key, NULL, NULL); break;
        case MX_RL_SENDER:
        case MX_RL_RECIPIENT:
            if (is_addr)
                v = mx_rl_value(r->key, NULL, NULL, key, key);
            break;
        case MX_RL_SENDER_DOMAIN:
        case MX_RL_RECIPIENT_DOMAIN:
            if (!is_ip)
                v = mx_rl_value(r->key, NULL, NULL, addr, addr);
            break;
        }
        if (!v)
            continue;
        mx_rl_result res;
        mx_rl_peek(s, r, v, now, &res);
        g_string_append_printf(out,
                               "rule %s: %s %s, counts %s, window %d s %s, counter %" PRIu64
                               ", estimate %.1f, limit %" PRIu64 ": ",
                               r->name, mx_rl_key_name(r->key), v, mx_rl_count_name(r->count),
                               r->window, algo_names[r->algorithm], res.after, res.estimate,
                               r->limit);
        if (res.verdict == MX_RL_STORE_DOWN)
            g_string_append(out, "store unavailable\n");
        else if (res.verdict == MX_RL_OVER)
            g_string_append_printf(out, "allowed again in %d s\n", res.retry_after);
        else
            g_string_append(out, "allowed now\n");
        shown++;
        g_free(v);
    }
    if (!shown)
        g_string_append_printf(out, "no configured rule counts %s as %s\n", key,
                               is_ip ? "an IP address" : is_addr ? "an address"
                                                                 : "a domain or HELO name");
    return shown;
}
