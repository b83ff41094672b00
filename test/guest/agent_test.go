package guest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
)

// The agent check's cluster: one Service whose only endpoint is the pod
// that agent.sh starts in the guest.
const (
	agentClusterIP = "10.96.0.10"
	agentPort      = 80
	agentPodIP     = "10.244.1.5"
	agentPodPort   = 8080
	// agentAPIServer is an address where nothing listens in the guest:
	// the agent finds the API server unreachable and serves its snapshot.
	agentAPIServer = "https://127.0.0.1:6443"
)

// writeAgentFiles writes the agent check's files into the payload: the
// saved snapshot (made with the agent's own cluster.SaveSnapshot from API
// objects through its tracker), the configuration (validated here) and
// agent.env for agent.sh.
func writeAgentFiles(p *payload) error {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	p.token = "pod-web-1-" + hex.EncodeToString(b)

	tr := cluster.NewTracker(cluster.TrackerOptions{})
	tr.UpdateService(&v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  agentClusterIP,
			ClusterIPs: []string{agentClusterIP},
			Ports:      []v1.ServicePort{{Name: "http", Port: agentPort, Protocol: v1.ProtocolTCP}},
		},
	})
	tr.UpdateSlice(&discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "demo", Name: "web-1", Labels: map[string]string{cluster.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(agentPodPort)), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{{
			Addresses:  []string{agentPodIP},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)},
			NodeName:   ptr.To("node-1"),
		}},
	})
	snap := tr.Snapshot()
	if n := snap.EndpointCount(); n != 1 {
		return fmt.Errorf("agent snapshot: %d endpoints, want 1", n)
	}
	if err := cluster.SaveSnapshot(filepath.Join(p.dir, "state", "snapshot.json"), snap, time.Now()); err != nil {
		return err
	}

	c := config.Default()
	c.APIServer = config.APIServer{URL: agentAPIServer, TokenFile: "/etc/bridge-agent/token"}
	c.ServiceCIDRs = []string{"10.96.0.0/16"}
	c.Proxy.Mode = "auto"
	c.Proxy.MinSyncPeriod = metav1.Duration{Duration: 100 * time.Millisecond}
	c.Routes.Mode = config.RoutesNone
	c.DNS.Mode = config.DNSNone
	if err := c.Validate(); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	etc := filepath.Join(p.dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "config.yaml"), data, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "token"), []byte("no-api-server-answers-this\n"), 0o600); err != nil {
		return err
	}
	env := fmt.Sprintf("CLUSTER_IP=%s\nPORT=%d\nPOD_IP=%s\nPOD_PORT=%d\nTOKEN=%s\n",
		agentClusterIP, agentPort, agentPodIP, agentPodPort, p.token)
	return os.WriteFile(filepath.Join(p.dir, "agent.env"), []byte(env), 0o644)
}

var autoRE = regexp.MustCompile(`proxy: mode auto.*`)

// checkAgent judges agent.sh's output: the pod answered directly, the
// ClusterIP did not answer before the agent ran and did after, through
// the backend that auto picked.
func checkAgent(t *testing.T, suite, out string, p *payload, secs float64) {
	field := func(name string) (string, bool) {
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return strings.TrimSpace(v), true
			}
			if line == name {
				return "", true
			}
		}
		return "", false
	}
	section := func(name string) string {
		_, rest, ok := strings.Cut(out, "=== "+name+"\n")
		if !ok {
			return ""
		}
		body, _, _ := strings.Cut(rest, "=== "+name+"-END")
		return body
	}
	agentLog := section("AGENT-LOG")
	failf := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
		var facts []string
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "AGENT-") {
				facts = append(facts, line)
			}
		}
		t.Logf("agent check:\n%s\nrules:\n%s\nagent log:\n%s", strings.Join(facts, "\n"),
			section("AGENT-RULES"), tail(agentLog, 60))
	}

	if direct, _ := field("AGENT-POD-DIRECT"); direct != p.token {
		failf("%s: the pod did not answer on %s:%d directly (got %q): the check's own setup is broken", suite, agentPodIP, agentPodPort, direct)
		return
	}
	if before, _ := field("AGENT-BEFORE"); before != "failed" {
		failf("%s: %s:%d answered before the agent ran (%q): the check would prove nothing", suite, agentClusterIP, agentPort, before)
		return
	}

	var st daemon.Status
	if err := json.Unmarshal([]byte(section("AGENT-STATUS")), &st); err != nil {
		failf("%s: bridge-agent status -o json: %v", suite, err)
	}
	var ps proxy.ProxyStatus
	for _, c := range st.Consumers {
		if c.Name == "proxy" && len(c.Details) > 0 {
			if err := json.Unmarshal(c.Details, &ps); err != nil {
				t.Errorf("%s: proxy status details: %v: %s", suite, err, c.Details)
			}
			if c.LastError != "" {
				t.Errorf("%s: proxy's last sync failed: %s", suite, c.LastError)
			}
		}
	}
	reason := autoRE.FindString(agentLog)
	variant := ""
	if ps.Variant != "" {
		variant = " (variant " + string(ps.Variant) + ")"
	}
	t.Logf("%s: proxy.mode auto picked %q%s; agent log: %s", suite, ps.Backend, variant, reason)
	if ps.Backend == "" {
		failf("%s: the status names no proxy backend", suite)
	}
	if st.Snapshot.Restored.IsZero() {
		t.Errorf("%s: the agent is not serving the saved snapshot (status snapshot.restored empty; restoreError %q)", suite, st.Snapshot.RestoreError)
	}

	reply, _ := field("AGENT-REPLY")
	waited, _ := field("AGENT-WAITED")
	if reply != p.token {
		failf("%s: %s:%d did not reach the pod through the agent's %s rules (got %q after %ss)", suite, agentClusterIP, agentPort, ps.Backend, reply, waited)
		return
	}
	t.Logf("%s: %s:%d reached the pod %s:%d through the agent's %s rules, %ss after the agent started (check %.1fs)",
		suite, agentClusterIP, agentPort, agentPodIP, agentPodPort, ps.Backend, waited, secs)
}
