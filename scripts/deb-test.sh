#!/usr/bin/env bash
# Proves the Debian packages the way an operator uses them, as root on a throwaway Debian 12
# machine or container (it installs, upgrades and purges `tether` and `tether-agent`, and
# refuses to run where either is installed or /var/lib/tether exists). Run scripts/deb.sh first:
# it takes target/debian/tether_*_ARCH.deb and tether-agent_*_ARCH.deb, and makes a
# higher-versioned tether package for the upgrade with it. Every daemon it starts listens on
# 127.0.0.1 only. Steps:
#
#   1. apt-get install ./tether_*.deb: the binary, man pages, completions, /etc/tether/tether.toml,
#      the tether user and its data dir; every key the shipped tether.toml names is the gateway's;
#   2. `systemd-analyze verify` of the installed unit, with and without the example drop-in
#      (skipped with a message where systemd-analyze is missing; it needs no running systemd);
#   3. the unit's own command (ExecStart=, Environment=, User=, Group=, UMask=, LimitNOFILE=,
#      NoNewPrivileges=, an empty CapabilityBoundingSet=, read from the installed unit) started
#      as the unit would start it, with loopback listeners (TETHER_*_LISTEN): the API answers
#      200 to a token made with `tether token create`, /metrics has tether_tunnels_active;
#   4. an upgrade to a higher version over it: the data dir (store, CA, token) and a changed
#      tether.toml survive, and the same token works after the command is started again;
#   5. remove (binary gone, data and configuration kept), purge (configuration gone, data kept
#      and said so), reinstall and purge with TETHER_PURGE_DATA=yes (data and user gone);
#   6. tether-agent: install, --help, man page, completions, its unit verified and not enabled,
#      remove, purge (state kept), purge with TETHER_PURGE_DATA=yes (state gone).
#
# On exit, whatever happened: the daemon is stopped, both packages purged, the drop-ins removed.
# Scratch files and logs: target/deb-test/ (kept when a step fails, or with DEB_TEST_KEEP=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { echo "==> [deb-test.sh, ${SECONDS}s] $*"; }
fail() { echo "deb-test.sh: FAILED: $*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || fail "run as root (it installs packages)"
for cmd in apt-get dpkg-deb curl python3 setpriv runuser; do
    command -v "$cmd" >/dev/null 2>&1 || fail "$cmd is missing (scripts/install-test-deps.sh)"
done

package_state() { dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | tr -d ' ' || true; }
# Installed, or its configuration left ("rc"), or half-way.
present() { case "$(package_state "$1")" in "" | un | pn) return 1 ;; *) return 0 ;; esac; }
for pkg in tether tether-agent; do
    ! present "$pkg" \
        || fail "$pkg is installed here ($(package_state "$pkg")); this test installs and purges it: use a throwaway machine"
done
for dir in /var/lib/tether /var/lib/tether-agent /etc/tether; do
    [[ ! -e "$dir" ]] || fail "$dir exists; this test would delete it: use a throwaway machine (or remove it)"
done

