#!/usr/bin/env python3
"""TLS on both sides of mxgate: STARTTLS and implicit TLS towards clients,
session tickets shared by nodes, certificate reload, STARTTLS to the backend.

Every case makes its own throwaway PKI with the openssl command
(mxtest.TlsCa: a CA, a server certificate with subjectAltName
DNS:mxgate.example.test and IP:127.0.0.1, an 80-byte ticket key file) and
runs its own mxgate, in front of a FakeBackend when only the client side
matters and of a private Postfix when something is delivered. Clients are
`openssl s_client`, swaks, Python's ssl module on mxtest.SmtpClient and
testssl.sh.

What mxgate promises here:
  - STARTTLS is advertised only before TLS; "220 2.0.0 Ready to start TLS";
    TLS 1.2 and 1.3 only, forward-secret AEAD ciphers only;
  - bytes pipelined behind STARTTLS are dropped (event=starttls_injection)
    and the SMTP state starts afresh inside TLS; STARTTLS twice, or inside
    a transaction, is a 503;
  - a listener with the tls flag does the handshake first, banner inside;
  - version and cipher are in the Received header ("with ESMTPS") and in
    the event=message log line (tls=, cipher=);
  - the first key of tls.ticket_keys issues tickets, every key is accepted:
    a ticket from one node resumes on any node with the same file;
  - SIGHUP brings a new certificate to new sessions; open ones carry on;
  - backend.starttls/tls_verify/tls_ca: TLS to the backend, or 451.
"""

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

POSTFIX = "(Postfix)"
TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
# what [tls] allows by default (deploy/mxgate.conf)
TLS12_CIPHERS = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
}
TLS13_CIPHERS = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                 "TLS_CHACHA20_POLY1305_SHA256"}
CIPHERS = {"TLSv1.2": TLS12_CIPHERS, "TLSv1.3": TLS13_CIPHERS}

# mxgate's trace header in a TLS session: the "(using ...)" comment sits
# between the from and by clauses, the protocol gets its S (RFC 3848).
MXGATE_RECEIVED_TLS = re.compile(
    r"^Received: from (?P<helo>\S+) \((?:\S+ )?\[(?P<ip>[0-9a-fA-F.:]+)\]\) "
    r"\(using (?P<version>TLSv1\.[0-9]) with cipher (?P<cipher>[A-Za-z0-9_-]+)\) "
    r"by (?P<by>\S+) \(mxgate\) with (?P<proto>\S+) id (?P<id>[^\s;]+)"
    r"(?: for <[^>]*>)?; (?P<date>.+)$")


def s_client(port, *args, starttls=True, stdin=b"QUIT\n", timeout=30):
    """openssl s_client to 127.0.0.1:port (STARTTLS smtp unless told
    otherwise). stdin goes to the server once TLS is up (-crlf: LF becomes
    CRLF); -ign_eof keeps the connection until the server closes it, so
    TLS 1.3 tickets have arrived before -sess_out is written.
    Returns (exit code, stdout + stderr)."""
    cmd = [mt.OPENSSL_BIN, "s_client", "-connect", "%s:%d" % (mt.HOST, port),
           "-ign_eof", "-crlf", "-servername", "mxgate.example.test"]
    if starttls:
        cmd += ["-starttls", "smtp", "-name", "client.example.net"]
    r = subprocess.run(cmd + list(args), input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def session_line(out):
    """("New"|"Reused", version, cipher) from s_client's summary line."""
    m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)$", out, re.M)
    return m.groups() if m else (None, None, None)


def session_field(out, name):
    """A field of s_client's SSL-Session block ("Protocol", "Cipher")."""
    m = re.search(r"^\s+%s\s*:\s*(\S+)\s*$" % re.escape(name), out, re.M)
    return m.group(1) if m else None


class TlsCase(mt.IntegrationCase):
    """A PKI per case: self.ca, self.cert (server), self.ticket_keys."""

    def setUp(self):
        super().setUp()
        mt.require_openssl()
        self.pki = os.path.join(self.tmp, "pki")
        self.ca, self.cert, self.ticket_keys = mt.make_tls_material(self.pki)

    def tls_conf(self, cert=None, ticket_keys=None, **extra):
        cert = cert or self.cert
        c = {"tls.cert": cert.cert, "tls.key": cert.key}
        if ticket_keys:
            c["tls.ticket_keys"] = ticket_keys
        c.update(extra)
        return c

    def ctx(self, version=None):
        """A client context that verifies mxgate against the case's CA."""
        return mt.tls_client_context(ca=self.ca.cert, version=version)

    def tls_client(self, gw, version=None, ehlo=True):
        """A STARTTLS session on gw's plain listener, EHLO'd inside TLS."""
        c = gw.client()
        self.addCleanup(c.close)
        self.assertEqual(c.banner.code, 220, c.banner)
        c.ehlo()
        self.assertIn("STARTTLS", c.extensions)
        r = c.starttls(self.ctx(version), "mxgate.example.test")
        self.assertEqual(r.lines, ["220 2.0.0 Ready to start TLS"])
        if ehlo:
            self.assertEqual(c.ehlo().code, 250)
        return c


