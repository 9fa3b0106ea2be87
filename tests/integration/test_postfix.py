#!/usr/bin/env python3
"""mxgate in front of a real Postfix: what the backend receives, byte for byte.

Each case runs its own private Postfix (see mxtest.PostfixInstance) and its
own mxgate. A delivered file is always: Postfix's Received header, then
mxgate's Received header, then the client's message exactly (as stored: LF
line ends). Clients are swaks, Python's smtplib, Postfix's smtp-source and a
raw socket for what the others will not send.
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

POSTFIX = "(Postfix)"
UNKNOWN_REPLY = ("550 5.1.1 <nobody@example.test>: Recipient address rejected: "
                 "User unknown in virtual mailbox table")

BODY = (b"Plain line\r\n"
        b"\r\n"
        b"  leading spaces and a tab\there\r\n"
        b"trailing spaces   \r\n"
        + b"X" * 998 + b"\r\n"  # the longest line RFC 5322 allows
        + b"last line\r\n")


def normalise_newlines(msg):
    """What mxgate makes of bare LF / bare CR by default: CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", msg)


class PostfixCase(mt.IntegrationCase):
    forward = "xclient"
    conf = None

    def setUp(self):
        super().setUp()
        mt.require_postfix()
        self.pf = self.postfix()
        self.gw = self.mxgate([self.pf], forward=self.forward, conf=self.conf)

    def one_delivery(self, timeout=20):
        d = self.pf.wait_deliveries(1, timeout)
        self.assertEqual(len(d), 1, d)
        return d[0]

    def assertNothingDelivered(self, wait=2.0):
        time.sleep(wait)
        self.assertEqual(self.pf.deliveries(), [], "a message was delivered")
        self.pf.wait_idle(10)


