#!/usr/bin/env bash
# Install kubeconform, pinned, with `go install` of its Go module (the module proxy serves
# it). Its default schemas live on GitHub, out of reach here: the tests give it schemas
# generated from the test API server's OpenAPI v3 (devcluster/openapi_schemas.py).
# Usage: scripts/install-kubeconform.sh [path/to/kubeconform]
set -euo pipefail
KUBECONFORM_VERSION=v0.8.0
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/bin/kubeconform}
[[ $out = /* ]] || out=$root/$out
if [ -x "$out" ] && [ "$("$out" -v 2>/dev/null)" = "$KUBECONFORM_VERSION" ]; then
  echo "kubeconform $KUBECONFORM_VERSION is current: $out"
  exit 0
fi
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
CGO_ENABLED=0 GOBIN=$gobin go install -trimpath \
  -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
  "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
mkdir -p "$(dirname "$out")"
mv "$gobin/kubeconform" "$out"
echo "installed kubeconform $("$out" -v): $out"
