#!/usr/bin/env python3
"""Nodes sharing rate limits and reputation through memcached.

    clients --> mx1, mx2, mx3 --> one FakeBackend
                  \\   |   /
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
(mx1: + hex of the first 16 bytes of HMAC-SHA256(key, "key\\0" + logical
key)), so a test can find which server holds a counter without depending
on libmemcached's ketama placement, and can tamper with a record.
"""

import calendar
import hashlib
import hmac
import http.client
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


def metrics(node):
    """/metrics as {"name{labels}": float}."""
    c = http.client.HTTPConnection(mt.HOST, node.admin_port, timeout=5)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode("utf-8", "replace")
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


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
    events = [e for nd in distinct for e in ratelimit_events(nd, rule="per_sender")]
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


class TestSharedLimits(ClusterCase):

    def test_fixed_window_is_exact_across_three_nodes(self):
        self.memcacheds(3)
        fake = self.fake()
        nodes = [self.node(fake, {"per_sender": SENDER_RULE}, **NO_PENALTY) for _ in range(3)]
        self.assertStoreBackend(nodes[0], "memcached")
        sender = "Bulk.Sender@Client.Test"
        away_from_boundary(3600, 10)
        exact_limit_run(self, nodes, fake, sender)
        # the counter is in memcached under its hidden key, nowhere in clear
        now = int(time.time())
        logical = counter_key("per_sender", window_start(now, 3600), sender.lower())
        m = self.holder(logical)
        self.assertIsNotNone(m, "counter %s not found in any memcached" % logical)
        self.assertEqual(m.get(self.mckey(logical)), b"30")
        # the sender's history, written by three nodes: the 10 delivered
        assert_history(self, nodes[2], sender.lower(), 10)
        for nd in nodes:
            self.assertExitsCleanly(nd)

    def test_sliding_window_follows_its_estimate(self):
        """The bound asserted, attempt by attempt: an attempt at whole second
        e of window [start, start + W) passes iff

            prev * (W - e) / W + cur <= limit

        where prev counts the attempts of the previous window and cur those
        of this one up to and including this attempt (refused attempts count
        too: the counter moves before the verdict). So at most `limit` pass
        per aligned window, and the previous window's attempts hold back the
        next one in proportion to the time left. The schedule makes the
        estimate both refuse an attempt a fixed window would pass and pass
        one later in the same window (the weight decays)."""
        W, L = 4, 6
        self.memcacheds(3)
        fake = self.fake()
        rule = {"key": "sender", "count": "messages", "limit": L, "window": W,
                "algorithm": "sliding"}
        nodes = [self.node(fake, {"slide": rule}, **NO_PENALTY) for _ in range(3)]
        sessions = [Session(n) for n in nodes]
        self.addCleanup(lambda: [s.close() for s in sessions])
        sender = "slider@client.test"
        for s in sessions:  # connected and greeted before the clock starts
            s.open()
        # start just after a boundary: window k from t0, k+1 from t0 + W
        mt.wait_until(lambda: 0.1 <= time.time() % W < 0.6, W + 1, 0.01, "a window start")
        now = time.time()
        t0 = now - now % W
        attempts = []
        n = [0]

        def attempt():
            node = nodes[n[0] % 3]
            before = len(ratelimit_events(node, rule="slide"))
            r = sessions[n[0] % 3].mail(sender)
            n[0] += 1
            self.assertIn(r.code, (250, 451), r)
            evs = mt.wait_until(lambda: (lambda e: e if len(e) > before else None)(
                ratelimit_events(node, rule="slide")), 3, what="the attempt's ratelimit line")
            line = [ln for ln in raw_lines(node) if "event=ratelimit" in ln and "rule=slide" in ln
                    ][before]
            attempts.append({"reply": r, "event": evs[before], "ts": line_time(line)})

        def at(offset):
            left = t0 + offset - time.time()
            if left > 0:
                time.sleep(left)

        for _ in range(8):          # window k, e=0: 6 pass, 2 over
            attempt()
        at(W + 1.5)                 # k+1, prev=8: e=1: 6+1 > 6
        attempt()
        at(W + 2.5)                 # e=2: 4+2 <= 6
        attempt()
        at(W + 3.4)                 # e=3: 2+3, 2+4 pass; 2+5 over
        for _ in range(3):
            attempt()
        at(2 * W + 0.5)             # k+2, prev=5, e=0: 5+1 pass, 5+2 over
        for _ in range(2):
            attempt()

        # group by window: the counter restarts at 1 in each
        windows = []
        for a in attempts:
            if int(a["event"]["after"]) == 1:
                windows.append([])
            self.assertTrue(windows, "first attempt did not start a counter: %r" % a["event"])
            windows[-1].append(a)
        if os.environ.get("MXTEST_VERBOSE"):
            for a in attempts:
                print(a["ts"], a["event"]["after"], a["event"]["verdict"], file=sys.stderr)
        self.assertEqual(len(windows), 3, [[a["event"]["after"] for a in w] for w in windows])
        prev = 0
        refused_below_limit = passed_after_refusal = 0
        for wi, win in enumerate(windows):
            start = t0 + wi * W
            passes = 0
            for j, a in enumerate(win):
                ev, (sec, ms) = a["event"], a["ts"]
                cur = int(ev["after"])
                self.assertEqual(cur, j + 1, ev)
                # time(NULL) was read just before the line's timestamp
                cands = {sec} | ({sec - 1} if ms < 200 else set())
                expect = set()
                for t in cands:
                    e = t - start
                    if 0 <= e < W:
                        est = prev * (W - e) / W + cur
                        expect.add("pass" if est <= L else "over")
                self.assertIn(ev["verdict"], expect,
                              "window %d attempt %d: prev=%d cur=%d at %s.%03d (start %d): %r"
                              % (wi, j, prev, cur, sec, ms, start, ev))
                self.assertEqual(a["reply"].code, 250 if ev["verdict"] == "pass" else 451)
                if ev["verdict"] == "pass":
                    passes += 1
                    if wi == 1 and refused_below_limit:
                        passed_after_refusal += 1
                elif cur <= L:
                    refused_below_limit += 1
            self.assertLessEqual(passes, L)
            prev = len(win)
        self.assertGreater(refused_below_limit, 0, "the previous window never held one back")
        self.assertGreater(passed_after_refusal, 0, "the previous window's weight never decayed")


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


