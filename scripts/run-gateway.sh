#!/usr/bin/env bash
# Builds and runs the gateway on its defaults (data dir ~/.local/share/tether, CIRA on 4433,
# API on 8443, metrics on 127.0.0.1:9464). Extra arguments go to `tether gateway`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    echo "installing a C compiler and make (needed to build SQLite, aws-lc and jemalloc)..." >&2
    apt-get update && apt-get install -y build-essential
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
echo "building tether (release)..." >&2
cargo build --release -p tether-gateway --bin tether
exec target/release/tether gateway "$@"
