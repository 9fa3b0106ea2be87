/*
 * proxy_proto.c: the PROXY protocol header, v1 text and v2 binary
 * (HAProxy's proxy-protocol.txt; section numbers below are that file's).
 *
 * Owns: telling, from the first bytes of a connection, a complete header
 * (and its exact length) from the start of one (wait) and from anything
 * else (drop); and the CRC32C the v2 checksum TLV uses.
 * Promises: the rules in proxy_proto.h, and a verdict that only moves
 * forward: as bytes arrive the answer goes from MX_AGAIN to MX_DONE or
 * MX_ERROR and then stays there. MX_ERROR comes at the first byte after
 * which no valid header is possible (2.1: "abort the connection as soon as
 * possible"), with two bounded exceptions: a v1 line that could only be
 * completed past 107 bytes is refused when its 107th byte arrives, and the
 * body of a v2 header (addresses, TLVs, checksum) is judged once all of it,
 * as declared by its length field, is there (2.2: "must not start to parse
 * an address before the whole address block is received").
 * Stateless: the caller keeps the bytes and calls again with more. The
 * header is short and read once per connection, so starting over each time
 * costs nothing that matters and leaves no state to get wrong.
 * Not here: reading the socket, the timeout for a header that never
 * completes, which peers may send one (config), what to log.
 *
 * Strictness, where the specification leaves room:
 *  - v1 numbers: IPv4 octets and ports are decimal without sign and without
 *    leading zeros ("0" itself is fine), because 2.1 forbids them "to avoid
 *    any possible confusion with octal numbers"; "010.0.0.1" is an error,
 *    not 8.0.0.1 nor 10.0.0.1. IPv6 is what inet_pton(AF_INET6) accepts:
 *    1 to 4 hex digits a group (so "0db8" is fine), one "::", an optional
 *    dotted quad for the last 32 bits.
 *  - v1 UNKNOWN: "PROXY UNKNOWN" then CRLF, or a space and anything but CR
 *    or LF up to the CRLF (2.1: the receiver "must ignore anything presented
 *    before the CRLF").
 *  - v2 family byte: ignored for LOCAL (2.2: "discard the protocol block
 *    including the family which is ignored"); for PROXY a family above
 *    AF_UNIX or a protocol above DGRAM is an error (2.2: "must be rejected
 *    as invalid"), and every valid combination other than TCP over IPv4 or
 *    IPv6 is reported unknown.
 *  - v2 address block: TCP over IPv4/IPv6 must fit in the declared length.
 *    For the other families (and for LOCAL) a declared length too short for
 *    the family's block is skipped whole as opaque; TLVs are looked for only
 *    after a complete block (UNSPEC has an empty one, so a LOCAL health
 *    check's TLVs start right after the 16 fixed bytes).
 *  - v2 TLVs: every TLV must fit exactly in the declared length; a CRC32C
 *    TLV must be 4 bytes long and appear at most once.
 */
#include "proxy_proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

enum {
    V2_FIXED = 16, /* signature, ver_cmd, fam, len */
    V2_CMD_LOCAL = 0x0,
    V2_CMD_PROXY = 0x1,
    V2_TCP4 = 0x11,
    V2_TCP6 = 0x21,
    V2_TLV_CRC32C = 0x03,
    V2_NO_LAYOUT = -1,
};

static const unsigned char v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                          0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

static mx_rc fail(const char **why, const char *text)
{
    *why = text;
    return MX_ERROR;
}

static void set_addr(struct sockaddr_storage *ss, int family, const unsigned char *addr,
                     unsigned port)
{
    if (family == AF_INET) {
        struct sockaddr_in sin;

        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        memcpy(&sin.sin_addr, addr, 4);
        sin.sin_port = htons((uint16_t)port);
        memcpy(ss, &sin, sizeof(sin));
    } else {
        struct sockaddr_in6 sin6;

        memset(&sin6, 0, sizeof(sin6));
        sin6.sin6_family = AF_INET6;
        memcpy(&sin6.sin6_addr, addr, 16);
        sin6.sin6_port = htons((uint16_t)port);
        memcpy(ss, &sin6, sizeof(sin6));
    }
}

/* ---- v1: one line of text ---- */

/*
 * The v1 reader. Each step returns MX_OK with p moved past what it matched,
 * MX_AGAIN when the bytes ran out while still a possible header, or
 * MX_ERROR with why set at the byte that made it impossible.
 */
typedef struct rd {
    const unsigned char *p, *end;
    const char *why;
} rd;

static mx_rc bad(rd *r, const char *why)
{
    r->why = why;
    return MX_ERROR;
}

