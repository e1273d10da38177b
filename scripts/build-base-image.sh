#!/usr/bin/env bash
# Make the local images that no registry can bring here, with podman:
#   localhost/python:3.11-bookworm  Debian bookworm (debootstrap minbase) with Debian's
#                                   python3.11 and venv: the Dockerfile's BASE here
#   localhost/pause:local           the static pause program (scripts/build-node.sh)
# Elsewhere the Dockerfile's default BASE (a public python:3.11 bookworm image) is used
# and none of this is needed. Skips an image that exists unless FORCE=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-localhost/python:3.11-bookworm}
PAUSE=${PAUSE:-localhost/pause:local}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
podman=(podman --runtime runc --cgroup-manager cgroupfs)

has() { "${podman[@]}" image exists "$1" && [ "${FORCE:-0}" != 1 ]; }

if has "$BASE"; then
  echo "base image $BASE exists"
else
  start=$(date +%s)
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
    bookworm "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
  rm -f "$rootfs.log"
  # What an image never needs: package caches and lists, docs, man pages, locales.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +
  tar -C "$rootfs" --numeric-owner -c . | "${podman[@]}" import \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$BASE" > /dev/null
  echo "built base image $BASE in $(( $(date +%s) - start ))s"
fi

if has "$PAUSE"; then
  echo "pause image $PAUSE exists"
else
  ctx=$(mktemp -d)
  cp "$root/.cache/bin/pause" "$ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$ctx/Containerfile"
  "${podman[@]}" build -q -t "$PAUSE" "$ctx" > /dev/null
  rm -rf "$ctx"
  echo "built pause image $PAUSE"
fi
