# Thin targets; the work is in hack/.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/bridge-agent/bridge-agent/internal/version.Version=$(VERSION)
export CGO_ENABLED := 0

.PHONY: build test demo lint tools clean

## build: build bin/bridge-agent
build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/bridge-agent ./cmd/bridge-agent

## test: all tests, unit and end to end (root; installs what it needs)
test:
	hack/test.sh

## demo: start the sandbox cluster and the agent in its VM namespace (root)
demo: build
	hack/install-deps.sh
	BRIDGE_AGENT_BIN_DIR=$$(hack/build-tools.sh | tail -n 1) go run ./hack/demo -agent bin/bridge-agent $(DEMO_ARGS)

## lint: go vet and gofmt
lint:
	go vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## tools: build the sandbox's Kubernetes binaries into the cache
tools:
	hack/build-tools.sh

clean:
	rm -rf bin dist