static int hexval(unsigned c)
{
    if (c >= '0' && c <= '9')
        return (int)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (int)(c - 'A' + 10);
    return -1;
}

static mx_rc lit(rd *r, const char *s, const char *why)
{
    for (; *s != '\0'; s++) {
        if (r->p == r->end)
            return MX_AGAIN;
        if (*r->p != (unsigned char)*s)
            return bad(r, why);
        r->p++;
    }
    return MX_OK;
}

/* Decimal 0..max, no sign, no leading zero; stops at the first non-digit. */
static mx_rc decimal(rd *r, unsigned max, unsigned *out, const char *why)
{
    unsigned v = 0;
    int digits = 0;

    for (;;) {
        if (r->p == r->end)
            return MX_AGAIN;
        if (*r->p < '0' || *r->p > '9')
            break;
        if (digits > 0 && v == 0)
            return bad(r, why); /* "0" followed by a digit */
        v = v * 10 + (unsigned)(*r->p - '0');
        if (v > max)
            return bad(r, why);
        digits++;
        r->p++;
    }
    if (digits == 0)
        return bad(r, why);
    *out = v;
    return MX_OK;
}

static mx_rc ip4(rd *r, unsigned char out[4], const char *why)
{
    for (int i = 0; i < 4; i++) {
        unsigned v;
        mx_rc rc;

        if (i > 0 && (rc = lit(r, ".", why)) != MX_OK)
            return rc;
        if ((rc = decimal(r, 255, &v, why)) != MX_OK)
            return rc;
        out[i] = (unsigned char)v;
    }
    return MX_OK;
}

/*
 * RFC 4291 2.2 text, read the way inet_pton(AF_INET6) reads it, but byte by
 * byte so that a prefix no address can start with is refused at once: a
 * group past the eighth, a fifth hex digit, a second "::", a lone ':' at
 * either end. "::" stands for at least one zero group, so with it at most
 * seven groups may be written. A '.' turns the group being read into the
 * first octet of a dotted quad that must end the address.
 */
static mx_rc ip6(rd *r, unsigned char out[16], const char *why)
{
    unsigned w[8];
    int n = 0;     /* groups complete */
    int gap = -1;  /* index of the group "::" stands before, if seen */
    int colon = 0; /* the last byte was a ':' ending a group */
    int nd = 0;    /* hex digits of the group being read */
    unsigned v = 0;
    const unsigned char *grp = r->p;

    if (r->p == r->end)
        return MX_AGAIN;
    if (*r->p == ':') { /* a leading colon must be half of "::" */
        r->p++;
        if (r->p == r->end)
            return MX_AGAIN;
        if (*r->p != ':')
            return bad(r, why);
        r->p++;
        gap = 0;
    }
    for (;;) {
        int max = gap < 0 ? 8 : 7;
        int h;

        if (r->p == r->end)
            return MX_AGAIN;
        h = hexval(*r->p);
        if (h >= 0) {
            if (nd == 0) {
                if (n + 1 > max)
                    return bad(r, why);
                grp = r->p;
            } else if (nd == 4) {
                return bad(r, why);
            }
            v = v << 4 | (unsigned)h;
            nd++;
            colon = 0;
            r->p++;
        } else if (*r->p == ':') {
            if (nd > 0) {
                w[n++] = v;
                nd = 0;
                v = 0;
                if (n + 1 > max) /* no room for the group a ':' promises */
                    return bad(r, why);
                colon = 1;
            } else if (colon && gap < 0) {
                gap = n;
                colon = 0;
            } else {
                return bad(r, why); /* ":::" or a second "::" */
            }
            r->p++;
        } else if (*r->p == '.') {
            unsigned char q[4];
            mx_rc rc;

            /* 32 more bits, and they must be the last ones */
            if (nd == 0 || (gap < 0 ? n != 6 : n + 2 > max))
                return bad(r, why);
            r->p = grp;
            if ((rc = ip4(r, q, why)) != MX_OK)
                return rc;
            w[n++] = (unsigned)q[0] << 8 | q[1];
            w[n++] = (unsigned)q[2] << 8 | q[3];
            break;
        } else {
            if (colon)
                return bad(r, why);
            if (nd > 0)
                w[n++] = v;
            if (gap < 0 ? n != 8 : n > 7)
                return bad(r, why);
            break;
        }
    }

    memset(out, 0, 16);
    for (int i = 0; i < n; i++) {
        /* groups after "::" move to the end; the zeros fill the middle */
        int at = gap >= 0 && i >= gap ? i + 8 - n : i;

        out[2 * at] = (unsigned char)(w[i] >> 8);
        out[2 * at + 1] = (unsigned char)w[i];
    }
    return MX_OK;
}

