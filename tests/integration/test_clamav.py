#!/usr/bin/env python3
"""Virus scanning: what mxgate refuses, what it passes untouched, how it
reloads its signatures and how it fails safe.

Every message is scanned in-process with libclamav after the end of its data
and before anything past RCPT is sent to the backend. The signature set is
the generated test set (deploy/clamav/make-test-db.sh): the EICAR test file
by MD5, so only an attachment decoded to exactly those 68 bytes matches, and
an .ndb body signature for a marker string. The rules under test:

  - infected: 554 5.7.1 naming the signature and the session id; the
    backend transaction is reset, so nothing reaches DATA/BDAT there;
  - clean: relayed byte for byte (plus one X-Virus-Scanned header when
    clamav.add_header is on);
  - scanner trouble: 451, never 250 (unless clamav.on_error = accept, which
    delivers the message tagged NOT SCANNED); /health says 503 meanwhile;
  - signature changes are picked up under load without a 4xx or a dropped
    session; a broken signature file keeps the running engine.
"""

import base64
import binascii
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

POSTFIX = "(Postfix)"
EICAR_NAME = "Mxgate.Test.EICAR.UNOFFICIAL"
MARKER_NAME = "Mxgate.Test.Marker.UNOFFICIAL"
REJECTED = re.compile(r"^554 5\.7\.1 Message rejected: virus found: (?P<name>\S+) "
                      r"\[id (?P<trace>(?P<sid>[0-9A-Fa-f]{16})\.\d+)\]$")
ENGINE = re.compile(r"^ClamAV \d+\.\d+\.\d+/local-[0-9a-f]{8}$")
VIRUS_HEADER = re.compile(r"^X-Virus-Scanned: clean by mxgate \((?P<engine>[^)]+)\) "
                          r"on mxgate\.example\.test$")


# ---------------------------------------------------------------- messages

