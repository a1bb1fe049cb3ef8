#!/usr/bin/env bash
# Installs the npm packages the binary embeds (scripts/web/package.json: swagger-ui-dist, the
# interactive API reference at /docs) into the cache, once per version, from the npm registry.
# build.rs embeds them from there; a build without them serves a plain /docs that says so.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/env.sh"
version="$(sed -n 's/.*"swagger-ui-dist": *"\([^"]*\)".*/\1/p' "$here/web/package.json")"
dir="$GRADCAM_CACHE/web/swagger-ui-dist-$version"
[ -f "$dir/node_modules/swagger-ui-dist/swagger-ui-bundle.js" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  if [ "${GRADCAM_SKIP_SYSTEM_PACKAGES:-0}" = 1 ]; then
    echo "setup: npm is missing: /docs will be built without the interactive reference" >&2
    exit 0
  fi
  echo "setup: installing npm from Debian" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >/dev/null
fi
echo "setup: installing swagger-ui-dist $version from npm into $dir" >&2
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
cp "$here/web/package.json" "$dir.tmp/"
(cd "$dir.tmp" && npm install --no-audit --no-fund --ignore-scripts --omit=dev --loglevel=error >&2)
rm -rf "$dir"
mv "$dir.tmp" "$dir"
