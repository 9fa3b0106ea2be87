/*
 * config_derive.c: from option values to what the daemon runs on: listen
 * and backend addresses, networks and local domains, the rate limit rules
 * of [ratelimit:NAME] groups, and the checks across options.
 */
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "clam.h"
#include "config.h"
#include "config_int.h"
#include "tls.h"

int mx_config_parse_addr(const char *s, mx_addr *a, char **err)
{
    g_autofree char *host = NULL;
    const char *port;

    memset(a, 0, sizeof(*a));
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':') {
            *err = g_strdup_printf("\"%s\": expected [IPV6]:PORT", s);
            return -1;
        }
        host = g_strndup(s + 1, (size_t)(rb - s - 1));
        port = rb + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) {
            *err = g_strdup_printf("\"%s\": expected ADDR:PORT", s);
            return -1;
        }
        host = g_strndup(s, (size_t)(colon - s));
        port = colon + 1;
    }
    int64_t pn;
    if (mx_config_parse_int64(port, &pn, 0) < 0 || pn < 1 || pn > 65535) {
        *err = g_strdup_printf("\"%s\": bad port", s);
        return -1;
    }
    /* Numeric addresses only: resolving names here would block and would
     * make the listen set depend on DNS at start. */
    struct sockaddr_in *in4 = (struct sockaddr_in *)&a->sa;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a->sa;
    if (*host == '\0' || strcmp(host, "*") == 0) {
        in4->sin_family = AF_INET;
        in4->sin_addr.s_addr = htonl(INADDR_ANY);
        in4->sin_port = htons((uint16_t)pn);
        a->len = sizeof(*in4);
    } else if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)pn);
        a->len = sizeof(*in4);
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)pn);
        a->len = sizeof(*in6);
    } else {
        *err = g_strdup_printf("\"%s\": \"%s\" is not a numeric IP address", s, host);
        return -1;
    }
    a->text = g_strdup(s);
    return 0;
}

static int derive_listens(mx_config *c, char **err)
{
    g_auto(GStrv) items = g_strsplit(c->listen, ";", -1);
    GArray *arr = g_array_new(FALSE, TRUE, sizeof(mx_listen));
    int rc = 0;

    for (char **it = items; *it; it++) {
        g_autofree char *item = g_strstrip(g_strdup(*it));
        if (!*item)
            continue;
        g_auto(GStrv) words = g_strsplit_set(item, " \t", -1);
        mx_listen l = {0};
        int have_addr = 0;
        for (char **w = words; *w; w++) {
            if (!**w)
                continue;
            char *e = NULL;
            if (!have_addr) {
                if (mx_config_parse_addr(*w, &l.addr, &e) < 0) {
                    *err = g_strdup_printf("smtp.listen: %s", e);
                    g_free(e);
                    rc = -1;
                    break;
                }
                have_addr = 1;
            } else if (strcmp(*w, "proxy_protocol") == 0) {
                l.proxy_protocol = 1;
            } else if (strcmp(*w, "tls") == 0) {
                l.tls = 1;
            } else {
                *err = g_strdup_printf("smtp.listen: unknown flag \"%s\" (expected "
                                       "proxy_protocol or tls)", *w);
                rc = -1;
                break;
            }
        }
        if (rc < 0) {
            g_free(l.addr.text);
            break;
        }
        g_array_append_val(arr, l);
    }
    if (rc == 0 && arr->len == 0) {
        *err = g_strdup("smtp.listen: no address given");
        rc = -1;
    }
    c->nlistens = (int)arr->len;
    c->listens = (mx_listen *)g_array_free(arr, FALSE);
    return rc;
}

static int derive_backends(mx_config *c, char **err)
{
    g_auto(GStrv) items = g_strsplit(c->backend_servers, ";", -1);
    GArray *arr = g_array_new(FALSE, TRUE, sizeof(mx_addr));
    int rc = 0;

    for (char **it = items; *it; it++) {
        g_autofree char *item = g_strstrip(g_strdup(*it));
        if (!*item)
            continue;
        mx_addr a;
        char *e = NULL;
        if (mx_config_parse_addr(item, &a, &e) < 0) {
            *err = g_strdup_printf("backend.servers: %s", e);
            g_free(e);
            rc = -1;
            break;
        }
        g_array_append_val(arr, a);
    }
    if (rc == 0 && arr->len == 0) {
        *err = g_strdup("backend.servers: no server given");
        rc = -1;
    }
    c->nbackends = (int)arr->len;
    c->backends = (mx_addr *)g_array_free(arr, FALSE);
    return rc;
}

