#!/usr/bin/env bash
# Installs what the project needs outside cargo: a Python virtual environment in the cache with
# the pinned torch wheel (which carries libtorch). Idempotent: does nothing when the environment
# already matches scripts/requirements.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/env.sh"

want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
stamp="$GRADCAM_VENV/.requirements.sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 --version >/dev/null 2>&1 || { echo "setup: python3 (3.10 or newer) is required" >&2; exit 1; }
echo "setup: installing the Python environment into $GRADCAM_VENV (about 5 GB, once)" >&2
mkdir -p "$GRADCAM_CACHE"
[ -x "$GRADCAM_VENV/bin/python" ] || python3 -m venv "$GRADCAM_VENV"
"$GRADCAM_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "$want" > "$stamp"
