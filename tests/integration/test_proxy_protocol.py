#!/usr/bin/env python3
"""PROXY protocol v1/v2 on an mxgate listener with the proxy_protocol flag.

One mxgate per case, listening on "127.0.0.1:PORT proxy_protocol", in front
of a FakeBackend that records what it is told (XCLIENT ADDR/PORT, the
messages with mxgate's Received header). Headers are built here byte by
byte from HAProxy's proxy-protocol.txt, including the CRC32C TLV (with a
CRC32C of our own, checked against the RFC 3720 B.4 vector).

What a proxy_protocol listener promises:
  - nothing is sent before a complete header; the header is consumed
    exactly, so whatever follows it is the client's first SMTP bytes;
  - the header's source is the client everywhere (log client=, XCLIENT,
    Received); a v2 LOCAL header (a balancer's health check) keeps the
    socket's own addresses and is logged at debug level only;
  - a bad header, a wrong checksum or no header within smtp.proxy_timeout
    closes the connection without a banner (event=proxy_error); a peer
    outside smtp.proxy_protocol_from is closed at once (event=proxy_refused).
"""

import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402


# ---------------------------------------------------------------- CRC32C

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data, crc=0):
    """CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as RFC 4960 B."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


# ---------------------------------------------------------------- headers

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C = 0x01, 0x02, 0x03
PP2_TYPE_NOOP, PP2_TYPE_UNIQUE_ID = 0x04, 0x05


def v1(src, dst, sport, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


def v2(src=None, dst=None, sport=0, dport=0, local=False, tlvs=(), crc="good"):
    """A v2 header. local: the LOCAL command (no addresses, AF_UNSPEC).
    crc: "good" appends a correct CRC32C TLV, "bad" a wrong one, None none."""
    if local:
        fam, addrs = 0x00, b""
    elif ":" in src:
        fam = 0x21  # AF_INET6, STREAM
        addrs = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                 + struct.pack("!HH", sport, dport))
    else:
        fam = 0x11  # AF_INET, STREAM
        addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    body = addrs + b"".join(tlv(k, v) for k, v in tlvs)
    if crc:
        body += tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")
    ver_cmd = 0x20 | (0 if local else 1)
    hdr = V2_SIG + struct.pack("!BBH", ver_cmd, fam, len(body)) + body
    if crc:
        value = crc32c(hdr)
        if crc == "bad":
            value ^= 0x00010000
        hdr = hdr[:-4] + struct.pack("!I", value)
    return hdr


class ProxyCase(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        self.fake = self.fake()

    def gateway(self, **conf):
        """mxgate with only a proxy_protocol listener (conf: section__key)."""
        c = {k.replace("__", "."): str(v) for k, v in conf.items()}
        gw = self.mxgate([self.fake], conf=c, start=False)
        gw.conf["smtp.listen"] = "%s:%d proxy_protocol" % (mt.HOST, gw.port)
        return mt.start_mxgate_quietly(gw)

    def connect(self, gw, source=None):
        c = mt.SmtpClient(gw.port, source=source, timeout=10)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.addCleanup(c.close)
        return c

    def send_message(self, c, subject):
        """EHLO + one transaction + QUIT on a greeted client; returns the msg."""
        self.assertEqual(c.ehlo().code, 250)
        msg = mt.make_message(subject=subject)
        t = c.transact("sender@client.test", ["alice@example.test"], msg)
        self.assertEqual(t["final"] and t["final"].code, 250, t)
        self.assertEqual(c.cmd("QUIT").code, 221)
        return msg

    def xclient_lines(self):
        return [l.decode("utf-8", "replace") for l in self.fake.all_lines()
                if l.upper().startswith(b"XCLIENT")]

    def assertClientSeen(self, gw, addr, port=None, tagged=None):
        """The backend was told addr (XCLIENT ADDR, Received) and mxgate
        logged it as the client."""
        want = tagged or addr
        xc = self.xclient_lines()
        self.assertTrue(xc, "no XCLIENT sent to the backend")
        self.assertIn("ADDR=%s" % want, xc[-1].split(), xc)
        if port is not None:
            self.assertIn("PORT=%d" % port, xc[-1].split(), xc)
        self.assertTrue(self.fake.accepted, "nothing accepted by the backend")
        body = self.fake.accepted[-1][2]
        received = mt.unfold(mt.split_header(body)[0])
        m = mt.MXGATE_RECEIVED.match(received)
        self.assertTrue(m, "no mxgate Received header: %r" % received)
        self.assertEqual(m.group("ip").lower().replace("ipv6:", ""), addr, received)
        ev = gw.wait_event(event="disconnect", client=addr)
        self.assertEqual(ev.get("level"), "info", ev)

    def assertClosedWithoutBanner(self, c, timeout=5):
        """The server closes the connection and has sent nothing at all."""
        self.assertTrue(c.closed_by_peer(timeout), "connection still open after %ss" % timeout)
        self.assertEqual(c.buf, b"", "the server sent something: %r" % c.buf)

    def assertNothingRelayed(self):
        self.assertEqual(self.fake.accepted, [])
        self.assertEqual(self.xclient_lines(), [])


class TestProxyV1(ProxyCase):

    def test_v1_tcp4_header_then_banner_client_address_is_the_headers(self):
        gw = self.gateway()
        c = self.connect(gw)
        c.send(v1("198.51.100.7", "192.0.2.25", 40001, 25))
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v1 tcp4")
        self.assertClientSeen(gw, "198.51.100.7", port=40001)
        self.assertEqual(gw.events("proxy_error"), [])

    def test_v1_tcp6_header_then_banner_client_address_is_the_headers(self):
        gw = self.gateway()
        c = self.connect(gw)
        c.send(v1("2001:db8::7", "2001:db8::25", 40002, 25))
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v1 tcp6")
        self.assertClientSeen(gw, "2001:db8::7", port=40002, tagged="IPV6:2001:db8::7")

    def test_v1_header_and_smtp_in_one_segment_consumed_exactly(self):
        # Header and a command in a single send(): the header is consumed
        # to its CRLF and not one byte more, so the command is still in the
        # socket when the session starts. With greet_delay = 0 mxgate refuses
        # a client whose commands arrived with its connection (554 5.5.0,
        # deploy/mxgate.conf), and that is what it must do here: the bytes
        # after the header are seen, as the client's, before the banner.
        # A parser that swallowed them would send a 220 and wait instead.
        gw = self.gateway()
        for i, (src, dst) in enumerate((("198.51.100.8", "192.0.2.25"),
                                        ("2001:db8::8", "2001:db8::25"))):
            with self.subTest(family="TCP6" if ":" in src else "TCP4"):
                c = self.connect(gw)
                c.send(v1(src, dst, 40010 + i, 25) + b"EHLO early.example.net\r\n")
                r = c.reply()
                self.assertEqual(r.code, 554, r)
                self.assertIn("5.5.0", r.text)
                self.assertTrue(c.closed_by_peer(5))
                ev = gw.wait_event(event="reject", client=src)
                self.assertEqual(ev.get("why"), "pregreet", ev)
        self.assertEqual(gw.events("proxy_error"), [])
        self.assertNothingRelayed()

    def test_v1_unknown_uses_the_socket_address(self):
        gw = self.gateway()
        c = self.connect(gw, source="127.0.0.61")
        c.send(b"PROXY UNKNOWN\r\n")
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v1 unknown")
        self.assertClientSeen(gw, "127.0.0.61")

    def test_v1_header_split_byte_by_byte(self):
        gw = self.gateway()
        c = self.connect(gw)
        for b in v1("198.51.100.9", "192.0.2.25", 40003, 25):
            c.send(bytes([b]))
            time.sleep(0.02)
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v1 split")
        self.assertClientSeen(gw, "198.51.100.9", port=40003)


class TestProxyV2(ProxyCase):

    def test_v2_proxy_with_tlvs(self):
        gw = self.gateway()
        tlvs = [(PP2_TYPE_ALPN, b"smtp"), (PP2_TYPE_AUTHORITY, b"mx.example.test"),
                (PP2_TYPE_UNIQUE_ID, b"2f1c-77aa-0001"), (PP2_TYPE_NOOP, b"\x00" * 5),
                (0xE0, b"site-specific value")]  # PP2_TYPE_MIN_CUSTOM: skipped
        c = self.connect(gw)
        c.send(v2("203.0.113.9", "192.0.2.25", 40004, 25, tlvs=tlvs))
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v2 tlvs")
        self.assertClientSeen(gw, "203.0.113.9", port=40004)

    def test_v2_tcp6_without_checksum(self):
        gw = self.gateway()
        c = self.connect(gw)
        c.send(v2("2001:db8::9", "2001:db8::25", 40005, 25, crc=None))
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v2 tcp6")
        self.assertClientSeen(gw, "2001:db8::9", port=40005, tagged="IPV6:2001:db8::9")

    def test_v2_local_with_crc32c_is_a_quiet_health_check(self):
        # What HAProxy's "check-send-proxy" sends with proxy-v2-options
        # crc32c: 16 bytes + one 7-byte CRC32C TLV, no addresses.
        gw = self.gateway()
        hdr = v2(local=True)
        self.assertEqual(len(hdr), 16 + 7)
        c = self.connect(gw, source="127.0.0.62")
        c.send(hdr)
        self.assertEqual(c.reply().code, 220)
        self.assertEqual(c.ehlo("haproxy-check.invalid").code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertTrue(c.closed_by_peer(5))
        ev = gw.wait_event(event="disconnect", client="127.0.0.62")
        self.assertEqual(ev.get("level"), "debug", "a health check's disconnect is logged "
                         "above debug level: %r" % ev)
        sid = ev.get("sid")
        noisy = [e for e in gw.events() if e.get("sid") == sid and e.get("level") != "debug"]
        self.assertEqual(noisy, [], "health check logged above debug level")
        self.assertEqual(gw.events("proxy_error"), [])

    def test_v2_local_session_is_served_with_the_socket_address(self):
        gw = self.gateway()
        c = self.connect(gw, source="127.0.0.63")
        c.send(v2(local=True))
        self.assertEqual(c.reply().code, 220)
        self.assertEqual(c.ehlo().code, 250)
        msg = mt.make_message(subject="v2 local")
        t = c.transact("sender@client.test", ["alice@example.test"], msg)
        self.assertEqual(t["final"] and t["final"].code, 250, t)
        c.cmd("QUIT")
        xc = self.xclient_lines()
        self.assertTrue(xc and "ADDR=127.0.0.63" in xc[-1].split(), xc)
        ev = gw.wait_event(event="message")
        self.assertEqual(ev.get("client", "127.0.0.63"), "127.0.0.63", ev)

    def test_v2_wrong_crc32c_closed_with_proxy_error(self):
        gw = self.gateway()
        for local in (False, True):
            with self.subTest(local=local):
                c = self.connect(gw)
                hdr = v2(local=True, crc="bad") if local else \
                    v2("203.0.113.10", "192.0.2.25", 40006, 25, crc="bad")
                c.send(hdr)
                self.assertClosedWithoutBanner(c)
        mt.wait_until(lambda: len(gw.events("proxy_error")) >= 2, 5, what="two proxy_error lines")
        for ev in gw.events("proxy_error"):
            self.assertEqual(ev.get("peer"), "127.0.0.1", ev)
        self.assertNothingRelayed()

    def test_v2_header_split_byte_by_byte(self):
        gw = self.gateway()
        c = self.connect(gw)
        hdr = v2("203.0.113.11", "192.0.2.25", 40007, 25, tlvs=[(PP2_TYPE_ALPN, b"smtp")])
        for b in hdr:
            c.send(bytes([b]))
            time.sleep(0.02)
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "v2 split")
        self.assertClientSeen(gw, "203.0.113.11", port=40007)

    def test_v2_truncated_declared_length_waits_then_times_out(self):
        # The declared length is honoured: a header that promises more
        # bytes than it sends is incomplete, not accepted early.
        gw = self.gateway(smtp__proxy_timeout=1)
        c = self.connect(gw)
        hdr = v2("203.0.113.12", "192.0.2.25", 40008, 25, crc=None)
        c.send(hdr[:14] + struct.pack("!H", len(hdr) - 16 + 8) + hdr[16:])
        self.assertClosedWithoutBanner(c, timeout=5)
        gw.wait_event(event="proxy_error")


class TestProxyRefusals(ProxyCase):

    def test_garbage_instead_of_header_closed_without_banner(self):
        gw = self.gateway()
        samples = [b"EHLO client.example.net\r\n",
                   b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
                   b"PROXY TCP4 198.51.100.7 192.0.2.25 40001\r\n",   # a port missing
                   b"PROXY TCP4 999.1.2.3 192.0.2.25 40001 25\r\n",
                   b"PROXY TCP5 198.51.100.7 192.0.2.25 40001 25\r\n",
                   b"PROXY TCP4 198.51.100.7 192.0.2.25 40001 25\n",  # LF only
                   b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n",         # over 107 bytes
                   V2_SIG + b"\x21\x11\x00\x08" + b"\x00" * 8,          # TCP4 in 8 bytes
                   V2_SIG + b"\x30\x11\x00\x0c" + b"\x00" * 12]       # version 3
        for i, data in enumerate(samples):
            with self.subTest(sample=data[:24]):
                c = self.connect(gw)
                c.send(data)
                self.assertClosedWithoutBanner(c)
                mt.wait_until(lambda: len(gw.events("proxy_error")) >= i + 1, 5,
                              what="proxy_error for sample %d" % i)
        self.assertNothingRelayed()

    def test_no_header_within_proxy_timeout_closed(self):
        gw = self.gateway(smtp__proxy_timeout=1)
        for partial in (b"", b"PROXY TCP4 ", V2_SIG[:7]):
            with self.subTest(partial=partial):
                n = len(gw.events("proxy_error"))
                c = self.connect(gw)
                t0 = time.monotonic()
                if partial:
                    c.send(partial)
                self.assertClosedWithoutBanner(c, timeout=5)
                elapsed = time.monotonic() - t0
                self.assertGreater(elapsed, 0.7, "closed before smtp.proxy_timeout")
                self.assertLess(elapsed, 3.5, "not closed at smtp.proxy_timeout")
                mt.wait_until(lambda: len(gw.events("proxy_error")) > n, 5, what="proxy_error")
        self.assertNothingRelayed()

    def test_peer_outside_proxy_protocol_from_refused_without_banner(self):
        gw = self.gateway(smtp__proxy_protocol_from="10.0.0.0/8;192.0.2.0/24")
        c = self.connect(gw, source="127.0.0.64")
        # a perfectly good header does not help: the peer may not send one
        c.send(v1("198.51.100.20", "192.0.2.25", 40009, 25))
        self.assertClosedWithoutBanner(c)
        ev = gw.wait_event(event="proxy_refused")
        self.assertEqual(ev.get("peer"), "127.0.0.64", ev)
        self.assertEqual(gw.events("proxy_error"), [])
        self.assertNothingRelayed()
        # nothing claimed by the header was logged as a client
        self.assertNotIn("198.51.100.20", gw.log_text())


class TestListeners(ProxyCase):

    def test_plain_listener_next_to_a_proxy_listener_needs_no_header(self):
        gw = self.mxgate([self.fake], start=False)
        proxy_port = mt.free_port()
        gw.conf["smtp.listen"] = "%s:%d;%s:%d proxy_protocol" % (mt.HOST, gw.port,
                                                                mt.HOST, proxy_port)
        mt.start_mxgate_quietly(gw)
        mt.wait_listening(proxy_port, 10)
        plain = self.connect(gw, source="127.0.0.65")
        self.assertEqual(plain.reply().code, 220)
        self.send_message(plain, "plain listener")
        self.assertClientSeen(gw, "127.0.0.65")
        c = mt.SmtpClient(proxy_port, timeout=10)
        self.addCleanup(c.close)
        c.send(v1("198.51.100.30", "192.0.2.25", 40030, 25))
        self.assertEqual(c.reply().code, 220)
        self.send_message(c, "proxy listener")
        self.assertClientSeen(gw, "198.51.100.30", port=40030)
        # a PROXY header on the plain listener is just a bad command
        # line, never an address
        p2 = self.connect(gw)
        self.assertEqual(p2.reply().code, 220)
        r = p2.cmd(v1("198.51.100.31", "192.0.2.25", 40031, 25).rstrip(b"\r\n"))
        self.assertEqual(r.cls, 5, r)
        self.assertNotIn("198.51.100.31", " ".join(e.get("client", "") for e in gw.events()))


class TestCrc32c(mt.IntegrationCase):

    def test_reference_vectors(self):
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c(b""), 0)
        self.assertEqual(crc32c(b"\x00" * 32), 0x8A9136AA)  # RFC 3720 B.4
        # what HAProxy 2.6 sent as a LOCAL check header with crc32c
        self.assertEqual(v2(local=True).hex(),
                         "0d0a0d0a000d0a515549540a20000007030004a9b87e8f")


if __name__ == "__main__":
    mt.main()
