#!/usr/bin/env bash
# Tether beside what an MSP would otherwise pick, in one run on one machine: direct loopback, a
# socat relay, rathole 0.5 (plain TCP, TLS and noise transports) and Tether (amt-sim dials the
# gateway over TLS + APF; `tether forward` on the technician side, as the CLI is used; the device
# port is carried to the same servers with `amt-sim --expose`). For each system, in rounds that
# alternate the order (to cancel drift): iperf3 one way, an echo written and read back at once
# (`tether-loadtest push`, both directions busy), and
# the round trip of 64-byte messages (`tether-loadtest rtt` against `tether-loadtest echo`).
# Medians and ratios go to a Markdown table (stdout, and $OUT), with the AES-128-GCM bound of
# this machine (`openssl speed`) measured in the same run.
#
#   ROUNDS=5            rounds (medians over them)
#   SECS=5              seconds per iperf3 run
#   SYSTEMS="direct socat rathole-tcp rathole-tls rathole-noise tether"
#   OUT=target/bench/benchmarks.md
#   RATHOLE_ROOT=.bench-cache/rathole   where `cargo install rathole` puts it (kept between runs)
#   NO_BUILD=1          use target/release as it is (scripts/test.sh built it)
#   TETHER_WINDOW=262144                amt-sim's channel window for the exposed (bulk) ports
#   PUSH_MIB=512                        MiB pushed through the echo both ways at once
#
# Needs: iperf3, socat, openssl, jq, python3, and the release binaries (it builds them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${ROUNDS:-5}"
SECS="${SECS:-5}"
SYSTEMS="${SYSTEMS:-direct socat rathole-tcp rathole-tls rathole-noise tether}"
OUT="${OUT:-target/bench/benchmarks.md}"
RATHOLE_ROOT="${RATHOLE_ROOT:-.bench-cache/rathole}"
TETHER_WINDOW="${TETHER_WINDOW:-262144}"
PUSH_MIB="${PUSH_MIB:-512}"
step() { echo "==> [$(date +%H:%M:%S), ${SECONDS}s] $*" >&2; }

for tool in iperf3 socat openssl jq python3; do
    command -v "$tool" > /dev/null || { echo "bench.sh: $tool is missing (apt-get install iperf3 socat openssl jq)" >&2; exit 1; }
done
if [ "${NO_BUILD:-0}" != 1 ]; then
    step "building the release binaries"
    cargo build --release -p tether-gateway -p tether-loadtest --bins --locked >&2
fi
BIN="$PWD/target/release"
if [[ " $SYSTEMS " == *" rathole"* ]] && [ ! -x "$RATHOLE_ROOT/bin/rathole" ]; then
    step "cargo install rathole 0.5.0 into $RATHOLE_ROOT (about 3 minutes, once)"
    cargo install rathole --version 0.5.0 --root "$RATHOLE_ROOT" >&2
fi
RATHOLE="$(realpath -m "$RATHOLE_ROOT/bin/rathole")"

WORK="$(mktemp -d /tmp/tether-bench.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
bg() { "$@" > "$WORK/log.$#.$RANDOM" 2>&1 & PIDS+=($!); }
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
        sleep 0.05
    done
    echo "bench.sh: nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# The servers every system leads to.
IPERF=15201 ECHO=15202
bg iperf3 -s -p "$IPERF"
bg "$BIN/tether-loadtest" echo --listen "127.0.0.1:$ECHO"
wait_port "$IPERF"
wait_port "$ECHO"
declare -A PORT_IPERF PORT_ECHO
PORT_IPERF[direct]=$IPERF PORT_ECHO[direct]=$ECHO

start_socat() {
    PORT_IPERF[socat]=15211 PORT_ECHO[socat]=15212
    bg socat "TCP-LISTEN:15211,fork,reuseaddr,nodelay" "TCP:127.0.0.1:$IPERF,nodelay"
    bg socat "TCP-LISTEN:15212,fork,reuseaddr,nodelay" "TCP:127.0.0.1:$ECHO,nodelay"
    wait_port 15211
}