# ---------------------------------------------------------------- handshakes

class TestStarttlsHandshake(TlsCase):

    def setUp(self):
        super().setUp()
        self.fb = self.fake()
        self.gw = self.mxgate([self.fb], conf=self.tls_conf())

    def assertHandshake(self, version, flag):
        rc, out = s_client(self.gw.port, flag, "-CAfile", self.ca.cert,
                           "-verify_return_error", "-verify_ip", mt.HOST)
        self.assertEqual(rc, 0, out)
        self.assertEqual(session_field(out, "Protocol"), version, out)
        cipher = session_field(out, "Cipher")
        self.assertIn(cipher, CIPHERS[version], out)
        self.assertEqual(session_line(out), ("New", version, cipher), out)
        self.assertIn("Verify return code: 0 (ok)", out)
        # the session went on inside TLS: QUIT was answered in it
        self.assertRegex(out, r"(?m)^221 ")
        ev = self.gw.wait_event(event="tls", version=version)
        self.assertEqual(ev["cipher"], cipher)
        self.assertEqual(ev["resumed"], "0")

    def test_openssl_s_client_tls12(self):
        self.assertHandshake("TLSv1.2", "-tls1_2")

    def test_openssl_s_client_tls13(self):
        self.assertHandshake("TLSv1.3", "-tls1_3")

    def test_tls10_and_tls11_refused_by_mxgate(self):
        # SECLEVEL=0 lets Debian's OpenSSL send a TLS 1.0/1.1 ClientHello at
        # all, so the refusal below is the server's: a protocol_version
        # alert (70) read from mxgate, and mxgate's own tls_error line.
        for flag, name in (("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")):
            with self.subTest(name):
                n = len(self.gw.events("tls_error"))
                rc, out = s_client(self.gw.port, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
                self.assertNotEqual(rc, 0, out)
                self.assertIn("CONNECTED(", out)
                self.assertRegex(out, r"alert protocol version.*SSL alert number 70", out)
                self.assertNotRegex(out, r"no protocols available", out)
                self.assertEqual(session_line(out)[1], "(NONE)", out)
                mt.wait_until(lambda: len(self.gw.events("tls_error")) > n, 10,
                              what="event=tls_error")
                ev = self.gw.events("tls_error")[-1]
                self.assertIn("unsupported protocol", ev.get("error", ""), ev)
                self.gw.wait_event(event="disconnect", reason="tls_handshake_failed")

    def test_python_ssl_verifies_chain_and_names(self):
        # the certificate chains to the case's CA and names both
        # mxgate.example.test and 127.0.0.1
        for name in ("mxgate.example.test", mt.HOST):
            with self.subTest(name):
                with self.gw.client() as c:
                    c.ehlo()
                    c.starttls(self.ctx(), name)
                    self.assertEqual(mt.cert_fingerprint(c.sock.getpeercert(binary_form=True)),
                                     self.cert.fingerprint)
                    self.assertEqual(c.cmd("QUIT").code, 221)

    def test_handshake_timeout_closes_a_silent_client(self):
        self.gw.stop()
        gw = self.mxgate([self.fb], conf=self.tls_conf(**{"tls.handshake_timeout": "1"}))
        with gw.client() as c:
            c.ehlo()
            self.assertEqual(c.cmd("STARTTLS").code, 220)
            t0 = time.monotonic()
            self.assertTrue(c.closed_by_peer(8), "no close after tls.handshake_timeout")
            self.assertLess(time.monotonic() - t0, 6)
        gw.wait_event(event="disconnect", reason="tls_handshake_failed")


class TestStarttlsProtocol(TlsCase):
    """RFC 3207 state rules, with a FakeBackend behind."""

    def setUp(self):
        super().setUp()
        self.fb = self.fake()
        self.gw = self.mxgate([self.fb], conf=self.tls_conf())

    def test_state_reset_and_starttls_advertised_only_before_tls(self):
        c = self.tls_client(self.gw, ehlo=False)
        # RFC 3207 4.2: nothing learnt before TLS counts, EHLO first
        r = c.cmd("MAIL FROM:<a@client.test>")
        self.assertEqual(r.code, 503, r)
        self.assertIn("5.5.1", r.text)
        e = c.ehlo()
        self.assertEqual(e.code, 250)
        self.assertNotIn("STARTTLS", c.extensions, e)
        self.assertIn("PIPELINING", c.extensions)
        # STARTTLS again inside TLS
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code, 503, r)
        self.assertIn("TLS already active", r.text)
        # and the session still works
        t = c.transact("a@client.test", ["alice@example.test"], mt.make_message(subject="after"))
        self.assertEqual(t["final"].code, 250, t)
        self.assertEqual(len(self.fb.accepted), 1)
        self.assertEqual(c.cmd("QUIT").code, 221)

    def test_starttls_twice_is_503(self):
        c = self.tls_client(self.gw)
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code, 503, r)
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.gw.wait_event(event="reject", code="503")

    def test_starttls_inside_a_transaction_is_503(self):
        with self.gw.client() as c:
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@client.test>").code, 250)
            r = c.cmd("STARTTLS")
            self.assertEqual(r.code, 503, r)
            self.assertIn("5.5.1", r.text)
            # still plaintext, the transaction goes on
            self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
            self.assertEqual(c.cmd("RSET").code, 250)
            # after RSET STARTTLS is fine
            c.starttls(self.ctx("TLSv1.3"), "mxgate.example.test")
            self.assertEqual(c.ehlo("after.example.net").code, 250)
            # the backend learns the HELO given inside TLS, and the trace
            # header says TLS although the transaction began in plaintext
            t = c.transact("a@client.test", ["alice@example.test"],
                           mt.make_message(subject="after tls"))
            self.assertEqual(t["final"].code, 250, t)
            self.assertEqual(c.cmd("QUIT").code, 221)
        xclients = [l for l in self.fb.all_lines() if l.startswith(b"XCLIENT")]
        self.assertIn(b"HELO=after.example.net", xclients[-1], xclients)
        self.assertEqual(len(self.fb.accepted), 1)
        field, _ = mt.split_header(self.fb.accepted[0][2])
        m = MXGATE_RECEIVED_TLS.match(mt.unfold(field))
        self.assertTrue(m, field)
        self.assertEqual((m.group("helo"), m.group("version"), m.group("proto")),
                         ("after.example.net", "TLSv1.3", "ESMTPS"))

    def test_starttls_injection_is_discarded(self):
        # CVE-2011-0411: RSET rides in the STARTTLS packet. It must not be
        # answered inside TLS (a man in the middle could have added it).
        with self.gw.client() as c:
            c.ehlo()
            c.send(b"STARTTLS\r\nRSET\r\n")
            r = c.reply()
            self.assertEqual(r.lines, ["220 2.0.0 Ready to start TLS"])
            # nothing after the 220 in plaintext either
            self.assertEqual(c.unsolicited(0.5), b"")
            c.wrap_tls(self.ctx(), "mxgate.example.test")
            self.assertEqual(c.unsolicited(1.5), b"", "a reply to the injected RSET")
            r = c.cmd("NOOP")
            self.assertEqual(r.code, 250, r)
            self.assertEqual(c.unsolicited(1.0), b"", "more than one reply to one NOOP")
            self.assertEqual(c.ehlo().code, 250)
            self.assertEqual(c.cmd("QUIT").code, 221)
        ev = self.gw.wait_event(event="starttls_injection")
        self.assertEqual(ev["discarded"], str(len(b"RSET\r\n")), ev)
        self.assertEqual(ev["client"], mt.HOST)

    def test_starttls_not_offered_when_switched_off(self):
        self.gw.stop()
        gw = self.mxgate([self.fb], conf=self.tls_conf(**{"smtp.starttls": "false"}))
        with gw.client() as c:
            c.ehlo()
            self.assertNotIn("STARTTLS", c.extensions)
            r = c.cmd("STARTTLS")
            self.assertEqual(r.cls, 5, r)
            self.assertEqual(c.cmd("NOOP").code, 250)


