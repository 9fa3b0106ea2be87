#!/usr/bin/env bash
# tests/bench/run.sh: throughput, latency and memory benchmark of mxgate.
#
# One command, about three and a half minutes, traffic only on 127.0.0.1:
#
#   tests/bench/run.sh              # everything
#   TLS=only tests/bench/run.sh     # only the STARTTLS part (about a minute)
#   TLS=0 tests/bench/run.sh        # everything but STARTTLS (about three minutes)
#   SKIP_SCAN=1 SKIP_SIGSCALE=1 tests/bench/run.sh   # no libclamav scanning at all
#
# It starts one smtp-sink and one mxgate relaying to it (backend.forward=
# xclient), drives the same load straight into the sink ("direct") and
# through mxgate ("via"), and prints a table; then it holds idle sessions
# open against a fresh mxgate to measure the memory one costs. These
# mxgate instances run with clamav.enabled=false: they measure the proxy
# alone, comparable with the numbers from before scanning existed.
#
# The scan part runs one more mxgate, mxgate-scan, with libclamav scanning on
# (the signature set of deploy/clamav/make-test-db.sh, made in the work
# directory) against the same sink, at c=20 for 2 KB and 100 KB, in turn
# with the direct and via runs of those scenarios: msgs/s, scan/direct,
# mxgate CPU per message and its memory. The signature-scaling part then
# starts one scanning mxgate per signature set (the test set alone, and
# with 10k and 100k random body signatures from make-bench-sigs.sh added)
# and reports load time, memory, msgs/s and scan time for 100 KB; both
# print what libclamav alone costs per scan on the same signatures
# (clscan.c, one thread). The TLS part runs another mxgate (no scanning)
# with a throwaway self-signed certificate and a ticket
# key file, and compares plaintext sessions with STARTTLS sessions doing
# full and resumed handshakes: msgs/s, latency and mxgate's CPU per
# handshake. See tests/bench/README.md for what each number means.
#
# This is a measurement, not a test: it exits 0 whether or not the targets
# are met, and non-zero only when the benchmark itself could not run.
#
# Settings (environment):
#   MXGATE=path      daemon binary (default: build/proxy/mxgate; built if absent)
#   MXLOAD=path      load generator (default: compiled from mxload*.c into the work dir)
#   DURATION=1.5     measured seconds per run
#   WARMUP=0.5       seconds per run before measuring starts
#   REPEAT=5         runs per scenario and path; the table shows medians
#   SIZES="2048 102400"   message sizes in bytes (header + body)
#   CONCS="1 20"     concurrent sessions
#   MULTI=10         also run 2 KB with MULTI messages per session (0: skip)
#   WORKERS=0        mxgate smtp.workers (0: one per core)
#   IDLE_SESSIONS=1000
#   KEEP=1           keep the work directory (logs, raw results)
#   RAW=path         also copy the raw per-run results there
#   SKIP_SCAN=1      skip the scan runs
#   SCAN_SIZES="2048 102400"   message sizes of the scan runs
#   SCAN_CONC=20     concurrent sessions of the scan runs (1 message per session)
#   SCAN_THREADS=0   clamav.threads of the scanning mxgate (0: one per core)
#   SCAN_TMPDIR=dir  clamav.tmpdir (default: a directory of its own under
#                    /dev/shm, tmpfs, as mxgate's default clamav.tmpdir)
#   SCAN_UNIQUE=1    scan runs send a different body in every message (mxload -u),
#                    as real mail does; 0: the same body every time, which
#                    libclamav's cache answers for the decoded body part
#   SKIP_SIGSCALE=1  skip the signature-scaling runs
#   SIGSCALE_SETS="0 10000 100000"   random signatures added to the test set
#   SIGSCALE_REPEAT=2   runs per signature set; the table shows medians
#   SIGSCALE_SIZE=102400   message size of the signature-scaling runs
#   SKIP_TLS=1       the same as TLS=0
#   TLS=1            1: also the STARTTLS part; 0: skip it; only: nothing else
#   TLS_VERSIONS="1.3 1.2"   protocol versions, each measured on its own
#   TLS_REPEAT=3     runs per TLS mode and version; the table shows medians
#   TLS_KEY=rsa:2048 certificate key: rsa:BITS or ec:CURVE (e.g. ec:prime256v1)
#   TLS_CONC=20      concurrent sessions in the TLS part
#   TLS_SIZE=2048    message size in the TLS part (one message per session)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-1.5}
WARMUP=${WARMUP:-0.5}
REPEAT=${REPEAT:-5}
SIZES=${SIZES:-"2048 102400"}
CONCS=${CONCS:-"1 20"}
MULTI=${MULTI:-10}
WORKERS=${WORKERS:-0}
IDLE_SESSIONS=${IDLE_SESSIONS:-1000}
KEEP=${KEEP:-0}
TLS=${TLS:-1}
[ "${SKIP_TLS:-0}" = 1 ] && TLS=0
SKIP_SCAN=${SKIP_SCAN:-0}
SCAN_SIZES=${SCAN_SIZES:-"2048 102400"}
SCAN_CONC=${SCAN_CONC:-20}
SCAN_THREADS=${SCAN_THREADS:-0}
SCAN_UNIQUE=${SCAN_UNIQUE:-1}
SKIP_SIGSCALE=${SKIP_SIGSCALE:-0}
SIGSCALE_SETS=${SIGSCALE_SETS:-"0 10000 100000"}
SIGSCALE_REPEAT=${SIGSCALE_REPEAT:-2}
SIGSCALE_SIZE=${SIGSCALE_SIZE:-102400}
TLS_VERSIONS=${TLS_VERSIONS:-"1.3 1.2"}
TLS_REPEAT=${TLS_REPEAT:-3}
TLS_KEY=${TLS_KEY:-rsa:2048}
TLS_CONC=${TLS_CONC:-20}
TLS_SIZE=${TLS_SIZE:-2048}
case "$TLS" in 0 | 1 | only) ;; *) echo "run.sh: TLS=$TLS: 0, 1 or only" >&2; exit 2 ;; esac
# Scanning runs at all? (TLS=only runs nothing else.)
SCAN_ANY=0
[ "$TLS" != only ] && { [ "$SKIP_SCAN" != 1 ] || [ "$SKIP_SIGSCALE" != 1 ]; } && SCAN_ANY=1

# Targets, printed next to the numbers.
TARGET_RATIO=0.50      # c=20, 2 KB: via msgs/s >= 50 % of direct
TARGET_ADDED_P50=1.0   # c=1: added p50 latency <= 1 ms
TARGET_IDLE_KIB=16     # <= 16 KiB per idle session
TARGET_SCAN_RATIO_2K=0.35    # c=20, 2 KB: scan msgs/s >= 35 % of direct
TARGET_SCAN_RATIO_100K=0.30  # c=20, 100 KB: scan msgs/s >= 30 % of direct
TARGET_SCAN_CPU_MS=5         # c=20, 100 KB: <= 5 ms of mxgate CPU per message, scan included

log() { printf '%s\n' "$*" >&2; }
die() { log "run.sh: $*"; exit 1; }

for tool in smtp-sink smtp-source ss awk; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
        die "$tool not found (smtp-sink/smtp-source come with the postfix package)"
done
[ "$TLS" = 0 ] || command -v openssl >/dev/null 2>&1 ||
    die "openssl not found (the TLS part makes its certificate with it; TLS=0 skips it)"
[ "$SCAN_ANY" = 0 ] || command -v sigtool >/dev/null 2>&1 ||
    die "sigtool not found (the clamav package; the scan parts make their signatures with it; SKIP_SCAN=1 SKIP_SIGSCALE=1 skip them)"
export PATH="$PATH:/usr/sbin"

# ---- processes we start, and their cleanup ----

WORK=$(mktemp -d /tmp/mxbench.XXXXXX)
PIDS=()

