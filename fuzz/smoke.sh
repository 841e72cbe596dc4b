#!/usr/bin/env bash
# Fuzz smoke test: builds every target with libFuzzer's coverage
# instrumentation on stable rustc (no cargo-fuzz, no nightly), replays the
# recorded regressions, then fuzzes each target for FUZZ_SECONDS from its seed
# corpus. Prints one summary line per target; exits non-zero on any crash,
# timeout or out-of-memory.
#
#   FUZZ_SECONDS=15      seconds per target
#   FUZZ_TARGETS="..."   subset of targets (default: all)
#   CARGO_BUILD_JOBS=N   build parallelism (cargo's own variable)
#
# New corpus entries go to fuzz/corpus/<target>/ and crash inputs to
# fuzz/artifacts/<target>/ (both git-ignored); seeds are only read.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-15}
targets=${FUZZ_TARGETS:-line command data reply_parser sasl session_raw session_alphabet headers wrap proxy_header}
host=$(rustc -vV | sed -n 's/^host: //p')

# What `cargo fuzz build --sanitizer none` passes (cargo-fuzz 0.13), minus
# -Cdebug-assertions (set in Cargo.toml's release profile instead). All are
# stable flags. --target keeps them off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 --cfg fuzzing"

echo "== fuzz: build ($host)"
if ! cargo build --locked --release --target "$host" --target-dir target --bins; then
    echo "fuzz build failed; if fuzz/Cargo.lock is out of date after a dependency"
    echo "change in postern, run 'cargo update -p postern' in fuzz/ and commit it"
    exit 1
fi
bin=target/$host/release

failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=artifacts/$t/smoke.log

    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        if ! "$bin/$t" regressions/"$t"/* >"$log" 2>&1; then
            echo "$t: REGRESSION fails again:"
            grep -A3 -m1 "panicked at" "$log" || tail -20 "$log"
            failed+=("$t")
            continue
        fi
    fi

    max_len=()
    case $t in
        # Long enough to cross the 12288-octet AUTH line cap with raw bytes.
        line | session_raw) max_len=(-max_len=16384) ;;
        # Room for lines past 998 octets and sections past the smaller limits.
        headers) max_len=(-max_len=8192) ;;
    esac
    status=0
    "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${max_len[@]}" \
        >"$log" 2>&1 || status=$?

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ "$status" -eq 0 ]; then
        printf '%-17s ok    %9s execs %7s/s  cov %5s  ft %6s  corpus %5s  (%ss)\n' \
            "$t:" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$seconds"
    else
        printf '%-17s CRASH (exit %s) after %s execs, cov %s\n' \
            "$t:" "$status" "${execs:-?}" "${cov:-?}"
        grep -A3 -m1 -E "panicked at|ERROR: libFuzzer" "$log" || tail -30 "$log"
        for a in artifacts/"$t"/crash-* artifacts/"$t"/timeout-* artifacts/"$t"/oom-*; do
            [ -f "$a" ] || continue
            echo "  input $a ($(wc -c <"$a") bytes): $(head -c 256 "$a" | od -An -tx1 | tr -d ' \n')"
        done
        failed+=("$t")
    fi
done

ran=$(echo $targets | wc -w)
echo "fuzz: $((ran - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in fuzz/artifacts/<target>/smoke.log)"
    exit 1
fi
