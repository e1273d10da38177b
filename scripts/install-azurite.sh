#!/usr/bin/env bash
# Install Azurite (the Azure Blob Storage emulator), pinned by the committed
# devcluster/azurite-npm/package-lock.json, with `npm ci` into .cache/azurite.
# The az:// integration tests start it (devcluster/azurite.py).
# Usage: scripts/install-azurite.sh [path/to/folder]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/devcluster/azurite-npm
out=${1:-$root/.cache/azurite}
[[ $out = /* ]] || out=$root/$out
if [ -x "$out/node_modules/.bin/azurite-blob" ] && cmp -s "$src/package-lock.json" "$out/package-lock.json"; then
  echo "azurite is current: $out"
  exit 0
fi
command -v npm >/dev/null || { echo "install-azurite.sh: npm (Node.js >= 18) is needed" >&2; exit 1; }
mkdir -p "$out"
cp "$src/package.json" "$src/package-lock.json" "$out/"
(cd "$out" && npm ci --ignore-scripts --no-audit --no-fund --omit=dev)
echo "installed azurite $(node -p "require('$out/node_modules/azurite/package.json').version"): $out"