forget_pid() { # drop a reaped child from PIDS: its number may be reused
    local p keep=()
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL
    local pid=$1
    forget_pid "$pid"
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "run.sh: pid $pid did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        stop_pid "$pid"
    done
    if [ "$KEEP" = 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    if [ -n "${SHM_TMP:-}" ]; then
        rm -rf "$SHM_TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- binaries ----

MXGATE_SRC=${MXGATE:-$ROOT/build/proxy/mxgate}
if [ ! -x "$MXGATE_SRC" ]; then
    [ -z "${MXGATE:-}" ] || die "MXGATE=$MXGATE is not executable"
    log "building mxgate in $ROOT/build ..."
    if ! { cmake -S "$ROOT" -B "$ROOT/build" -DMX_WERROR=ON >"$WORK/cmake.log" 2>&1 &&
        cmake --build "$ROOT/build" -j2 --target mxgate >>"$WORK/cmake.log" 2>&1; }; then
        tail -20 "$WORK/cmake.log" >&2
        die "mxgate build failed"
    fi
fi
# A private copy: a rebuild during the run cannot swap the binary under us.
cp "$MXGATE_SRC" "$WORK/mxgate"
MXGATE_BIN=$WORK/mxgate

if [ -n "${MXLOAD:-}" ]; then
    MXLOAD_BIN=$MXLOAD
else
    MXLOAD_BIN=$WORK/mxload
    ${CC:-cc} -std=c11 -O2 -Wall -Wextra -o "$MXLOAD_BIN" "$HERE/mxload.c" \
        "$HERE/mxload_session.c" "$HERE/mxload_tls.c" "$HERE/mxload_stats.c" -lssl -lcrypto ||
        die "cannot compile mxload (it needs the OpenSSL headers: libssl-dev)"
fi

# clscan: libclamav alone, one thread, mxgate's options (clscan.c).
CLSCAN_BIN=
if [ "$SCAN_ANY" = 1 ]; then
    if ${CC:-cc} -std=c11 -O2 -Wall -Wextra -o "$WORK/clscan" "$HERE/clscan.c" -lclamav \
        >"$WORK/clscan-cc.log" 2>&1; then
        CLSCAN_BIN=$WORK/clscan
    else
        log "run.sh: cannot compile clscan.c (it needs libclamav-dev); the libclamav-alone figures are left out"
    fi
fi

# Every idle session is one descriptor in mxload and one in mxgate.
need_fds=$((IDLE_SESSIONS + 512))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
    ulimit -n "$need_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" ||
        die "cannot raise ulimit -n to $need_fds"
fi

# ---- helpers ----

pick_port() { # a free port below the ephemeral range
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        if [ -z "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ] &&
            ! grep -qx "$p" "$WORK/ports" 2>/dev/null; then
            echo "$p" >>"$WORK/ports"
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

wait_listen() { # wait_listen PORT PID NAME [TRIES]: TRIES x 50 ms (default 5 s)
    for _ in $(seq "${4:-100}"); do
        [ -n "$(ss -Htln "( sport = :$1 )" 2>/dev/null)" ] && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited at start (see $WORK/$3.log)"
        sleep 0.05
    done
    die "$3 does not listen on port $1"
}

kv() { # kv KEY LINE: the value of KEY=... in a result line
    local k=$1 line=$2
    line=" $line"
    case "$line" in
        *" $k="*) line=${line#*" $k="}; echo "${line%% *}" ;;
        *) echo "" ;;
    esac
}

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
# Ticks the whole machine was busy, and all ticks, from /proc/stat.
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# Background: CPU that neither the sink, mxgate nor mxload used, as a share
# of the machine. Other work on the box makes the numbers noisy.
bg_pct() { # bg_pct BUSY_TICKS ALL_TICKS DAEMON_TICKS MXLOAD_CPU_S
    awk -v b="$1" -v a="$2" -v ours="$3" -v l="$4" -v hz="$CLK_TCK" \
        'BEGIN { x = a > 0 ? (b - ours - l * hz) / a * 100 : 0; printf "%.0f", (x < 0 ? 0 : x) }'
}

# Without scanning (clamav.enabled=false): the proxy alone. Later -o
# settings win, so start_scan_mxgate turns it on.
start_mxgate() { # start_mxgate NAME PORT [-o opt=value ...]: sets MX_PID
    local name=$1 port=$2
    shift 2
    "$MXGATE_BIN" -o "smtp.listen=127.0.0.1:$port" -o "backend.servers=127.0.0.1:$SINK_PORT" \
        -o backend.forward=xclient -o admin.listen= -o log.level=warning \
        -o "smtp.workers=$WORKERS" -o smtp.drain_timeout=2 -o clamav.enabled=false \
        "$@" >"$WORK/$name.log" 2>&1 &
    MX_PID=$!
    PIDS+=("$MX_PID")
    # A scanning mxgate listens once its engine is loaded, compiled and has
    # passed the EICAR canary: give a large signature set two minutes.
    wait_listen "$port" "$MX_PID" "$name" "${START_TRIES:-100}"
}

# With libclamav scanning; log.level=info for the per-message lines (scan=,
# scan_ms=) and the clamav_loaded line. clamav.add_header stays at its
# default (on).
start_scan_mxgate() { # start_scan_mxgate NAME PORT DBDIR [-o opt=value ...]: sets MX_PID
    local name=$1 port=$2 db=$3 START_TRIES=2400
    shift 3
    start_mxgate "$name" "$port" -o clamav.enabled=true -o "clamav.database=$db" \
        -o "clamav.tmpdir=$SCAN_TMP" -o "clamav.threads=$SCAN_THREADS" -o log.level=info "$@"
}

# The clamav_loaded line: "SIGNATURES LOAD_MS" ("compiled in N ms" times
# cl_load, cl_engine_compile and the first EICAR canary).
clam_loaded() { # clam_loaded LOG
    awk '/ event=clamav_loaded / {
        s = "-"; ms = "-"
        if (match($0, /: [0-9]+ signatures/)) { s = substr($0, RSTART + 2, RLENGTH - 2); sub(/ .*/, "", s) }
        if (match($0, /compiled in [0-9]+ ms/)) { ms = substr($0, RSTART + 12, RLENGTH - 12); sub(/ .*/, "", ms) }
        print s, ms; exit
    }' "$1"
}

# Verdicts and mean scan_ms of the message lines in LOG after line FROM:
# "messages clean infected error mean_scan_ms" (mxgate logs scan_ms with
# two decimals).
scan_stats() { # scan_stats LOG FROM
    tail -n "+$(($2 + 1))" "$1" | awk '/ event=message / {
        n++
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^scan=/) v[substr($i, 6)]++
            else if ($i ~ /^scan_ms=/) t += substr($i, 9)
        }
    }
    END { printf "%d %d %d %d %.2f\n", n, v["clean"], v["infected"], v["error"], (n ? t / n : 0) }'
}
log_lines() { wc -l <"$1"; }

# libclamav alone on the same signatures, temp directory and options:
# "cpu_us wall_us" per scan, or "- -".
clscan_run() { # clscan_run DBDIR SIZE SCANS
    local out
    [ -n "$CLSCAN_BIN" ] || { echo "- -"; return 0; }
    out=$("$CLSCAN_BIN" -d "$1" -t "$SCAN_TMP" -s "$2" -n "$3" "${UNIQUE_OPT[@]}" 2>>"$WORK/clscan.err") ||
        { echo "- -"; return 0; }
    echo "$(kv cpu_us "$out") $(kv wall_us "$out")"
}
UNIQUE_OPT=()
[ "$SCAN_UNIQUE" = 1 ] && UNIQUE_OPT=(-u)

# ---- start the sink ----

SINK_PORT=$(pick_port)
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
# -m: simultaneous connections it serves (direct + via sessions at once)
smtp-sink "${sink_user[@]}" -m 1000 "127.0.0.1:$SINK_PORT" 1024 >"$WORK/smtp-sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_listen "$SINK_PORT" "$SINK_PID" smtp-sink

loadavg() { awk '{ print $1, $2, $3 }' /proc/loadavg; }
LOAD_START=$(loadavg)
T0=$(date +%s)
mxgate_version=$("$MXGATE_BIN" --version 2>/dev/null || echo "mxgate ?")
git_rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?")
nworkers=$WORKERS
[ "$nworkers" = 0 ] && nworkers="$(nproc) (one per core)"