arch=$(dpkg --print-architecture)
shopt -s nullglob
gateway_debs=(target/debian/tether_*_"$arch".deb)
agent_debs=(target/debian/tether-agent_*_"$arch".deb)
shopt -u nullglob
[[ ${#gateway_debs[@]} -eq 1 ]] || fail "want one target/debian/tether_*_$arch.deb, found ${#gateway_debs[@]}: run scripts/deb.sh"
[[ ${#agent_debs[@]} -eq 1 ]] || fail "want one target/debian/tether-agent_*_$arch.deb, found ${#agent_debs[@]}: run scripts/deb.sh"

work="$PWD/target/deb-test"
rm -rf "$work"
mkdir -p "$work/v1" "$work/v2"
# apt's _apt user must read the .debs (else it warns that it installs them unsandboxed).
chmod 755 "$work" "$work/v1" "$work/v2"
cp -p "${gateway_debs[0]}" "${agent_debs[0]}" "$work/v1/"
gateway_deb="$work/v1/$(basename "${gateway_debs[0]}")"
agent_deb="$work/v1/$(basename "${agent_debs[0]}")"
v1=$(dpkg-deb -f "$gateway_deb" Version)

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -o Dpkg::Use-Pty=0)

daemon_pid=""
our_policy_rc_d=""
dropins=()
stop_daemon() {
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n "$daemon_pid" ]]; then wait "$daemon_pid" 2>/dev/null || true; fi
    daemon_pid=""
}
cleanup() {
    local rc=$?
    set +e
    stop_daemon
    for pkg in tether tether-agent; do
        if present "$pkg"; then
            TETHER_PURGE_DATA=yes apt-get purge "${apt_opts[@]}" "$pkg" >>"$work/cleanup.log" 2>&1
        fi
    done
    for d in "${dropins[@]}"; do rm -rf "$d"; done
    [[ -n "$our_policy_rc_d" ]] && rm -f "$our_policy_rc_d"
    # cargo-deb deletes the other versions of a package from target/debian: put deb.sh's back.
    cp -p "$work/v1/"*.deb target/debian/ 2>/dev/null
    if [[ $rc -eq 0 && "${DEB_TEST_KEEP:-}" != 1 ]]; then
        rm -rf "$work"
    else
        echo "deb-test.sh: logs and scratch files kept in $work" >&2
    fi
    exit $rc
}
trap cleanup EXIT
# Ctrl-C or a CI timeout: a failure, cleaned up like one.
trap 'exit 130' INT
trap 'exit 143' TERM

# Where systemd runs, deb-systemd-invoke would start tether.service on install, listening on
# all addresses: forbid service starts (101, "action forbidden"), as install-test-deps.sh does.
# Where it does not run (a container) the packages' scripts start nothing anyway.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    our_policy_rc_d=/usr/sbin/policy-rc.d
fi

apt_install() { # LOG DEB...
    local log=$1
    shift
    apt-get install "${apt_opts[@]}" --no-install-recommends "$@" >"$log" 2>&1 \
        || { cat "$log" >&2; fail "apt-get install $*"; }
}
apt_run() { # LOG apt-get ARGS...  (environment passed through)
    local log=$1
    shift
    apt-get "${apt_opts[@]}" "$@" >"$log" 2>&1 || { cat "$log" >&2; fail "apt-get $*"; }
}

unit_path() { # UNIT: the installed unit file (merged /usr: /lib is /usr/lib)
    local f
    for f in "/lib/systemd/system/$1" "/usr/lib/systemd/system/$1"; do
        [[ -f "$f" ]] && { echo "$f"; return; }
    done
    fail "$1 is not installed in /lib/systemd/system"
}

verify_unit() { # UNIT DROPIN_EXAMPLE
    local unit=$1 example=$2 path
    path=$(unit_path "$unit")
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        step "systemd-analyze is missing (package systemd): not verifying $unit"
        return
    fi
    step "systemd-analyze verify $path"
    systemd-analyze verify "$path" || fail "systemd-analyze verify $path"
    local dir="/etc/systemd/system/$unit.d"
    [[ -e "$dir" ]] && fail "$dir exists already"
    dropins+=("$dir")
    mkdir -p "$dir"
    cp "$example" "$dir/"
    step "systemd-analyze verify $path with the drop-in $example"
    systemd-analyze verify "$path" || fail "systemd-analyze verify $path with $example"
    rm -rf "$dir"
}

free_port() { # tcp|udp: a port free on 127.0.0.1 now
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}
cira_port=$(free_port tcp)
api_port=$(free_port tcp)
metrics_port=$(free_port tcp)
agent_port=$(free_port udp)
[[ $(printf '%s\n' "$cira_port" "$api_port" "$metrics_port" | sort -u | wc -l) -eq 3 ]] \
    || fail "the free ports picked collide ($cira_port $api_port $metrics_port)"

unit_value() { # UNIT KEY: the last value of KEY= in the installed unit ([Service] keys are unique)
    sed -n "s/^$2=//p" "$(unit_path "$1")" | tail -n 1
}

# Starts tether.service's command as the unit would (what systemd does and this does not: the
# mount namespace of ProtectSystem/ProtectHome/PrivateTmp, the other sandboxing).
start_unit_command() { # LOG
    local log=$1 unit=tether.service exec_start user group umask_value nofile nnp bounding
    exec_start=$(unit_value $unit ExecStart)
    exec_start=${exec_start#[-@:+!]}
    [[ -n "$exec_start" ]] || fail "$unit has no ExecStart="
    user=$(unit_value $unit User)
    group=$(unit_value $unit Group)
    [[ -n "$user" ]] || fail "$unit has no User="
    umask_value=$(unit_value $unit UMask)
    nofile=$(unit_value $unit LimitNOFILE)
    nnp=$(unit_value $unit NoNewPrivileges)
    bounding=$(grep -c '^CapabilityBoundingSet=$' "$(unit_path $unit)" || true)
    local -a env_assignments=() words=() setpriv_args=(--reuid "$user" --regid "${group:-$user}" --init-groups)
    local line
    while IFS= read -r line; do
        read -ra words <<<"$line"
        env_assignments+=("${words[@]}")
    done < <(sed -n 's/^Environment=//p' "$(unit_path $unit)")
    [[ "$nnp" == "true" || "$nnp" == "yes" ]] && setpriv_args+=(--no-new-privs)
    [[ "$bounding" -gt 0 ]] && setpriv_args+=(--bounding-set -all --inh-caps -all)
    read -ra words <<<"$exec_start"
    # LimitNOFILE= sets the soft and the hard limit; raising the hard limit needs
    # CAP_SYS_RESOURCE, which a container may lack: then the soft limit goes up to the hard one.
    local nofile_note="LimitNOFILE $nofile"
    if [[ -n "$nofile" ]] && ! (ulimit -n "$nofile") 2>/dev/null; then
        nofile_note="LimitNOFILE $nofile cannot be set here (hard limit $(ulimit -Hn), no CAP_SYS_RESOURCE): $(ulimit -Hn)"
        nofile=$(ulimit -Hn)
    fi
    echo "    as $user: ${env_assignments[*]} ${words[*]} (setpriv ${setpriv_args[*]}; umask ${umask_value:-0022}; $nofile_note)"
    (
        [[ -n "$umask_value" ]] && umask "$umask_value"
        [[ -n "$nofile" ]] && ulimit -n "$nofile"
        cd /
        exec setpriv "${setpriv_args[@]}" -- env -i \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
            "${env_assignments[@]}" \
            TETHER_CIRA_LISTEN="127.0.0.1:$cira_port" TETHER_API_LISTEN="127.0.0.1:$api_port" \
            TETHER_METRICS_LISTEN="127.0.0.1:$metrics_port" TETHER_AGENT_LISTEN="127.0.0.1:$agent_port" \
            "${words[@]}"
    ) >"$log" 2>&1 &
    daemon_pid=$!
}

api_status() { # TOKEN: the HTTP status of GET /api/v1/devices
    curl -s -o "$work/devices.json" -w '%{http_code}' --max-time 5 \
        --cacert /var/lib/tether/tls/ca.pem -H "Authorization: Bearer $1" \
        "https://127.0.0.1:$api_port/api/v1/devices" || true
}

wait_for_api() { # LOG TOKEN|"": waits until the API answers (with TOKEN: 200)
    local log=$1 token=$2 status=""
    for _ in $(seq 150); do
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$log" >&2; fail "the gateway exited"; }
        if [[ -f /var/lib/tether/tls/ca.pem ]]; then
            status=$(api_status "${token:-none}")
            if [[ -z "$token" && "$status" =~ ^[1-5][0-9][0-9]$ ]] || [[ "$status" == 200 ]]; then
                return
            fi
        fi
        sleep 0.2
    done
    cat "$log" >&2
    fail "the API on 127.0.0.1:$api_port did not answer ${token:+200 }within 30 s (last status: ${status:-none})"
}

check_api_and_metrics() { # TOKEN
    local status
    status=$(api_status "$1")
    [[ "$status" == 200 ]] || fail "GET /api/v1/devices with the token: $status, not 200"
    echo "    GET https://127.0.0.1:$api_port/api/v1/devices: 200 ($(head -c 80 "$work/devices.json"))"
    curl -sf --max-time 5 "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt" \
        || fail "GET http://127.0.0.1:$metrics_port/metrics failed"
    grep -q '^tether_tunnels_active' "$work/metrics.txt" || fail "/metrics has no tether_tunnels_active"
    echo "    GET http://127.0.0.1:$metrics_port/metrics: $(grep -m1 '^tether_tunnels_active' "$work/metrics.txt") ..."
}

as_tether() { runuser -u tether -- tether --data-dir /var/lib/tether --config /etc/tether/tether.toml "$@"; }

# ---- the gateway package ----------------------------------------------------------------------

step "apt-get install $gateway_deb ($v1)"
apt_install "$work/install-v1.log" "$gateway_deb"
[[ "$(package_state tether)" == "ii" ]] || fail "tether is not installed after apt-get install ($(package_state tether))"
[[ -x /usr/bin/tether ]] || fail "/usr/bin/tether is missing"
/usr/bin/tether --version
getent passwd tether >/dev/null || fail "the postinst made no tether user"
[[ "$(stat -c '%U:%G %a' /var/lib/tether)" == "tether:tether 750" ]] \
    || fail "/var/lib/tether is $(stat -c '%U:%G %a' /var/lib/tether), not tether:tether 750"
[[ -f /etc/tether/tether.toml ]] || fail "/etc/tether/tether.toml is missing"
dpkg-query -W -f='${Conffiles}\n' tether | grep -q '/etc/tether/tether.toml' \
    || fail "/etc/tether/tether.toml is not a conffile"
echo "    /usr/bin/tether, user $(id tether), /var/lib/tether tether:tether 750, conffile /etc/tether/tether.toml"

step "man pages and completions"
command -v man >/dev/null 2>&1 || fail "man is missing (package man-db)"
man -w tether >/dev/null || fail "man -w tether finds no page (dpkg path-exclude for /usr/share/man in /etc/dpkg/dpkg.cfg.d?)"
man_pages=$(dpkg -L tether | grep -c '^/usr/share/man/man1/.*\.1\.gz$' || true)
[[ "$man_pages" -ge 2 ]] || fail "tether ships $man_pages man pages, expected tether.1 and one per subcommand"
for f in /usr/share/bash-completion/completions/tether /usr/share/zsh/vendor-completions/_tether \
    /usr/share/fish/vendor_completions.d/tether.fish /usr/share/doc/tether/examples/lan-tools.conf \
    /usr/share/doc/tether/install.md; do
    [[ -s "$f" ]] || fail "$f is missing or empty"
done
bash -c 'source /usr/share/bash-completion/completions/tether && complete -p tether' >/dev/null \
    || fail "the bash completion does not load (complete -p tether)"
echo "    $(man -w tether), $man_pages man pages in all; bash, zsh and fish completions"

verify_unit tether.service /usr/share/doc/tether/examples/lan-tools.conf

step "every key in the shipped tether.toml is one the gateway reads (all uncommented but the examples)"
# `# key = value` and `# [section]` lines uncommented, `# example` ones left out: the gateway
# loads it (an unknown key or a bad value is an error) before it lists the tokens of a scratch
# data dir.
mkdir -p "$work/config-check"
sed -n -e '/# example$/d' -e 's/^# \(\[[a-z]*\]\)$/\1/p' -e 's/^# \([a-z_]* = .*\)$/\1/p' \
    /etc/tether/tether.toml >"$work/config-check/tether.toml"
keys=$(grep -c ' = ' "$work/config-check/tether.toml")
tether --data-dir "$work/config-check" --config "$work/config-check/tether.toml" token list \
    >"$work/config-check.log" 2>&1 || { cat "$work/config-check.log" >&2; fail "the gateway rejects the uncommented tether.toml"; }
echo "    $keys keys in $(grep -c '^\[' "$work/config-check/tether.toml") sections accepted"

step "the unit's command, as the unit runs it, on 127.0.0.1 (CIRA $cira_port, API $api_port, metrics $metrics_port, agents udp $agent_port)"
start_unit_command "$work/gateway-1.log"
wait_for_api "$work/gateway-1.log" ""
token_out=$(as_tether token create ci 2>&1) || { echo "$token_out" >&2; fail "runuser -u tether -- tether ... token create ci"; }
token=$(tail -n 1 <<<"$token_out")
[[ "$token" =~ ^tth_[A-Za-z0-9_-]+$ ]] || fail "tether token create printed no token on its last line: $token_out"
[[ "$(stat -c %U /var/lib/tether/tether.db)" == tether ]] || fail "/var/lib/tether/tether.db is not the tether user's"
wait_for_api "$work/gateway-1.log" "$token"
check_api_and_metrics "$token"
ca_sum=$(sha256sum </var/lib/tether/tls/ca.pem)
step "stopping it (SIGTERM, as systemctl stop)"
kill -TERM "$daemon_pid"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=""
[[ $rc -eq 0 ]] || { cat "$work/gateway-1.log" >&2; fail "the gateway exited $rc on SIGTERM"; }
echo "    exited 0"

# ---- upgrade -----------------------------------------------------------------------------------

v2="$v1+debtest1"
dpkg --compare-versions "$v2" gt "$v1" || fail "$v2 is not higher than $v1"
step "making $v2 (DEB_VERSION=$v2 DEB_FAST=1 scripts/deb.sh)"
DEB_VERSION="$v2" DEB_FAST=1 DEB_OUTPUT_DIR="$work/v2" scripts/deb.sh >"$work/deb-v2.log" 2>&1 \
    || { cat "$work/deb-v2.log" >&2; fail "scripts/deb.sh with DEB_VERSION=$v2"; }
gateway_deb_v2=$(ls "$work/v2/"tether_*_"$arch".deb)
echo "# changed by deb-test.sh" >>/etc/tether/tether.toml
conf_sum=$(sha256sum </etc/tether/tether.toml)

step "apt-get install $gateway_deb_v2 over $v1"
apt_install "$work/install-v2.log" "$gateway_deb_v2"
[[ "$(dpkg-query -W -f='${Version}' tether)" == "$v2" ]] || fail "tether is $(dpkg-query -W -f='${Version}' tether) after the upgrade, not $v2"
[[ "$(sha256sum </var/lib/tether/tls/ca.pem)" == "$ca_sum" ]] || fail "the CA changed in the upgrade"
[[ "$(sha256sum </etc/tether/tether.toml)" == "$conf_sum" ]] || fail "the changed /etc/tether/tether.toml was replaced"
[[ -f /var/lib/tether/tether.db ]] || fail "the store is gone after the upgrade"
echo "    $v2 installed; the CA, the store and the changed tether.toml kept"
start_unit_command "$work/gateway-2.log"
wait_for_api "$work/gateway-2.log" "$token"
check_api_and_metrics "$token"
echo "    the token made before the upgrade still works"
stop_daemon

# ---- remove, purge -----------------------------------------------------------------------------

step "apt-get remove tether"
apt_run "$work/remove.log" remove tether
[[ ! -e /usr/bin/tether ]] || fail "/usr/bin/tether is still there after remove"
[[ -f /etc/tether/tether.toml && -f /var/lib/tether/tether.db && -f /var/lib/tether/tls/ca.pem ]] \
    || fail "remove took the configuration or the data"
getent passwd tether >/dev/null || fail "remove took the tether user"
echo "    binary gone; /etc/tether/tether.toml, /var/lib/tether and the tether user kept"

step "apt-get purge tether"
apt_run "$work/purge.log" purge tether
[[ ! -e /etc/tether ]] || fail "/etc/tether is still there after purge: $(ls -A /etc/tether)"
[[ -f /var/lib/tether/tether.db && -f /var/lib/tether/tls/ca.pem ]] || fail "purge took the data dir without TETHER_PURGE_DATA=yes"
grep -q 'kept the data dir /var/lib/tether' "$work/purge.log" || { cat "$work/purge.log" >&2; fail "purge did not say it kept the data dir"; }
echo "    /etc/tether gone; /var/lib/tether kept, and said: $(grep -m1 'kept the data dir' "$work/purge.log")"

step "apt-get install again, then TETHER_PURGE_DATA=yes apt-get purge tether"
apt_install "$work/install-v2-again.log" "$gateway_deb_v2"
[[ "$(sha256sum </var/lib/tether/tls/ca.pem)" == "$ca_sum" ]] || fail "the reinstall did not find the kept data dir"
TETHER_PURGE_DATA=yes apt_run "$work/purge-data.log" purge tether
[[ ! -e /var/lib/tether ]] || fail "/var/lib/tether is still there after a purge with TETHER_PURGE_DATA=yes"
! getent passwd tether >/dev/null || fail "the tether user is still there after a purge with TETHER_PURGE_DATA=yes"
[[ ! -e /etc/tether ]] || fail "/etc/tether is still there after purge"
echo "    /var/lib/tether and the tether user gone"

# ---- the agent package -------------------------------------------------------------------------

step "apt-get install $agent_deb"
apt_install "$work/install-agent.log" "$agent_deb"
[[ "$(package_state tether-agent)" == "ii" ]] || fail "tether-agent is not installed ($(package_state tether-agent))"
tether-agent --help >"$work/agent-help.txt" || fail "tether-agent --help failed"
grep -q 'enroll' "$work/agent-help.txt" || fail "tether-agent --help does not list enroll"
man -w tether-agent >/dev/null || fail "man -w tether-agent finds no page"
for f in /usr/share/bash-completion/completions/tether-agent /usr/share/zsh/vendor-completions/_tether-agent \
    /usr/share/fish/vendor_completions.d/tether-agent.fish /usr/share/doc/tether-agent/agents.md \
    /usr/share/doc/tether-agent/examples/support-scripts.conf; do
    [[ -s "$f" ]] || fail "$f is missing or empty"
done
# Not enabled on install: it cannot run before `tether-agent enroll`.
[[ ! -e /etc/systemd/system/multi-user.target.wants/tether-agent.service ]] || fail "tether-agent.service was enabled on install"
echo "    tether-agent --help lists its commands; $(man -w tether-agent); completions; the unit installed, not enabled"
verify_unit tether-agent.service /usr/share/doc/tether-agent/examples/support-scripts.conf

step "apt-get remove, then purge tether-agent (its state dir kept)"
mkdir -p /var/lib/tether-agent
echo "deb-test" >/var/lib/tether-agent/deb-test
apt_run "$work/remove-agent.log" remove tether-agent
[[ ! -e /usr/bin/tether-agent ]] || fail "/usr/bin/tether-agent is still there after remove"
apt_run "$work/purge-agent.log" purge tether-agent
[[ -f /var/lib/tether-agent/deb-test ]] || fail "purge took /var/lib/tether-agent without TETHER_PURGE_DATA=yes"
grep -q 'kept the state dir /var/lib/tether-agent' "$work/purge-agent.log" \
    || { cat "$work/purge-agent.log" >&2; fail "purge did not say it kept the agent's state dir"; }
step "apt-get install tether-agent again, then TETHER_PURGE_DATA=yes apt-get purge tether-agent"
apt_install "$work/install-agent-again.log" "$agent_deb"
TETHER_PURGE_DATA=yes apt_run "$work/purge-agent-data.log" purge tether-agent
[[ ! -e /var/lib/tether-agent ]] || fail "/var/lib/tether-agent is still there after a purge with TETHER_PURGE_DATA=yes"

step "the packages install, run, upgrade and purge as documented (docs/install.md)"
