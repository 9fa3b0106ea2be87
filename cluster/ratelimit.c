/*
 * ratelimit.c: see ratelimit.h.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "ratelimit.h"

static const char *const key_names[] = {"client_ip", "client_net", "helo", "sender",
                                        "sender_domain", "recipient", "recipient_domain", NULL};
static const char *const count_names[] = {"connections", "messages", "recipients", "bytes", NULL};
static const char *const algo_names[] = {"fixed", "sliding", NULL};
static const char *const action_names[] = {"tempfail", "reject", NULL};
static const char *const down_names[] = {"open", "closed", "local", NULL};

static int lookup(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -1;
}

int mx_rl_key_parse(const char *s) { return lookup(key_names, s); }
int mx_rl_count_parse(const char *s) { return lookup(count_names, s); }
int mx_rl_algo_parse(const char *s) { return lookup(algo_names, s); }
int mx_rl_action_parse(const char *s) { return lookup(action_names, s); }
int mx_rl_down_parse(const char *s) { return lookup(down_names, s); }
const char *mx_rl_key_name(mx_rl_key k) { return key_names[k]; }
const char *mx_rl_count_name(mx_rl_count c) { return count_names[c]; }

static char *network_of(const char *ip)
{
    unsigned char a[16];
    char out[INET6_ADDRSTRLEN + 4];
    if (inet_pton(AF_INET, ip, a) == 1) {
        a[3] = 0;
        inet_ntop(AF_INET, a, out, sizeof(out));
        return g_strdup_printf("%s/24", out);
    }
    if (inet_pton(AF_INET6, ip, a) == 1) {
        memset(a + 8, 0, 8);
        inet_ntop(AF_INET6, a, out, sizeof(out));
        return g_strdup_printf("%s/64", out);
    }
    return NULL;
}

static char *domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    if (!at || !at[1])
        return NULL;
    return g_utf8_strdown(at + 1, -1);
}

char *mx_rl_value(mx_rl_key key, const char *client_ip, const char *helo, const char *sender,
                  const char *recipient)
{
    switch (key) {
    case MX_RL_CLIENT_IP: return client_ip ? g_strdup(client_ip) : NULL;
    case MX_RL_CLIENT_NET: return client_ip ? network_of(client_ip) : NULL;
    case MX_RL_HELO: return helo && *helo ? g_utf8_strdown(helo, -1) : NULL;
    /* local parts are case-sensitive in principle; in practice nobody
     * relies on it, and a limit that case changes evade is no limit */
    case MX_RL_SENDER: return sender && *sender ? g_utf8_strdown(sender, -1) : NULL;
    case MX_RL_SENDER_DOMAIN: return domain_of(sender);
    case MX_RL_RECIPIENT: return recipient && *recipient ? g_utf8_strdown(recipient, -1) : NULL;
    case MX_RL_RECIPIENT_DOMAIN: return domain_of(recipient);
    }
    return NULL;
}

static char *counter_key(const mx_rl_rule *r, int64_t window_start, const char *value)
{
    return g_strdup_printf("rl:%s:%lld:%s", r->name, (long long)window_start, value);
}

/* The verdict on a counter that reads after (this window's, the event
 * included) and prev (the previous window's, sliding only). */
static void judge(const mx_rl_rule *r, uint64_t amount, int64_t now, uint64_t after,
                  uint64_t prev, mx_rl_result *out)
{
    int64_t w = r->window > 0 ? r->window : 1;
    int64_t start = now - now % w;
    out->after = after;
    out->before = after >= amount ? after - amount : 0;
    double est = (double)after;
    double elapsed = (double)(now - start);
    if (r->algorithm == MX_RL_SLIDING)
        est += (double)prev * ((double)w - elapsed) / (double)w;
    else
        prev = 0;
    out->estimate = est;
    /* amount 0 is a look: over means "the next event would not pass" */
    int over = amount ? est > (double)r->limit : est >= (double)r->limit;
    out->verdict = over ? MX_RL_OVER : MX_RL_PASS;
    out->retry_after = 0;
    if (over) {
        if (r->algorithm == MX_RL_FIXED || prev == 0) {
            out->retry_after = (int)(start + w - now);
        } else {
            /* when the previous window's weight has shrunk enough, or the
             * next window starts, whichever comes first */
            double excess = est - (double)r->limit + (amount ? 0 : 1);
            double t = excess * (double)w / (double)prev;
            int wait = (int)(t + 0.999);
            int to_next = (int)(start + w - now);
            out->retry_after = wait < to_next ? wait : to_next;
            if (out->retry_after < 1)
                out->retry_after = 1;
        }
    }
}

/* Count (or, with amount 0, read) n events against one store, all their
 * counters moved in one mx_store_incr_many. ok[i] is 0 when the store
 * failed for event i. */