if [ "$TLS" != only ]; then
    # ---- idle sessions: memory per session, on a fresh mxgate ----

    IDLE_PORT=$(pick_port)
    start_mxgate mxgate-idle "$IDLE_PORT"
    IDLE_PID=$MX_PID
    # Warm up: the first sessions on each worker thread create its malloc
    # arena and touch the code; that is a one-off, not a per-session cost.
    "$MXLOAD_BIN" -I 50 -h 0 "127.0.0.1:$IDLE_PORT" >"$WORK/idle-warmup.out" 2>&1 || true
    sleep 0.3
    idle_rss_before=$(status_kib "$IDLE_PID" VmRSS)
    "$MXLOAD_BIN" -I "$IDLE_SESSIONS" -h 60 "127.0.0.1:$IDLE_PORT" >"$WORK/idle.out" 2>"$WORK/idle.err" &
    IDLE_LOAD_PID=$!
    PIDS+=("$IDLE_LOAD_PID")
    for _ in $(seq 300); do
        grep -q 'state=ready' "$WORK/idle.out" 2>/dev/null && break
        kill -0 "$IDLE_LOAD_PID" 2>/dev/null || break
        sleep 0.1
    done
    idle_ready=$(grep 'state=ready' "$WORK/idle.out" || true)
    [ -n "$idle_ready" ] || { cat "$WORK/idle.err" >&2; die "idle sessions did not open"; }
    sleep 0.5 # let both workers finish with the last EHLOs
    idle_open=$(kv open "$idle_ready")
    idle_rss_after=$(status_kib "$IDLE_PID" VmRSS)
    idle_fds=$(find "/proc/$IDLE_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    kill -USR1 "$IDLE_LOAD_PID"
    wait "$IDLE_LOAD_PID" || true
    forget_pid "$IDLE_LOAD_PID"
    idle_done=$(grep 'state=done' "$WORK/idle.out" || true)
    sleep 0.3
    idle_rss_closed=$(status_kib "$IDLE_PID" VmRSS)
    stop_pid "$IDLE_PID"
    e1=$(kv errors "$idle_ready") e2=$(kv errors "$idle_done")
    idle_errors=$(( ${e1:-0} + ${e2:-0} ))
    [ -n "$idle_done" ] || idle_errors="$idle_errors (mxload did not finish the QUITs)"
    idle_kib=$(awk -v a="$idle_rss_after" -v b="$idle_rss_before" -v n="$idle_open" \
        'BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "n/a" }')

    # ---- load: direct and via mxgate ----

    MX_PORT=$(pick_port)
    start_mxgate mxgate "$MX_PORT"
    LOAD_PID=$MX_PID
    SCAN_PID=
    CHECK_PORTS=("$SINK_PORT" "$MX_PORT")

    if [ "$SCAN_ANY" = 1 ]; then
        # The signature set of deploy/clamav/make-test-db.sh (EICAR by MD5
        # and one body marker), and libclamav's temp directory.
        SCAN_DB=$WORK/clamav-db
        sh "$ROOT/deploy/clamav/make-test-db.sh" "$SCAN_DB" >"$WORK/make-test-db.log" 2>&1 ||
            { cat "$WORK/make-test-db.log" >&2; die "deploy/clamav/make-test-db.sh failed"; }
        if [ -n "${SCAN_TMPDIR:-}" ]; then
            SCAN_TMP=$SCAN_TMPDIR
        else
            SCAN_TMP=$(mktemp -d /dev/shm/mxbench-clamav.XXXXXX)
            SHM_TMP=$SCAN_TMP
        fi
        mkdir -p "$SCAN_TMP"
        scan_tmp_fs=$(stat -f -c %T "$SCAN_TMP" 2>/dev/null || echo "?")
    fi
    if [ "$SKIP_SCAN" != 1 ]; then
        SCAN_PORT=$(pick_port)
        start_scan_mxgate mxgate-scan "$SCAN_PORT" "$SCAN_DB"
        SCAN_PID=$MX_PID
        read -r scan_sigs scan_load_ms < <(clam_loaded "$WORK/mxgate-scan.log")
        scan_rss_loaded=$(status_kib "$SCAN_PID" VmRSS)
        scan_threads=$SCAN_THREADS
        [ "$scan_threads" = 0 ] && scan_threads="$(nproc) (one per core)"
        CHECK_PORTS+=("$SCAN_PORT")
    fi

    # Check the setup end to end before measuring anything.
    for port in "${CHECK_PORTS[@]}"; do
        out=$("$MXLOAD_BIN" -c 4 -n 200 -w 0 -t 10 "127.0.0.1:$port" 2>&1) ||
            { log "$out"; tail -5 "$WORK/mxgate.log" >&2; die "sanity run against port $port failed"; }
    done
    if [ -n "$SCAN_PID" ]; then
        read -r n_msg n_clean _ <<<"$(scan_stats "$WORK/mxgate-scan.log" 0)"
        [ "$n_msg" -gt 0 ] && [ "$n_clean" = "$n_msg" ] ||
            { tail -5 "$WORK/mxgate-scan.log" >&2; die "the scanning mxgate did not log scan=clean for the sanity run"; }
    fi

    RUNS=$WORK/runs.txt
    : >"$RUNS"

    # CPU ticks of the daemons of this part together (sink, mxgate and
    # the scanning mxgate), for the background share.
    daemon_ticks() {
        local t p
        t=$(cpu_ticks "$SINK_PID")
        for p in "$LOAD_PID" ${SCAN_PID:+"$SCAN_PID"}; do
            t=$((t + $(cpu_ticks "$p")))
        done
        echo "$t"
    }

    # via: mxgate without scanning; scan: the scanning mxgate. Their CPU is
    # taken over the whole run, warm-up and drain included, per message.
    run_one() { # run_one ID REP MODE PORT CONC SIZE PER
        local id=$1 rep=$2 mode=$3 port=$4 conc=$5 size=$6 per=$7
        local line m0 m1 d0 d1 busy0 all0 busy1 all1 cpu=- rss=- hwm=- bg
        local pid=$LOAD_PID opts=() l0=0 scan="" sn sc si se sms
        if [ "$mode" = scan ]; then
            # VmHWM is not reset here: after the runs it is the peak of the
            # process's life, engine load included.
            pid=$SCAN_PID
            opts=("${UNIQUE_OPT[@]}")
            l0=$(log_lines "$WORK/mxgate-scan.log")
        else
            echo 5 >"/proc/$LOAD_PID/clear_refs" 2>/dev/null || true # reset VmHWM
        fi
        m0=$(cpu_ticks "$pid")
        d0=$(daemon_ticks)
        read -r busy0 all0 < <(machine_ticks)
        line=$("$MXLOAD_BIN" -c "$conc" -s "$size" -m "$per" -t "$DURATION" -w "$WARMUP" \
            "${opts[@]}" "127.0.0.1:$port" 2>>"$WORK/mxload.err") || true
        read -r busy1 all1 < <(machine_ticks)
        m1=$(cpu_ticks "$pid")
        d1=$(daemon_ticks)
        [ -n "$line" ] || die "mxload printed nothing (see $WORK/mxload.err)"
        bg=$(bg_pct $((busy1 - busy0)) $((all1 - all0)) $((d1 - d0)) "$(kv cpu_s "$line")")
        if [ "$mode" != direct ]; then
            cpu=$(awk -v t=$((m1 - m0)) -v hz="$CLK_TCK" -v n="$(kv total_msgs "$line")" \
                'BEGIN { printf "%.0f", (n > 0 ? t / hz * 1e6 / n : 0) }')
            rss=$(status_kib "$pid" VmRSS)
            hwm=$(status_kib "$pid" VmHWM)
        fi
        if [ "$mode" = scan ]; then
            read -r sn sc si se sms <<<"$(scan_stats "$WORK/mxgate-scan.log" "$l0")"
            scan="scan_n=$sn scan_clean=$sc scan_infected=$si scan_error=$se scan_ms_mean=$sms "
        fi
        echo "id=$id rep=$rep path=$mode cpu_us=$cpu rss_kib=$rss hwm_kib=$hwm bg_pct=$bg $scan$line" >>"$RUNS"
    }

    SCEN=() # "id conc size per"
    for size in $SIZES; do
        for conc in $CONCS; do
            SCEN+=("s${size}c${conc}m1 $conc $size 1")
        done
    done
    if [ "$MULTI" -gt 1 ]; then
        for conc in $CONCS; do
            SCEN+=("s2048c${conc}m$MULTI $conc 2048 $MULTI")
        done
    fi
    # The scan scenarios run direct, via and scan in turn; one that SIZES
    # and CONCS do not hold already is added.
    SCAN_IDS=" "
    if [ -n "$SCAN_PID" ]; then
        for size in $SCAN_SIZES; do
            id="s${size}c${SCAN_CONC}m1"
            SCAN_IDS+="$id "
            case " ${SCEN[*]} " in
                *" $id "*) ;;
                *) SCEN+=("$id $SCAN_CONC $size 1") ;;
            esac
        done
    fi

    nruns=0
    for sc in "${SCEN[@]}"; do
        case "$SCAN_IDS" in *" ${sc%% *} "*) nruns=$((nruns + 3 * REPEAT)) ;; *) nruns=$((nruns + 2 * REPEAT)) ;; esac
    done
    nscan=$(( $(wc -w <<<"$SCAN_IDS") ))
    log "mxgate benchmark: ${#SCEN[@]} scenarios x $REPEAT repeats x (direct, via) + $nscan x $REPEAT scan runs, ${DURATION}s + ${WARMUP}s warm-up each ($nruns runs)"
    k=0
    for sc in "${SCEN[@]}"; do
        read -r id conc size per <<<"$sc"
        for rep in $(seq "$REPEAT"); do
            run_one "$id" "$rep" direct "$SINK_PORT" "$conc" "$size" "$per"
            run_one "$id" "$rep" via "$MX_PORT" "$conc" "$size" "$per"
            k=$((k + 2))
            case "$SCAN_IDS" in
                *" $id "*)
                    run_one "$id" "$rep" scan "$SCAN_PORT" "$conc" "$size" "$per"
                    k=$((k + 1)) ;;
            esac
            printf '\r  %d/%d runs' "$k" "$nruns" >&2
        done
    done
    printf '\n' >&2
    if [ -n "$SCAN_PID" ]; then
        scan_rss_end=$(status_kib "$SCAN_PID" VmRSS)
        scan_hwm_end=$(status_kib "$SCAN_PID" VmHWM)
        read -r scan_total scan_clean scan_infected scan_errors _ <<<"$(scan_stats "$WORK/mxgate-scan.log" 0)"
        scan_warnings=$(grep -E 'level=(warning|error)' "$WORK/mxgate-scan.log" | grep -vc 'event=clamav_disabled' || true)
        scan_alive=yes
        kill -0 "$SCAN_PID" 2>/dev/null || scan_alive="NO (it exited; see its log)"
        stop_pid "$SCAN_PID" # the signature-scaling part runs its own
        # The same scans without mxgate: what libclamav itself costs.
        for size in $SCAN_SIZES; do
            nscans=200
            [ "$size" -le 8192 ] && nscans=2000
            read -r a_cpu a_wall <<<"$(clscan_run "$SCAN_DB" "$size" "$nscans")"
            echo "id=s${size}c${SCAN_CONC}m1 rep=0 path=alone cpu_us=$a_cpu wall_us=$a_wall scans=$nscans" >>"$RUNS"
        done
    fi

    # ---- cross-check with smtp-source: c=20, 2 KB, one message per session ----

    # smtp-source -l counts the body only; its headers (From, To, Date,
    # Message-Id) add about 150 bytes.
    direct_rate=$(awk '/^id=s2048c20m1 rep=[0-9]+ path=direct / { for (i = 1; i <= NF; i++)
        if ($i ~ /^msgs_per_s=/) { sub(/.*=/, "", $i); print $i; exit } }' "$RUNS")
    src_n=$(awk -v r="${direct_rate:-2000}" -v d="$DURATION" \
        'BEGIN { n = int(r * d * 1.5); if (n < 2000) n = 2000; if (n > 50000) n = 50000; print n }')
    src_run() { # src_run PORT: prints msgs/s, or "failed"
        local t0 t1
        t0=$(date +%s%N)
        if smtp-source -s 20 -m "$src_n" -l 1900 -f bench-sender@example.com \
            -t bench-rcpt@example.net "127.0.0.1:$1" >>"$WORK/smtp-source.log" 2>&1; then
            t1=$(date +%s%N)
            awk -v n="$src_n" -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f", n / (ns / 1e9) }'
        else
            echo failed
        fi
    }
    src_direct=$(src_run "$SINK_PORT")
    src_via=$(src_run "$MX_PORT")

    # clamav_disabled: the one warning every mxgate without scanning logs at start
    mx_warnings=$(grep -E 'level=(warning|error)' "$WORK/mxgate.log" | grep -vc 'event=clamav_disabled' || true)
    mx_alive=yes
    kill -0 "$LOAD_PID" 2>/dev/null || mx_alive="NO (it exited; see its log)"
