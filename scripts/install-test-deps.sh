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
#   postgresql             the PostgreSQL store: tests start their own throwaway cluster
#                          from its server binaries (/usr/lib/postgresql/*/bin, tests/src/postgres.rs)
#                          on a free loopback port. Installing it on a machine running systemd also
#                          starts Debian's default cluster on 5432; the tests neither use nor mind it.
#   amtterm                Debian's AMT Serial-over-LAN console (1.4), the real peer of the SOL
#                          tests (driven under `script`, from util-linux, for the tty it needs)
#   iperf3, socat, jq, openssl   the side-by-side bench's smoke (loadtest/bench.sh); socat also
#                                an echo service on an agent PC (tests/tests/actions.rs)
#   sqlite3                      the support-action tests change the store's rows as an attacker would
#   amt==0.8.0 (PyPI)      amtctrl, a real WS-Management power-control client of amt-sim
#                          (tests/tests/wsman_peers.rs); pip, only when amtctrl is missing
#   aiosmtpd==1.4.6 (PyPI) a real SMTP server for the mail tests (tests/tests/mail.rs); pip, only
#                          when python3 cannot import it
#   schemathesis==4.32.5 (PyPI)  checks the API against its OpenAPI document with a token of each
#                          role (tests/tests/openapi.rs); pip, only when that version is missing
#   haproxy                the load balancer in front of several gateways: tests run their own
#                          `haproxy -f FILE -db` (tests/src/haproxy.rs), never the system service.
#   qemu-system-x86        boots the appliance image (tests/tests/appliance.rs, always TCG). Debian
#                          12's qemu-system (7.2) cannot sit beside a backported qemu-utils (10.x,
#                          `Breaks: qemu-system-common (< 1:8.0)`): when such a qemu-utils is there,
#                          the same apt command brings it back to the release's version.
#   busybox-static, cpio, zstd, kmod, e2fsprogs   the appliance's initramfs (appliance-image/build.sh)
#   grub-pc-bin, grub-efi-amd64-bin, grub-common, xorriso, mtools, ovmf   its BIOS/UEFI ISO
#   debootstrap, dosfstools, fdisk, syslinux, syslinux-common   its Debian disk image
#   qemu-utils             qemu-img: the disk image's tests boot a qcow2 overlay of it
#   expect                 drives the disk image's setup menu over its serial console
#   chromium               Debian's, the browser of the portal's browser test (only when missing)
#   playwright-core@VERSION  into $TETHER_PLAYWRIGHT_DIR (default .test-cache/playwright): drives
#                          that Chromium (tests/browser/invite_flow.mjs; it never downloads a browser)
#   gcc-mingw-w64-x86-64-posix and rustup's x86_64-pc-windows-gnu standard library: checking that
#                          the agent compiles for Windows (aws-lc's C is built for that target)
#   prometheus             Debian's Prometheus and promtool: the dashboard and alert rules of
#                          deploy/ evaluated against live gateways (tests/tests/monitoring.rs)
#   (cargo-deb, from crates.io, is installed by scripts/test.sh beside the build:
#    `scripts/deb.sh install-cargo-deb`)
#   dpkg-dev, man-db, systemd   the packages' library dependencies (dpkg-shlibdeps), `man -w` and
#                          `systemd-analyze verify` of their units (scripts/deb-test.sh), each only
#                          when its command is missing; systemd is installed, never started
#
# Where no init system runs (a container), service starts during the install are switched off
# with a temporary policy-rc.d, so that a package's postinst neither starts a daemon nor fails
# trying to; an existing policy-rc.d is left as it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The newest release on npm when pinned (`npm view meshcentral version`); the tests' MeshCentral
# configuration (tests/src/meshcentral.rs) was checked against it.
MESHCENTRAL_VERSION=1.1.55
MESHCENTRAL_DIR=${TETHER_MESHCENTRAL_DIR:-$PWD/.test-cache/meshcentral}
# npm `playwright-core`, driving Debian's chromium (tests/tests/portal_browser.rs).
PLAYWRIGHT_VERSION=1.65.2
PLAYWRIGHT_DIR=${TETHER_PLAYWRIGHT_DIR:-$PWD/.test-cache/playwright}
# PyPI `amt` (amtctrl), as TESTBED.md measured it.
AMT_VERSION=0.8.0
# PyPI `aiosmtpd`, as TESTBED.md measured it.
AIOSMTPD_VERSION=1.4.6
# PyPI `schemathesis`, the version tests/src/schemathesis.rs pins.
SCHEMATHESIS_VERSION=4.32.5

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

