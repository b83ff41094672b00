#!/usr/bin/env bash
# Runs the convergence test under churn (internal/daemon TestChurnConvergence)
# long and under the race detector: STRESS_CHANGES random changes (default
# 100000) against the sandbox's API server. Needs root, like make test.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
export BRIDGE_AGENT_BIN_DIR=$(hack/build-tools.sh | tail -n 1)
# The race detector needs cgo (the Makefile turns it off for release builds).
export CGO_ENABLED=1
export BRIDGE_AGENT_CHURN_CHANGES=${STRESS_CHANGES:-100000}
go test -race -count=1 -timeout 2h -run '^TestChurnConvergence$' -v ./internal/daemon/ "$@"
