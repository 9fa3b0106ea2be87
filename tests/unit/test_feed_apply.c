/*
 * test_feed_apply.c: reputation updates from mxgatectl's arguments, and
 * what updates do to a store.
 *
 *  - updates from arguments: every good form, and each bad one with the
 *    message that names its field;
 *  - applying updates to an embedded store: each op's effect on score,
 *    flags, reason, source and expiry; add clamps; del removes;
 *  - what mxgatectl prints for the rate limits of a key;
 *  - the history two nodes' notes make.
 */
#include <string.h>

#include <glib.h>

#include "feed.h"

static char *row_name(const char *group, const char *name)
{
    return g_strdup_printf("/feed/%s/%s", group, name);
}

/* ---- updates from arguments ---- */

typedef struct build_row {
    const char *name;
    const char *op, *kind, *value, *score, *ttl, *flag, *reason;
    const char *err; /* NULL: accepted */
} build_row;

static const build_row builds[] = {
    {"set with everything", "set", "ip", "192.0.2.1", "-5", "60", "block", "why", NULL},
    {"block", "block", "net", "192.0.2.0/24", NULL, "60", NULL, "why", NULL},
    {"no op", NULL, "ip", "192.0.2.1", "1", NULL, NULL, NULL,
     "op: nothing is not one of set, add, del, block, allow"},
    {"unknown kind", "set", "host", "192.0.2.1", "1", NULL, NULL, NULL,
     "kind: \"host\" is not one of ip, net, domain, sender"},
    {"no value", "set", "ip", NULL, "1", NULL, NULL, NULL, "value: missing"},
    {"bad IP", "set", "ip", "192.0.2", "1", NULL, NULL, NULL,
     "value: \"192.0.2\" is not an IP address"},
    {"missing score", "add", "ip", "192.0.2.1", NULL, NULL, NULL, NULL,
     "score: missing (add needs a SCORE from -1000000 to 1000000)"},
    {"score for del", "del", "ip", "192.0.2.1", "3", NULL, NULL, NULL,
     "score: del takes none (only set and add do)"},
    {"ttl for del", "del", "ip", "192.0.2.1", NULL, "5", NULL, NULL, "ttl: del takes none"},
    {"flag for block", "block", "ip", "192.0.2.1", NULL, NULL, "allow", NULL,
     "allow: only set and add take it (or use op allow)"},
    {"unknown flag", "set", "ip", "192.0.2.1", "1", NULL, "deny", NULL,
     "flag: \"deny\" is neither block nor allow"},
    {"newline in reason", "set", "ip", "192.0.2.1", "1", NULL, NULL, "a\nb",
     "reason: control byte 0x0a at column 2"},
    {"newline in value", "set", "domain", "a.test\n", "1", NULL, NULL, NULL,
     "value: control byte 0x0a at column 7"},
};

static void test_build(gconstpointer data)
{
    const build_row *r = data;
    mx_feed_update u;
    char *err = NULL;
    int rc = mx_feed_update_build(&u, r->op, r->kind, r->value, r->score, r->ttl, r->flag,
                                  r->reason, &err);
    if (!r->err) {
        g_assert_cmpint(rc, ==, 0);
        g_assert_null(err);
        mx_feed_update_clear(&u);
        return;
    }
    g_assert_cmpint(rc, ==, -1);
    g_assert_cmpstr(err, ==, r->err);
    g_assert_null(u.value);
    g_free(err);
}

/* ---- applying ---- */

#define NOW 1700000000
#define DECAY 86400

static mx_store *store;

static void apply(const char *line, int64_t now, const char *source)
{
    mx_feed_update u;
    char *err = NULL;
    g_assert_cmpint(mx_feed_parse_line(line, strlen(line), &u, &err), ==, 1);
    g_assert_cmpint(mx_feed_apply(store, &u, now, source), ==, MX_STORE_OK);
    mx_feed_update_clear(&u);
}

static void apply_args(const char *op, const char *value, const char *score, const char *flag,
                       const char *reason)
{
    mx_feed_update u;
    char *err = NULL;
    g_assert_cmpint(mx_feed_update_build(&u, op, "ip", value, score, NULL, flag, reason, &err),
                    ==, 0);
    g_assert_cmpint(mx_feed_apply(store, &u, NOW, "mxgatectl"), ==, MX_STORE_OK);
    mx_feed_update_clear(&u);
}

static mx_rep read_ip(const char *value, int64_t now)
{
    mx_rep r;
    g_assert_cmpint(mx_rep_read(store, MX_REP_IP, value, now, DECAY, &r), ==, MX_STORE_OK);
    return r;
}

