#!/usr/bin/env bash
# Assembles device-kit/ (ignored by git): what a machine with a GPU, Python and PyTorch but no
# Rust and no network needs to check the release build there (scripts/gpu-check.sh, run from the
# kit, reports parity, engine throughput and the service against PyTorch on that machine):
#   bin/gradcam-serve, bin/gradcam-load   the release binaries, debug info stripped
#   gpu-check.sh, gpu_check.py            the check: its start and its entry point,
#   device_check/                         its steps and what they share, one module each,
#   torchref.py                           and the PyTorch side it shares with the reference
#                                         scripts (tests/torchref.py)
#   photos/                               scikit-image's sample photographs (parity)
#   load/load-224.jpg, load/load-1mp.jpg  the service's load-test pictures
#   wheels/                               pytorch-grad-cam and the two small pure-Python
#                                         packages its import needs that torch does not bring
#   manifest.json                         versions, sizes and sha256 of everything above
# The kit must travel in one call (64 MiB at most): it fails above 60 MiB, after compressing the
# binaries with xz if that is what it takes.
# Usage: scripts/device-bundle.sh [--prebuilt DIR] [--kit DIR]
#   --prebuilt DIR   take gradcam-serve and gradcam-load from DIR instead of building them
#   --kit DIR        assemble the kit there instead of device-kit/ (tests use a temporary one)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/env.sh

prebuilt=""
kit="$root/device-kit"
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt="${2:?--prebuilt needs a directory}"; shift 2 ;;
    --kit) kit="$(realpath -m "${2:?--kit needs a directory}")"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "device-bundle: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done
if [ -z "$prebuilt" ]; then
  scripts/setup.sh
  cargo build --release --quiet --bin gradcam-serve --bin gradcam-load
  prebuilt="${CARGO_TARGET_DIR:-target}/release"
else
  [ -x "$GRADCAM_VENV/bin/python" ] || scripts/setup.sh
fi
for b in gradcam-serve gradcam-load; do
  [ -x "$prebuilt/$b" ] || { echo "device-bundle: no executable $prebuilt/$b" >&2; exit 1; }
done

limit=$((60 * 1024 * 1024))
tmp="$(mktemp -d)"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/photos" "$tmp/load" "$tmp/wheels"

# Debug info goes (the symbols stay, so that a backtrace still names functions).
for b in gradcam-serve gradcam-load; do
  objcopy --strip-debug "$prebuilt/$b" "$tmp/bin/$b" 2>/dev/null ||
    strip --strip-debug -o "$tmp/bin/$b" "$prebuilt/$b"
