#!/usr/bin/env bash
# The device check, run from the kit that scripts/device-bundle.sh assembles (device-kit/): puts
# the libtorch of this machine's PyTorch on the binaries' library path, installs the carried
# wheels (pytorch-grad-cam, ttach, tqdm) into a temporary directory, and runs gpu_check.py
# (with its modules, device_check/ and torchref.py, beside it in the kit):
# parity, engine throughput and the service against PyTorch, reported in OUT/gpu-report.md and
# OUT/gpu-report.json. Ends within 8 minutes on a GPU, 4 with --small on a 2-core CPU.
# Usage: device-kit/gpu-check.sh [--device cuda|cpu] [--small] [--out DIR]
#   --out DIR   the report's directory (default: $OUT, else ./gpu-report)
#   PYTHON=...  the Python with torch (default: python3), e.g. the project's environment:
#               PYTHON="$GRADCAM_CACHE/venv/bin/python" device-kit/gpu-check.sh --small
# Exit status: 0 when every step passed, 1 when parity failed or a step failed or crashed
# (missed performance goals are reported, not errors).
set -euo pipefail
started="$(date +%s.%N)"
kit="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

args=()
out="${OUT:-$PWD/gpu-report}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

torchlib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" ||
  { echo "gpu-check: $python cannot import torch (set PYTHON)" >&2; exit 1; }
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The binaries travel compressed when the kit would otherwise be too large.
bin="$kit/bin"
if compgen -G "$kit/bin/*.xz" >/dev/null; then
  bin="$work/bin"
  mkdir -p "$bin"
  for f in "$kit"/bin/*.xz; do
    "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$f" "$bin/$(basename "$f" .xz)"
    chmod +x "$bin/$(basename "$f" .xz)"
  done
fi

# The wheels are pure Python: pip installs them without an index; where pip is missing or
# refuses, unpacking them is the same installation.
site="$work/site"
mkdir -p "$site"
if ! "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --no-compile --target "$site" "$kit"/wheels/*.whl >"$work/pip.log" 2>&1; then
  for w in "$kit"/wheels/*.whl; do
    "$python" -m zipfile -e "$w" "$site"
  done
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
# The check's modules (device_check/, torchref.py) are imported from the kit: no bytecode is
# written there, so that the kit stays as it was assembled.
export PYTHONDONTWRITEBYTECODE=1

status=0
"$python" "$kit/gpu_check.py" --kit "$kit" --bin "$bin" --out "$out" --started "$started" \
  ${args[@]+"${args[@]}"} 2>&1 | tee "$out/gpu-check.log" || status=$?
echo "gpu-check: exit status $status after $(awk -v s="$started" -v e="$(date +%s.%N)" \
  'BEGIN { printf "%.0f", e - s }') s; report in $out" >&2
exit "$status"
