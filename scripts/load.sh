#!/usr/bin/env bash
# Load benchmark of the running service with wrk (Debian): 1, 4 and 16 concurrent clients
# posting a photo of about one megapixel (scikit-image's hubble_deep_field.jpg, 1000x872) to
# /explain, then a longer run for memory. Prints throughput, p50/p99 latency, status counts and
# the server's resident memory. Usage: scripts/load.sh [SECONDS_PER_LEVEL] [LONG_RUN_SECONDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
command -v wrk >/dev/null || { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo; $sudo apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin gradcam-serve
secs="${1:-30}"
long="${2:-150}"
. scripts/server.sh
photo="$(hubble_photo)"
serve_for_bench "${@:3}"
rss() { awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$pid/status"; }
echo "photo: $photo ($(python -c "from PIL import Image; print('x'.join(map(str, Image.open('$photo').size)))"))"
echo "rss after warm-up: $(rss)"
export LOAD_FILE="$photo" LOAD_TYPE=image/jpeg
for c in 1 4 16; do
  t=$(( c < 2 ? 1 : 2 ))
  out=$(wrk -t"$t" -c"$c" -d"${secs}s" --timeout 60s -s benches/post.lua "$base/explain")
  echo "clients=$c $(echo "$out" | grep p50_ms) non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')  rss=$(rss)"
done
echo "long run: 16 clients for ${long}s"
out=$(wrk -t2 -c16 -d"${long}s" --timeout 60s -s benches/post.lua "$base/explain")
echo "clients=16 $(echo "$out" | grep p50_ms) non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')  rss=$(rss)"
echo "peak rss: $(awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$pid/status")"
curl -s "$base/metrics" | grep -E '^gradcam_(batch_size_(sum|count)|requests_total)'
