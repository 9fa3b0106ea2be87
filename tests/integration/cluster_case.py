"""Shared by the cluster tests (test_cluster.py, test_cluster_faults.py):
memcached keys and records as the store makes them, sessions, and
ClusterCase.

Nodes sharing rate limits and reputation through memcached.

    clients --> mx1, mx2, mx3 --> one FakeBackend
                  \   |   /
             memcached x 2..3 (private, started here)

Every node reads the same cluster key file (written here) and the same
memcached list. What is checked:

  - a fixed-window limit is exact across nodes: 30 messages of one sender,
    spread over 3 nodes at once, against limit=10: exactly 10 accepted (and
    exactly 10 at the backend), 20 refused with 451 4.7.0 at MAIL;
  - the sliding window follows its documented estimate, attempt by
    attempt (see test_sliding_window_follows_its_estimate for the bound);
  - a reputation change made with mxgatectl reaches every node within 2 s
    (generation counter), although each node cached the old answer;
  - a memcached killed mid-run: each on_store_down policy (open, closed,
    local) holds for the keys that lived on it; every 250 reached the
    backend exactly once; no node crashes;
  - a memcached hung with SIGSTOP: its breaker opens, the p99 of a whole
    SMTP transaction grows by at most 200 ms, and after SIGCONT the
    breaker closes and counting resumes on it;
  - records written into memcached without the cluster key's HMAC (forged,
    or copied from another key) are ignored and counted;
  - the embedded store (no memcached): the same limit and reputation
    scenarios on one node, reputation fed through admin.listen.

Memcached keys are computed here the way cluster/store_memcached.c does
(mx1: + hex of the first 16 bytes of HMAC-SHA256(key, "key\0" + logical
key)), so a test can find which server holds a counter without depending
on libmemcached's ketama placement, and can tamper with a record.
"""

import calendar
import hashlib
import hmac
import os
import re
import secrets
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest as mt  # noqa: E402

RCPT = "alice@example.test"
TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z ")


# ---------------------------------------------------------------- store format

def mc_key(cluster_key, logical):
    """The memcached key of a logical key (store_memcached.c mc_key)."""
    mac = hmac.new(cluster_key, b"key\0" + logical.encode("utf-8"), hashlib.sha256).digest()
    return "mx1:" + mac[:16].hex()


def signed(cluster_key, mckey, value):
    """A record as mxgate writes it: 0x01 | HMAC(rec\\0 mckey \\0 value) | value."""
    mac = hmac.new(cluster_key, b"rec\0" + mckey.encode() + b"\0" + value, hashlib.sha256)
    return b"\x01" + mac.digest() + value


def reputation_pb(score=0, block=False, allow=False, reason="", source="test", expires=0):
    """proto/mxgate.proto Reputation, encoded by hand (version 1)."""
    out = b"\x08" + mt.varint(1)
    out += b"\x10" + mt.varint((score << 1) ^ (score >> 31))  # zigzag (sint32)
    out += b"\x18" + mt.varint(int(time.time()))
    if expires:
        out += b"\x20" + mt.varint(expires)
    for field, text in ((5, reason), (6, source)):
        if text:
            t = text.encode()
            out += bytes([field << 3 | 2]) + mt.varint(len(t)) + t
    if block:
        out += b"\x38\x01"
    if allow:
        out += b"\x40\x01"
    return out


def window_start(now, w):
    return now - now % w


def away_from_boundary(w, margin=2.0):
    """Sleep past the next window boundary if it is less than margin s away."""
    left = w - time.time() % w
    if left < margin:
        time.sleep(left + 0.05)


def counter_key(rule, start, value):
    return "rl:%s:%d:%s" % (rule, start, value)


# ---------------------------------------------------------------- SMTP

