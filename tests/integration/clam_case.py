"""Shared by the virus scanning tests (test_clamav.py, test_clamav_ops.py):
the generated signature set, message builders and ClamCase.

Virus scanning: what mxgate refuses, what it passes untouched, how it
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
    text = mt.scrape_metrics(gw)
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


# ---------------------------------------------------------------- fail safe


# ---------------------------------------------------------------- reload


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


# ---------------------------------------------------------------- start and check


# ---------------------------------------------------------------- concurrency
