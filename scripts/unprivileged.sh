#!/usr/bin/env bash
# The container tests and an end-to-end test as an ordinary user would run them, after
# scripts/test.sh has built the tests. As root (CI), they run as nobody (uid 65534), which may
# read the cache and the checkout but write neither: in a private mount namespace the first
# directory above them that others may not enter (root's home, say) is covered by an empty one
# with just them mounted back, at the same paths. As anyone else, they run as that user.
# Arguments replace the tests chosen (libtest filters, e.g. `container::`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/test_env.sh
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(container:: server::forms::raw_body_explain_matches_the_engine)

exe="$(cargo test --release --features fault-injection --no-run --message-format=json --test e2e |
  python3 -c 'import json, sys
print(next(m["executable"] for m in map(json.loads, sys.stdin)
           if m.get("executable") and m["target"]["name"] == "e2e"))')"

if [ "$(id -u)" != 0 ]; then
  exec "$exe" --test-threads=1 "${tests[@]}"
fi

# The closed directory above a path, if any: the highest one that others cannot enter.
closed_above() {
  local p="$1" found=""
  while [ "$p" != / ]; do
    p="$(dirname "$p")"
    [ "$(( 0$(stat -c %a "$p") & 1 ))" = 1 ] || found="$p"
  done
  echo "$found"
}
# What the tests read: the cache, the checkout, and the Python the environment was made from.
keep=("$(cd "$GRADCAM_CACHE" && pwd -P)" "$root"
  "$("$GRADCAM_VENV/bin/python" -c 'import sys; print(sys.base_prefix)')")
pairs=()
for p in "${keep[@]}"; do pairs+=("$p" "$(closed_above "$p")"); done
export exe
unshare --mount --propagation private bash -euo pipefail -c '
  stage="$(mktemp -d)" covered=" " kept=() closed=()
  while [ "$1" != -- ]; do
    kept+=("$1") closed+=("$2")
    mkdir -p "$stage$1" && mount --bind "$1" "$stage$1"
    shift 2
  done
  shift
  for c in "${closed[@]}"; do
    [ -z "$c" ] || [[ "$covered" == *" $c "* ]] || mount -t tmpfs -o mode=755 tmpfs "$c"
    covered+="$c "
  done
  for p in "${kept[@]}"; do mkdir -p "$p" && mount --bind "$stage$p" "$p"; done
  exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
    env HOME=/tmp "$exe" --test-threads=1 "$@"
' bash "${pairs[@]}" -- "${tests[@]}"