done
cp scripts/gpu-check.sh scripts/gpu_check.py tests/torchref.py "$tmp/"
mkdir -p "$tmp/device_check"
cp scripts/device_check/*.py "$tmp/device_check/"
chmod +x "$tmp/gpu-check.sh"

# Photographs for parity, and the load test's two JPEGs made from them: a 224x224 crop (the
# model's size: the service's decode and resize are cheapest) and a photograph of about 1 MP.
python - "$tmp" <<'PY'
import os, shutil, sys
import skimage
from PIL import Image
out = sys.argv[1]
data = os.path.join(os.path.dirname(skimage.__file__), "data")
for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
             "hubble_deep_field.jpg"):
    shutil.copy(os.path.join(data, name), os.path.join(out, "photos", name))
cat = Image.open(os.path.join(data, "chelsea.png")).convert("RGB")
w, h = cat.size
s = min(w, h)
cat.crop(((w - s) // 2, 0, (w - s) // 2 + s, s)).resize((224, 224), Image.Resampling.BICUBIC) \
    .save(os.path.join(out, "load", "load-224.jpg"), quality=90)
Image.open(os.path.join(data, "coffee.png")).convert("RGB") \
    .resize((1155, 866), Image.Resampling.BICUBIC) \
    .save(os.path.join(out, "load", "load-1mp.jpg"), quality=90)
PY

# pytorch-grad-cam is published as a source archive only: it is built into a wheel here (pure
# Python), so that the device installs it without setuptools. Its import needs ttach and tqdm
# (both pure Python, about 90 KB); matplotlib, scipy and scikit-learn it imports only for
# helpers the check never calls, and torchref.py stands in for them where they are missing.
# The versions are the pinned grad-cam and the ttach and tqdm of the environment the check is
# tried in here; the wheels are kept in the cache, so that a later kit needs no network.
wheels="$GRADCAM_CACHE/device-wheels"
mkdir -p "$wheels"
gradcam="$(sed -n 's/^grad-cam==//p' scripts/requirements.txt)"
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for spec in "grad-cam==$gradcam" "ttach==$(version ttach)" "tqdm==$(version tqdm)"; do
  name="${spec%%==*}"
  file="$(find "$wheels" -maxdepth 1 -iname "$(echo "$name" | tr - _)-${spec#*==}-py3-none-any.whl" | head -1)"
  if [ -z "$file" ]; then
    if [ "$name" = grad-cam ]; then
      pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$wheels" "$spec"
    else
      pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$wheels" "$spec"
    fi
    file="$(find "$wheels" -maxdepth 1 -iname "$(echo "$name" | tr - _)-${spec#*==}-py3-none-any.whl" | head -1)"
    [ -n "$file" ] || { echo "device-bundle: no pure-Python wheel of $spec" >&2; exit 1; }
  fi
  cp "$file" "$tmp/wheels/"
done

size() { du -sb "$1" | cut -f1; }
if [ "$(size "$tmp")" -gt "$limit" ]; then
  echo "device-bundle: $(($(size "$tmp") / 1048576)) MiB, compressing the binaries" >&2
  xz -T0 -9 "$tmp"/bin/*
fi

# The manifest: what was built, from what, with checksums (of the binaries as they run, and of
# their compressed form when they travel compressed).
python - "$tmp" "$prebuilt" <<'PY'
import datetime, hashlib, importlib.metadata as md, json, lzma, os, subprocess, sys
kit, prebuilt = sys.argv[1], sys.argv[2]
def sha(data):
    return hashlib.sha256(data).hexdigest()
def git(*args):
    r = subprocess.run(["git", *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None
binaries = {}
for f in sorted(os.listdir(os.path.join(kit, "bin"))):
    raw = open(os.path.join(kit, "bin", f), "rb").read()
    name = f.removesuffix(".xz")
    entry = {"file": f"bin/{f}", "bytes": len(raw), "sha256": sha(raw)}
    if f.endswith(".xz"):
        plain = lzma.decompress(raw)
        entry.update(uncompressed_bytes=len(plain), uncompressed_sha256=sha(plain))
    binaries[name] = entry
version = subprocess.run([os.path.join(prebuilt, "gradcam-serve"), "--version"],
                         capture_output=True, text=True)
files = {}
for d in ("photos", "load", "wheels"):
    for f in sorted(os.listdir(os.path.join(kit, d))):
        raw = open(os.path.join(kit, d, f), "rb").read()
        files[f"{d}/{f}"] = {"bytes": len(raw), "sha256": sha(raw)}
manifest = {
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "git_commit": git("rev-parse", "HEAD"),
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "gradcam_serve_version": version.stdout.strip() or None,
    "libtorch": md.version("torch"),
    "torchvision": md.version("torchvision"),
    "needs_on_device": "python3 with torch " + md.version("torch") + ", torchvision, numpy, "
                       "pillow, safetensors and opencv (pytorch-grad-cam resizes with cv2)",
    "binaries": binaries,
    "files": files,
}
with open(os.path.join(kit, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
PY

total="$(size "$tmp")"
(cd "$tmp" && find . -type f -printf '%s\t%P\n' | sort -k2 |
  awk -F'\t' '{ printf "  %9.2f MiB  %s\n", $1 / 1048576, $2 }')
awk -v t="$total" 'BEGIN { printf "device-bundle: the kit is %.1f MiB\n", t / 1048576 }'
if [ "$total" -gt "$limit" ]; then
  echo "device-bundle: over the 60 MiB limit; device-kit/ left as it was" >&2
  exit 1
fi
rm -rf "$kit"
mkdir -p "$(dirname "$kit")"
mv "$tmp" "$kit"
trap - EXIT
echo "run it there from the repository root: ${kit#"$root"/}/gpu-check.sh (report in \$OUT or ./gpu-report)"
