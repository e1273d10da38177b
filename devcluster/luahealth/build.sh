#!/usr/bin/env bash
# Build luahealth (Argo CD's Lua health checks run in gopher-lua) into
# ../../.cache/bin/luahealth (or $1); a stamp of the sources' hash skips the build when
# nothing changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../../.cache/bin/luahealth}")
mkdir -p "$(dirname "$out")"
stamp="$out.stamp"
sum=$(cat "$here/go.mod" "$here/go.sum" "$here"/*.go "$0" | sha256sum | cut -d' ' -f1)
if [ -x "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  echo "luahealth is current: $out"
  exit 0
fi
cd "$here"
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" .
echo "$sum" > "$stamp"
echo "built luahealth in $(( $(date +%s) - start ))s: $out"
