/*
 * test_proxy_proto.c: the PROXY protocol header parser, as a table of
 * connection starts and the verdict each must get.
 *
 * The parser is stateless: a header that arrives in pieces is parsed again
 * from the start with more bytes. So "split at every byte" means every
 * prefix of a row is parsed too, each from an allocation of exactly its
 * size (ASan sees any read past the end), and must agree with the row:
 *  - a prefix shorter than a header gives MX_AGAIN; from the header's last
 *    byte on, the same header, and the bytes after it are never counted;
 *  - an error shows at the byte that makes it one (ERR_AT names the prefix
 *    ending there) and stays;
 *  - a row that waits waits at every prefix.
 * Expected CRC32C values were computed apart from this code; the CRC32C
 * itself is checked against the published vectors.
 */
#include <arpa/inet.h>
#include <glib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "proxy_proto.h"

typedef struct row {
    const char *name;
    const char *in;
    size_t in_len;
    mx_rc rc;
    size_t length;       /* MX_DONE: bytes of the header */
    const char *upto;    /* MX_ERROR: the shortest prefix that is an error */
    size_t upto_len;
    const char *why;     /* MX_ERROR: text the reason must contain, if set */
    int version, local, unknown, has_crc;
    const char *src, *dst; /* "ADDR PORT", or NULL when none is given */
} row;

#define IN(s) .in = (s), .in_len = sizeof(s) - 1
/* a header h, then bytes t that belong to whatever follows it */
#define HDR(h, t) .in = h t, .in_len = sizeof(h t) - 1, .rc = MX_DONE, .length = sizeof(h) - 1
#define ERR_AT(s) .rc = MX_ERROR, .upto = (s), .upto_len = sizeof(s) - 1
#define WAITS .rc = MX_AGAIN
#define V1 .version = 1
#define V2 .version = 2

/* a TCP4 line and what it carries */
#define L4 "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25"
#define L4_SRC "192.0.2.1 56324"
#define L4_DST "198.51.100.7 25"

/* 2.1's worst case: exactly 107 bytes */
#define F39 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
#define UNKNOWN_107 "PROXY UNKNOWN " F39 " " F39 " 65535 65535\r\n"
#define UNKNOWN_108 "PROXY UNKNOWN " F39 " " F39 " 65535 655350\r\n"
/* the longest IPv6 text, 45 bytes: a valid line of 116 */
#define F45 "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"

/* v2 */
#define SIG "\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
#define A4 "\xc0\x00\x02\x01" "\xc6\x33\x64\x07" "\xdc\x04" "\x00\x19"
#define V2_TCP4 SIG "\x21\x11\x00\x0c" A4
#define V2_TCP4_TLVS                                                                        \
    SIG "\x21\x11\x00\x32" A4 "\x02\x00\x0e" "mx.example.org" "\x04\x00\x00"                \
        "\x20\x00\x0f" "\x01" "\x00\x00\x00\x00" "\x21\x00\x07" "TLSv1.3"
#define V2_TCP4_CRC                                                                         \
    SIG "\x21\x11\x00\x18" A4 "\x04\x00\x02\x00\x00" "\x03\x00\x04" "\x90\x75\xa5\x86"
#define V2_TCP4_BADCRC                                                                      \
    SIG "\x21\x11\x00\x18" A4 "\x04\x00\x02\x00\x00" "\x03\x00\x04" "\x90\x75\xa5\x87"
#define V2_TCP4_TWO_CRC                                                                     \
    SIG "\x21\x11\x00\x1a" A4 "\x03\x00\x04" "\xa2\x79\xee\x05" "\x03\x00\x04" "\x00\x00\x00\x00"
/* HAProxy 2.6 "check-send-proxy" with "proxy-v2-options crc32c" */
#define V2_LOCAL_CRC SIG "\x20\x00\x00\x07" "\x03\x00\x04" "\xa9\xb8\x7e\x8f"
#define V2_LOCAL_BADCRC SIG "\x20\x00\x00\x07" "\x03\x00\x04" "\xa9\xb8\x7e\x8e"
#define A6                                                                                  \
    "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"                      \
    "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x25" "\x9c\x40" "\x01\xd1"
#define V2_TCP6 SIG "\x21\x21\x00\x24" A6
#define Z8 "\0\0\0\0\0\0\0\0"
#define Z72 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8
#define Z216 Z72 Z72 Z72

