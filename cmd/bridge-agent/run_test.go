package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunConfigErrorsExit78: a mistake a restart cannot fix exits with
// EX_CONFIG, which the unit's RestartPreventExitStatus keeps from a
// restart loop, and says what to do.
func TestRunConfigErrorsExit78(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	head := "apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nhostRoot: " + dir + "\n"
	for _, c := range []struct {
		name, config, want string
	}{
		{"no kubeconfig yet", head + "kubeconfig: " + dir + "/kubeconfig\n", "no credentials for the cluster yet"},
		{"bad field", head + "kubeconfig: " + dir + "/kubeconfig\nproxy:\n  mode: ipvs\n", "proxy.mode"},
		{"no config file", "", "load config"},
	} {
		path := filepath.Join(dir, "missing.yaml")
		if c.config != "" {
			path = write("config.yaml", c.config)
		}
		var stderr bytes.Buffer
		if code := runCmd([]string{"--config", path}, &stderr); code != exitConfig {
			t.Errorf("%s: exit %d, want %d; stderr:\n%s", c.name, code, exitConfig, stderr.String())
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: stderr %q does not say %q", c.name, stderr.String(), c.want)
		}
	}
}
