#!/usr/bin/env python3
"""mxgatectl against the stores it manages.

    mxgatectl --> memcached x 2 (private, started here), with the cluster key
    mxgatectl --> mxgate (embedded store) at admin.listen --> its store

What is checked:

  - rep set/get/add/del/block/allow round trips through memcached: the
    record's fields as printed, the normalised value, and the record as
    stored (under the HMAC of its logical key, signed with the cluster key);
  - errors from the command line name what is wrong (unknown kind, bad IP,
    missing score, ...) and exit 2; an unreachable memcached exits 1;
  - a text feed with bad lines: each one reported as "line N: what" on
    stderr, the good ones applied in order, a summary, exit 1;
  - an incremental feed on a pipe is applied before the pipe closes;
  - a protobuf feed (length-delimited FeedUpdate messages encoded here by
    hand): good, bad version, oversized, unknown kind, missing score and a
    truncated last entry, reported as "entry N: what";
  - limits KEY: the counters a node has counted, for an IP address and a
    sender, "allowed again in N s" over the limit and "allowed now" under;
  - a node on the embedded store: rep, feed (text and protobuf) and limits
    through admin.listen; a change reaches the node's decisions; the /v1
    endpoints' own errors (411, 413, 400, 404, 405); /health and /metrics
    as before; a node on memcached refuses /v1/feed (409).
"""

import hashlib
import hmac
import http.client
import os
import re
import secrets
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

SUMMARY = re.compile(r"^applied (\d+), bad (\d+), in \d+ ms \(\d+/s\)$")


# ---------------------------------------------------------------- helpers

def feed_update(version=1, kind=1, value="192.0.2.1", op=1, score=None, ttl=None, reason=None):
    """proto/mxgate.proto FeedUpdate, encoded by hand.
    kind: IP 1, NET 2, DOMAIN 3, SENDER 4; op: SET 1, ADD 2, DEL 3, BLOCK 4, ALLOW 5."""
    out = b"\x08" + mt.varint(version) + b"\x10" + mt.varint(kind)
    v = value.encode()
    out += b"\x1a" + mt.varint(len(v)) + v
    out += b"\x20" + mt.varint(op)
    if score is not None:
        out += b"\x28" + mt.varint(((score << 1) ^ (score >> 31)) & 0xFFFFFFFF)  # zigzag
    if ttl is not None:
        out += b"\x30" + mt.varint(ttl)
    if reason is not None:
        r = reason.encode()
        out += b"\x3a" + mt.varint(len(r)) + r
    return out


def entry(msg):
    return mt.varint(len(msg)) + msg