static const row rows[] = {
    /* v1 */
    { "v1 TCP4 gives addresses and ports", HDR(L4 "\r\n", ""), V1, .src = L4_SRC,
      .dst = L4_DST },
    { "v1 TCP4 followed by SMTP leaves the command unread", HDR(L4 "\r\n", "EHLO x\r\n"), V1,
      .src = L4_SRC, .dst = L4_DST },
    { "v1 TCP4 followed by a TLS ClientHello leaves it unread",
      HDR(L4 "\r\n", "\x16\x03\x01\x00\xa5\x01"), V1, .src = L4_SRC, .dst = L4_DST },
    { "v1 a second header after the first is not read", HDR(L4 "\r\n", L4 "\r\n"), V1,
      .src = L4_SRC, .dst = L4_DST },
    { "v1 zero octets and ports 0 and 65535 are in range",
      HDR("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ""), V1, .src = "0.0.0.0 0",
      .dst = "255.255.255.255 65535" },
    { "v1 TCP6 gives addresses and ports",
      HDR("PROXY TCP6 2001:db8::1 2001:db8::25 40000 465\r\n", "EHLO x\r\n"), V1,
      .src = "2001:db8::1 40000", .dst = "2001:db8::25 465" },
    { "v1 TCP6 in full form, 104 bytes",
      HDR("PROXY TCP6 " F39 " " F39 " 65535 65535\r\n", ""), V1, .src = F39 " 65535",
      .dst = F39 " 65535" },
    { "v1 TCP6 hex is case-insensitive and groups may have leading zeros",
      HDR("PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 2001:db8:0:0:0:0:0:25 1 2\r\n",
          ""),
      V1, .src = "2001:db8::1 1", .dst = "2001:db8::25 2" },
    { "v1 TCP6 unspecified addresses", HDR("PROXY TCP6 :: :: 0 0\r\n", ""), V1,
      .src = ":: 0", .dst = ":: 0" },
    { "v1 TCP6 with a trailing double colon", HDR("PROXY TCP6 1:2:3:4:5:6:7:: 1:: 1 2\r\n", ""),
      V1, .src = "1:2:3:4:5:6:7:0 1", .dst = "1:: 2" },
    { "v1 TCP6 with an embedded IPv4 address",
      HDR("PROXY TCP6 ::ffff:192.0.2.1 1:2:3:4:5:6:198.51.100.7 56324 25\r\n", ""), V1,
      .src = "::ffff:192.0.2.1 56324", .dst = "1:2:3:4:5:6:c633:6407 25" },
    { "v1 UNKNOWN short form", HDR("PROXY UNKNOWN\r\n", "EHLO x\r\n"), V1, .unknown = 1 },
    { "v1 UNKNOWN ignores what follows it on the line",
      HDR("PROXY UNKNOWN TCP4 anything at all\r\n", "EHLO x\r\n"), V1, .unknown = 1 },
    { "v1 UNKNOWN of 107 bytes, the longest line, is accepted", HDR(UNKNOWN_107, "QUIT\r\n"),
      V1, .unknown = 1 },
    { "v1 a line of 108 bytes is refused at its 107th", IN(UNKNOWN_108),
      ERR_AT("PROXY UNKNOWN " F39 " " F39 " 65535 655350\r"), .why = "107" },
    { "v1 a valid TCP6 line longer than 107 bytes is refused at its 107th",
      IN("PROXY TCP6 " F45 " " F45 " 65535 65535\r\n"),
      ERR_AT("PROXY TCP6 " F45 " " F45 " 6553"), .why = "107" },
    { "v1 a CR at the 107th byte is one byte too many",
      IN("PROXY UNKNOWN " F39 " " F39 " 65535 655350\r"),
      ERR_AT("PROXY UNKNOWN " F39 " " F39 " 65535 655350\r") },

    { "v1 bare LF does not end the line", IN(L4 "\nEHLO x\r\n"), ERR_AT(L4 "\n") },
    { "v1 bare LF after UNKNOWN does not end the line", IN("PROXY UNKNOWN\nEHLO x\r\n"),
      ERR_AT("PROXY UNKNOWN\n") },
    { "v1 bare LF inside UNKNOWN's ignored text is refused", IN("PROXY UNKNOWN a b\nc\r\n"),
      ERR_AT("PROXY UNKNOWN a b\n") },
    { "v1 bare CR is refused", IN(L4 "\rEHLO x\r\n"), ERR_AT(L4 "\rE") },
    { "v1 CR CR LF is refused", IN(L4 "\r\r\n"), ERR_AT(L4 "\r\r") },
    { "v1 lowercase proxy is not a header", IN("proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n"),
      ERR_AT("p") },
    { "v1 lowercase tcp4 is refused", IN("PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY t") },
    { "v1 TCP5 is not a protocol", IN("PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY TCP5") },
    { "v1 UNKNOWN glued to more letters is refused", IN("PROXY UNKNOWNX\r\n"),
      ERR_AT("PROXY UNKNOWNX") },
    { "v1 PROXY alone is refused", IN("PROXY\r\n"), ERR_AT("PROXY\r") },
    { "v1 a protocol without addresses is refused", IN("PROXY TCP4\r\n"), ERR_AT("PROXY TCP4\r") },
    { "v1 a missing destination port is refused", IN("PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.7 56324\r") },
    { "v1 a missing destination address is refused", IN("PROXY TCP4 192.0.2.1 56324 25\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 563") },
    { "v1 two spaces after PROXY are refused", IN("PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY  ") },
    { "v1 two spaces between addresses are refused",
      IN("PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n"), ERR_AT("PROXY TCP4 192.0.2.1  ") },
    { "v1 a space before CRLF is refused", IN(L4 " \r\n"), ERR_AT(L4 " ") },
    { "v1 a tab is not a separator", IN("PROXY TCP4\t192.0.2.1 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY TCP4\t") },
    { "v1 octet 256 is out of range", IN("PROXY TCP4 256.1.1.1 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY TCP4 256"), .why = "source address" },
    { "v1 an octet with a leading zero is refused (octal ambiguity)",
      IN("PROXY TCP4 010.0.0.1 198.51.100.7 1 2\r\n"), ERR_AT("PROXY TCP4 01") },
    { "v1 a destination octet with a leading zero is refused",
      IN("PROXY TCP4 192.0.2.1 198.51.100.07 1 2\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.07"), .why = "destination address" },
    { "v1 three octets are not an address", IN("PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY TCP4 192.0.2 ") },
    { "v1 five octets are not an address", IN("PROXY TCP4 192.0.2.1.5 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1.") },
    { "v1 an empty octet is refused", IN("PROXY TCP4 192..2.1 198.51.100.7 1 2\r\n"),
      ERR_AT("PROXY TCP4 192..") },
    { "v1 TCP4 with IPv6 addresses is refused", IN("PROXY TCP4 ::1 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP4 :") },
    { "v1 TCP6 with IPv4 addresses is refused",
      IN("PROXY TCP6 192.0.2.1 198.51.100.7 1 2\r\n"), ERR_AT("PROXY TCP6 192.") },
    { "v1 port 65536 is out of range", IN("PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.7 65536"), .why = "source port" },
    { "v1 destination port 99999 is out of range",
      IN("PROXY TCP4 192.0.2.1 198.51.100.7 1 99999\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.7 1 99999"), .why = "destination port" },
    { "v1 a port with a leading zero is refused",
      IN("PROXY TCP4 192.0.2.1 198.51.100.7 56324 025\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.7 56324 02") },
    { "v1 a signed port is refused", IN("PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.7 +") },
    { "v1 a negative port is refused", IN("PROXY TCP4 192.0.2.1 198.51.100.7 1 -2\r\n"),
      ERR_AT("PROXY TCP4 192.0.2.1 198.51.100.7 1 -") },
    { "v1 IPv6 with two double colons is refused", IN("PROXY TCP6 1::2::3 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 1::2::") },
    { "v1 IPv6 with nine groups is refused", IN("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 1:2:3:4:5:6:7:8:") },
    { "v1 IPv6 with a double colon and eight groups is refused",
      IN("PROXY TCP6 1:2:3:4::5:6:7:8 ::1 1 2\r\n"), ERR_AT("PROXY TCP6 1:2:3:4::5:6:7:") },
    { "v1 IPv6 with seven groups and no double colon is refused",
      IN("PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n"), ERR_AT("PROXY TCP6 1:2:3:4:5:6:7 ") },
    { "v1 IPv6 group of five hex digits is refused", IN("PROXY TCP6 12345::1 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 12345") },
    { "v1 IPv6 ending in a single colon is refused", IN("PROXY TCP6 1:2:3:4:5:6:7: ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 1:2:3:4:5:6:7: ") },
    { "v1 IPv6 starting with a single colon is refused", IN("PROXY TCP6 :1::2 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 :1") },
    { "v1 IPv6 with three colons is refused", IN("PROXY TCP6 1:::2 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 1:::") },
    { "v1 IPv6 with an IPv4 tail after seven groups is refused",
      IN("PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n"), ERR_AT("PROXY TCP6 1:2:3:4:5:6:7:1.") },
    { "v1 IPv6 with an IPv4 tail not at the end is refused",
      IN("PROXY TCP6 ::1.2.3.4:5 ::1 1 2\r\n"), ERR_AT("PROXY TCP6 ::1.2.3.4:") },
    { "v1 IPv6 with an IPv4 tail with a leading zero is refused",
      IN("PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n"), ERR_AT("PROXY TCP6 ::ffff:01.") },
    { "v1 IPv6 with a hex IPv4 tail is refused", IN("PROXY TCP6 ::ffff:1a.2.3.4 ::1 1 2\r\n"),
      ERR_AT("PROXY TCP6 ::ffff:1a.") },
    { "v1 a partial TCP4 line waits", IN("PROXY TCP4 192.0.2.1 198.5"), WAITS },
    { "v1 a partial IPv6 address waits", IN("PROXY TCP6 2001:db8::"), WAITS },
    { "v1 a complete line without its LF waits", IN(L4 "\r"), WAITS },
    { "v1 106 bytes without CRLF wait", IN("PROXY UNKNOWN " F39 " " F39 " 65535 65535\r"), WAITS },

    /* not a PROXY header at all */
    { "an empty input waits", IN(""), WAITS },
    { "EHLO is not a PROXY header", IN("EHLO client.example\r\n"), ERR_AT("E"),
      .why = "not a PROXY" },
    { "HTTP is not a PROXY header", IN("GET / HTTP/1.1\r\n"), ERR_AT("G") },
    { "a TLS ClientHello is not a PROXY header", IN("\x16\x03\x01\x00\xa5\x01"),
      ERR_AT("\x16") },
    { "a NUL byte is not a PROXY header", IN("\0PROXY"), ERR_AT("\0") },
    { "CRLF then text is not a PROXY header", IN("\r\nPROXY"), ERR_AT("\r\nP") },

    /* v2 */
    { "v2 PROXY TCP over IPv4 gives addresses and ports", HDR(V2_TCP4, "EHLO x\r\n"), V2,
      .src = L4_SRC, .dst = L4_DST },
    { "v2 followed by a TLS ClientHello leaves it unread",
      HDR(V2_TCP4, "\x16\x03\x01\x00\xa5\x01"), V2, .src = L4_SRC, .dst = L4_DST },
    { "v2 TLVs (authority, noop, SSL with a sub-TLV) are skipped", HDR(V2_TCP4_TLVS, "QUIT\r\n"),
      V2, .src = L4_SRC, .dst = L4_DST },
    { "v2 with a matching CRC32C TLV", HDR(V2_TCP4_CRC, "QUIT\r\n"), V2, .has_crc = 1,
      .src = L4_SRC, .dst = L4_DST },
    { "v2 with a CRC32C TLV that does not match is refused", IN(V2_TCP4_BADCRC "QUIT\r\n"),
      ERR_AT(V2_TCP4_BADCRC), .why = "CRC32C mismatch" },
    { "v2 with two CRC32C TLVs is refused", IN(V2_TCP4_TWO_CRC), ERR_AT(V2_TCP4_TWO_CRC),
      .why = "more than one" },
    { "v2 a CRC32C TLV of 3 bytes is refused",
      IN(SIG "\x21\x11\x00\x12" A4 "\x03\x00\x03" "abc"),
      ERR_AT(SIG "\x21\x11\x00\x12" A4 "\x03\x00\x03" "abc"), .why = "4 bytes" },
    { "v2 LOCAL health check as HAProxy 2.6 sends it (CRC32C TLV, length 7)",
      HDR(V2_LOCAL_CRC, ""), V2, .local = 1, .has_crc = 1 },
    { "v2 LOCAL with a CRC32C that does not match is refused", IN(V2_LOCAL_BADCRC),
      ERR_AT(V2_LOCAL_BADCRC), .why = "CRC32C mismatch" },
    { "v2 LOCAL without TLVs", HDR(SIG "\x20\x00\x00\x00", "EHLO x\r\n"), V2, .local = 1 },
    { "v2 LOCAL skips a declared address block without using it",
      HDR(SIG "\x20\x11\x00\x0c" A4, "EHLO x\r\n"), V2, .local = 1 },
    { "v2 LOCAL ignores the family byte", HDR(SIG "\x20\xff\x00\x03" "abc", ""), V2, .local = 1 },
    { "v2 PROXY TCP over IPv6 gives addresses and ports", HDR(V2_TCP6, "EHLO x\r\n"), V2,
      .src = "2001:db8::1 40000", .dst = "2001:db8::25 465" },
    { "v2 UDP over IPv4 is unknown", HDR(SIG "\x21\x12\x00\x0c" A4, ""), V2, .unknown = 1 },
    { "v2 UDP over IPv6 is unknown", HDR(SIG "\x21\x22\x00\x24" A6, ""), V2, .unknown = 1 },
    { "v2 UNSPEC is unknown", HDR(SIG "\x21\x00\x00\x00", "EHLO x\r\n"), V2, .unknown = 1 },
    { "v2 INET with an unspecified protocol is unknown",
      HDR(SIG "\x21\x10\x00\x03" "\x04\x00\x00", ""), V2, .unknown = 1 },
    { "v2 UNIX stream is unknown and its 216-byte block skipped",
      HDR(SIG "\x21\x31\x00\xd8" Z216, "EHLO x\r\n"), V2, .unknown = 1 },
    { "v2 UNIX datagram with a TLV after the block",
      HDR(SIG "\x21\x32\x00\xdb" Z216 "\x04\x00\x00", ""), V2, .unknown = 1 },
    { "v2 UNIX with a TLV overrunning the header is refused",
      IN(SIG "\x21\x31\x00\xdb" Z216 "\x04\x00\x01"),
      ERR_AT(SIG "\x21\x31\x00\xdb" Z216 "\x04\x00\x01") },
    { "v2 UNIX with a block shorter than 216 bytes is skipped whole",
      HDR(SIG "\x21\x31\x00\x05" "/tmp\0", ""), V2, .unknown = 1 },
    { "v2 UNSPEC followed by bytes that are not TLVs is refused",
      IN(SIG "\x21\x00\x00\x04" "abcd"), ERR_AT(SIG "\x21\x00\x00\x04" "abcd"),
      .why = "TLV" },
    { "v2 TCP4 with a length too short for the addresses is refused",
      IN(SIG "\x21\x11\x00\x08" "\xc0\x00\x02\x01" "\xc6\x33\x64\x07" "EHLO"),
      ERR_AT(SIG "\x21\x11\x00\x08" "\xc0\x00\x02\x01" "\xc6\x33\x64\x07") },
    { "v2 TCP6 with a length for IPv4 addresses is refused", IN(SIG "\x21\x21\x00\x0c" A4),
      ERR_AT(SIG "\x21\x21\x00\x0c" A4) },
    { "v2 a TLV overrunning the declared length is refused",
      IN(SIG "\x21\x11\x00\x10" A4 "\x04\x00\x05" "x" "EHLO x\r\n"),
      ERR_AT(SIG "\x21\x11\x00\x10" A4 "\x04\x00\x05" "x"), .why = "TLV overruns" },
    { "v2 a TLV one byte longer than what is left is refused",
      IN(SIG "\x21\x11\x00\x12" A4 "\x04\x00\x04" "abc" "d"),
      ERR_AT(SIG "\x21\x11\x00\x12" A4 "\x04\x00\x04" "abc") },
    { "v2 a TLV header cut by the declared length is refused",
      IN(SIG "\x21\x11\x00\x0e" A4 "\x04\x00" "\x00"),
      ERR_AT(SIG "\x21\x11\x00\x0e" A4 "\x04\x00") },
    { "v2 waits for the whole declared length",
      IN(SIG "\x21\x11\x00\x0c" "\xc0\x00\x02\x01" "\xc6\x33"), WAITS },
    { "v2 waits for the 16 fixed bytes", IN(SIG "\x21\x11\x00"), WAITS },
    { "v2 a declared length of 65535 waits for all of it",
      IN(SIG "\x21\x00\xff\xff" "\x04\xff\xfc"), WAITS },
    { "v2 version 1 is refused", IN(SIG "\x11\x11\x00\x0c" A4), ERR_AT(SIG "\x11"),
      .why = "version" },
    { "v2 version 3 is refused", IN(SIG "\x31\x11\x00\x0c" A4), ERR_AT(SIG "\x31") },
    { "v2 command 2 is refused", IN(SIG "\x22\x11\x00\x0c" A4), ERR_AT(SIG "\x22"),
      .why = "command" },
    { "v2 command 15 is refused", IN(SIG "\x2f\x00\x00\x00"), ERR_AT(SIG "\x2f") },
    { "v2 address family 4 is refused", IN(SIG "\x21\x41\x00\x0c" A4), ERR_AT(SIG "\x21\x41"),
      .why = "family" },
    { "v2 transport protocol 3 is refused", IN(SIG "\x21\x13\x00\x0c" A4),
      ERR_AT(SIG "\x21\x13") },
    { "v2 a signature with one wrong byte is not a header",
      IN("\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x55\x0a\x21\x11\x00\x00"),
      ERR_AT("\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x55") },
    { "v2 the start of the signature waits", IN("\r\n\r\n\0"), WAITS },
};

/* ---- helpers ---- */

/* "ADDR PORT" for an address the parser filled, "-" for none */
static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char a[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
        snprintf(buf, len, "%s %u", a, ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof(a));
        snprintf(buf, len, "%s %u", a, ntohs(sin6->sin6_port));
    } else {
        g_assert_cmpint(ss->ss_family, ==, 0);
        snprintf(buf, len, "-");
    }
}

