#!/usr/bin/env bash
# Fuzzes one of the service's own modules with libFuzzer through cargo fuzz.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET] (default 600 seconds of decode_preprocess).
#   decode_preprocess  image decoding and preprocessing (fuzz/fuzz_targets/decode_preprocess.rs),
#                      seeded with fuzz/seeds/decode_preprocess
#   weights            the weights reader, both formats (fuzz/fuzz_targets/weights.rs), seeded
#                      with the files of tests/hostile_weights.py up to 64 KiB
# cargo fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# New inputs go to $GRADCAM_CACHE/fuzz-corpus[-TARGET]; crashes to fuzz/artifacts/TARGET.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs="${1:-600}"
target="${2:-decode_preprocess}"
export RUSTC_BOOTSTRAP=1
case "$target" in
  decode_preprocess)
    corpus="$GRADCAM_CACHE/fuzz-corpus"
    seeds=fuzz/seeds/decode_preprocess
    limits=() ;;
  weights)
    corpus="$GRADCAM_CACHE/fuzz-corpus-weights"
    seeds="$GRADCAM_CACHE/fuzz-seeds-weights"
    rm -rf "$seeds" "$seeds.all"
    python3 tests/hostile_weights.py "$seeds.all" --marker "$GRADCAM_CACHE/fuzz-marker" >/dev/null
    mkdir -p "$seeds"
    find "$seeds.all" -type f -size -65k ! -name manifest.json -exec cp {} "$seeds" \;
    rm -rf "$seeds.all"
    limits=(-max_len=65536) ;;
  *) echo "fuzz: unknown target $target (decode_preprocess, weights)" >&2; exit 1 ;;
esac
mkdir -p "$corpus"
cargo fuzz run "$target" "$corpus" "$seeds" -- \
  -max_total_time="$secs" "${limits[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
