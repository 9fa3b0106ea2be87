"""Rate limits at each stage, concurrency leases and automatic reputation,
on one node with the embedded store, in front of a FakeBackend.

What must hold:
  - a connections rule refuses before the banner (421, or 554 with
    action = reject), a recipients rule at RCPT, a bytes rule at the end of
    data (and the backend transaction is reset, nothing delivered);
  - each refusal is logged with the rule and the counter before and after;
  - cluster.client_concurrency counts open sessions, and a closed session
    gives its lease back;
  - automatic reputation: a client that talks before the banner loses
    points until it is refused at connect; a sender whose message carried
    malware is refused at MAIL afterwards, from any address; other clients
    and senders are not affected.
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402


def rule(name, **kw):
    return {"ratelimit:%s.%s" % (name, k): str(v) for k, v in kw.items()}


class PolicyCase(mt.IntegrationCase):

    def ratelimit_events(self, gw, rule_name, verdict, count):
        """The first `count` event=ratelimit lines of a rule and verdict,
        waiting for them: a log line may arrive after the client's reply."""
        def find():
            ev = [e for e in gw.events("ratelimit")
                  if e.get("rule") == rule_name and e.get("verdict") == verdict]
            return ev if len(ev) >= count else None
        return mt.wait_until(find, 5, what="%d %s lines of rule %s" % (count, verdict, rule_name))

    def banner(self, port, source=None):
        c = mt.SmtpClient(port, source=source, timeout=10)
        self.addCleanup(c.close)
        return c, c.reply()


class TestStages(PolicyCase):

    def test_connections_rule_refuses_before_the_banner(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf=rule("conn", key="client_ip", count="connections",
                                           limit=3, window=3600))
        codes = []
        for _ in range(5):
            c, r = self.banner(gw.port, source="127.0.0.21")
            codes.append(r.code)
            c.close()
        self.assertEqual(codes, [220, 220, 220, 421, 421])
        over = self.ratelimit_events(gw, "conn", "over", 2)
        self.assertEqual(len(over), 2, gw.log_text()[-2000:])
        self.assertEqual((over[0]["before"], over[0]["after"], over[0]["limit"]), ("3", "4", "3"))
        self.assertEqual(over[0]["client_ip"], "127.0.0.21")
        # another client has its own counter
        c, r = self.banner(gw.port, source="127.0.0.22")
        self.assertEqual(r.code, 220)

    def test_connections_rule_with_reject_is_554(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf=rule("conn", key="client_net", count="connections",
                                           limit=1, window=3600, action="reject"))
        # (not 127.0.0.0/24: the harness probes the port from 127.0.0.1)
        c, r = self.banner(gw.port, source="127.0.5.31")
        self.assertEqual(r.code, 220)
        c, r = self.banner(gw.port, source="127.0.5.32")  # same /24
        self.assertEqual(r.code, 554)
        self.assertIn("5.7.1", r.text)

    def test_recipients_rule_at_rcpt(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf=rule("rcpts", key="sender", count="recipients", limit=3,
                                           window=3600))
        c, r = self.banner(gw.port)
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<Many@Rcpt.test>").code, 250)
        codes = [c.cmd("RCPT TO:<r%d@example.test>" % i).code for i in range(5)]
        self.assertEqual(codes, [250, 250, 250, 451, 451])
        t = c.cmd("DATA")
        self.assertEqual(t.code, 354)
        c.send(mt.dot_stuff(mt.make_message(subject="three recipients")))
        self.assertEqual(c.reply().code, 250)
        c.cmd("QUIT")
        # the backend saw three recipients, not five
        mt.wait_until(lambda: fake.accepted, 5, what="delivery")
        self.assertEqual(len(fake.accepted[0][1]), 3, fake.accepted)
        over = self.ratelimit_events(gw, "rcpts", "over", 1)
        self.assertEqual(over[0]["sender"], "many@rcpt.test")  # counted lowercased

    def test_bytes_rule_at_end_of_data_resets_the_backend(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf=rule("bytes", key="client_ip", count="bytes", limit=5000,
                                           window=3600))
        body = b"x" * 70 + b"\r\n"
        msg = mt.make_message(subject="bytes", body=body * 40)  # about 3 KB
        c, r = self.banner(gw.port, source="127.0.0.41")
        c.ehlo()
        t1 = c.transact("a@bytes.test", ["alice@example.test"], msg)
        t2 = c.transact("b@bytes.test", ["alice@example.test"], msg)
        self.assertEqual(t1["final"].code, 250, t1)
        self.assertEqual(t2["final"].code, 451, t2)
        self.assertIn("Rate limit", t2["final"].text)
        c.cmd("QUIT")
        self.assertEqual(len(fake.accepted), 1)
        ev = gw.wait_event(10, event="message", **{"from": "b@bytes.test"})
        self.assertEqual(ev["outcome"], "tempfail", ev)

    def test_reject_action_at_mail_is_550(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf=rule("msgs", key="sender_domain", count="messages",
                                           limit=2, window=3600, action="reject"))
        replies = []
        for i in range(3):
            with mt.SmtpClient(gw.port) as c:
                c.reply()
                c.ehlo()
                replies.append(c.cmd("MAIL FROM:<u%d@Flood.test>" % i))
        self.assertEqual([r.code for r in replies], [250, 250, 550])
        self.assertIn("5.7.0", replies[2].text)