def b64(data):
    """Base64 body lines (76 columns), CRLF line ends."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def qp_every_byte(data):
    """Quoted-printable with every octet as =XX (so only a decoder sees the
    content), soft line breaks keeping lines under 76 columns. It ends in a
    soft line break too: libclamav keeps the line break before the next
    boundary in the decoded part (RFC 2046 gives it to the boundary), and
    the test signature is an MD5 of exactly the 68 bytes."""
    enc = "".join("=%02X" % b for b in data)
    lines = [enc[i:i + 72] for i in range(0, len(enc), 72)]
    return ("=\r\n".join(lines) + "=\r\n").encode()


def uuencode(data, name):
    out = b"begin 644 " + name + b"\r\n"
    for i in range(0, len(data), 45):
        out += binascii.b2a_uu(data[i:i + 45], backtick=True).replace(b"\n", b"\r\n")
    return out + b"`\r\nend\r\n"


def zip_of(files):
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(name, data)
    return bio.getvalue()


def attachment(data, ctype="application/octet-stream", name="file.bin", cte="base64"):
    """One MIME part: (header lines, encoded body)."""
    hdrs = ['Content-Type: %s; name="%s"' % (ctype, name),
            'Content-Disposition: attachment; filename="%s"' % name,
            "Content-Transfer-Encoding: %s" % cte]
    body = {"base64": b64, "quoted-printable": qp_every_byte}[cte](data)
    return hdrs, body


TEXT_PART = (["Content-Type: text/plain; charset=us-ascii"], b"See the attached file.\r\n")


def mime_message(parts, subject, boundary="mxgate-test-boundary", sender="sender@client.test"):
    """A multipart/mixed message (CRLF, not dot-stuffed)."""
    body = b"This is a multi-part message in MIME format.\r\n"
    for hdrs, payload in parts:
        body += b"--" + boundary.encode() + b"\r\n"
        body += b"".join(h.encode() + b"\r\n" for h in hdrs) + b"\r\n" + payload
        if not payload.endswith(b"\r\n"):
            body += b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    return mt.make_message(subject=subject, body=body, sender=sender, extra_headers=[
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="%s"' % boundary])


def infected_cases():
    """(case, build(sender) -> message, signature name) for every way the
    test file is sent."""
    def inner():
        return mime_message([TEXT_PART, attachment(mt.EICAR, name="inner.com")],
                            "inner message", boundary="inner-boundary", sender="inner@client.test")
    return [
        ("base64 attachment",
         lambda s: mime_message([TEXT_PART, attachment(mt.EICAR, name="eicar.com")], "b64",
                                sender=s),
         EICAR_NAME),
        ("quoted-printable attachment",
         lambda s: mime_message([TEXT_PART, attachment(mt.EICAR, name="eicar.txt",
                                                       ctype="text/plain",
                                                       cte="quoted-printable")], "qp", sender=s),
         EICAR_NAME),
        ("uuencoded in the body",
         lambda s: mt.make_message(subject="uu", sender=s,
                                   body=b"The file, as my old mailer sends it:\r\n\r\n"
                                        + uuencode(mt.EICAR, b"eicar.com") + b"\r\nbye\r\n"),
         EICAR_NAME),
        ("inside a zip",
         lambda s: mime_message([TEXT_PART, attachment(
             zip_of([("readme.txt", b"nothing here\n"), ("docs/eicar.com", mt.EICAR)]),
             ctype="application/zip", name="files.zip")], "zip", sender=s),
         EICAR_NAME),
        ("nested message/rfc822",
         lambda s: mime_message([TEXT_PART, (
             ["Content-Type: message/rfc822",
              'Content-Disposition: attachment; filename="fwd.eml"'],
             inner())], "forwarded", sender=s),
         EICAR_NAME),
        ("misleading type and name",
         lambda s: mime_message([TEXT_PART, attachment(mt.EICAR, ctype="image/jpeg",
                                                       name="holiday.jpg")],
                                "holiday pictures", sender=s),
         EICAR_NAME),
        ("ndb marker in a plain body",
         lambda s: mt.make_message(subject="marker", sender=s,
                                   body=b"Plain text, and somewhere in it " + mt.TEST_MARKER
                                        + b" the marker.\r\n"),
         MARKER_NAME),
    ]


def data_lines(fake):
    """Command lines that would have carried message data to the backend."""
    return [l for l in fake.all_lines() if l.split(b" ", 1)[0].upper() in (b"DATA", b"BDAT")]


def send_one(port, sender, msg, rcpt="alice@example.test", timeout=30, mail_params=""):
    """One session, one transaction: the final reply (or the failing one)."""
    with mt.SmtpClient(port, timeout=timeout) as c:
        banner = c.reply()
        if banner.code != 220:
            return banner
        c.ehlo()
        t = c.transact(sender, [rcpt], msg, mail_params=mail_params)
        r = t["final"] or t["data"] or (t["rcpt"][-1] if t["rcpt"] else t["mail"])
        try:
            c.cmd("QUIT")
        except (OSError, EOFError, mt.SmtpError):
            pass
        return r


def vm_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("%s not in /proc/%d/status" % (key, pid))


def scan_queue(gw):
    """mxgate_scan_queue from /metrics: scans queued or running."""
    import http.client
    c = http.client.HTTPConnection(mt.HOST, gw.admin_port, timeout=5)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode("utf-8", "replace")
    finally:
        c.close()
    m = re.search(r"^mxgate_scan_queue (\d+)$", text, re.M)
    if not m:
        raise AssertionError("no mxgate_scan_queue in /metrics:\n" + text)
    return int(m.group(1))


def write_atomically(path, data):
    """Write a file next to path (a name mxgate does not load) and rename
    it into place, as freshclam does."""
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def ndb_line(name, marker):
    return ("%s:0:*:%s\n" % (name, binascii.hexlify(marker).decode())).encode()


class ClamCase(mt.IntegrationCase):

    def message_event(self, gw, sender, timeout=10):
        """The event=message line of the transaction from sender."""
        return gw.wait_event(timeout, event="message", **{"from": sender})

    def assertRejectedAsInfected(self, gw, reply, sender, name):
        """554 to the client, naming the signature and this session, and a
        log line saying why."""
        ev = self.message_event(gw, sender)
        self.assertEqual(ev.get("outcome"), "rejected", ev)
        self.assertEqual(ev.get("scan"), "infected", ev)
        self.assertEqual(ev.get("virus"), name, ev)
        self.assertRegex(ev.get("engine", ""), ENGINE)
        self.assertIsInstance(reply, mt.Reply, reply)
        self.assertEqual(reply.code, 554, reply)
        m = REJECTED.match(reply.text)
        self.assertTrue(m, "reply does not name the signature and the session: %r "
                           "(logged reply: %r)" % (reply.text, ev.get("reply")))
        self.assertEqual(m.group("name"), name)
        self.assertEqual(m.group("sid"), ev.get("sid"))
        self.assertEqual(m.group("trace"), ev.get("trace"))
        self.assertEqual(reply.text, ev.get("reply"), "client reply differs from the logged one")
        return ev

    def wait_health(self, gw, status, timeout):
        last = []

        def check():
            try:
                st, body = gw.health(timeout=2)
            except OSError as e:
                last[:] = ["%s" % e]
                return None
            last[:] = [st, body]
            return (st, body) if st == status else None
        try:
            return mt.wait_until(check, timeout, 0.1, "/health %d" % status)
        except TimeoutError:
            raise AssertionError("/health not %d within %ss; last answer %r"
                                 % (status, timeout, last))


# ---------------------------------------------------------------- detection

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


# ---------------------------------------------------------------- clean mail

def lookalikes():
    rnd = random.Random(20240611)
    not_eicar = mt.EICAR[:-1] + b"-"  # one byte changed: another MD5
    utf8 = ("Grüße aus Köln! Ελληνικά, русский, 日本語, emoji ✓ 🙂\r\n"
            "Zeile zwei mit Umlauten: äöü ÄÖÜ ß\r\n").encode("utf-8")
    return [
        ("talks about EICAR",
         mt.make_message(subject="About the EICAR test file", body=(
             b"The EICAR test file is a 68 byte string that every scanner detects.\r\n"
             b"It starts with X5O!P%@AP and contains EICAR-STANDARD-ANTIVIRUS-TEST-FILE,\r\n"
             b"but this message only describes it.\r\n")), ""),
        ("EICAR with one byte changed",
         mime_message([TEXT_PART, attachment(not_eicar, name="eicar.com")], "almost"), ""),
        ("zip of harmless files",
         mime_message([TEXT_PART, attachment(zip_of([("a.txt", b"hello\n" * 100),
                                                     ("b/c.csv", b"1,2,3\n" * 50)]),
                                             ctype="application/zip", name="docs.zip")],
                      "harmless zip"), ""),
        ("random binary attachment",
         mime_message([TEXT_PART, attachment(rnd.randbytes(48 * 1024), name="data.bin")],
                      "random bytes"), ""),
        ("8bit UTF-8 body",
         mt.make_message(subject="utf-8", body=utf8, extra_headers=[
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
             "Content-Transfer-Encoding: 8bit"]), " BODY=8BITMIME"),
    ]


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


# ---------------------------------------------------------------- fail safe

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


# ---------------------------------------------------------------- reload

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


# ---------------------------------------------------------------- limits

def zip_bomb(path, members, mib_each):
    """A zip of members files of mib_each MiB of zeros, written in chunks
    (never the whole file in memory); about 1 KB per MiB."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(members):
            # not force_zip64: libclamav 1.4 skips zip64 members unscanned
            with z.open("zeros-%d.bin" % i, "w") as f:
                for _ in range(mib_each):
                    f.write(chunk)
    with open(path, "rb") as f:
        return f.read()


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


# ---------------------------------------------------------------- start and check

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


# ---------------------------------------------------------------- concurrency

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
