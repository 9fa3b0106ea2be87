/*
 * fuzz_proxy_proto.c: libFuzzer target for the PROXY protocol header parser.
 *
 * Input: the first two bytes pick a split point; the rest is what a
 * connection starts with. Beyond "no crash", each run checks:
 *  - MX_ERROR comes with a reason; MX_DONE's length fits the input and is a
 *    v1 line of at most 107 bytes ending in its only CRLF, or a v2 header of
 *    16 + its length field;
 *  - the verdict only moves forward: every prefix shorter than the point
 *    where the whole input is decided gives MX_AGAIN, the prefix ending
 *    there gives the final verdict (for MX_DONE: exactly at the header's
 *    last byte, with the same header), and so does the input cut at the
 *    fuzzer's split point when that is past it;
 *  - v1 lines get the verdict of an independent oracle built on inet_pton
 *    and the 2.1 grammar, and the addresses it reads;
 *  - v2 headers get the verdict of an independent oracle (2.2's layouts,
 *    a TLV walk, a bit-at-a-time CRC32C), TCP ones give the address bytes
 *    found at offset 16; a header whose TLVs hold one CRC32C is accepted
 *    once its checksum is put right, and then refused again when one
 *    byte of its addresses changes;
 *  - anything that starts with neither 'P' nor CR is refused;
 *  - mx_pp_crc32c agrees with a bit-at-a-time CRC32C and continues across
 *    the split point.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

#include "fuzz_check.h"

static const unsigned char sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                       0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

typedef struct res {
    mx_rc rc;
    mx_pp_header h;
} res;

/*
 * Parse in[0..k). Up to 128 bytes, and whenever exact is set, from a copy
 * of exactly k bytes so ASan sees a read past the end; the prefixes in
 * between only wait for a declared v2 length and read 16 bytes.
 */
static res parse(const uint8_t *in, size_t k, int exact)
{
    const char *why = NULL;
    res r;

    if (exact || k <= 128) {
        char *buf = malloc(k > 0 ? k : 1);

        memcpy(buf, in, k);
        r.rc = mx_pp_parse(buf, buf + k, &r.h, &why);
        free(buf);
    } else {
        r.rc = mx_pp_parse((const char *)in, (const char *)in + k, &r.h, &why);
    }
    CHECK(r.rc == MX_AGAIN || r.rc == MX_DONE || r.rc == MX_ERROR);
    if (r.rc == MX_ERROR)
        CHECK(why != NULL && why[0] != '\0');
    return r;
}

static void same(const res *a, const res *b)
{
    CHECK(a->rc == b->rc);
    if (a->rc != MX_DONE)
        return;
    CHECK(a->h.version == b->h.version);
    CHECK(a->h.local == b->h.local);
    CHECK(a->h.unknown == b->h.unknown);
    CHECK(a->h.has_crc == b->h.has_crc);
    CHECK(a->h.length == b->h.length);
    CHECK(memcmp(&a->h.src, &b->h.src, sizeof(a->h.src)) == 0);
    CHECK(memcmp(&a->h.dst, &b->h.dst, sizeof(a->h.dst)) == 0);
}

static unsigned be16(const uint8_t *b)
{
    return (unsigned)b[0] << 8 | b[1];
}

/* The address in ss: its bytes and its port in host order. */
static void check_addr(const struct sockaddr_storage *ss, int family, const void *addr,
                       unsigned port)
{
    CHECK(ss->ss_family == family);
    if (family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        CHECK(memcmp(&sin->sin_addr, addr, 4) == 0);
        CHECK(ntohs(sin->sin_port) == port);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        CHECK(memcmp(&sin6->sin6_addr, addr, 16) == 0);
        CHECK(ntohs(sin6->sin6_port) == port);
    }
}

