#!/usr/bin/env bash
# The same 1 MP photograph (scikit-image's hubble_deep_field.jpg) through /explain and through
# the Open Inference Protocol over REST (JSON and binary tensor data) and over gRPC (raw
# contents), in one run on one machine:
# `gradcam-load` at 1 client (p50, p99) and 16 clients (throughput), each answer with the same
# content (the top class's raw and normalised map, an overlay PNG, the probabilities), and the
# size of each answer.
# Usage: scripts/protocol_bench.sh [SECONDS_PER_RUN] [EXTRA SERVE ARGS...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh
scripts/setup.sh
secs="${1:-10}"
shift || true
. scripts/server.sh
photo="$(hubble_photo)"
cargo build --release --quiet --bin gradcam-serve --bin gradcam-load
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
tmp="$(mktemp -d)"
serve_for_bench --grpc-port 0 "$@"
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$tmp" "$log"' EXIT
model="$(curl -s "$base/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["models"][0])')"

# The OIP requests: the photo in base64 in JSON; the photo as binary data, answered in binary.
header_len="$(python3 - "$photo" "$tmp" <<'PY'
import base64, json, struct, sys
photo, tmp = open(sys.argv[1], "rb").read(), sys.argv[2]
doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                   "data": [base64.b64encode(photo).decode()]}]}
open(f"{tmp}/json.body", "w").write(json.dumps(doc))
doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                   "parameters": {"binary_data_size": 4 + len(photo)}}],
       "parameters": {"binary_data_output": True}}
head = json.dumps(doc).encode()
open(f"{tmp}/binary.body", "wb").write(head + struct.pack("<I", len(photo)) + photo)
print(len(head))
PY
)"

run() { # run NAME CLIENTS URL FILE CONTENT_TYPE [HEADER]
  local extra=()
  [ -z "${6:-}" ] || extra=(--header "$6")
  target/release/gradcam-load --url "$3" --file "$4" --content-type "$5" "${extra[@]}" \
    --concurrency "$2" --seconds "$secs" --json "$tmp/load.json" >/dev/null
  python3 - "$tmp/load.json" "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {d['ok_per_s']:.1f} req/s | {d['latency_ms']['p50']:.1f} ms | "
      f"{d['latency_ms']['p99']:.1f} ms | {d.get('mean_answer_bytes', 0) / 1e3:.0f} kB | {d['status']} |")
PY
}
echo "| route | clients | throughput | p50 | p99 | answer | statuses |"
echo "|---|---|---|---|---|---|---|"
for clients in 1 16; do
  run "/explain" "$clients" "$base/explain" "$photo" image/jpeg
  run "OIP REST, JSON" "$clients" "$base/v2/models/$model/infer" "$tmp/json.body" application/json
  run "OIP REST, binary" "$clients" "$base/v2/models/$model/infer" "$tmp/binary.body" \
    application/octet-stream "Inference-Header-Content-Length: $header_len"
  run "OIP gRPC" "$clients" "grpc://$grpc/$model" "$photo" application/octet-stream
done
