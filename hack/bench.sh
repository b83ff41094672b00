#!/usr/bin/env bash
# Runs the side-by-side benchmarks (hack/bench): bridge-agent against
# kube-proxy and CoreDNS in the sandbox, plus the Go benchmarks; writes
# bench/results/<date>.md and PNG plots. Needs root (network namespaces).
# Installs what is missing (dnsperf and the sandbox's tools), builds
# kube-proxy from the pinned Kubernetes release and bin/bridge-agent.
# Usage: hack/bench.sh [-quick] [hack/bench flags...]
# Exits non-zero only when the harness breaks, never because of a timing.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
need=()
for cmd in dnsperf taskset stdbuf; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for cmd in "${need[@]}"; do
    case $cmd in
      dnsperf) pkgs+=(dnsperf) ;;
      taskset) pkgs+=(util-linux) ;;
      stdbuf) pkgs+=(coreutils) ;;
    esac
  done
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: missing ${pkgs[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "bench: installing ${pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
# The sandbox's set plus kube-proxy, from the same Kubernetes release.
export BRIDGE_AGENT_BIN_DIR=$(hack/build-tools.sh etcd kube-apiserver kube-controller-manager coredns kube-proxy | tail -n 1)
make --no-print-directory build
go run ./hack/bench "$@"