/* Parse the first n bytes of p from an allocation of exactly n bytes. */
static mx_rc parse_exact(const char *p, size_t n, mx_pp_header *h, const char **why)
{
    char *buf = g_malloc(n > 0 ? n : 1);
    mx_rc rc;

    memcpy(buf, p, n);
    *why = NULL;
    rc = mx_pp_parse(buf, buf + n, h, why);
    g_free(buf);
    if (rc == MX_ERROR)
        g_assert_true(*why != NULL && **why != '\0');
    else
        g_assert_true(rc == MX_AGAIN || rc == MX_DONE);
    return rc;
}

static void assert_same_header(const mx_pp_header *a, const mx_pp_header *b)
{
    g_assert_cmpint(a->version, ==, b->version);
    g_assert_cmpint(a->local, ==, b->local);
    g_assert_cmpint(a->unknown, ==, b->unknown);
    g_assert_cmpint(a->has_crc, ==, b->has_crc);
    g_assert_cmpuint(a->length, ==, b->length);
    g_assert_cmpmem(&a->src, sizeof(a->src), &b->src, sizeof(b->src));
    g_assert_cmpmem(&a->dst, sizeof(a->dst), &b->dst, sizeof(b->dst));
}

static void check_whole(const row *r, const mx_pp_header *h, mx_rc rc, const char *why)
{
    char src[128], dst[128];

    g_assert_cmpint(rc, ==, r->rc);
    if (rc == MX_ERROR && r->why != NULL)
        g_assert_nonnull(strstr(why, r->why));
    if (rc != MX_DONE)
        return;
    g_assert_cmpuint(h->length, ==, r->length);
    g_assert_cmpuint(h->length, <=, r->in_len);
    g_assert_cmpint(h->version, ==, r->version);
    g_assert_cmpint(h->local, ==, r->local);
    g_assert_cmpint(h->unknown, ==, r->unknown);
    g_assert_cmpint(h->has_crc, ==, r->has_crc);
    addr_text(&h->src, src, sizeof(src));
    addr_text(&h->dst, dst, sizeof(dst));
    g_assert_cmpstr(src, ==, r->src ? r->src : "-");
    g_assert_cmpstr(dst, ==, r->dst ? r->dst : "-");
}

