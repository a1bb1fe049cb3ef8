#!/usr/bin/env bash
# What a user's CI pipeline does with curl: start the service, wait until it is ready, post a
# photo in each input form, check the answers, stop it with SIGTERM and expect exit 0.
# Weights: $GRADCAM_WEIGHTS if set, else the test weights from the cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
cargo build --release --quiet --bin gradcam-serve
. scripts/server.sh
work="$(mktemp -d)"
log="$work/server.log"
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "smoke: FAIL: $*" >&2; tail -20 "$log" >&2; exit 1; }

start_server "$log" || fail "the server did not start"

check_json() {  # file, python expression over d that must be true
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$1" \
    || fail "unexpected answer: $(head -c 300 "$1")"
}

# Raw body.
code=$(curl -s -o "$work/raw.json" -w '%{http_code}' -X POST --data-binary @tests/fixtures/chelsea.png \
  -H 'Content-Type: image/png' "$base/explain?top_k=2")
[ "$code" = 200 ] || fail "raw body: HTTP $code"
check_json "$work/raw.json" "len(d['explanations']) == 2 and d['explanations'][0]['overlay_png'] and len(d['explanations'][0]['heatmap']['data']) == 49"

# Multipart upload with options.
code=$(curl -s -o "$work/form.json" -w '%{http_code}' -F image=@tests/fixtures/coffee.jpg -F method=layercam \
  -F overlay=false "$base/explain")
[ "$code" = 200 ] || fail "multipart: HTTP $code"
check_json "$work/form.json" "d['explanations'][0]['method'] == 'layercam' and 'overlay_png' not in d['explanations'][0]"

# The overlay PNG itself.
code=$(curl -s -o "$work/overlay.png" -D "$work/headers" -w '%{http_code}' -X POST -H 'Accept: image/png' \
  -H 'Content-Type: image/jpeg' --data-binary @tests/fixtures/rocket.jpg "$base/explain")
[ "$code" = 200 ] || fail "Accept: image/png: HTTP $code"
[ "$(head -c 8 "$work/overlay.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "not a PNG"
grep -qi '^x-class-index:' "$work/headers" || fail "no x-class-index header"

# Classification only, and a refusal that says what is allowed.
curl -sf -o "$work/predict.json" -X POST --data-binary @tests/fixtures/camera.png -H 'Content-Type: image/png' \
  "$base/predict?top_k=3" || fail "predict"
check_json "$work/predict.json" "len(d['predictions']) == 3"
code=$(curl -s -o "$work/problem.json" -w '%{http_code}' -X POST -d 'hello' -H 'Content-Type: text/plain' "$base/explain")
[ "$code" = 415 ] || fail "text body: HTTP $code, expected 415"
check_json "$work/problem.json" "d['type'] == 'unsupported_media_type'"

kill -TERM "$pid"
wait "$pid" || fail "exit status $? after SIGTERM"
echo "smoke: OK (raw, multipart, png, predict, 415, graceful stop)"
