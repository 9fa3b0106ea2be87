/*
 * trace.c: the decision record of one transaction (see trace.h).
 */
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "mxgate.pb-c.h"
#include "trace.h"

#define TRACE_VERSION 1
#define NFIELDS (MX_TF_WHY + 1)
#define MAX_ITEMS 256 /* rules, reads or recipients kept per record */

struct mx_trace {
    gint refs;
    GMutex lock;
    char *id, *sid, *node;
    int64_t started;
    char *field[NFIELDS];
    GPtrArray *rcpts, *rules, *reps; /* protobuf-c submessages, owned */
    unsigned dropped;                /* items past MAX_ITEMS */
};

static void free_rcpt(gpointer p)
{
    Mxgate__Trace__Recipient *r = p;
    g_free(r->address);
    g_free(r->direction);
    g_free(r->outcome);
    g_free(r->reply);
    g_free(r);
}

static void free_rule(gpointer p)
{
    Mxgate__Trace__Rule *r = p;
    g_free(r->name);
    g_free(r->input);
    g_free(r->verdict);
    g_free(r->stage);
    g_free(r->count);
    g_free(r->key);
    g_free(r);
}

static void free_rep(gpointer p)
{
    Mxgate__Trace__RepRead *r = p;
    g_free(r->key);
    g_free(r->source);
    g_free(r->stage);
    g_free(r);
}

mx_trace *mx_trace_new(const char *id, const char *sid, const char *node, int64_t started_unix)
{
    mx_trace *t = g_new0(mx_trace, 1);
    t->refs = 1;
    g_mutex_init(&t->lock);
    t->id = g_strdup(id);
    t->sid = g_strdup(sid);
    t->node = g_strdup(node);
    t->started = started_unix;
    t->rcpts = g_ptr_array_new_with_free_func(free_rcpt);
    t->rules = g_ptr_array_new_with_free_func(free_rule);
    t->reps = g_ptr_array_new_with_free_func(free_rep);
    return t;
}

mx_trace *mx_trace_ref(mx_trace *t)
{
    g_atomic_int_inc(&t->refs);
    return t;
}

void mx_trace_unref(mx_trace *t)
{
    if (!t || !g_atomic_int_dec_and_test(&t->refs))
        return;
    g_free(t->id);
    g_free(t->sid);
    g_free(t->node);
    for (int i = 0; i < NFIELDS; i++)
        g_free(t->field[i]);
    g_ptr_array_free(t->rcpts, TRUE);
    g_ptr_array_free(t->rules, TRUE);
    g_ptr_array_free(t->reps, TRUE);
    g_mutex_clear(&t->lock);
    g_free(t);
}

const char *mx_trace_id(const mx_trace *t) { return t->id; }

void mx_trace_set(mx_trace *t, mx_trace_field f, const char *value)
{
    g_mutex_lock(&t->lock);
    g_free(t->field[f]);
    t->field[f] = g_strdup(value);
    g_mutex_unlock(&t->lock);
}

/* Add item to a (which frees it with its own function), unless the
 * record is full: then the item is dropped and counted. */
static void add_item(mx_trace *t, GPtrArray *a, gpointer item, GDestroyNotify free_item)
{
    g_mutex_lock(&t->lock);
    if (a->len < MAX_ITEMS) {
        g_ptr_array_add(a, item);
        item = NULL;
    } else {
        t->dropped++;
    }
    g_mutex_unlock(&t->lock);
    if (item)
        free_item(item);
}

void mx_trace_rcpt(mx_trace *t, const char *address, const char *direction, const char *outcome,
                   const char *reply)
{
    Mxgate__Trace__Recipient *r = g_new0(Mxgate__Trace__Recipient, 1);
    mxgate__trace__recipient__init(r);
    r->address = g_strdup(address);
    r->direction = g_strdup(direction);
    r->outcome = g_strdup(outcome);
    r->reply = g_strdup(reply);
    add_item(t, t->rcpts, r, free_rcpt);
}

void mx_trace_rule(mx_trace *t, const char *stage, const char *name, const char *key,
                   const char *count, const char *input, uint64_t before, uint64_t after,
                   uint64_t limit, const char *verdict)
{
    Mxgate__Trace__Rule *r = g_new0(Mxgate__Trace__Rule, 1);
    mxgate__trace__rule__init(r);
    r->stage = g_strdup(stage);
    r->name = g_strdup(name);
    r->key = g_strdup(key);
    r->count = g_strdup(count);
    r->input = g_strdup(input);
    r->has_before = r->has_after = r->has_limit = 1;
    r->before = before;
    r->after = after;
    r->limit = limit;
    r->verdict = g_strdup(verdict);
    add_item(t, t->rules, r, free_rule);
}

