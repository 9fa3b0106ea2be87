/*
 * proxy_proto.h: the PROXY protocol header parser, v1 and v2 (HAProxy's
 * proxy-protocol.txt).
 *
 * Owns: recognising one PROXY header at the start of a connection and
 * saying exactly how long it is, so the caller consumes that many bytes and
 * not one more (implicit TLS or SMTP may follow in the same segment).
 * Pure: no I/O, no allocation, no logging.
 *
 * Rules enforced:
 *  - v1: "PROXY " then TCP4/TCP6/UNKNOWN, addresses and ports in strict
 *    decimal/inet_pton form, single spaces, terminated by CRLF only; the
 *    whole line is at most 107 bytes. UNKNOWN may carry anything up to CRLF.
 *  - v2: the 12-byte signature, version 2, command LOCAL or PROXY, family
 *    and protocol; the declared length is always honoured (skipped whole,
 *    whatever the family says). For AF_INET/AF_INET6 over STREAM the address
 *    block must fit in the declared length. TLVs are walked with bounds
 *    checks; a CRC32C TLV (type 0x03) is verified over the whole header
 *    with the checksum field zeroed. Unknown TLVs are skipped.
 *  - LOCAL (v2) carries no client address: the caller uses the socket's
 *    own addresses and treats the connection as a health check.
 */
#ifndef MX_PROXY_PROTO_H
#define MX_PROXY_PROTO_H

#include <stdint.h>
#include <sys/socket.h>

#include "mxdefs.h"

#define MX_PP_V1_MAX 107
#define MX_PP_V2_MIN 16

typedef struct mx_pp_header {
    int version;     /* 1 or 2 */
    int local;       /* v2 LOCAL command (health check) */
    int unknown;     /* v1 UNKNOWN, or v2 with AF_UNSPEC / a non-stream protocol:
                        addresses not given; use the socket's */
    struct sockaddr_storage src, dst; /* valid when !local && !unknown */
    size_t length;   /* bytes the header occupies; consume exactly this */
    int has_crc;     /* a CRC32C TLV was present (and matched) */
} mx_pp_header;

/*
 * Parse a header from [p, end). Returns MX_DONE with *out filled, MX_AGAIN
 * when more bytes are needed (never past MX_PP_V1_MAX for v1, or the
 * declared length for v2), or MX_ERROR with *why set (static text) when the
 * bytes are not a valid header — including when they are not a PROXY
 * header at all.
 */
mx_rc mx_pp_parse(const char *p, const char *end, mx_pp_header *out, const char **why);

/* CRC32C (Castagnoli), as used by the v2 CRC32C TLV. Start with crc = 0;
 * pass an earlier result to continue over more bytes. The TLV holds the
 * value big-endian. */
uint32_t mx_pp_crc32c(uint32_t crc, const void *p, size_t len);

#endif
