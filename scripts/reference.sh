#!/usr/bin/env bash
# Makes sure the PyTorch reference (seeded test weights, logits, maps, edge-case images) exists
# in the cache; regenerated only when tests/reference.py changes. Prints its directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
ref="$GRADCAM_CACHE/reference"
want="$(sha256sum tests/reference.py | cut -d' ' -f1)"
if [ "$(cat "$ref/stamp" 2>/dev/null)" != "$want" ]; then
  echo "reference: generating the PyTorch reference into $ref" >&2
  rm -rf "$ref.tmp"
  python tests/reference.py "$ref.tmp" >&2
  rm -rf "$ref"
  mv "$ref.tmp" "$ref"
fi
echo "$ref"
