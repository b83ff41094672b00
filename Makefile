# Thin targets; the work is in hack/.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/bridge-agent/bridge-agent/internal/version.Version=$(VERSION)
export CGO_ENABLED := 0

.PHONY: build test stress demo lint tools package clean bench bench-quick

## build: build bin/bridge-agent
build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/bridge-agent ./cmd/bridge-agent

## test: all tests, unit and end to end (root; installs what it needs)
test:
	hack/test.sh

## stress: the convergence test under churn, long, under -race (root; STRESS_CHANGES=100000)
stress:
	hack/stress.sh

## demo: start the sandbox cluster and the agent in its VM namespace (root)
demo: build
	hack/install-deps.sh
	BRIDGE_AGENT_BIN_DIR=$$(hack/build-tools.sh | tail -n 1) go run ./hack/demo -agent bin/bridge-agent $(DEMO_ARGS)

## lint: go vet and gofmt
lint:
	go vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## package: dist/bridge-agent_<ver>_<arch>.deb and dist/bridge-agent-<ver>-1.<arch>.rpm, amd64 and arm64
## (nfpm, pinned in hack/tools/nfpm; ARCHS=amd64 or FORMATS=deb to build less)
package:
	VERSION=$(VERSION) hack/package.sh -o dist

## tools: build the sandbox's Kubernetes binaries into the cache
tools:
	hack/build-tools.sh

## bench: side-by-side benchmarks vs kube-proxy and CoreDNS in the sandbox, 1k to 10k Services (root; long)
bench:
	hack/bench.sh $(BENCH_ARGS)

## bench-quick: the same harness at CI scale, a minute or two; timings are reported, never judged
bench-quick:
	hack/bench.sh -quick $(BENCH_ARGS)

clean:
	rm -rf bin dist
