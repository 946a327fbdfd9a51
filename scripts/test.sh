#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root: the NAT test builds network
# namespaces): installs what the tests need, builds once in release mode, runs every test
# (unit, property, end-to-end, behind-NAT, MeshCentral conformance), then a short fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "==> building release binaries (tests start the real tether and amt-sim)"
cargo build --release --workspace --bins --locked

echo "==> running the tests"
cargo test --release --workspace --locked -- --test-threads="${TEST_THREADS:-2}"

echo "==> fuzzing the APF parser for ${FUZZ_SECONDS:-30}s"
FUZZ_SECONDS=${FUZZ_SECONDS:-30} scripts/fuzz.sh