void mx_trace_rep(mx_trace *t, const char *stage, const char *key, int found, int32_t score,
                  int block, int allow, const char *source, uint64_t age_seconds)
{
    Mxgate__Trace__RepRead *r = g_new0(Mxgate__Trace__RepRead, 1);
    mxgate__trace__rep_read__init(r);
    r->stage = g_strdup(stage);
    r->key = g_strdup(key);
    r->has_found = r->has_score = r->has_block = r->has_allow = r->has_age_seconds = 1;
    r->found = found != 0;
    r->score = score;
    r->block = block != 0;
    r->allow = allow != 0;
    r->source = g_strdup(source);
    r->age_seconds = age_seconds;
    add_item(t, t->reps, r, free_rep);
}

void mx_trace_adopt(mx_trace *dst, mx_trace *src)
{
    GPtrArray *rules = g_ptr_array_new(), *reps = g_ptr_array_new();
    g_mutex_lock(&src->lock);
    for (guint i = 0; i < src->rules->len; i++) {
        const Mxgate__Trace__Rule *r = src->rules->pdata[i];
        Mxgate__Trace__Rule *c = g_new0(Mxgate__Trace__Rule, 1);
        *c = *r;
        c->name = g_strdup(r->name);
        c->input = g_strdup(r->input);
        c->verdict = g_strdup(r->verdict);
        c->stage = g_strdup(r->stage);
        c->count = g_strdup(r->count);
        c->key = g_strdup(r->key);
        g_ptr_array_add(rules, c);
    }
    for (guint i = 0; i < src->reps->len; i++) {
        const Mxgate__Trace__RepRead *r = src->reps->pdata[i];
        Mxgate__Trace__RepRead *c = g_new0(Mxgate__Trace__RepRead, 1);
        *c = *r;
        c->key = g_strdup(r->key);
        c->source = g_strdup(r->source);
        c->stage = g_strdup(r->stage);
        g_ptr_array_add(reps, c);
    }
    g_mutex_unlock(&src->lock);
    for (guint i = 0; i < rules->len; i++)
        add_item(dst, dst->rules, rules->pdata[i], free_rule);
    for (guint i = 0; i < reps->len; i++)
        add_item(dst, dst->reps, reps->pdata[i], free_rep);
    g_ptr_array_free(rules, TRUE);
    g_ptr_array_free(reps, TRUE);
}

char *mx_trace_key(const char *id) { return g_strdup_printf("trace:%s", id); }

GBytes *mx_trace_encode(mx_trace *t, uint64_t duration_ms)
{
    Mxgate__Trace m = MXGATE__TRACE__INIT;
    g_mutex_lock(&t->lock);
    m.version = TRACE_VERSION;
    m.id = t->id;
    m.session = t->sid;
    m.node = t->node;
    m.has_started_unix = 1;
    m.started_unix = (uint64_t)t->started;
    m.has_duration_ms = 1;
    m.duration_ms = duration_ms;
    m.has_items_not_kept = t->dropped != 0;
    m.items_not_kept = t->dropped;
    m.client = t->field[MX_TF_CLIENT];
    m.helo = t->field[MX_TF_HELO];
    m.tls = t->field[MX_TF_TLS];
    m.sender = t->field[MX_TF_SENDER];
    m.scan_verdict = t->field[MX_TF_SCAN_VERDICT];
    m.scan_signature = t->field[MX_TF_SCAN_SIGNATURE];
    m.scan_engine = t->field[MX_TF_SCAN_ENGINE];
    m.backend_reply = t->field[MX_TF_BACKEND_REPLY];
    m.final_reply = t->field[MX_TF_FINAL_REPLY];
    m.direction = t->field[MX_TF_DIRECTION];
    m.outcome = t->field[MX_TF_OUTCOME];
    m.why = t->field[MX_TF_WHY];
    m.n_rcpts = t->rcpts->len;
    m.rcpts = (Mxgate__Trace__Recipient **)t->rcpts->pdata;
    m.n_rules = t->rules->len;
    m.rules = (Mxgate__Trace__Rule **)t->rules->pdata;
    m.n_reputation = t->reps->len;
    m.reputation = (Mxgate__Trace__RepRead **)t->reps->pdata;
    size_t n = mxgate__trace__get_packed_size(&m);
    uint8_t *buf = g_malloc(n ? n : 1);
    mxgate__trace__pack(&m, buf);
    g_mutex_unlock(&t->lock);
    return g_bytes_new_take(buf, n);
}

/* ---- reading ---- */

/* Text from a record, on one line and printable: it holds client words. */
static void put_text(GString *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++)
        g_string_append_c(out, *p < 0x20 || *p == 0x7f ? '?' : (char)*p);
}

static void put_json_string(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            g_string_append_printf(out, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            g_string_append_printf(out, "\\u%04x", *p);
        else
            g_string_append_c(out, (char)*p);
    }
    g_string_append_c(out, '"');
}

