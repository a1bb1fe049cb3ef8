#!/usr/bin/env bash
# Admission by expected wait under a burst: starts the release server, posts N copies of the
# 1 MP photograph (scikit-image's hubble_deep_field.jpg) to /explain at once (curl, N in
# parallel), and reports the answers by status with the time each took (median and largest),
# the good answers' throughput, the 504s among the admitted, and the server's own figures
# (gradcam_model_seconds_per_image and gradcam_model_work_seconds_per_image, rejections by
# reason). Two bursts by default, each on a fresh server: 40 at --request-timeout-ms 1500, then 200 at the default deadline.
# Usage: scripts/admission.sh [N:TIMEOUT_MS ...] (default: 40:1500 200:default)
#   GRADCAM_SERVE_BIN=PATH measures another binary (a build from before, for a comparison).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
[ -n "${GRADCAM_SERVE_BIN:-}" ] || cargo build --release --quiet --bin gradcam-serve
. scripts/server.sh
photo="$(hubble_photo)"
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(40:1500 200:default)

for run in "${runs[@]}"; do
  n="${run%%:*}"
  timeout="${run#*:}"
  flags=()
  [ "$timeout" = default ] || flags=(--request-timeout-ms "$timeout" --fetch-timeout-ms "$((timeout / 2))")
  log="$(mktemp)"
  out="$(mktemp)"
  start_server "$log" "${flags[@]}"
  # One request alone first, so that the model's pace is known, as on any server that has
  # served before.
  curl -s -o /dev/null --data-binary @"$photo" -H 'Content-Type: image/jpeg' "$base/explain"
  started="$(date +%s.%N)"
  seq "$n" | xargs -P "$n" -I{} curl -s -o /dev/null -w '%{http_code} %{time_total}\n' \
    --data-binary @"$photo" -H 'Content-Type: image/jpeg' "$base/explain" > "$out"
  ended="$(date +%s.%N)"
  metrics="$(curl -s "$base/metrics")"
  kill "$pid"
  wait "$pid" || true
  python3 - "$out" "$started" "$ended" "$n" "$timeout" <<'PY' "$metrics"
import statistics, sys
path, started, ended, n, timeout = sys.argv[1:6]
metrics = sys.argv[6] if len(sys.argv) > 6 else ""
rows = [l.split() for l in open(path) if l.strip()]
by = {}
for code, t in rows:
    by.setdefault(code, []).append(float(t))
wall = float(ended) - float(started)
parts = []
for code in sorted(by):
    ts = by[code]
    parts.append(f"{code}: {len(ts)} (median {statistics.median(ts):.2f} s, largest {max(ts):.2f} s)")
good = len(by.get("200", []))
admitted = good + len(by.get("504", []))
late = f"{len(by.get('504', []))}/{admitted}" if admitted else "0/0"
print(f"admission: {n} x 1 MP at deadline {timeout} ms: " + "; ".join(parts))
print(f"admission:   good answers {good} in {wall:.2f} s ({good / wall:.1f}/s); 504 among the admitted: {late}")
for line in metrics.splitlines():
    if line.startswith(("gradcam_model_seconds_per_image ", "gradcam_model_work_seconds_per_image ",
                        "gradcam_rejections_total{")):
        print("admission:   " + line)
PY
  rm -f "$log" "$out"
done