class Session:
    """One client connection to a node, opened on first use and reused for
    many transactions."""

    def __init__(self, node, source=None):
        self.node, self.source = node, source
        self.c = None

    def open(self):
        self.c = self.node.client(source=self.source, timeout=15)
        if self.c.banner.code != 220:
            raise AssertionError("banner %r" % self.c.banner)
        r = self.c.ehlo()
        if r.code != 250:
            raise AssertionError("EHLO %r" % r)

    def mail(self, sender):
        """MAIL then RSET: counts a message attempt at MAIL only."""
        if self.c is None:
            self.open()
        r = self.c.cmd("MAIL FROM:<%s>" % sender)
        self.c.cmd("RSET")
        return r

    def message(self, sender, tag):
        """A whole transaction; returns (MAIL reply, final reply or None)."""
        if self.c is None:
            self.open()
        msg = mt.make_message(subject=tag, sender=sender)
        r = self.c.transact(sender, [RCPT], msg)
        if r["final"] is None and r["mail"].cls == 2:
            self.c.cmd("RSET")
        return r["mail"], r["final"]

    def send(self, sender, rcpt=RCPT, helo=None, tag=None):
        """EHLO helo (when given), MAIL, RCPT and, with a tag, DATA; RSET
        when the transaction stopped early. Returns the replies by stage."""
        if self.c is None:
            self.open()
        out = {"mail": None, "rcpt": None, "final": None}
        if helo is not None:
            r = self.c.ehlo(helo)
            if r.code != 250:
                raise AssertionError("EHLO %s: %r" % (helo, r))
        out["mail"] = self.c.cmd("MAIL FROM:<%s>" % sender)
        if out["mail"].code == 250:
            out["rcpt"] = self.c.cmd("RCPT TO:<%s>" % rcpt)
            if out["rcpt"].code == 250 and tag is not None:
                r = self.c.cmd("DATA")
                if r.code != 354:
                    raise AssertionError("DATA %r" % r)
                self.c.send(mt.dot_stuff(mt.make_message(subject=tag, sender=sender, to=rcpt)))
                out["final"] = self.c.reply()
                return out
        self.c.cmd("RSET")
        return out

    def close(self):
        if self.c is not None:
            try:
                self.c.cmd("QUIT")
            except (OSError, EOFError, mt.SmtpError):
                pass
            self.c.close()
            self.c = None


def mxgatectl(*args, config, stdin=None):
    """Run mxgatectl -c config ARGS; returns CompletedProcess (text)."""
    return subprocess.run([mt.mxgatectl_binary(), "-c", config] + list(args), input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20, text=True,
                          errors="replace")


def connect_reply(node, source, timeout=5):
    """The first reply a connection from source gets (banner or refusal)."""
    return mt.first_reply(node.port, source, timeout)


def subjects(fake):
    """{Subject: times accepted} at the fake backend."""
    out = {}
    for _, _, body in list(fake.accepted):
        m = re.search(rb"^Subject: (\S+)\r?$", body, re.M)
        tag = m.group(1).decode() if m else "?"
        out[tag] = out.get(tag, 0) + 1
    return out


metrics = mt.metrics


def raw_lines(node):
    with node._cond:
        return list(node.lines)


def line_time(line):
    """(unix seconds, milliseconds) of a log line's timestamp."""
    m = TS.match(line)
    if not m:
        return None
    y, mo, d, h, mi, s, ms = (int(x) for x in m.groups())
    return calendar.timegm((y, mo, d, h, mi, s)), ms


def ratelimit_events(node, **match):
    return [e for e in node.events("ratelimit") if all(e.get(k) == v for k, v in match.items())]


def caught_up(*nodes):
    """Wait until the test has read every line the nodes logged so far.

    A node logs before it replies, but its line may reach the test a little
    after the reply: open one more session and wait for its connect line,
    which comes after everything logged before it."""
    for n in nodes:
        c = mt.SmtpClient(n.port, timeout=5)
        port = c.sock.getsockname()[1]
        c.close()
        n.wait_event(5, event="connect", port=str(port))


# ---------------------------------------------------------------- base