static void check_done(const uint8_t *in, size_t n, const mx_pp_header *h)
{
    CHECK(h->length <= n);
    CHECK(h->version == 1 || h->version == 2);
    CHECK(!(h->local && h->unknown));
    if (h->version == 1) {
        CHECK(h->length <= MX_PP_V1_MAX && h->length >= 8);
        CHECK(in[h->length - 2] == '\r' && in[h->length - 1] == '\n');
        for (size_t i = 0; i + 2 < h->length; i++)
            CHECK(in[i] != '\r' && in[i] != '\n');
        CHECK(!h->local && !h->has_crc);
    } else {
        CHECK(h->length >= MX_PP_V2_MIN);
        CHECK(memcmp(in, sig, sizeof(sig)) == 0);
        CHECK(h->length == MX_PP_V2_MIN + be16(in + 14));
    }
    if (h->local || h->unknown) {
        CHECK(h->src.ss_family == 0 && h->dst.ss_family == 0);
    } else {
        CHECK(h->src.ss_family == AF_INET || h->src.ss_family == AF_INET6);
        CHECK(h->dst.ss_family == h->src.ss_family);
    }
}

/* ---- v1 oracle: the 2.1 grammar over a line already cut at its CRLF ---- */

enum { UNDECIDED = 1 }; /* not an mx_rc: the oracle cannot tell */

typedef struct field {
    const uint8_t *p;
    size_t len;
} field;

static int port_ok(field f, unsigned *out)
{
    unsigned v = 0;

    if (f.len == 0 || f.len > 5 || (f.len > 1 && f.p[0] == '0'))
        return 0;
    for (size_t i = 0; i < f.len; i++) {
        if (f.p[i] < '0' || f.p[i] > '9')
            return 0;
        v = v * 10 + (unsigned)(f.p[i] - '0');
    }
    *out = v;
    return v <= 65535;
}

static int addr_ok(int family, field f, unsigned char *out)
{
    char s[64];

    if (f.len == 0 || f.len >= sizeof(s) || memchr(f.p, '\0', f.len) != NULL)
        return 0;
    memcpy(s, f.p, f.len);
    s[f.len] = '\0';
    return inet_pton(family, s, out) == 1;
}

static int v1_oracle(const uint8_t *in, size_t n, const res *got)
{
    size_t lim = n < MX_PP_V1_MAX ? n : MX_PP_V1_MAX, e, nf = 0;
    field f[6];
    unsigned char src[16], dst[16];
    unsigned sport, dport;
    int family;

    for (e = 0; e < lim && in[e] != '\r' && in[e] != '\n'; e++)
        ;
    if (e == lim)
        return n >= MX_PP_V1_MAX ? MX_ERROR : UNDECIDED;
    if (in[e] == '\n')
        return MX_ERROR;
    if (e + 1 == n)
        return e + 2 > MX_PP_V1_MAX ? MX_ERROR : UNDECIDED;
    if (in[e + 1] != '\n' || e + 2 > MX_PP_V1_MAX)
        return MX_ERROR;

    /* in[0..e) is the line; fields are separated by single spaces */
    if (e < 6 || memcmp(in, "PROXY ", 6) != 0)
        return MX_ERROR;
    if ((e == 13 || (e > 13 && in[13] == ' ')) && memcmp(in + 6, "UNKNOWN", 7) == 0) {
        if (got->rc == MX_DONE)
            CHECK(got->h.unknown && got->h.length == e + 2);
        return MX_DONE;
    }
    for (size_t i = 0, start = 0; i <= e; i++) {
        if (i == e || in[i] == ' ') {
            if (nf == 6)
                return MX_ERROR; /* a seventh field */
            f[nf].p = in + start;
            f[nf].len = i - start;
            nf++;
            start = i + 1;
        }
    }
    if (nf != 6 || f[1].len != 4 || memcmp(f[1].p, "TCP", 3) != 0)
        return MX_ERROR;
    if (f[1].p[3] == '4')
        family = AF_INET;
    else if (f[1].p[3] == '6')
        family = AF_INET6;
    else
        return MX_ERROR;
    if (!addr_ok(family, f[2], src) || !addr_ok(family, f[3], dst) || !port_ok(f[4], &sport) ||
        !port_ok(f[5], &dport))
        return MX_ERROR;
    if (got->rc == MX_DONE) {
        CHECK(!got->h.unknown && got->h.length == e + 2);
        check_addr(&got->h.src, family, src, sport);
        check_addr(&got->h.dst, family, dst, dport);
    }
    return MX_DONE;
}