def record(text):
    """mxgatectl's record output as {field: value}."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


def admin_request(port, method, target, body=None, headers=None, timeout=10):
    """(status, body text) of one request to admin.listen."""
    c = http.client.HTTPConnection(mt.HOST, port, timeout=timeout)
    try:
        c.request(method, target, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def admin_raw(port, data, timeout=10):
    """Send raw bytes to admin.listen; (status, body text) of the reply."""
    with socket.create_connection((mt.HOST, port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


def connect_code(node, source, timeout=5):
    """The code of the first reply a connection from source gets."""
    return mt.first_reply(node.port, source, timeout).code


class CtlCase(mt.IntegrationCase):

    def ctl(self, config, *args, stdin=None, want=None, timeout=120):
        """Run mxgatectl -c config ARGS; check the exit code when want is set."""
        p = subprocess.run([mt.mxgatectl_binary(), "-c", config] + list(args), input=stdin,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        p.out = p.stdout.decode("utf-8", "replace")
        p.err = p.stderr.decode("utf-8", "replace")
        if want is not None:
            self.assertEqual(p.returncode, want, "mxgatectl %s: exit %d\n%s%s"
                             % (" ".join(map(str, args)), p.returncode, p.out, p.err))
        return p

    def rep(self, config, kind, value):
        return record(self.ctl(config, "rep", "get", kind, value, want=0).out)

    def assertSummary(self, p, applied, bad):
        last = p.out.strip().splitlines()[-1] if p.out.strip() else ""
        m = SUMMARY.match(last)
        self.assertTrue(m, "no summary line in %r" % p.out)
        self.assertEqual((int(m.group(1)), int(m.group(2))), (applied, bad), p.out + p.err)

    def wait_code(self, node, source, want, within=4.0):
        """A connection from source gets want (a code, or a class digit as
        str) within `within` s; the node polls the feed generation each
        second and drops its cache when it moves."""
        deadline = time.monotonic() + within
        while True:
            code = connect_code(node, source)
            ok = str(code)[0] == want if isinstance(want, str) else code == want
            if ok:
                return code
            if time.monotonic() > deadline:
                self.fail("%s still gets %d, not %s, %.1f s after the change"
                          % (source, code, want, within))
            time.sleep(0.2)


# ---------------------------------------------------------------- memcached

RULES = {
    "ratelimit:per_ip.key": "client_ip",
    "ratelimit:per_ip.count": "connections",
    "ratelimit:per_ip.limit": "2",
    "ratelimit:per_ip.window": "3600",
    "ratelimit:per_sender.key": "sender",
    "ratelimit:per_sender.count": "messages",
    "ratelimit:per_sender.limit": "5",
    "ratelimit:per_sender.window": "3600",
    "ratelimit:per_sender.algorithm": "sliding",
    "ratelimit:per_domain.key": "sender_domain",
    "ratelimit:per_domain.count": "messages",
    "ratelimit:per_domain.limit": "100",
    "ratelimit:per_domain.window": "3600",
}


class MemcachedCase(CtlCase):

    def setUp(self):
        super().setUp()
        self.mcs = []
        for _ in range(2):
            m = mt.Memcached().start()
            self.addCleanup(m.stop)
            self.mcs.append(m)
        self.key = secrets.token_hex(32).encode()
        self.key_file = os.path.join(self.tmp, "cluster.key")
        with open(self.key_file, "wb") as f:
            f.write(self.key + b"\n")
        self.cluster = {
            "cluster.memcached": ";".join("%s:%d" % (mt.HOST, m.port) for m in self.mcs),
            "cluster.key_file": self.key_file,
        }
        self.conf = self.write_conf(self.cluster)

    def write_conf(self, conf, name="ctl.conf"):
        sections = {}
        for k, v in conf.items():
            sec, _, key = k.partition(".")
            sections.setdefault(sec, []).append("%s = %s" % (key, v))
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            for sec, lines in sections.items():
                f.write("[%s]\n%s\n\n" % (sec, "\n".join(lines)))
        return path

    def stored(self, logical):
        """The record under logical key as memcached holds it: (memcached
        key, bytes), checked against the cluster key (store_memcached.c:
        the key is "mx1:" + hex of HMAC(key, "key\\0" + logical)[:16]; the
        value 0x01 | HMAC(key, "rec\\0" + mckey + "\\0" + record) | record)."""
        mac = hmac.new(self.key, b"key\0" + logical.encode(), hashlib.sha256).digest()
        mckey = "mx1:" + mac[:16].hex()
        found = [v for v in (m.get(mckey) for m in self.mcs) if v is not None]
        self.assertEqual(len(found), 1, "%s (%s) on %d servers" % (logical, mckey, len(found)))
        v = found[0]
        self.assertEqual(v[:1], b"\x01")
        want = hmac.new(self.key, b"rec\0" + mckey.encode() + b"\0" + v[33:],
                        hashlib.sha256).digest()
        self.assertEqual(v[1:33], want, "record not signed with the cluster key")
        return v[33:]


class TestRep(MemcachedCase):

    def test_round_trips(self):
        c = self.conf
        r = self.rep(c, "ip", "192.0.2.1")
        self.assertEqual((r["record"], r["found"], r["score"]), ("rep:ip:192.0.2.1", "no", "0"))

        p = self.ctl(c, "rep", "set", "ip", "192.0.2.1", "-50", "--ttl", "3600",
                     "--reason", "spam run", want=0)
        r = record(p.out)
        self.assertEqual((r["found"], r["score"], r["total"], r["block"], r["allow"]),
                         ("yes", "-50", "-50", "no", "no"))
        self.assertEqual((r["source"], r["reason"]), ("mxgatectl", "spam run"))
        self.assertRegex(r["expires"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in 3[56]\d\d s\)$")
        self.assertRegex(r["updated"], r"\(\d s ago\)$")
        body = self.stored("rep:ip:192.0.2.1")
        self.assertIn(b"spam run", body)
        self.assertIn(b"mxgatectl", body)

        r = record(self.ctl(c, "rep", "add", "ip", "192.0.2.1", "-20", want=0).out)
        self.assertEqual((r["score"], r["block"], r["reason"], r["expires"]),
                         ("-70", "no", "spam run", "never"))
        self.assertEqual(self.rep(c, "ip", "192.0.2.1")["score"], "-70")

        r = record(self.ctl(c, "rep", "set", "ip", "192.0.2.1", "5", "--block", want=0).out)
        self.assertEqual((r["score"], r["block"], r["allow"]), ("5", "yes", "no"))
        r = record(self.ctl(c, "rep", "add", "ip", "192.0.2.1", "1", want=0).out)
        self.assertEqual((r["score"], r["block"]), ("6", "yes"))
        r = record(self.ctl(c, "rep", "allow", "ip", "192.0.2.1", want=0).out)
        self.assertEqual((r["score"], r["block"], r["allow"]), ("6", "no", "yes"))
        r = record(self.ctl(c, "rep", "block", "ip", "192.0.2.1", "--reason", "again",
                            want=0).out)
        self.assertEqual((r["score"], r["block"], r["allow"], r["reason"]),
                         ("6", "yes", "no", "again"))

        # values are normalised: the network of an address, lowercase senders
        r = record(self.ctl(c, "rep", "set", "net", "192.0.2.77/24", "-5", want=0).out)
        self.assertEqual(r["record"], "rep:net:192.0.2.0/24")
        self.stored("rep:net:192.0.2.0/24")
        self.ctl(c, "rep", "set", "sender", "Bulk@Example.COM", "-9", want=0)
        self.assertEqual(self.rep(c, "sender", "bulk@EXAMPLE.com")["score"], "-9")
        self.ctl(c, "rep", "set", "ip", "2001:DB8::0:1", "3", want=0)
        self.assertEqual(self.rep(c, "ip", "2001:db8::1")["score"], "3")

        r = record(self.ctl(c, "rep", "del", "ip", "192.0.2.1", want=0).out)
        self.assertEqual(r["found"], "no")
        self.assertEqual(self.rep(c, "ip", "192.0.2.1")["found"], "no")

    def test_command_line_errors(self):
        c = self.conf
        rows = [
            (["rep", "set", "ipx", "1.2.3.4", "5"],
             'kind: "ipx" is not one of ip, net, domain, sender'),
            (["rep", "set", "ip", "1.2.3.400", "5"], 'value: "1.2.3.400" is not an IP address'),
            (["rep", "set", "net", "10.0.0.0/8", "5"], "IPv4 networks are /16 or /24"),
            (["rep", "set", "sender", "nobody", "5"], "is not a sender address"),
            (["rep", "set", "ip", "1.2.3.4"], "SCORE missing"),
            (["rep", "add", "ip", "1.2.3.4", "ten"], 'score: "ten" is not an integer'),
            (["rep", "set", "ip", "1.2.3.4", "2000000"],
             "score: 2000000 is out of range (-1000000 to 1000000)"),
            (["rep", "set", "ip", "1.2.3.4", "5", "--ttl", "1h"],
             'ttl: "1h" is not a number of seconds'),
            (["rep", "set", "ip", "1.2.3.4", "5", "--block", "--allow"],
             "--block and --allow exclude each other"),
            (["rep", "del", "ip", "1.2.3.4", "--ttl", "5"], "ttl: del takes none"),
            (["rep", "del", "ip", "1.2.3.4", "5"], 'unexpected "5"'),
            (["rep", "block", "ip", "1.2.3.4", "--allow"], "only set and add take it"),
            (["rep", "frob", "ip", "1.2.3.4"], "rep frob: not one of get, set, add, del"),
            (["rep", "get", "ip"], "VALUE missing"),
            (["rep"], "rep: which?"),
            (["frob"], 'unknown command "frob"'),
            ([], "a command is needed"),
            (["rep", "get", "ip", "1.2.3.4", "--bogus"], "unknown option --bogus"),
            (["limits"], "KEY missing"),
            (["feed", "--format", "xml"], '--format: "xml" is neither text nor protobuf'),
            (["feed", "--threads", "0"], '--threads: "0" is not a number from 1 to 64'),
            (["feed", "/nonexistent/feed.txt"], "/nonexistent/feed.txt: No such file"),
        ]
        for args, want in rows:
            with self.subTest(args=args):
                p = self.ctl(c, *args)
                self.assertEqual(p.returncode, 2, p.out + p.err)
                self.assertIn(want, p.err)
                self.assertTrue(p.err.startswith("mxgatectl: "), p.err)
        self.assertIn("usage: mxgatectl", self.ctl(c, "--help", want=0).out)

        # nothing listens there: a store error, exit 1, quickly
        dead = self.write_conf({"cluster.memcached": "%s:%d" % (mt.HOST, mt.free_port()),
                                "cluster.key_file": self.key_file}, "dead.conf")
        t0 = time.monotonic()
        p = self.ctl(dead, "rep", "set", "ip", "1.2.3.4", "5")
        self.assertEqual(p.returncode, 1, p.out + p.err)
        self.assertIn("store error", p.err)
        self.assertIn("nothing changed", p.err)
        self.assertLess(time.monotonic() - t0, 15)
        p = self.ctl(dead, "feed", "-", stdin=b"ip 1.2.3.4 block\nip 1.2.3.5 block\n")
        self.assertEqual(p.returncode, 1, p.out + p.err)
        self.assertIn("line 1: store error", p.err)
        self.assertIn("line 2: store error", p.err)
        self.assertSummary(p, 0, 2)

        # a key file that is not there
        nokey = self.write_conf({"cluster.memcached": self.cluster["cluster.memcached"],
                                 "cluster.key_file": os.path.join(self.tmp, "missing.key")},
                                "nokey.conf")
        p = self.ctl(nokey, "rep", "get", "ip", "1.2.3.4")
        self.assertEqual(p.returncode, 2, p.out + p.err)
        self.assertIn("cluster.key_file", p.err)


class TestFeed(MemcachedCase):

    def test_text_feed_with_bad_lines(self):
        c = self.conf
        lines = [
            "# test feed",                          # 1
            "ip 192.0.2.10 set -30",                # 2
            "ip 192.0.2.11 set -40 600",            # 3
            "ipx 192.0.2.12 set 5",                 # 4
            "",                                     # 5
            "ip 192.0.2.13 sett 5",                 # 6
            "net 192.0.2.0/24 add -7",              # 7
            "ip 192.0.2.400 block",                 # 8
            "domain Spam.Example block 3600",       # 9
            "sender someone@example.org allow",     # 10
            "ip 192.0.2.14 set",                    # 11
            "ip 192.0.2.10 add -5",                 # 12
            "ip 192.0.2.15 set 5000000",            # 13
            "ip 192.0.2.16 set 1 2 3",              # 14
        ]
        path = os.path.join(self.tmp, "feed.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        p = self.ctl(c, "feed", path, want=1)
        self.assertEqual(p.err.splitlines(), [
            'line 4: kind: "ipx" is not one of ip, net, domain, sender '
            '(expected KIND VALUE OP [SCORE] [TTL])',
            'line 6: op: "sett" is not one of set, add, del, block, allow',
            'line 8: value: "192.0.2.400" is not an IP address',
            "line 11: score: missing (set needs a SCORE from -1000000 to 1000000)",
            "line 13: score: 5000000 is out of range (-1000000 to 1000000)",
            'line 14: unexpected "3" at column 23 (expected KIND VALUE set SCORE [TTL])',
        ])
        self.assertSummary(p, 6, 6)

        r = self.rep(c, "ip", "192.0.2.10")  # set, then add: in feed order
        self.assertEqual((r["score"], r["source"], r["expires"]), ("-35", "feed:feed.txt", "never"))
        r = self.rep(c, "ip", "192.0.2.11")
        self.assertEqual(r["score"], "-40")
        self.assertRegex(r["expires"], r"\(in (600|5\d\d) s\)$")
        self.assertEqual(self.rep(c, "net", "192.0.2.0/24")["score"], "-7")
        self.assertEqual(self.rep(c, "domain", "spam.example")["block"], "yes")
        self.assertEqual(self.rep(c, "sender", "someone@example.org")["allow"], "yes")
        for ip in ("192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.15", "192.0.2.16"):
            self.assertEqual(self.rep(c, "ip", ip)["found"], "no", ip)

        # from stdin, all good: exit 0
        p = self.ctl(c, "feed", "-", stdin=b"ip 192.0.2.20 block\r\nip 192.0.2.21 del", want=0)
        self.assertEqual(p.err, "")
        self.assertSummary(p, 2, 0)
        r = self.rep(c, "ip", "192.0.2.20")
        self.assertEqual((r["block"], r["source"]), ("yes", "feed:stdin"))

    def test_many_lines_over_threads(self):
        c = self.conf
        n = 20000
        text = "".join("ip 10.%d.%d.%d set %d\n" % (i >> 16, (i >> 8) & 255, i & 255, i % 1000 - 500)
                       for i in range(n))
        # the same record over and over, in several batches: the last wins
        text += "".join("ip 10.9.9.9 set %d\n" % i for i in range(1, 301))
        p = self.ctl(c, "feed", "--threads", "4", "-", stdin=text.encode(), want=0)
        self.assertSummary(p, n + 300, 0)
        for i in (0, 1, 4999, 12345, n - 1):
            ip = "10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255)
            self.assertEqual(self.rep(c, "ip", ip)["score"], str(i % 1000 - 500), ip)
        self.assertEqual(self.rep(c, "ip", "10.9.9.9")["score"], "300")

    def test_incremental_feed_on_a_pipe(self):
        c = self.conf
        p = subprocess.Popen([mt.mxgatectl_binary(), "-c", c, "feed", "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        key = mt.reaper.add(pid=p.pid)
        try:
            p.stdin.write(b"ip 192.0.2.30 block\nip 192.0.2.31 sett 1\n")
            p.stdin.flush()
            # applied while the pipe is still open
            mt.wait_until(lambda: self.rep(c, "ip", "192.0.2.30")["block"] == "yes", 5, 0.1,
                          "the first line of an open feed applied")
            p.stdin.write(b"ip 192.0.2.30 allow\n")
            p.stdin.flush()
            mt.wait_until(lambda: self.rep(c, "ip", "192.0.2.30")["allow"] == "yes", 5, 0.1,
                          "a later line of an open feed applied")
            out, err = p.communicate(timeout=30)  # closes the pipe: the end of the feed
        finally:
            mt.reaper.remove(key)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(err.decode().splitlines(),
                         ['line 2: op: "sett" is not one of set, add, del, block, allow'])
        self.assertRegex(out.decode().strip(), r"^applied 2, bad 1, ")

    def test_protobuf_feed(self):
        c = self.conf
        self.ctl(c, "rep", "set", "sender", "gone@example.org", "-5", want=0)
        stream = b"".join([
            entry(feed_update(score=-40, ttl=600, reason="trap hits")),            # 1
            entry(feed_update(version=2, score=1)),                                # 2
            mt.varint(5000) + b"\x08" * 5000,                                         # 3
            entry(feed_update(kind=3, value="Spam.Example", op=4)),               # 4
            entry(feed_update(kind=9, score=1)),                                   # 5
            entry(feed_update(kind=2, value="198.51.100.0/24", op=1)),             # 6
            entry(feed_update(kind=4, value="Gone@Example.org", op=3)),           # 7
            mt.varint(40) + b"\x08\x01\x10",                                          # 8
        ])
        path = os.path.join(self.tmp, "feed.pb")
        with open(path, "wb") as f:
            f.write(stream)
        p = self.ctl(c, "feed", "--format", "protobuf", path, want=1)
        self.assertEqual(p.err.splitlines(), [
            "entry 2: version 2 is not supported (expected 1)",
            "entry 3: 5000 bytes, more than 4096; skipped",
            "entry 5: kind 9 is not IP (1), NET (2), DOMAIN (3) or SENDER (4)",
            "entry 6: score: missing (SET needs a score from -1000000 to 1000000)",
            "entry 8: truncated: 40 bytes announced, 3 present",
        ])
        self.assertSummary(p, 3, 5)
        r = self.rep(c, "ip", "192.0.2.1")
        self.assertEqual((r["score"], r["reason"], r["source"]), ("-40", "trap hits", "feed:feed.pb"))
        self.assertEqual(self.rep(c, "domain", "spam.example")["block"], "yes")
        self.assertEqual(self.rep(c, "sender", "gone@example.org")["found"], "no")


class TestLimits(MemcachedCase):

    def test_limits_of_what_a_node_counted(self):
        fake = self.fake()
        conf = dict(self.cluster)
        conf.update(RULES)
        node = self.mxgate([fake], conf=conf)
        codes = [connect_code(node, "127.0.0.2") for _ in range(3)]
        self.assertEqual(codes[:2], [220, 220])
        self.assertNotEqual(codes[2], 220)
        with node.client(source="127.0.0.3") as cl:
            cl.ehlo()
            r = cl.transact("Bulk@Client.Test", ["alice@example.test"], mt.make_message())
            self.assertEqual(r["final"].code, 250, r)
            cl.cmd("QUIT")

        # mxgatectl reads the node's own configuration
        p = self.ctl(node.config_path, "limits", "127.0.0.2", want=0)
        self.assertRegex(p.out, r"(?m)^rule per_ip: client_ip 127\.0\.0\.2, counts connections, "
                                r"window 3600 s fixed, counter 3, estimate 3\.0, limit 2: "
                                r"allowed again in \d+ s$")
        self.assertEqual(len(p.out.splitlines()), 1, p.out)
        p = self.ctl(node.config_path, "limits", "127.0.0.9", want=0)
        self.assertIn("counter 0, estimate 0.0, limit 2: allowed now", p.out)
        p = self.ctl(node.config_path, "limits", "bulk@client.test", want=0)
        self.assertEqual(sorted(p.out.splitlines()), [
            "rule per_domain: sender_domain client.test, counts messages, window 3600 s fixed, "
            "counter 1, estimate 1.0, limit 100: allowed now",
            "rule per_sender: sender bulk@client.test, counts messages, window 3600 s sliding, "
            "counter 1, estimate 1.0, limit 5: allowed now",
        ])
        p = self.ctl(node.config_path, "limits", "client.test", want=0)
        self.assertEqual(p.out.splitlines(), [
            "rule per_domain: sender_domain client.test, counts messages, window 3600 s fixed, "
            "counter 1, estimate 1.0, limit 100: allowed now"])
        p = self.ctl(node.config_path, "limits", "helo.example", want=0)
        self.assertIn("rule per_domain: sender_domain helo.example,", p.out)

        # the node's store is memcached: its admin.listen does not take feeds
        status, body = admin_request(node.admin_port, "POST", "/v1/feed",
                                     body=b"ip 1.2.3.4 block\n")
        self.assertEqual(status, 409, body)
        self.assertIn("memcached", body)
        self.assertExitsCleanly(node)


# ---------------------------------------------------------------- embedded

class TestEmbeddedNode(CtlCase):

    def test_rep_feed_and_limits_through_admin_listen(self):
        fake = self.fake()
        conf = {"reputation.enabled": "true"}
        conf.update(RULES)
        conf["ratelimit:per_ip.limit"] = "1000"  # the waits below connect often
        node = self.mxgate([fake], conf=conf)
        c = node.config_path
        # let the node's poller take note of the generation once (1 s after start)
        self.assertEqual(connect_code(node, "127.0.0.5"), 220)
        time.sleep(1.3)

        r = record(self.ctl(c, "rep", "set", "ip", "127.0.0.5", "-200", "--reason", "test",
                            want=0).out)
        self.assertEqual((r["score"], r["source"], r["reason"]), ("-200", "mxgatectl", "test"))
        self.wait_code(node, "127.0.0.5", "5")
        self.assertEqual(self.rep(c, "ip", "127.0.0.5")["score"], "-200")
        p = self.ctl(c, "rep", "set", "ip", "127.0.0.300", "1")
        self.assertEqual(p.returncode, 2)
        self.assertIn('value: "127.0.0.300" is not an IP address', p.err)

        # a text feed: bad lines by number, the others applied
        feed = b"# via the node\nip 127.0.0.5 del\nip 127.0.0.6 sett 1\nip 127.0.0.6 block\n" \
               b"domain Spam.Example add -30 60\n"
        p = self.ctl(c, "feed", "-", stdin=feed, want=1)
        self.assertEqual(p.err.splitlines(),
                         ['line 3: op: "sett" is not one of set, add, del, block, allow'])
        self.assertSummary(p, 3, 1)
        self.wait_code(node, "127.0.0.5", 220)
        self.wait_code(node, "127.0.0.6", "5")
        r = self.rep(c, "domain", "spam.example")
        self.assertEqual((r["score"], r["source"]), ("-30", "feed:stdin"))

        # protobuf: the node numbers the entries it was sent, mxgatectl
        # reports them by their number in the input
        stream = entry(feed_update(value="127.0.0.6", op=3)) + \
            entry(feed_update(version=3, op=5)) + \
            entry(feed_update(kind=4, value="X@Y.test", op=1, score=7, reason="pb"))
        p = self.ctl(c, "feed", "--format", "protobuf", "-", stdin=stream, want=1)
        self.assertEqual(p.err.splitlines(), ["entry 2: version 3 is not supported (expected 1)"])
        self.assertSummary(p, 2, 1)
        self.wait_code(node, "127.0.0.6", 220)
        r = self.rep(c, "sender", "x@y.test")
        self.assertEqual((r["score"], r["reason"]), ("7", "pb"))

        # limits, counted by the node itself
        p = self.ctl(c, "limits", "127.0.0.6", want=0)
        self.assertRegex(p.out, r"^rule per_ip: client_ip 127\.0\.0\.6, counts connections, "
                                r"window 3600 s fixed, counter \d+, estimate \d+\.0, limit 1000: "
                                r"allowed now\n$")

        # the endpoints themselves
        port = node.admin_port
        status, body = admin_request(port, "POST", "/v1/feed?first=10&source=feed%3Adirect",
                                     body=b"ip 192.0.2.50 block\nip 192.0.2.51 frob\n")
        self.assertEqual(status, 200, body)
        self.assertEqual(body.splitlines()[0],
                         'line 11: op: "frob" is not one of set, add, del, block, allow')
        self.assertRegex(body.splitlines()[-1], SUMMARY)
        self.assertTrue(body.splitlines()[-1].startswith("applied 1, bad 1,"), body)
        self.assertEqual(self.rep(c, "ip", "192.0.2.50")["source"], "feed:direct")
        status, body = admin_request(port, "GET", "/v1/rep?kind=ip&value=192.0.2.50")
        self.assertEqual((status, record(body)["block"]), (200, "yes"))
        status, body = admin_request(port, "GET", "/v1/rep?kind=ip&value=1.2.3.400")
        self.assertEqual((status, body), (400, 'value: "1.2.3.400" is not an IP address\n'))
        status, body = admin_request(port, "GET", "/v1/limits")
        self.assertEqual(status, 400)
        self.assertIn("key: missing", body)
        self.assertEqual(admin_request(port, "GET", "/v1/feed")[0], 405)
        self.assertEqual(admin_request(port, "GET", "/v1/nothing")[0], 404)
        status, body = admin_raw(port, b"POST /v1/feed HTTP/1.0\r\n\r\n")
        self.assertEqual(status, 411, body)
        status, body = admin_raw(port, b"POST /v1/feed HTTP/1.0\r\nContent-Length: 17000000\r\n\r\n")
        self.assertEqual(status, 413, body)
        status, body = admin_raw(port, b"POST /v1/feed HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(status, 501, body)
        # a body that arrives in pieces
        with socket.create_connection((mt.HOST, port), timeout=10) as s:
            b = b"ip 192.0.2.60 block\n" * 3
            s.sendall(b"POST /v1/feed HTTP/1.0\r\nContent-Length: %d\r\n\r\nip 192" % len(b))
            time.sleep(0.2)
            s.sendall(b[6:])
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        self.assertIn(b"\r\n\r\napplied 3, bad 0,", reply)
        # a feed of a few MB is applied in slices; /health answers meanwhile
        big = "".join("ip 10.1.%d.%d set -1\n" % (i >> 8, i & 255) for i in range(60000)).encode()
        status, body = admin_request(port, "POST", "/v1/feed", body=big, timeout=60)
        self.assertEqual(status, 200, body[:500])
        self.assertTrue(body.startswith("applied 60000, bad 0,"), body[:500])

        # what was there before still is
        self.assertEqual(node.health()[0], 200)
        status, body = admin_request(port, "GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn('mxgate_store_info{backend="embedded"} 1', body)
        self.assertExitsCleanly(node)


if __name__ == "__main__":
    mt.main()