/* The whole row, then every prefix of it. */
static void check_row(const row *r)
{
    mx_pp_header whole, h;
    const char *why;
    mx_rc rc = parse_exact(r->in, r->in_len, &whole, &why);
    size_t first_error = 0;

    check_whole(r, &whole, rc, why);
    if (r->upto != NULL) {
        g_assert_cmpuint(r->upto_len, >, 0);
        g_assert_cmpuint(r->upto_len, <=, r->in_len);
        g_assert_cmpmem(r->in, r->upto_len, r->upto, r->upto_len); /* the table itself */
    }

    for (size_t k = 0; k < r->in_len; k++) {
        mx_rc rk = parse_exact(r->in, k, &h, &why);

        switch (r->rc) {
        case MX_DONE:
            if (k < r->length) {
                g_assert_cmpint(rk, ==, MX_AGAIN);
            } else {
                g_assert_cmpint(rk, ==, MX_DONE);
                assert_same_header(&h, &whole);
            }
            break;
        case MX_ERROR:
            if (r->upto != NULL)
                g_assert_cmpint(rk, ==, k < r->upto_len ? MX_AGAIN : MX_ERROR);
            else if (first_error > 0)
                g_assert_cmpint(rk, ==, MX_ERROR); /* once an error, always */
            else if (rk == MX_ERROR)
                first_error = k;
            else
                g_assert_cmpint(rk, ==, MX_AGAIN);
            break;
        default:
            g_assert_cmpint(rk, ==, MX_AGAIN);
            break;
        }
    }
}