/* A list of ADDR or ADDR/BITS separated by spaces, commas or ';'. */
static int parse_nets(const char *what, const char *list, mx_net **out, int *nout, char **err)
{
    g_auto(GStrv) items = g_strsplit_set(list, ";, ", -1);
    GArray *arr = g_array_new(FALSE, TRUE, sizeof(mx_net));
    int rc = 0;
    for (char **it = items; *it; it++) {
        if (!**it)
            continue;
        mx_net n = {0};
        g_autofree char *host = g_strdup(*it);
        char *slash = strchr(host, '/');
        int64_t bits = -1;
        if (slash) {
            *slash = '\0';
            if (mx_config_parse_int64(slash + 1, &bits, 0) < 0 || bits < 0)
                bits = 999;
        }
        if (inet_pton(AF_INET, host, n.addr) == 1) {
            n.family = AF_INET;
            n.prefix = bits < 0 ? 32 : (int)bits;
            if (n.prefix > 32)
                rc = -1;
        } else if (inet_pton(AF_INET6, host, n.addr) == 1) {
            n.family = AF_INET6;
            n.prefix = bits < 0 ? 128 : (int)bits;
            if (n.prefix > 128)
                rc = -1;
        } else {
            rc = -1;
        }
        if (rc < 0) {
            *err = g_strdup_printf("%s: bad network \"%s\" (expected ADDR or ADDR/BITS)", what,
                                   *it);
            break;
        }
        g_array_append_val(arr, n);
    }
    *nout = (int)arr->len;
    *out = (mx_net *)g_array_free(arr, FALSE);
    return rc;
}

static int derive_nets(mx_config *c, char **err)
{
    if (parse_nets("smtp.proxy_protocol_from", c->proxy_protocol_from, &c->proxy_nets,
                   &c->nproxy_nets, err) < 0)
        return -1;
    if (parse_nets("networks.internal", c->internal_networks, &c->internal_nets,
                   &c->ninternal_nets, err) < 0)
        return -1;
    /* local domains: lowercase, without a trailing dot */
    g_auto(GStrv) items = g_strsplit_set(c->local_domains, ";, \t", -1);
    GPtrArray *doms = g_ptr_array_new();
    for (char **it = items; *it; it++) {
        if (!**it)
            continue;
        char *d = g_utf8_strdown(*it, -1);
        size_t n = strlen(d);
        if (n && d[n - 1] == '.')
            d[n - 1] = 0;
        if (!*d || strchr(d, '@') || !g_utf8_validate(d, -1, NULL) || strcmp(d, ".") == 0) {
            *err = g_strdup_printf("domains.local: bad domain \"%s\"", *it);
            g_free(d);
            g_ptr_array_free(doms, TRUE);
            return -1;
        }
        g_ptr_array_add(doms, d);
    }
    g_ptr_array_add(doms, NULL);
    c->local_list = (char **)g_ptr_array_free(doms, FALSE);
    return 0;
}

int mx_config_domain_is_local(const mx_config *c, const char *domain)
{
    if (!c->local_list || !c->local_list[0])
        return 1; /* none configured: every domain is the backend's to judge */
    if (!domain || !*domain)
        return 1; /* RCPT TO:<postmaster> */
    g_autofree char *d = g_utf8_strdown(domain, -1);
    size_t dn = strlen(d);
    if (dn && d[dn - 1] == '.')
        d[--dn] = 0;
    for (char **l = c->local_list; *l; l++) {
        const char *e = *l;
        if (e[0] == '.') {
            /* ".example.org": every subdomain (not example.org itself) */
            size_t en = strlen(e);
            if (dn > en && strcmp(d + dn - en, e) == 0)
                return 1;
        } else if (strcmp(d, e) == 0) {
            return 1;
        }
    }
    return 0;
}