/* ---- CRC32C ---- */

static uint32_t crc32c_bitwise(const uint8_t *p, size_t len)
{
    uint32_t crc = 0xffffffffu;

    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = crc & 1 ? crc >> 1 ^ 0x82f63b78u : crc >> 1;
    }
    return ~crc;
}

/* ---- v2 oracle: 2.2 and its TLVs, walked apart from the parser ---- */

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Address block bytes for a family byte; -1 when the layout is not known. */
static int layout(unsigned fam)
{
    static const int by_family[4] = { 0, 12, 36, 216 };

    if (fam == 0x00)
        return 0;
    if (fam >> 4 >= 1 && fam >> 4 <= 3 && ((fam & 0xf) == 1 || (fam & 0xf) == 2))
        return by_family[fam >> 4];
    return -1;
}

/* The CRC32C of h[0..total) with the 4 bytes at h + at taken as zero. */
static uint32_t header_crc(const uint8_t *h, size_t total, size_t at)
{
    uint8_t *c = malloc(total);
    uint32_t crc;

    memcpy(c, h, total);
    memset(c + at, 0, 4);
    crc = crc32c_bitwise(c, total);
    free(c);
    return crc;
}

/*
 * The verdict for bytes starting with the v2 signature's first byte. When
 * the TLVs are well formed, *crc_at is the offset of the value of the only
 * CRC32C TLV (0: none), whether its checksum matches or not.
 */
static int v2_oracle(const uint8_t *in, size_t n, size_t *crc_at)
{
    size_t total, q, at = 0;
    unsigned cmd;
    int block, crcs = 0;

    *crc_at = 0;
    for (size_t i = 0; i < sizeof(sig) && i < n; i++)
        if (in[i] != sig[i])
            return MX_ERROR;
    if (n <= 12)
        return MX_AGAIN;
    cmd = in[12] & 0xf;
    if (in[12] >> 4 != 2 || cmd > 1)
        return MX_ERROR;
    if (n <= 13)
        return MX_AGAIN;
    if (cmd == 1 && (in[13] >> 4 > 3 || (in[13] & 0xf) > 2))
        return MX_ERROR;
    if (n < MX_PP_V2_MIN)
        return MX_AGAIN;
    total = MX_PP_V2_MIN + be16(in + 14);
    if (n < total)
        return MX_AGAIN;
    block = layout(in[13]);
    if (cmd == 1 && (in[13] == 0x11 || in[13] == 0x21) && total - MX_PP_V2_MIN < (size_t)block)
        return MX_ERROR;
    if (block < 0 || total - MX_PP_V2_MIN < (size_t)block)
        return MX_DONE; /* opaque: skipped whole */
    for (q = MX_PP_V2_MIN + (size_t)block; q < total;) {
        size_t vlen;

        if (total - q < 3)
            return MX_ERROR;
        vlen = be16(in + q + 1);
        if (q + 3 + vlen > total)
            return MX_ERROR;
        if (in[q] == 0x03) {
            if (vlen != 4 || ++crcs > 1)
                return MX_ERROR;
            at = q + 3;
        }
        q += 3 + vlen;
    }
    *crc_at = at;
    if (at != 0 && be32(in + at) != header_crc(in, total, at))
        return MX_ERROR;
    return MX_DONE;
}

