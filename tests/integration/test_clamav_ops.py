#!/usr/bin/env python3
"""Virus scanning in operation: failing safe when the scanner is in
trouble, signature reloads under load, and archives past the limits
(see clam_case.py for the rules).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clam_case import *  # noqa: E402,F401,F403 - the shared cases, helpers and mt


class TestFailSafe(ClamCase):
    """A scanner that cannot work gives 451 and a 503 health, never a 250."""

    def start(self, tmpdir=None, **conf):
        self.backend = self.fake()
        c = {"clamav.canary_interval": "1"}
        if tmpdir:
            c["clamav.tmpdir"] = tmpdir
        c.update(conf)
        self.gw = self.mxgate([self.backend], conf=c)
        self.tmpdir = self.gw.conf["clamav.tmpdir"]
        return self.gw

    def eicar(self, sender):
        return mime_message([TEXT_PART, attachment(mt.EICAR, name="eicar.com")], "fail safe",
                            sender=sender)

    def assertTempfail(self, reply, what):
        self.assertIsInstance(reply, mt.Reply, "%s: %r" % (what, reply))
        self.assertEqual(reply.code, 451, "%s: %r" % (what, reply))
        self.assertRegex(reply.text, r"^451 4\.7\.0 ", what)

    def assertRecovers(self):
        st, body = self.wait_health(self.gw, 200, 8)
        self.assertIn("scanner=ok", body)
        self.gw.wait_event(event="scanner_healthy")
        sender = "recovered-%d@client.test" % time.monotonic_ns()
        r = send_one(self.gw.port, sender, mt.make_message(subject="recovered", sender=sender))
        self.assertEqual(r.code, 250, r)
        self.assertEqual([a[0] for a in self.backend.accepted],
                         [b"MAIL FROM:<%s>" % sender.encode()])
        # and detection works again
        r = send_one(self.gw.port, "again@client.test", self.eicar("again@client.test"))
        self.assertRejectedAsInfected(self.gw, r, "again@client.test", EICAR_NAME)

    def test_temp_dir_removed_gives_451_and_503_until_restored(self):
        gw = self.start()
        self.assertEqual(gw.health()[0], 200)
        shutil.rmtree(self.tmpdir)
        self.addCleanup(os.makedirs, self.tmpdir, exist_ok=True)
        # at once, before the canary has looked: the scan itself must fail
        r = send_one(gw.port, "early@client.test", self.eicar("early@client.test"))
        self.assertTempfail(r, "EICAR right after the temp dir went")
        st, body = self.wait_health(gw, 503, 5)
        self.assertIn("scanner=failing", body)
        self.assertIn(self.tmpdir, body)
        ev = gw.wait_event(event="scanner_unhealthy")
        self.assertIn(self.tmpdir, ev.get("msg", ""))
        # once unhealthy: refused at DATA, clean or not
        for sender, msg in (("late@client.test", self.eicar("late@client.test")),
                            ("clean@client.test", mt.make_message(sender="clean@client.test"))):
            r = send_one(gw.port, sender, msg)
            self.assertTempfail(r, sender)
        time.sleep(0.3)
        self.assertEqual(data_lines(self.backend), [])
        self.assertEqual(self.backend.accepted, [])
        for ev in gw.events("message"):
            self.assertNotEqual(ev.get("outcome"), "accepted", ev)
        os.makedirs(self.tmpdir)
        self.assertRecovers()

    def test_read_only_temp_dir_gives_451_and_503_until_writable(self):
        mnt = os.path.join(self.tmp, "ro-tmp")
        os.makedirs(mnt)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=1777", "tmpfs", mnt],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here (%s): the read-only case needs one, "
                          "since root writes through chmod" % r.stderr.strip())
        key = mt.reaper.add(cmd=["umount", "-l", mnt])
        self.addCleanup(mt.reaper.remove, key)
        self.addCleanup(subprocess.run, ["umount", "-l", mnt], timeout=20)
        gw = self.start(tmpdir=mnt)
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True, timeout=20)
        r = send_one(gw.port, "ro@client.test", self.eicar("ro@client.test"))
        self.assertTempfail(r, "EICAR with a read-only temp dir")
        st, body = self.wait_health(gw, 503, 5)
        self.assertIn("scanner=failing", body)
        self.assertRegex(body, r"(?i)read-only")
        r = send_one(gw.port, "ro-clean@client.test",
                     mt.make_message(sender="ro-clean@client.test"))
        self.assertTempfail(r, "clean message with a read-only temp dir")
        time.sleep(0.3)
        self.assertEqual(data_lines(self.backend), [])
        subprocess.run(["mount", "-o", "remount,rw", mnt], check=True, timeout=20)
        self.assertRecovers()

    def test_on_error_accept_delivers_tagged_not_scanned(self):
        gw = self.start(**{"clamav.on_error": "accept"})
        shutil.rmtree(self.tmpdir)
        self.addCleanup(os.makedirs, self.tmpdir, exist_ok=True)
        st, body = self.wait_health(gw, 503, 5)
        self.assertIn("scanner=failing", body)
        sender = "unscanned@client.test"
        msg = mt.make_message(subject="unscanned", sender=sender)
        r = send_one(gw.port, sender, msg)
        self.assertEqual(r.code, 250, "on_error=accept with a failing scanner: %r" % r)
        ev = self.message_event(gw, sender)
        self.assertEqual((ev.get("outcome"), ev.get("scan")), ("accepted", "error"), ev)
        self.assertTrue(ev.get("scan_error"), ev)
        self.assertEqual(len(self.backend.accepted), 1)
        body = self.backend.accepted[0][2]
        received, rest = mt.split_header(body)
        self.assertTrue(mt.MXGATE_RECEIVED.match(mt.unfold(received)), received)
        tag, rest = mt.split_header(rest)
        self.assertRegex(mt.unfold(tag),
                         r"^X-Virus-Scanned: NOT SCANNED \(scanner error\), passed by mxgate "
                         r"\(ClamAV [^)]+\) on mxgate\.example\.test$")
        self.assertEqual(rest, msg)
        self.assertEqual(body.count(b"X-Virus-Scanned:"), 1)


class TestReload(ClamCase):
    """Signature changes while mail flows: every reply is 250 or 554."""

    RELOAD_MARKER = b"MXGATE-RELOAD-MARKER-c41e"
    RELOAD_NAME = "Mxgate.Test.Reload"
    THREADS = 4
    PER_THREAD = 1000   # a bound; the load normally stops well before
    PACE = 0.01         # seconds between one client's sessions
    LOAD_LIMIT = 20     # seconds

    def setUp(self):
        super().setUp()
        self.db = mt.make_clamav_db(os.path.join(self.tmp, "db"))
        self.backend = self.fake()
        self.gw = self.mxgate([self.backend], conf={"clamav.database": self.db,
                                                 "clamav.watch_interval": "1",
                                                 "clamav.threads": "2",
                                                 "smtp.workers": "2"})

    def reload_events(self):
        return self.gw.events("clamav_reload")

    def test_new_signature_under_load_then_sighup_then_broken_file(self):
        gw = self.gw
        results = []  # (t_open, t_done, sender, code, text)
        errors = []
        stop = threading.Event()
        lock = threading.Lock()

        deadline = time.monotonic() + self.LOAD_LIMIT

        def client(tid):
            for n in range(self.PER_THREAD):
                if stop.wait(self.PACE) or time.monotonic() > deadline:
                    return
                sender = "load-%d-%d@client.test" % (tid, n)
                msg = mt.make_message(subject="load %d/%d" % (tid, n), sender=sender,
                                      body=b"payload " + self.RELOAD_MARKER + b"\r\n")
                t_open = time.monotonic()
                try:
                    r = send_one(gw.port, sender, msg, timeout=20)
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    with lock:
                        errors.append((sender, repr(e)))
                    return
                with lock:
                    results.append((t_open, time.monotonic(), sender, r.code, r.text))

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(self.THREADS)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            t_write = time.monotonic()
            write_atomically(os.path.join(self.db, "mxgate-reload.ndb"),
                             ndb_line(self.RELOAD_NAME, self.RELOAD_MARKER))
            ev = gw.wait_event(10, event="clamav_reload")
            t_reloaded = time.monotonic()
            self.assertIn("database changed", ev.get("msg", ""))
            # keep the load going a while on the new engine
            mt.wait_until(lambda: len([r for r in results if r[0] > t_reloaded]) >= 12
                          or stop.is_set(), 10, 0.05, "messages after the reload")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads), "a load client hung")
        self.assertEqual(errors, [], "sessions failed during the reload")
        self.assertTrue(results)
        bad = [r for r in results if r[3] not in (250, 554)]
        self.assertEqual(bad, [], "replies other than 250/554 during the reload")
        before = [r for r in results if r[1] < t_write]
        after = [r for r in results if r[0] > t_reloaded]
        self.assertGreater(len(before), 0, "no message finished before the new signature")
        self.assertGreaterEqual(len(after), 12, "too few messages after the reload")
        self.assertEqual([r for r in before if r[3] != 250], [],
                         "rejected before the signature existed")
        by_sender = gw.messages_from([r[2] for r in results])
        for t_open, t_done, sender, code, text in after:
            self.assertEqual(code, 554, "%s opened after the reload got %r" % (sender, text))
            self.assertTrue(text.startswith("554 5.7.1 Message rejected: virus found: "
                                            + self.RELOAD_NAME), text)
        for t_open, t_done, sender, code, text in results:
            ev = by_sender.get(sender)
            self.assertIsNotNone(ev, "no message log line for %s" % sender)
            want = {250: ("accepted", "clean"), 554: ("rejected", "infected")}[code]
            self.assertEqual((ev.get("outcome"), ev.get("scan")), want, ev)
            if code == 554:
                self.assertEqual(ev.get("virus"), self.RELOAD_NAME + ".UNOFFICIAL", ev)
        accepted = sorted(r[2] for r in results if r[3] == 250)
        time.sleep(0.3)
        delivered = sorted(a[0].decode()[len("MAIL FROM:<"):-1] for a in self.backend.accepted)
        self.assertEqual(delivered, accepted, "backend deliveries differ from the 250s")
        self.assertEqual(len(self.reload_events()), 1)

        # SIGHUP alone (the directory is unchanged) builds a new engine
        gw.signal(signal.SIGHUP)
        mt.wait_until(lambda: len(self.reload_events()) >= 2, 10, 0.05, "reload after SIGHUP")
        self.assertIn("reload requested", self.reload_events()[1].get("msg", ""))
        r = send_one(gw.port, "hup@client.test", mt.make_message(
            sender="hup@client.test", body=self.RELOAD_MARKER + b"\r\n"))
        self.assertEqual(r.code, 554, r)

        # a broken signature file: the reload fails, the running engine stays
        write_atomically(os.path.join(self.db, "broken.ndb"),
                         b"Mxgate.Test.Broken:0:*:this-is-not-hex\n")
        failed = gw.wait_event(10, event="clamav_reload_failed")
        self.assertIn("keeping the running engine", failed.get("msg", ""))
        self.assertEqual(len(self.reload_events()), 2)
        st, body = gw.health()
        self.assertEqual(st, 200, body)
        r = send_one(gw.port, "eicar-after@client.test", mime_message(
            [TEXT_PART, attachment(mt.EICAR, name="e.com")], "after",
            sender="eicar-after@client.test"))
        self.assertRejectedAsInfected(gw, r, "eicar-after@client.test", EICAR_NAME)
        r = send_one(gw.port, "reload-after@client.test", mt.make_message(
            sender="reload-after@client.test", body=self.RELOAD_MARKER + b"\r\n"))
        self.assertRejectedAsInfected(gw, r, "reload-after@client.test",
                                      self.RELOAD_NAME + ".UNOFFICIAL")
        n = len(self.backend.accepted)
        r = send_one(gw.port, "clean-after@client.test",
                     mt.make_message(sender="clean-after@client.test"))
        self.assertEqual(r.code, 250, r)
        self.assertEqual(len(self.backend.accepted), n + 1)
        # the failed files are not retried on every poll
        time.sleep(2.5)
        self.assertEqual(len(gw.events("clamav_reload_failed")), 1)


class TestLimits(ClamCase):
    """Archives that expand far beyond the limits: an answer in bounded
    time and memory, and the answer the log records."""

    # 300 MiB of zeros either way; with the default limits (25 MiB per
    # file, 100 MiB per message) the five-member one passes max_scan_size.
    MEMBERS, MIB_EACH = 5, 60
    SINGLE_MIB = 300
    # mxgate holds the message (under 1 MB here) and libclamav inflates
    # each member into a temp file, trimmed to max_file_size: peak RSS grows
    # by about 16 MiB in release and ASan builds alike. 100 MiB is a third
    # of the expanded size, and as much as max_scan_size: held in memory,
    # the expanded data would break it.
    RSS_GROWTH_KIB = 100 * 1024

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.bomb_dir = tempfile.mkdtemp(prefix="mxtest-bomb-")
        cls.bomb = zip_bomb(os.path.join(cls.bomb_dir, "bomb.zip"), cls.MEMBERS, cls.MIB_EACH)
        cls.single = zip_bomb(os.path.join(cls.bomb_dir, "single.zip"), 1, cls.SINGLE_MIB)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.bomb_dir, ignore_errors=True)

    def bomb_message(self, sender, archive):
        return mime_message([TEXT_PART, attachment(archive, ctype="application/zip",
                                                   name="report.zip")], "bomb", sender=sender)

    def send_bomb(self, gw, sender, archive):
        """Send it; returns (reply, seconds), asserting the peak RSS bound."""
        self.assertLess(len(archive), 2 << 20)
        pid = gw.proc.pid
        hwm0 = vm_kib(pid, "VmHWM")
        t0 = time.monotonic()
        r = send_one(gw.port, sender, self.bomb_message(sender, archive), timeout=60)
        elapsed = time.monotonic() - t0
        growth = vm_kib(pid, "VmHWM") - hwm0
        self.assertLess(growth, self.RSS_GROWTH_KIB,
                        "peak RSS grew by %d KiB scanning %s" % (growth, sender))
        self.assertIsInstance(r, mt.Reply)
        return r, elapsed

    def assertLoggedAsReplied(self, gw, sender, r, fake):
        """Whatever the verdict: the log says what the client was told,
        and the backend has the message exactly when the reply was 250."""
        ev = self.message_event(gw, sender)
        self.assertEqual(ev.get("reply"), r.text, ev)
        want = {250: ("accepted", "clean"), 554: ("rejected", "infected")}.get(r.code)
        self.assertIsNotNone(want, "unexpected reply %r" % r)
        self.assertEqual((ev.get("outcome"), ev.get("scan")), want, ev)
        delivered = [a for a in fake.accepted if a[0] == b"MAIL FROM:<%s>" % sender.encode()]
        self.assertEqual(len(delivered), 1 if r.code == 250 else 0)
        return ev

    def test_zip_bomb_is_rejected_quickly_with_bounded_memory(self):
        fake = self.fake()
        gw = self.mxgate([fake])
        max_scan_ms = int(gw.conf.get("clamav.max_scan_time", 15000))
        r, elapsed = self.send_bomb(gw, "bomb@client.test", self.bomb)
        ev = self.message_event(gw, "bomb@client.test")
        self.assertRegex(ev.get("virus", ""), r"^Heuristics\.Limits\.Exceeded\.", ev)
        self.assertRejectedAsInfected(gw, r, "bomb@client.test", ev.get("virus"))
        self.assertLess(elapsed, max_scan_ms / 1000.0 + 5, "reply took %.1fs" % elapsed)
        self.assertEqual(data_lines(fake), [])

    def test_zip_bomb_without_alert_exceeds_max_has_a_logged_outcome(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"clamav.alert_exceeds_max": "false"})
        r, elapsed = self.send_bomb(gw, "bomb2@client.test", self.bomb)
        self.assertLess(elapsed, 15 + 5, "reply took %.1fs" % elapsed)
        # past the limits nothing more is scanned; what was scanned is clean
        self.assertEqual(r.code, 250, r)
        self.assertLoggedAsReplied(gw, "bomb2@client.test", r, fake)

    def test_single_member_zip_bomb_is_rejected_as_trimmed(self):
        # libclamav 1.4 extracts a zip member only up to max_file_size and
        # scans that much without an exceeds-max alert of its own; mxgate's
        # file inspection callback flags an extracted file that reached the
        # limit, so the member is not passed half-scanned.
        fake = self.fake()
        gw = self.mxgate([fake])
        r, elapsed = self.send_bomb(gw, "single@client.test", self.single)
        self.assertLess(elapsed, 15 + 5, "reply took %.1fs" % elapsed)
        ev = self.assertLoggedAsReplied(gw, "single@client.test", r, fake)
        self.assertEqual(r.code, 554, r)
        self.assertEqual(ev.get("virus"), "Heuristics.Limits.Exceeded.MaxFileSize", ev)

    def test_single_member_zip_bomb_without_alert_is_accepted_and_logged(self):
        fake = self.fake()
        gw = self.mxgate([fake], conf={"clamav.alert_exceeds_max": "false"})
        r, elapsed = self.send_bomb(gw, "single2@client.test", self.single)
        self.assertLess(elapsed, 15 + 5, "reply took %.1fs" % elapsed)
        self.assertEqual(r.code, 250, r)
        self.assertLoggedAsReplied(gw, "single2@client.test", r, fake)

    def test_scan_queue_bound_gives_432_and_never_an_unscanned_250(self):
        """clamav.threads=1, max_pending=1: while one message is being
        scanned, another DATA is refused with 451 4.3.2."""
        fake = self.fake()
        gw = self.mxgate([fake], conf={"clamav.threads": "1", "clamav.max_pending": "1",
                                       "smtp.workers": "2"})
        # about 1000 files to extract: a scan of some 200 ms in a release
        # build, far longer than the quick clients need to ask for DATA
        archive = zip_of([("f%03d.txt" % i, b"line %d\n" % i * 20) for i in range(990)])

        def slow(sender):
            return mime_message([TEXT_PART, attachment(archive, ctype="application/zip",
                                                       name="many.zip")], "many", sender=sender)
        outcomes = []  # (sender, stage, reply)
        lock = threading.Lock()

        def run(sender, msg, hold=None):
            """A transaction whose DATA waits for hold (an Event) if given."""
            try:
                with gw.client(timeout=60) as c:
                    c.ehlo()
                    c.cmd("MAIL FROM:<%s>" % sender)
                    c.cmd("RCPT TO:<alice@example.test>")
                    if hold is not None:
                        hold.wait(30)
                    r = c.cmd("DATA")
                    stage = "data"
                    if r.code == 354:
                        c.send(mt.dot_stuff(msg))
                        r = c.reply()
                        stage = "eod"
                with lock:
                    outcomes.append((sender, stage, r))
            except Exception as e:  # noqa: BLE001
                with lock:
                    outcomes.append((sender, "error", repr(e)))

        for attempt in range(5):
            go = threading.Event()
            ts = [threading.Thread(target=run, args=("slow-%d@client.test" % attempt,
                                                     slow("slow-%d@client.test" % attempt)))]
            ts += [threading.Thread(target=run, args=(
                "quick-%d-%d@client.test" % (attempt, i),
                mt.make_message(sender="quick-%d-%d@client.test" % (attempt, i)), go))
                for i in range(3)]
            for t in ts:
                t.start()
            # the quick ones ask for DATA while the slow one is being scanned
            # (if its scan is over before that shows, this attempt proves
            # nothing and the next one tries again)
            try:
                mt.wait_until(lambda: scan_queue(gw) >= 1 or not ts[0].is_alive(), 30, 0.005,
                              "a scan in progress")
            finally:
                go.set()
            for t in ts:
                t.join(60)
            if any(isinstance(o[2], mt.Reply) and o[2].text.startswith("451 4.3.2")
                   for o in outcomes):
                break
        self.assertTrue(all(isinstance(o[2], mt.Reply) for o in outcomes), outcomes)
        busy = [o for o in outcomes if o[2].text.startswith("451 4.3.2")]
        self.assertTrue(busy, "no 451 4.3.2 in %d attempts: %r" % (attempt + 1, outcomes))
        time.sleep(0.3)
        delivered = {a[0].decode()[len("MAIL FROM:<"):-1] for a in fake.accepted}
        events = gw.messages_from([o[0] for o in outcomes if o[2].code == 250])
        for sender, stage, r in outcomes:
            self.assertIn(r.code, (250, 451), (sender, stage, r))
            if r.code == 250:
                self.assertIn(sender, delivered)
                self.assertIn(sender, events, "no message log line for %s" % sender)
                self.assertEqual(events[sender].get("scan"), "clean", events[sender])
            else:
                self.assertNotIn(sender, delivered, (sender, stage, r))
        self.assertEqual(len(fake.accepted), sum(1 for o in outcomes if o[2].code == 250))


if __name__ == "__main__":
    mt.main()
