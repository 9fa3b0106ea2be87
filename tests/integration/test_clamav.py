#!/usr/bin/env python3
"""Virus scanning: what mxgate refuses and what it passes untouched, at
start and with many clients at once (see clam_case.py for the rules).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clam_case import *  # noqa: E402,F401,F403 - the shared cases, helpers and mt


class TestDetection(ClamCase):
    """Each encoding of the test file is found, refused with 554, and the
    backend never gets the message."""

    def setUp(self):
        super().setUp()
        self.backend = self.fake()
        self.gw = self.mxgate([self.backend])

    def test_infected_forms_are_rejected_and_never_reach_the_backend(self):
        for i, (case, build, name) in enumerate(infected_cases()):
            with self.subTest(case=case):
                sender = "infected-%d@client.test" % i
                r = send_one(self.gw.port, sender, build(sender))
                self.assertEqual(data_lines(self.backend), [], "message data went to the backend")
                self.assertRejectedAsInfected(self.gw, r, sender, name)
        time.sleep(0.3)
        self.assertEqual(data_lines(self.backend), [])
        self.assertEqual(self.backend.accepted, [])
        # the backend transactions were reset, not left open
        self.assertIn(b"RSET", self.backend.all_lines())

    def test_eicar_split_across_bdat_chunks_is_rejected(self):
        sender = "bdat@client.test"
        msg = mime_message([TEXT_PART, attachment(mt.EICAR, name="eicar.com")], "bdat",
                           sender=sender)
        enc = b64(mt.EICAR)
        cut = msg.index(enc) + 30  # in the middle of the first base64 line
        self.assertLess(cut, msg.index(b"\r\n", msg.index(enc)))
        first, last = msg[:cut], msg[cut:]
        with self.gw.client() as c:
            c.ehlo()
            self.assertIn("CHUNKING", c.extensions)
            self.assertEqual(c.cmd("MAIL FROM:<%s>" % sender).code, 250)
            self.assertEqual(c.cmd("RCPT TO:<alice@example.test>").code, 250)
            c.send(b"BDAT %d\r\n" % len(first) + first)
            self.assertEqual(c.reply().code, 250)
            c.send(b"BDAT %d LAST\r\n" % len(last) + last)
            r = c.reply()
            # the session goes on after the refusal
            self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertRejectedAsInfected(self.gw, r, sender, EICAR_NAME)
        time.sleep(0.3)
        self.assertEqual(data_lines(self.backend), [])
        self.assertEqual(self.backend.accepted, [])

    def test_same_session_goes_on_after_a_rejection(self):
        with self.gw.client() as c:
            c.ehlo()
            t = c.transact("first@client.test", ["alice@example.test"],
                           infected_cases()[0][1]("first@client.test"))
            self.assertEqual(t["final"].code, 554, t)
            clean = mt.make_message(subject="clean after infected", sender="second@client.test")
            t = c.transact("second@client.test", ["alice@example.test"], clean)
            self.assertEqual(t["final"].code, 250, t)
        self.assertEqual(len(self.backend.accepted), 1)
        mail_from, rcpts, body = self.backend.accepted[0]
        self.assertEqual(mail_from, b"MAIL FROM:<second@client.test>")
        self.assertTrue(body.endswith(clean), "delivered message differs")
        ev = self.message_event(self.gw, "second@client.test")
        self.assertEqual((ev.get("outcome"), ev.get("scan")), ("accepted", "clean"), ev)


class TestCleanMail(ClamCase):
    """Clean messages that resemble the test file pass through a real
    Postfix unchanged; with clamav.add_header the only change is one
    X-Virus-Scanned header after mxgate's Received header."""

    def setUp(self):
        super().setUp()
        mt.require_postfix()
        self.pf = self.postfix()

    def send_all(self, gw, cases, tag):
        sent = {}
        for i, (case, msg, params) in enumerate(cases):
            sender = "%s-%d@client.test" % (tag, i)
            r = send_one(gw.port, sender, msg, mail_params=params)
            self.assertEqual(r.code, 250, "%s: %r" % (case, r))
            ev = self.message_event(gw, sender)
            self.assertEqual((ev.get("outcome"), ev.get("scan")), ("accepted", "clean"), ev)
            self.assertNotIn("virus", ev)
            sent[sender] = (case, msg)
        return sent

    def delivered_by_sender(self, n):
        self.pf.wait_deliveries(n, 30)
        time.sleep(0.5)
        ds = self.pf.deliveries()
        self.assertEqual(len(ds), n, ds)
        return {d.sender: d for d in ds}

    def test_lookalikes_are_delivered_byte_identical(self):
        gw = self.mxgate([self.pf])
        sent = self.send_all(gw, lookalikes(), "lookalike")
        got = self.delivered_by_sender(len(sent))
        for sender, (case, msg) in sent.items():
            with self.subTest(case=case):
                self.assertIn(sender, got)
                self.assertMxgateDelivery(got[sender], msg, POSTFIX)
                self.assertNotIn(b"X-Virus-Scanned", got[sender].data)

    def test_add_header_adds_exactly_one_header_naming_the_engine(self):
        gw = self.mxgate([self.pf], conf={"clamav.add_header": "true"})
        loaded = gw.wait_event(event="clamav_loaded")
        cases = lookalikes()[1:3] + [("plain", mt.make_message(subject="plain"), "")]
        sent = self.send_all(gw, cases, "tagged")
        got = self.delivered_by_sender(len(sent))
        for sender, (case, msg) in sent.items():
            with self.subTest(case=case):
                d = got[sender]
                self.assertEqual(d.data.count(b"X-Virus-Scanned:"), 1, d.data[:600])
                _, rest = d.strip_received(POSTFIX)
                received, rest = mt.split_header(rest)
                self.assertTrue(mt.MXGATE_RECEIVED.match(mt.unfold(received)), received)
                tag, rest = mt.split_header(rest)
                m = VIRUS_HEADER.match(mt.unfold(tag))
                self.assertTrue(m, "third header is not mxgate's X-Virus-Scanned: %r" % tag)
                self.assertRegex(m.group("engine"), ENGINE)
                self.assertIn(m.group("engine"), loaded.get("msg", ""))
                ev = self.message_event(gw, sender)
                self.assertEqual(m.group("engine"), ev.get("engine"))
                self.assertEqual(rest, mt.as_stored(msg), "message changed beyond the header")


