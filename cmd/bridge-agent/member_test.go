package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/member"
)

func TestMemberCommandsUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"host"}, 2, "bridge-agent host add NAME"},
		{[]string{"host", "rename", "x"}, 2, "bridge-agent host add NAME"},
		{[]string{"host", "add"}, 2, "the host's NAME is required"},
		{[]string{"host", "add", "a", "b"}, 2, `unexpected argument "b"`},
		{[]string{"hosts", "extra"}, 2, "bridge-agent hosts [--kubeconfig F]"},
		{[]string{"hosts", "-o", "yaml"}, 2, "bridge-agent hosts [--kubeconfig F]"},
		{[]string{"join"}, 2, "bridge-agent join [--config F] BUNDLE"},
		{[]string{"join", "--config", "/nonexistent/config.yaml", "b.yaml"}, 1, "/nonexistent/config.yaml"},
	} {
		var stdout, stderr bytes.Buffer
		code := realMain(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, want %d; stderr %q lacks %q", tc.args, code, tc.code, stderr.String(), tc.want)
		}
	}
}

// join refuses an expired bundle before it contacts anything, and writes nothing.
func TestJoinExpiredBundle(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	kc := filepath.Join(dir, "etc", "kubeconfig")
	if err := os.WriteFile(cfg, []byte("apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nkubeconfig: "+kc+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &member.Bundle{APIVersion: member.BundleAPIVersion, Kind: member.BundleKind, Host: "vm1", Namespace: member.Namespace,
		Server: "https://192.0.2.1:6443", CertificateAuthorityData: []byte("ca"), Token: "a.b.c", Expires: time.Now().Add(-time.Minute)}
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "vm1.join.yaml")
	if err := os.WriteFile(bundle, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"join", bundle, "--config", cfg}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "the bundle's token expired at") || !strings.Contains(stderr.String(), "bridge-agent host add vm1") {
		t.Errorf("exit %d: %s", code, stderr.String())
	}
	if _, err := os.Stat(kc); !os.IsNotExist(err) {
		t.Errorf("kubeconfig written: %v", err)
	}
}
