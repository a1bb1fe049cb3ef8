#!/usr/bin/env bash
# Shows that the suite does not depend on the exact floats one machine's training gives: training
# on a CPU is not bitwise reproducible across thread counts and processors, so the trained
# reference (tests/trained.py) is built under several thread counts (GRADCAM_TRAINED_THREADS)
# and every test that reads it (tests/numerics/trained.rs, tests/numerics/precision.rs) runs against each.
# Usage: scripts/trained_threads.sh [COUNT...]   (default: 1, 2 and every core, without repeats)
# Each build takes minutes (about 5 on two cores); builds are cached in
# $GRADCAM_CACHE/trained-threads, keyed on the script's hash like scripts/reference.sh's; the
# two-thread build is the suite's own (scripts/reference.sh trained).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 2 "$(nproc)")
mapfile -t counts < <(printf '%s\n' "${counts[@]}" | awk '!seen[$0]++')

GRADCAM_TEST_REFERENCE="$(scripts/reference.sh)"
GRADCAM_TEST_FAMILY="$(scripts/reference.sh family)"
export GRADCAM_TEST_REFERENCE GRADCAM_TEST_FAMILY
want="$(scripts/reference.sh --key trained)"
base="$GRADCAM_CACHE/trained-threads"
mkdir -p "$base"
find "$base" -mindepth 1 -maxdepth 1 ! -name "$want-*" -exec rm -rf {} +

summary=()
for n in "${counts[@]}"; do
  ref="$base/$want-t$n"
  # The default count is what scripts/reference.sh builds for the suite: that build serves.
  [ "$n" = 2 ] && ref="$(scripts/reference.sh trained)"
  if [ ! -f "$ref/stamp" ]; then
    echo "trained-threads: training with $n thread(s) into $ref" >&2
    rm -rf "$ref.tmp"
    GRADCAM_TRAINED_THREADS="$n" python tests/trained.py "$ref.tmp" >&2
    mv "$ref.tmp" "$ref"
  fi
  echo "trained-threads: tests against the $n-thread build" >&2
  status=passed
  GRADCAM_TEST_TRAINED="$ref" cargo nextest run --release --features fault-injection \
    --no-fail-fast --test numerics -E 'test(/^trained::/) | test(/^precision::/)' || status=FAILED
  figures="$(python - "$ref/torch_figures.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
print(f"accuracy {f['accuracy']:.3f}, final loss {f['final_train_loss']:.4f}, "
      f"pointing gradcam layer4 {f['pointing']['gradcam']['layer4']:.3f}")
PY
)"
  summary+=("$n thread(s): $status ($figures)")
done
printf 'trained-threads: %s\n' "${summary[@]}"
for line in "${summary[@]}"; do
  case "$line" in *FAILED*) exit 1 ;; esac
done