static void test_apply_ops(void)
{
    store = mx_store_embedded_new(NULL);
    apply("ip 192.0.2.1 set -50", NOW, "feed:a.txt");
    mx_rep r = read_ip("192.0.2.1", NOW);
    g_assert_true(r.found);
    g_assert_cmpint(r.score, ==, -50);
    g_assert_false(r.block || r.allow);
    g_assert_cmpuint(r.updated, ==, NOW);
    g_assert_cmpuint(r.expires, ==, 0);
    g_assert_cmpstr(r.source, ==, "feed:a.txt");

    /* block keeps the score; the reason given stays until another is */
    apply_args("block", "192.0.2.1", NULL, NULL, "trap hits");
    r = read_ip("192.0.2.1", NOW);
    g_assert_true(r.block && !r.allow);
    g_assert_cmpint(r.score, ==, -50);
    g_assert_cmpstr(r.reason, ==, "trap hits");
    g_assert_cmpstr(r.source, ==, "mxgatectl");

    /* set keeps the flags; add adds */
    apply("ip 192.0.2.1 set -10", NOW + 1, "feed:b.txt");
    apply("ip 192.0.2.1 add -5", NOW + 2, "feed:b.txt");
    r = read_ip("192.0.2.1", NOW + 2);
    g_assert_cmpint(r.score, ==, -15);
    g_assert_true(r.block);
    g_assert_cmpstr(r.reason, ==, "trap hits");
    g_assert_cmpuint(r.updated, ==, NOW + 2);

    /* allow clears block, and the other way round */
    apply("ip 192.0.2.1 allow", NOW, "x");
    r = read_ip("192.0.2.1", NOW);
    g_assert_true(r.allow && !r.block);
    apply_args("set", "192.0.2.1", "7", "block", NULL);
    r = read_ip("192.0.2.1", NOW);
    g_assert_true(r.block && !r.allow);
    g_assert_cmpint(r.score, ==, 7);
    apply_args("add", "192.0.2.1", "1", "allow", NULL);
    r = read_ip("192.0.2.1", NOW);
    g_assert_true(r.allow && !r.block);
    g_assert_cmpint(r.score, ==, 8);

    /* add clamps at both ends */
    apply("ip 192.0.2.2 set 999999", NOW, "x");
    apply("ip 192.0.2.2 add 10", NOW, "x");
    g_assert_cmpint(read_ip("192.0.2.2", NOW).score, ==, 1000000);
    apply("ip 192.0.2.2 add -1000000", NOW, "x");
    apply("ip 192.0.2.2 add -1000000", NOW, "x");
    apply("ip 192.0.2.2 add -1000000", NOW, "x");
    g_assert_cmpint(read_ip("192.0.2.2", NOW).score, ==, -1000000);

    /* add to nothing starts at 0 */
    apply("ip 192.0.2.3 add -3", NOW, "x");
    g_assert_cmpint(read_ip("192.0.2.3", NOW).score, ==, -3);

    /* a TTL is the record's expiry; without one it has none */
    apply("ip 192.0.2.4 block 3600", NOW, "x");
    r = read_ip("192.0.2.4", NOW);
    g_assert_cmpuint(r.expires, ==, NOW + 3600);
    g_assert_true(read_ip("192.0.2.4", NOW + 3599).found);
    g_assert_false(read_ip("192.0.2.4", NOW + 3600).found);
    apply("ip 192.0.2.4 set 1", NOW, "x");
    g_assert_cmpuint(read_ip("192.0.2.4", NOW).expires, ==, 0);
    /* an expired record is not carried on: its flags are gone */
    apply("ip 192.0.2.5 block 10", NOW, "x");
    apply("ip 192.0.2.5 add 4", NOW + 10, "x");
    r = read_ip("192.0.2.5", NOW + 10);
    g_assert_true(r.found && !r.block);
    g_assert_cmpint(r.score, ==, 4);

    /* del removes the record */
    apply("ip 192.0.2.1 del", NOW, "x");
    g_assert_false(read_ip("192.0.2.1", NOW).found);
    apply("ip 192.0.2.1 del", NOW, "x"); /* and again: nothing to remove is fine */

    /* describe */
    GString *s = g_string_new(NULL);
    apply_args("set", "192.0.2.9", "-20", NULL, "listed");
    r = read_ip("192.0.2.9", NOW + 5);
    mx_feed_describe_rep(s, MX_REP_IP, "192.0.2.9", &r, NULL, NOW + 5);
    g_assert_cmpstr(s->str, ==,
                    "record: rep:ip:192.0.2.9\n"
                    "found: yes\n"
                    "score: -20\n"
                    "automatic: 0\n"
                    "total: -20\n"
                    "block: no\n"
                    "allow: no\n"
                    "updated: 2023-11-14T22:13:20Z (5 s ago)\n"
                    "expires: never\n"
                    "source: mxgatectl\n"
                    "reason: listed\n");
    g_string_free(s, TRUE);
    mx_store_free(store);
}

