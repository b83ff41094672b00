#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests in the sandbox
# cluster (which need root for network namespaces). Installs what a fresh
# machine lacks and builds the sandbox's Kubernetes parts once (cached).
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "test: not root: the sandbox tests will report themselves skipped" >&2
else
  # Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, coredns.
  export BRIDGE_AGENT_BIN_DIR=$(hack/build-tools.sh | tail -n 1)
fi
go test -count=1 -timeout 30m "$@" ./...
