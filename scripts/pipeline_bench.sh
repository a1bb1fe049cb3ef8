#!/usr/bin/env bash
# The service against its own model, in one run on one machine: for --precision fp32 and bf16,
# the engine alone (`gradcam-serve bench`, batch 1 and 8), then the server under
# `gradcam-load` posting the 1 MP photograph (scikit-image's hubble_deep_field.jpg, 1000x872)
# to /explain: 1 client (p50, p99) and 16 clients (throughput) with the default answer (PNG
# overlay in JSON), with overlay_format=jpeg and with overlay=false; and the CPU the server
# spent per request in each stage outside the model (gradcam_stage_cpu_seconds_total over the
# default-answer runs). First the criterion bench of each stage on its own (benches/render.rs).
# Usage: scripts/pipeline_bench.sh [SECONDS_PER_RUN] [EXTRA SERVE ARGS...]
# Writes the figures as JSON lines to $PIPELINE_OUT (default: a temporary file, named at the end).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
secs="${1:-15}"
shift || true
. scripts/server.sh
photo="$(hubble_photo)"
weights="${GRADCAM_WEIGHTS:-$(scripts/reference.sh)/weights.safetensors}"
out="${PIPELINE_OUT:-$(mktemp --suffix=.jsonl)}"
: >"$out"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"

# PIPELINE_BIN: a directory holding other builds of gradcam-serve and gradcam-load to measure
# instead (an older release, for a before-and-after); the stage bench is then skipped.
if [ -z "${PIPELINE_BIN:-}" ]; then
  GRADCAM_BENCH_PHOTO="$photo" cargo bench --bench render -- --noplot stages 2>&1 |
    grep -E '^(stages|/)|time:' || true
  cargo build --release --quiet --bin gradcam-serve --bin gradcam-load
fi
bin="${PIPELINE_BIN:-${CARGO_TARGET_DIR:-target}/release}"
export GRADCAM_SERVE_BIN="$bin/gradcam-serve"
# The engine and the server both with libtorch's OpenMP threads as the image runs them
# (README's Performance: "Cores"; scripts/spin_bench.sh compares settings).
[ -n "${OMP_WAIT_POLICY:-}" ] || export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
tmp="$(mktemp -d)"
log="$tmp/server.log"
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT

load() { # load NAME CLIENTS QUERY
  "$bin/gradcam-load" --url "$base/explain$3" --file "$photo" --concurrency "$2" \
    --seconds "$secs" --json "$tmp/load.json" >/dev/null
  python3 - "$tmp/load.json" "$precision" "$1" "$2" >>"$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({"kind": "service", "precision": sys.argv[2], "answer": sys.argv[3],
                  "clients": int(sys.argv[4]), "req_per_s": d["ok_per_s"],
                  "p50_ms": d["latency_ms"]["p50"], "p99_ms": d["latency_ms"]["p99"],
                  "status": d["status"], "answer_bytes": d.get("mean_answer_bytes", 0)}))
PY
}

stage_cpu() { # the server's per-stage CPU counters and its /explain 200s, as JSON
  curl -s "$base/metrics" | python3 -c '
import json, re, sys
cpu, ok = {}, 0
for line in sys.stdin:
    m = re.match(r"gradcam_stage_cpu_seconds_total\{stage=\"(\w+)\"\} (\S+)", line)
    if m:
        cpu[m.group(1)] = float(m.group(2))
    m = re.match(r"gradcam_requests_total\{route=\"/explain\",status=\"200\"\} (\d+)", line)
    if m:
        ok = int(m.group(1))
print(json.dumps({"cpu": cpu, "ok": ok}))'
}

