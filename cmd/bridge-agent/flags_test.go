package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFlagsOverrideFileOverridesDefaults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	doc := "apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nkubeconfig: /from/file\nproxy:\n  minSyncPeriod: 2s\n  syncPeriod: 1m\n"
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newConfigFlags("run", &bytes.Buffer{})
	cfg, err := f.load([]string{"--config", p, "--kubeconfig", "/from/flag", "--v", "3"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kubeconfig != "/from/flag" {
		t.Errorf("flag did not override: %q", cfg.Kubeconfig)
	}
	if cfg.Proxy.MinSyncPeriod.Duration != 2*time.Second || cfg.Proxy.SyncPeriod.Duration != time.Minute {
		t.Errorf("file values lost: %v %v", cfg.Proxy.MinSyncPeriod, cfg.Proxy.SyncPeriod)
	}
	if cfg.ClusterDomain != "cluster.local" || cfg.Logging.Verbosity != 3 {
		t.Errorf("defaults/flags: %q %d", cfg.ClusterDomain, cfg.Logging.Verbosity)
	}
}

func TestRunRejectsBadInputWithOneLine(t *testing.T) {
	dir := t.TempDir()
	for name, args := range map[string][]string{
		"invalid field":    {"run", "--config", "/dev/null", "--kubeconfig", "/k", "--dns-listen-address", "0.0.0.0:53"},
		"stray argument":   {"run", "--config", "/dev/null", "extra"},
		"missing kubeconf": {"run", "--config", "/dev/null", "--kubeconfig", filepath.Join(dir, "nope")},
	} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := realMain(args, &stdout, &stderr); code != exitConfig {
				t.Fatalf("exit %d, want %d; stderr: %s", code, exitConfig, stderr.String())
			}
			if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 1 {
				t.Errorf("want one line, got:\n%s", stderr.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"frobnicate"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "unknown command") {
		t.Errorf("unknown command: %d %q", code, stderr.String())
	}
}
