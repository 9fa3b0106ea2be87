#!/bin/sh
# make-bench-sigs.sh N FILE [SEED]: write N random ClamAV body signatures
# (.ndb) to FILE, for measuring how scanning scales with the size of the
# signature set (tests/bench/run.sh, SKIP_SIGSCALE=0).
#
# Each line is   Mxgate.Bench.<i>:0:*:<hex>
# target type 0 (any file), any offset, 16 to 32 random bytes. The last
# byte always has its high bit set, so no signature can match the pure
# ASCII messages the benchmark sends (mxload's headers and body, mxgate's
# trace headers); the rest are uniformly random, so their prefixes fall on
# the matchers' tables as unrelated real signatures do. The same SEED (1 by
# default) gives the same file.
#
# These signatures detect nothing; they only make the engine larger.
set -eu
n=${1:?usage: make-bench-sigs.sh N FILE [SEED]}
file=${2:?usage: make-bench-sigs.sh N FILE [SEED]}
seed=${3:-1}
case "$n" in '' | *[!0-9]*) echo "make-bench-sigs.sh: N must be a number" >&2; exit 2 ;; esac
case "$seed" in '' | *[!0-9]*) echo "make-bench-sigs.sh: SEED must be a number" >&2; exit 2 ;; esac
tmp="$file.tmp.$$"
trap 'rm -f "$tmp"' EXIT
awk -v n="$n" -v seed="$seed" 'BEGIN {
    srand(seed)
    for (i = 0; i < 256; i++) hex[i] = sprintf("%02x", i)
    for (i = 1; i <= n; i++) {
        len = 16 + int(rand() * 17)
        s = ""
        for (j = 1; j < len; j++) s = s hex[int(rand() * 256)]
        s = s hex[128 + int(rand() * 128)]
        printf "Mxgate.Bench.%d:0:*:%s\n", i, s
    }
}' >"$tmp"
# Replace, not write in place: an mxgate watching the directory sees whole files.
mv "$tmp" "$file"
trap - EXIT