fi

# ---- signature-set scaling: one scanning mxgate per set, one at a time ----

if [ "$TLS" != only ] && [ "$SKIP_SIGSCALE" != 1 ]; then
    SIG_RUNS=$WORK/sigscale.txt
    : >"$SIG_RUNS"
    nsig=$(( $(wc -w <<<"$SIGSCALE_SETS") * SIGSCALE_REPEAT ))
    log "signature scaling: sets of $SIGSCALE_SETS extra signatures x $SIGSCALE_REPEAT runs, $SIGSCALE_SIZE bytes, c=$SCAN_CONC ($nsig runs)"
    k=0
    for n in $SIGSCALE_SETS; do
        case "$n" in '' | *[!0-9]*) die "SIGSCALE_SETS: $n is not a number" ;; esac
        sdir=$WORK/sigdb-$n
        mkdir -p "$sdir"
        cp "$SCAN_DB"/* "$sdir"/
        if [ "$n" -gt 0 ]; then
            sh "$HERE/make-bench-sigs.sh" "$n" "$sdir/mxgate-bench.ndb" || die "make-bench-sigs.sh $n failed"
        fi
        sname=mxgate-sig$n
        sport=$(pick_port)
        t0=$(date +%s%N)
        start_scan_mxgate "$sname" "$sport" "$sdir"
        t1=$(date +%s%N)
        spid=$MX_PID
        read -r sigs load_ms < <(clam_loaded "$WORK/$sname.log")
        rss_load=$(status_kib "$spid" VmRSS)
        for rep in $(seq "$SIGSCALE_REPEAT"); do
            l0=$(log_lines "$WORK/$sname.log")
            m0=$(cpu_ticks "$spid")
            d0=$(( $(cpu_ticks "$SINK_PID") + $(cpu_ticks "$LOAD_PID") ))
            read -r busy0 all0 < <(machine_ticks)
            line=$("$MXLOAD_BIN" -c "$SCAN_CONC" -s "$SIGSCALE_SIZE" -m 1 -t "$DURATION" -w "$WARMUP" \
                "${UNIQUE_OPT[@]}" "127.0.0.1:$sport" 2>>"$WORK/mxload.err") || true
            read -r busy1 all1 < <(machine_ticks)
            m1=$(cpu_ticks "$spid")
            d1=$(( $(cpu_ticks "$SINK_PID") + $(cpu_ticks "$LOAD_PID") ))
            [ -n "$line" ] || die "mxload printed nothing (see $WORK/mxload.err)"
            bg=$(bg_pct $((busy1 - busy0)) $((all1 - all0)) $((m1 - m0 + d1 - d0)) "$(kv cpu_s "$line")")
            cpu=$(awk -v t=$((m1 - m0)) -v hz="$CLK_TCK" -v n="$(kv total_msgs "$line")" \
                'BEGIN { printf "%.0f", (n > 0 ? t / hz * 1e6 / n : 0) }')
            read -r sn sc si se sms <<<"$(scan_stats "$WORK/$sname.log" "$l0")"
            echo "id=sig$n rep=$rep path=scan set=$n sigs=$sigs load_ms=$load_ms start_ms=$(((t1 - t0) / 1000000))" \
                "rss_load_kib=$rss_load cpu_us=$cpu bg_pct=$bg scan_n=$sn scan_clean=$sc scan_infected=$si" \
                "scan_error=$se scan_ms_mean=$sms $line" >>"$SIG_RUNS"
            k=$((k + 1))
            printf '\r  %d/%d runs' "$k" "$nsig" >&2
        done
        end_rss=$(status_kib "$spid" VmRSS) end_hwm=$(status_kib "$spid" VmHWM)
        kill -0 "$spid" 2>/dev/null || die "$sname exited during its runs (see $WORK/$sname.log)"
        stop_pid "$spid"
        read -r a_cpu a_wall <<<"$(clscan_run "$sdir" "$SIGSCALE_SIZE" 100)"
        echo "id=sig$n rep=0 path=end rss_kib=$end_rss hwm_kib=$end_hwm alone_cpu_us=$a_cpu alone_wall_us=$a_wall" >>"$SIG_RUNS"
    done
    printf '\n' >&2
fi

# ---- TLS: STARTTLS with full and resumed handshakes, against plaintext ----

if [ "$TLS" != 0 ]; then
    TLS_DIR=$WORK/tls
    mkdir -p "$TLS_DIR"
    case "$TLS_KEY" in
        rsa:[0-9]*) keyopt=(-newkey "$TLS_KEY") ;;
        ec:?*) keyopt=(-newkey ec -pkeyopt "ec_paramgen_curve:${TLS_KEY#ec:}") ;;
        *) die "TLS_KEY=$TLS_KEY: rsa:BITS or ec:CURVE" ;;
    esac
    # A throwaway self-signed certificate (mxload does not verify it) and
    # one 80-byte session ticket key, as a fleet would share them.
    openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj "/CN=mxgate-bench.invalid" \
        -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >"$WORK/openssl.log" 2>&1 ||
        { cat "$WORK/openssl.log" >&2; die "openssl req failed (TLS_KEY=$TLS_KEY)"; }
    (umask 077 && head -c 80 /dev/urandom >"$TLS_DIR/ticket.key")
    TLS_PORT=$(pick_port)
    # The same settings as the plaintext mxgate, plus the certificate.
    start_mxgate mxgate-tls "$TLS_PORT" -o "tls.cert=$TLS_DIR/cert.pem" \
        -o "tls.key=$TLS_DIR/key.pem" -o "tls.ticket_keys=$TLS_DIR/ticket.key"
    TLS_PID=$MX_PID

    # Idle TLS sessions, on the fresh mxgate-tls: the memory one costs once
    # it is past STARTTLS, the handshake and the second EHLO. The same
    # method as the plaintext idle test above.
    "$MXLOAD_BIN" -I 50 -h 0 -S full "127.0.0.1:$TLS_PORT" >"$WORK/tls-idle-warmup.out" 2>&1 || true
    sleep 0.3
    tls_idle_before=$(status_kib "$TLS_PID" VmRSS)
    "$MXLOAD_BIN" -I "$IDLE_SESSIONS" -h 60 -S full "127.0.0.1:$TLS_PORT" >"$WORK/tls-idle.out" 2>"$WORK/tls-idle.err" &
    TLS_IDLE_PID=$!
    PIDS+=("$TLS_IDLE_PID")
    for _ in $(seq 300); do
        grep -q 'state=ready' "$WORK/tls-idle.out" 2>/dev/null && break
        kill -0 "$TLS_IDLE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tls_idle_ready=$(grep 'state=ready' "$WORK/tls-idle.out" || true)
    [ -n "$tls_idle_ready" ] || { cat "$WORK/tls-idle.err" >&2; die "idle TLS sessions did not open"; }
    sleep 0.5
    tls_idle_open=$(kv open "$tls_idle_ready")
    tls_idle_after=$(status_kib "$TLS_PID" VmRSS)
    kill -USR1 "$TLS_IDLE_PID"
    wait "$TLS_IDLE_PID" || true
    forget_pid "$TLS_IDLE_PID"
    tls_idle_errors=$(kv errors "$tls_idle_ready")
    tls_idle_kib=$(awk -v a="$tls_idle_after" -v b="$tls_idle_before" -v n="$tls_idle_open" \
        'BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "n/a" }')

    TLS_PLAN=() # "version modes..."
    for ver in $TLS_VERSIONS; do
        case "$ver" in
            # reuse differs from resume only where a client uses a ticket once
            1.3) TLS_PLAN+=("1.3 plain full resume reuse") ;;
            1.2) TLS_PLAN+=("1.2 plain full resume") ;;
            *) die "TLS_VERSIONS: $ver is not 1.2 or 1.3" ;;
        esac
        out=$("$MXLOAD_BIN" -c 4 -n 100 -w 0 -t 10 -S resume -V "$ver" "127.0.0.1:$TLS_PORT" 2>&1) ||
            { log "$out"; tail -5 "$WORK/mxgate-tls.log" >&2; die "TLS $ver sanity run failed"; }
    done

    TLS_RUNS=$WORK/tls-runs.txt
    : >"$TLS_RUNS"
    run_tls_one() { # run_tls_one VERSION REP MODE
        local ver=$1 rep=$2 mode=$3 line m0 m1 s0 s1 busy0 all0 busy1 all1 n cpu bg tls=()
        [ "$mode" = plain ] || tls=(-S "$mode" -V "$ver")
        m0=$(cpu_ticks "$TLS_PID")
        s0=$(cpu_ticks "$SINK_PID")
        read -r busy0 all0 < <(machine_ticks)
        line=$("$MXLOAD_BIN" -c "$TLS_CONC" -s "$TLS_SIZE" -m 1 -t "$DURATION" -w "$WARMUP" \
            "${tls[@]}" "127.0.0.1:$TLS_PORT" 2>>"$WORK/mxload.err") || true
        read -r busy1 all1 < <(machine_ticks)
        m1=$(cpu_ticks "$TLS_PID")
        s1=$(cpu_ticks "$SINK_PID")
        [ -n "$line" ] || die "mxload printed nothing (see $WORK/mxload.err)"
        bg=$(bg_pct $((busy1 - busy0)) $((all1 - all0)) $((m1 - m0 + s1 - s0)) "$(kv cpu_s "$line")")
        # mxgate's CPU over the whole run (warm-up and drain included) per
        # handshake; plain: per message. One message per session, so both
        # are per session as long as no session fails.
        n=$(kv total_msgs "$line")
        [ "$mode" = plain ] || n=$(kv tls_handshakes "$line")
        cpu=$(awk -v t=$((m1 - m0)) -v hz="$CLK_TCK" -v n="$n" \
            'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
        echo "id=tls$ver rep=$rep path=$mode cpu_us=$cpu bg_pct=$bg $line" >>"$TLS_RUNS"
    }

    ntls=0
    for plan in "${TLS_PLAN[@]}"; do
        read -ra words <<<"$plan"
        ntls=$((ntls + (${#words[@]} - 1) * TLS_REPEAT))
    done
    log "TLS: versions $TLS_VERSIONS x $TLS_REPEAT repeats x (plain, full, resume[, reuse]), ${DURATION}s + ${WARMUP}s warm-up each ($ntls runs)"
    k=0
    for plan in "${TLS_PLAN[@]}"; do
        read -r ver modes <<<"$plan"
        for rep in $(seq "$TLS_REPEAT"); do
            for mode in $modes; do
                run_tls_one "$ver" "$rep" "$mode"
                k=$((k + 1))
                printf '\r  %d/%d runs' "$k" "$ntls" >&2
            done
        done
    done
    printf '\n' >&2
    tls_warnings=$(grep -E 'level=(warning|error)' "$WORK/mxgate-tls.log" | grep -vc 'event=clamav_disabled' || true)
    tls_alive=yes
    kill -0 "$TLS_PID" 2>/dev/null || tls_alive="NO (it exited; see its log)"
fi

LOAD_END=$(loadavg)
T1=$(date +%s)

# ---- report ----

if [ -n "${RAW:-}" ]; then
    cat "${RUNS:-/dev/null}" "${SIG_RUNS:-/dev/null}" "${TLS_RUNS:-/dev/null}" >"$RAW"
fi

echo
echo "mxgate benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $mxgate_version (tree $git_rev)"
# awk helpers shared by the report tables: put() collects values per key,
# med() gives their median, fields() splits a key=value line into f[].
AWK_LIB='
function med(key,   n, i, j, t, a) {
    n = cnt[key]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = val[key, i]
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function put(key, v) { cnt[key]++; val[key, cnt[key]] = v }
function fields(   i, k, v) {
    delete f
    for (i = 1; i <= NF; i++) { k = $i; sub(/=.*/, "", k); v = $i; sub(/^[^=]*=/, "", v); f[k] = v }
}
'

