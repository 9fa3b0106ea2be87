#!/bin/sh
# Every option the daemon knows must be documented, with its default, in
# deploy/mxgate.conf, and that file must pass --check (with the test
# signature set standing in for /var/lib/clamav, which freshclam fills on a
# real node).
set -eu
bin=$1
conf=$2
root=$(cd "$(dirname "$0")/.." && pwd)
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT
sh "$root/deploy/clamav/make-test-db.sh" "$db"
fail=0
section=""
$bin --options | while IFS= read -r line; do
    name=${line%% =*}
    def=$(printf '%s' "$line" | sed -e 's/^[^=]*= //' -e 's/\t#.*$//')
    sec=${name%%.*}
    key=${name#*.}
    # the key must appear in its section with the same default
    if ! awk -v s="[$sec]" -v k="$key" -v d="$def" '
        /^\[/ { cur = $0 }
        cur == s && $0 ~ "^"k" *=" { v = $0; sub(/^[^=]*= ?/, "", v); if (v == d) found = 1 }
        END { exit found ? 0 : 1 }' "$conf"; then
        echo "not documented with its default in $conf: $name = $def"
        exit 1
    fi
done || fail=1
$bin -c "$conf" -o clamav.database="$db" --check >/dev/null || fail=1
if [ $fail -ne 0 ]; then
    echo "0 passed, 1 failed"
    exit 1
fi
echo "every option documented"
