package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// TestServiceConnectionCounters: the connections a process of the VM opens
// to a Service port move that port's counter, in the metrics and in the
// status, by exactly their number; another Service's counter does not
// move.
func TestServiceConnectionCounters(t *testing.T) {
	requireTestbed(t)
	forEachMode(t, "count", testServiceConnectionCounters)
}

func testServiceConnectionCounters(t *testing.T, m proxyMode, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	sel := map[string]string{"app": "counted"}
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "c-1", Node: 1, Labels: sel, Ready: true,
		Ports: []testbed.Port{{Name: "web", Port: 8080, Protocol: "TCP"}}})
	svc := createService(ctx, t, ns, "counted", v1.ProtocolTCP, 80, "web", sel)
	createService(ctx, t, ns, "other", v1.ProtocolTCP, 80, "web", sel)
	a := newAgent(t, true, m.configure)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	waitFor(t, 20*time.Second, addr+" answers", func() error {
		_, err := askTCP(ctx, addr)
		return err
	})

	// counted returns the connections of the Service port of name in the
	// metrics and in the status.
	counted := func(name string) (metric, status uint64) {
		t.Helper()
		_, body, err := httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		series := fmt.Sprintf(`bridge_agent_service_connections_total{namespace=%q,port="web",protocol="TCP",service=%q} `, ns, name)
		for l := range strings.Lines(body) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), series); ok {
				fmt.Sscan(v, &metric)
			}
		}
		st, err := a.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range st.Consumers {
			if c.Name != "proxy" {
				continue
			}
			var ps proxy.ProxyStatus
			if err := json.Unmarshal(c.Details, &ps); err != nil {
				t.Fatal(err)
			}
			if ps.ConnectionsError != "" {
				t.Fatalf("status: %s", ps.ConnectionsError)
			}
			for _, sc := range ps.Connections {
				if sc.Namespace == ns && sc.Service == name && sc.Port == "web" && sc.Protocol == "TCP" {
					status = sc.Connections
				}
			}
		}
		return metric, status
	}
	before, beforeSt := counted("counted")
	if before == 0 || before != beforeSt {
		t.Fatalf("after the first answer: %d connections in the metrics, %d in the status; want the same, at least 1\n%s", before, beforeSt, m.counterDump(ctx, t))
	}
	other, _ := counted("other")
	const n = 7
	for i := range n {
		if _, err := askTCP(ctx, addr); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	after, afterSt := counted("counted")
	if after != before+n || afterSt != after {
		t.Errorf("after %d more connections: %d in the metrics, %d in the status; want %d\n%s", n, after, afterSt, before+n, m.counterDump(ctx, t))
	}
	if o, _ := counted("other"); o != other {
		t.Errorf("the other Service's counter moved from %d to %d", other, o)
	}
	if out := a.Log(); strings.Contains(out, "Service connection counters failed") {
		t.Errorf("agent log:\n%s", out)
	}
}

// counterDump shows the backend's rules and counters in the VM, for a
// failure.
func (m proxyMode) counterDump(ctx context.Context, t *testing.T) string {
	if m.mode == "nftables" {
		return vmExec(ctx, t, "nft", "list", "ruleset")
	}
	return vmExec(ctx, t, "iptables-save", "-c", "-t", "nat")
}