echo "machine: $(nproc) CPUs, $(uname -sr); mxgate workers: $nworkers; load average at start: $LOAD_START"
if [ "$TLS" != only ]; then
    echo "each run: ${WARMUP}s warm-up + ${DURATION}s measured; $REPEAT runs per path, medians shown; direct and via runs alternate; via/direct = median of the paired runs' ratios"
    echo "load: mxload, classic SMTP without pipelining, TCP_NODELAY; 'per sess' = messages per SMTP session"
    echo "latency: connect (or MAIL, for later messages of a session) -> 250 after the final dot"
    echo "via: mxgate with clamav.enabled=false (the proxy alone, no virus scanning; comparable with results from before scanning)"
    echo

    awk -v tr="$TARGET_RATIO" -v tp="$TARGET_ADDED_P50" "$AWK_LIB"'
    $3 == "path=scan" || $3 == "path=alone" { next } # the scan table below
    {
        fields()
        id = f["id"]; m = f["path"]
        if (!(id in seen)) { seen[id] = 1; order[++nid] = id; conc[id] = f["conc"]; size[id] = f["size"]; per[id] = f["per_session"] }
        put(id SUBSEP m SUBSEP "rate", f["msgs_per_s"])
        rate[id, f["rep"], m] = f["msgs_per_s"]
        if (m == "via" && rate[id, f["rep"], "direct"] > 0)
            put(id SUBSEP "ratio", f["msgs_per_s"] / rate[id, f["rep"], "direct"])
        put(id SUBSEP m SUBSEP "p50", f["p50_ms"])
        put(id SUBSEP m SUBSEP "p99", f["p99_ms"])
        err[id, m] += f["errors"]
        slow[id, m] += f["over_40ms"]
        if (m == "via") {
            put(id SUBSEP "cpu", f["cpu_us"]); rss[id] = f["rss_kib"]
            if (f["hwm_kib"] + 0 > hwm[id] + 0) hwm[id] = f["hwm_kib"]
        }
        put(id SUBSEP "bg", f["bg_pct"])
    }
    END {
        hdr = sprintf("%-20s %8s %8s %6s | %7s %7s %7s | %7s %7s | %7s %8s | %6s %11s | %4s", \
            "scenario", "direct", "via", "via/", "p50 dir", "p50 via", "added", "p99 dir", "p99 via", \
            "errors", "msgs", "mxgate", "mxgate KiB", "bg")
        print hdr
        printf "%-20s %8s %8s %6s | %7s %7s %7s | %7s %7s | %7s %8s | %6s %11s | %4s\n", \
            "size conc per-sess", "msgs/s", "msgs/s", "direct", "ms", "ms", "p50 ms", "ms", "ms", \
            "dir/via", ">=40ms", "us/msg", "RSS/HWM", "CPU%"
        gsub(/./, "-", hdr); print hdr
        for (i = 1; i <= nid; i++) {
            id = order[i]
            rd = med(id SUBSEP "direct" SUBSEP "rate"); rv = med(id SUBSEP "via" SUBSEP "rate")
            pd = med(id SUBSEP "direct" SUBSEP "p50"); pv = med(id SUBSEP "via" SUBSEP "p50")
            qd = med(id SUBSEP "direct" SUBSEP "p99"); qv = med(id SUBSEP "via" SUBSEP "p99")
            ratio = med(id SUBSEP "ratio") + 0 # median of the per-repeat via/direct pairs
            sz = size[id] >= 1024 ? sprintf("%dKB", size[id] / 1024 + 0.5) : size[id] "B"
            name = sprintf("%-5s c=%-3d %s", sz, conc[id], per[id])
            printf "%-20s %8.0f %8.0f %6.2f | %7.3f %7.3f %7.3f | %7.2f %7.2f | %3d/%-3d %3d/%-4d | %6s %5s/%-5s | %4s\n", \
                name, rd, rv, ratio, pd, pv, pv - pd, qd, qv, err[id, "direct"], err[id, "via"], \
                slow[id, "direct"], slow[id, "via"], med(id SUBSEP "cpu"), rss[id], hwm[id], med(id SUBSEP "bg")
            if (med(id SUBSEP "bg") + 0 > 5) noisy = noisy " " sz "/c=" conc[id] "/" per[id]
            if (size[id] == 2048 && conc[id] == 20 && per[id] == 1) t_ratio = ratio
            if (conc[id] == 1 && per[id] == 1) { t_added[++nadd] = sprintf("%s %.3f", sz, pv - pd); t_ok[nadd] = ((pv - pd) <= tp) }
        }
        if (noisy != "")
            print "note: other processes used more than 5% of the CPUs during" noisy "; those rows are disturbed (direct suffers most); rerun on a quiet machine"
        print ""
        print "targets:"
        if (t_ratio != "")
            printf "  c=20, 2KB, 1 msg/session: via/direct = %.2f  (target >= %.2f)  %s\n", t_ratio, tr, (t_ratio >= tr ? "met" : "NOT MET")
        for (i = 1; i <= nadd; i++) {
            split(t_added[i], p, " ")
            printf "  c=1, %s, 1 msg/session: added p50 = %.3f ms  (target <= %.1f ms)  %s\n", p[1], p[2], tp, (t_ok[i] ? "met" : "NOT MET")
        }
    }' "$RUNS"

    awk -v k="$idle_kib" -v t="$TARGET_IDLE_KIB" -v n="$idle_open" \
        'BEGIN { printf "  idle sessions: %s KiB per session over %s sessions  (target <= %d KiB)  %s\n", k, n, t, ((k != "n/a" && k + 0 <= t) ? "met" : "NOT MET") }'

    echo
    echo "idle sessions (fresh mxgate, after a 50-session warm-up): requested $IDLE_SESSIONS, open $idle_open," \
        "errors $idle_errors; mxgate VmRSS $idle_rss_before KiB before, $idle_rss_after KiB with them open" \
        "($idle_fds descriptors), $idle_rss_closed KiB after QUIT"
    src_ratio=$(awk -v a="$src_via" -v b="$src_direct" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf "%.2f", a / b; else print "n/a" }')
    echo "smtp-source cross-check (c=20, ~2 KB, 1 msg/session, $src_n messages): direct $src_direct msgs/s," \
        "via $src_via msgs/s, via/direct $src_ratio"
    echo "mxgate: still running after the load: $mx_alive; warning/error log lines: $mx_warnings"
    if [ "${mx_warnings:-0}" -gt 0 ]; then
        grep -E 'level=(warning|error)' "$WORK/mxgate.log" | grep -v 'event=clamav_disabled' | sort | uniq -c | sort -rn | head -5 | cut -c1-300
    fi
    { grep -h "first_error" "$RUNS" || true; } | sed 's/.*\(id=[^ ]*\) \(rep=[^ ]*\) \(path=[^ ]*\).*\(first_error=.*\)/  \1 \2 \3 \4/' | head -5
