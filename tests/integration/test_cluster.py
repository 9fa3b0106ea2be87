#!/usr/bin/env python3
"""Nodes sharing rate limits and reputation through memcached: exact
limits, tampering, feed reach, and the embedded store (see
cluster_case.py for what is checked).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_case import *  # noqa: E402,F401,F403 - the shared cases, helpers and mt


class TestSharedLimits(ClusterCase):

    def test_fixed_window_is_exact_across_three_nodes(self):
        self.memcacheds(3)
        fake = self.fake()
        nodes = [self.node(fake, {"per_sender": SENDER_RULE}, **NO_PENALTY) for _ in range(3)]
        self.assertStoreBackend(nodes[0], "memcached")
        sender = "Bulk.Sender@Client.Test"
        away_from_boundary(3600, 10)
        exact_limit_run(self, nodes, fake, sender)
        assert_counter(self, "per_sender", 3600, sender.lower(), b"30")
        # the sender's history, written by three nodes: the 10 delivered
        assert_history(self, nodes[2], sender.lower(), 10)
        for nd in nodes:
            self.assertExitsCleanly(nd)

    def test_counted_from_the_loops_and_still_exact(self):
        """Fixed windows are counted by the sessions' event loops on their
        own memcached connections, next to the store threads that create a
        new window's counter: the limit stays exact, and the loops did most
        of the counting (mxgate_ratelimit_steps_total)."""
        self.memcacheds(2)
        fake = self.fake()
        nodes = [self.node(fake, {"per_sender": SENDER_RULE}, **NO_PENALTY) for _ in range(3)]
        away_from_boundary(3600, 10)
        # every loop of every node makes its connections: a few sessions
        # per node, with senders of their own (counted apart)
        for k, nd in enumerate(nodes):
            for i in range(6):
                s = Session(nd)
                try:
                    _, final = s.message("warm-%d-%d@client.test" % (k, i), "warm")
                    self.assertEqual(final.code, 250, final)
                finally:
                    s.close()
        time.sleep(0.3)
        self.assertEqual(subjects(fake), {"warm": 18})
        del fake.accepted[:]  # exact_limit_run counts what the backend got

        def steps(where):
            return sum(metrics(nd).get('mxgate_ratelimit_steps_total{counted="%s"}' % where, 0)
                       for nd in nodes)

        loop0, thread0 = steps("loop"), steps("store_thread")
        sender = "Loop.Sender@Client.Test"
        exact_limit_run(self, nodes, fake, sender)
        assert_counter(self, "per_sender", 3600, sender.lower(), b"30")
        on_loop, on_thread = steps("loop") - loop0, steps("store_thread") - thread0
        self.assertEqual(on_loop + on_thread, 30, (on_loop, on_thread))
        # the first count of the window creates the counter: a store thread's
        self.assertGreaterEqual(on_thread, 1, (on_loop, on_thread))
        self.assertGreaterEqual(on_loop, 20, (on_loop, on_thread))
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