static void check_v2(const uint8_t *in, size_t n, const res *whole, size_t pick)
{
    size_t crc_at, total, al;
    int want = v2_oracle(in, n, &crc_at), family;
    uint8_t *copy;
    res r;

    CHECK((int)whole->rc == want);
    if (n < MX_PP_V2_MIN || (in[12] & 0xf0) != 0x20 || (in[12] & 0xf) > 1)
        return;
    total = MX_PP_V2_MIN + be16(in + 14);
    if (n < total)
        return;
    family = in[13] == 0x11 ? AF_INET : AF_INET6;
    al = family == AF_INET ? 4 : 16;
    if (whole->rc == MX_DONE) {
        CHECK(whole->h.local == ((in[12] & 0xf) == 0));
        CHECK(whole->h.has_crc == (crc_at != 0));
        if (in[12] == 0x21 && (in[13] == 0x11 || in[13] == 0x21)) {
            check_addr(&whole->h.src, family, in + 16, be16(in + 16 + 2 * al));
            check_addr(&whole->h.dst, family, in + 16 + al, be16(in + 16 + 2 * al + 2));
        }
    }

    /* the same header with its checksum put right is accepted */
    if (crc_at == 0)
        return;
    copy = malloc(total);
    memcpy(copy, in, total);
    {
        uint32_t c = header_crc(copy, total, crc_at);

        copy[crc_at] = (uint8_t)(c >> 24);
        copy[crc_at + 1] = (uint8_t)(c >> 16);
        copy[crc_at + 2] = (uint8_t)(c >> 8);
        copy[crc_at + 3] = (uint8_t)c;
    }
    r = parse(copy, total, 1);
    CHECK(r.rc == MX_DONE && r.h.has_crc && r.h.length == total);

    /* and with one address byte changed, refused */
    if (in[12] == 0x21 && (in[13] == 0x11 || in[13] == 0x21)) {
        check_addr(&r.h.src, family, copy + 16, be16(copy + 16 + 2 * al));
        check_addr(&r.h.dst, family, copy + 16 + al, be16(copy + 16 + 2 * al + 2));
        copy[16 + pick % (2 * al + 4)] ^= (uint8_t)(1 + pick / (2 * al + 4) % 255);
        r = parse(copy, total, 1);
        CHECK(r.rc == MX_ERROR);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *in;
    size_t n, cut, k;
    res whole, r;
    int want;

    if (size < 2)
        return 0;
    in = data + 2;
    n = size - 2;
    cut = ((size_t)data[0] | (size_t)data[1] << 8) % (n + 1);

    whole = parse(in, n, 1);
    if (whole.rc == MX_DONE)
        check_done(in, n, &whole.h);

    /* the verdict only moves forward */
    for (k = 0; k < n; k++) {
        r = parse(in, k, 0);
        if (r.rc != MX_AGAIN)
            break;
    }
    if (k < n) {
        r = parse(in, k, 1);
        same(&r, &whole);
    }
    if (whole.rc == MX_DONE)
        CHECK(k == whole.h.length);
    if (whole.rc == MX_AGAIN)
        CHECK(k == n);
    r = parse(in, cut, 1);
    if (cut < k)
        CHECK(r.rc == MX_AGAIN);
    else
        same(&r, &whole);

    if (n > 0 && in[0] == 'P') {
        want = v1_oracle(in, n, &whole);
        if (want != UNDECIDED)
            CHECK((int)whole.rc == want);
        else
            CHECK(whole.rc != MX_DONE);
    }
    if (n > 0 && in[0] == '\r')
        check_v2(in, n, &whole, cut);
    if (n > 0 && in[0] != 'P' && in[0] != '\r')
        CHECK(whole.rc == MX_ERROR);

    CHECK(mx_pp_crc32c(0, in, n) == crc32c_bitwise(in, n));
    CHECK(mx_pp_crc32c(mx_pp_crc32c(0, in, cut), in + cut, n - cut) == mx_pp_crc32c(0, in, n));
    return 0;
}
