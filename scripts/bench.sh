#!/usr/bin/env bash
# Engine benchmark (criterion): forward-only vs explain, batch 1 and 8, layer4 and layer3, on
# the CPU, with the test weights (random weights cost exactly what trained ones cost). Then the
# same measurement for torchvision + pytorch-grad-cam in the same environment, for the ratio.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
GRADCAM_BENCH_WEIGHTS="$(scripts/reference.sh)/weights.safetensors"
export GRADCAM_BENCH_WEIGHTS
cargo bench --bench engine -- "$@"
python benches/pytorch_baseline.py "$GRADCAM_BENCH_WEIGHTS"
