#!/usr/bin/env bash
# Scans postern's STARTTLS and implicit-TLS listeners with testssl.sh (Debian package
# `testssl.sh`) and fails on any finding about protocols, ciphers, cipher order, forward
# secrecy or vulnerabilities. Certificate findings (a self-signed or private-CA certificate
# is not trusted, has no OCSP URI, ...) are listed but do not fail the scan.
#
# Usage: deploy/testssl/scan.sh [STARTTLS_ADDRESS [IMPLICIT_ADDRESS]]
#   defaults: 127.0.0.1:2587 and 127.0.0.1:2465 (the shipped config/postern.yaml)
# Environment:
#   TESTSSL   the testssl binary (default: `testssl`, else `testssl.sh`, from PATH)
#   SCAN_DIR  where each listener's JSON (<name>.json) and text output (<name>.log) are
#             kept (default: a new temporary directory, printed at the end)
#   SCAN_TIMEOUT  longest one listener's scan may take, in seconds (default 300; about 40
#             is usual); a scan cut off counts as not completed
#
# Exit status: 0 when both listeners pass; 1 when a listener has a failing finding or its
# scan did not complete; 2 on a usage error.
#
# The scan opens a hundred or more connections per listener within a minute: run it from an
# address whose `connections` rate rules allow that (the shipped config gives loopback 1000 a
# minute in its 127.0.0.0/8 `networks` entry; others get 60). postern answers a connection over
# the limit with 421 and closes it, and testssl takes that for a refused handshake: its
# results can then read "not offered" or "not vulnerable" without having been tested, so check
# postern_connections_total{result="connection_rate"} did not move during the scan.
set -euo pipefail

starttls="${1:-127.0.0.1:2587}"
implicit="${2:-127.0.0.1:2465}"
if [ "$#" -gt 2 ]; then
    sed -n '7,8p' "$0" >&2
    exit 2
fi
testssl="${TESTSSL:-$(command -v testssl || command -v testssl.sh || true)}"
if [ -z "$testssl" ]; then
    echo "testssl not found: install the Debian package testssl.sh or set TESTSSL" >&2
    exit 2
fi
out="${SCAN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/postern-testssl.XXXXXX")}"
mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"

# Complete for what is judged, without the slow parts that judge nothing here: protocols
# (-p), cipher categories (-s), forward secrecy (-f), server cipher order (-P), server
# defaults and certificate (-S), vulnerabilities (-U) and every cipher per protocol (-E).
# Left out: HTTP headers (-h, not HTTP) and client simulation (-c, informational).
checks=(-p -s -f -P -S -U -E)
common=(--warnings off --color 0 --quiet --ip one)

# scan NAME ARGS... : one testssl run, its JSON in $out/NAME.json; returns testssl's status:
# 0, or the count of ambiguous results (1-241; the JSON is judged either way), or 242 and
# above when it could not scan (no connection, bad options).
scan() {
    local name="$1"
    shift
    rm -f "$out/$name.json" "$out/$name.log"
    local start=$SECONDS status=0
    timeout --kill-after=10 "${SCAN_TIMEOUT:-300}" "$testssl" "${common[@]}" "${checks[@]}" --jsonfile-pretty "$out/$name.json" "$@" \
        >"$out/$name.log" 2>&1 || status=$?
    echo "$name: testssl finished in $((SECONDS - start)) s (status $status)"
    return "$status"
}

failed=0
for listener in "starttls $starttls" "implicit $implicit"; do
    set -- $listener
    name="$1" address="$2"
    extra=()
    [ "$name" = starttls ] && extra=(--starttls smtp)
    status=0
    scan "$name" "${extra[@]}" "$address" || status=$?
    # 124 and 137: cut off by `timeout`; 242 and above: testssl could not scan.
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ] || [ "$status" -ge 242 ] ||
        [ ! -s "$out/$name.json" ]; then
        echo "$name ($address): the scan did not complete; see $out/$name.log"
        failed=1
        continue
    fi
    python3 "$here/verdict.py" "$name ($address)" "$out/$name.json" || failed=1
done
echo "JSON and logs: $out"
exit "$failed"
