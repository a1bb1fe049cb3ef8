#!/usr/bin/env bash
# Makes sure a PyTorch reference exists in the cache, in a directory named after the hash of the
# script that makes it, of the modules of tests/ it imports (tests/torchref.py, the PyTorch side
# the scripts share) and of the pinned Python packages, so that it is made again when any of
# them changes; prints its directory; older versions are removed.
#   scripts/reference.sh          tests/reference.py: the seeded ResNet-50, its logits and maps,
#                                 edge-case images
#   scripts/reference.sh family   tests/family.py: every member of the ResNet family, timm's,
#                                 checkpoint formats, a 7-class head, 288 px centre-crop
#   scripts/reference.sh trained  tests/trained.py: a ResNet-18 trained from scratch on a
#                                 synthetic task where one object decides the class, its
#                                 held-out pictures and PyTorch's figures (minutes on two cores)
#   scripts/reference.sh --key NAME   prints only that hash (16 hex digits), making nothing
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
key_only=""
if [ "${1:-}" = --key ]; then
  key_only=1
  shift
fi
name="${1:-reference}"
script="tests/$name.py"
[ -f "$script" ] || { echo "reference: no $script" >&2; exit 1; }

# What the output depends on: the script, each module of tests/ it imports by name (at the start
# of a line: `import torchref`, `from torchref import ...`), the pinned packages.
inputs() {
  echo "$script"
  local module
  for module in $(sed -n -E 's/^(import|from) +([A-Za-z_][A-Za-z0-9_]*).*/\2/p' "$script" |
      sort -u); do
    if [ -f "tests/$module.py" ] && [ "tests/$module.py" != "$script" ]; then
      echo "tests/$module.py"
    fi
  done
  echo scripts/requirements.txt
}
mapfile -t files < <(inputs)
want="$(cat "${files[@]}" | sha256sum | cut -c1-16)"
if [ -n "$key_only" ]; then
  echo "$want"
  exit 0
fi

scripts/setup.sh
case "$name" in
  reference) base="$GRADCAM_CACHE/references" ;;
  trained) base="$GRADCAM_CACHE/trained" ;;
  *) base="$GRADCAM_CACHE/$name-reference" ;;
esac
ref="$base/$want"
if [ ! -f "$ref/stamp" ]; then
  echo "reference: generating $script's output into $ref (from ${files[*]})" >&2
  mkdir -p "$base"
  rm -rf "$ref.tmp"
  python "$script" "$ref.tmp" >&2
  mv "$ref.tmp" "$ref"
  find "$base" -mindepth 1 -maxdepth 1 ! -name "$want" -exec rm -rf {} +
  [ "$name" = reference ] && rm -rf "$GRADCAM_CACHE/reference"  # the single-version layout used before
fi
# Readable by anyone, as the rest of the cache is (safetensors writes its files 0600): the
# suite's unprivileged run (scripts/unprivileged.sh) reads root's cache as another user.
chmod -R a+rX "$ref"
echo "$ref"