fi
if [ "$TLS" != only ] && [ -n "${SCAN_PID:-}" ]; then
    echo
    echo "scanning: mxgate-scan, clamav.enabled=true with the deploy/clamav/make-test-db.sh set ($scan_sigs signatures," \
        "loaded, compiled and canary-checked in $scan_load_ms ms); clamav.threads=$scan_threads;" \
        "clamav.tmpdir=$SCAN_TMP ($scan_tmp_fs); clamav.add_header=true (default); log.level=info"
    if [ "$SCAN_UNIQUE" = 1 ]; then
        echo "same sink and load as the direct and via rows above, except that every scanned message has a body of its own (mxload -u)"
    else
        echo "same sink and load as the direct and via rows above, the same body in every message (SCAN_UNIQUE=0: libclamav's cache answers for the decoded body)"
    fi
    echo "runs alternate direct, via, scan; scan/direct and scan/via are medians of the per-repeat ratios;" \
        "mxgate us/msg: user + system CPU of that mxgate over the run / its messages; +scan = scan - via (median of pairs)"
    echo
    awk -v t2="$TARGET_SCAN_RATIO_2K" -v t100="$TARGET_SCAN_RATIO_100K" -v tcpu="$TARGET_SCAN_CPU_MS" "$AWK_LIB"'
    {
        fields()
        id = f["id"]; m = f["path"]; r = f["rep"]
        rate[id, r, m] = f["msgs_per_s"]; cpu[id, r, m] = f["cpu_us"]
        if (m == "alone") { alone[id] = f["cpu_us"]; next }
        if (m != "scan") next
        if (!(id in seen)) { seen[id] = 1; order[++nid] = id; conc[id] = f["conc"]; size[id] = f["size"] }
        put(id SUBSEP "rs", f["msgs_per_s"]); put(id SUBSEP "rd", rate[id, r, "direct"]); put(id SUBSEP "rv", rate[id, r, "via"])
        if (rate[id, r, "direct"] > 0) put(id SUBSEP "sd", f["msgs_per_s"] / rate[id, r, "direct"])
        if (rate[id, r, "via"] > 0) put(id SUBSEP "sv", f["msgs_per_s"] / rate[id, r, "via"])
        put(id SUBSEP "p50", f["p50_ms"]); put(id SUBSEP "p99", f["p99_ms"])
        put(id SUBSEP "cs", f["cpu_us"]); put(id SUBSEP "cv", cpu[id, r, "via"])
        put(id SUBSEP "add", f["cpu_us"] - cpu[id, r, "via"])
        put(id SUBSEP "sms", f["scan_ms_mean"]); put(id SUBSEP "bg", f["bg_pct"])
        err[id] += f["errors"]; serr[id] += f["scan_error"] + f["scan_infected"]
    }
    END {
        hdr = sprintf("%-12s %7s %7s %7s %6s %6s | %7s %7s | %8s | %6s %6s %6s | %8s | %7s | %4s", \
            "scenario", "direct", "via", "scan", "scan/", "scan/", "p50", "p99", "errors", "mxgate", "us/msg", "", "libclamav", "scan_ms", "bg")
        print hdr
        printf "%-12s %7s %7s %7s %6s %6s | %7s %7s | %8s | %6s %6s %6s | %8s | %7s | %4s\n", \
            "size conc", "msgs/s", "msgs/s", "msgs/s", "direct", "via", "scan ms", "scan ms", "sess/vrd", "via", "scan", "+scan", "alone us", "mean", "CPU%"
        gsub(/./, "-", hdr); print hdr
        for (i = 1; i <= nid; i++) {
            id = order[i]
            sz = size[id] >= 1024 ? sprintf("%dKB", size[id] / 1024 + 0.5) : size[id] "B"
            printf "%-12s %7.0f %7.0f %7.0f %6.2f %6.2f | %7.2f %7.2f | %4d/%-3d | %6.0f %6.0f %6.0f | %8s | %7.2f | %4s\n", \
                sprintf("%-5s c=%d", sz, conc[id]), med(id SUBSEP "rd"), med(id SUBSEP "rv"), med(id SUBSEP "rs"), \
                med(id SUBSEP "sd"), med(id SUBSEP "sv"), med(id SUBSEP "p50"), med(id SUBSEP "p99"), err[id], serr[id], \
                med(id SUBSEP "cv"), med(id SUBSEP "cs"), med(id SUBSEP "add"), (alone[id] != "" ? alone[id] : "-"), \
                med(id SUBSEP "sms"), med(id SUBSEP "bg")
            if (med(id SUBSEP "bg") + 0 > 5) noisy = noisy " " sz
        }
        if (noisy != "")
            print "note: other processes used more than 5% of the CPUs during" noisy "; those rows are disturbed"
        print "errors: failed mxload sessions / scans whose verdict was not clean (all clean is expected)"
        print "libclamav alone: CPU per scan of the same message by tests/bench/clscan.c: one thread, no SMTP, the scan options of mxgate, no other benchmark load"
        print ""
        print "targets (scanning):"
        for (i = 1; i <= nid; i++) {
            id = order[i]
            sz = size[id] >= 1024 ? sprintf("%dKB", size[id] / 1024 + 0.5) : size[id] "B"
            sd = med(id SUBSEP "sd") + 0; ms = med(id SUBSEP "cs") / 1000
            t = (size[id] == 2048 ? t2 : size[id] == 102400 ? t100 : "")
            if (t != "")
                printf "  c=%d, %s, 1 msg/session: scan/direct = %.2f  (target >= %.2f)  %s\n", conc[id], sz, sd, t, (sd >= t ? "PASS" : "FAIL")
            if (size[id] == 102400)
                printf "  c=%d, %s: mxgate CPU per message with scanning = %.2f ms  (target <= %g ms)  %s\n", conc[id], sz, ms, tcpu, (ms <= tcpu ? "PASS" : "FAIL")
            else
                printf "  c=%d, %s: mxgate CPU per message with scanning = %.2f ms  (no target)\n", conc[id], sz, ms
        }
    }' "$RUNS"
    echo "  (a missed target does not change the exit status: this is a measurement)"
    echo
    echo "mxgate-scan memory: VmRSS $scan_rss_loaded KiB with the engine loaded, before any message;" \
        "after the runs VmRSS $scan_rss_end KiB, VmHWM $scan_hwm_end KiB (the peak of its life)"
    echo "mxgate-scan verdicts (its message log lines, sanity run included): $scan_total messages, $scan_clean clean," \
        "$scan_infected infected, $scan_errors error; still running after the load: $scan_alive; warning/error log lines: $scan_warnings"
    if [ "${scan_warnings:-0}" -gt 0 ]; then
        grep -E 'level=(warning|error)' "$WORK/mxgate-scan.log" | grep -v 'event=clamav_disabled' | cut -d' ' -f2- | sort | uniq -c | sort -rn | head -5 | cut -c1-300
    fi
    { grep -h "path=scan.*first_error" "$RUNS" || true; } | sed 's/.*\(id=[^ ]*\) \(rep=[^ ]*\) \(path=[^ ]*\).*\(first_error=.*\)/  \1 \2 \3 \4/' | head -5