int mx_config_net_match(const mx_net *nets, int n, const struct sockaddr_storage *sa)
{
    const unsigned char *a;
    int family = sa->ss_family;
    if (family == AF_INET)
        a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
    else if (family == AF_INET6)
        a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    else
        return 0;
    for (int i = 0; i < n; i++) {
        if (nets[i].family != family)
            continue;
        int bits = nets[i].prefix, k = 0;
        while (bits >= 8 && a[k] == nets[i].addr[k])
            bits -= 8, k++;
        if (bits >= 8)
            continue;
        unsigned char mask = (unsigned char)(0xff << (8 - bits));
        if (bits == 0 || (a[k] & mask) == (nets[i].addr[k] & mask))
            return 1;
    }
    return 0;
}

static int derive_rules(mx_config *c, char **err);

/* A message larger than the scanner's limits would pass partly unscanned:
 * refuse the combination rather than leave that gap. */
static int check_scan_cover(mx_config *c, char **err)
{
    if (!c->clamav_enabled)
        return 0;
    uint64_t need = c->max_message_size + MX_CLAM_HEADER_SLACK;
    if (need > c->clamav_max_file_size || need > c->clamav_max_scan_size) {
        *err = g_strdup_printf(
            "smtp.max_message_size (%llu) is more than the scanner covers: clamav.max_file_size "
            "(%llu) and clamav.max_scan_size (%llu) must each be at least %llu, or larger "
            "messages would pass partly unscanned",
            (unsigned long long)c->max_message_size,
            (unsigned long long)c->clamav_max_file_size,
            (unsigned long long)c->clamav_max_scan_size, (unsigned long long)need);
        return -1;
    }
    return 0;
}

int mx_config_derive(mx_config *c, char **err)
{
    if (derive_listens(c, err) < 0 || derive_backends(c, err) < 0 || derive_nets(c, err) < 0 ||
        check_scan_cover(c, err) < 0 || derive_rules(c, err) < 0)
        return -1;
    if (*c->cluster_memcached && !*c->cluster_key_file) {
        *err = g_strdup("cluster.memcached is set but cluster.key_file is not: records in "
                        "memcached must be signed with the cluster key");
        return -1;
    }
    if (*c->admin_listen) {
        char *e = NULL;
        if (mx_config_parse_addr(c->admin_listen, &c->admin, &e) < 0) {
            *err = g_strdup_printf("admin.listen: %s", e);
            g_free(e);
            return -1;
        }
    }
    if (!*c->hostname) {
        g_free(c->hostname);
        c->hostname = g_strdup(g_get_host_name());
    }
    for (const char *h = c->hostname; *h; h++) {
        if (!g_ascii_isalnum(*h) && *h != '-' && *h != '.') {
            *err = g_strdup_printf("smtp.hostname: bad value \"%s\" (letters, digits, '-' "
                                   "and '.' only)", c->hostname);
            return -1;
        }
    }
    if (!*c->helo_name) {
        g_free(c->helo_name);
        c->helo_name = g_strdup(c->hostname);
    }
    return 0;
}

/* [ratelimit:NAME] groups are open-ended: their keys are kept as read and
 * turned into rules by derive_rules(). */
static const char *const rl_keys[] = {"key", "count", "limit", "window", "algorithm", "action",
                                      "on_store_down", NULL};

int mx_config_rl_set(mx_config *c, const char *group, const char *key, const char *value,
                     char **err)
{
    const char *name = group + strlen("ratelimit:");
    if (!*name) {
        *err = g_strdup_printf("[%s]: a rate limit needs a name, as in [ratelimit:NAME]", group);
        return -1;
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '_' && *p != '-') {
            *err = g_strdup_printf("[%s]: rule names use letters, digits, '_' and '-'", group);
            return -1;
        }
    }
    int known = 0;
    for (int i = 0; rl_keys[i]; i++)
        known |= strcmp(rl_keys[i], key) == 0;
    if (!known) {
        *err = g_strdup_printf("unknown option %s.%s (a rate limit has key, count, limit, "
                               "window, algorithm, action, on_store_down)", group, key);
        return -1;
    }
    if (!c->rl_raw)
        c->rl_raw = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          (GDestroyNotify)g_hash_table_unref);
    GHashTable *kv = g_hash_table_lookup(c->rl_raw, name);
    if (!kv) {
        kv = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        g_hash_table_insert(c->rl_raw, g_strdup(name), kv);
    }
    g_hash_table_insert(kv, g_strdup(key), g_strstrip(g_strdup(value)));
    return 0;
}