static void count_many(mx_store *st, const mx_rl_rule *const *rules, const char *const *values,
                       const uint64_t *amounts, size_t n, int64_t now, mx_rl_result *out,
                       int *ok)
{
    /* per event: this window's counter, then (sliding) the previous one's */
    char **keys = g_new(char *, 2 * n);
    uint64_t *delta = g_new(uint64_t, 2 * n);
    int *ttl = g_new(int, 2 * n);
    uint64_t *val = g_new(uint64_t, 2 * n);
    mx_store_rc *rcs = g_new(mx_store_rc, 2 * n);
    size_t *first = g_new(size_t, n);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const mx_rl_rule *r = rules[i];
        int64_t w = r->window > 0 ? r->window : 1;
        int64_t start = now - now % w;
        /* kept one window past its own, for the sliding estimate */
        int t = (int)(2 * w + 1);
        first[i] = m;
        keys[m] = counter_key(r, start, values[i]);
        delta[m] = amounts[i];
        ttl[m++] = t;
        if (r->algorithm == MX_RL_SLIDING) {
            keys[m] = counter_key(r, start - w, values[i]);
            delta[m] = 0;
            ttl[m++] = t;
        }
    }
    mx_store_incr_many(st, (const char *const *)keys, delta, ttl, m, val, rcs);
    for (size_t i = 0; i < n; i++) {
        size_t c = first[i];
        /* absent reads as 0: a look at a window nobody counted in */
        int good = rcs[c] == MX_STORE_OK || (amounts[i] == 0 && rcs[c] == MX_STORE_NOT_FOUND);
        uint64_t prev = 0;
        if (rules[i]->algorithm == MX_RL_SLIDING) {
            good = good && (rcs[c + 1] == MX_STORE_OK || rcs[c + 1] == MX_STORE_NOT_FOUND);
            prev = rcs[c + 1] == MX_STORE_OK ? val[c + 1] : 0;
        }
        ok[i] = good;
        if (good)
            judge(rules[i], amounts[i], now, rcs[c] == MX_STORE_OK ? val[c] : 0, prev, &out[i]);
    }
    for (size_t i = 0; i < m; i++)
        g_free(keys[i]);
    g_free(keys);
    g_free(delta);
    g_free(ttl);
    g_free(val);
    g_free(rcs);
    g_free(first);
}

void mx_rl_hit_many(mx_store *store, mx_store *local, const mx_rl_rule *const *rules,
                    const char *const *values, const uint64_t *amounts, size_t n, int64_t now,
                    mx_rl_result *out)
{
    if (n == 0)
        return;
    memset(out, 0, n * sizeof(*out));
    int *ok = g_new(int, n);
    count_many(store, rules, values, amounts, n, now, out, ok);
    for (size_t i = 0; i < n; i++)
        if (!ok[i])
            mx_rl_store_down(local, rules[i], values[i], amounts[i], now, &out[i]);
    g_free(ok);
}

void mx_rl_store_down(mx_store *local, const mx_rl_rule *r, const char *value, uint64_t amount,
                      int64_t now, mx_rl_result *out)
{
    memset(out, 0, sizeof(*out));
    switch (r->on_store_down) {
    case MX_RL_DOWN_OPEN:
        out->verdict = MX_RL_UNCHECKED;
        break;
    case MX_RL_DOWN_CLOSED:
        out->verdict = MX_RL_STORE_DOWN;
        break;
    case MX_RL_DOWN_LOCAL: {
        int lok = 0;
        if (local)
            count_many(local, &r, &value, &amount, 1, now, out, &lok);
        if (!lok)
            out->verdict = MX_RL_STORE_DOWN; /* cannot happen with the embedded store */
        out->local = 1;
        break;
    }
    }
}

char *mx_rl_counter_now(const mx_rl_rule *r, const char *value, int64_t now)
{
    int64_t w = r->window > 0 ? r->window : 1;
    return counter_key(r, now - now % w, value);
}

void mx_rl_judge_counted(const mx_rl_rule *r, uint64_t amount, int64_t now, uint64_t after,
                         mx_rl_result *out)
{
    memset(out, 0, sizeof(*out));
    judge(r, amount, now, after, 0, out);
}

void mx_rl_hit(mx_store *store, mx_store *local, const mx_rl_rule *r, const char *value,
               uint64_t amount, int64_t now, mx_rl_result *out)
{
    mx_rl_hit_many(store, local, &r, &value, &amount, 1, now, out);
}

void mx_rl_peek(mx_store *store, const mx_rl_rule *r, const char *value, int64_t now,
                mx_rl_result *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t zero = 0;
    int ok = 0;
    count_many(store, &r, &value, &zero, 1, now, out, &ok);
    if (!ok) {
        memset(out, 0, sizeof(*out));
        out->verdict = MX_RL_STORE_DOWN;
    }
}