class ClusterCase(mt.IntegrationCase):

    def setUp(self):
        super().setUp()
        mt.require_program(mt.Memcached.BINARY, "memcached")
        self.cluster_key = secrets.token_hex(32).encode()
        self.key_file = os.path.join(self.tmp, "cluster.key")
        with open(self.key_file, "wb") as f:
            f.write(self.cluster_key + b"\n")
        os.chmod(self.key_file, 0o600)
        self.mcs = []

    def memcacheds(self, n):
        for _ in range(n):
            m = mt.Memcached()
            self.addCleanup(m.stop)
            m.start()
            self.mcs.append(m)
        return self.mcs

    def node(self, fake, rules=None, memcached=True, **conf):
        # the harness turns reputation off by default; here it is part of
        # what the nodes share, and its reads go through the faults too
        c = {"reputation.enabled": "true"}
        if memcached:
            c["cluster.memcached"] = ";".join(m.address for m in self.mcs)
            c["cluster.key_file"] = self.key_file
        for name, rule in (rules or {}).items():
            for k, v in rule.items():
                c["ratelimit:%s.%s" % (name, k)] = str(v)
        c.update({k.replace("__", "."): str(v) for k, v in conf.items()})
        return self.mxgate([fake], conf=c)

    def mckey(self, logical):
        return mc_key(self.cluster_key, logical)

    def holder(self, logical):
        """The memcached instance that holds a logical key now, or None."""
        k = self.mckey(logical)
        for m in self.mcs:
            if m.proc is not None and m.proc.poll() is None and m.get(k) is not None:
                return m
        return None

    def assertStoreBackend(self, node, name):
        self.assertEqual(metrics(node).get('mxgate_store_info{backend="%s"}' % name), 1.0)


# ---------------------------------------------------------------- limits

# Each refusal by a limit also costs the client IP reputation points (5 by
# default; -20 tempfails at MAIL with 451 4.7.1): all test clients share
# 127.0.0.1, so the limit tests turn that penalty off to see the limit's
# own replies.
NO_PENALTY = {"reputation__penalty_ratelimit": 0}

SENDER_RULE = {"key": "sender", "count": "messages", "limit": 10, "window": 3600,
               "algorithm": "fixed"}


def exact_limit_run(test, nodes, fake, sender):
    """30 messages of one sender, message i through node i % len(nodes),
    one thread per node, all at once. Checks the outcome; returns the
    ratelimit events of the run."""
    n = 30
    results = {}
    errors = []

    def run(k):
        s = Session(nodes[k])
        try:
            for i in range(k, n, len(nodes)):
                tag = "exact-%02d" % i
                results[tag] = s.message(sender, tag)
        except Exception as e:  # reported below
            errors.append("node %d: %r" % (k, e))
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    test.assertEqual(errors, [])
    test.assertEqual(len(results), n)
    accepted = sorted(t for t, (m, f) in results.items() if f is not None and f.code == 250)
    refused = sorted(t for t, (m, f) in results.items() if m.code != 250)
    test.assertEqual(len(accepted), 10, results)
    test.assertEqual(len(refused), 20, results)
    for t in refused:
        m = results[t][0]
        test.assertEqual(m.code, 451, m)
        test.assertRegex(m.text, r"^451 4\.7\.0 Rate limit exceeded, try again later \[id [\w.]+\]$")
    # every 250 reached the backend once, nothing else did
    mt.wait_until(lambda: len(fake.accepted) >= 10, 5, what="10 messages at the backend")
    test.assertEqual(subjects(fake), {t: 1 for t in accepted})
    # the counter moved through 1..30 exactly once, whichever node counted
    distinct = list({id(nd): nd for nd in nodes}.values())
    caught_up(*distinct)
    events = [e for nd in distinct
              for e in ratelimit_events(nd, rule="per_sender", sender=sender.lower())]
    test.assertEqual(sorted(int(e["after"]) for e in events), list(range(1, n + 1)), events)
    for e in events:
        test.assertEqual(e["sender"], sender.lower())
        test.assertEqual(e["count"], "messages")
        test.assertEqual(e["limit"], "10")
        test.assertEqual(int(e["before"]) + 1, int(e["after"]))
        test.assertEqual(e["verdict"], "pass" if int(e["after"]) <= 10 else "over", e)
        test.assertNotIn("store", e)
    # one refusal line per 451, saying which rule and count
    rejects = [e for nd in distinct for e in nd.events("reject") if e.get("what") == "mail"]
    test.assertEqual(len(rejects), 20)
    for e in rejects:
        test.assertEqual(e["code"], "451")
        test.assertRegex(e["why"], r"^ratelimit per_sender sender=%s messages \d+ > 10 "
                         r"\(retry in \d+ s\)$" % re.escape(sender.lower()))
    return events