/* "PROXY UNKNOWN" read; then CRLF, or a space and anything up to CRLF. */
static mx_rc v1_unknown(rd *r)
{
    for (const unsigned char *start = r->p;; r->p++) {
        if (r->p == r->end)
            return MX_AGAIN;
        if (*r->p == '\r')
            return lit(r, "\r\n", "PROXY v1: CR not followed by LF");
        if (*r->p == '\n')
            return bad(r, "PROXY v1: line ended by a bare LF");
        if (r->p == start && *r->p != ' ')
            return bad(r, "PROXY v1: unknown protocol (not TCP4, TCP6 or UNKNOWN)");
    }
}

static mx_rc v1_line(rd *r, mx_pp_header *out)
{
    static const char e_proto[] = "PROXY v1: unknown protocol (not TCP4, TCP6 or UNKNOWN)";
    static const char e_src[] = "PROXY v1: bad source address";
    static const char e_dst[] = "PROXY v1: bad destination address";
    static const char e_sport[] = "PROXY v1: bad source port";
    static const char e_dport[] = "PROXY v1: bad destination port";
    unsigned char src[16], dst[16];
    unsigned sport, dport;
    int family;
    mx_rc rc;

    if ((rc = lit(r, "PROXY ", "not a PROXY protocol header")) != MX_OK)
        return rc;
    if (r->p == r->end)
        return MX_AGAIN;
    if (*r->p == 'U') {
        if ((rc = lit(r, "UNKNOWN", e_proto)) != MX_OK || (rc = v1_unknown(r)) != MX_OK)
            return rc;
        out->unknown = 1;
        return MX_OK;
    }
    if ((rc = lit(r, "TCP", e_proto)) != MX_OK)
        return rc;
    if (r->p == r->end)
        return MX_AGAIN;
    if (*r->p == '4')
        family = AF_INET;
    else if (*r->p == '6')
        family = AF_INET6;
    else
        return bad(r, e_proto);
    r->p++;

    /* exactly one space between fields, and the line ends in CRLF only */
    if ((rc = lit(r, " ", e_proto)) != MX_OK ||
        (rc = family == AF_INET ? ip4(r, src, e_src) : ip6(r, src, e_src)) != MX_OK ||
        (rc = lit(r, " ", e_src)) != MX_OK ||
        (rc = family == AF_INET ? ip4(r, dst, e_dst) : ip6(r, dst, e_dst)) != MX_OK ||
        (rc = lit(r, " ", e_dst)) != MX_OK || (rc = decimal(r, 65535, &sport, e_sport)) != MX_OK ||
        (rc = lit(r, " ", e_sport)) != MX_OK ||
        (rc = decimal(r, 65535, &dport, e_dport)) != MX_OK ||
        (rc = lit(r, "\r\n", "PROXY v1: line not ended by CRLF")) != MX_OK)
        return rc;
    set_addr(&out->src, family, src, sport);
    set_addr(&out->dst, family, dst, dport);
    return MX_OK;
}

static mx_rc v1(const unsigned char *p, size_t n, mx_pp_header *out, const char **why)
{
    /* Never look past 107 bytes: running out there means too long. */
    rd r = { p, p + (n < MX_PP_V1_MAX ? n : MX_PP_V1_MAX), NULL };
    mx_rc rc = v1_line(&r, out);

    if (rc == MX_AGAIN && n >= MX_PP_V1_MAX)
        return fail(why, "PROXY v1: no CRLF in the first 107 bytes");
    if (rc == MX_ERROR)
        return fail(why, r.why);
    if (rc == MX_AGAIN)
        return MX_AGAIN;
    out->version = 1;
    out->length = (size_t)(r.p - p);
    return MX_DONE;
}

/* ---- v2: 16 fixed bytes, then as many as their length field says ---- */