static void iso_time(char *buf, size_t n, uint64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || !strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
        g_strlcpy(buf, "?", n);
}

static void line(GString *out, const char *name, const char *value)
{
    if (!value || !*value)
        return;
    g_string_append_printf(out, "%s: ", name);
    put_text(out, value);
    g_string_append_c(out, '\n');
}

static void describe_text(GString *out, const Mxgate__Trace *m, int64_t now)
{
    char iso[40];
    iso_time(iso, sizeof(iso), m->started_unix);
    g_string_append(out, "trace: ");
    put_text(out, m->id);
    g_string_append(out, " (session ");
    put_text(out, m->session);
    g_string_append(out, ", node ");
    put_text(out, m->node);
    g_string_append(out, ")\n");
    g_string_append_printf(out, "started: %s (%" PRId64 " s ago), took %" PRIu64 " ms\n", iso,
                           now - (int64_t)m->started_unix, m->duration_ms);
    line(out, "client", m->client);
    line(out, "helo", m->helo);
    line(out, "tls", m->tls);
    if (m->sender) {
        g_string_append(out, "sender: <");
        put_text(out, m->sender);
        g_string_append(out, ">\n");
    }
    line(out, "direction", m->direction);
    line(out, "outcome", m->outcome);
    line(out, "decided by", m->why);
    line(out, "final reply", m->final_reply);
    if (m->n_rcpts) {
        g_string_append(out, "recipients:\n");
        for (size_t i = 0; i < m->n_rcpts; i++) {
            const Mxgate__Trace__Recipient *r = m->rcpts[i];
            g_string_append(out, "  <");
            put_text(out, r->address);
            g_string_append(out, "> ");
            put_text(out, r->direction);
            g_string_append_c(out, ' ');
            put_text(out, r->outcome);
            if (r->reply && *r->reply) {
                g_string_append(out, ": ");
                put_text(out, r->reply);
            }
            g_string_append_c(out, '\n');
        }
    }
    g_string_append(out, "rules evaluated:");
    if (!m->n_rules)
        g_string_append(out, " none");
    g_string_append_c(out, '\n');
    for (size_t i = 0; i < m->n_rules; i++) {
        const Mxgate__Trace__Rule *r = m->rules[i];
        g_string_append(out, "  [");
        put_text(out, r->stage);
        g_string_append(out, "] ratelimit ");
        put_text(out, r->name);
        g_string_append(out, ": ");
        put_text(out, r->key);
        g_string_append_c(out, '=');
        put_text(out, r->input);
        g_string_append(out, ", counts ");
        put_text(out, r->count);
        g_string_append_printf(out, ", counter %" PRIu64 " -> %" PRIu64 ", limit %" PRIu64 ": ",
                               r->before, r->after, r->limit);
        put_text(out, r->verdict);
        g_string_append_c(out, '\n');
    }
    g_string_append(out, "reputation read:");
    if (!m->n_reputation)
        g_string_append(out, " none");
    g_string_append_c(out, '\n');
    for (size_t i = 0; i < m->n_reputation; i++) {
        const Mxgate__Trace__RepRead *r = m->reputation[i];
        g_string_append(out, "  [");
        put_text(out, r->stage);
        g_string_append(out, "] ");
        put_text(out, r->key);
        g_string_append_printf(out, ": %s, score %d%s%s, from ", r->found ? "record" : "no record",
                               (int)r->score, r->block ? ", blocked" : "",
                               r->allow ? ", allow-listed" : "");
        put_text(out, r->source);
        g_string_append_printf(out, ", %" PRIu64 " s old\n", r->age_seconds);
    }
    if (m->scan_verdict) {
        g_string_append(out, "scan: ");
        put_text(out, m->scan_verdict);
        if (m->scan_signature && *m->scan_signature) {
            g_string_append_c(out, ' ');
            put_text(out, m->scan_signature);
        }
        if (m->scan_engine && *m->scan_engine) {
            g_string_append(out, " (");
            put_text(out, m->scan_engine);
            g_string_append_c(out, ')');
        }
        g_string_append_c(out, '\n');
    } else {
        g_string_append(out, "scan: not scanned\n");
    }
    line(out, "backend reply", m->backend_reply);
    if (m->items_not_kept)
        g_string_append_printf(out, "not kept: %u more rules, reads or recipients (the record "
                               "keeps %d of each)\n", m->items_not_kept, MAX_ITEMS);
}

static void json_field(GString *out, const char *name, const char *value, int *first)
{
    if (!value)
        return;
    g_string_append_printf(out, "%s\"%s\": ", *first ? "" : ", ", name);
    put_json_string(out, value);
    *first = 0;
}