static void test_row(gconstpointer data)
{
    check_row(data);
}

/* ---- CRC32C ---- */

/* One bit at a time, straight from the definition (RFC 4960 appendix B). */
static uint32_t crc32c_bitwise(const unsigned char *p, size_t len)
{
    uint32_t crc = 0xffffffffu;

    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = crc & 1 ? crc >> 1 ^ 0x82f63b78u : crc >> 1;
    }
    return ~crc;
}

static void test_crc_check_value(void)
{
    g_assert_cmphex(mx_pp_crc32c(0, "123456789", 9), ==, 0xe3069283u);
    g_assert_cmphex(mx_pp_crc32c(0, "", 0), ==, 0);
}

/* RFC 3720 B.4, the iSCSI test patterns */
static void test_crc_iscsi_vectors(void)
{
    unsigned char b[32];

    memset(b, 0, sizeof(b));
    g_assert_cmphex(mx_pp_crc32c(0, b, 32), ==, 0x8a9136aau);
    memset(b, 0xff, sizeof(b));
    g_assert_cmphex(mx_pp_crc32c(0, b, 32), ==, 0x62a8ab43u);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)i;
    g_assert_cmphex(mx_pp_crc32c(0, b, 32), ==, 0x46dd794eu);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)(31 - i);
    g_assert_cmphex(mx_pp_crc32c(0, b, 32), ==, 0x113fdb5cu);
}

