#!/usr/bin/env bash
# Install the CNCF distribution registry, pinned, with `go install` of its Go module (the
# module proxy serves it): the integration tests start it (token auth, a token server of
# their own) to serve oci:// checkpoints.
# Usage: scripts/install-registry.sh [path/to/registry]
set -euo pipefail
REGISTRY_VERSION=v3.0.0
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/bin/registry}
[[ $out = /* ]] || out=$root/$out
if [ -x "$out" ] && [ "$("$out" --version 2>/dev/null | awk '{print $3}')" = "$REGISTRY_VERSION" ]; then
  echo "registry $REGISTRY_VERSION is current: $out"
  exit 0
fi
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
CGO_ENABLED=0 GOBIN=$gobin go install -trimpath \
  -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" \
  "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
mkdir -p "$(dirname "$out")"
mv "$gobin/registry" "$out"
echo "installed registry $("$out" --version): $out"
