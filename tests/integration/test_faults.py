#!/usr/bin/env python3
"""Faults between mxgate and its backend, and between the client and mxgate.

The rule under test (ARCHITECTURE.md, "Rules of the road"): a 250 to the
client only after the backend's 250 for the same transaction; backend down,
timeout or anything unexpected gives the client a 4xx; a client gone before
the final dot delivers nothing. Real Postfix where it can misbehave on cue
(a killed smtpd), FakeBackend where it cannot.
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

COMMAND_TIMEOUT = 2


def run_until_failure(c, msg, rcpts=("alice@example.test",)):
    """Drive one transaction; return (first reply that is not 2xx/354 or
    None, the final reply or None). A server that hangs up counts as no reply."""
    try:
        r = c.ehlo()
        if r.cls != 2:
            return r, None
        r = c.cmd("MAIL FROM:<f@client.test>")
        if r.cls != 2:
            return r, None
        for rc in rcpts:
            r = c.cmd("RCPT TO:<%s>" % rc)
            if r.cls != 2:
                return r, None
        r = c.cmd("DATA")
        if r.code != 354:
            return r, None
        c.send(mt.dot_stuff(msg))
        r = c.reply()
        return (None if r.code == 250 else r), r
    except (EOFError, ConnectionError) as e:
        return "connection closed without a reply: %s" % e, None
    except socket.timeout:
        return "no reply within %ss" % c.sock.gettimeout(), None


class TestFakeBackendStages(mt.IntegrationCase):
    """A 4xx or 5xx from the backend at each stage reaches the client as a
    reply of the same class; nothing gets a 250."""

    STAGES = ("greeting", "ehlo", "mail", "rcpt", "data", "eod")

    def check(self, stage, reply, want_cls, exact=False):
        fake = self.fake({stage: reply})
        gw = self.mxgate([fake], conf={"backend.command_timeout": str(COMMAND_TIMEOUT),
                                       "backend.dot_timeout": str(COMMAND_TIMEOUT)})
        with gw.client(timeout=COMMAND_TIMEOUT + 10) as c:
            fail, final = run_until_failure(c, mt.make_message(subject=stage))
        self.assertIsInstance(fail, mt.Reply, "stage %s %r: client saw %r" % (stage, reply, fail))
        self.assertEqual(fail.cls, want_cls, "stage %s %r: client got %r" % (stage, reply, fail))
        if exact:
            self.assertEqual(fail.text, reply)
        self.assertNotEqual(final and final.code, 250)
        self.assertEqual(fake.accepted, [])
        return fail

    def test_backend_4xx_at_each_stage_gives_client_4xx(self):
        for stage in self.STAGES:
            with self.subTest(stage=stage):
                self.check(stage, "451 4.3.0 fake %s trouble" % stage, 4,
                           exact=stage in ("mail", "rcpt"))

    def test_backend_5xx_at_each_stage_gives_client_5xx(self):
        # A backend refusing service in its greeting or EHLO is a backend
        # failure, not a verdict on the message: the client gets a 4xx and
        # retries (covered below), never a bounce.
        for stage in ("mail", "rcpt", "data", "eod"):
            with self.subTest(stage=stage):
                code = "554 5.3.0" if stage in ("greeting", "ehlo", "eod", "data") else "550 5.7.1"
                self.check(stage, "%s fake %s refusal" % (code, stage), 5,
                           exact=stage in ("mail", "rcpt"))

    def test_backend_garbage_reply_gives_client_4xx(self):
        for stage in ("greeting", "mail", "rcpt", "eod"):
            with self.subTest(stage=stage):
                self.check(stage, mt.Garbage(), 4)

    def test_backend_hang_gives_client_4xx_after_command_timeout(self):
        for stage in ("mail", "rcpt", "eod"):
            with self.subTest(stage=stage):
                t0 = time.monotonic()
                self.check(stage, mt.Hang(), 4)
                self.assertLess(time.monotonic() - t0, COMMAND_TIMEOUT + 8,
                                "stage %s: 4xx took too long" % stage)

    def test_backend_refusing_service_gives_client_4xx_not_5xx(self):
        for stage in ("greeting", "ehlo"):
            with self.subTest(stage=stage):
                self.check(stage, "554 5.3.0 fake %s refusal" % stage, 4)

    def test_backend_closes_after_rcpt_gives_client_4xx(self):
        self.check("data", mt.Close(), 4)

    def test_backend_closes_while_client_waits_for_final_reply_gives_4xx(self):
        self.check("eod", mt.Close(), 4)

    def test_backend_unreachable_gives_client_4xx(self):
        gw = self.mxgate([mt.free_port()])
        with gw.client() as c:
            fail, final = run_until_failure(c, mt.make_message(subject="nobody home"))
        self.assertIsInstance(fail, mt.Reply, fail)
        self.assertEqual(fail.cls, 4, fail)


class TestPostfixFaults(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        mt.require_postfix()
        self.pf = self.postfix()
        self.gw = self.mxgate([self.pf])

    def assertNothingDelivered(self, wait=3.0):
        time.sleep(wait)
        self.assertEqual(self.pf.deliveries(), [])
        self.pf.wait_idle(10)
        self.assertEqual(self.pf.queue_files(), [])

    def test_backend_smtpd_killed_after_rcpt_gives_4xx_and_no_delivery(self):
        with self.gw.client() as c:
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<k@client.test>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
            killed = self.pf.kill_smtpd()
            self.assertTrue(killed, "no Postfix smtpd to kill")
            time.sleep(0.3)
            r = c.cmd("DATA")
            if r.code == 354:
                c.send(mt.dot_stuff(mt.make_message(subject="killed")))
                r = c.reply()
            self.assertEqual(r.cls, 4, r)
        self.assertNothingDelivered()

    def test_backend_smtpd_killed_during_data_gives_4xx(self):
        with self.gw.client() as c:
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<k@client.test>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            msg = mt.make_message(subject="killed in data", body=b"a" * 70 + b"\r\n")
            c.send(msg[:len(msg) // 2])
            time.sleep(0.3)
            self.pf.kill_smtpd()
            time.sleep(0.3)
            c.send(msg[len(msg) // 2:] + b".\r\n")
            r = c.reply()
            self.assertEqual(r.cls, 4, r)
        self.assertNothingDelivered()

    def test_client_disconnect_mid_data_delivers_nothing(self):
        body = (b"z" * 78 + b"\r\n") * 2000
        for cut in (b"", b"\r\n", b"\r\n."):
            with self.subTest(ends_with=cut):
                c = self.gw.client()
                c.ehlo()
                self.assertEqual(c.cmd("MAIL FROM:<gone@client.test>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(mt.make_message(subject="gone", body=body)[:-2] + cut)
                time.sleep(0.3)
                if not cut:  # abort with a RST rather than a FIN
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()
        self.assertNothingDelivered()
        # mxgate still serves
        with self.gw.client() as c:
            c.ehlo()
            t = c.transact("after@client.test", ["bob@example.test"], mt.make_message())
            self.assertEqual(t["final"].code, 250, t)

    def test_exactly_one_delivery_per_250(self):
        """50 transactions, some abandoned mid-DATA, some reset, some with a
        rejected recipient: deliveries == the 250s given, each message once."""
        n = 50
        ok_ids = []
        for i in range(n):
            msg = mt.make_message(subject="count %d" % i, extra_headers=["X-Seq: %d" % i])
            c = self.gw.client()
            try:
                c.ehlo()
                if i % 5 == 4:      # client vanishes mid-DATA
                    c.cmd("MAIL FROM:<cnt@client.test>")
                    c.cmd("RCPT TO:<sink@example.test>")
                    c.cmd("DATA")
                    c.send(msg[: len(msg) // 2])
                    continue
                if i % 7 == 6:      # client resets before DATA
                    c.cmd("MAIL FROM:<cnt@client.test>")
                    c.cmd("RCPT TO:<sink@example.test>")
                    self.assertEqual(c.cmd("RSET").code, 250)
                    c.cmd("QUIT")
                    continue
                rcpts = ["sink@example.test"] if i % 3 else ["nobody@example.test", "sink@example.test"]
                t = c.transact("cnt@client.test", rcpts, msg)
                if t["final"] is not None and t["final"].code == 250:
                    ok_ids.append(i)
                c.cmd("QUIT")
            finally:
                c.close()
        self.assertGreater(len(ok_ids), n // 2)
        self.pf.wait_deliveries(len(ok_ids), 60)
        time.sleep(3)
        ds = self.pf.deliveries()
        seqs = []
        for d in ds:
            for h in mt.headers_of(d.data):
                if h.startswith("X-Seq: "):
                    seqs.append(int(h[7:]))
        self.assertEqual(sorted(seqs), sorted(ok_ids), "deliveries do not match the 250s")
        self.pf.wait_idle(10)


if __name__ == "__main__":
    mt.main()
