#!/bin/sh
# make-test-db.sh DIR: write a small ClamAV signature set into DIR, for
# trying mxgate where freshclam cannot reach the internet, and for its tests.
#
#   mxgate-eicar.hdb    the EICAR test file, by MD5 (made with sigtool --md5)
#   mxgate-test.ndb     body signatures of mxgate's own test markers:
#                         Mxgate.Test.Marker  matches MXGATE-TEST-MARKER-7f3a
#
# This is not protection: production nodes load the official databases
# (freshclam fills /var/lib/clamav). mxgate's canary needs EICAR detected,
# which the official main database does too.
set -eu
dir=${1:?usage: make-test-db.sh DIR}
command -v sigtool >/dev/null 2>&1 || { echo "make-test-db.sh: sigtool not found (apt-get install clamav)" >&2; exit 1; }
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The test string, assembled so that this script is not itself a detection.
printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' >"$tmp/eicar.com"
sigtool --md5 "$tmp/eicar.com" | sed 's/:eicar\.com$/:Mxgate.Test.EICAR/' >"$tmp/mxgate-eicar.hdb"
hex=$(printf '%s' 'MXGATE-TEST-MARKER-7f3a' | od -An -tx1 | tr -d ' \n')
printf 'Mxgate.Test.Marker:0:*:%s\n' "$hex" >"$tmp/mxgate-test.ndb"
# Replace, not edit in place: a running mxgate watching DIR sees whole files.
mv "$tmp/mxgate-eicar.hdb" "$tmp/mxgate-test.ndb" "$dir/"