fi
if [ -n "${SIG_RUNS:-}" ]; then
    echo
    echo "signature scaling: one scanning mxgate per set, started alone; the test set plus N random body signatures" \
        "(tests/bench/make-bench-sigs.sh: Mxgate.Bench.N, 16-32 random bytes, none can match)"
    echo "$SIGSCALE_SIZE-byte messages, c=$SCAN_CONC, 1 per session$([ "$SCAN_UNIQUE" = 1 ] && echo ", a body of its own each (mxload -u)");" \
        "$SIGSCALE_REPEAT runs per set, medians; load ms: the clamav_loaded line (cl_load + compile + EICAR canary);" \
        "vs direct: against the median direct msgs/s of the same size and concurrency above"
    echo
    awk "$AWK_LIB"'
    {
        fields()
    }
    FILENAME == ARGV[1] { # the runs of the load part: direct msgs/s by size and concurrency
        if (f["path"] == "direct" && f["per_session"] == 1) put("d" SUBSEP f["size"] SUBSEP f["conc"], f["msgs_per_s"])
        next
    }
    {
        id = f["id"]
        if (f["path"] == "end") { rss[id] = f["rss_kib"]; hwm[id] = f["hwm_kib"]; alone[id] = f["alone_cpu_us"]; next }
        if (!(id in seen)) {
            seen[id] = 1; order[++nid] = id; set[id] = f["set"]; sigs[id] = f["sigs"]; lms[id] = f["load_ms"]
            rl[id] = f["rss_load_kib"]; size[id] = f["size"]; conc[id] = f["conc"]
        }
        put(id SUBSEP "r", f["msgs_per_s"]); put(id SUBSEP "c", f["cpu_us"]); put(id SUBSEP "s", f["scan_ms_mean"])
        put(id SUBSEP "bg", f["bg_pct"]); put(id SUBSEP "p50", f["p50_ms"])
        n[id] += f["scan_n"]; err[id] += f["errors"]; serr[id] += f["scan_error"] + f["scan_infected"]
    }
    END {
        hdr = sprintf("%-14s %10s %8s %9s | %7s %6s %7s | %7s %9s %7s | %7s %13s | %8s | %4s", \
            "set", "signatures", "load ms", "RSS KiB", "msgs/s", "vs", "p50", "mxgate", "libclamav", "scan_ms", "scanned", "after runs", "errors", "bg")
        print hdr
        printf "%-14s %10s %8s %9s | %7s %6s %7s | %7s %9s %7s | %7s %13s | %8s | %4s\n", \
            "", "", "", "loaded", "", "direct", "ms", "ms/msg", "alone ms", "mean", "msgs", "RSS/HWM KiB", "sess/vrd", "CPU%"
        gsub(/./, "-", hdr); print hdr
        for (i = 1; i <= nid; i++) {
            id = order[i]
            d = med("d" SUBSEP size[id] SUBSEP conc[id]); r = med(id SUBSEP "r")
            name = set[id] == 0 ? "test set" : sprintf("+%dk random", set[id] / 1000)
            printf "%-14s %10s %8s %9s | %7.0f %6s %7.2f | %7.2f %9s %7.2f | %7d %6s/%-6s | %4d/%-3d | %4s\n", \
                name, sigs[id], lms[id], rl[id], r, (d > 0 ? sprintf("%.2f", r / d) : "-"), med(id SUBSEP "p50"), \
                med(id SUBSEP "c") / 1000, (alone[id] + 0 > 0 ? sprintf("%.2f", alone[id] / 1000) : "-"), \
                med(id SUBSEP "s"), n[id], rss[id], hwm[id], err[id], serr[id], med(id SUBSEP "bg")
        }
        print "scan_ms: mean of the per-message scan_ms log field (wall time of the scan on its thread)"
        print "libclamav alone: CPU per scan of tests/bench/clscan.c on the same set (one thread, 100 scans, no other benchmark load)"
    }' "${RUNS:-/dev/null}" "$SIG_RUNS"
