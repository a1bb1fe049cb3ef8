#!/usr/bin/env bash
# Fuzzes the service's decode-and-preprocess function (fuzz/fuzz_targets/decode_preprocess.rs)
# with libFuzzer through cargo fuzz. Usage: scripts/fuzz.sh [SECONDS] (default 600).
# cargo fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
# New inputs go to $GRADCAM_CACHE/fuzz-corpus; the committed seeds stay in fuzz/seeds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs="${1:-600}"
corpus="$GRADCAM_CACHE/fuzz-corpus"
mkdir -p "$corpus"
export RUSTC_BOOTSTRAP=1
cargo fuzz run decode_preprocess "$corpus" fuzz/seeds/decode_preprocess -- \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