static int rl_field(const char *name, GHashTable *kv, const char *key, const char *def,
                    int (*parse)(const char *), const char *expect, int *out, char **err)
{
    const char *v = g_hash_table_lookup(kv, key);
    if (!v)
        v = def;
    if (!v) {
        *err = g_strdup_printf("ratelimit:%s: %s is required (%s)", name, key, expect);
        return -1;
    }
    *out = parse(v);
    if (*out < 0) {
        *err = g_strdup_printf("ratelimit:%s.%s: bad value \"%s\" (expected %s)", name, key, v,
                               expect);
        return -1;
    }
    return 0;
}

static gint cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int derive_rules(mx_config *c, char **err)
{
    if (!c->rl_raw)
        return 0;
    guint n = 0;
    gpointer *names = g_hash_table_get_keys_as_array(c->rl_raw, &n);
    qsort(names, n, sizeof(*names), (int (*)(const void *, const void *))cmp_str);
    c->rules = g_new0(mx_rl_rule, n);
    for (guint i = 0; i < n; i++) {
        const char *name = names[i];
        GHashTable *kv = g_hash_table_lookup(c->rl_raw, name);
        mx_rl_rule *r = &c->rules[c->nrules++];
        r->name = g_strdup(name);
        int key, count, algo, action, down;
        if (rl_field(name, kv, "key", NULL, mx_rl_key_parse,
                     "client_ip, client_net, helo, sender, sender_domain, recipient or "
                     "recipient_domain", &key, err) < 0 ||
            rl_field(name, kv, "count", NULL, mx_rl_count_parse,
                     "connections, messages, recipients or bytes", &count, err) < 0 ||
            rl_field(name, kv, "algorithm", "fixed", mx_rl_algo_parse, "fixed or sliding", &algo,
                     err) < 0 ||
            rl_field(name, kv, "action", "tempfail", mx_rl_action_parse, "tempfail or reject",
                     &action, err) < 0 ||
            rl_field(name, kv, "on_store_down", "local", mx_rl_down_parse,
                     "open, closed or local", &down, err) < 0) {
            g_free(names);
            return -1;
        }
        r->key = (mx_rl_key)key;
        r->count = (mx_rl_count)count;
        r->algorithm = (mx_rl_algo)algo;
        r->action = (mx_rl_action)action;
        r->on_store_down = (mx_rl_down)down;
        const char *lim = g_hash_table_lookup(kv, "limit");
        const char *win = g_hash_table_lookup(kv, "window");
        int64_t v = 0;
        if (!lim || mx_config_parse_int64(lim, &v, 1) < 0 || v < 1) {
            *err = g_strdup_printf("ratelimit:%s.limit: %s (expected a number of at least 1)",
                                   name, lim ? lim : "required");
            g_free(names);
            return -1;
        }
        r->limit = (uint64_t)v;
        if (!win || mx_config_parse_int64(win, &v, 0) < 0 || v < 1 || v > 30 * 86400) {
            *err = g_strdup_printf("ratelimit:%s.window: %s (expected seconds, 1 to 2592000)",
                                   name, win ? win : "required");
            g_free(names);
            return -1;
        }
        r->window = (int)v;
        if (r->count == MX_RL_CONNECTIONS && r->key != MX_RL_CLIENT_IP &&
            r->key != MX_RL_CLIENT_NET) {
            *err = g_strdup_printf("ratelimit:%s: connections are counted before MAIL, so the "
                                   "key must be client_ip or client_net", name);
            g_free(names);
            return -1;
        }
    }
    g_free(names);
    return 0;
}
