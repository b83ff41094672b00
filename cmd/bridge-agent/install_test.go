package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/packaging"
	"github.com/bridge-agent/bridge-agent/systemd"
)

func TestUnitForChangesOnlyExecStart(t *testing.T) {
	if !strings.Contains(systemd.Unit, "\nExecStart="+systemd.ExecStart+"\n") {
		t.Fatalf("the packaged unit's ExecStart is not %q", systemd.ExecStart)
	}
	for exe, want := range map[string]string{
		"/usr/local/bin/bridge-agent": "ExecStart=/usr/local/bin/bridge-agent run --config /etc/ba/config.yaml",
		"/opt/my tools/bridge-agent":  `ExecStart="/opt/my tools/bridge-agent" run --config /etc/ba/config.yaml`,
		"/opt/100%/$HOME/ba":          "ExecStart=/opt/100%%/$$HOME/ba run --config /etc/ba/config.yaml",
	} {
		got := unitFor(exe, "/etc/ba/config.yaml")
		gl, ul := strings.Split(got, "\n"), strings.Split(systemd.Unit, "\n")
		if len(gl) != len(ul) {
			t.Fatalf("%s: line count changed", exe)
		}
		changed := 0
		for i := range gl {
			if gl[i] == ul[i] {
				continue
			}
			changed++
			if gl[i] != want {
				t.Errorf("%s: %q, want %q", exe, gl[i], want)
			}
		}
		if changed != 1 {
			t.Errorf("%s: %d lines changed, want 1 (ExecStart)", exe, changed)
		}
		if strings.Contains(got, "{{") {
			t.Errorf("%s: the unit must not look like a template", exe)
		}
	}
}

func TestServiceConfig(t *testing.T) {
	c := serviceConfig("/usr/local/bin/bridge-agent", "/etc/bridge-agent/config.yaml")
	if c.Name != "bridge-agent" || c.Executable != "/usr/local/bin/bridge-agent" ||
		!reflect.DeepEqual(c.Arguments, []string{"run", "--config", "/etc/bridge-agent/config.yaml"}) {
		t.Errorf("service config %+v", c)
	}
	if c.Option["SystemdScript"] != unitFor("/usr/local/bin/bridge-agent", "/etc/bridge-agent/config.yaml") {
		t.Error("systemd hosts do not get the packaged unit")
	}
}

// The packaged configuration is the defaults, written out, plus the
// kubeconfig path: the comments document what the agent does without them.
func TestPackagedConfigIsTheDefaults(t *testing.T) {
	got, err := config.Parse(packaging.Config)
	if err != nil {
		t.Fatal(err)
	}
	want := config.Default()
	want.Kubeconfig = "/etc/bridge-agent/kubeconfig"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("packaging/config.yaml:\n%+v\nwant\n%+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
	// Every commented-out field line, uncommented, is valid too.
	var lines []string
	for _, l := range strings.Split(string(packaging.Config), "\n") {
		if strings.HasPrefix(l, "#") && len(l) > 1 && l[1] != ' ' && l[1] != '#' {
			lines = append(lines, strings.TrimPrefix(l, "#"))
			continue
		}
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	doc := strings.Join(lines, "\n")
	doc = strings.Replace(doc, "kubeconfig: /etc/bridge-agent/kubeconfig\n", "", 1)
	all, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("uncommented: %v\n%s", err, doc)
	}
	all.APIServer.URL = "" // the alternative to kubeconfig:
	all.Kubeconfig = "/k"
	if err := all.Validate(); err != nil {
		t.Errorf("uncommented: %v", err)
	}
}

func TestWriteDefaultConfigKeepsAnExistingFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "etc", "config.yaml")
	var out bytes.Buffer
	if err := writeDefaultConfig(p, &out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, packaging.Config) {
		t.Error("default configuration not written")
	}
	if err := os.WriteFile(p, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeDefaultConfig(p, &out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "mine" {
		t.Errorf("overwrote an existing configuration: %q", got)
	}
}

func TestServiceCommandsUsage(t *testing.T) {
	for _, cmd := range []string{"install", "uninstall", "start", "stop"} {
		var stdout, stderr bytes.Buffer
		if code := realMain([]string{cmd, "extra"}, &stdout, &stderr); code != 2 {
			t.Errorf("%s extra: exit %d, want 2", cmd, code)
		}
		stderr.Reset()
		if code := realMain([]string{cmd, "--help"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "bridge-agent install [--config FILE]") {
			t.Errorf("%s --help: exit %d: %s", cmd, code, stderr.String())
		}
	}
}
