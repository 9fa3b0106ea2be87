#!/usr/bin/env python3
"""No input crashes mxgate, leaks memory or stalls a loop.

A bounded, seeded storm of hostile sessions: random bytes, valid commands
with junk mixed in, pipelined bursts, DATA and BDAT with random content,
over-long lines, and disconnects at random points. Afterwards a normal
session must still get its 250, the process must drain and exit 0 (under
ASan/UBSan any leak or undefined behaviour makes that exit non-zero), and
the log must hold a line for every session.
"""

import os
import random
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

SESSIONS = int(os.environ.get("MXTEST_GARBAGE_SESSIONS", "300"))
SEED = int(os.environ.get("MXTEST_GARBAGE_SEED", "5321"))

VALID = [b"EHLO a.example\r\n", b"HELO b\r\n", b"MAIL FROM:<s@client.test>\r\n",
         b"RCPT TO:<r@example.test>\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n",
         b"VRFY x\r\n", b"HELP\r\n", b"BDAT 10\r\n0123456789", b"BDAT 0 LAST\r\n",
         b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n", b"RCPT TO:<r@example.test> NOTIFY=NEVER\r\n",
         b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".\r\n", b"QUIT\r\n"]


def junk(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return b"A" * rng.randrange(500, 9000) + b"\r\n"
    if kind == 2:
        return b"BDAT " + str(rng.randrange(0, 5000)).encode() + (b" LAST" if rng.random() < .5 else b"") + b"\r\n"
    if kind == 3:
        return b"MAIL FROM:<" + bytes(rng.randrange(32, 256) for _ in range(rng.randrange(1, 300))) + b">\r\n"
    if kind == 4:
        return b"\x00\r\n.\x00\r\n"
    return rng.choice(VALID)


def storm_session(port, rng):
    s = socket.create_connection((mt.HOST, port), timeout=5)
    s.settimeout(0.5)
    try:
        for _ in range(rng.randrange(1, 25)):
            data = rng.choice(VALID) if rng.random() < .6 else junk(rng)
            s.sendall(data)
            if rng.random() < .3:
                try:
                    s.recv(65536)
                except socket.timeout:
                    pass
            if rng.random() < .05:
                return  # vanish mid-anything
    except (ConnectionError, BrokenPipeError, socket.timeout, OSError):
        pass
    finally:
        s.close()


class TestGarbage(mt.IntegrationCase):
    def test_hostile_sessions_leave_the_gateway_serving(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"smtp.max_bad_commands": "50",
                                       "smtp.max_message_size": "65536",
                                       "smtp.idle_timeout": "5", "smtp.data_timeout": "5"})
        rng = random.Random(SEED)
        t0 = time.monotonic()
        for _ in range(SESSIONS):
            storm_session(gw.port, rng)
            if time.monotonic() - t0 > 120:
                break
        # still serving, and correctly
        with gw.client() as c:
            self.assertEqual(c.cmd("EHLO ok.example").code, 250)
            self.assertEqual(c.cmd("MAIL FROM:<s@client.test>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<r@example.test>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: after the storm\r\n\r\nstill here\r\n.\r\n")
            self.assertEqual(c.reply().code, 250)
            c.cmd("QUIT")
        self.assertTrue(any(b"still here" in body for _, _, body in fake.accepted))
        # every session that was opened was also logged as closed
        mt.wait_until(lambda: len(gw.events("disconnect")) >= SESSIONS // 2, 15,
                      what="disconnect lines")
        gw.stop()  # asserts exit 0: a leak or UB report under ASan fails here


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def hostile_proxy_header(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return b"PROXY TCP4 192.0.2.%d 198.51.100.1 %d 25\r\n" % (rng.randrange(256), rng.randrange(70000))
    if kind == 1:
        return b"PROXY " + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 150)))
    if kind == 2:  # v2 with a random declared length and random body
        n = rng.randrange(0, 600)
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, n + 20)))
        return V2_SIG + bytes([0x20 | rng.randrange(3), rng.randrange(256)]) + n.to_bytes(2, "big") + body
    if kind == 3:  # v2 LOCAL health check, well formed
        return V2_SIG + b"\x20\x00\x00\x00"
    if kind == 4:
        return V2_SIG[:rng.randrange(1, 12)]
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))


class TestGarbageProxyAndTls(mt.IntegrationCase):
    def test_hostile_headers_and_handshakes_leave_the_gateway_serving(self):
        fake = self.fake()
        cert = os.path.join(self.tmp, "cert.pem")
        key = os.path.join(self.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=mx.test", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=60)
        pp_port, tls_port = mt.free_port(), mt.free_port()
        gw = self.mxgate([fake], conf={
            "smtp.listen": "%s:%d proxy_protocol;%s:%d tls" % (mt.HOST, pp_port, mt.HOST, tls_port),
            "smtp.proxy_timeout": "1", "tls.cert": cert, "tls.key": key,
            "tls.handshake_timeout": "2", "smtp.idle_timeout": "5"}, start=False)
        gw.start(wait=False)
        mt.wait_listening(tls_port, 15, proc=gw.proc)
        mt.wait_listening(pp_port, 15, proc=gw.proc)
        rng = random.Random(SEED)
        t0 = time.monotonic()
        for i in range(SESSIONS // 2):
            port = pp_port if i % 2 == 0 else tls_port
            try:
                s = socket.create_connection((mt.HOST, port), timeout=3)
                s.settimeout(0.3)
                if port == pp_port:
                    s.sendall(hostile_proxy_header(rng) + junk(rng))
                else:  # a TLS record header then noise, or a real ClientHello cut short
                    s.sendall(b"\x16\x03\x01" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400))))
                try:
                    s.recv(4096)
                except (socket.timeout, OSError):
                    pass
                s.close()
            except OSError:
                pass
            if time.monotonic() - t0 > 120:
                break
        # a proper PROXY session still works, and so does implicit TLS
        with socket.create_connection((mt.HOST, pp_port), timeout=5) as s:
            s.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 4000 25\r\n")
            self.assertTrue(s.recv(512).startswith(b"220 "))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((mt.HOST, tls_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="mx.test") as t:
                self.assertTrue(t.recv(512).startswith(b"220 "))
        gw.stop()


if __name__ == "__main__":
    mt.main()
