#!/usr/bin/env python3
"""mxgate's own SMTP server side and process control, end to end.

The backend is a FakeBackend that accepts everything, so every reply checked
here is mxgate's own (RFC 5321 codes), except where a case says otherwise.
Also: --check, /health, SIGTERM drain and SIGHUP reload.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

EHLO_KEYWORDS = ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                 "CHUNKING", "DSN")


class ProtocolCase(mt.IntegrationCase):
    conf = None

    def setUp(self):
        super().setUp()
        self.fake = self.fake()
        self.gw = self.mxgate([self.fake], conf=self.conf)


class TestReplies(ProtocolCase):
    conf = {"smtp.max_recipients": "3", "smtp.max_line_length": "512",
            "smtp.max_bad_commands": "20"}

    def test_banner_names_hostname(self):
        with self.gw.client() as c:
            self.assertEqual(c.banner.code, 220)
            self.assertIn("mxgate.example.test", c.banner.lines[0])

    def test_ehlo_lists_extensions(self):
        with self.gw.client() as c:
            r = c.ehlo()
            self.assertEqual(r.code, 250)
            for k in EHLO_KEYWORDS:
                self.assertIn(k, c.extensions, r.lines)

    def test_reply_table(self):
        # (commands sent first, command, expected code): each on a fresh session
        rows = [
            ([], "FOOBAR baz", 500),                          # unknown command
            ([], "MAIL FROM:bogus", 501),                      # bad MAIL syntax
            ([], "MAIL FROM:<a@client.test> BOGUS=1", 555),    # unknown MAIL parameter
            ([], "RCPT TO:<alice@example.test>", 503),         # RCPT before MAIL
            (["MAIL FROM:<a@client.test>"], "DATA", 503),      # DATA before RCPT
            (["MAIL FROM:<a@client.test>"], "MAIL FROM:<b@client.test>", 503),  # nested MAIL
            (["MAIL FROM:<a@client.test>"], "RCPT TO:alice", 501),  # bad RCPT syntax
            ([], "VRFY alice", 252),
            ([], "HELP", 214),
            ([], "NOOP", 250),
            ([], "RSET", 250),
            ([], "X" * 2000, 500),                             # over-long command line
        ]
        for pre, cmd, want in rows:
            with self.subTest(cmd=cmd[:40]):
                with self.gw.client() as c:
                    c.ehlo()
                    for p in pre:
                        self.assertEqual(c.cmd(p).cls, 2, p)
                    r = c.cmd(cmd)
                    self.assertEqual(r.code, want, "%s -> %r" % (cmd[:60], r))
                    # the session survives every one of these
                    self.assertEqual(c.cmd("NOOP").code, 250)

    def test_too_many_recipients_gets_452(self):
        with self.gw.client() as c:
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<m@client.test>").code, 250)
            for r in ("alice", "bob", "carol"):
                self.assertEqual(c.cmd("RCPT TO:<%s@example.test>" % r).code, 250)
            self.assertEqual(c.cmd("RCPT TO:<dave@example.test>").code, 452)
            # the accepted three still get the message
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(mt.dot_stuff(mt.make_message()))
            self.assertEqual(c.reply().code, 250)
        self.assertEqual(len(self.fake.accepted), 1)
        self.assertEqual(len(self.fake.accepted[0][1]), 3)

    def test_quit_gets_221_and_close(self):
        with self.gw.client() as c:
            c.ehlo()
            self.assertEqual(c.cmd("QUIT").code, 221)
            self.assertTrue(c.closed_by_peer(5))

    def test_nul_in_data_rejected_nothing_relayed(self):
        with self.gw.client() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<nul@client.test>")
            c.cmd("RCPT TO:<alice@example.test>")
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: nul\r\n\r\nbad \x00 byte\r\n.\r\n")
            r = c.reply()
            self.assertEqual(r.cls, 5, r)
            self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertEqual(self.fake.accepted, [])

    def test_logs_one_line_per_message_and_per_disconnect(self):
        with self.gw.client() as c:
            port = str(c.sock.getsockname()[1])
            c.ehlo()
            for i in range(2):
                t = c.transact("log@client.test", ["alice@example.test"], mt.make_message())
                self.assertEqual(t["final"].code, 250)
            c.cmd("QUIT")
        disc = self.gw.wait_event(event="disconnect", port=port)
        time.sleep(0.3)
        self.assertEqual(len([e for e in self.gw.events("disconnect") if e.get("port") == port]), 1)
        sid = disc.get("sid")
        self.assertTrue(sid, disc)
        msgs = [e for e in self.gw.events("message") if e.get("sid") == sid]
        self.assertEqual(len(msgs), 2, msgs)
        for m in msgs:
            self.assertIn("outcome", m)

    def test_received_header_added_once_nothing_else_changed(self):
        msg = mt.make_message(subject="fake exact", body=b"a\r\n..b\r\n")
        with self.gw.client(source="127.0.0.4") as c:
            c.ehlo("hello.example.net")
            t = c.transact("x@client.test", ["alice@example.test"], msg)
            self.assertEqual(t["final"].code, 250)
        got = self.fake.accepted[0][2]
        field, rest = mt.split_header(got)
        m = mt.MXGATE_RECEIVED.match(mt.unfold(field))
        self.assertTrue(m, field)
        self.assertEqual(m.group("ip"), "127.0.0.4")
        self.assertEqual(m.group("helo"), "hello.example.net")
        self.assertEqual(rest, msg)
        # the backend was told who the client is
        xclient = [l for l in self.fake.all_lines() if l.upper().startswith(b"XCLIENT")]
        self.assertTrue(xclient and b"ADDR=127.0.0.4" in xclient[0], self.fake.all_lines())


class TestBareNewlineReject(ProtocolCase):
    conf = {"smtp.bare_newline": "reject"}

    def test_bare_lf_rejected_with_5xx(self):
        for bad in (b"one\ntwo\r\n", b"one\rtwo\r\n", b"x\r\n.\nMAIL FROM:<e@x>\r\n"):
            with self.subTest(bad=bad):
                with self.gw.client() as c:
                    c.ehlo()
                    c.cmd("MAIL FROM:<bl@client.test>")
                    c.cmd("RCPT TO:<alice@example.test>")
                    self.assertEqual(c.cmd("DATA").code, 354)
                    c.send(b"Subject: bare\r\n\r\n" + bad + b".\r\n")
                    r = c.reply()
                    self.assertEqual(r.cls, 5, r)
        self.assertEqual(self.fake.accepted, [])


class TestGreetDelay(ProtocolCase):
    conf = {"smtp.greet_delay": "1500"}

    def test_talking_before_banner_gets_554_and_disconnect(self):
        c = self.gw.client(read_banner=False)
        try:
            c.send("EHLO eager.example.net\r\n")
            r = c.reply()
            self.assertEqual(r.code, 554, r)
            self.assertTrue(c.closed_by_peer(5))
        finally:
            c.close()

    def test_patient_client_gets_banner_after_delay(self):
        t0 = time.monotonic()
        with self.gw.client() as c:
            self.assertEqual(c.banner.code, 220)
            self.assertGreater(time.monotonic() - t0, 1.3)
            self.assertEqual(c.ehlo().code, 250)


class TestBadCommandLimit(ProtocolCase):
    conf = {"smtp.max_bad_commands": "3"}

    def test_too_many_bad_commands_421_and_disconnect(self):
        with self.gw.client() as c:
            c.ehlo()
            replies = []
            for i in range(6):
                try:
                    r = c.cmd("BOGUS%d" % i)
                except (EOFError, ConnectionError):
                    break
                replies.append(r.code)
                if r.code == 421:
                    break
            self.assertIn(421, replies, replies)
            self.assertLessEqual(len(replies), 5, replies)
            self.assertTrue(c.closed_by_peer(5))


class TestConfigCheck(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        self.m = mt.Mxgate(self.tmp, {"backend.servers": "127.0.0.1:%d" % mt.free_port()})

    def test_version(self):
        r = mt.subprocess.run([self.m.binary, "--version"], capture_output=True, text=True,
                              timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"\d+\.\d+")

    def test_good_config_passes(self):
        self.m.write_config()
        r = self.m.check_config()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_bad_value_named_and_nonzero(self):
        rows = [("smtp.max_message_size", "lots"),
                ("smtp.bare_newline", "sometimes"),
                ("backend.forward", "carrier-pigeon"),
                ("smtp.listen", "not-an-address"),
                ("log.level", "chatty")]
        for key, value in rows:
            with self.subTest(key=key):
                conf = dict(self.m.conf)
                conf[key] = value
                path = self.m.write_config(conf, os.path.join(self.tmp, "bad.conf"))
                r = self.m.check_config(path)
                self.assertNotEqual(r.returncode, 0, "%s=%s accepted" % (key, value))
                self.assertIn(key.split(".")[1], r.stdout + r.stderr)

    def test_unknown_key_rejected(self):
        conf = dict(self.m.conf)
        conf["smtp.no_such_option"] = "1"
        path = self.m.write_config(conf, os.path.join(self.tmp, "unknown.conf"))
        r = self.m.check_config(path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no_such_option", r.stdout + r.stderr)


class TestHealth(mt.IntegrationCase):

    def test_health_200_while_serving(self):
        fake = self.fake()
        gw = self.mxgate([fake])
        status, _ = gw.health()
        self.assertEqual(status, 200)

    def test_health_503_when_backend_unreachable(self):
        gw = self.mxgate([mt.free_port()])
        # unreachable may only be noticed by a probe or a failed session
        with gw.client() as c:
            c.ehlo()
            c.cmd("MAIL FROM:<h@client.test>")
        mt.wait_until(lambda: gw.health()[0] == 503, 15, 0.25, "/health 503")


class TestSignals(mt.IntegrationCase):

    def test_sigterm_drains_open_transaction_then_exits_0(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"smtp.drain_timeout": "20"})
        msg = mt.make_message(subject="drain")
        c = gw.client()
        try:
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<d@client.test>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(msg[:40])
            gw.signal(signal.SIGTERM)
            time.sleep(1.0)
            self.assertIsNone(gw.proc.poll(), "exited while a transaction was open")
            # while draining: no new sessions served, /health says 503 if it answers
            try:
                st, _ = gw.health(timeout=2)
                self.assertEqual(st, 503)
            except OSError:
                pass
            c.send(mt.dot_stuff(msg)[40:])
            r = c.reply()
            self.assertEqual(r.code, 250, r)
            try:
                c.cmd("QUIT")
            except (EOFError, ConnectionError):
                pass
        finally:
            c.close()
        rc = gw.proc.wait(25)
        gw.stop()
        self.assertEqual(rc, 0)
        self.assertEqual(len(fake.accepted), 1)

    def test_sighup_reload_changes_banner_for_new_sessions_only(self):
        fake = self.fake()
        gw = self.mxgate([fake])
        old = gw.client()
        try:
            self.assertIn("mxgate.example.test", old.banner.lines[0])
            gw.set(smtp__hostname="reloaded.example.test")
            gw.signal(signal.SIGHUP)

            def banner():
                with gw.client() as c:
                    return "reloaded.example.test" in c.banner.lines[0]
            mt.wait_until(banner, 10, 0.2, "new hostname in the banner")
            # the session that started before the reload keeps its snapshot
            r = old.ehlo()
            self.assertIn("mxgate.example.test", r.lines[0])
            self.assertNotIn("reloaded", r.text)
        finally:
            old.close()
        self.assertIsNone(gw.proc.poll(), "SIGHUP killed the daemon")


if __name__ == "__main__":
    mt.main()
