#!/usr/bin/env python3
"""Judges one testssl.sh --jsonfile-pretty result for deploy/testssl/scan.sh.

Fails (exit 1) on:
- any finding above OK/INFO in the protocols, grease, cipher categories, forward secrecy,
  server preferences (cipher order), vulnerabilities or per-protocol cipher sections;
- a scan problem (testssl could not finish a check), or a section missing or empty;
- a protocol offered against postern's policy: SSLv2, SSLv3, TLS 1.0 and TLS 1.1 must be
  refused (RFC 8996), TLS 1.2 and TLS 1.3 offered.
Findings above OK/INFO in the server defaults section (the certificate's trust, validity,
revocation URIs, ...) are printed but do not fail: a self-signed or private-CA certificate
is expected to have them.

Usage: verdict.py LABEL FILE.json
"""

import json
import sys

# Sections judged; testssl 3.0 calls forward secrecy "pfs", 3.2 "fs".
JUDGED = ["protocols", "grease", "ciphers", "pfs", "fs", "serverPreferences",
          "vulnerabilities", "cipherTests"]
# Sections that must be present with at least one finding ("pfs" or "fs").
REQUIRED = [["protocols"], ["ciphers"], ["pfs", "fs"], ["serverPreferences"],
            ["vulnerabilities"], ["cipherTests"]]
PASSING = {"OK", "INFO"}
# Protocol id -> whether postern must offer it.
PROTOCOLS = {"SSLv2": False, "SSLv3": False, "TLS1": False, "TLS1_1": False,
             "TLS1_2": True, "TLS1_3": True}


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    label, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    results = doc.get("scanResult") or [{}]
    result = results[0]
    failures, notes = [], []

    for section in JUDGED:
        for item in result.get(section, []):
            if item.get("severity") not in PASSING:
                failures.append(f"{section}: {describe(item)}")
    for names in REQUIRED:
        if not any(result.get(n) for n in names):
            failures.append(f"section {'/'.join(names)} is missing or empty: the scan is incomplete")
    for section, items in result.items():
        for item in items if isinstance(items, list) else []:
            if item.get("id") == "scanProblem":
                failures.append(f"{section}: scan problem: {describe(item)}")
    offered = {i.get("id"): i.get("finding", "") for i in result.get("protocols", [])}
    for proto, wanted in PROTOCOLS.items():
        finding = offered.get(proto)
        if finding is None:
            failures.append(f"protocols: {proto} was not tested")
        elif is_offered(finding) != wanted:
            failures.append(f"protocols: {proto} {finding!r}, expected "
                            f"{'offered' if wanted else 'not offered'}")
    for item in result.get("serverDefaults", []):
        if item.get("severity") not in PASSING:
            notes.append(f"serverDefaults: {describe(item)}")

    for line in notes:
        print(f"{label}: reported, not failing: {line}")
    for line in failures:
        print(f"{label}: FAIL: {line}")
    print(f"{label}: {'FAIL' if failures else 'pass'} "
          f"({len(failures)} failing, {len(notes)} reported)")
    return 1 if failures else 0


def describe(item):
    return f"{item.get('id')} [{item.get('severity')}] {item.get('finding', '')}"


def is_offered(finding):
    # "offered", "offered with final", "not offered", "not offered (OK)", ...
    return finding.lower().startswith("offered")


if __name__ == "__main__":
    sys.exit(main())
