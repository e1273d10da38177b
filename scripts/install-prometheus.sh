#!/usr/bin/env bash
# Install prometheus and promtool, pinned, with `go install` of Prometheus' Go module (the
# module proxy serves it; v0.316.0 is Prometheus 3.16.0). Built with the build tags
# remove_all_sd,enable_kubernetes_sd: the only service discovery compiled in is
# kubernetes_sd (plus file and http, always in), which the e2e tests use against the
# test control plane; no web UI assets (the API is all the tests use).
# Usage: scripts/install-prometheus.sh [path/to/prometheus]  (promtool goes beside it)
set -euo pipefail
PROMETHEUS_MODULE_VERSION=v0.316.0
PROMETHEUS_VERSION=3.16.0
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/bin/prometheus}
[[ $out = /* ]] || out=$root/$out
dir=$(dirname "$out")
current() {
  [ -x "$dir/$1" ] && "$dir/$1" --version 2>/dev/null | head -1 | grep -q "version $PROMETHEUS_VERSION "
}
if current prometheus && current promtool; then
  echo "prometheus and promtool $PROMETHEUS_VERSION are current: $dir"
  exit 0
fi
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
mod=github.com/prometheus/prometheus
ver=github.com/prometheus/common/version
CGO_ENABLED=0 GOBIN=$gobin go install -trimpath -tags remove_all_sd,enable_kubernetes_sd \
  -ldflags "-s -w -X $ver.Version=$PROMETHEUS_VERSION -X $ver.Branch=module -X $ver.Revision=$PROMETHEUS_MODULE_VERSION" \
  "$mod/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" "$mod/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
mkdir -p "$dir"
mv "$gobin/prometheus" "$gobin/promtool" "$dir/"
echo "installed $("$dir/prometheus" --version | head -1): $dir"
