#!/usr/bin/env bash
# Telemetry ingest on this machine: a gateway on loopback (embedded SQLite in a fresh data dir),
# N Tether agents enrolled with one-time tokens (`tether machine enroll SUB --count N`), each
# flushing K spooled reports at once over QUIC (`tether-loadtest agents`), then held idle.
# Prints the scenario's summary (durable reports per second, the gateway's RSS per session and
# CPU) and keeps its JSON in $OUT.
#
#   COUNT=1000     agents
#   REPORTS=100    reports spooled per agent before it connects
#   HOLD=30        seconds the idle sessions are held
#   OUT=target/bench/agents.json
#   NO_BUILD=1     use target/release as it is
#   AGENTS_DIR=/dev/shm/…   where the agents keep their state and spools (default: tmpfs when
#                  there is one, so that the agents' own fsyncs do not compete with the
#                  gateway's store for the disk of this one machine)
#   DATABASE_URL=postgres://…   the store on PostgreSQL instead of SQLite (`[store] url`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COUNT="${COUNT:-1000}"
REPORTS="${REPORTS:-100}"
HOLD="${HOLD:-30}"
OUT="${OUT:-target/bench/agents.json}"
step() { echo "==> [$(date +%H:%M:%S), ${SECONDS}s] $*" >&2; }

if [ "${NO_BUILD:-0}" != 1 ]; then
    step "building the release binaries"
    cargo build --release -p tether-gateway -p tether-loadtest --bins --locked >&2
fi
BIN="$PWD/target/release"
WORK="$(mktemp -d /tmp/tether-agents-bench.XXXXXX)"
GW_PID=""
cleanup() {
    [ -n "$GW_PID" ] && kill "$GW_PID" 2> /dev/null && wait "$GW_PID" 2> /dev/null
    rm -rf "$WORK" "${AGENTS_DIR:-}"
}
trap cleanup EXIT
DATA="$WORK/gateway"
if [ -z "${AGENTS_DIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    AGENTS_DIR="$(mktemp -d /dev/shm/tether-agents.XXXXXX)"
fi
AGENTS_DIR="${AGENTS_DIR:-$WORK/agents}"
mkdir -p "$DATA"
{
    echo "[agents]"
    echo "heartbeat_secs = 300"
    if [ -n "${DATABASE_URL:-}" ]; then
        echo "[store]"
        echo "url = \"$DATABASE_URL\""
    fi
} > "$DATA/tether.toml"
tether() { "$BIN/tether" --data-dir "$DATA" "$@"; }

step "starting the gateway (data dir $DATA)"
RUST_LOG=warn "$BIN/tether" --data-dir "$DATA" gateway --cira-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 --agent-listen 127.0.0.1:0 --tls-name 127.0.0.1 > "$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 600); do
    [ -s "$DATA/run/listen.json" ] && break
    kill -0 "$GW_PID" 2> /dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }
    sleep 0.1
done
AGENTS="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agents"])' "$DATA/run/listen.json")"

step "a subscriber for $COUNT machines, and $COUNT enrollment tokens"
printf 'bench-password-long\n' | tether user add bench --password-stdin > /dev/null
SUB="$(tether subscriber register --owner bench --name "Bench Ltd" --email bench@example.com \
    --max-machines "$COUNT" | awk '{print $2; exit}')"
tether machine enroll "$SUB" --count "$COUNT" > "$WORK/tokens.txt"

step "tether-loadtest agents --count $COUNT --reports $REPORTS --hold $HOLD (gateway on UDP $AGENTS)"
mkdir -p "$(dirname "$OUT")"
set +e
"$BIN/tether-loadtest" agents --gateway "$AGENTS" --ca "$DATA/tls/ca.pem" --dir "$AGENTS_DIR" \
    --tokens "$WORK/tokens.txt" --count "$COUNT" --reports "$REPORTS" --hold "$HOLD" \
    --gateway-pid "$GW_PID" --json > "$OUT"
STATUS=$?
set -e
python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
g = r.get("gateway") or {}
print(f"agents: {r['count']} from {r['sources']} sources; enrolled {r['enrolled']} in {r['enroll_seconds']:.1f}s")
print(f"  {r['acknowledged']} reports acknowledged in {r.get('flushed_after_seconds') or 0:.2f}s: "
      f"{r['durable_reports_per_second']:.0f} durable reports/s (peak second {r['durable_reports_peak_second']})")
print(f"  held {r['hold_seconds']:.0f}s: {r['connected']} sessions up; gateway RSS {g.get('rss_baseline_kib')} -> "
      f"{g.get('rss_hold_kib')} KiB ({g.get('rss_per_session_kib', 0):.1f} KiB per session), "
      f"CPU {g.get('cpu_flush_seconds', 0):.2f}s flushing, {100 * g.get('cpu_hold_share', 0):.2f}% of a core holding")
print(f"  {r['result']}" + (f": {r['reason']}" if r.get('reason') else ""))
PY
step "done (JSON in $OUT)"
exit "$STATUS"
