#!/usr/bin/env bash
# Engine benchmark (criterion): forward-only vs explain, batch 1 and 8, layer4 and layer3, on
# the CPU; explain in fp32 and bf16 at batch 1 and 8 in the same run, with their ratios, with the test weights (random weights cost exactly what trained ones cost); explain at
# batch 1 and 8 for resnet18, resnet50 and resnet152. Then the same measurement for torchvision +
# pytorch-grad-cam in the same environment, for the ratio. Last, each of those three models'
# start-up as the server does it: seconds from launch to "ready" (reading the file, building the
# network, warming up) and the resident memory then.
# Arguments go to criterion (a filter such as `family`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
GRADCAM_BENCH_WEIGHTS="$(scripts/reference.sh)/weights.safetensors"
GRADCAM_BENCH_FAMILY="$(scripts/reference.sh family)"
export GRADCAM_BENCH_WEIGHTS GRADCAM_BENCH_FAMILY
cargo bench --bench engine -- "$@"
# bf16 against fp32, from criterion's estimates of this run (when the precision group ran).
python - "${CARGO_TARGET_DIR:-target}/criterion/precision" <<'PY'
import json, os, sys
base = sys.argv[1]
def rate(precision, batch):
    f = os.path.join(base, f"explain_{precision}", str(batch), "new", "estimates.json")
    if not os.path.exists(f):
        return None
    return batch / (json.load(open(f))["mean"]["point_estimate"] * 1e-9)
rows = [(b, rate("fp32", b), rate("bf16", b)) for b in (1, 8)]
if all(r[1] and r[2] for r in rows):
    print("\n| explain layer4 (CPU) | fp32, images/s | bf16, images/s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for b, f, h in rows:
        print(f"| batch {b} | {f:.1f} | {h:.1f} | {h / f:.2f}x |")
PY
python benches/pytorch_baseline.py "$GRADCAM_BENCH_WEIGHTS"

cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/gradcam-serve"
echo
echo "| model | file MB | launch to ready, s | RSS at ready, MiB | peak RSS, MiB |"
echo "|---|---|---|---|---|"
for arch in resnet18 resnet50 resnet152; do
  file="$GRADCAM_BENCH_FAMILY/family/$arch.safetensors"
  log="$(mktemp)"
  start=$(date +%s.%N)
  "$bin" serve --host 127.0.0.1 --port 0 --device cpu --weights "$file" --log-format json --drain-delay-ms 0 \
    2>"$log" &
  pid=$!
  until grep -q '"message":"ready"' "$log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.05
  done
  ready=$(date +%s.%N)
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$log"
  size=$(stat -c %s "$file")
  awk -v a="$arch" -v s="$size" -v t0="$start" -v t1="$ready" -v r="$rss" -v h="$hwm" \
    'BEGIN { printf "| %s (float16 file) | %.0f | %.2f | %.0f | %.0f |\n", a, s/1e6, t1-t0, r/1024, h/1024 }'
done