/* ---- rate limits of a key ---- */

/* Two nodes note what their senders did; their flushes make one history:
 * the earliest first seen, the latest last seen, the counts added up, the
 * credits in the automatic points; and it shows in rep get's text. */
static void test_history(void)
{
    mx_store *st = mx_store_embedded_new(NULL);
    mx_rep_cache *a = mx_rep_cache_new(30), *b = mx_rep_cache_new(30);
    const char *ip = "198.51.100.7";
    mx_rep_cache_note(a, MX_REP_IP, ip, 1, 1, 0, NOW);
    mx_rep_cache_note(a, MX_REP_IP, ip, 1, 1, 0, NOW + 3);
    mx_rep_cache_note(a, MX_REP_IP, ip, 0, 0, 1, NOW + 4);
    mx_rep_cache_note(b, MX_REP_IP, ip, 1, 1, 0, NOW + 2);
    mx_rep_cache_flush(b, st, NOW + 2, DECAY, 3600); /* node b writes first */
    mx_rep_cache_flush(a, st, NOW + 4, DECAY, 3600);
    mx_rep_history h;
    g_assert_cmpint(mx_rep_read_history(st, MX_REP_IP, ip, 3600, &h), ==, MX_STORE_OK);
    /* first seen is the first write that landed: b's, at NOW + 2 (a's
     * note at NOW arrived later); nodes flush every second, so this is
     * the first activity to within about a second */
    g_assert_cmpuint(h.first_seen, ==, NOW + 2);
    g_assert_cmpuint(h.last_seen, ==, NOW + 4);
    g_assert_cmpuint(h.delivered, ==, 3);
    g_assert_cmpuint(h.penalised, ==, 1);
    mx_rep r;
    g_assert_cmpint(mx_rep_read(st, MX_REP_IP, ip, NOW + 4, DECAY, &r), ==, MX_STORE_OK);
    g_assert_cmpint(r.auto_points, ==, 3);
    GString *out = g_string_new(NULL);
    mx_feed_describe_rep(out, MX_REP_IP, ip, &r, &h, NOW + 10);
    g_assert_nonnull(strstr(out->str, "first seen: 2023-11-14T22:13:22Z (8 s ago)\n"));
    g_assert_nonnull(strstr(out->str, "last seen: 2023-11-14T22:13:24Z (6 s ago)\n"));
    g_assert_nonnull(strstr(out->str, "delivered: 3 messages\npenalised: 1 times\n"));
    g_string_free(out, TRUE);
    /* an unknown sender: nothing seen */
    g_assert_cmpint(mx_rep_read_history(st, MX_REP_IP, "198.51.100.8", 3600, &h), ==, MX_STORE_OK);
    g_assert_cmpuint(h.first_seen + h.last_seen + h.delivered + h.penalised, ==, 0);
    /* history = 0: credits still written, no history */
    mx_rep_cache_note(a, MX_REP_SENDER, "x@example.org", 1, 1, 0, NOW);
    mx_rep_cache_flush(a, st, NOW, DECAY, 0);
    g_assert_cmpint(mx_rep_read_history(st, MX_REP_SENDER, "x@example.org", 0, &h), ==,
                    MX_STORE_OK);
    g_assert_cmpuint(h.first_seen + h.delivered, ==, 0);
    g_assert_cmpint(mx_rep_read(st, MX_REP_SENDER, "x@example.org", NOW, DECAY, &r), ==,
                    MX_STORE_OK);
    g_assert_cmpint(r.auto_points, ==, 1);
    mx_rep_cache_free(a);
    mx_rep_cache_free(b);
    mx_store_free(st);
}

