#!/bin/bash
# tests/bench/store-bench.sh: what the cluster checks cost per message.
#
# One mxgate in front of smtp-sink, scanning off (to isolate the store),
# reputation on (the default) and one rate limit rule (sender, messages,
# a limit no run reaches), driven by mxload at c=20 with 2 KB messages,
# one per session, for 8 s after 1 s of warm-up. ROUNDS times each (4),
# alternating: with the embedded store, and with two local memcached
# servers. For the memcached runs, per message sent (warm-up included):
# the round trips and commands mxgate counted (/metrics:
# mxgate_store_round_trips_total, mxgate_store_commands_total; a pipelined
# batch is one round trip per server), and the commands the servers
# counted (get, set, touch, incr, decr, delete from their stats).
# Then the feed rate: mxgatectl feed of 200k text updates (new records,
# the same records again, then an "add" to each) into the same servers.
#
# LAYOUT (default "shared pinned") says where the processes run:
#   shared  every process on every core: the gateway, the load generator,
#           the sink and the two memcached servers take turns on the same
#           cores, so memcached's own work and the scheduling around each
#           round trip are charged to the gateway's throughput;
#   pinned  the gateway alone on the last core, everything else (load
#           generator, sink, memcached) on the others: the layout of a
#           deployment, where the memcached servers are hosts of their own
#           and the gateway node's cores are the gateway's. Needs 2 cores.
# Each layout gets its ROUNDS pairs and its own comparison. Every run also
# reports the gateway's CPU per message (user + system, /proc/PID/stat,
# warm-up and drain included).
#
# Needs: smtp-sink (postfix), memcached, openssl, a built build/proxy/mxgate.
# Traffic only on 127.0.0.1. About 80 s per layout.
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SINK=$(port); P1=$(port); P2=$(port)
BENCH=$ROOT/tests/bench
gcc -std=c11 -D_GNU_SOURCE -O2 -o $W/mxload $BENCH/mxload.c $BENCH/mxload_session.c \
    $BENCH/mxload_tls.c $BENCH/mxload_stats.c -lssl -lcrypto
NCPU=$(nproc)
OTHERS=0-$((NCPU - 2)); LAST=$((NCPU - 1))
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
# place PIDS... on CPULIST, every thread of each
place() { local cpus=$1; shift; for p in "$@"; do taskset -a -p -c $cpus $p >/dev/null; done; }
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
run() { # NAME extra-args...
    local name=$1; shift
    local MX=$(port) ADM=$(port) PIN_MX="" PIN_LOAD=""
    if [ "$layout" = pinned ]; then PIN_MX="taskset -c $LAST"; PIN_LOAD="taskset -c $OTHERS"; fi
    $PIN_MX $ROOT/build/proxy/mxgate -o smtp.listen=127.0.0.1:$MX -o admin.listen=127.0.0.1:$ADM -o backend.servers=127.0.0.1:$SINK \
      -o backend.forward=none -o clamav.enabled=false -o log.level=warning \
      -o ratelimit:persender.key=sender -o ratelimit:persender.count=messages \
      -o ratelimit:persender.limit=100000000 -o ratelimit:persender.window=3600 "$@" 2>$W/$name.log & local pid=$!
    sleep 1
    local before=$(mcstat) t0=$(ticks $pid)
    local out=$($PIN_LOAD $W/mxload -c 20 -s 2048 -t 8 -w 1 -H bench.example 127.0.0.1:$MX 2>&1 | tail -1)
    local after=$(mcstat) t1=$(ticks $pid)
    # mxgate's own count: request/reply exchanges and commands
    local mine=$(python3 - $ADM <<'EOP'
import sys, urllib.request
m = {}
for line in urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1]).read().decode().splitlines():
    f = line.split()
    if len(f) == 2 and not line.startswith("#"):
        m[f[0]] = f[1]
print(m.get("mxgate_store_round_trips_total", "0"), m.get("mxgate_store_commands_total", "0"))
EOP
)
    kill $pid; wait $pid 2>/dev/null || true
    local rate=$(echo "$out" | sed -nE 's/.* msgs_per_s=([0-9.]+).*/\1/p')
    local total=$(echo "$out" | sed -nE 's/.* total_msgs=([0-9]+).*/\1/p')
    local us=$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / (total > 0 ? total : 1) ))
    echo "$layout $name: $out"
    echo "$layout $name: memcached ops during the run (warm-up included): $((after - before)); mxgate's round trips, commands: $mine; mxgate CPU per message: $us us"
    echo "$layout $name $rate $total $((after - before)) $mine $us" >> $W/results
}
# Runs on a shared 2-core machine vary by several percent from one to the
# next: ROUNDS pairs (default 4), the order alternating within each pair
# so that drift favours neither, and the medians compared.
ROUNDS=${ROUNDS:-4}
LAYOUT=${LAYOUT:-shared pinned}
MC="-o cluster.memcached=127.0.0.1:$P1;127.0.0.1:$P2 -o cluster.key_file=$W/key"
for layout in $LAYOUT; do
    case $layout in
    shared) place 0-$LAST $SINKPID $M1 $M2 ;;
    pinned) [ $NCPU -ge 2 ] || { echo "pinned layout needs 2 cores, skipped"; continue; }
            place $OTHERS $SINKPID $M1 $M2 ;;
    *) echo "unknown layout $layout" >&2; exit 2 ;;
    esac
    for r in $(seq 1 $ROUNDS); do
        if [ $((r % 2)) -eq 1 ]; then run embedded; run memcached $MC
        else run memcached $MC; run embedded; fi
    done
done
python3 - $W/results <<'EOP'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    layout, name, rate, total, ops, rts, cmds, us = line.split()
    runs.setdefault(layout, {}).setdefault(name, []).append(
        (float(rate), int(total), int(ops), int(rts), int(cmds), int(us)))
for layout, byname in runs.items():
    med = {n: statistics.median(r[0] for r in v) for n, v in byname.items()}
    cpu = {n: statistics.median(r[5] for r in v) for n, v in byname.items()}
    print("layout %s:" % layout)
    for n, v in byname.items():
        print("  %s: msgs/s %s, median %.1f; mxgate CPU us/msg %s, median %d"
              % (n, " ".join("%.0f" % r[0] for r in v), med[n], " ".join(str(r[5]) for r in v), cpu[n]))
    mc = byname["memcached"]
    msgs = sum(r[1] for r in mc)
    print("  memcached, per message: %.3f round trips (mxgate's count), %.2f commands (mxgate's count), "
          "%.2f commands (the servers' count)" % (sum(r[3] for r in mc) / msgs, sum(r[4] for r in mc) / msgs,
                                                  sum(r[2] for r in mc) / msgs))
    print("  memcached / embedded throughput (medians): %.1f%%; mxgate CPU per message: %.1f%%"
          % (100 * med["memcached"] / med["embedded"], 100.0 * cpu["memcached"] / cpu["embedded"]))
EOP

# The feed: 200k updates of distinct IPs, three passes.
place 0-$LAST $SINKPID $M1 $M2
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
