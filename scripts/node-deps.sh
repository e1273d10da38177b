#!/usr/bin/env bash
# Debian packages for the real node and the images (as root): runc and the CNI plugins
# that containerd runs, podman/buildah to build images, debootstrap for the local base
# image, iptables and conntrack for kube-proxy, iproute2 for the node's links; chromium
# and chromium-driver for the dashboard's browser tests (devcluster/browser.py); Node.js
# and npm for Azurite (scripts/install-azurite.sh) unless npm is on PATH already (a
# Node.js from elsewhere, e.g. nodesource's, which Debian's npm would conflict with).
# Quick when everything is installed already.
set -euo pipefail
packages=(podman runc containernetworking-plugins debootstrap iptables conntrack iproute2
  chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "node packages are installed: ${packages[*]}"
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" > /dev/null
echo "installed ${missing[*]}"