static void test_crc_continues_across_calls(void)
{
    static const char s[] = "123456789";

    for (size_t cut = 0; cut <= 9; cut++)
        g_assert_cmphex(mx_pp_crc32c(mx_pp_crc32c(0, s, cut), s + cut, 9 - cut), ==,
                        0xe3069283u);
}

static void test_crc_matches_bitwise(void)
{
    for (int iter = 0; iter < 500; iter++) {
        size_t len = (size_t)g_test_rand_int_range(0, 300);
        unsigned char *b = g_malloc(len + 1);

        for (size_t i = 0; i < len; i++)
            b[i] = (unsigned char)g_test_rand_int_range(0, 256);
        g_assert_cmphex(mx_pp_crc32c(0, b, len), ==, crc32c_bitwise(b, len));
        g_free(b);
    }
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* The checksum field of the health-check header holds the CRC32C of the
 * whole 23-byte header with that field zeroed, big endian. */
static void test_crc_covers_the_whole_header(void)
{
    static const char hc[] = V2_LOCAL_CRC;
    unsigned char b[sizeof(hc) - 1];

    memcpy(b, hc, sizeof(b));
    g_assert_cmpuint(sizeof(b), ==, 16 + 7);
    memset(b + 19, 0, 4);
    g_assert_cmphex(mx_pp_crc32c(0, b, sizeof(b)), ==, be32((const unsigned char *)hc + 19));
    g_assert_cmphex(crc32c_bitwise(b, sizeof(b)), ==, 0xa9b87e8fu);
}

/* Any bit flipped in the addresses of a CRC-protected header is caught. */
static void test_crc_catches_every_address_bit_flip(void)
{
    static const char good[] = V2_TCP4_CRC;
    char b[sizeof(good) - 1];

    for (size_t i = 16; i < 16 + 12; i++) {
        for (int bit = 0; bit < 8; bit++) {
            mx_pp_header h;
            const char *why = NULL;

            memcpy(b, good, sizeof(b));
            b[i] = (char)(b[i] ^ (1 << bit));
            g_assert_cmpint(mx_pp_parse(b, b + sizeof(b), &h, &why), ==, MX_ERROR);
            g_assert_cmpstr(why, ==, "PROXY v2: CRC32C mismatch");
        }
    }
}

/* ---- addresses against inet_pton ---- */

/* A v1 TCP line with s as the source parses exactly when inet_pton takes s,
 * to the same address. */
static void assert_like_inet_pton(int family, const char *s)
{
    unsigned char want[16];
    int ok = inet_pton(family, s, want) == 1;
    char *line = g_strdup_printf("PROXY %s %s %s 1 2\r\n", family == AF_INET ? "TCP4" : "TCP6",
                                 s, family == AF_INET ? "10.0.0.1" : "::1");
    size_t n = strlen(line);
    mx_pp_header h;
    const char *why;
    mx_rc rc = parse_exact(line, n, &h, &why);

    if (n > MX_PP_V1_MAX) {
        g_assert_cmpint(rc, ==, MX_ERROR);
    } else if (ok) {
        g_assert_cmpint(rc, ==, MX_DONE);
        if (family == AF_INET)
            g_assert_cmpmem(&((struct sockaddr_in *)&h.src)->sin_addr, 4, want, 4);
        else
            g_assert_cmpmem(&((struct sockaddr_in6 *)&h.src)->sin6_addr, 16, want, 16);
        for (size_t k = 0; k < n; k++) /* a valid line waits at every prefix */
            g_assert_cmpint(parse_exact(line, k, &h, &why), ==, MX_AGAIN);
    } else {
        if (rc != MX_ERROR)
            g_test_message("accepted what inet_pton refuses: \"%s\"", s);
        g_assert_cmpint(rc, ==, MX_ERROR);
    }
    g_free(line);
}

static void test_ip6_forms(void)
{
    static const char *const forms[] = {
        "::", "::1", "1::", "1::2", "2001:db8::1", "2001:DB8::A", "0:0:0:0:0:0:0:0",
        "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1::3:4:5:6:7:8",
        "1:2:3:4:5:6::8", "0001:0002:0003:0004:0005:0006:0007:0008", "::ffff:1.2.3.4",
        "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1::5:6:1.2.3.4", "::0.0.0.0",
        "::255.255.255.255", "fe80::1:2",
        /* refused */
        "", ":", ":::", "1:", ":1", "1:::2", "1::2::3", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8", "12345::", "g::", "1.2.3.4", "::1.2.3",
        "::1.2.3.4.5", "::256.1.1.1", "::01.1.1.1", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3.4:1",
        "::1.2.3.4::", "1::2:3:4:5:6:7:8", "::ffff:1.2..3", "::a.b.c.d", "1.2.3.4::",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(forms); i++)
        assert_like_inet_pton(AF_INET6, forms[i]);
}

static void test_ip4_forms(void)
{
    static const char *const forms[] = {
        "0.0.0.0", "1.2.3.4", "255.255.255.255", "10.0.0.10", "192.168.100.200",
        /* refused */
        "", "1", "1.2.3", "1.2.3.4.5", "256.0.0.0", "1.2.3.256", "01.2.3.4", "1.2.3.04",
        "1.2.3.00", "1..3.4", ".1.2.3", "1.2.3.", "1.2.3.4.", "0x1.2.3.4", "1.2.3.-4", "1000.1.1.1",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(forms); i++)
        assert_like_inet_pton(AF_INET, forms[i]);
}

/*
 * Random address text near the valid forms: a few groups or octets, maybe
 * a "::", maybe a dotted quad, then maybe one byte changed, dropped or
 * doubled. Every string is judged by inet_pton and by the parser.
 */
static void random_address(int six, GString *s)
{
    static const char noise[] = "0123456789abcdefABCDEF:.";
    int n = six ? g_test_rand_int_range(0, 9)
                : g_test_rand_int_range(0, 4) ? 4 : g_test_rand_int_range(1, 6);
    int gap = six && g_test_rand_bit() ? g_test_rand_int_range(0, n + 1) : -1;
    int quad = six && g_test_rand_int_range(0, 4) == 0;

    g_string_truncate(s, 0);
    for (int i = 0; i < n; i++) {
        if (i == gap)
            g_string_append(s, "::");
        else if (i > 0)
            g_string_append_c(s, six ? ':' : '.');
        if (six)
            g_string_append_printf(s, "%.*x", g_test_rand_int_range(1, 5),
                                   (unsigned)g_test_rand_int_range(0, 0x10000));
        else
            g_string_append_printf(s, "%d", g_test_rand_int_range(0, 300));
    }
    if (gap == n)
        g_string_append(s, "::");
    if (quad)
        g_string_append_printf(s, "%s%d.%d.%d.%d", s->len > 0 && gap != n ? ":" : "",
                               g_test_rand_int_range(0, 256), g_test_rand_int_range(0, 256),
                               g_test_rand_int_range(0, 256), g_test_rand_int_range(0, 256));
    if (s->len > 0 && g_test_rand_bit()) {
        gsize at = (gsize)g_test_rand_int_range(0, (gint32)s->len);

        switch (g_test_rand_int_range(0, 3)) {
        case 0:
            s->str[at] = noise[g_test_rand_int_range(0, sizeof(noise) - 1)];
            break;
        case 1:
            g_string_erase(s, (gssize)at, 1);
            break;
        default:
            g_string_insert_c(s, (gssize)at, s->str[at]);
            break;
        }
    }
}

static void test_random_addresses_like_inet_pton(void)
{
    GString *s = g_string_new(NULL);
    int valid[2] = { 0, 0 };

    for (int iter = 0; iter < 20000; iter++) {
        int six = iter % 2;
        unsigned char tmp[16];

        random_address(six, s);
        valid[six] += inet_pton(six ? AF_INET6 : AF_INET, s->str, tmp) == 1;
        assert_like_inet_pton(six ? AF_INET6 : AF_INET, s->str);
    }
    /* the generator must reach both sides of the line */
    g_assert_cmpint(valid[0], >, 1000);
    g_assert_cmpint(valid[1], >, 1000);
    g_assert_cmpint(valid[0], <, 9000);
    g_assert_cmpint(valid[1], <, 9000);
    g_string_free(s, TRUE);
}

/* ---- single behaviours that are not one row ---- */

/* 16 + 65535 bytes: the longest header the length field can declare. */
static void test_longest_v2(void)
{
    static const char fixed[] = SIG "\x21\x00\xff\xff" "\x04\xff\xfc";
    size_t total = 16 + 65535;
    char *b = g_malloc0(total + 4);
    mx_pp_header h;
    const char *why;

    memcpy(b, fixed, sizeof(fixed) - 1);
    memcpy(b + total, "EHLO", 4);
    for (size_t k = 0; k < 64; k++)
        g_assert_cmpint(parse_exact(b, k, &h, &why), ==, MX_AGAIN);
    g_assert_cmpint(parse_exact(b, total - 1, &h, &why), ==, MX_AGAIN);
    g_assert_cmpint(parse_exact(b, total, &h, &why), ==, MX_DONE);
    g_assert_cmpuint(h.length, ==, total);
    g_assert_cmpint(h.unknown, ==, 1);
    g_assert_cmpint(parse_exact(b, total + 4, &h, &why), ==, MX_DONE);
    g_assert_cmpuint(h.length, ==, total);
    g_free(b);
}

/* Ports are stored in network order in the sockaddr, as accept() does. */
static void test_ports_in_network_order(void)
{
    static const char l[] = "PROXY TCP4 192.0.2.1 198.51.100.7 258 1\r\n";
    static const char v2[] = SIG "\x21\x11\x00\x0c" A4;
    const struct sockaddr_in *sin;
    mx_pp_header h;
    const char *why;

    g_assert_cmpint(parse_exact(l, sizeof(l) - 1, &h, &why), ==, MX_DONE);
    sin = (const struct sockaddr_in *)&h.src;
    g_assert_cmpmem(&sin->sin_port, 2, "\x01\x02", 2);
    g_assert_cmpint(parse_exact(v2, sizeof(v2) - 1, &h, &why), ==, MX_DONE);
    sin = (const struct sockaddr_in *)&h.src;
    g_assert_cmpmem(&sin->sin_port, 2, "\xdc\x04", 2);
    g_assert_cmpmem(&sin->sin_addr, 4, "\xc0\x00\x02\x01", 4);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        char *path = g_strconcat("/proxy_proto/header/", rows[i].name, NULL);

        g_test_add_data_func(path, &rows[i], test_row);
        g_free(path);
    }
    g_test_add_func("/proxy_proto/crc32c/123456789 gives the check value E3069283",
                    test_crc_check_value);
    g_test_add_func("/proxy_proto/crc32c/the iSCSI test patterns of RFC 3720 B.4",
                    test_crc_iscsi_vectors);
    g_test_add_func("/proxy_proto/crc32c/a CRC continues across calls at any cut",
                    test_crc_continues_across_calls);
    g_test_add_func("/proxy_proto/crc32c/agrees with a bit-at-a-time CRC on random bytes",
                    test_crc_matches_bitwise);
    g_test_add_func("/proxy_proto/crc32c/the v2 checksum covers the whole header, field zeroed",
                    test_crc_covers_the_whole_header);
    g_test_add_func("/proxy_proto/crc32c/every bit flipped in the addresses is caught",
                    test_crc_catches_every_address_bit_flip);
    g_test_add_func("/proxy_proto/addresses/IPv6 forms are read as inet_pton reads them",
                    test_ip6_forms);
    g_test_add_func("/proxy_proto/addresses/IPv4 forms are read as inet_pton reads them",
                    test_ip4_forms);
    g_test_add_func("/proxy_proto/addresses/random address text is read as inet_pton reads it",
                    test_random_addresses_like_inet_pton);
    g_test_add_func("/proxy_proto/v2/the longest header, 16 + 65535 bytes, is read whole",
                    test_longest_v2);
    g_test_add_func("/proxy_proto/ports are in network order in the sockaddr",
                    test_ports_in_network_order);
    return g_test_run();
}