# ---------------------------------------------------------------- delivery

class TestTlsDelivery(TlsCase):
    """Through mxgate into a real Postfix (plain towards the backend)."""

    def setUp(self):
        super().setUp()
        mt.require_postfix()
        self.pf = self.postfix()

    def assertTlsReceived(self, delivery, version=None, cipher=None, helo=None, ip=None):
        _, rest = delivery.strip_received(POSTFIX)
        field, _ = mt.split_header(rest)
        line = mt.unfold(field)
        m = MXGATE_RECEIVED_TLS.match(line)
        self.assertTrue(m, "mxgate's Received names no TLS: %r" % line)
        self.assertEqual(m.group("proto"), "ESMTPS", line)
        self.assertIn(m.group("version"), ("TLSv1.2", "TLSv1.3"), line)
        self.assertIn(m.group("cipher"), CIPHERS[m.group("version")], line)
        if version:
            self.assertEqual(m.group("version"), version, line)
        if cipher:
            self.assertEqual(m.group("cipher"), cipher, line)
        if helo:
            self.assertEqual(m.group("helo"), helo)
        if ip:
            self.assertEqual(m.group("ip"), ip)
        return m

    def swaks(self, port, *args, timeout=60):
        r = subprocess.run(["swaks", "--server", "%s:%d" % (mt.HOST, port),
                            "--helo", "swaks.example.net", "--from", "swaks@client.test",
                            "--to", "bob@example.test", "--timeout", "20"] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        if "TLS not available" in r.stdout + r.stderr:
            raise AssertionError("swaks has no TLS: run deploy/install-deps.sh")
        return r

    def test_swaks_starttls_delivers_with_tls_in_received_and_log(self):
        gw = self.mxgate([self.pf], conf=self.tls_conf())
        data = "From: <swaks@client.test>\nTo: <bob@example.test>\nSubject: swaks tls\n\nover TLS"
        r = self.swaks(gw.port, "--tls", "--local-interface", "127.0.0.9", "--data", data)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("<-  220 2.0.0 Ready to start TLS", r.stdout)
        m = re.search(r"=== TLS started with cipher (TLSv1\.[0-9]):(\S+?):", r.stdout)
        self.assertTrue(m, r.stdout)
        version, cipher = m.groups()
        self.assertRegex(r.stdout, r"<~  250 ")  # the final reply came inside TLS
        d = self.pf.wait_deliveries(1, 20)
        self.assertEqual(len(d), 1)
        self.assertTlsReceived(d[0], version, cipher, helo="swaks.example.net", ip="127.0.0.9")
        self.assertTrue(d[0].data.endswith(b"\n\nover TLS\n"), d[0].data)
        ev = gw.wait_event(event="message")
        self.assertEqual(ev["tls"], version, ev)
        self.assertEqual(ev["cipher"], cipher, ev)
        self.assertEqual(ev["client"], "127.0.0.9")

    def test_plaintext_message_logs_tls_none_and_esmtp(self):
        gw = self.mxgate([self.pf], conf=self.tls_conf())
        msg = mt.make_message(subject="plain next to tls")
        with gw.client() as c:
            c.ehlo()
            t = c.transact("p@client.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)
        d = self.pf.wait_deliveries(1, 20)[0]
        _, m = self.assertMxgateDelivery(d, msg, POSTFIX)
        self.assertEqual(m.group("proto"), "ESMTP")
        self.assertEqual(gw.wait_event(event="message")["tls"], "none")

    def test_implicit_tls_listener_swaks_tlsc(self):
        gw = self.mxgate([self.pf], conf=self.tls_conf(), start=False)
        tls_port = mt.free_port()
        gw.conf["smtp.listen"] = "%s:%d;%s:%d tls" % (mt.HOST, gw.port, mt.HOST, tls_port)
        gw.start()
        mt.wait_listening(tls_port, 10, proc=gw.proc)
        data = "From: <swaks@client.test>\nTo: <bob@example.test>\nSubject: tlsc\n\nimplicit TLS"
        r = self.swaks(tls_port, "--tlsc", "--local-interface", "127.0.0.10", "--data", data)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # the banner is read inside TLS ("<~"), after the handshake
        out = r.stdout
        self.assertLess(out.index("=== TLS started"), out.index("<~  220 "), out)
        self.assertNotIn("<-  220 ", out)
        self.assertNotIn("STARTTLS", out)
        d = self.pf.wait_deliveries(1, 20)
        self.assertTlsReceived(d[0], helo="swaks.example.net", ip="127.0.0.10")
        self.assertIn(gw.wait_event(event="message")["tls"], ("TLSv1.2", "TLSv1.3"))

    def test_implicit_tls_python_banner_inside_tls(self):
        gw = self.mxgate([self.pf], conf=self.tls_conf(), start=False)
        tls_port = mt.free_port()
        gw.conf["smtp.listen"] = "%s:%d;%s:%d tls" % (mt.HOST, gw.port, mt.HOST, tls_port)
        gw.start()
        mt.wait_listening(tls_port, 10, proc=gw.proc)
        for version in ("TLSv1.2", "TLSv1.3"):
            with self.subTest(version):
                with mt.SmtpClient(tls_port, source="127.0.0.11") as c:
                    # no plaintext banner: the server waits for our ClientHello
                    self.assertEqual(c.unsolicited(0.5), b"")
                    c.wrap_tls(self.ctx(version), "mxgate.example.test")
                    self.assertEqual(c.sock.version(), version)
                    b = c.reply()
                    self.assertEqual(b.code, 220, b)
                    self.assertIn("mxgate.example.test", b.text)
                    c.ehlo()
                    self.assertNotIn("STARTTLS", c.extensions)
                    t = c.transact("i@client.test", ["carol@example.test"],
                                   mt.make_message(subject="465 " + version))
                    self.assertEqual(t["final"].code, 250, t)
                    self.assertEqual(c.cmd("QUIT").code, 221)
        ds = self.pf.wait_deliveries(2, 20)
        for d, version in zip(sorted(ds, key=lambda d: b"465 TLSv1.3" in d.data),
                              ("TLSv1.2", "TLSv1.3")):
            self.assertTlsReceived(d, version=version, ip="127.0.0.11")
        # a plain client on the tls listener gets no banner and is dropped
        with mt.SmtpClient(tls_port) as c:
            c.send(b"EHLO plain.example.net\r\n")
            self.assertTrue(c.closed_by_peer(10))
            self.assertNotIn(b"220", c.buf)


class TestTlsBothSides(TlsCase):
    """Client STARTTLS and backend STARTTLS at once: pipelined commands in
    one TLS record, and a message of several MB in many TLS records."""

    def test_pipelined_big_message_arrives_byte_exact(self):
        mt.require_postfix()
        backend_ca = mt.TlsCa(os.path.join(self.tmp, "backend-pki"), cn="backend CA")
        pf = self.postfix(tls=backend_ca.issue("postfix", dns=("backend.example.test",)))
        gw = self.mxgate([pf], conf=self.tls_conf(**{
            "backend.starttls": "required", "backend.tls_verify": "true",
            "backend.tls_ca": backend_ca.cert}))
        lines = []
        for i in range(60000):
            n = (i * 37) % 200
            lines.append((b"." if i % 97 == 0 else b"") + (b"%06d " % i) + b"x" * n)
        body = b"\r\n".join(lines) + b"\r\n"
        msg = mt.make_message(subject="big over tls", body=body)
        self.assertGreater(len(msg), 4 * 1024 * 1024)
        c = self.tls_client(gw, version="TLSv1.3")
        c.send(b"MAIL FROM:<big@client.test>\r\nRCPT TO:<erin@example.test>\r\nDATA\r\n")
        self.assertEqual([r.code for r in c.replies(3)], [250, 250, 354])
        c.send(mt.dot_stuff(msg))
        r = c.reply()
        self.assertEqual(r.code, 250, r)
        self.assertEqual(c.cmd("QUIT").code, 221)
        d = pf.wait_deliveries(1, 60)[0]
        pf_hdr, rest = d.strip_received(POSTFIX)
        self.assertRegex(pf_hdr, r"\(using TLSv1\.[23] with cipher ")
        field, stored = mt.split_header(rest)
        self.assertRegex(mt.unfold(field), MXGATE_RECEIVED_TLS)
        self.assertEqual(stored, mt.as_stored(msg), "message changed in transit")
        ev = gw.wait_event(event="message")
        self.assertEqual(ev["tls"], "TLSv1.3")
        self.assertEqual(int(ev["size"]), len(msg), ev)


# ---------------------------------------------------------------- tickets

class TestSessionResumption(TlsCase):
    """Two nodes: a ticket from node A resumes on node B when they share
    tls.ticket_keys (first key issues, all keys accepted)."""

    VERSIONS = (("TLSv1.2", "-tls1_2"), ("TLSv1.3", "-tls1_3"))

    def setUp(self):
        super().setUp()
        self.fb = self.fake()

    def node(self, keys):
        return self.mxgate([self.fb], conf=self.tls_conf(ticket_keys=keys))

    def handshake(self, gw, flag, sess_in=None, sess_out=None):
        args = [flag]
        if sess_in:
            args += ["-sess_in", sess_in]
        if sess_out:
            args += ["-sess_out", sess_out]
        rc, out = s_client(gw.port, *args)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"(?m)^221 ", out)
        state, version, _ = session_line(out)
        return state, version, out

    def ticket(self, gw, version, flag, name):
        path = os.path.join(self.tmp, name)
        state, v, out = self.handshake(gw, flag, sess_out=path)
        self.assertEqual((state, v), ("New", version), out)
        self.assertTrue(os.path.getsize(path) > 0)
        self.assertRegex(out, r"TLS session ticket:|Post-Handshake New Session Ticket", out)
        return path

    def assertResumes(self, gw, flag, sess, version, expect):
        state, v, out = self.handshake(gw, flag, sess_in=sess)
        self.assertEqual((state, v), (expect, version),
                         "expected %s on node %d:\n%s" % (expect, gw.port, out))

    def test_ticket_from_node_a_resumes_on_node_b_with_the_same_key_file(self):
        a, b = self.node(self.ticket_keys), self.node(self.ticket_keys)
        for version, flag in self.VERSIONS:
            with self.subTest(version):
                sess = self.ticket(a, version, flag, "a-%s.sess" % version)
                self.assertResumes(b, flag, sess, version, "Reused")
                ev = b.wait_event(event="tls", version=version, resumed="1")
                self.assertIn(ev["cipher"], CIPHERS[version])

    def test_different_key_file_means_a_full_handshake(self):
        other = mt.make_ticket_keys(os.path.join(self.pki, "other.key"))
        a, b = self.node(self.ticket_keys), self.node(other)
        for version, flag in self.VERSIONS:
            with self.subTest(version):
                sess = self.ticket(a, version, flag, "a-%s.sess" % version)
                self.assertResumes(b, flag, sess, version, "New")
                # the ticket itself is good: node A takes it
                self.assertResumes(a, flag, sess, version, "Reused")
        self.assertEqual([e for e in b.events("tls") if e.get("resumed") == "1"], [])

    def test_key_rotation_new_key_first_still_accepts_the_old_key(self):
        old = self.ticket_keys
        new = mt.make_ticket_keys(os.path.join(self.pki, "new.key"))
        rotated = mt.join_ticket_keys(os.path.join(self.pki, "rotated.key"), new, old)
        self.assertEqual(os.path.getsize(rotated), 160)
        a, b = self.node(old), self.node(rotated)
        for version, flag in self.VERSIONS:
            with self.subTest(version):
                sess = self.ticket(a, version, flag, "a-%s.sess" % version)
                self.assertResumes(b, flag, sess, version, "Reused")
                # B issues under its first key (new): node A, which only
                # knows the old key, cannot resume B's fresh ticket
                sess_b = self.ticket(b, version, flag, "b-%s.sess" % version)
                self.assertResumes(a, flag, sess_b, version, "New")
                self.assertResumes(b, flag, sess_b, version, "Reused")

    def test_rotation_by_sighup_on_a_running_node(self):
        # the documented procedure: new key first + reload, later drop the old
        old = self.ticket_keys
        new = mt.make_ticket_keys(os.path.join(self.pki, "new.key"))
        gw = self.node(old)
        version, flag = "TLSv1.3", "-tls1_3"
        t_old = self.ticket(gw, version, flag, "old.sess")

        def reload(keys):
            n = len(gw.events("reload"))
            gw.set(tls__ticket_keys=keys)
            gw.signal(signal.SIGHUP)
            mt.wait_until(lambda: len(gw.events("reload")) > n, 10, what="event=reload")

        reload(mt.join_ticket_keys(os.path.join(self.pki, "rotated.key"), new, old))
        self.assertResumes(gw, flag, t_old, version, "Reused")
        t_new = self.ticket(gw, version, flag, "new.sess")
        reload(new)
        self.assertResumes(gw, flag, t_old, version, "New")
        self.assertResumes(gw, flag, t_new, version, "Reused")

    def test_bad_ticket_key_file_is_a_config_error(self):
        bad = os.path.join(self.pki, "short.key")
        with open(bad, "wb") as f:
            f.write(os.urandom(79))
        gw = self.mxgate([self.fb], conf=self.tls_conf(ticket_keys=bad), start=False)
        gw.write_config()
        r = gw.check_config()
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("ticket_keys", r.stdout + r.stderr)


# ---------------------------------------------------------------- reload

class TestCertificateReload(TlsCase):

    def test_sighup_new_certificate_for_new_sessions_open_session_carries_on(self):
        fb = self.fake()
        gw = self.mxgate([fb], conf=self.tls_conf())
        old_fp = self.cert.fingerprint
        c = self.tls_client(gw)
        self.assertEqual(mt.cert_fingerprint(c.sock.getpeercert(binary_form=True)), old_fp)
        self.assertEqual(c.cmd("MAIL FROM:<before@client.test>").code, 250)

        new = self.ca.issue("server2", dns=("mxgate.example.test",), ips=(mt.HOST,))
        self.assertNotEqual(new.fingerprint, old_fp)
        gw.set(tls__cert=new.cert, tls__key=new.key)
        gw.signal(signal.SIGHUP)
        gw.wait_event(event="reload")

        # a new session sees the new certificate
        with gw.client() as c2:
            c2.ehlo()
            c2.starttls(self.ctx(), "mxgate.example.test")
            self.assertEqual(mt.cert_fingerprint(c2.sock.getpeercert(binary_form=True)),
                             new.fingerprint)
            self.assertEqual(c2.cmd("QUIT").code, 221)
        rc, out = s_client(gw.port, "-showcerts")
        self.assertEqual(rc, 0, out)
        self.assertIn(mt.run_openssl(["x509", "-in", new.cert, "-noout", "-serial"]).decode()
                      .strip().split("=")[1], mt.run_openssl(
                          ["x509", "-noout", "-serial"], input=out.encode()).decode())

        # the session opened before the reload is still up and can send
        self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(mt.dot_stuff(mt.make_message(subject="across reload")))
        self.assertEqual(c.reply().code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertEqual(len(fb.accepted), 1)
        self.assertIn(b"across reload", fb.accepted[0][2])

    def test_sighup_with_a_broken_certificate_keeps_the_running_one(self):
        fb = self.fake()
        gw = self.mxgate([fb], conf=self.tls_conf())
        broken = os.path.join(self.pki, "broken.pem")
        with open(broken, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        gw.set(tls__cert=broken)
        gw.signal(signal.SIGHUP)
        gw.wait_event(event="reload_failed")
        with gw.client() as c:
            c.ehlo()
            c.starttls(self.ctx(), "mxgate.example.test")
            self.assertEqual(mt.cert_fingerprint(c.sock.getpeercert(binary_form=True)),
                             self.cert.fingerprint)
            self.assertEqual(c.cmd("QUIT").code, 221)


# ---------------------------------------------------------------- backend TLS

class TestBackendTls(TlsCase):
    """backend.starttls towards a private Postfix offering STARTTLS."""

    def setUp(self):
        super().setUp()
        mt.require_postfix()
        # the backend's certificate, from its own CA: names 127.0.0.1
        self.backend_ca = mt.TlsCa(os.path.join(self.tmp, "backend-pki"), cn="backend CA")
        self.backend_cert = self.backend_ca.issue("postfix", dns=("backend.example.test",),
                                                  ips=(mt.HOST,))

    def send_one(self, gw, source, subject):
        msg = mt.make_message(subject=subject)
        with gw.client(source=source) as c:
            c.ehlo()
            t = c.transact("b@client.test", ["dave@example.test"], msg)
            c.cmd("QUIT")
        return t, msg

    def assertDeliveredOverTls(self, pf, gw, source, subject):
        t, msg = self.send_one(gw, source, subject)
        self.assertEqual(t["final"].code if t["final"] else t, 250, t)
        d = pf.wait_deliveries(1, 20)
        self.assertEqual(len(d), 1)
        pf_hdr, m = self.assertMxgateDelivery(d[0], msg, POSTFIX, ip=source)
        # Postfix took it over TLS (smtpd_tls_received_header) and from the
        # client XCLIENT named, not from mxgate's own address
        self.assertRegex(pf_hdr, r"\(using TLSv1\.[23] with cipher ", pf_hdr)
        self.assertIn("[%s]" % source, pf_hdr)
        pf.wait_log(r"(Anonymous )?TLS connection established from \S*\[127\.0\.0\.1\]")
        pf.wait_log(r"%s: client=\S*\[%s\]" % (re.escape(d[0].queue_id), re.escape(source)))
        ev = gw.wait_event(event="message")
        self.assertEqual(ev["outcome"], "accepted", ev)
        # the client side was plaintext: the log line says so
        self.assertEqual(ev["tls"], "none", ev)
        return d[0]

    def assertRefusedAtMail(self, pf, gw, source):
        with gw.client(source=source) as c:
            c.ehlo()
            r = c.cmd("MAIL FROM:<b@client.test>")
            self.assertEqual(r.code, 451, r)
            c.cmd("QUIT")
        time.sleep(1.5)
        self.assertEqual(pf.deliveries(), [])
        self.assertEqual(re.findall(r": client=", pf.log()), [], "a transaction reached Postfix")

    def test_required_starttls_postfix_logs_tls_and_delivers_with_xclient(self):
        pf = self.postfix(tls=self.backend_cert)
        gw = self.mxgate([pf], conf={"backend.starttls": "required"})
        self.assertDeliveredOverTls(pf, gw, "127.0.0.12", "backend tls required")

    def test_pooled_tls_connection_is_reidentified_for_each_client(self):
        # Sessions one after another: the pooled backend connection keeps
        # its TLS, and XCLIENT names each session's client inside it.
        pf = self.postfix(tls=self.backend_cert)
        gw = self.mxgate([pf], conf={"backend.starttls": "required"})
        sources = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
        for i, src in enumerate(sources):
            t, _ = self.send_one(gw, src, "pooled tls %d" % i)
            self.assertEqual(t["final"].code if t["final"] else t, 250, t)
            d = pf.wait_deliveries(i + 1, 20)[i]
            pf.wait_log(r"%s: client=\S*\[%s\]" % (re.escape(d.queue_id), re.escape(src)))
            hdr, _ = d.strip_received(POSTFIX)
            self.assertRegex(hdr, r"\(using TLSv1\.[23] with cipher ")
        gw.stop()
        log = pf.wait_log(r"disconnect from .* mail=") and pf.log()
        mails = [m for m in re.findall(r"disconnect from \S+ .*", log) if " mail=" in m]
        self.assertEqual(len(mails), 1, "backend connection not reused: %s" % mails)
        self.assertIn(" mail=3 rcpt=3 data=3 ", mails[0])
        self.assertEqual(len(re.findall(r"TLS connection established from", log)), 1, log)

    def test_opportunistic_starttls_uses_tls_when_offered(self):
        pf = self.postfix(tls=self.backend_cert)
        gw = self.mxgate([pf], conf={"backend.starttls": "opportunistic"})
        self.assertDeliveredOverTls(pf, gw, "127.0.0.13", "backend tls opportunistic")

    def test_opportunistic_starttls_falls_back_to_plaintext(self):
        pf = self.postfix()
        gw = self.mxgate([pf], conf={"backend.starttls": "opportunistic"})
        t, msg = self.send_one(gw, "127.0.0.14", "backend plain")
        self.assertEqual(t["final"].code, 250, t)
        d = pf.wait_deliveries(1, 20)[0]
        pf_hdr, _ = self.assertMxgateDelivery(d, msg, POSTFIX, ip="127.0.0.14")
        self.assertNotIn("using TLS", pf_hdr)
        self.assertNotIn("TLS connection established", pf.log())

    def test_required_starttls_without_tls_on_postfix_is_451_at_mail(self):
        pf = self.postfix()
        gw = self.mxgate([pf], conf={"backend.starttls": "required"})
        self.assertRefusedAtMail(pf, gw, "127.0.0.15")
        self.assertIn("STARTTLS", gw.log_text())

    def test_verify_with_the_right_ca_delivers(self):
        pf = self.postfix(tls=self.backend_cert)
        gw = self.mxgate([pf], conf={"backend.starttls": "required",
                                     "backend.tls_verify": "true",
                                     "backend.tls_ca": self.backend_ca.cert})
        self.assertDeliveredOverTls(pf, gw, "127.0.0.16", "backend verified")

    def test_verify_with_a_wrong_ca_is_451(self):
        pf = self.postfix(tls=self.backend_cert)
        # the client-side CA of this case did not sign Postfix's certificate
        gw = self.mxgate([pf], conf={"backend.starttls": "required",
                                     "backend.tls_verify": "true",
                                     "backend.tls_ca": self.ca.cert})
        self.assertRefusedAtMail(pf, gw, "127.0.0.17")
        self.assertRegex(gw.log_text(), r"unable to get local issuer certificate|"
                                        r"certificate verify failed")

    def test_verify_needs_the_backend_ip_in_subject_alt_name(self):
        dns_only = self.backend_ca.issue("postfix-dns-only", dns=("backend.example.test",),
                                         ips=())
        pf = self.postfix(tls=dns_only)
        gw = self.mxgate([pf], conf={"backend.starttls": "required",
                                     "backend.tls_verify": "true",
                                     "backend.tls_ca": self.backend_ca.cert})
        self.assertRefusedAtMail(pf, gw, "127.0.0.18")
        self.assertRegex(gw.log_text(), r"IP address mismatch")


# ---------------------------------------------------------------- testssl.sh

class TestTestssl(TlsCase):
    """testssl.sh against a STARTTLS listener: protocols, cipher categories,
    forward secrecy, RC4. Its JSON findings are checked; a summary is
    printed with the test output."""

    # (JSON id or ids across testssl.sh versions, what it shows as, wanted)
    WANT = (
        (("SSLv2",), "SSLv2", "not offered"),
        (("SSLv3",), "SSLv3", "not offered"),
        (("TLS1",), "TLS 1.0", "not offered"),
        (("TLS1_1",), "TLS 1.1", "not offered"),
        (("TLS1_2",), "TLS 1.2", "offered"),
        (("TLS1_3",), "TLS 1.3", "offered"),
        (("cipherlist_NULL",), "NULL ciphers", "not offered"),
        (("cipherlist_aNULL",), "anonymous (aNULL)", "not offered"),
        (("cipherlist_EXPORT",), "EXPORT ciphers", "not offered"),
        (("cipherlist_LOW",), "LOW (DES, RC2, RC4)", "not offered"),
        (("cipherlist_3DES_IDEA",), "3DES / IDEA", "not offered"),
        (("cipherlist_OBSOLETED", "cipherlist_AVERAGE"), "obsolete CBC", "not offered"),
        (("cipherlist_STRONG",), "strong (AEAD)", "offered"),
        (("FS", "PFS"), "forward secrecy", "offered"),
        (("RC4",), "RC4", "not vulnerable"),
    )

    def _testssl_version(self):
        r = subprocess.run([TESTSSL, "--version"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace", timeout=30)
        m = re.search(r"testssl(?:\.sh)?\s+(\S+)", r.stdout + r.stderr)
        return m.group(1) if m else "?"

    def test_testssl_protocols_and_cipher_categories(self):
        if not TESTSSL:
            self.skipTest("testssl.sh not installed (Debian package testssl.sh)")
        fb = self.fake()
        gw = self.mxgate([fb], conf=self.tls_conf(**{"log.level": "info"}))
        jfile = os.path.join(self.tmp, "testssl.json")
        t0 = time.monotonic()
        r = subprocess.run([TESTSSL, "--starttls", "smtp", "--quiet", "--color", "0",
                            "--warnings", "off", "--nodns", "none",
                            "--connect-timeout", "5", "--openssl-timeout", "10",
                            "--protocols", "--std", "--fs", "--rc4",
                            "--jsonfile", jfile, "%s:%d" % (mt.HOST, gw.port)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           errors="replace", timeout=180)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(jfile) as f:
            findings = {e["id"]: e for e in json.load(f)}
        summary = ["testssl.sh %s --starttls smtp against mxgate (%.0fs):"
                   % (self._testssl_version(), took)]
        bad = []
        for ids, label, want in self.WANT:
            e = next((findings[i] for i in ids if i in findings), None)
            got = e["finding"] if e else "(missing)"
            # "offered with final" (TLS 1.3) still starts with "offered"
            ok = got.startswith(want)
            summary.append("  %-20s %-18s %s" % (label, got, "ok" if ok else "WANT " + want))
            if not ok:
                bad.append(label)
        sys.stderr.write("\n" + "\n".join(summary) + "\n")
        self.assertEqual(bad, [], "\n".join(summary) + "\n" + r.stdout)
        self.assertLess(took, 180)
        self.assertEqual(gw.proc.poll(), None, "mxgate died under testssl.sh")


if __name__ == "__main__":
    mt.main()