need=()
for pkg in iproute2 nftables curl ca-certificates pkg-config iperf3 socat jq openssl sqlite3; do
    installed "$pkg" || need+=("$pkg")
done
command -v python3 >/dev/null 2>&1 || need+=(python3)
{ command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || need+=(build-essential)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
# Any PostgreSQL version will do (the harness takes the newest); the package also creates the
# `postgres` user that runs initdb when the tests run as root.
{ compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && getent passwd postgres >/dev/null; } || need+=(postgresql)
command -v amtterm >/dev/null 2>&1 || need+=(amtterm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || need+=(haproxy)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
{ [ -x /usr/bin/prometheus ] && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
for pkg in qemu-system-x86 qemu-utils busybox-static cpio zstd kmod e2fsprogs grub-pc-bin grub-efi-amd64-bin \
    grub-common xorriso mtools ovmf debootstrap dosfstools fdisk syslinux syslinux-common expect \
    gcc-mingw-w64-x86-64-posix; do
    installed "$pkg" || need+=("$pkg")
done
if [[ " ${need[*]} " == *" qemu-system-x86 "* ]] && installed qemu-utils \
    && dpkg --compare-versions "$(dpkg-query -W -f='${Version}' qemu-utils)" ge 1:8.0; then
    need+=("qemu-utils/$(. /etc/os-release && echo "$VERSION_CODENAME")")
fi

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps.sh: missing packages (${need[*]}); run as root" >&2
        exit 1
    fi
    echo "==> apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    policy_rc_d=/usr/sbin/policy-rc.d
    our_policy_rc_d=false
    if [ ! -d /run/systemd/system ] && [ ! -e "$policy_rc_d" ]; then
        # 101: "action forbidden", which invoke-rc.d and deb-systemd-invoke honour.
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc_d"
        chmod 755 "$policy_rc_d"
        our_policy_rc_d=true
        trap 'rm -f "$policy_rc_d"' EXIT
    fi
    apt-get update
    # --allow-downgrades: only the qemu-utils above is ever downgraded.
    apt-get install -y --no-install-recommends --allow-downgrades "${need[@]}"
    if $our_policy_rc_d; then
        rm -f "$policy_rc_d"
        trap - EXIT
    fi
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
installed_version=$(node -p "try { require('$PLAYWRIGHT_DIR/node_modules/playwright-core/package.json').version } catch (e) { '' }")
if [ "$installed_version" != "$PLAYWRIGHT_VERSION" ]; then
    echo "==> npm install playwright-core@$PLAYWRIGHT_VERSION into $PLAYWRIGHT_DIR"
    mkdir -p "$PLAYWRIGHT_DIR"
    # playwright-core downloads no browser on install (the tests use /usr/bin/chromium).
    (cd "$PLAYWRIGHT_DIR" && npm install "playwright-core@$PLAYWRIGHT_VERSION" --save-exact --no-audit --no-fund --loglevel=error)
fi
# pip_install SPEC WHY: into the system's python3 (Debian 12 marks it externally managed, hence
# the --break-system-packages retry; these tools are pinned and nothing else relies on them).
pip_install() {
    echo "==> pip install $1 ($2)"
    python3 -m pip --version >/dev/null 2>&1 || { apt-get install -y --no-install-recommends python3-pip; }
    python3 -m pip install "$1" 2>/dev/null || python3 -m pip install --break-system-packages "$1"
}
command -v amtctrl >/dev/null 2>&1 || pip_install "amt==$AMT_VERSION" "amtctrl"
python3 -c 'import aiosmtpd' >/dev/null 2>&1 \
    || pip_install "aiosmtpd==$AIOSMTPD_VERSION" "the SMTP server of the mail tests"
schemathesis --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION" \
    || pip_install "schemathesis==$SCHEMATHESIS_VERSION" "the OpenAPI check"
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
    echo "==> rustup target add x86_64-pc-windows-gnu (the agent's Windows check)"
    rustup target add x86_64-pc-windows-gnu
fi
echo "==> test dependencies ready (MeshCentral $MESHCENTRAL_VERSION in $MESHCENTRAL_DIR, playwright-core $PLAYWRIGHT_VERSION in $PLAYWRIGHT_DIR, PostgreSQL, HAProxy, qemu, Prometheus)"
