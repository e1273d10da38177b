#!/usr/bin/env bash
# Install the real helm binary, pinned, with `go install` of helm's Go module.
# Usage: scripts/install-helm.sh [path/to/helm]
set -euo pipefail
HELM_VERSION=v4.3.1
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/bin/helm}
[[ $out = /* ]] || out=$root/$out
if [ -x "$out" ] && "$out" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "helm $HELM_VERSION is current: $out"
  exit 0
fi
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
major=${HELM_VERSION%%.*}
version_pkg=helm.sh/helm/$major/internal/version
CGO_ENABLED=0 GOBIN=$gobin go install -trimpath \
  -ldflags "-s -w -X $version_pkg.version=$HELM_VERSION" \
  "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
mkdir -p "$(dirname "$out")"
mv "$gobin/helm" "$out"
echo "installed helm $("$out" version --short): $out"
