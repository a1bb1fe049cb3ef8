#!/usr/bin/env bash
# Makes sure the trained proof model (a ResNet-18 trained from scratch on a synthetic task where
# one object decides the class, its held-out pictures and PyTorch's figures on them) exists in
# the cache, in a directory named after the hash of tests/trained.py, so that it is trained again
# only when the script changes (a few minutes on two cores). Prints its directory; older
# versions are removed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
want="$(sha256sum tests/trained.py | cut -c1-16)"
base="$GRADCAM_CACHE/trained"
dir="$base/$want"
if [ ! -f "$dir/stamp" ]; then
  echo "trained: training the proof model into $dir (a few minutes)" >&2
  mkdir -p "$base"
  rm -rf "$dir.tmp"
  python tests/trained.py "$dir.tmp" >&2
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  find "$base" -mindepth 1 -maxdepth 1 ! -name "$want" -exec rm -rf {} +
fi
echo "$dir"