sizes() { # each answer form's size as sent, plain and compressed, and its median time of 5
  echo "| form | Accept-Encoding | bytes | median ms of 5 |"
  echo "|---|---|---|---|"
  local q enc accept
  for q in "" "?overlay_format=webp" "?overlay_format=jpeg" "?overlay_format=jpeg&overlay_quality=60" \
    "?overlay=false&heatmap_image=true" "?overlay=false" "#image/png" "#image/webp" "#image/jpeg"; do
    accept="application/json"
    case "$q" in "#"*) accept="${q#\#}"; q="" ;; esac
    for enc in identity gzip br; do
      [ "$accept" = application/json ] || [ "$enc" = identity ] || continue
      for _ in 1 2 3 4 5; do
        curl -s -o /dev/null -w '%{size_download} %{time_total}\n' -H "Accept-Encoding: $enc" \
          -H "Accept: $accept" -H 'Content-Type: image/jpeg' --data-binary @"$photo" "$base/explain$q"
      done | sort -k2 -n | sed -n 3p | {
        read -r size t
        echo "| \`$accept\`${q:+ \`$q\`} | $enc | $size | $(python3 -c "print(round($t * 1000, 1))") |"
      }
    done
  done
}

for precision in fp32 bf16; do
  "$bin/gradcam-serve" bench --device cpu --weights "$weights" --precision "$precision" \
    --batches 1,8 --seconds "$secs" --json "$tmp/engine.json" >/dev/null 2>&1
  python3 - "$tmp/engine.json" "$precision" >>"$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = d["results"]
print(json.dumps({"kind": "engine", "precision": sys.argv[2], "figures": rows}))
PY
  start_server "$log" --precision "$precision" --drain-delay-ms 0 "$@"
  # Warm-up, then the default answer's per-stage CPU over both of its runs.
  "$bin/gradcam-load" --url "$base/explain" --file "$photo" --concurrency 2 --seconds 3 >/dev/null
  before="$(stage_cpu)"
  load default 1 ""
  load default 16 ""
  after="$(stage_cpu)"
  python3 - "$before" "$after" "$precision" >>"$out" <<'PY'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
n = a["ok"] - b["ok"]
per = {k: (v - b["cpu"].get(k, 0.0)) / max(n, 1) * 1e3 for k, v in a["cpu"].items()}
print(json.dumps({"kind": "stage_cpu_ms", "precision": sys.argv[3], "requests": n, "per_request": per,
                  "total": sum(per.values())}))
PY
  load jpeg 1 "?overlay_format=jpeg"
  load jpeg 16 "?overlay_format=jpeg"
  load none 1 "?overlay=false"
  load none 16 "?overlay=false"
  [ "$precision" = bf16 ] && sizes
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for p in ("fp32", "bf16"):
    eng = next(r for r in rows if r["kind"] == "engine" and r["precision"] == p)
    figs = {int(f["batch"]): f for f in eng["figures"]}
    b1, b8 = figs[1], figs[8]
    print(f"\n{p}: engine batch 1 {b1['images_per_s']:.1f} images/s (p50 {b1['batch_ms_p50']:.1f} ms), "
          f"batch 8 {b8['images_per_s']:.1f} images/s")
    print("| answer | 1 client p50 / p99 ms | p50 - engine batch 1 | 16 clients req/s | / engine batch 8 | answer bytes |")
    print("|---|---|---|---|---|---|")
    for answer in ("default", "jpeg", "none"):
        one = next(r for r in rows if r["kind"] == "service" and r["precision"] == p and r["answer"] == answer and r["clients"] == 1)
        many = next(r for r in rows if r["kind"] == "service" and r["precision"] == p and r["answer"] == answer and r["clients"] == 16)
        print(f"| {answer} | {one['p50_ms']:.1f} / {one['p99_ms']:.1f} | {one['p50_ms'] - b1['batch_ms_p50']:+.1f} ms | "
              f"{many['req_per_s']:.1f} | {many['req_per_s'] / b8['images_per_s']:.2f}x | {many['answer_bytes']:.0f} |")
    cpu = next(r for r in rows if r["kind"] == "stage_cpu_ms" and r["precision"] == p)
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu["per_request"].items()))
    print(f"server CPU per default answer, ms: {parts}; total {cpu['total']:.2f} ({cpu['requests']} requests)")
PY
echo "figures: $out"
