#!/bin/sh
# Runs a private Exim 4.96 (exim4-daemon-heavy, unpacked once into
# /var/cache/mxgate-test/exim) on 127.0.0.1 in the foreground, configured as
# the integration tests use it: PROXY header required from 127.0.0.1,
# unknown recipients of example.test rejected at RCPT, deliveries in a maildir.
# Usage: exim.sh [--port N] [--dir D]     (Ctrl-C stops it)
exec python3 "$(dirname "$0")/mxtest.py" exim "$@"
