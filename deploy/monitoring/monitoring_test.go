// Package monitoring_test checks deploy/monitoring: the alert rules with
// the real promtool (check rules, and the unit tests of alerts_test.yaml),
// and that every expression of the rules and of the Grafana dashboard
// names only metrics the agent exports.
package monitoring_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var (
	metricRE = regexp.MustCompile(`\bbridge_agent_[a-z0-9_]+`)
	// declared finds metric names in the agent's sources: Name: "..."
	// of the client_golang options and NewDesc("...").
	declared = regexp.MustCompile(`(?:Name:\s*|NewDesc\()"(bridge_agent_[a-z0-9_]+)"`)
)

// exported returns the metric names declared in the agent's sources.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	err := filepath.WalkDir("../../internal", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range declared.FindAllSubmatch(b, -1) {
			names[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 20 {
		t.Fatalf("found only %d metric names in internal/: %v", len(names), names)
	}
	return names
}

// checkExpr fails for an expression that names no metric or one the agent
// does not export (histogram series are the histogram's name plus _bucket,
// _sum or _count).
func checkExpr(t *testing.T, where, expr string, names map[string]bool) {
	t.Helper()
	found := metricRE.FindAllString(expr, -1)
	if len(found) == 0 && !strings.Contains(expr, "up{") {
		t.Errorf("%s: %q names no bridge-agent metric", where, expr)
	}
	for _, m := range found {
		base := m
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, s); ok && names[b] {
				base = b
			}
		}
		if !names[base] {
			t.Errorf("%s: %s is no metric of the agent (%q)", where, m, expr)
		}
	}
}

func TestDashboard(t *testing.T) {
	names := exported(t)
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.Title == "" || len(d.Panels) < 10 {
		t.Fatalf("dashboard.json: title %q, %d panels", d.Title, len(d.Panels))
	}
	var ids []int
	for _, p := range d.Panels {
		where := "panel " + p.Title
		if slices.Contains(ids, p.ID) {
			t.Errorf("%s: duplicate id %d", where, p.ID)
		}
		ids = append(ids, p.ID)
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %q, want the ${datasource} variable", where, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, q := range p.Targets {
			checkExpr(t, where, q.Expr, names)
		}
	}
}

func TestAlertRules(t *testing.T) {
	names := exported(t)
	b, err := os.ReadFile("alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
				Expr  string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			checkExpr(t, "alert "+r.Alert, r.Expr, names)
		}
	}
	// What an admin must be told about, each by one alert at least.
	for _, want := range []string{"BridgeAgentNotReady", "BridgeAgentSyncErrors", "BridgeAgentProgrammingSlow",
		"BridgeAgentDNSServfail", "BridgeAgentRoutesRefused", "BridgeAgentCredentialExpiresSoon", "BridgeAgentCredentialExpired"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alerts.yaml has no %s", want)
		}
	}

	promtool := promtoolPath(t)
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// promtoolPath returns $PROMTOOL, or builds promtool once into the tool
// cache (hack/build-tools.sh, from the Prometheus module pinned in
// hack/tools/promtool).
func promtoolPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("skipping: no go toolchain to build promtool and PROMTOOL is not set")
	}
	out, err := exec.Command("../../hack/build-tools.sh", "promtool").Output()
	if err != nil {
		t.Fatalf("build promtool: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return filepath.Join(lines[len(lines)-1], "promtool")
}