class TestConcurrency(PolicyCase):

    def test_concurrent_sessions_per_ip_and_release_on_close(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"cluster.client_concurrency": "2"})
        a, ra = self.banner(gw.port, source="127.0.0.51")
        b, rb = self.banner(gw.port, source="127.0.0.51")
        c, rc = self.banner(gw.port, source="127.0.0.51")
        self.assertEqual((ra.code, rb.code, rc.code), (220, 220, 421))
        self.assertIn("concurrent", rc.text)
        # another address is counted apart
        d, rd = self.banner(gw.port, source="127.0.0.52")
        self.assertEqual(rd.code, 220)
        # a closed session gives its lease back
        a.cmd("QUIT")
        a.close()

        def third():
            e, re_ = self.banner(gw.port, source="127.0.0.51")
            ok = re_.code == 220
            e.close()
            return ok
        mt.wait_until(third, 5, 0.2, "a lease given back on QUIT")


class TestAutomaticReputation(PolicyCase):

    def test_pregreet_penalties_end_in_a_refusal_at_connect(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"reputation.enabled": "true",
                                       "reputation.penalty_pregreet": "60",
                                       "smtp.greet_delay": "300"})
        for _ in range(2):
            c = mt.SmtpClient(gw.port, source="127.0.0.61", timeout=10)
            c.send(b"EHLO eager.example\r\n")
            r = c.reply()
            self.assertEqual(r.code, 554)  # pregreet
            c.close()

        def refused():
            c = mt.SmtpClient(gw.port, source="127.0.0.61", timeout=10)
            try:
                r = c.reply()
            finally:
                c.close()
            return r.code == 554 and "policy" in r.text
        mt.wait_until(refused, 5, 0.2, "refusal at connect after two pregreets (-120)")
        # the log line may reach us after the client has its reply
        mt.wait_until(lambda: [e for e in gw.events("reject") if e.get("what") == "connect"
                               and "reputation ip:127.0.0.61" in e.get("why", "")],
                      5, what="a reject line naming the reputation of 127.0.0.61")
        # a patient client elsewhere is welcome
        c, r = self.banner(gw.port, source="127.0.0.62")
        self.assertEqual(r.code, 220)

    def test_malware_sender_is_refused_at_mail_afterwards(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"reputation.enabled": "true",
                                       "reputation.penalty_malware": "60"})
        # the test set's body signature (Mxgate.Test.Marker)
        eicar = mt.make_message(subject="malware", body=mt.TEST_MARKER + b"\r\n",
                                sender="bad@evil.test")
        with mt.SmtpClient(gw.port, source="127.0.0.71") as c:
            c.reply()
            c.ehlo()
            t = c.transact("bad@evil.test", ["alice@example.test"], eicar)
            self.assertEqual(t["final"].code, 554, t)

        def refused_at_mail():
            with mt.SmtpClient(gw.port, source="127.0.0.72") as c:
                c.reply()
                c.ehlo()
                r = c.cmd("MAIL FROM:<bad@evil.test>")
                c.cmd("QUIT")
            return r.code == 550 and "5.7.1" in r.text
        mt.wait_until(refused_at_mail, 5, 0.2, "sender refused after a malware penalty")
        # an unrelated sender from a clean address still gets through
        msg = mt.make_message(subject="fine", sender="good@other.test")
        with mt.SmtpClient(gw.port, source="127.0.0.73") as c:
            c.reply()
            c.ehlo()
            t = c.transact("good@other.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250, t)


if __name__ == "__main__":
    unittest.main()
