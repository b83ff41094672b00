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

hack/install-deps.sh dnsperf=dnsperf taskset=util-linux stdbuf=coreutils
# The sandbox's set plus kube-proxy, from the same Kubernetes release.
export BRIDGE_AGENT_BIN_DIR=$(hack/build-tools.sh etcd kube-apiserver kube-controller-manager coredns kube-proxy | tail -n 1)
make --no-print-directory build
go run ./hack/bench "$@"