static void test_describe_limits(void)
{
    store = mx_store_embedded_new(NULL);
    mx_rl_rule rules[] = {
        {.name = (char *)"conn", .key = MX_RL_CLIENT_IP, .count = MX_RL_CONNECTIONS, .limit = 2,
         .window = 60, .algorithm = MX_RL_FIXED},
        {.name = (char *)"net", .key = MX_RL_CLIENT_NET, .count = MX_RL_CONNECTIONS, .limit = 50,
         .window = 60, .algorithm = MX_RL_SLIDING},
        {.name = (char *)"helo", .key = MX_RL_HELO, .count = MX_RL_MESSAGES, .limit = 9,
         .window = 60, .algorithm = MX_RL_FIXED},
        {.name = (char *)"from", .key = MX_RL_SENDER, .count = MX_RL_MESSAGES, .limit = 5,
         .window = 3600, .algorithm = MX_RL_FIXED},
        {.name = (char *)"fromdom", .key = MX_RL_SENDER_DOMAIN, .count = MX_RL_MESSAGES,
         .limit = 100, .window = 3600, .algorithm = MX_RL_FIXED},
        {.name = (char *)"rcpt", .key = MX_RL_RECIPIENT, .count = MX_RL_RECIPIENTS, .limit = 7,
         .window = 600, .algorithm = MX_RL_FIXED},
    };
    int64_t now = 1700000000 - 1700000000 % 3600 + 30; /* 30 s into every window */
    mx_rl_result res;
    for (int i = 0; i < 3; i++)
        mx_rl_hit(store, NULL, &rules[0], "192.0.2.1", 1, now, &res);
    mx_rl_hit(store, NULL, &rules[1], "192.0.2.0/24", 1, now, &res);
    mx_rl_hit(store, NULL, &rules[3], "a@example.test", 1, now, &res);

    GString *s = g_string_new(NULL);
    g_assert_cmpint(mx_feed_describe_limits(s, store, rules, 6, "192.0.2.1", now), ==, 3);
    g_assert_cmpstr(s->str, ==,
                    "rule conn: client_ip 192.0.2.1, counts connections, window 60 s fixed, "
                    "counter 3, estimate 3.0, limit 2: allowed again in 30 s\n"
                    "rule net: client_net 192.0.2.0/24, counts connections, window 60 s sliding, "
                    "counter 1, estimate 1.0, limit 50: allowed now\n"
                    "rule helo: helo 192.0.2.1, counts messages, window 60 s fixed, counter 0, "
                    "estimate 0.0, limit 9: allowed now\n");
    g_string_truncate(s, 0);
    g_assert_cmpint(mx_feed_describe_limits(s, store, rules, 6, "A@Example.test", now), ==, 4);
    g_assert_cmpstr(s->str, ==,
                    "rule helo: helo a@example.test, counts messages, window 60 s fixed, "
                    "counter 0, estimate 0.0, limit 9: allowed now\n"
                    "rule from: sender a@example.test, counts messages, window 3600 s fixed, "
                    "counter 1, estimate 1.0, limit 5: allowed now\n"
                    "rule fromdom: sender_domain example.test, counts messages, window 3600 s "
                    "fixed, counter 0, estimate 0.0, limit 100: allowed now\n"
                    "rule rcpt: recipient a@example.test, counts recipients, window 600 s fixed, "
                    "counter 0, estimate 0.0, limit 7: allowed now\n");
    g_string_truncate(s, 0);
    g_assert_cmpint(mx_feed_describe_limits(s, store, rules, 6, "Example.TEST", now), ==, 2);
    g_assert_true(strstr(s->str, "rule fromdom: sender_domain example.test,"));
    g_assert_true(strstr(s->str, "rule helo: helo example.test,"));
    g_string_truncate(s, 0);
    g_assert_cmpint(mx_feed_describe_limits(s, store, rules, 1, "example.test", now), ==, 0);
    g_assert_cmpstr(s->str, ==, "no configured rule counts example.test as a domain or HELO name\n");
    g_string_truncate(s, 0);
    g_assert_cmpint(mx_feed_describe_limits(s, store, rules, 0, "example.test", now), ==, 0);
    g_assert_cmpstr(s->str, ==, "no rate limits are configured ([ratelimit:NAME] sections)\n");
    g_string_truncate(s, 0);
    g_assert_cmpint(mx_feed_describe_limits(s, store, rules, 6, "a\nb", now), ==, -1);
    g_assert_cmpstr(s->str, ==, "key: control byte 0x0a at column 2\n");
    g_string_free(s, TRUE);
    mx_store_free(store);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(builds); i++) {
        char *name = row_name("args", builds[i].name);
        g_test_add_data_func(name, &builds[i], test_build);
        g_free(name);
    }
    g_test_add_func("/feed/apply/each op on the embedded store", test_apply_ops);
    g_test_add_func("/feed/limits/the rules that count a key", test_describe_limits);
    g_test_add_func("/feed/history/two nodes make one history", test_history);
    return g_test_run();
}