fi
if [ "$TLS" != 0 ]; then
    echo
    echo "TLS: STARTTLS to mxgate (xclient, plaintext to smtp-sink); $TLS_SIZE-byte messages, 1 per session, c=$TLS_CONC;" \
        "self-signed $TLS_KEY certificate; tls.ticket_keys set"
    echo "each run: ${WARMUP}s warm-up + ${DURATION}s measured; $TLS_REPEAT runs per row, medians shown; the modes of a version alternate;" \
        "'vs plain' and '+us vs plain' are medians of each run against the plain run before it"
    echo "modes: plain = no STARTTLS (same mxgate); full = full handshake every session; resume = each slot offers the newest ticket" \
        "it got (a TLS 1.3 ticket once, as OpenSSL clients do); reuse = offers it again until a newer one arrives"
    echo
    awk "$AWK_LIB"'
{
    fields()
    id = f["id"]; m = f["path"]; r = f["rep"]
    if (!(id in seen)) { seen[id] = 1; order[++nid] = id }
    if (!((id, m) in mseen)) { mseen[id, m] = 1; mode[id, ++nm[id]] = m }
    if (r + 0 > maxrep) maxrep = r + 0
    put(id SUBSEP m SUBSEP "rate", f["msgs_per_s"])
    put(id SUBSEP m SUBSEP "p50", f["p50_ms"])
    put(id SUBSEP m SUBSEP "p99", f["p99_ms"])
    put(id SUBSEP m SUBSEP "cpu", f["cpu_us"])
    put(id SUBSEP m SUBSEP "bg", f["bg_pct"])
    if (f["total_msgs"] > 0) put(id SUBSEP m SUBSEP "mxl", f["cpu_s"] * 1e6 / f["total_msgs"])
    hs[id, m] += f["tls_handshakes"]; res[id, m] += f["tls_resumed"]; tik[id, m] += f["tls_tickets"]
    err[id, m] += f["errors"]
    if (f["tls_version"] != "" && f["tls_version"] != "-") { ver[id] = f["tls_version"]; ciph[id] = f["tls_cipher"] }
    cpu_of[id, r, m] = f["cpu_us"]; rate_of[id, r, m] = f["msgs_per_s"]; have[id, r, m] = 1
}
END {
    for (i = 1; i <= nid; i++) {
        id = order[i]
        for (r = 1; r <= maxrep; r++) {
            if (!((id, r, "plain") in have)) continue
            for (j = 1; j <= nm[id]; j++) {
                m = mode[id, j]
                if (m == "plain" || !((id, r, m) in have)) continue
                put(id SUBSEP m SUBSEP "d", cpu_of[id, r, m] - cpu_of[id, r, "plain"])
                if (rate_of[id, r, "plain"] > 0) put(id SUBSEP m SUBSEP "ratio", rate_of[id, r, m] / rate_of[id, r, "plain"])
            }
        }
    }
    hdr = sprintf("%-8s %-7s %7s %6s | %6s %6s | %7s %7s %7s | %6s %7s %9s | %6s | %6s | %4s", \
        "TLS", "mode", "msgs/s", "vs", "p50", "p99", "hand-", "resumed", "tickets", "mxgate", "+us vs", "us per", \
        "mxload", "errors", "bg")
    print hdr
    printf "%-8s %-7s %7s %6s | %6s %6s | %7s %7s %7s | %6s %7s %9s | %6s | %6s | %4s\n", \
        "", "", "", "plain", "ms", "ms", "shakes", "", "per hs", "us/msg", "plain", "handshake", "us/msg", "", "CPU%"
    gsub(/./, "-", hdr); print hdr
    for (i = 1; i <= nid; i++) {
        id = order[i]
        dfull = med(id SUBSEP "full" SUBSEP "d")
        tpf = hs[id, "full"] > 0 ? tik[id, "full"] / hs[id, "full"] : 0 # tickets per full handshake
        best = ""; bestf = -1
        for (j = 1; j <= nm[id]; j++) {
            m = mode[id, j]
            fr = hs[id, m] > 0 ? res[id, m] / hs[id, m] : 0
            d = med(id SUBSEP m SUBSEP "d")
            if (m == "plain") { sv = "1.00"; sd = "-"; sh = "-"; shs = "-"; sr = "-"; st = "-" }
            else {
                sv = sprintf("%.2f", med(id SUBSEP m SUBSEP "ratio"))
                sd = sprintf("%+.0f", d)
                shs = sprintf("%d", hs[id, m])
                sr = sprintf("%.1f%%", fr * 100)
                st = sprintf("%.2f", hs[id, m] > 0 ? tik[id, m] / hs[id, m] : 0)
                if (m == "full") { sh = sprintf("%.0f", d); full_hs[id] = d }
                else if (fr > 0 && dfull != "") {
                    # the full handshakes in the mix cost what the full row says
                    ph = (d - (1 - fr) * dfull) / fr
                    sh = sprintf("%.0f", ph)
                    if (fr > bestf) { bestf = fr; best = m; best_hs = ph; best_d = d }
                } else sh = "-"
                if (m != "full" && fr < 0.9 && hs[id, m] > 0) {
                    rh = res[id, m]
                    tpr = rh > 0 ? (tik[id, m] - tpf * (hs[id, m] - rh)) / rh : 0
                    notes[++nnotes] = sprintf("%s %s: only %.0f%% of handshakes were resumed; mxgate sent %.2f tickets per resumed handshake (%.2f per full one)", \
                        ver[id], m, fr * 100, (tpr < 0 ? 0 : tpr), tpf)
                }
            }
            printf "%-8s %-7s %7.0f %6s | %6.2f %6.2f | %7s %7s %7s | %6.0f %7s %9s | %6.0f | %6d | %4s\n", \
                (j == 1 ? ver[id] : ""), m, med(id SUBSEP m SUBSEP "rate"), sv, med(id SUBSEP m SUBSEP "p50"), \
                med(id SUBSEP m SUBSEP "p99"), shs, sr, st, med(id SUBSEP m SUBSEP "cpu"), sd, sh, \
                med(id SUBSEP m SUBSEP "mxl"), err[id, m], med(id SUBSEP m SUBSEP "bg")
            if (med(id SUBSEP m SUBSEP "bg") + 0 > 5) noisy = noisy " " ver[id] "/" m
        }
        line = sprintf("  %s (%s): CPU per full handshake %s us", ver[id], ciph[id], (dfull == "" ? "n/a" : sprintf("%.0f", dfull)))
        if (best != "")
            line = line sprintf("; per resumed handshake %.0f us (%s, %.1f%% resumed; %+.0f us/msg over plain)", best_hs, best, bestf * 100, best_d)
        summary[++nsum] = line
    }
    if (noisy != "")
        print "note: other processes used more than 5% of the CPUs during" noisy "; those rows are disturbed"
    print ""
    print "mxgate CPU per handshake (user + system, /proc/PID/stat, over plaintext sessions on the same mxgate):"
    for (i = 1; i <= nsum; i++) print summary[i]
    for (i = 1; i <= nnotes; i++) print "note: " notes[i]
}' "$TLS_RUNS"
    echo "idle TLS sessions (fresh mxgate-tls, after a 50-session warm-up; $(kv tls_version "$tls_idle_ready"), after the second EHLO):" \
        "requested $IDLE_SESSIONS, open $tls_idle_open, errors $tls_idle_errors; mxgate VmRSS $tls_idle_before KiB before," \
        "$tls_idle_after KiB with them open: $tls_idle_kib KiB per session (plaintext target <= $TARGET_IDLE_KIB KiB)"
    echo "mxgate (TLS): still running after the load: $tls_alive; warning/error log lines: $tls_warnings"
    if [ "${tls_warnings:-0}" -gt 0 ]; then
        grep -E 'level=(warning|error)' "$WORK/mxgate-tls.log" | grep -v 'event=clamav_disabled' | sort | uniq -c | sort -rn | head -5 | cut -c1-300
    fi
    { grep -h "first_error" "$TLS_RUNS" || true; } | sed 's/.*\(id=[^ ]*\) \(rep=[^ ]*\) \(path=[^ ]*\).*\(first_error=.*\)/  \1 \2 \3 \4/' | head -5
fi
echo "load average at end: $LOAD_END; wall time $((T1 - T0)) s"
