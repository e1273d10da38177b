#!/usr/bin/env bash
# Install the real helm binary, pinned, with `go install` of helm's Go module.
# Usage: scripts/install-helm.sh [path/to/helm] [4|3]
# Helm 4 is the one the tests and the demo use; Helm 3 runs the README's install
# commands too (tests/integration/operator/test_readme_install.py).
set -euo pipefail
case ${2:-4} in
  4) HELM_VERSION=v4.3.1 ;;
  3) HELM_VERSION=v3.21.4 ;;
  *) echo "usage: $0 [path/to/helm] [4|3]" >&2; exit 2 ;;
esac
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
