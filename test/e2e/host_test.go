package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
)

// TestOneAgentPerHost: a second agent on the same host (root), even with
// DNS and HTTP off so that no port clashes, exits 1 with one line naming
// the first one's PID; cleanup refuses while the first runs; the first
// keeps serving throughout. Once it stops, cleanup removes the agent's
// files and leaves a file planted in its state directory, saying so.
func TestOneAgentPerHost(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	const ns = "one-agent"
	sel := map[string]string{"app": "one"}
	createPod(ctx, t, httpPod(ns, "one-1", 1, sel))
	svc := createService(ctx, t, ns, "web", v1.ProtocolTCP, 80, "http", sel)
	addr := net.JoinHostPort(svc.Spec.ClusterIPs[0], "80")

	a := newAgent(t, true, nil)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the Service through the first agent", func() error { _, err := askTCP(ctx, addr); return err })

	// The second agent: same host root, nothing that could clash on a port.
	cfg := *a.Config
	cfg.DNS = config.Default().DNS
	cfg.DNS.Mode = config.DNSNone
	cfg.HealthzBindAddress, cfg.MetricsBindAddress = "", ""
	b, err := tb.NewAgent(agentBin, t.TempDir(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b.HostRoot != a.HostRoot {
		t.Fatalf("host roots differ: %s, %s", b.HostRoot, a.HostRoot)
	}
	runCtx, runCancel := context.WithTimeout(ctx, 30*time.Second)
	out, err := b.Run(runCtx, "run")
	runCancel()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("second agent: %v, want exit status 1; output:\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := "pid " + strconv.Itoa(a.PID())
	if len(lines) != 1 || !strings.Contains(lines[0], want) || !strings.Contains(lines[0], config.LockPath) ||
		!strings.Contains(lines[0], "stop it first") {
		t.Errorf("second agent said:\n%s\nwant one line naming %q, %s and what to do", out, want, config.LockPath)
	}
	t.Logf("second agent: %s", lines[0])

	// cleanup beside the running agent: refused, nothing removed.
	stateDir := a.Config.HostPath(a.Config.StateDir)
	out, err = a.Run(ctx, "cleanup")
	if err == nil || !strings.Contains(string(out), "refused") || !strings.Contains(string(out), want) {
		t.Errorf("cleanup beside a running agent: %v\n%s\nwant refused, naming %q", err, out, want)
	}
	for _, f := range []string{"owned.json", daemon.SnapshotFile} {
		if _, err := os.Stat(filepath.Join(stateDir, f)); err != nil {
			t.Errorf("after the refused cleanup: %v", err)
		}
	}

	// The first agent never noticed.
	if a.Exited() {
		t.Fatalf("first agent exited:\n%s", a.Log())
	}
	if _, err := a.WaitStatus(ctx, 10*time.Second, func(st *daemon.Status) bool { return st.Ready && findService(st, ns, "web") != nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := askTCP(ctx, addr); err != nil {
		t.Errorf("the Service through the first agent: %v", err)
	}

	// Stopped, cleanup removes what the agent made and leaves the rest.
	planted := filepath.Join(stateDir, "notes.txt")
	if err := os.WriteFile(planted, []byte("the admin's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err = a.Run(ctx, "cleanup")
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	t.Logf("cleanup:\n%s", out)
	if !strings.Contains(string(out), "left "+a.Config.StateDir+": ") || !strings.Contains(string(out), "notes.txt") {
		t.Errorf("cleanup did not say it left the state directory for notes.txt:\n%s", out)
	}
	if b, err := os.ReadFile(planted); err != nil || string(b) != "the admin's\n" {
		t.Errorf("planted file after cleanup: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, daemon.SnapshotFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after cleanup: %v, want removed", daemon.SnapshotFile, err)
	}
	if _, err := os.Stat(filepath.Join(a.HostRoot, "run", "bridge-agent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime directory after cleanup: %v, want removed", err)
	}
	// The record stays for the directory left; once the admin's file is
	// gone, the next cleanup removes the directory.
	if err := os.Remove(planted); err != nil {
		t.Fatal(err)
	}
	if out, err = a.Run(ctx, "cleanup"); err != nil {
		t.Fatalf("second cleanup: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "removed "+a.Config.StateDir+"\n") {
		t.Errorf("second cleanup did not remove the state directory:\n%s", out)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory after the second cleanup: %v, want removed", err)
	}
}
