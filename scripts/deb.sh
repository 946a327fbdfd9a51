#!/usr/bin/env bash
# Makes the Debian packages `tether` (the gateway) and `tether-agent` from the release binaries
# already built (no rebuild: `cargo build --release --workspace --bins --locked` first), with
# cargo-deb (`scripts/deb.sh install-cargo-deb`; scripts/test.sh runs it) and
# dpkg-shlibdeps (dpkg-dev) for the library dependencies. What goes in them:
# [package.metadata.deb] in gateway/Cargo.toml and agent/Cargo.toml, packaging/deb/, and the man
# pages and shell completions generated here by the binaries themselves into
# target/deb-assets/{tether,tether-agent}/. Installed: docs/install.md.
#
#   DEB_VERSION=0.1.0-2     the packages' version instead of the crates' (VERSION-1)
#   DEB_OUTPUT_DIR=DIR      where the .debs go (default target/debian). Whatever it is, cargo-deb
#                           deletes the other tether_*.deb (tether-agent_*.deb) in target/debian
#   DEB_FAST=1              lighter compression (cargo deb --fast): the gateway's package in
#                           about a fifth of the time, a fifth larger (for tests)
#
#   scripts/deb.sh install-cargo-deb    only installs cargo-deb (CARGO_DEB_VERSION) when missing
#
# Prints the packages it made, one per line, last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# crates.io `cargo-deb`, the newest when pinned (`cargo info cargo-deb`); this script and the
# [package.metadata.deb] sections were checked against it.
CARGO_DEB_VERSION=3.8.0
if [[ "${1:-}" == install-cargo-deb ]]; then
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "==> cargo install cargo-deb@$CARGO_DEB_VERSION (about 2 min on 2 cores)"
        cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
    fi
    exit 0
fi

step() { echo "==> [deb.sh, ${SECONDS}s] $*"; }
die() { echo "deb.sh: $*" >&2; exit 1; }

if ! cargo deb --version >/dev/null 2>&1; then
    die "cargo-deb is missing: scripts/deb.sh install-cargo-deb installs it (scripts/test.sh does)"
fi
# cargo-deb only warns without it, and the packages would then miss their libc6 dependency.
command -v dpkg-shlibdeps >/dev/null 2>&1 || die "dpkg-shlibdeps is missing: apt-get install dpkg-dev"

# The Cargo.tomls name target/deb-assets under the workspace root; cargo-deb finds the binaries
# (`target/release/...` there) in the real target dir.
release_dir="${CARGO_TARGET_DIR:-target}/release"
assets=target/deb-assets
output_dir="${DEB_OUTPUT_DIR:-target/debian}"
mkdir -p "$output_dir"

extra_args=()
if [[ -n "${DEB_VERSION:-}" ]]; then
    [[ "$DEB_VERSION" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "DEB_VERSION '$DEB_VERSION' is not a Debian version"
    extra_args+=(--deb-version "$DEB_VERSION")
fi
[[ "${DEB_FAST:-}" == 1 ]] && extra_args+=(--fast)

# cargo package, its binary, the Debian package.
packages=("tether-gateway tether tether" "tether-agent tether-agent tether-agent")
made=()
for entry in "${packages[@]}"; do
    read -r crate bin deb <<<"$entry"
    binary="$release_dir/$bin"
    [[ -x "$binary" ]] || die "$binary is missing: build it first (cargo build --release --workspace --bins --locked)"

    step "$deb: man pages and completions from $binary into $assets/$deb"
    rm -rf "${assets:?}/$deb"
    mkdir -p "$assets/$deb/man" "$assets/$deb/completions"
    "$binary" manpages "$assets/$deb/man" >/dev/null
    [[ -s "$assets/$deb/man/$bin.1" ]] || die "$binary manpages wrote no $bin.1"
    "$binary" completions bash >"$assets/$deb/completions/$bin.bash"
    "$binary" completions zsh >"$assets/$deb/completions/_$bin"
    "$binary" completions fish >"$assets/$deb/completions/$bin.fish"
    for f in "$assets/$deb/completions/"*; do
        [[ -s "$f" ]] || die "$binary completions wrote an empty $f"
    done

    step "$deb: cargo deb -p $crate --no-build --strip ${extra_args[*]}"
    # Stripped, as Debian ships binaries: the release profile's line tables are 3/4 of the
    # gateway's 170 MB, and compressing them took most of the time.
    # cargo deb prints the path of the package it made, alone on its last line. Its warning that
    # the target/deb-assets paths are not `target/release/` (not cargo's to build) is left out.
    errors="$assets/cargo-deb-$deb.log"
    if ! out=$(cargo deb -p "$crate" --no-build --strip --locked --output "$output_dir" "${extra_args[@]}" 2>"$errors"); then
        cat "$errors" >&2
        die "cargo deb -p $crate failed"
    fi
    grep -v "^warning: Only source paths starting with exactly 'target/release/'.*/target/deb-assets/" "$errors" >&2 || true
    deb_file=$(tail -n 1 <<<"$out")
    [[ -f "$deb_file" ]] || die "cargo deb -p $crate printed no package path (it printed: $out)"
    made+=("$deb_file")
done

step "made $(( ${#made[@]} )) packages"
for deb_file in "${made[@]}"; do
    printf '%s  %s  %s files  %s KiB\n' "$deb_file" \
        "$(dpkg-deb -f "$deb_file" Version)" \
        "$(dpkg-deb -c "$deb_file" | grep -vc '/$')" \
        "$(( $(stat -c %s "$deb_file") / 1024 ))"
done
