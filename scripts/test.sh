#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine, as root (the behind-NAT tests build
# network namespaces): installs what the tests need, builds the release binaries once, runs every
# test (unit, property, end-to-end, behind-NAT, MeshCentral conformance, the appliance image booted
# under qemu) against them, then a short fuzz run.
#
#   FUZZ_SECONDS=10    seconds per fuzz target (scripts/fuzz.sh; longer runs: FUZZ_SECONDS=300 scripts/fuzz.sh)
#   TEST_THREADS=2     tests run at once inside each test binary (end-to-end tests are heavy)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { echo "==> [$(date +%H:%M:%S), ${SECONDS}s] $*"; }

step "installing test dependencies"
scripts/install-test-deps.sh

# The end-to-end tests start target/release/tether and amt-sim: build them first, with the same
# profile as the tests. `--tests` matters: dev-dependencies change the features of shared crates
# (getrandom, regex-syntax), so binaries built by a plain `--bins` have other dependency hashes
# than `cargo test` wants, and the test step would rebuild amt-sim, the gateway and their deps.
# Built together (measured with `--unit-graph`), the test step below only compiles doctests; a
# plain `--bins` would leave it 44 units to rebuild.
# Beside the cargo build, three jobs that do not need its binaries: cargo-deb's install (for the
# Debian packages, at low priority), the appliance disk image's
# Debian root (debootstrap and its upgrade: about six minutes of downloads on a fresh machine,
# cached in target/appliance/cache), and a check that the agent compiles for Windows (its
# collectors there are behind cfg(windows); their decoding is tested on Linux). The check has
# its own target dir and a lower priority: it fills the core the build leaves idle while it
# compiles the gateway crate alone.
mkdir -p target
rootfs_log=target/appliance-rootfs.log
appliance-image/build.sh rootfs-cache >"$rootfs_log" 2>&1 &
rootfs=$!
windows_log=target/windows-check.log
CARGO_TARGET_DIR=target/windows nice -n 10 cargo check --target x86_64-pc-windows-gnu -p tether-agent --locked \
    >"$windows_log" 2>&1 &
windows_check=$!
# cargo-deb, for the Debian packages made and installed after the tests (scripts/deb.sh).
cargo_deb_log=target/cargo-deb-install.log
nice -n 10 scripts/deb.sh install-cargo-deb >"$cargo_deb_log" 2>&1 &
cargo_deb=$!

step "building the release binaries and tests (the first build takes several minutes on 2 cores)"
cargo build --release --workspace --bins --tests --examples --locked

if ! wait "$windows_check"; then
    cat "$windows_log" >&2
    echo "test.sh: the agent does not compile for Windows (x86_64-pc-windows-gnu)" >&2
    exit 1
fi
step "the agent compiles for Windows ($(grep -c '^ *Checking\|^ *Compiling' "$windows_log") crates checked)"
if ! wait "$rootfs"; then
    cat "$rootfs_log" >&2
    echo "test.sh: making the appliance's Debian root filesystem failed" >&2
    exit 1
fi
step "the appliance's Debian root filesystem is cached: $(tail -n 1 "$rootfs_log")"
if ! wait "$cargo_deb"; then
    cat "$cargo_deb_log" >&2
    echo "test.sh: installing cargo-deb failed" >&2
    exit 1
fi

# tests/tests/appliance.rs boots them under qemu; they pack the tether binary just built and
# the Debian root cached above; the update bundle is the disk image's root, signed with a key
# made in target/appliance/keys (a throwaway CI key). The rollback test runs only in the full
# run: cargo test --release -p tether-tests --test appliance -- --include-ignored
step "building the appliance images: minimal, ISO, disk, update bundle (appliance-image/build.sh all)"
appliance-image/build.sh all

# Beside the tests, which mostly wait on processes and timeouts, at low priority: the fuzz
# targets' build (and cargo-fuzz's install, on a fresh machine), then the Debian packages made,
# installed, run as their unit runs them, upgraded and purged, as an operator would
# (docs/install.md; they touch /usr/bin/tether and /var/lib/tether, never target/).
mkdir -p target/logs
fuzz_build_log=target/logs/fuzz-build.log
nice -n 10 scripts/fuzz.sh build >"$fuzz_build_log" 2>&1 &
fuzz_build=$!
deb_log=target/logs/deb.log
{ nice -n 10 scripts/deb.sh && nice -n 10 scripts/deb-test.sh; } >"$deb_log" 2>&1 &
debs=$!

step "running the tests (release)"
tests_ok=true
cargo test --release --workspace --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-2}" || tests_ok=false

step "the Debian packages (scripts/deb.sh, scripts/deb-test.sh, beside the tests)"
if wait "$debs"; then
    grep '^==>' "$deb_log" | tail -n 3
else
    cat "$deb_log" >&2
    echo "test.sh: the Debian packages failed (log above: $deb_log)" >&2
    tests_ok=false
fi
if ! wait "$fuzz_build"; then
    cat "$fuzz_build_log" >&2
    echo "test.sh: building the fuzz targets failed" >&2
    tests_ok=false
fi
$tests_ok || { echo "test.sh: tests failed (above)" >&2; exit 1; }

step "store throughput, short (full: target/release/tether-store-bench --devices 2000 --rounds 3)"
target/release/tether-store-bench --devices 500 --rounds 1

step "side-by-side bench, smoke (full, with rathole: loadtest/bench.sh; docs/benchmarks.md)"
NO_BUILD=1 SYSTEMS="direct socat tether" ROUNDS=1 SECS=1 PUSH_MIB=32 OUT=target/bench/smoke.md loadtest/bench.sh

if [ ! -x scripts/fuzz.sh ]; then
    echo "test.sh: scripts/fuzz.sh is missing or not executable" >&2
    exit 1
fi
step "fuzzing for ${FUZZ_SECONDS:-10}s per target"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz.sh

step "all tests passed"
