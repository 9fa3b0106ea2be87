#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine:
#   1. install build and test dependencies (deploy/install-deps.sh),
#   2. build with warnings as errors and run every ctest test (unit tests,
#      integration tests against private Postfix and Exim instances that the
#      tests start on loopback and stop again),
#   3. build again with AddressSanitizer + UndefinedBehaviorSanitizer and
#      run the same tests,
#   4. build the libFuzzer targets with clang and fuzz each parser for
#      MX_FUZZ_SECONDS (default 15) seconds.
# Exits non-zero if anything fails.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
fuzz_seconds=${MX_FUZZ_SECONDS:-15}

sh "$root/deploy/install-deps.sh"

# The private test backends must own their ports; a system Postfix or Exim
# left running by a package install is stopped.
postfix stop >/dev/null 2>&1 || true

status=0
run_suite() {
    name=$1
    shift
    dir="$root/build-test-$name"
    echo "=== $name: configure and build"
    mkdir -p "$dir"
    cmake -S "$root" -B "$dir" -DMX_WERROR=ON "$@" >"$dir.cmake.log" 2>&1 ||
        { cat "$dir.cmake.log"; return 1; }
    cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1 ||
        { tail -n 60 "$dir.build.log"; return 1; }
    echo "=== $name: ctest"
    ctest --test-dir "$dir" --output-on-failure --timeout 600 -j2 $CTEST_ARGS \
        >"$dir.ctest.log" 2>&1
    rc=$?
    cat "$dir.ctest.log"
    # "NN% tests passed, F tests failed out of T"
    summary=$(grep -E 'tests passed, [0-9]+ tests? failed out of' "$dir.ctest.log" | tail -n 1)
    if [ -n "$summary" ]; then
        f=$(echo "$summary" | sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/')
        t=$(echo "$summary" | sed -E 's/.* failed out of ([0-9]+).*/\1/')
        total_failed=$((total_failed + f))
        total_passed=$((total_passed + t - f))
    fi
    return $rc
}
total_passed=0
total_failed=0

CTEST_ARGS=""
run_suite release -DCMAKE_BUILD_TYPE=RelWithDebInfo || status=1

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
run_suite sanitize -DCMAKE_BUILD_TYPE=Debug -DMX_SANITIZE=ON || status=1

CTEST_ARGS="-R ^fuzz_"
export CC=clang
run_suite fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMX_FUZZ=ON \
    -DMX_FUZZ_SECONDS="$fuzz_seconds" || status=1

# A digest of what failed, last, where it is seen first: each failing
# test's unittest verdict lines and assertion messages.
if [ $total_failed -ne 0 ]; then
    echo "=== failures"
    for name in release sanitize fuzz; do
        log="$root/build-test-$name.ctest.log"
        [ -f "$log" ] || continue
        grep -E '\*\*\*(Failed|Timeout|Exception)' "$log" | sed "s/^/$name: /"
        grep -E -A 12 '^(FAIL|ERROR): ' "$log" |
            grep -E '^(FAIL|ERROR): |Error:|Error\b|^[A-Za-z]+Error' |
            cut -c1-400 | sed "s/^/$name: /"
    done
fi
echo "mxgate test suite, release + sanitize + fuzz builds:"
echo "total: $total_passed passed, $total_failed failed"
if [ $status -ne 0 ] && [ $total_failed -eq 0 ]; then
    echo "mxgate test suite: FAILED (a build or configure step failed)"
fi
exit $status
