#!/usr/bin/env bash
# Build the operator and runtime images from the Dockerfile with podman, then print
# their sizes. Usage: scripts/build-images.sh [TAG]   (default: dev)
#   OPERATOR_IMAGE / RUNTIME_IMAGE  repositories (default localhost/hotswap-operator,
#                                   localhost/hotswap-runtime)
#   BASE                            the Dockerfile's BASE; default: the local base made by
#                                   scripts/build-base-image.sh (no registry here)
# This machine's package index is reached through a proxy with its own CA: the host's
# pip configuration and CA bundle are bind-mounted into the build's RUN steps (never
# into the images). Elsewhere `docker build --target ...` needs none of this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-dev}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-localhost/hotswap-operator}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-localhost/hotswap-runtime}
BASE=${BASE:-localhost/python:3.11-bookworm}
podman=(podman --runtime runc --cgroup-manager cgroupfs)

if [[ $BASE == localhost/* ]]; then
  "$root/scripts/build-base-image.sh"
fi
mounts=()
for f in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
  [ -f "$f" ] && mounts+=(-v "$f:$f:ro")
done
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ] && [ "$PIP_CERT" != /etc/ssl/certs/ca-certificates.crt ]; then
  mounts+=(-v "$PIP_CERT:/etc/ssl/certs/ca-certificates.crt:ro")
fi

build() {  # target image
  local start=$SECONDS
  "${podman[@]}" build --layers "${mounts[@]}" --build-arg "BASE=$BASE" \
    --target "$1" -t "$2:$tag" "$root"
  echo "== built $2:$tag (target $1) in $(( SECONDS - start ))s"
}
build operator "$OPERATOR_IMAGE"
build runtime "$RUNTIME_IMAGE"
echo
"${podman[@]}" images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E "^($OPERATOR_IMAGE|$RUNTIME_IMAGE):$tag "
