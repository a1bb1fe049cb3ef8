# Sourced by smoke.sh, load.sh and overload.sh: start_server LOG [SERVE ARGS...] starts the
# release binary on a loopback port of its choosing with the weights in $GRADCAM_WEIGHTS (else the test
# weights from the cache; the binary in $GRADCAM_SERVE_BIN, else the release build), sets $pid and $base (and
# $grpc, HOST:PORT, when started with --grpc-port), and waits until it is ready (at most 120 s).
# Returns 1, with the log on stderr, when the server exits or does not become ready.
start_server() {
  local log="$1"
  shift
  # As the image and scripts/run.sh run it (README's Performance: "Cores").
  [ -n "${OMP_WAIT_POLICY:-}" ] || export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
  local weights="${GRADCAM_WEIGHTS:-$(scripts/reference.sh)/weights.safetensors}"
  # Port 0: the server binds a free port itself and names it in its "ready" line, so no other
  # process can take the port between choosing and binding it.
  "${GRADCAM_SERVE_BIN:-${CARGO_TARGET_DIR:-target}/release/gradcam-serve}" serve --host 127.0.0.1 --port 0 --weights "$weights" \
    --log-format json "$@" >"$log" 2>&1 &
  pid=$!
  local _ addr found
  grpc=""
  for _ in $(seq 1 240); do
    found="$(python3 -c '
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    f = e.get("fields") if isinstance(e, dict) else None
    if isinstance(f, dict) and f.get("message") == "ready":
        print(f.get("addr", ""), f.get("grpc_addr", ""))
        break
' "$log")"
    read -r addr grpc <<<"$found" || true
    if [ -n "$addr" ]; then
      base="http://$addr"
      curl -sf "$base/health/ready" >/dev/null && return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "the server did not become ready:" >&2
  tail -20 "$log" >&2
  return 1
}

# serve_for_bench [SERVE ARGS...]: start_server with a temporary log, and an EXIT trap that
# stops the server (if still running) and removes the log. For the load and overload scripts.
serve_for_bench() {
  log="$(mktemp)"
  pid=""
  trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
  start_server "$log" "$@"
}

# The benchmark photo: scikit-image's hubble_deep_field.jpg (1000x872, about one megapixel),
# from the Python environment.
hubble_photo() {
  python -c 'import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), "data", "hubble_deep_field.jpg"))'
}
