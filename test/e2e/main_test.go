// Package e2e runs the built bridge-agent binary inside the sandbox cluster
// (internal/testbed): real kube-apiserver, etcd and EndpointSlice controller,
// the agent in the VM network namespace. The tests need root (network
// namespaces); they never touch the machine's own network namespace.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

var (
	tb         *testbed.Testbed
	agentBin   string
	setupError error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if os.Geteuid() != 0 {
		// Each test reports the skip itself (requireTestbed).
		setupError = fmt.Errorf("end-to-end tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for network namespaces")
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "bridge-agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if agentBin, err = testbed.BuildAgent(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	start := time.Now()
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	// BRIDGE_AGENT_E2E_WORKDIR keeps the sandbox's logs (logs/*.log) for a look after the run.
	tb, err = testbed.Start(ctx, testbed.Options{WorkDir: os.Getenv("BRIDGE_AGENT_E2E_WORKDIR"), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start sandbox:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "sandbox %s up in %s\n", tb.Prefix, time.Since(start).Round(time.Millisecond))
	code := m.Run()
	if err := tb.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop sandbox:", err)
		code = 1
	}
	return code
}

// requireTestbed skips when the tests cannot create network namespaces
// (not root).
func requireTestbed(t *testing.T) {
	t.Helper()
	if setupError != nil {
		t.Skipf("skipping: not root: %v", setupError)
	}
}