class TestStoreFaults(ClusterCase):

    def classify(self, pools, rules):
        """{pool name: {value: memcached index}} from where each value's
        counter lives now."""
        now = int(time.time())
        out = {}
        for (name, values), rule in zip(pools.items(), rules):
            out[name] = {}
            for v in values:
                m = self.holder(counter_key(rule, window_start(now, 3600), v.lower()))
                self.assertIsNotNone(m, "counter of %s %s not found" % (rule, v))
                out[name][v] = self.mcs.index(m)
        return out

    def test_killed_memcached_each_policy_holds_nothing_lost(self):
        self.memcacheds(3)
        fake = self.fake()
        nodes = [self.node(fake, DOWN_RULES, **NO_PENALTY) for _ in range(3)]
        away_from_boundary(3600, 30)
        pools = {"sender": ["s%02d@client.test" % i for i in range(60)],
                 "rcpt": ["r%02d@example.test" % i for i in range(60)],
                 "helo": ["h%02d.client.test" % i for i in range(60)]}
        # every value counted once, so its counter shows where it lives
        warm = Session(nodes[0])
        self.addCleanup(warm.close)
        for i in range(60):
            r = warm.send(pools["sender"][i], pools["rcpt"][i], helo=pools["helo"][i])
            self.assertEqual((r["mail"].code, r["rcpt"].code), (250, 250), r)
        where = self.classify(pools, ("a_open", "b_closed", "c_local"))
        victim = max(range(3), key=lambda i: min(list(w.values()).count(i) for w in where.values()))
        dead = {k: [v for v, i in w.items() if i == victim] for k, w in where.items()}
        live = {k: iter([v for v, i in w.items() if i != victim]) for k, w in where.items()}
        for k in dead:
            self.assertTrue(dead[k], "no %s counter on memcached %d: %r" % (k, victim, where))
        dead_s, dead_r, dead_h = dead["sender"][0], dead["rcpt"][0], dead["helo"][0]
        control = next(live["sender"])

        def fresh():
            return {"helo": next(live["helo"]), "sender": next(live["sender"]),
                    "rcpt": next(live["rcpt"])}

        sessions = [Session(n) for n in nodes]
        self.addCleanup(lambda: [x.close() for x in sessions])
        # a transaction open on each node when the server dies
        inflight = []
        for k, x in enumerate(sessions):
            v = fresh()
            x.open()
            x.c.ehlo(v["helo"])
            self.assertEqual(x.c.cmd("MAIL FROM:<%s>" % v["sender"]).code, 250)
            self.assertEqual(x.c.cmd("RCPT TO:<%s>" % v["rcpt"]).code, 250)
            inflight.append(v)
        marks = [len(n.lines) for n in nodes]
        self.mcs[victim].kill()
        accepted = []
        for k, x in enumerate(sessions):
            self.assertEqual(x.c.cmd("DATA").code, 354)
            tag = "inflight-%d" % k
            x.c.send(mt.dot_stuff(mt.make_message(subject=tag, sender=inflight[k]["sender"])))
            r = x.c.reply()
            self.assertEqual(r.code, 250, r)
            accepted.append(tag)

        seq = [0]

        def attempt(sender, rcpt, helo, tag):
            """One message through the next node in turn."""
            k = seq[0] % 3
            seq[0] += 1
            r = sessions[k].send(sender, rcpt, helo=helo, tag=tag)
            if r["final"] is not None and r["final"].code == 250:
                accepted.append(tag)
            return k, r

        # open: the dead sender's messages pass unchecked
        for i in range(5):
            _, r = attempt(sender=dead_s, rcpt=next(live["rcpt"]), helo=next(live["helo"]),
                           tag="open-%d" % i)
            self.assertEqual(r["final"] and r["final"].code, 250, r)
        # closed: the dead recipient is refused for as long as its server is down
        for i in range(3):
            _, r = attempt(sender=next(live["sender"]), rcpt=dead_r, helo=next(live["helo"]),
                           tag="closed-%d" % i)
            self.assertEqual(r["mail"].code, 250, r)
            self.assertRegex(r["rcpt"].text, r"^451 4\.3\.0 Policy store unavailable, try again "
                             r"later \[id [\w.]+\]$")
        # local: each node counts the dead HELO on its own, 3 each
        per_node = {0: [], 1: [], 2: []}
        for i in range(12):
            k, r = attempt(sender=next(live["sender"]), rcpt=next(live["rcpt"]), helo=dead_h,
                           tag="local-%d" % i)
            per_node[k].append(r)
        for k, rs in per_node.items():
            self.assertEqual([r["mail"].code for r in rs], [250, 250, 250, 451], (k, rs))
            self.assertEqual([r["final"] and r["final"].code for r in rs], [250, 250, 250, None])
            self.assertRegex(rs[3]["mail"].text, r"^451 4\.7\.0 Rate limit exceeded")
        # a key on a live server: the shared limit still holds (1 before + 2)
        got = []
        for i in range(4):
            _, r = attempt(sender=control, rcpt=next(live["rcpt"]), helo=next(live["helo"]),
                           tag="control-%d" % i)
            got.append(r["mail"].code)
        self.assertEqual(got, [250, 250, 451, 451])

        # nothing accepted lost or doubled
        mt.wait_until(lambda: len(fake.accepted) >= len(accepted), 10,
                      what="%d messages at the backend" % len(accepted))
        time.sleep(0.2)
        self.assertEqual(subjects(fake), {t: 1 for t in accepted})
        self.assertEqual(len(accepted), 3 + 5 + 9 + 2)

        # every counter that moved is logged, with the policy that decided
        caught_up(*nodes)
        after_kill = []
        for n, mark in zip(nodes, marks):
            with n._cond:
                lines = n.lines[mark:]
            after_kill += [(n, mt.parse_kv(ln)) for ln in lines if "event=ratelimit" in ln]

        def evs(rule, key, value):
            return [(n, e) for n, e in after_kill if e["rule"] == rule and e.get(key) == value]

        opened = evs("a_open", "sender", dead_s)
        self.assertEqual([e["verdict"] for _, e in opened], ["unchecked"] * 5, opened)
        closed = evs("b_closed", "recipient", dead_r)
        self.assertEqual([e["verdict"] for _, e in closed], ["store_down"] * 3, closed)
        local = evs("c_local", "helo", dead_h)
        self.assertEqual(len(local), 12)
        for n in nodes:
            mine = [e for nn, e in local if nn is n]
            self.assertEqual([(e["after"], e["verdict"], e.get("store")) for e in mine],
                             [("1", "pass", LOCAL_NOTE), ("2", "pass", LOCAL_NOTE),
                              ("3", "pass", LOCAL_NOTE), ("4", "over", LOCAL_NOTE)], mine)
        ctl = evs("a_open", "sender", control)
        self.assertEqual(sorted((e["after"], e["verdict"]) for _, e in ctl),
                         [("2", "pass"), ("3", "pass"), ("4", "over"), ("5", "over")])
        # no policy leaks into another rule, and live keys are counted as usual
        deads = {dead_s, dead_r, dead_h}
        for n, e in after_kill:
            value = e.get("sender") or e.get("recipient") or e.get("helo")
            if value not in deads:
                self.assertIn(e["verdict"], ("pass", "over"), e)
                self.assertNotIn("store", e)
        for n in nodes:
            rejects = [e for e in n.events("reject") if "store unavailable" in e.get("why", "")]
            for e in rejects:
                self.assertEqual((e["what"], e["code"]), ("rcpt", "451"))
                self.assertEqual(e["why"], "ratelimit b_closed: store unavailable and "
                                 "on_store_down = closed")
            m = metrics(n)
            self.assertGreater(m["mxgate_store_errors_total"] + m["mxgate_store_fast_failed_total"],
                               0, "node %d counted no store failure" % n.port)
        for x in sessions + [warm]:
            x.close()
        for n in nodes:
            self.assertExitsCleanly(n)

    def test_hung_memcached_opens_breaker_and_latency_stays_bounded(self):
        self.memcacheds(3)
        fake = self.fake()
        rule = {"key": "sender", "count": "messages", "limit": 100000, "window": 3600}
        nodes = [self.node(fake, {"per_sender": rule}, **NO_PENALTY) for _ in range(3)]
        away_from_boundary(3600, 30)
        senders = ["p%02d@client.test" % i for i in range(30)]
        accepted = []
        seq = [0]

        def transaction(sender, node=None):
            """connect .. QUIT, one message; returns seconds taken."""
            i = seq[0]
            seq[0] += 1
            node = node or nodes[i % 3]
            tag = "hung-%03d" % i
            t0 = time.monotonic()
            c = node.client(timeout=10)
            try:
                self.assertEqual(c.banner.code, 220, c.banner)
                c.ehlo()
                r = c.transact(sender, [RCPT], mt.make_message(subject=tag, sender=sender))
                c.cmd("QUIT")
            finally:
                c.close()
            dt = time.monotonic() - t0
            self.assertEqual(r["final"] and r["final"].code, 250, r)
            accepted.append(tag)
            return dt

        def p99(xs):
            xs = sorted(xs)
            return xs[-(-99 * len(xs) // 100) - 1]

        for i in range(30):  # warm: handles, connections, caches
            transaction(senders[i])
        now = int(time.time())
        keys = {x: self.mckey(counter_key("per_sender", window_start(now, 3600), x))
                for x in senders}
        where = {x: next(i for i, m in enumerate(self.mcs) if m.get(keys[x]) is not None)
                 for x in senders}
        victim = max(range(3), key=lambda i: list(where.values()).count(i))
        hung = self.mcs[victim]
        probe = next(x for x in senders if where[x] == victim)
        state = 'mxgate_store_breaker_state{server="%s"}' % hung.address

        before = [transaction(senders[i % 30]) for i in range(100)]
        hung.pause()
        after, seen_open = [], set()
        for i in range(100):
            after.append(transaction(senders[i % 30]))
            k = (seq[0] - 1) % 3
            if metrics(nodes[k]).get(state) == 1:
                seen_open.add(k)
        # a node that drew few of the hung server's keys may not have failed
        # breaker_failures times in a row yet: give it those keys (bounded)
        deadline = time.monotonic() + 8
        while len(seen_open) < 3 and time.monotonic() < deadline:
            for k, n in enumerate(nodes):
                transaction(probe, n)
                if metrics(n).get(state) == 1:
                    seen_open.add(k)
        if os.environ.get("MXTEST_VERBOSE"):
            print("before ms", [round(x * 1000) for x in before], file=sys.stderr)
            print("after ms", [round(x * 1000) for x in after], file=sys.stderr)
        self.assertEqual(seen_open, {0, 1, 2}, "breaker never showed open (1) on some node")
        added = p99(after) - p99(before)
        self.assertLessEqual(added, 0.200, "p99 %.0f ms before the hang, %.0f ms during it"
                             % (p99(before) * 1000, p99(after) * 1000))
        caught_up(*nodes)
        for n in nodes:
            self.assertGreater(metrics(n)["mxgate_store_fast_failed_total"], 0)
            self.assertTrue([e for e in n.events("store_breaker_open") if hung.address in e["msg"]])

        hung.resume()
        # each node closes its breaker on its first probe after the cool-down
        closed = set()
        deadline = time.monotonic() + 6
        while len(closed) < 3 and time.monotonic() < deadline:
            for k, n in enumerate(nodes):
                if k not in closed:
                    transaction(probe, n)
                    if metrics(n).get(state) == 0:
                        closed.add(k)
            time.sleep(0.1)
        self.assertEqual(closed, {0, 1, 2}, "breaker still not closed after SIGCONT")
        # and the shared counter moves again, one per message, on every node
        caught_up(*nodes)
        marks = [len(ratelimit_events(n, rule="per_sender", sender=probe)) for n in nodes]
        v0 = int(hung.get(keys[probe]))
        for n in nodes:
            transaction(probe, n)
        self.assertEqual(int(hung.get(keys[probe])), v0 + 3)
        caught_up(*nodes)
        for n, mark in zip(nodes, marks):
            e = ratelimit_events(n, rule="per_sender", sender=probe)[mark:]
            self.assertEqual(len(e), 1, e)
            self.assertEqual(e[0]["verdict"], "pass")
            self.assertNotIn("store", e[0])
            self.assertGreater(int(e[0]["after"]), v0)
        for n in nodes:
            self.assertTrue([e for e in n.events("store_breaker_closed")
                             if hung.address in e["msg"]])
        self.assertEqual(subjects(fake), {t: 1 for t in accepted})
        for n in nodes:
            self.assertExitsCleanly(n)


# ---------------------------------------------------------------- tampering

REFUSED_AT_CONNECT = r"^554 5\.7\.1 Service refused to your address by policy \[id [\w.]+\]$"


class TestTampering(ClusterCase):

    def put(self, logical, data):
        """Write raw bytes under a logical key's memcached key on every
        server (only the one the key maps to is ever read)."""
        for m in self.mcs:
            m.set(self.mckey(logical), data)

    def test_records_without_the_cluster_hmac_are_ignored(self):
        self.memcacheds(2)
        fake = self.fake()
        rule = {"key": "sender", "count": "messages", "limit": 1, "window": 3600}
        # no cache: every connection and MAIL reads the store
        node = self.node(fake, {"per_sender": rule}, cluster__cache_ttl=0, **NO_PENALTY)
        away_from_boundary(3600, 10)
        key = self.cluster_key
        wrong = secrets.token_hex(32).encode()

        def bad():
            return metrics(node)["mxgate_store_bad_records_total"]

        # a genuine block (signed here as mxgate signs): refused at connect
        blocked = "rep:ip:127.0.9.9"
        genuine = signed(key, self.mckey(blocked), reputation_pb(block=True, reason="spam run"))
        self.put(blocked, genuine)
        r = connect_reply(node, "127.0.9.9")
        self.assertRegex(r.text, REFUSED_AT_CONNECT)
        self.assertEqual(bad(), 0)

        # a forged allow for its network does not lift the block
        net = "rep:net:127.0.9.0/24"
        self.put(net, signed(wrong, self.mckey(net), reputation_pb(allow=True)))
        r = connect_reply(node, "127.0.9.9")
        self.assertRegex(r.text, REFUSED_AT_CONNECT)
        self.assertGreaterEqual(bad(), 1)
        caught_up(node)
        e = node.events("reject")[-1]
        self.assertEqual(e["why"], "reputation ip:127.0.9.9 blocked (test: spam run)")

        # forged records of other shapes read as absent: these addresses
        # connect as if nothing were stored for them
        forged = {
            # a block signed with another key
            "127.0.9.10": signed(wrong, self.mckey("rep:ip:127.0.9.10"),
                                 reputation_pb(block=True)),
            # the genuine block record, copied from the key it was signed for
            "127.0.9.11": genuine,
            # a record with no MAC at all
            "127.0.9.12": b"\x01" + reputation_pb(block=True),
            # an unknown record version with an otherwise valid MAC
            "127.0.9.13": b"\x02" + signed(key, self.mckey("rep:ip:127.0.9.13"),
                                           reputation_pb(block=True))[1:],
        }
        for ip, data in forged.items():
            self.put("rep:ip:" + ip, data)
        for ip in forged:
            before = bad()
            r = connect_reply(node, ip)
            self.assertEqual(r.code, 220, "%s: %r" % (ip, r))
            self.assertGreater(bad(), before, ip)

        # a forged allow does not lift a sender's limit; a genuine one does
        for sender, sign_with in (("forged@client.test", wrong), ("trusted@client.test", key)):
            logical = "rep:sender:" + sender
            self.put(logical, signed(sign_with, self.mckey(logical), reputation_pb(allow=True)))
        x = Session(node)
        self.addCleanup(x.close)
        codes = {s: [x.send(s, tag="t-%s-%d" % (s[:6], i))["mail"].code for i in range(3)]
                 for s in ("forged@client.test", "trusted@client.test")}
        self.assertEqual(codes, {"forged@client.test": [250, 451, 451],
                                 "trusted@client.test": [250, 250, 250]})
        caught_up(node)
        self.assertFalse(ratelimit_events(node, sender="trusted@client.test"),
                         "an allow-listed sender was counted")
        x.close()
        self.assertExitsCleanly(node)


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


class TestFeedReach(FeedCase):

    def test_a_change_reaches_every_node_within_two_seconds(self):
        self.memcacheds(3)
        fake = self.fake()
        # default cache (10 s) and generation poll (1 s)
        nodes = [self.node(fake) for _ in range(3)]
        started = time.monotonic()
        for ip in ("127.0.0.7", "127.0.0.8"):
            for n in nodes:  # each node now caches "nothing known" for ip
                self.assertEqual(connect_reply(n, ip).code, 220)
        self.polled(started)

        self.ctl(nodes[0], "rep", "set", "ip", "127.0.0.7", "-200")
        self.assertReaches(nodes, "127.0.0.7", 554, time.monotonic())
        caught_up(*nodes)
        for n in nodes:
            self.assertIn("reputation ip:127.0.0.7 score -200 <= -100",
                          [e.get("why") for e in n.events("reject")])
        got = self.ctl(nodes[1], "rep", "get", "ip", "127.0.0.7")
        self.assertIn("-200", got.stdout)

        self.ctl(nodes[2], "feed", "--format", "text", "-",
                 stdin="# from a test feed\nip 127.0.0.8 block\n")
        self.assertReaches(nodes, "127.0.0.8", 554, time.monotonic())
        caught_up(*nodes)
        for n in nodes:
            self.assertTrue([e for e in n.events("reject")
                             if e.get("why", "").startswith("reputation ip:127.0.0.8 blocked")])
        # other addresses are untouched
        self.assertEqual(connect_reply(nodes[0], "127.0.0.9").code, 220)

        self.ctl(nodes[0], "rep", "del", "ip", "127.0.0.7")
        self.assertReaches(nodes, "127.0.0.7", 220, time.monotonic())
        for n in nodes:
            self.assertExitsCleanly(n)


# ---------------------------------------------------------------- embedded

class TestEmbeddedStore(FeedCase):

    def test_exact_limit_without_memcached(self):
        fake = self.fake()
        node = self.node(fake, {"per_sender": SENDER_RULE}, memcached=False, **NO_PENALTY)
        self.assertStoreBackend(node, "embedded")
        away_from_boundary(3600, 10)
        # three sessions at once on the one node
        exact_limit_run(self, [node, node, node], fake, "Bulk.Sender@Client.Test")
        assert_history(self, node, "bulk.sender@client.test", 10)
        self.assertExitsCleanly(node)

    def test_reputation_fed_through_admin_listen(self):
        fake = self.fake()
        node = self.node(fake, memcached=False)
        started = time.monotonic()
        self.assertStoreBackend(node, "embedded")
        for ip in ("127.0.0.7", "127.0.0.8"):
            self.assertEqual(connect_reply(node, ip).code, 220)
        self.polled(started)
        self.ctl(node, "rep", "set", "ip", "127.0.0.7", "-200")
        self.assertReaches([node], "127.0.0.7", 554, time.monotonic())
        self.ctl(node, "rep", "set", "ip", "127.0.0.8", "0", "--block")
        self.assertReaches([node], "127.0.0.8", 554, time.monotonic())
        self.assertIn("-200", self.ctl(node, "rep", "get", "ip", "127.0.0.7").stdout)
        self.ctl(node, "feed", "-", stdin="ip 127.0.0.7 del\nip 127.0.0.8 del\n")
        self.assertReaches([node], "127.0.0.7", 220, time.monotonic())
        self.assertReaches([node], "127.0.0.8", 220, time.monotonic())
        self.assertExitsCleanly(node)


if __name__ == "__main__":
    mt.main()