static void describe_json(GString *out, const Mxgate__Trace *m)
{
    int first = 1;
    g_string_append_c(out, '{');
    json_field(out, "id", m->id, &first);
    json_field(out, "session", m->session, &first);
    json_field(out, "node", m->node, &first);
    g_string_append_printf(out, ", \"started_unix\": %" PRIu64 ", \"duration_ms\": %" PRIu64
                           ", \"items_not_kept\": %u",
                           m->started_unix, m->duration_ms, m->items_not_kept);
    json_field(out, "client", m->client, &first);
    json_field(out, "helo", m->helo, &first);
    json_field(out, "tls", m->tls, &first);
    json_field(out, "sender", m->sender, &first);
    json_field(out, "direction", m->direction, &first);
    json_field(out, "outcome", m->outcome, &first);
    json_field(out, "why", m->why, &first);
    json_field(out, "final_reply", m->final_reply, &first);
    json_field(out, "backend_reply", m->backend_reply, &first);
    g_string_append(out, ", \"scan\": ");
    if (m->scan_verdict) {
        int f = 1;
        g_string_append_c(out, '{');
        json_field(out, "verdict", m->scan_verdict, &f);
        json_field(out, "signature", m->scan_signature, &f);
        json_field(out, "engine", m->scan_engine, &f);
        g_string_append_c(out, '}');
    } else {
        g_string_append(out, "null");
    }
    g_string_append(out, ", \"recipients\": [");
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const Mxgate__Trace__Recipient *r = m->rcpts[i];
        int f = 1;
        g_string_append(out, i ? ", {" : "{");
        json_field(out, "address", r->address, &f);
        json_field(out, "direction", r->direction, &f);
        json_field(out, "outcome", r->outcome, &f);
        json_field(out, "reply", r->reply, &f);
        g_string_append_c(out, '}');
    }
    g_string_append(out, "], \"rules\": [");
    for (size_t i = 0; i < m->n_rules; i++) {
        const Mxgate__Trace__Rule *r = m->rules[i];
        int f = 1;
        g_string_append(out, i ? ", {" : "{");
        json_field(out, "stage", r->stage, &f);
        json_field(out, "name", r->name, &f);
        json_field(out, "key", r->key, &f);
        json_field(out, "input", r->input, &f);
        json_field(out, "count", r->count, &f);
        g_string_append_printf(out, ", \"before\": %" PRIu64 ", \"after\": %" PRIu64
                               ", \"limit\": %" PRIu64, r->before, r->after, r->limit);
        json_field(out, "verdict", r->verdict, &f);
        g_string_append_c(out, '}');
    }
    g_string_append(out, "], \"reputation\": [");
    for (size_t i = 0; i < m->n_reputation; i++) {
        const Mxgate__Trace__RepRead *r = m->reputation[i];
        int f = 1;
        g_string_append(out, i ? ", {" : "{");
        json_field(out, "stage", r->stage, &f);
        json_field(out, "key", r->key, &f);
        g_string_append_printf(out, ", \"found\": %s, \"score\": %d, \"block\": %s, "
                               "\"allow\": %s, \"age_seconds\": %" PRIu64,
                               r->found ? "true" : "false", (int)r->score,
                               r->block ? "true" : "false", r->allow ? "true" : "false",
                               r->age_seconds);
        json_field(out, "source", r->source, &f);
        g_string_append_c(out, '}');
    }
    g_string_append(out, "]}\n");
}

int mx_trace_describe(GString *out, const void *data, size_t n, int json, int64_t now,
                      char **err)
{
    Mxgate__Trace *m = mxgate__trace__unpack(NULL, n, data);
    if (!m || m->version != TRACE_VERSION) {
        *err = g_strdup(m ? "a trace record of an unknown version" : "not a trace record");
        if (m)
            mxgate__trace__free_unpacked(m, NULL);
        return -1;
    }
    if (json)
        describe_json(out, m);
    else
        describe_text(out, m, now);
    mxgate__trace__free_unpacked(m, NULL);
    return 0;
}

int mx_trace_explain(GString *out, mx_store *s, const char *id, int json, int64_t now,
                     char **err)
{
    g_autofree char *k = mx_trace_key(id);
    GBytes *b = NULL;
    mx_store_rc rc = mx_store_get(s, k, &b);
    if (rc == MX_STORE_ERROR) {
        *err = g_strdup("the store is unreachable or failing");
        return -2;
    }
    if (rc == MX_STORE_NOT_FOUND) {
        *err = g_strdup_printf("no decision record for id %s (expired, never written, or not "
                               "an id from a reply or log line)", id);
        return -1;
    }
    gsize n = 0;
    const void *d = g_bytes_get_data(b, &n);
    int r = mx_trace_describe(out, d, n, json, now, err);
    g_bytes_unref(b);
    return r;
}
