#!/usr/bin/env bash
# Runs every test: unit tests, the end-to-end tests in the sandbox cluster
# (which need root for network namespaces) and the kernel tests in booted
# Debian guests (test/guest). Installs what a fresh machine lacks and builds
# the sandbox's Kubernetes parts and the guests once (cached).
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "test: not root: the sandbox tests will report themselves skipped" >&2
else
  # Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, coredns.
  export BRIDGE_AGENT_BIN_DIR=$(hack/build-tools.sh | tail -n 1)
  # The booted guests of test/guest (Debian 12 and 11 with their own
  # kernels under qemu): built once (debootstrap, minutes), cached. This
  # also installs qemu-system-x86, debootstrap and cpio.
  for suite in $(echo "${BRIDGE_AGENT_GUESTS:-bookworm,bullseye}" | tr ',' ' '); do
    [ "$suite" = none ] || hack/guest.sh build "$suite" >/dev/null
  done
fi
go test -count=1 -timeout 30m "$@" ./...
