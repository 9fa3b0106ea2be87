/*
 * feed.h: reputation updates from operators and feeds.
 *
 * Owns: the update (kind, value, op, score, ttl), the two feed formats,
 * applying one update to the store, and the text that mxgatectl and the
 * admin endpoint print for a record or for the rate limits of a key.
 *
 * Text format, one update per line (fields separated by spaces or tabs):
 *
 *     KIND VALUE set|add SCORE [TTL]
 *     KIND VALUE del|block|allow [TTL]
 *
 * KIND is ip, net, domain or sender; VALUE is normalised with
 * mx_rep_normalize; SCORE is a signed integer within +-MX_FEED_SCORE_MAX;
 * TTL is seconds (0 or absent: the record does not expire; del ignores
 * it). Blank lines and lines whose first non-blank byte is '#' are
 * skipped. A line is at most MX_FEED_LINE_MAX bytes (a final CR is not
 * counted) and holds no NUL or control byte other than tab.
 *
 * Protobuf format: proto/mxgate.proto FeedUpdate messages, each preceded
 * by its length as a varint, an entry at most MX_FEED_LINE_MAX bytes.
 * An entry whose length could be read is skipped when bad and the stream
 * goes on; a stream whose length prefix is cut off or malformed stops
 * there.
 *
 * What an update does to the record "rep:<kind>:<value>":
 *  set    score := SCORE; block/allow as they were, unless the update
 *         carries a flag (mxgatectl rep set --block/--allow)
 *  add    score += SCORE, clamped to +-MX_FEED_SCORE_MAX; flags as for set
 *  block  block := 1, allow := 0; score kept
 *  allow  allow := 1, block := 0; score kept
 *  del    the record is removed (automatic points are not records: kept)
 * Every write sets updated = now, source = the caller's source, reason =
 * the update's reason when it has one (else the old one), and the expiry
 * from the update's TTL: now + TTL, or none when the TTL is 0. The expiry
 * is the whole record's: a block with a TTL that lands on a record with a
 * score takes the score with it when it expires.
 *
 * Parsing is pure (no I/O, no globals); applying blocks on the store.
 * Nothing here bumps the reputation generation: callers do it once per
 * batch (mx_rep_bump_generation).
 */
#ifndef MX_FEED_H
#define MX_FEED_H

#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#include "ratelimit.h"
#include "reputation.h"
#include "store.h"

#define MX_FEED_LINE_MAX 4096      /* bytes of a text line or a protobuf entry */
#define MX_FEED_VALUE_MAX 320      /* bytes of a VALUE before normalising */
#define MX_FEED_REASON_MAX 127     /* bytes of a reason (the record keeps 127) */
#define MX_FEED_SCORE_MAX 1000000
#define MX_FEED_TTL_MAX 315360000u /* ten years, in seconds */

typedef enum { MX_FEED_SET, MX_FEED_ADD, MX_FEED_DEL, MX_FEED_BLOCK, MX_FEED_ALLOW } mx_feed_op;

/* set and add only: what happens to block/allow. */
typedef enum { MX_FEED_KEEP, MX_FEED_FLAG_BLOCK, MX_FEED_FLAG_ALLOW } mx_feed_flag;

typedef enum { MX_FEED_TEXT, MX_FEED_PROTOBUF } mx_feed_format;

typedef struct mx_feed_update {
    mx_rep_kind kind;
    char *value;          /* normalised; owned (g_free) */
    mx_feed_op op;
    int32_t score;        /* set, add */
    uint32_t ttl;         /* seconds; 0 = no expiry */
    mx_feed_flag flag;    /* set, add */
    char *reason;         /* NULL or owned; at most MX_FEED_REASON_MAX bytes */
} mx_feed_update;

/* Free what u owns and zero it. */
void mx_feed_update_clear(mx_feed_update *u);

const char *mx_feed_op_name(mx_feed_op op);
int mx_feed_op_parse(const char *s); /* "set" ... "allow"; -1 */