class TestStartup(ClamCase):

    def test_no_usable_database_refuses_to_start(self):
        empty = os.path.join(self.tmp, "empty-db")
        os.makedirs(empty)
        gw = self.mxgate([mt.free_port()], conf={"clamav.database": empty}, start=False)
        gw.start(wait=False)
        try:
            rc = gw.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.fail("mxgate kept running without a signature database")
        gw.kill()
        self.assertEqual(rc, 1, gw.log_text())
        self.assertIn("clamav.database", gw.log_text())
        self.assertIn(empty, gw.log_text())
        self.assertFalse(mt.port_open(gw.port))

    def test_scanning_disabled_starts_and_relays_without_a_database(self):
        empty = os.path.join(self.tmp, "empty-db")
        os.makedirs(empty)
        fake = self.fake()
        gw = self.mxgate([fake], conf={"clamav.database": empty, "clamav.enabled": "false"})
        msg = mt.make_message(subject="unscanned by configuration", sender="off@client.test")
        r = send_one(gw.port, "off@client.test", msg)
        self.assertEqual(r.code, 250, r)
        self.assertEqual(len(fake.accepted), 1)
        self.assertTrue(fake.accepted[0][2].endswith(msg))
        self.assertNotIn(b"X-Virus-Scanned", fake.accepted[0][2])
        ev = self.message_event(gw, "off@client.test")
        self.assertNotIn("scan", ev)
        self.assertEqual(gw.events("clamav_loaded"), [])
        st, body = gw.health()
        self.assertEqual(st, 200, body)
        self.assertIn("scanner=off", body)

    def test_check_rejects_a_message_size_beyond_the_scanner_limits(self):
        gw = self.mxgate([mt.free_port()], start=False)
        gw.write_config()
        r = gw.check_config()
        self.assertEqual(r.returncode, 0, "--check with the test DB: %s%s" % (r.stdout, r.stderr))
        for key, conf in (
                ("clamav.max_file_size", {"smtp.max_message_size": "20971520",
                                          "clamav.max_file_size": "10485760"}),
                ("clamav.max_scan_size", {"smtp.max_message_size": "20971520",
                                          "clamav.max_file_size": "104857600",
                                          "clamav.max_scan_size": "10485760"}),
                # exactly the message size is not enough: mxgate's header goes first
                ("clamav.max_file_size", {"smtp.max_message_size": "10485760",
                                          "clamav.max_file_size": "10485760"})):
            with self.subTest(key=key, conf=conf):
                path = os.path.join(gw.dir, "check.conf")
                c = dict(gw.conf)
                c.update(conf)
                gw.write_config(c, path)
                r = gw.check_config(path)
                self.assertNotEqual(r.returncode, 0, "--check passed with %r" % conf)
                self.assertIn(key, r.stdout + r.stderr)
        empty = os.path.join(self.tmp, "empty-db")
        os.makedirs(empty)
        c = dict(gw.conf)
        c["clamav.database"] = empty
        path = gw.write_config(c, os.path.join(gw.dir, "empty.conf"))
        r = gw.check_config(path)
        self.assertNotEqual(r.returncode, 0, "--check passed with an empty database dir")
        self.assertIn("clamav.database", r.stdout + r.stderr)


