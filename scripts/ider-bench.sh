#!/usr/bin/env bash
# IDE-R throughput through the gateway: a PC (amt-sim --boot-ider) reads a whole ISO served by
# `tether ider` through a local gateway, with the device granting channel window like firmware
# (4 KiB, in 512-byte steps) and with large windows, for several firmware read sizes (blocks of
# 2 KiB per READ(10)); and, for comparison, the raw rate of the same channel at firmware windows
# (bytes echoed by the device on port 5900). Prints one line per case; medians of RUNS runs.
#
#   scripts/ider-bench.sh            # after `cargo build --release --workspace --bins`
#   MIB=64 RUNS=3 READS="1 8 32 128" scripts/ider-bench.sh
#
# Everything listens on 127.0.0.1 only, and every wait is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MIB=${MIB:-64}
RUNS=${RUNS:-3}
READS=${READS:-"1 8 32 128"}
BIN=${BIN:-target/release}
for b in tether amt-sim; do
    [ -x "$BIN/$b" ] || { echo "ider-bench: $BIN/$b is missing; run cargo build --release --workspace --bins" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # FILE NEEDLE SECONDS
    local i
    for ((i = 0; i < $3 * 20; i++)); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "ider-bench: no '$2' in $1 within $3 s" >&2; tail -5 "$1" >&2; return 1
}

data="$work/data"
"$BIN/tether" --data-dir "$data" mps-credentials set bench benchpw >/dev/null
token=$("$BIN/tether" --data-dir "$data" token create bench | tail -1)
cira=$(free_port); api=$(free_port); metrics=$(free_port)
"$BIN/tether" --data-dir "$data" gateway --cira-listen 127.0.0.1:$cira --api-listen 127.0.0.1:$api \
    --metrics-listen 127.0.0.1:$metrics --tls-name 127.0.0.1 >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_for "$work/gateway.log" "gateway listening" 60
export TETHER_API=https://127.0.0.1:$api TETHER_TOKEN=$token TETHER_CA=$data/tls/ca.pem AMT_PASSWORD=benchadmin

iso="$work/rescue.iso"
head -c $((MIB << 20)) /dev/urandom >"$iso"
sha=$(sha256sum "$iso" | cut -d' ' -f1)

# Each case runs in this shell (not in a command substitution, whose exit would run the EXIT trap)
# and leaves its seconds in $result.
result=

# One boot: amt-sim with ARGS…, the console watching, `tether ider` serving.
boot() {
    local uuid log screen serve start end
    uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    log="$work/sim-$uuid.log"; screen="$work/sol-$uuid.out"; serve="$work/ider-$uuid.log"
    "$BIN/amt-sim" --gateway 127.0.0.1:$cira --ca "$data/tls/ca.pem" --username bench --password benchpw \
        --uuid "$uuid" --admin-password benchadmin --boot-ider "$@" >"$log" 2>&1 &
    local sim=$!
    wait_for "$log" "established" 30
    # The console's keyboard: a pipe held open (and nothing typed) until the case ends.
    mkfifo "$work/keys-$uuid"
    sleep 1000 >"$work/keys-$uuid" &
    local keys=$!
    "$BIN/tether" console "$uuid" <"$work/keys-$uuid" >"$screen" 2>"$screen.err" &
    local console=$!
    wait_for "$screen.err" "started" 30
    start=$(date +%s.%N)
    "$BIN/tether" ider "$uuid" --image "$iso" >"$serve" 2>&1 &
    local ider=$!
    wait_for "$screen" "sha256=" 600
    end=$(date +%s.%N)
    grep -q "sha256=$sha" "$screen" || { echo "ider-bench: wrong hash" >&2; grep sha256 "$screen" >&2; exit 1; }
    kill -INT $ider; wait $ider 2>/dev/null || true
    kill $console $sim $keys 2>/dev/null || true; wait $console $sim $keys 2>/dev/null || true
    result=$(python3 -c "print(f'{$end - $start:.3f}')")
}

# The raw channel at firmware windows: MIB MiB echoed by the device through tether forward.
raw() {
    local uuid log fwd port
    uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    log="$work/sim-$uuid.log"; fwd="$work/fwd-$uuid.log"
    "$BIN/amt-sim" --gateway 127.0.0.1:$cira --ca "$data/tls/ca.pem" --username bench --password benchpw \
        --uuid "$uuid" >"$log" 2>&1 &
    local sim=$!
    wait_for "$log" "established" 30
    port=$(free_port)
    "$BIN/tether" forward "$uuid" 5900 --listen 127.0.0.1:$port >"$fwd" 2>&1 &
    local forward=$!
    wait_for "$fwd" "forwarding" 30
    result=$(python3 - "$port" "$MIB" <<'EOF'
import socket, sys, threading, time
port, mib = int(sys.argv[1]), int(sys.argv[2])
total = mib << 20
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(120)
block = bytes(range(256)) * 256
def send():
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        s.sendall(block[:n]); sent += n
start = time.time()
t = threading.Thread(target=send); t.start()
got = 0
while got < total:
    data = s.recv(1 << 20)
    if not data: raise SystemExit("closed early")
    got += len(data)
t.join()
print(f"{time.time() - start:.3f}")
EOF
)
    kill $forward $sim 2>/dev/null || true; wait $forward $sim 2>/dev/null || true
}

median() { python3 -c 'import sys; v=sorted(map(float, sys.argv[1:])); print(v[len(v)//2])' "$@"; }
report() { # LABEL SECONDS…
    local label=$1; shift
    local m; m=$(median "$@")
    python3 -c "print(f'{\"$label\":<58} {$MIB / $m:7.1f} MiB/s  (median of $#: {$m:.2f} s for $MIB MiB)')"
}

echo "IDE-R through the gateway, $MIB MiB ISO, $(nproc) cores, $(date -u +%Y-%m-%d)"
times=(); for ((r = 0; r < RUNS; r++)); do raw; times+=("$result"); done
report "raw channel at firmware windows (echo, 4 KiB / 512 B)" "${times[@]}"
for blocks in $READS; do
    times=(); for ((r = 0; r < RUNS; r++)); do boot --ider-read-blocks "$blocks"; times+=("$result"); done
    report "IDE-R, firmware windows, READ(10) of $blocks blocks" "${times[@]}"
    times=(); for ((r = 0; r < RUNS; r++)); do
        boot --ider-read-blocks "$blocks" --window 1048576 --adjust-step 262144
        times+=("$result")
    done
    report "IDE-R, 1 MiB windows, READ(10) of $blocks blocks" "${times[@]}"
done
