#!/usr/bin/env bash
# Install fake-gcs-server (a Google Cloud Storage emulator: the JSON API, media downloads
# with byte ranges), pinned, with `go install` of its Go module. The gs:// integration
# tests start it (devcluster/fake_gcs.py).
# Usage: scripts/install-fake-gcs-server.sh [path/to/fake-gcs-server]
set -euo pipefail
FAKE_GCS_VERSION=v1.56.1
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/bin/fake-gcs-server}
[[ $out = /* ]] || out=$root/$out
stamp=$out.version
if [ -x "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$FAKE_GCS_VERSION" ]; then
  echo "fake-gcs-server $FAKE_GCS_VERSION is current: $out"
  exit 0
fi
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
CGO_ENABLED=0 GOBIN=$gobin go install -trimpath -ldflags "-s -w" \
  "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
mkdir -p "$(dirname "$out")"
mv "$gobin/fake-gcs-server" "$out"
echo "$FAKE_GCS_VERSION" >"$stamp"
echo "installed fake-gcs-server $FAKE_GCS_VERSION: $out"
