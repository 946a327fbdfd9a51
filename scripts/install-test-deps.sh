#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (run as root). Idempotent: it
# only calls apt-get (update, then install) when a package is missing, and only runs npm when the
# pinned MeshCentral is not already in the cache dir, so a second run takes about a second.
#
#   iproute2, nftables     the behind-NAT tests (network namespaces, veth, nft masquerade)
#   curl, python3          third-party clients/servers some end-to-end tests start in namespaces
#   ca-certificates        TLS to the package registries
#   pkg-config, build-essential   building the workspace (aws-lc, bundled SQLite)
#   nodejs, npm            MeshCentral, the real MPS peer (only if `node` is missing: a NodeSource
#                          nodejs already brings npm and conflicts with Debian's npm package)
#   meshcentral@VERSION    into $TETHER_MESHCENTRAL_DIR (default .test-cache/meshcentral)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The newest release on npm when pinned (`npm view meshcentral version`); the tests' MeshCentral
# configuration (tests/src/meshcentral.rs) was checked against it.
MESHCENTRAL_VERSION=1.1.55
MESHCENTRAL_DIR=${TETHER_MESHCENTRAL_DIR:-$PWD/.test-cache/meshcentral}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

need=()
for pkg in iproute2 nftables curl ca-certificates pkg-config; do
    installed "$pkg" || need+=("$pkg")
done
command -v python3 >/dev/null 2>&1 || need+=(python3)
{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || need+=(build-essential)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps.sh: missing packages (${need[*]}); run as root" >&2
        exit 1
    fi
    echo "==> apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 16 ]; then
    echo "install-test-deps.sh: MeshCentral needs Node.js 16 or later, found $(node --version)" >&2
    exit 1
fi

installed_version=$(node -p "try { require('$MESHCENTRAL_DIR/node_modules/meshcentral/package.json').version } catch (e) { '' }")
if [ "$installed_version" != "$MESHCENTRAL_VERSION" ]; then
    echo "==> npm install meshcentral@$MESHCENTRAL_VERSION into $MESHCENTRAL_DIR (about 20 s, 450 MB)"
    mkdir -p "$MESHCENTRAL_DIR"
    (cd "$MESHCENTRAL_DIR" && npm install "meshcentral@$MESHCENTRAL_VERSION" --save-exact --no-audit --no-fund --loglevel=error)
fi
echo "==> test dependencies ready (MeshCentral $MESHCENTRAL_VERSION in $MESHCENTRAL_DIR)"
