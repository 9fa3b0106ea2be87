#!/bin/bash
# Quick start: install what mxgate needs, build it, and run it on its
# embedded defaults in the foreground, in front of a demo backend.
#
# The demo backend is Postfix's smtp-sink on 127.0.0.1:10025 (mxgate's
# default backend.servers). It speaks XCLIENT like a real Postfix and saves
# every message it accepts as a file under ./demo/mail/, so you can see
# exactly what reached the backend. Stop with Ctrl-C; that stops both.
#
# mxgate scans every message with libclamav and will not start without a
# signature database. If freshclam has filled /var/lib/clamav (the default
# clamav.database), that is used. Otherwise (no internet) a small test set
# that detects the EICAR test file is written to ./demo/clamav and mxgate
# is pointed at it, the one option changed from the defaults.
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

# smtp-sink drops privileges to nobody before it writes a message, and a
# checkout under /root (mode 700 on Debian) is out of nobody's reach: the
# files go to a directory of nobody's own under /var/tmp, and demo/mail
# points there.
mail=/var/tmp/mxgate-demo-mail
mkdir -p "$mail"
chown nobody "$mail"
chmod 755 "$mail"
mkdir -p demo
if [ -d demo/mail ] && [ ! -L demo/mail ]; then
    # an older demo kept its files here: keep them with the new ones
    find demo/mail -mindepth 1 -maxdepth 1 -exec mv -t "$mail" {} + 2>/dev/null || true
    rmdir demo/mail
fi
ln -sfn "$mail" demo/mail
smtp-sink -u nobody -d "$mail/%Y%m%d-%H%M%S." 127.0.0.1:10025 256 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT INT TERM
# let the sink bind before mxgate's first health probe
i=0
while [ $i -lt 50 ] && ! (exec 3<>/dev/tcp/127.0.0.1/10025) 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done

set --
if ! ls /var/lib/clamav/*.cvd /var/lib/clamav/*.cld >/dev/null 2>&1; then
    sh deploy/clamav/make-test-db.sh "$root/demo/clamav"
    echo "mxgate: /var/lib/clamav has no official signatures (run freshclam where there is internet);"
    echo "mxgate: using the test set in demo/clamav (EICAR and mxgate's test marker only)"
    set -- -o clamav.database="$root/demo/clamav"
fi

echo "mxgate: listening on 127.0.0.1:2525, relaying to the demo backend on 127.0.0.1:10025"
echo "mxgate: try: swaks --server 127.0.0.1:2525 --to you@example.com; then ls demo/mail/"
echo "mxgate: a virus is refused: swaks --server 127.0.0.1:2525 --to you@example.com --attach @demo/eicar.com"
echo "mxgate: health: curl http://127.0.0.1:8025/health"
# The EICAR test file, for trying the scanner (assembled here so that this
# script is not itself a detection).
printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >demo/eicar.com
build/proxy/mxgate "$@"