class TestDelivery(PostfixCase):

    def test_harness_postfix_accepts_xclient_and_delivers_exact_bytes(self):
        # The backend itself, without mxgate: XCLIENT from loopback is
        # honoured and a message is stored as sent (LF line ends).
        msg = mt.make_message(subject="direct", body=b"a\r\n.b\r\n")
        with mt.SmtpClient(self.pf.port) as c:
            self.assertEqual(c.reply().code, 220)
            c.ehlo()
            self.assertIn("XCLIENT", c.extensions)
            self.assertEqual(c.cmd("XCLIENT ADDR=127.0.0.33 NAME=[UNAVAILABLE]").code, 220)
            c.ehlo("direct.example.net")
            t = c.transact("d@client.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)
        hdr, rest = self.one_delivery().strip_received(POSTFIX)
        self.assertIn("[127.0.0.33]", hdr)
        self.assertEqual(rest, mt.as_stored(msg))

    def test_smtplib_message_arrives_byte_exact_with_client_address_via_xclient(self):
        msg = mt.make_message(subject="smtplib exact", body=BODY)
        with self.gw.smtplib(source="127.0.0.5") as s:
            refused = s.sendmail("sender@client.test", ["alice@example.test"], msg)
            self.assertEqual(refused, {})
        d = self.one_delivery()
        self.assertEqual(d.recipient, "alice@example.test")
        self.assertEqual(d.sender, "sender@client.test")
        pf_hdr, m = self.assertMxgateDelivery(d, msg, POSTFIX, helo="client.example.net",
                                              ip="127.0.0.5")
        self.assertEqual(m.group("by"), "mxgate.example.test")
        # Postfix saw the real client, not mxgate's 127.0.0.1
        self.assertIn("[127.0.0.5]", pf_hdr)
        self.pf.wait_log(r"%s: client=\S*\[127\.0\.0\.5\]" % re.escape(d.queue_id))
        ev = self.gw.wait_event(event="message")
        self.assertIn("outcome", ev)

    def test_pooled_backend_connection_is_reidentified_for_each_client(self):
        # Sessions one after another from different addresses: the backend
        # connection is reused (one smtpd connection for all of them), and
        # XCLIENT tells Postfix each session's own client every time.
        sources = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
        for i, src in enumerate(sources):
            msg = mt.make_message(subject="pooled %d" % i)
            with self.gw.smtplib(source=src) as s:
                self.assertEqual(s.sendmail("sender@client.test", ["alice@example.test"], msg), {})
            d = self.pf.wait_deliveries(i + 1, 20)[i]
            self.pf.wait_log(r"%s: client=\S*\[%s\]" % (re.escape(d.queue_id), re.escape(src)))
        self.gw.stop()  # closes the pooled connection: Postfix logs its totals
        log = self.pf.wait_log(r"disconnect from .* mail=") and self.pf.log()
        # "client=" lines name each source once; none names mxgate itself
        self.assertEqual(len(re.findall(r": client=\S*\[127\.0\.0\.1\]", log)), 0, log)
        # one backend session carried all three transactions (the health
        # probe's connections never send MAIL)
        mails = [m for m in re.findall(r"disconnect from \S+ .*", log) if " mail=" in m]
        self.assertEqual(len(mails), 1, "backend connection not reused: %s" % mails)
        self.assertIn(" mail=3 rcpt=3 data=3 ", mails[0])

    def test_swaks_message_arrives_byte_exact(self):
        data = "From: <swaks@client.test>\nTo: <bob@example.test>\nSubject: swaks\n\nswaks body\n..dots\nend"
        r = subprocess.run(["swaks", "--server", "%s:%d" % (mt.HOST, self.gw.port),
                            "--local-interface", "127.0.0.6", "--helo", "swaks.example.net",
                            "--from", "swaks@client.test", "--to", "bob@example.test",
                            "--data", data, "--timeout", "20"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"<-  250 ")
        d = self.one_delivery()
        expected = (data + "\n").replace("\n", "\r\n").encode()
        pf_hdr, _ = self.assertMxgateDelivery(d, expected, POSTFIX, helo="swaks.example.net",
                                              ip="127.0.0.6")
        self.assertIn("[127.0.0.6]", pf_hdr)

    def test_smtp_source_load_each_message_delivered_once_with_one_mxgate_header(self):
        n = 9
        r = subprocess.run(["smtp-source", "-c", "-s", "3", "-m", str(n), "-f", "load@client.test",
                            "-t", "sink@example.test", "%s:%d" % (mt.HOST, self.gw.port)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        ds = self.pf.wait_deliveries(n, 30)
        time.sleep(1)
        ds = self.pf.deliveries()
        self.assertEqual(len(ds), n)
        for d in ds:
            _, rest = d.strip_received(POSTFIX)
            field, body = mt.split_header(rest)
            self.assertRegex(mt.unfold(field), mt.MXGATE_RECEIVED)
            self.assertNotIn(b"(mxgate)", body)
            self.assertIn(b"La de da de da", body)

    def test_backend_rcpt_rejection_reaches_client_verbatim(self):
        msg = mt.make_message(subject="one good one bad")
        with self.gw.client() as c:
            c.ehlo()
            t = c.transact("sender@client.test", ["nobody@example.test", "carol@example.test"], msg)
            self.assertEqual(t["rcpt"][0].text, UNKNOWN_REPLY)
            self.assertEqual(t["rcpt"][1].code, 250)
            self.assertEqual(t["final"].code, 250, t)
            self.assertEqual(c.cmd("QUIT").code, 221)
        d = self.one_delivery()
        self.assertEqual(d.recipient, "carol@example.test")
        self.assertMxgateDelivery(d, msg, POSTFIX)
        time.sleep(0.5)
        self.assertEqual(len(self.pf.deliveries()), 1)

    def test_pipelined_transaction_with_several_recipients(self):
        msg = mt.make_message(subject="pipelined")
        with self.gw.client(source="127.0.0.7") as c:
            c.ehlo()
            self.assertIn("PIPELINING", c.extensions)
            rcpts = ["alice@example.test", "bob@example.test", "nobody@example.test",
                     "dave@example.test"]
            batch = "MAIL FROM:<pipe@client.test>\r\n" + "".join(
                "RCPT TO:<%s>\r\n" % r for r in rcpts) + "DATA\r\n"
            c.send(batch)
            rs = c.replies(len(rcpts) + 2)
            self.assertEqual([r.code for r in rs], [250, 250, 250, 550, 250, 354], rs)
            self.assertEqual(rs[3].text, UNKNOWN_REPLY)
            # the message and the next transaction in one write, too
            msg2 = mt.make_message(subject="pipelined 2", to="erin@example.test")
            c.send(mt.dot_stuff(msg) + b"MAIL FROM:<pipe@client.test>\r\n"
                   b"RCPT TO:<erin@example.test>\r\nDATA\r\n")
            rs = c.replies(4)
            self.assertEqual([r.code for r in rs], [250, 250, 250, 354], rs)
            c.send(mt.dot_stuff(msg2) + b"QUIT\r\n")
            rs = c.replies(2)
            self.assertEqual([r.code for r in rs], [250, 221], rs)
        ds = self.pf.wait_deliveries(4)
        time.sleep(0.5)
        ds = self.pf.deliveries()
        self.assertEqual(sorted(d.recipient for d in ds),
                         ["alice@example.test", "bob@example.test", "dave@example.test",
                          "erin@example.test"])
        for d in ds:
            self.assertMxgateDelivery(d, msg2 if d.recipient == "erin@example.test" else msg,
                                      POSTFIX, ip="127.0.0.7")

    def test_lines_starting_with_dot_round_trip(self):
        body = (b".\r\n"
                b"..\r\n"
                b".leading dot\r\n"
                b"...three\r\n"
                b"middle . dot\r\n"
                b"end with dot.\r\n"
                b". space after dot\r\n")
        msg = mt.make_message(subject="dots", body=body)
        with self.gw.client() as c:
            c.ehlo()
            t = c.transact("dots@client.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)
        self.assertMxgateDelivery(self.one_delivery(), msg, POSTFIX)

    def test_bdat_chunks_arrive_byte_exact(self):
        # chunk boundaries inside CRLF and around a dot line: in BDAT a
        # "CRLF.CRLF" is data, not an end marker.
        msg = mt.make_message(subject="bdat", body=b"first\r\n.\r\nafter dot line\r\n.x\r\nlast\r\n")
        cut1 = msg.index(b"first") + 6  # between CR and LF
        cut2 = msg.index(b"after") - 1
        chunks = [msg[:cut1], msg[cut1:cut2], msg[cut2:]]
        self.assertEqual(chunks[0][-1:], b"\r")
        with self.gw.client() as c:
            c.ehlo()
            self.assertIn("CHUNKING", c.extensions)
            self.assertEqual(c.cmd("MAIL FROM:<bdat@client.test>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<bob@example.test>").code, 250)
            for i, ch in enumerate(chunks):
                last = i == len(chunks) - 1
                c.send(b"BDAT %d%s\r\n" % (len(ch), b" LAST" if last else b"") + ch)
                r = c.reply()
                self.assertEqual(r.code, 250, "chunk %d: %r" % (i, r))
            self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertMxgateDelivery(self.one_delivery(), msg, POSTFIX)

    def test_bare_lf_dot_smuggling_stays_one_message(self):
        # SMTP smuggling: a bare LF "end of data" must not end DATA. Postfix
        # here does not protect itself (smtpd_forbid_bare_newline = no), so
        # a gateway passing the bytes through would produce a 2nd message.
        smuggled = (b"MAIL FROM:<evil@client.test>\r\n"
                    b"RCPT TO:<bob@example.test>\r\n"
                    b"DATA\r\n"
                    b"Subject: smuggled\r\n\r\nevil\r\n")
        variants = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"]
        for i, v in enumerate(variants):
            msg = mt.make_message(subject="smuggle %d" % i, body=b"innocent" + v + smuggled)
            with self.gw.client() as c:
                c.ehlo()
                self.assertEqual(c.cmd("MAIL FROM:<s@client.test>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(msg + b".\r\n")
                r = c.reply()
                self.assertEqual(r.code, 250, "variant %r: %r" % (v, r))
                q = c.cmd("QUIT")
                self.assertEqual(q.code, 221, "variant %r: extra reply %r (smuggled command?)" % (v, q))
        ds = self.pf.wait_deliveries(len(variants))
        time.sleep(1.5)
        ds = self.pf.deliveries()
        self.assertEqual([d.recipient for d in ds], ["alice@example.test"] * len(variants),
                         "smuggled message delivered")
        for d, v in zip(ds, variants):
            _, rest = d.strip_received(POSTFIX)
            _, body = mt.split_header(rest)
            self.assertIn(b"\nMAIL FROM:<evil@client.test>\nRCPT TO:<bob@example.test>\n", body)
            self.assertIn(b"\nSubject: smuggled\n", body)
        # and the bytes are exactly the CRLF-normalised original
        for i, (d, v) in enumerate(zip(ds, variants)):
            _, rest = d.strip_received(POSTFIX)
            _, body = mt.split_header(rest)
            self.assertIn(mt.as_stored(normalise_newlines(b"innocent" + v + smuggled)), body,
                          "variant %r" % v)

    def test_8bitmime_and_smtputf8_addresses(self):
        with self.gw.client() as c:
            c.ehlo()
            for ext in ("8BITMIME", "SMTPUTF8"):
                self.assertIn(ext, c.extensions)
            msg8 = mt.make_message(subject="8bit", body="Grüße, naïve café\r\n".encode("utf-8"))
            t = c.transact("eight@client.test", ["alice@example.test"], msg8,
                           mail_params=" BODY=8BITMIME")
            self.assertEqual(t["final"].code, 250, t)
            msgu = ("From: <σέντερ@client.test>\r\nTo: <δοκιμή@example.test>\r\n"
                    "Subject: δοκιμή\r\n\r\nΚαλημέρα\r\n").encode("utf-8")
            t = c.transact("σέντερ@client.test", ["δοκιμή@example.test"], msgu,
                           mail_params=" BODY=8BITMIME SMTPUTF8")
            self.assertEqual(t["mail"].code, 250, t)
            self.assertEqual(t["rcpt"][0].code, 250, t)
            self.assertEqual(t["final"].code, 250, t)
        ds = self.pf.wait_deliveries(2)
        by_rcpt = {d.recipient: d for d in ds}
        self.assertMxgateDelivery(by_rcpt["alice@example.test"], msg8, POSTFIX)
        du = by_rcpt["δοκιμή@example.test"]
        self.assertEqual(du.sender, "σέντερ@client.test")
        self.assertMxgateDelivery(du, msgu, POSTFIX)


class TestXforward(PostfixCase):
    forward = "xforward"

    def test_postfix_logs_real_client_address_via_xforward(self):
        msg = mt.make_message(subject="xforward", body=BODY)
        with self.gw.client(source="127.0.0.9") as c:
            c.ehlo("xf.example.net")
            t = c.transact("xf@client.test", ["bob@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)
        d = self.one_delivery()
        self.assertMxgateDelivery(d, msg, POSTFIX, helo="xf.example.net", ip="127.0.0.9")
        # with XFORWARD, Postfix logs the forwarded client as orig_client
        self.pf.wait_log(r"%s: client=(?:\S*\[127\.0\.0\.9\]|.*orig_client=\S*\[127\.0\.0\.9\])"
                         % re.escape(d.queue_id))


class TestSizeLimit(PostfixCase):
    conf = {"smtp.max_message_size": "10000"}

    def test_size_over_limit_gets_552_and_nothing_is_delivered(self):
        big = mt.make_message(subject="too big", body=(b"y" * 70 + b"\r\n") * 300)
        self.assertGreater(len(big), 10000)
        with self.gw.client() as c:
            c.ehlo()
            size = [e for e in c.extensions if e == "SIZE"]
            self.assertTrue(size, c.extensions)
            # declared size too large: refused at MAIL (RFC 1870)
            r = c.cmd("MAIL FROM:<big@client.test> SIZE=%d" % len(big))
            self.assertEqual(r.code, 552, r)
            # undeclared: refused after the data
            c.cmd("RSET")
            t = c.transact("big@client.test", ["alice@example.test"], big)
            self.assertEqual(t["final"].code, 552, t)
            # the session goes on: a small message passes
            small = mt.make_message(subject="small")
            t = c.transact("small@client.test", ["bob@example.test"], small)
            self.assertEqual(t["final"].code, 250, t)
        d = self.one_delivery()
        self.assertEqual(d.recipient, "bob@example.test")
        time.sleep(1.5)
        self.assertEqual(len(self.pf.deliveries()), 1, "the oversized message was delivered")


class TestFailover(mt.IntegrationCase):

    def test_first_backend_closed_second_postfix_delivers(self):
        mt.require_postfix()
        pf = self.postfix()
        dead = mt.free_port()
        gw = self.mxgate([dead, pf])
        msg = mt.make_message(subject="failover")
        with gw.client() as c:
            c.ehlo()
            t = c.transact("fo@client.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)
        self.assertMxgateDelivery(pf.wait_deliveries(1)[0], msg, POSTFIX)


if __name__ == "__main__":
    mt.main()