start_rathole() { # NAME CONTROL_PORT IPERF_PORT ECHO_PORT TRANSPORT_SERVER TRANSPORT_CLIENT
    local name=$1 control=$2 pi=$3 pe=$4
    cat > "$WORK/$name-server.toml" << EOF
[server]
bind_addr = "127.0.0.1:$control"
$5
[server.services.iperf]
token = "bench"
bind_addr = "127.0.0.1:$pi"
nodelay = true
[server.services.echo]
token = "bench"
bind_addr = "127.0.0.1:$pe"
nodelay = true
EOF
    cat > "$WORK/$name-client.toml" << EOF
[client]
remote_addr = "localhost:$control"
$6
[client.services.iperf]
token = "bench"
local_addr = "127.0.0.1:$IPERF"
nodelay = true
[client.services.echo]
token = "bench"
local_addr = "127.0.0.1:$ECHO"
nodelay = true
EOF
    bg "$RATHOLE" --server "$WORK/$name-server.toml"
    wait_port "$control"
    bg "$RATHOLE" --client "$WORK/$name-client.toml"
    PORT_IPERF[$name]=$pi PORT_ECHO[$name]=$pe
    wait_port "$pi"
    sleep 1 # the client's control channel and first data channels
}

start_tether() {
    local data="$WORK/tether" uuid
    uuid="$(cat /proc/sys/kernel/random/uuid)"
    mkdir -p "$data"
    "$BIN/tether" --data-dir "$data" mps-credentials set bench BenchPass1 > /dev/null
    bg "$BIN/tether" --data-dir "$data" gateway --cira-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
        --metrics-listen 127.0.0.1:0 --tls-name 127.0.0.1
    for _ in $(seq 1 200); do [ -f "$data/run/listen.json" ] && break; sleep 0.05; done
    local cira
    cira="$(jq -r .cira "$data/run/listen.json")"
    bg "$BIN/amt-sim" --gateway "$cira" --ca "$data/tls/ca.pem" --server-name 127.0.0.1 --username bench \
        --password BenchPass1 --uuid "$uuid" --window "$TETHER_WINDOW" --adjust-step $((TETHER_WINDOW / 4)) \
        --expose "5201=127.0.0.1:$IPERF" --expose "7=127.0.0.1:$ECHO"
    for _ in $(seq 1 200); do
        "$BIN/tether" --data-dir "$data" devices --json 2> /dev/null | jq -e ".[] | select(.uuid == \"$uuid\" and .connected)" > /dev/null && break
        sleep 0.1
    done
    bg "$BIN/tether" --data-dir "$data" forward "$uuid" 5201 --listen 127.0.0.1:15251
    bg "$BIN/tether" --data-dir "$data" forward "$uuid" 7 --listen 127.0.0.1:15252
    PORT_IPERF[tether]=15251 PORT_ECHO[tether]=15252
    wait_port 15251
    wait_port 15252
}

step "starting the systems: $SYSTEMS"
for system in $SYSTEMS; do
    case "$system" in
        direct) ;;
        socat) start_socat ;;
        rathole-tcp) start_rathole rathole-tcp 23330 15221 15222 "" "" ;;
        rathole-tls)
            openssl req -x509 -newkey rsa:3072 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
                -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2> /dev/null
            openssl pkcs12 -export -inkey "$WORK/key.pem" -in "$WORK/cert.pem" -out "$WORK/id.p12" -passout pass:bench
            start_rathole rathole-tls 23331 15231 15232 \
                "[server.transport]
type = \"tls\"
[server.transport.tls]
pkcs12 = \"$WORK/id.p12\"
pkcs12_password = \"bench\"" \
                "[client.transport]
type = \"tls\"
[client.transport.tls]
trusted_root = \"$WORK/cert.pem\"
hostname = \"localhost\""
            ;;
        rathole-noise)
            keys="$("$RATHOLE" --genkey)"
            private="$(echo "$keys" | sed -n '/Private Key/{n;p}')"
            public="$(echo "$keys" | sed -n '/Public Key/{n;p}')"
            start_rathole rathole-noise 23332 15241 15242 \
                "[server.transport]
type = \"noise\"
[server.transport.noise]
local_private_key = \"$private\"" \
                "[client.transport]