def assert_counter(test, rule, window, value, expect):
    """The rule's counter of the window now is in memcached under its
    hidden key (nowhere in clear) and reads expect."""
    now = int(time.time())
    logical = counter_key(rule, window_start(now, window), value)
    m = test.holder(logical)
    test.assertIsNotNone(m, "counter %s not found in any memcached" % logical)
    test.assertEqual(m.get(test.mckey(logical)), expect)


def assert_history(test, node, sender, delivered):
    """mxgatectl rep get shows the sender's history: the delivered count
    that the nodes flushed (about once a second), first and last seen."""
    want = "delivered: %d messages" % delivered
    got = [""]

    def shown():
        p = mxgatectl("rep", "get", "sender", sender, config=node.config_path)
        test.assertEqual(p.returncode, 0, p.stderr)
        got[0] = p.stdout
        return want in p.stdout
    mt.wait_until(shown, 5, what=want)
    out = got[0]
    test.assertIn("penalised: 0 times", out)
    first = re.search(r"^first seen: (\S+) \((\d+) s ago\)$", out, re.M)
    last = re.search(r"^last seen: (\S+) \((\d+) s ago\)$", out, re.M)
    test.assertIsNotNone(first, out)
    test.assertIsNotNone(last, out)
    test.assertLessEqual(first.group(1), last.group(1))
    test.assertLess(int(last.group(2)), 30)


# ---------------------------------------------------------------- store faults

DOWN_RULES = {
    # one rule per policy, each keyed by something else, so the test can
    # put exactly one rule's key on the dead server in a message
    "a_open": {"key": "sender", "count": "messages", "limit": 3, "window": 3600,
               "on_store_down": "open"},
    "b_closed": {"key": "recipient", "count": "recipients", "limit": 3, "window": 3600,
                 "on_store_down": "closed"},
    "c_local": {"key": "helo", "count": "messages", "limit": 3, "window": 3600,
                "on_store_down": "local"},
}
LOCAL_NOTE = "down: counted on this node only"


# ---------------------------------------------------------------- tampering

REFUSED_AT_CONNECT = r"^554 5\.7\.1 Service refused to your address by policy \[id [\w.]+\]$"


# ---------------------------------------------------------------- feed reach

class FeedCase(ClusterCase):

    def polled(self, since, poll=1.0):
        """Wait until every node started before since has read the feed
        generation once (its poller's first look is poll s after start):
        the first look only takes note of the generation, so a change
        made before it would wait for the cache to expire instead."""
        left = since + poll + 0.3 - time.monotonic()
        if left > 0:
            time.sleep(left)

    def ctl(self, node, *args, stdin=None):
        p = mxgatectl(*args, config=node.config_path, stdin=stdin)
        self.assertEqual(p.returncode, 0, "mxgatectl %s: exit %d\n%s%s"
                         % (" ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def assertReaches(self, nodes, source, want, since, within=2.0):
        """Every node answers a connection from source with want (554 or
        220) within `within` s of since; returns the worst delay."""
        pending = set(range(len(nodes)))
        last = {}
        worst = 0.0
        while pending:
            for k in sorted(pending):
                r = connect_reply(nodes[k], source)
                last[k] = r
                if r.code == want:
                    worst = max(worst, time.monotonic() - since)
                    pending.discard(k)
            if pending and time.monotonic() - since > within:
                self.fail("nodes %s still answer %s with %r %.2f s after the change"
                          % (sorted(nodes[k].port for k in pending), source,
                             {nodes[k].port: last[k].text for k in pending},
                             time.monotonic() - since))
            time.sleep(0.05)
        self.assertLessEqual(worst, within)
        if want == 554:
            for k in range(len(nodes)):
                self.assertRegex(last[k].text, REFUSED_AT_CONNECT)
        return worst


# ---------------------------------------------------------------- embedded
