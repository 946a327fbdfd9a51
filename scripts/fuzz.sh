#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS seconds each (default 30), on nightly.
# Exits non-zero if any target crashes (or fails to build); the crashing input is saved under
# fuzz/artifacts/TARGET/ and can be replayed with `cargo +nightly fuzz run TARGET FILE`.
#
#   FUZZ_SECONDS=300 scripts/fuzz.sh
#   scripts/fuzz.sh build      only installs cargo-fuzz (when missing) and builds every target, so
#                              that a later run starts fuzzing at once (scripts/test.sh does this
#                              beside the tests)
#
# Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) when `cargo fuzz` is missing.
# The corpus grows in fuzz/corpus/TARGET/ (gitignored) and is reused by later runs.
set -euo pipefail

seconds="${FUZZ_SECONDS:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a positive whole number of seconds, not '$seconds'" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# A rustc version cached by an earlier stable build in fuzz/target would make nightly-only flags
# fail until that cache is deleted; never trust that cache.
export CARGO_CACHE_RUSTC_INFO=0

if [[ "${1:-}" == build ]]; then
    # The same profile and sanitizer as `cargo fuzz run` below, so that it builds nothing again.
    cargo +nightly fuzz build
    exit 0
fi

# (Not `mapfile < <(...)`: a failing `cargo fuzz list` must stop the script.)
target_list="$(cargo +nightly fuzz list)"
mapfile -t targets <<<"$target_list"
if [[ -z "$target_list" ]]; then
    echo "fuzz.sh: no fuzz targets found in fuzz/" >&2
    exit 1
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

failed=()
summary=()
for target in "${targets[@]}"; do
    echo "fuzz.sh: running $target for ${seconds}s" >&2
    if cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" 2>&1 | tee "$log"; then
        # libFuzzer ends a clean run with "Done N runs in S second(s)".
        summary+=("$target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || echo 'no summary')")
    else
        failed+=("$target")
        summary+=("$target: FAILED (see fuzz/artifacts/$target/)")
    fi
done

echo "fuzz.sh: summary" >&2
printf '  %s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
