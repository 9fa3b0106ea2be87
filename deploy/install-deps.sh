#!/bin/sh
# Installs every Debian 12 package mxgate needs to build, run and test.
# Idempotent: packages already present are skipped by apt-get, and the
# package index is refreshed at most once an hour.
set -eu

export DEBIAN_FRONTEND=noninteractive

BUILD="build-essential cmake pkg-config clang libclang-rt-14-dev
       libev-dev libssl-dev libglib2.0-dev libmemcached-dev libclamav-dev
       libprotobuf-c-dev protobuf-c-compiler"
# The runtime libraries come in with their -dev packages.
# Test peers. Postfix is the main backend; its smtp-sink and smtp-source are
# the benchmark's sink and load generator. Exim runs privately next to it
# (tests/integration/exim.sh) from the unpacked exim4-daemon-heavy package,
# whose runtime libraries (every Depends: of exim4-daemon-heavy 4.96 but
# the conflicting exim4 packages themselves) are listed here.
TEST="postfix swaks memcached haproxy clamav python3 procps iproute2 openssl
      libmariadb3 libspf2-2 libidn12 libidn2-0 libgnutls30 libgnutls-dane0 libpq5
      libsasl2-2 libperl5.36 libdb5.3 libldap-2.5-0 libnsl2 libpam0g libpcre2-8-0
      libsqlite3-0 libcrypt1 netbase
      testssl.sh libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl
      prometheus chromium curl"
# prometheus: for promtool only; tests/integration/test_metrics.py validates
# the node's /metrics with `promtool check metrics`.
# chromium: tests/unit/render_report.sh renders the html report with it
# (headless) and checks the screenshot.
# curl: the quick start's health check (curl http://127.0.0.1:8025/health).

missing=""
for p in $BUILD $TEST; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $p"
done

if [ -n "$missing" ]; then
    stamp=/var/lib/apt/periodic/mxgate-update-stamp
    if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +60 2>/dev/null)" ]; then
        apt-get update -q
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string mxgate.test" | debconf-set-selections
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
    case "$missing " in
    *" prometheus "*)
        # The package's postinst starts a Prometheus server wherever
        # services may start (no policy-rc.d saying no). Only promtool is
        # wanted: stop the server this install started and keep it off.
        if [ -d /run/systemd/system ]; then
            systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        elif [ -x /etc/init.d/prometheus ]; then
            /etc/init.d/prometheus stop >/dev/null 2>&1 || true
            update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
        ;;
    esac
fi

# Debian's postfix package may start a system instance on port 25; the
# tests run private instances, so stop anything the package started.
if command -v postfix >/dev/null 2>&1 && [ -f /etc/postfix/main.cf ]; then
    postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true
fi
pkill -x freshclam 2>/dev/null || true
exit 0
