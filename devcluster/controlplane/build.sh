#!/usr/bin/env bash
# Build the control-plane binary into ../../.cache/bin/controlplane (or $1).
# Go's module and build caches make a rebuild cheap; a stamp of the sources' hash
# skips even the `go build` call when nothing changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../../.cache/bin/controlplane}")  # absolute: used after the cd below
mkdir -p "$(dirname "$out")"
kver=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")
minor=$(echo "$kver" | cut -d. -f2)
stamp="$out.stamp"
exec 9>"$out.lock"
flock 9  # one build at a time, across make and test sessions
sum=$(cat "$here/go.mod" "$here/go.sum" "$here"/*.go "$0" | sha256sum | cut -d' ' -f1)
if [ -x "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  echo "controlplane $kver is current: $out"
  exit 0
fi
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
cd "$here"
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" .
echo "$sum" > "$stamp"
echo "built controlplane $kver in $(( $(date +%s) - start ))s: $out"
