#!/usr/bin/env bash
# What tracing costs: the 1 MP photograph (scikit-image's hubble_deep_field.jpg) posted to
# /explain with the default answer by `gradcam-load` at 16 clients (throughput, p50, p99) and
# 1 client (p50), with tracing off, on at 100% sampling (every span exported over OTLP/HTTP to
# tests/otlp_receiver.py, which only counts them, standing in for a collector elsewhere), and
# on with the collector down (an endpoint nobody listens on: every span is dropped and
# counted). One run on one machine; the three servers take turns, ROUNDS times (default 3),
# each round in a rotated order.
# Besides the load tool's figures: the server process's CPU time (user and system) per answer,
# which a shared machine's noise moves far less than throughput.
# Usage: scripts/trace_bench.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
secs="${1:-20}"
rounds="${2:-3}"
. scripts/server.sh
photo="$(hubble_photo)"
cargo build --release --quiet --bin gradcam-serve --bin gradcam-load
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
tmp="$(mktemp -d)"
pid=""
recv=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; [ -z "$recv" ] || kill "$recv" 2>/dev/null || true; rm -rf "$tmp"' EXIT

# The receiver, on its own: its stdin a fifo held open until the end.
mkfifo "$tmp/stdin"
python tests/otlp_receiver.py - <"$tmp/stdin" >"$tmp/receiver.out" &
recv=$!
exec 3>"$tmp/stdin"
for _ in $(seq 1 100); do [ -s "$tmp/receiver.out" ] && break; sleep 0.1; done
collector="$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["http"])' "$tmp/receiver.out")"
down="http://127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

cpu_ticks() { # the server's user and system time so far, in clock ticks
  awk '{print $14 + $15}' "/proc/$pid/stat"
}

measure() { # measure MODE CLIENTS
  local before
  before="$(cpu_ticks)"
  target/release/gradcam-load --url "$base/explain" --file "$photo" --content-type image/jpeg \
    --concurrency "$2" --seconds "$secs" --json "$tmp/load.json" >/dev/null
  python3 - "$tmp/load.json" "$1" "$2" "$before" "$(cpu_ticks)" "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ok = sum(n for s, n in d["status"].items() if s == "200")
cpu_ms = (int(sys.argv[5]) - int(sys.argv[4])) / int(sys.argv[6]) * 1e3 / max(ok, 1)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {d['ok_per_s']:.2f} req/s | {d['latency_ms']['p50']:.1f} ms | "
      f"{d['latency_ms']['p99']:.1f} ms | {cpu_ms:.1f} ms | {d['status']} |")
PY
}

echo "| tracing | clients | throughput | p50 | p99 | server CPU per answer | statuses |"
echo "|---|---|---|---|---|---|---|"
modes=(off on down)
for round in $(seq 1 "$rounds"); do
  # Each round in another order, so that no setting always follows the same one.
  shift_by=$(( (round - 1) % 3 ))
  for i in 0 1 2; do
    mode="${modes[$(( (i + shift_by) % 3 ))]}"
    case "$mode" in
      off) unset OTEL_EXPORTER_OTLP_ENDPOINT ;;
      on) export OTEL_EXPORTER_OTLP_ENDPOINT="$collector" ;;
      down) export OTEL_EXPORTER_OTLP_ENDPOINT="$down" ;;
    esac
    start_server "$tmp/server.log"
    measure "$mode" 16
    measure "$mode" 1
    if [ "$mode" != off ]; then
      curl -s "$base/metrics" | grep '^gradcam_trace_spans' | tr '\n' ' '
      echo
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
unset OTEL_EXPORTER_OTLP_ENDPOINT
exec 3>&-
wait "$recv" || true
recv=""
echo "spans the receiver counted: $(tail -1 "$tmp/receiver.out")"
