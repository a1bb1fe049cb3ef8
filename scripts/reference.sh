#!/usr/bin/env bash
# Makes sure a PyTorch reference exists in the cache, in a directory named after the hash of the
# script that makes it and of the pinned Python packages, so that it is made again when either
# changes; prints its directory; older versions are removed.
#   scripts/reference.sh          tests/reference.py: the seeded ResNet-50, its logits and maps,
#                                 edge-case images
#   scripts/reference.sh family   tests/family.py: every member of the ResNet family, timm's,
#                                 checkpoint formats, a 7-class head, 288 px centre-crop
#   scripts/reference.sh trained  tests/trained.py: a ResNet-18 trained from scratch on a
#                                 synthetic task where one object decides the class, its
#                                 held-out pictures and PyTorch's figures (minutes on two cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
name="${1:-reference}"
script="tests/$name.py"
[ -f "$script" ] || { echo "reference: no $script" >&2; exit 1; }
want="$(cat "$script" scripts/requirements.txt | sha256sum | cut -c1-16)"
case "$name" in
  reference) base="$GRADCAM_CACHE/references" ;;
  trained) base="$GRADCAM_CACHE/trained" ;;
  *) base="$GRADCAM_CACHE/$name-reference" ;;
esac
ref="$base/$want"
if [ ! -f "$ref/stamp" ]; then
  echo "reference: generating $script's output into $ref" >&2
  mkdir -p "$base"
  rm -rf "$ref.tmp"
  python "$script" "$ref.tmp" >&2
  mv "$ref.tmp" "$ref"
  find "$base" -mindepth 1 -maxdepth 1 ! -name "$want" -exec rm -rf {} +
  [ "$name" = reference ] && rm -rf "$GRADCAM_CACHE/reference"  # the single-version layout used before
fi
echo "$ref"