/*
 * One text line of len bytes (without its LF; may hold any byte).
 * Returns 1 with *out filled, 0 for a blank or comment line, -1 with *err
 * (g_free it) saying which field is wrong and what was expected.
 */
int mx_feed_parse_line(const char *line, size_t len, mx_feed_update *out, char **err);

/*
 * One protobuf FeedUpdate message (without its length prefix).
 * Returns 1 with *out filled or -1 with *err.
 */
int mx_feed_parse_protobuf(const uint8_t *msg, size_t len, mx_feed_update *out, char **err);

/*
 * An update from separate arguments (mxgatectl rep, the admin endpoint):
 * op is set, add, del, block or allow; score, ttl, flag ("block",
 * "allow") and reason may be NULL. Returns 0, or -1 with *err.
 */
int mx_feed_update_build(mx_feed_update *out, const char *op, const char *kind,
                         const char *value, const char *score, const char *ttl,
                         const char *flag, const char *reason, char **err);

/* The protobuf encoding of u, length prefix included (a feed entry). */
void mx_feed_encode_protobuf(const mx_feed_update *u, GByteArray *out);

/*
 * A feed read as it arrives: push bytes, then take updates until
 * MX_FEED_AGAIN; after mx_feed_reader_finish, until MX_FEED_END.
 * Memory stays bounded by about MX_FEED_LINE_MAX plus what was pushed and
 * not yet taken: an over-long line or entry is discarded as it comes.
 */
typedef struct mx_feed_reader mx_feed_reader;

enum {
    MX_FEED_BAD = -1,     /* *err and *number: a bad line or entry; go on */
    MX_FEED_AGAIN = 0,    /* push more (or finish) */
    MX_FEED_UPDATE = 1,   /* *out and *number */
    MX_FEED_END = 2,      /* finished, and nothing is left */
};

/* first: the number of the first line or entry (1 for a whole feed). */
mx_feed_reader *mx_feed_reader_new(mx_feed_format format, uint64_t first);
void mx_feed_reader_free(mx_feed_reader *r);
void mx_feed_reader_push(mx_feed_reader *r, const void *data, size_t len);
void mx_feed_reader_finish(mx_feed_reader *r);
int mx_feed_reader_next(mx_feed_reader *r, mx_feed_update *out, uint64_t *number, char **err);
/* "line" or "entry": how errors name what was bad. */
const char *mx_feed_reader_unit(const mx_feed_reader *r);

/*
 * Apply u at unix time now, recording source ("mxgatectl", "feed:FILE").
 * Blocks on the store. set, add, block and allow read the record first.
 */
mx_store_rc mx_feed_apply(mx_store *s, const mx_feed_update *u, int64_t now, const char *source);

/*
 * Apply n updates: one multi-get of the records they touch, the updates
 * applied in feed order in memory (so several updates of one record in a
 * batch are one write), then one batch (mx_store_write_many) of a write
 * of each changed record and a delete of each deleted one. rcs[i]: update
 * i's result.
 */
void mx_feed_apply_many(mx_store *s, const mx_feed_update *const *u, size_t n, int64_t now,
                        const char *source, mx_store_rc *rcs);

/* A record as "field: value" lines (mxgatectl rep get, GET /v1/rep),
 * and the sender's history when h is not NULL. */
void mx_feed_describe_rep(GString *out, mx_rep_kind kind, const char *value, const mx_rep *r,
                          const mx_rep_history *h, int64_t now);

/*
 * The configured rules that count key (an IP address: client_ip,
 * client_net; an address: sender, recipient and their domains; a domain:
 * sender_domain, recipient_domain; anything: helo), one line each with
 * their counters read at now, without counting. Returns how many rules
 * were shown, or -1 with a line saying why key is unusable.
 */
int mx_feed_describe_limits(GString *out, mx_store *s, const mx_rl_rule *rules, int nrules,
                            const char *key, int64_t now);

#endif
