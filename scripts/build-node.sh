#!/usr/bin/env bash
# Build the binaries of a real node into .cache/bin (or $1):
#   kubelet, kube-proxy  from k8s.io/kubernetes in the module of devcluster/controlplane (its
#                        go.mod and replaces, copied to a scratch folder so that the few
#                        go.sum lines -mod=mod adds never touch the control plane's stamp)
#   containerd, containerd-shim-runc-v2, ctr  from containerd's own Go module (v2)
#   pause                a static C program (pause(2) until SIGINT/SIGTERM, reaps children)
# runc and the CNI plugins come from Debian packages (scripts/node-deps.sh).
# A stamp of the inputs skips everything when nothing changed; Go's caches make a
# rebuild cheap.
set -euo pipefail
CONTAINERD_VERSION=v2.2.9
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$root/.cache/bin}")
mod=$root/devcluster/controlplane
kver=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$mod/go.mod")
minor=$(echo "$kver" | cut -d. -f2)
mkdir -p "$out"
exec 9>"$out/.node.build.lock"
flock 9  # one build at a time
stamp=$out/node.stamp
sum=$(cat "$mod/go.mod" "$mod/go.sum" "$0" "$root/scripts/pause.c" | sha256sum | cut -d' ' -f1)
bins=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr pause)
current=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || current=0; done
if [ $current = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
  echo "node binaries ($kver, containerd $CONTAINERD_VERSION) are current: $out"
  exit 0
fi
start=$(date +%s)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# kubelet and kube-proxy: same Kubernetes modules as the control plane.
cp "$mod/go.mod" "$mod/go.sum" "$mod/main.go" "$scratch/"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$kver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
(
  cd "$scratch"
  for cmd in kubelet kube-proxy; do
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" \
      -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    echo "built $cmd $kver after $(( $(date +%s) - start ))s"
  done
)

# containerd v2 and its runc shim, from containerd's module.
gobin=$scratch/gobin
CGO_ENABLED=0 GOBIN=$gobin go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
mv "$gobin"/* "$out/"
echo "built containerd $CONTAINERD_VERSION after $(( $(date +%s) - start ))s"

# The sandbox (pause) program.
cc -static -O2 -o "$out/pause" "$root/scripts/pause.c"
echo "$sum" > "$stamp"
echo "node binaries built in $(( $(date +%s) - start ))s: $out"
