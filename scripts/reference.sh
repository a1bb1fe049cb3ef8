#!/usr/bin/env bash
# Makes sure the PyTorch reference (seeded test weights, logits, maps, edge-case images) exists
# in the cache, in a directory named after the hash of tests/reference.py, so that it is made
# again only when the script changes. Prints its directory; older versions are removed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
want="$(sha256sum tests/reference.py | cut -c1-16)"
base="$GRADCAM_CACHE/references"
ref="$base/$want"
if [ ! -f "$ref/stamp" ]; then
  echo "reference: generating the PyTorch reference into $ref" >&2
  mkdir -p "$base"
  rm -rf "$ref.tmp"
  python tests/reference.py "$ref.tmp" >&2
  mv "$ref.tmp" "$ref"
  find "$base" -mindepth 1 -maxdepth 1 ! -name "$want" -exec rm -rf {} +
  rm -rf "$GRADCAM_CACHE/reference"  # the single-version layout used before
fi
echo "$ref"
