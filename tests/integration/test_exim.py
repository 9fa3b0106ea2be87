#!/usr/bin/env python3
"""mxgate in front of a real Exim 4.96 with backend.forward = proxy.

Exim has neither XCLIENT nor XFORWARD; mxgate hands it the client address in
a PROXY v1 header, which Exim accepts from 127.0.0.1 (hosts_proxy). A
delivered file is Exim's Received header, mxgate's, then the client's
message exactly (LF line ends).
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

EXIM = "(Exim 4.96)"


class EximCase(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        mt.require_root()
        self.ex = self.exim()
        self.gw = self.mxgate([self.ex], forward="proxy")

    def test_harness_exim_takes_client_address_from_proxy_header(self):
        # The backend itself, without mxgate: a PROXY v1 header from
        # 127.0.0.1 sets the client address Exim uses (hosts_proxy).
        with mt.SmtpClient(self.ex.port, timeout=10) as c:
            c.send(b"PROXY TCP4 127.0.0.77 127.0.0.1 40000 25\r\n")
            self.assertEqual(c.reply().code, 220)
            r = c.ehlo("direct.example")
            self.assertIn("[127.0.0.77]", r.lines[0])

    def test_message_arrives_byte_exact_and_exim_sees_client_address(self):
        body = (b"line one\r\n\r\n.leading dot\r\n..two dots\r\n" + b"Z" * 998 + b"\r\nend\r\n")
        msg = mt.make_message(subject="exim exact", body=body)
        with self.gw.client(source="127.0.0.5") as c:
            c.ehlo("client.example.net")
            t = c.transact("sender@client.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)
            self.assertEqual(c.cmd("QUIT").code, 221)
        d = self.ex.wait_deliveries(1)[0]
        self.assertEqual(d.recipient, "alice@example.test")
        self.assertEqual(d.sender, "sender@client.test")
        exim_hdr, m = self.assertMxgateDelivery(d, msg, EXIM, helo="client.example.net",
                                                ip="127.0.0.5")
        self.assertRegex(exim_hdr, r"^Received: from \S*\s*\[127\.0\.0\.5\]")
        self.ex.wait_log(r"%s <= sender@client\.test H=.*\[127\.0\.0\.5\].* PRX=127\.0\.0\.1"
                         % re.escape(d.queue_id))

    def test_swaks_through_mxgate_to_exim(self):
        data = "From: <swaks@client.test>\nTo: <bob@example.test>\nSubject: swaks exim\n\nhello exim\nbye"
        r = subprocess.run(["swaks", "--server", "%s:%d" % (mt.HOST, self.gw.port),
                            "--local-interface", "127.0.0.6", "--helo", "swaks.example.net",
                            "--from", "swaks@client.test", "--to", "bob@example.test",
                            "--data", data, "--timeout", "20"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        d = self.ex.wait_deliveries(1)[0]
        expected = (data + "\n").replace("\n", "\r\n").encode()
        exim_hdr, _ = self.assertMxgateDelivery(d, expected, EXIM, ip="127.0.0.6")
        self.assertIn("[127.0.0.6]", exim_hdr)

    def test_unknown_recipient_rejected_at_rcpt_verbatim(self):
        msg = mt.make_message(subject="exim unknown")
        with self.gw.client() as c:
            c.ehlo()
            t = c.transact("s@client.test", ["nobody@example.test", "carol@example.test"], msg)
            self.assertEqual(t["rcpt"][0].text, "550 5.1.1 <nobody@example.test>: unknown user")
            self.assertEqual(t["rcpt"][1].code, 250)
            self.assertEqual(t["final"].code, 250, t)
        d = self.ex.wait_deliveries(1)
        time.sleep(1)
        d = self.ex.deliveries()
        self.assertEqual([x.recipient for x in d], ["carol@example.test"])
        self.assertMxgateDelivery(d[0], msg, EXIM)

    def test_pipelined_recipients_and_bdat(self):
        msg = mt.make_message(subject="exim bdat", body=b"chunk one\r\n.\r\nchunk two\r\n")
        cut = msg.index(b"chunk two") - 1
        with self.gw.client() as c:
            c.ehlo()
            c.send("MAIL FROM:<p@client.test>\r\nRCPT TO:<alice@example.test>\r\n"
                   "RCPT TO:<bob@example.test>\r\n")
            rs = c.replies(3)
            self.assertEqual([r.code for r in rs], [250, 250, 250], rs)
            c.send(b"BDAT %d\r\n" % cut + msg[:cut])
            self.assertEqual(c.reply().code, 250)
            c.send(b"BDAT %d LAST\r\n" % (len(msg) - cut) + msg[cut:])
            self.assertEqual(c.reply().code, 250)
        ds = self.ex.wait_deliveries(2)
        self.assertEqual(sorted(d.recipient for d in ds), ["alice@example.test", "bob@example.test"])
        for d in ds:
            self.assertMxgateDelivery(d, msg, EXIM)

    def test_smtputf8_recipient(self):
        msg = ("From: <σέντερ@client.test>\r\nTo: <δοκιμή@example.test>\r\n"
               "Subject: δοκιμή\r\n\r\nΚαλημέρα\r\n").encode("utf-8")
        with self.gw.client() as c:
            c.ehlo()
            t = c.transact("σέντερ@client.test", ["δοκιμή@example.test"], msg,
                           mail_params=" BODY=8BITMIME SMTPUTF8")
            self.assertEqual(t["final"].code, 250, t)
        d = self.ex.wait_deliveries(1)[0]
        self.assertEqual(d.recipient, "δοκιμή@example.test")
        self.assertMxgateDelivery(d, msg, EXIM)


if __name__ == "__main__":
    mt.main()
