#!/usr/bin/env bash
# Installs what the project needs outside cargo, idempotently:
# - Debian packages the tests use (nginx for the load-balancer test), when missing;
# - a Python virtual environment in the cache with the pinned torch wheel (which carries
#   libtorch) and the test tools, when it does not match scripts/requirements.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/env.sh"

packages=(nginx)
# The container build needs no test tools: it sets GRADCAM_SKIP_SYSTEM_PACKAGES=1.
[ "${GRADCAM_SKIP_SYSTEM_PACKAGES:-0}" = 1 ] && packages=()
missing=()
for pkg in "${packages[@]}"; do
  command -v "$pkg" >/dev/null 2>&1 || [ -x "/usr/sbin/$pkg" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The container test (tests/e2e/container.rs) assembles the Dockerfile's runtime stage without a
# Docker engine: debootstrap makes its Debian root, patchelf sets the binary's rpath to the
# image's, unshare/ip run it in namespaces of its own, rootless. The root is made once, as root,
# from Debian's packages and cached in $GRADCAM_CACHE/runtime-image (about a minute, 100 MB).
if [ "${GRADCAM_SKIP_SYSTEM_PACKAGES:-0}" != 1 ]; then
  tools=()
  # Chromium and its WebDriver drive the playground in tests/e2e/browser.rs.
  for tool in debootstrap:debootstrap patchelf:patchelf ip:iproute2 unshare:util-linux \
      chromium:chromium chromedriver:chromium-driver; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || tools+=("${tool#*:}")
  done
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ ${#tools[@]} -gt 0 ]; then
    echo "setup: installing ${tools[*]} from Debian" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${tools[@]}" >/dev/null
  fi
  # promtool checks and unit-tests deploy/observability/rules.yaml (tests/e2e/observability.rs).
  # It comes from Debian's prometheus package, unpacked into the cache rather than installed,
  # so that no Prometheus daemon is installed or started on the machine.
  if ! command -v promtool >/dev/null 2>&1; then
    echo "setup: unpacking promtool from Debian's prometheus package into $GRADCAM_CACHE/bin" >&2
    deb="$(mktemp -d)"
    (cd "$deb" && apt-get download prometheus >/dev/null 2>&1) ||
      { $sudo apt-get update -qq && (cd "$deb" && apt-get download prometheus >/dev/null); }
    dpkg-deb -x "$deb"/prometheus_*.deb "$deb/root"
    mkdir -p "$GRADCAM_CACHE/bin"
    cp "$deb/root/usr/bin/promtool" "$GRADCAM_CACHE/bin/promtool"
    rm -rf "$deb"
  fi
  python3 "$here/runtime_image.py" base >/dev/null 2>&1 ||
    $sudo env GRADCAM_CACHE="$GRADCAM_CACHE" python3 "$here/runtime_image.py" base >/dev/null
fi

# The npm packages the binary embeds (the API reference at /docs), before cargo builds it.
"$here/web_assets.sh"

want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
stamp="$GRADCAM_VENV/.requirements.sha256"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python3 --version >/dev/null 2>&1 || { echo "setup: python3 (3.10 or newer) is required" >&2; exit 1; }
  echo "setup: installing the Python environment into $GRADCAM_VENV (about 5 GB, once)" >&2
  mkdir -p "$GRADCAM_CACHE"
  [ -x "$GRADCAM_VENV/bin/python" ] || python3 -m venv "$GRADCAM_VENV"
  "$GRADCAM_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# The real clients of the inference platforms (tritonclient, KServe's SDK) for
# tests/e2e/protocols.rs, constrained by the pins above so that they move nothing the references
# depend on; a file and a stamp of their own, outside the references' inputs.
want="$(sha256sum "$here/requirements-clients.txt" | cut -d' ' -f1)"
stamp="$GRADCAM_VENV/.requirements-clients.sha256"
if [ "${GRADCAM_SKIP_SYSTEM_PACKAGES:-0}" != 1 ] &&
   { [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; }; then
  echo "setup: installing the inference platforms' clients into $GRADCAM_VENV" >&2
  "$GRADCAM_VENV/bin/pip" install --quiet --disable-pip-version-check \
    -r "$here/requirements-clients.txt" -c "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# The pure-Python wheels the device kit carries to a machine without network
# (scripts/device-bundle.sh): pytorch-grad-cam, built into a wheel from its source archive,
# and the two small packages its import needs that torch does not bring.
wheels="$GRADCAM_CACHE/device-wheels"
gradcam="$(sed -n 's/^grad-cam==//p' "$here/requirements.txt")"
if ! compgen -G "$wheels/grad_cam-$gradcam-py3-none-any.whl" >/dev/null ||
   ! compgen -G "$wheels/ttach-*.whl" >/dev/null || ! compgen -G "$wheels/tqdm-*.whl" >/dev/null; then
  mkdir -p "$wheels"
  version() { "$GRADCAM_VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  # Built in pip's isolated build environment (a current setuptools): the environment's own
  # setuptools cannot build a wheel without the `wheel` package, which a machine whose pip
  # cache already holds the wheel never notices.
  "$GRADCAM_VENV/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
    -w "$wheels" "grad-cam==$gradcam"
  "$GRADCAM_VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheels" "ttach==$(version ttach)" "tqdm==$(version tqdm)"
fi