/* Bytes of the address block for a family byte (2.2), or V2_NO_LAYOUT. */
static int v2_block(unsigned fam)
{
    switch (fam) {
    case 0x00:
        return 0;
    case 0x11:
    case 0x12:
        return 12;
    case 0x21:
    case 0x22:
        return 36;
    case 0x31:
    case 0x32:
        return 216;
    default:
        return V2_NO_LAYOUT;
    }
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* 2.2.3: the CRC32C of the whole header with the checksum field zeroed. */
static mx_rc v2_crc(const unsigned char *p, size_t total, size_t at, size_t vlen,
                    mx_pp_header *out, const char **why)
{
    static const unsigned char zero[4];
    uint32_t crc;

    if (vlen != 4)
        return fail(why, "PROXY v2: CRC32C TLV is not 4 bytes long");
    if (out->has_crc)
        return fail(why, "PROXY v2: more than one CRC32C TLV");
    crc = mx_pp_crc32c(0, p, at);
    crc = mx_pp_crc32c(crc, zero, 4);
    crc = mx_pp_crc32c(crc, p + at + 4, total - at - 4);
    if (crc != be32(p + at))
        return fail(why, "PROXY v2: CRC32C mismatch");
    out->has_crc = 1;
    return MX_OK;
}

/* type (1), length (2, big endian), value: each must fit in what is left */
static mx_rc v2_tlvs(const unsigned char *p, size_t q, size_t total, mx_pp_header *out,
                     const char **why)
{
    while (q < total) {
        size_t vlen;

        if (total - q < 3)
            return fail(why, "PROXY v2: TLV overruns the header");
        vlen = (size_t)p[q + 1] << 8 | p[q + 2];
        if (vlen > total - q - 3)
            return fail(why, "PROXY v2: TLV overruns the header");
        if (p[q] == V2_TLV_CRC32C && v2_crc(p, total, q + 3, vlen, out, why) != MX_OK)
            return MX_ERROR;
        q += 3 + vlen;
    }
    return MX_OK;
}

static mx_rc v2(const unsigned char *p, size_t n, mx_pp_header *out, const char **why)
{
    unsigned cmd, fam;
    size_t len, total;
    int block;

    for (size_t i = 0; i < sizeof(v2_sig) && i < n; i++)
        if (p[i] != v2_sig[i])
            return fail(why, "not a PROXY protocol header");
    if (n <= 12)
        return MX_AGAIN;
    if (p[12] >> 4 != 2)
        return fail(why, "PROXY v2: version is not 2");
    cmd = p[12] & 0xfu;
    if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
        return fail(why, "PROXY v2: command is neither LOCAL nor PROXY");
    if (n <= 13)
        return MX_AGAIN;
    fam = p[13];
    if (cmd == V2_CMD_PROXY && (fam >> 4 > 3 || (fam & 0xfu) > 2))
        return fail(why, "PROXY v2: unknown address family or protocol");
    if (n < V2_FIXED)
        return MX_AGAIN;
    len = (size_t)p[14] << 8 | p[15];
    total = V2_FIXED + len;
    if (n < total)
        return MX_AGAIN;

    block = v2_block(fam);
    if (cmd == V2_CMD_LOCAL) {
        out->local = 1;
    } else if (fam == V2_TCP4 || fam == V2_TCP6) {
        const unsigned char *a = p + V2_FIXED;
        size_t al = fam == V2_TCP4 ? 4 : 16; /* one address */
        int family = fam == V2_TCP4 ? AF_INET : AF_INET6;

        if (len < (size_t)block)
            return fail(why, "PROXY v2: declared length too short for the addresses");
        /* src, dst, then src port and dst port, all in network order */
        set_addr(&out->src, family, a, (unsigned)a[2 * al] << 8 | a[2 * al + 1]);
        set_addr(&out->dst, family, a + al, (unsigned)a[2 * al + 2] << 8 | a[2 * al + 3]);
    } else {
        out->unknown = 1;
    }
    if (block != V2_NO_LAYOUT && (size_t)block <= len &&
        v2_tlvs(p, V2_FIXED + (size_t)block, total, out, why) != MX_OK)
        return MX_ERROR;
    out->version = 2;
    out->length = total;
    return MX_DONE;
}

mx_rc mx_pp_parse(const char *p, const char *end, mx_pp_header *out, const char **why)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t n = (size_t)(end - p);
    mx_rc rc;

    memset(out, 0, sizeof(*out));
    if (n == 0)
        return MX_AGAIN;
    if (b[0] == 'P')
        rc = v1(b, n, out, why);
    else
        rc = v2(b, n, out, why);
    if (rc != MX_DONE)
        memset(out, 0, sizeof(*out));
    return rc;
}

/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78, RFC 4960 appendix
 * B), four bits at a time. crc is 0 to start, or an earlier result to go
 * on with: crc32c(crc32c(0, a), b) is the CRC of a followed by b. The
 * table holds each 4-bit value shifted through the polynomial.
 */
uint32_t mx_pp_crc32c(uint32_t crc, const void *p, size_t len)
{
    static const uint32_t t[16] = {
        0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
        0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
        0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
    };
    const unsigned char *b = p;

    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= b[i];
        crc = crc >> 4 ^ t[crc & 0xf];
        crc = crc >> 4 ^ t[crc & 0xf];
    }
    return ~crc;
}