class TestConcurrency(ClamCase):
    CLIENTS = 20
    PER_CLIENT = 3

    def test_parallel_clients_mixing_clean_and_infected(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"smtp.workers": "2", "clamav.threads": "4"})
        infected = infected_cases()
        results = []
        lock = threading.Lock()

        def client(cid):
            try:
                with gw.client(timeout=60) as c:
                    c.ehlo()
                    for n in range(self.PER_CLIENT):
                        sender = "par-%d-%d@client.test" % (cid, n)
                        if (cid + n) % 2:
                            case, build, name = infected[(cid * self.PER_CLIENT + n)
                                                         % len(infected)]
                            msg = build(sender)
                        else:
                            case, name = "clean", None
                            msg = mime_message([TEXT_PART, attachment(
                                os.urandom(2048 + 97 * cid), name="r.bin")],
                                "clean %d/%d" % (cid, n), sender=sender)
                        t = c.transact(sender, ["alice@example.test"], msg)
                        with lock:
                            results.append((sender, case, name, msg, t["final"]))
                    c.cmd("QUIT")
            except Exception as e:  # noqa: BLE001
                with lock:
                    results.append(("client %d" % cid, "error", None, None, repr(e)))

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(self.CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        self.assertFalse(any(t.is_alive() for t in threads), "a client hung")
        errors = [r for r in results if r[1] == "error" or not isinstance(r[4], mt.Reply)]
        self.assertEqual(errors, [])
        self.assertEqual(len(results), self.CLIENTS * self.PER_CLIENT)
        time.sleep(0.3)
        delivered = {}
        for mail_from, rcpts, body in fake.accepted:
            delivered.setdefault(mail_from.decode()[len("MAIL FROM:<"):-1], []).append(body)
        for sender, case, name, msg, reply in results:
            if name is None:
                self.assertEqual(reply.code, 250, (sender, reply))
                self.assertEqual(len(delivered.get(sender, [])), 1, sender)
                self.assertTrue(delivered[sender][0].endswith(msg), sender)
            else:
                self.assertRejectedAsInfected(gw, reply, sender, name)
                self.assertNotIn(sender, delivered)
        self.assertEqual(len(fake.accepted), sum(1 for r in results if r[2] is None))


if __name__ == "__main__":
    mt.main()
