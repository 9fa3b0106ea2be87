#!/bin/bash
# Quick start: install what mxgate needs, build it, and run it on its
# embedded defaults in the foreground, in front of a demo backend.
#
# The demo backend is Postfix's smtp-sink on 127.0.0.1:10025 (mxgate's
# default backend.servers). It speaks XCLIENT like a real Postfix and saves
# every message it accepts as a file under ./demo/mail/, so you can see
# exactly what reached the backend. Stop with Ctrl-C; that stops both.
#
#   sudo deploy/quickstart.sh
#   swaks --server 127.0.0.1:2525 --to you@example.com     # in another shell
#   ls demo/mail/
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

sh deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

mkdir -p demo/mail
chmod 777 demo/mail # smtp-sink drops privileges to nobody before writing
smtp-sink -u nobody -d "$root/demo/mail/%Y%m%d-%H%M%S." 127.0.0.1:10025 256 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT INT TERM
# let the sink bind before mxgate's first health probe
i=0
while [ $i -lt 50 ] && ! (exec 3<>/dev/tcp/127.0.0.1/10025) 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done

echo "mxgate: listening on 127.0.0.1:2525, relaying to the demo backend on 127.0.0.1:10025"
echo "mxgate: try: swaks --server 127.0.0.1:2525 --to you@example.com; then ls demo/mail/"
echo "mxgate: health: curl http://127.0.0.1:8025/health"
build/proxy/mxgate
