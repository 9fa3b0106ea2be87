#!/usr/bin/env python3
"""A memcached killed or hung under the nodes: each on_store_down policy,
the breaker, and nothing accepted lost (see cluster_case.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_case import *  # noqa: E402,F401,F403 - the shared cases, helpers and mt


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


if __name__ == "__main__":
    mt.main()
