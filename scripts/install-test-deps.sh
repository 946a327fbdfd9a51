#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (run as root): network tools
# for the NAT test (iproute2, nftables), curl, Node.js for MeshCentral, and MeshCentral itself
# from npm into .test-cache/meshcentral (or $TETHER_MESHCENTRAL_DIR). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

MESHCENTRAL_VERSION=1.1.55
MESHCENTRAL_DIR=${TETHER_MESHCENTRAL_DIR:-$PWD/.test-cache/meshcentral}

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
dpkg -s ca-certificates >/dev/null 2>&1 || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
    echo "==> apt-get install ${need[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

installed=$(node -e "try{console.log(require('$MESHCENTRAL_DIR/node_modules/meshcentral/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ "$installed" != "$MESHCENTRAL_VERSION" ]; then
    echo "==> npm install meshcentral@$MESHCENTRAL_VERSION into $MESHCENTRAL_DIR"
    mkdir -p "$MESHCENTRAL_DIR"
    (cd "$MESHCENTRAL_DIR" && npm install "meshcentral@$MESHCENTRAL_VERSION" --no-audit --no-fund --loglevel=error)
fi
echo "==> test dependencies ready"