type = \"noise\"
[client.transport.noise]
remote_public_key = \"$public\""
            ;;
        tether) start_tether ;;
        *) echo "bench.sh: unknown system $system" >&2; exit 1 ;;
    esac
done

step "the AES-128-GCM bound (openssl speed, 16 KiB blocks, one core)"
AES_KBPS="$(openssl speed -evp aes-128-gcm -bytes 16384 -seconds 2 2> /dev/null | awk '/^AES-128-GCM|^aes-128-gcm/ {print $NF}' | tr -d k)"

mkdir -p "$(dirname "$OUT")"
RESULTS="$(dirname "$OUT")/results.tsv"
: > "$RESULTS"
read -r -a order <<< "$SYSTEMS"
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round.
    shift_by=$(((round - 1) % ${#order[@]}))
    rotated=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
    for system in "${rotated[@]}"; do
        step "round $round/$ROUNDS: $system"
        pi=${PORT_IPERF[$system]} pe=${PORT_ECHO[$system]}
        one="$(iperf3 -c 127.0.0.1 -p "$pi" -t "$SECS" -J | jq '.end.sum_received.bits_per_second')"
        both="$("$BIN/tether-loadtest" push --connect "127.0.0.1:$pe" --mib "$PUSH_MIB" --json | jq .bits_per_second)"
        rtt="$("$BIN/tether-loadtest" rtt --connect "127.0.0.1:$pe" --count 2000 --json)"
        printf '%s\t%s\t%s\t%s\t%s\n' "$system" "$one" "$both" "$(echo "$rtt" | jq .p50_us)" \
            "$(echo "$rtt" | jq .p99_us)" >> "$RESULTS"
    done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$AES_KBPS" "$ROUNDS" "$SECS" "$SYSTEMS" "$TETHER_WINDOW" > "$OUT" << 'EOF'
import statistics, sys, platform, os, datetime
path, aes_kbps, rounds, secs, systems, window = sys.argv[1:7]
rows = {}
for line in open(path):
    name, one, both, p50, p99 = line.split("\t")
    rows.setdefault(name, []).append((float(one), float(both), float(p50), float(p99)))
med = {n: [statistics.median(v[i] for v in r) for i in range(4)] for n, r in rows.items()}
broken = [n for n, m in med.items() if min(m) <= 0]
if broken:
    sys.exit(f"bench.sh: no measurement from {', '.join(broken)} (see the iperf3 and tether-loadtest output)")
aes = float(aes_kbps) * 1000 * 8 if aes_kbps else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Run of {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), "
      f"{platform.system()} {platform.release()}; medians of {rounds} alternating rounds, iperf3 {secs} s each; "
      f"Tether's device window for the exposed ports {window} bytes.\n")
print("| system | iperf3 one way (Gbit/s) | echo, each way at once (Gbit/s) | 64-byte round trip p50 / p99 (µs) |")
print("| --- | ---: | ---: | ---: |")
for name in systems.split():
    if name in med:
        one, both, p50, p99 = med[name]
        print(f"| {name} | {one/1e9:.2f} | {both/1e9:.2f} | {p50:.0f} / {p99:.0f} |")
if aes:
    print(f"| AES-128-GCM, one core (openssl speed, 16 KiB) | {aes/1e9:.1f} | | |")
print()
if "tether" in med:
    t = med["tether"]
    for ref in ["rathole-tls", "rathole-tcp", "socat", "direct"]:
        if ref in med:
            r = med[ref]
            print(f"- Tether ÷ {ref}: one way **{t[0]/r[0]:.2f}×**, both ways {t[1]/r[1]:.2f}×, "
                  f"p99 round trip {t[3]/r[3]:.2f}×")
    if aes:
        # Tether decrypts and encrypts every byte twice (device TLS, technician TLS): four AES passes.
        print(f"- Tether ÷ the AES-GCM bound for its legs (two TLS legs, each byte decrypted and "
              f"encrypted on each: {aes/4/1e9:.2f} Gbit/s per core): {t[0]/(aes/4):.2f}×")
EOF
cat "$OUT"
step "written to $OUT"
