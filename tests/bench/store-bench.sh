#!/bin/bash
# tests/bench/store-bench.sh: what the cluster checks cost per message.
#
# One mxgate in front of smtp-sink, scanning off (to isolate the store),
# reputation on (the default) and one rate limit rule (sender, messages,
# a limit no run reaches), driven by mxload at c=20 with 2 KB messages,
# one per session, for 8 s after 1 s of warm-up. Twice each, alternating:
# with the embedded store, and with two local memcached servers. For the
# memcached runs it counts the operations the servers saw (get, set,
# incr, decr, delete from their stats) against the messages sent, warm-up
# included: the round trips per message.
# Then the feed rate: mxgatectl feed of 200k text updates (new records,
# the same records again, then an "add" to each) into the same servers.
#
# Needs: smtp-sink (postfix), memcached, openssl, a built build/proxy/mxgate.
# Traffic only on 127.0.0.1. About 55 s.
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SINK=$(port); P1=$(port); P2=$(port)
gcc -std=c11 -D_GNU_SOURCE -O2 -o $W/mxload $ROOT/tests/bench/mxload.c -lssl -lcrypto
smtp-sink -u nobody 127.0.0.1:$SINK 512 & SINKPID=$!
memcached -u nobody -l 127.0.0.1 -p $P1 -U 0 -m 256 & M1=$!
memcached -u nobody -l 127.0.0.1 -p $P2 -U 0 -m 256 & M2=$!
trap 'kill $SINKPID $M1 $M2 2>/dev/null; rm -rf "$W"' EXIT
openssl rand -hex 32 > $W/key
sleep 0.5
mcstat() { python3 - $P1 $P2 <<'EOP'
import socket, sys
t = 0
for p in sys.argv[1:]:
    s = socket.create_connection(("127.0.0.1", int(p)))
    s.sendall(b"stats\r\n")
    buf = b""
    while not buf.endswith(b"END\r\n"):
        buf += s.recv(65536)
    for line in buf.decode().splitlines():
        f = line.split()
        if len(f) == 3 and f[1] in ("cmd_get", "cmd_set", "incr_misses", "incr_hits", "decr_misses", "decr_hits", "delete_misses", "delete_hits"):
            t += int(f[2])
print(t)
EOP
}
run() { # NAME extra-args...
    local name=$1; shift
    local MX=$(port)
    $ROOT/build/proxy/mxgate -o smtp.listen=127.0.0.1:$MX -o admin.listen= -o backend.servers=127.0.0.1:$SINK \
      -o backend.forward=none -o clamav.enabled=false -o log.level=warning \
      -o ratelimit:persender.key=sender -o ratelimit:persender.count=messages \
      -o ratelimit:persender.limit=100000000 -o ratelimit:persender.window=3600 "$@" 2>$W/$name.log & local pid=$!
    sleep 1
    local before=$(mcstat)
    local out=$($W/mxload -c 20 -s 2048 -t 8 -w 1 -H bench.example 127.0.0.1:$MX 2>&1 | tail -1)
    local after=$(mcstat)
    kill $pid; wait $pid 2>/dev/null || true
    echo "$name: $out"
    echo "$name: memcached ops during the run (warm-up included): $((after - before))"
}
for r in 1 2; do
run embedded
run memcached -o cluster.memcached="127.0.0.1:$P1;127.0.0.1:$P2" -o cluster.key_file=$W/key
done

# The feed: 200k updates of distinct IPs, three passes.
printf '[cluster]\nmemcached = 127.0.0.1:%s;127.0.0.1:%s\nkey_file = %s/key\n' $P1 $P2 $W > $W/ctl.conf
python3 - $W <<'EOP'
import random, sys
random.seed(7)
w = sys.argv[1]
with open(w + "/feed.txt", "w") as f, open(w + "/add.txt", "w") as g:
    for i in range(200000):
        ip = "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255)
        f.write("ip %s set %d 86400\n" % (ip, random.randint(-100, 100)))
        g.write("ip %s add -1\n" % ip)
EOP
for f in feed feed add; do
    echo "feed ($f.txt, 200000 lines): $($ROOT/build/proxy/mxgatectl -c $W/ctl.conf feed $W/$f.txt 2>&1 | tail -1)"
done
