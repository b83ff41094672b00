#!/usr/bin/env bash
# Builds the sandbox's real Kubernetes parts from the Go module proxy, once,
# into a cache keyed by the tool modules' content and the Go version:
#   etcd, kube-apiserver, kube-controller-manager, coredns (and kube-proxy on request),
# and, on request, nfpm (the .deb/.rpm packager that hack/package.sh uses) and promtool (which checks
# deploy/monitoring's alert rules; built without the service discovery plugins it does not need).
# Usage: hack/build-tools.sh [binary...]   (default: the sandbox's set)
# Prints the directory that holds the binaries on its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${BRIDGE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bridge-agent}

# binary -> tool module directory and package
declare -A module pkg
module[kube-apiserver]=kubernetes;          pkg[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
module[kube-controller-manager]=kubernetes; pkg[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
module[kube-proxy]=kubernetes;              pkg[kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
module[etcd]=etcd;                          pkg[etcd]=go.etcd.io/etcd/server/v3
module[coredns]=coredns;                    pkg[coredns]=github.com/coredns/coredns
module[nfpm]=nfpm;                          pkg[nfpm]=github.com/goreleaser/nfpm/v2/cmd/nfpm
module[promtool]=promtool;                  pkg[promtool]=github.com/prometheus/prometheus/cmd/promtool
declare -A tags
tags[promtool]=remove_all_sd

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(etcd kube-apiserver kube-controller-manager coredns)

key() { # content key of one tool module
  (cat "$here/tools/$1/go.mod" "$here/tools/$1/go.sum"; go env GOVERSION GOARCH) | sha256sum | cut -c1-16
}

bindir="$cache_root/bin"
mkdir -p "$bindir"
for b in "${want[@]}"; do
  m=${module[$b]:-}
  [ -n "$m" ] || { echo "build-tools: unknown binary $b" >&2; exit 2; }
  dir="$cache_root/$m-$(key "$m")"
  if [ ! -x "$dir/$b" ]; then
    mkdir -p "$dir"
    echo "build-tools: building $b (cold builds take minutes; cached in $dir)" >&2
    start=$(date +%s)
    (cd "$here/tools/$m" && CGO_ENABLED=0 go build -trimpath -tags="${tags[$b]:-}" -ldflags='-s -w' -o "$dir/$b.tmp" "${pkg[$b]}")
    mv "$dir/$b.tmp" "$dir/$b"
    echo "build-tools: built $b in $(( $(date +%s) - start ))s" >&2
  fi
  ln -sfn "$dir/$b" "$bindir/$b"
done
echo "$bindir"
