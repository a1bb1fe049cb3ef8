#!/usr/bin/env bash
# Dataset benchmark of `gradcam-serve explain` (default outputs: overlay PNG and JSON per
# picture, plus a summary): 200 and 2000 pictures of 224x224 and 200 photographs of about 1 MP
# (JPEG, generated once into the cache from scikit-image's photographs), each run's peak RSS
# (GNU time) and pictures per second (the photographs also without overlays); then the engine
# alone (criterion, explain at layer4, the same batch size: 1, 4 or 8) for the ratio.
# Usage: scripts/dataset_bench.sh [BATCH_SIZE]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
batch="${1:-4}"
cargo build --release --quiet --bin gradcam-serve
weights="$(scripts/reference.sh)/weights.safetensors"
data="$GRADCAM_CACHE/dataset-bench"
[ -f "$data/done" ] || python - "$data" <<'PY'
import os, sys
import skimage.data as d
from PIL import Image
out = sys.argv[1]
photos = [Image.fromarray(f()).convert("RGB") for f in
          (d.astronaut, d.coffee, d.chelsea, d.rocket, d.hubble_deep_field, d.immunohistochemistry)]
for i in range(2000):
    p = photos[i % len(photos)]
    w, h = p.size
    s = min(w, h) * (0.5 + 0.4 * ((i * 7919) % 97) / 97)
    x, y = (i * 37) % int(w - s + 1), (i * 53) % int(h - s + 1)
    folder = os.path.join(out, "small2000", f"part{i // 250}")
    os.makedirs(folder, exist_ok=True)
    p.crop((x, y, x + s, y + s)).resize((224, 224), Image.BILINEAR).save(
        os.path.join(folder, f"p{i:04d}.jpg"), quality=90)
for i in range(200):
    p = photos[i % len(photos)].resize((1155, 866), Image.BICUBIC)
    if i % 2:
        p = p.transpose(Image.FLIP_LEFT_RIGHT)
    folder = os.path.join(out, "photo200")
    os.makedirs(folder, exist_ok=True)
    p.rotate((i * 3) % 10 - 5).save(os.path.join(folder, f"p{i:03d}.jpg"), quality=90)
small200 = os.path.join(out, "small200")
os.makedirs(small200, exist_ok=True)
for i in range(200):
    src = os.path.join(out, "small2000", f"part{i // 250}", f"p{i:04d}.jpg")
    os.link(src, os.path.join(small200, f"p{i:04d}.jpg"))
open(os.path.join(out, "done"), "w").close()
PY
run() { # NAME DIR [EXTRA FLAGS...]
  local out
  out="$(mktemp -d)"
  /usr/bin/time -f "%M %e" -o "$out.time" target/release/gradcam-serve explain "$2" \
    --weights "$weights" --device cpu --batch-size "$batch" --quiet --out "$out" \
    --summary "$out/summary.jsonl" "${@:3}" > /dev/null
  local n
  n="$(wc -l < "$out/summary.jsonl")"
  read -r kib secs < "$out.time"
  awk -v name="$1" -v n="$n" -v kib="$kib" -v s="$secs" 'BEGIN {
    printf "%-28s %5d pictures in %6.1f s: %5.2f pictures/s, peak RSS %d MiB\n", name, n, s, n / s, kib / 1024 }'
  rm -rf "$out" "$out.time"
}
run "200 x 224x224" "$data/small200"
run "2000 x 224x224" "$data/small2000"
run "200 x 1 MP photographs" "$data/photo200"
run "200 x 1 MP, --no-overlay" "$data/photo200" --no-overlay
GRADCAM_BENCH_WEIGHTS="$weights" cargo bench --quiet --bench engine -- "explain_layer4/$batch\$" 2>&1 |
  grep -E "explain_layer4/$batch|thrpt"
