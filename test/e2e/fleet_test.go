package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/deploy"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// metricsIn reads an agent's /metrics from inside netns.
func metricsIn(ctx context.Context, t *testing.T, netns string, a *testbed.Agent) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: tb.DialContext(netns)}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.Config.MetricsBindAddress+"/metrics", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// heartbeat rewrites every Node's Ready condition as a kubelet's status
// update does: nothing the agent uses changes.
func heartbeat(ctx context.Context, t *testing.T, round int) {
	t.Helper()
	for _, nd := range tb.Nodes {
		n, err := tb.Client.CoreV1().Nodes().Get(ctx, nd.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now := metav1.NewTime(time.Now().Add(time.Duration(round) * time.Second))
		n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
			Message: fmt.Sprintf("heartbeat %d", round), LastHeartbeatTime: now, LastTransitionTime: now}}
		if _, err := tb.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// nodeTableAgent starts an agent in routes.mode nodes with a short lease,
// no proxy and no DNS stub, in netns ("": the VM).
func nodeTableAgent(t *testing.T, netns string, publish bool) *testbed.Agent {
	a := newAgent(t, false, func(c *config.Config) {
		c.Proxy.Mode = "none"
		c.DNS.Mode = config.DNSNone
		c.Routes.NodeRoutes.Publish = publish
		c.Routes.NodeRoutes.LeaseDuration = metav1.Duration{Duration: 4 * time.Second}
	})
	a.Netns = netns
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestNodeRoutesTable: in routes.mode nodes an agent reads the shared node
// route table once an elected agent publishes it, stops watching Nodes,
// follows a Node joining and leaving through the table, receives nothing
// of the Nodes' heartbeats (the publisher receives them and neither
// resyncs nor rewrites the table), and falls back to watching Nodes when
// the publisher dies.
func TestNodeRoutesTable(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nr := config.Default().Routes.NodeRoutes
	removeTable := func() {
		_ = tb.Client.CoreV1().ConfigMaps(nr.Namespace).Delete(context.Background(), nr.Name, metav1.DeleteOptions{})
		_ = tb.Client.CoordinationV1().Leases(nr.Namespace).Delete(context.Background(), nr.Name, metav1.DeleteOptions{})
	}
	// The agents of later tests must not find this test's tables.
	removeTable()
	t.Cleanup(removeTable)
	rtIP(ctx, t, "-4", "route", "flush", "table", "all", "proto", "98")
	rtIP(ctx, t, "-6", "route", "flush", "table", "all", "proto", "98")

	// No table yet: the reader watches Nodes, and routes as ever.
	r := nodeTableAgent(t, "", false)
	source := func(a *testbed.Agent, want, reason string) *daemon.Status {
		t.Helper()
		// Up to 4.5 lease periods (18 s) for a fallback: 1.5 without a
		// renewal, a grace of 1 to 2, one between reads of the Lease.
		st, err := a.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool {
			return st.Synced && st.NodeRoutes != nil && st.NodeRoutes.Source == want && strings.Contains(st.NodeRoutes.Reason, reason)
		})
		if err != nil {
			t.Fatalf("node source %s (%q): %v", want, reason, err)
		}
		return st
	}
	source(r, "nodes", "absent")
	var want []string
	for _, nd := range tb.Nodes {
		want = append(want, rtNodeRoutes(nd)...)
	}
	rtWait(t, 10*time.Second, "routes to every node's pods (Nodes watched)", func() bool { return rtHas(rtOurs(ctx, t), want) })

	// A publisher on a second host, with the write manifest applied.
	if err := tb.ApplyManifest(ctx, deploy.NodeRoutesWriter); err != nil {
		t.Fatal(err)
	}
	host, err := tb.AddHost(ctx, "pub", testbed.HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := nodeTableAgent(t, host.Netns, true)
	pst := source(p, "nodes", "this agent publishes")
	if _, err := p.WaitStatus(ctx, 20*time.Second, func(st *daemon.Status) bool { return st.NodeRoutes.Writes >= 1 }); err != nil {
		t.Fatalf("publisher wrote no table: %v\n%s", err, p.Log())
	}
	rst := source(r, "table", "")
	if rst.NodeRoutes.Publisher == "" || rst.NodeRoutes.Generation == 0 {
		t.Errorf("reader's view of the table: %+v", rst.NodeRoutes)
	}
	if out, err := r.Run(ctx, "status"); err != nil || !strings.Contains(string(out), "nodes from the shared node route table (generation") {
		t.Errorf("status text does not say where the Nodes come from (%v):\n%s", err, out)
	}
	if m := metricsIn(ctx, t, tb.VMNetns, r); metricSum(m, `bridge_agent_node_source{source="table"}`) != 1 ||
		metricSum(m, `bridge_agent_watched_objects{kind="Node"}`) != float64(len(tb.Nodes)) {
		t.Errorf("reader metrics: node source / watched Nodes:\n%s", grepLines(m, "node_source", "watched_objects"))
	}
	if !rtHas(rtOurs(ctx, t), want) {
		t.Errorf("routes lost in the switch to the table: %q", rtOurs(ctx, t))
	}

	// Heartbeats: the publisher receives them and changes nothing; the
	// reader receives none.
	cm, err := tb.Client.CoreV1().ConfigMaps(nr.Namespace).Get(ctx, nr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rBefore, pBefore := metricsIn(ctx, t, tb.VMNetns, r), metricsIn(ctx, t, host.Netns, p)
	const unchangedNodes = `bridge_agent_cluster_events_total{changed="false",kind="Node"}`
	const nodeEvents = `bridge_agent_cluster_events_total{changed="true",kind="Node"}`
	rst, _ = r.Status(ctx)
	pst, _ = p.Status(ctx)
	const rounds = 3
	for i := range rounds {
		heartbeat(ctx, t, i+1)
	}
	rtWait(t, 10*time.Second, "the publisher received every heartbeat", func() bool {
		return metricSum(metricsIn(ctx, t, host.Netns, p), unchangedNodes) >= metricSum(pBefore, unchangedNodes)+float64(rounds*len(tb.Nodes))
	})
	time.Sleep(time.Second) // a sync the heartbeats would cause would have happened by now
	rAfter, pAfter := metricsIn(ctx, t, tb.VMNetns, r), metricsIn(ctx, t, host.Netns, p)
	if d := metricSum(pAfter, nodeEvents) - metricSum(pBefore, nodeEvents); d != 0 {
		t.Errorf("publisher: %v heartbeats counted as changes", d)
	}
	for _, m := range []string{unchangedNodes, nodeEvents} {
		if d := metricSum(rAfter, m) - metricSum(rBefore, m); d != 0 {
			t.Errorf("reader: %s rose by %v: it received Node events", m, d)
		}
	}
	for _, c := range []struct {
		a   *testbed.Agent
		was *daemon.Status
	}{{r, rst}, {p, pst}} {
		st, err := c.a.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Snapshot.Version != c.was.Snapshot.Version {
			t.Errorf("heartbeats made snapshot %d (was %d): consumers synced for nothing", st.Snapshot.Version, c.was.Snapshot.Version)
		}
	}
	if cm2, err := tb.Client.CoreV1().ConfigMaps(nr.Namespace).Get(ctx, nr.Name, metav1.GetOptions{}); err != nil || cm2.ResourceVersion != cm.ResourceVersion {
		t.Errorf("heartbeats rewrote the table (%v)", err)
	}

	// A Node joins and leaves: the reader follows through the table.
	joinLeave := func(how string) {
		t.Helper()
		nd, err := tb.AddNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rtWait(t, 10*time.Second, "route to the new node's pods "+how, func() bool { return rtHas(rtOurs(ctx, t), rtNodeRoutes(nd)) })
		rtReach(ctx, t, rtPod(ctx, t, nd))
		if err := tb.DeleteNode(ctx, nd.Number); err != nil {
			t.Fatal(err)
		}
		rtWait(t, 10*time.Second, "the left node's route gone "+how, func() bool { return rtHasNone(rtOurs(ctx, t), nd) })
	}
	gen := rst.NodeRoutes.Generation
	joinLeave("(table)")
	rst = source(r, "table", "")
	if rst.NodeRoutes.Generation < gen+2 {
		t.Errorf("table generation %d after a join and a leave, was %d", rst.NodeRoutes.Generation, gen)
	}

	// The publisher dies without releasing its Lease: once the Lease went
	// unrenewed past the grace, the reader watches Nodes again, and still
	// follows them.
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	source(r, "nodes", "has not been renewed")
	joinLeave("(Nodes watched again)")
	if !rtHas(rtOurs(ctx, t), want) {
		t.Errorf("routes lost: %q", rtOurs(ctx, t))
	}

	// A hostile table, written with the Lease taken over: it leaves out
	// the real Nodes and claims a huge range, a range someone else routes
	// and this host's own subnet. The reader withdraws its own routes of
	// the Nodes the table leaves out, installs none of the claims, and
	// touches no route it did not make.
	const foreign = "10.244.200.0/24"
	rtIP(ctx, t, "-4", "route", "add", foreign, "via", tb.Nodes[0].IPv4, "proto", "static")
	t.Cleanup(func() { rtIP(context.Background(), t, "-4", "route", "del", foreign, "proto", "static") })
	lease, err := tb.Client.CoordinationV1().Leases(nr.Namespace).Get(ctx, nr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lease.Spec.HolderIdentity = ptr.To("intruder")
	lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	if _, err := tb.Client.CoordinationV1().Leases(nr.Namespace).Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm, err = tb.Client.CoreV1().ConfigMaps(nr.Namespace).Get(ctx, nr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n0, n1 := tb.Nodes[0].IPv4, tb.Nodes[1].IPv4
	cm.Data = map[string]string{"nodes.json": `{"format":1,"publisher":"intruder","generation":99,"nodes":[
		{"name":"wide","podCIDRs":["0.0.0.0/1"],"internalIPs":["` + n0 + `"]},
		{"name":"taken","podCIDRs":["` + foreign + `"],"internalIPs":["` + n1 + `"]},
		{"name":"self","podCIDRs":["10.250.0.0/24"],"internalIPs":["` + n0 + `"]}]}`}
	if _, err := tb.Client.CoreV1().ConfigMaps(nr.Namespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rst = source(r, "table", "")
	if rst.NodeRoutes.Publisher != "intruder" {
		t.Fatalf("reader did not take the hostile table: %+v", rst.NodeRoutes)
	}
	rtWait(t, 10*time.Second, "the routes of the Nodes the table leaves out withdrawn", func() bool {
		ours := rtOurs(ctx, t)
		for _, nd := range tb.Nodes {
			if !rtHasNone(ours, nd) {
				return false
			}
		}
		return true
	})
	if ours := rtOurs(ctx, t); len(ours) != 0 {
		t.Errorf("routes installed from the hostile table: %q", ours)
	}
	all := rtAll(ctx, t)
	for _, w := range []string{foreign + " via " + n0 + " dev eth0 proto static", "10.250.0.0/24 dev eth0 proto kernel"} {
		if !slices.ContainsFunc(all, func(l string) bool { return strings.HasPrefix(l, w) }) {
			t.Errorf("route %q of someone else gone: %q", w, all)
		}
	}
	// Nobody renews the intruder's Lease: the reader falls back to the
	// Nodes and their routes come back.
	source(r, "nodes", "has not been renewed")
	rtWait(t, 10*time.Second, "routes back from the Nodes", func() bool { return rtHas(rtOurs(ctx, t), want) })
}

// TestGatewayModeWatchesNoNode: routes.mode gateway (and none) needs no
// Node, and the agent holds none while the cluster has some.
func TestGatewayModeWatchesNoNode(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, mode := range []string{config.RoutesGateway, config.RoutesNone} {
		a := newAgent(t, true, func(c *config.Config) {
			c.Proxy.Mode = "none"
			c.DNS.Mode = config.DNSNone
			c.Routes.Mode = mode
			if mode == config.RoutesGateway {
				c.Routes.CIDRs = []string{"10.244.0.0/16"}
				c.Routes.Gateways = []string{tb.Nodes[0].IPv4}
			}
		})
		st, err := a.WaitReady(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		heartbeat(ctx, t, 10)
		m := metricsIn(ctx, t, tb.VMNetns, a)
		if st.NodeRoutes != nil || len(st.Snapshot.Nodes) != 0 ||
			metricSum(m, `bridge_agent_watched_objects{kind="Node"}`) != 0 ||
			metricSum(m, `bridge_agent_cluster_events_total{changed="false",kind="Node"}`) != 0 {
			t.Errorf("%s mode: the agent holds Nodes: status %d nodes, %+v;\n%s", mode, len(st.Snapshot.Nodes), st.NodeRoutes,
				grepLines(m, "watched_objects", `kind="Node"`))
		}
		if out, err := a.Run(ctx, "status"); err != nil || !strings.Contains(string(out), "cluster pod ranges: not known in "+mode+" mode") {
			t.Errorf("%s mode: status text (%v):\n%s", mode, err, out)
		}
		if !strings.Contains(a.Log(), "informers synced") {
			t.Errorf("%s mode: not synced:\n%s", mode, a.Log())
		}
		_ = a.Stop()
	}
}

// grepLines returns the lines of text containing any of subs.
func grepLines(text string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestNodeRoutesWithoutTableAccess: an agent whose identity may not read
// the node route table (RBAC of an older release) watches Nodes at once,
// says why, and routes as ever.
func TestNodeRoutesWithoutTableAccess(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns, name = "bridge-agent", "bridge-agent-node-routes-reader"
	rbs := tb.Client.RbacV1().RoleBindings(ns)
	rb, err := rbs.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("deploy/rbac.yaml's binding: %v", err)
	}
	if err := rbs.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rb.ResourceVersion = ""
		if _, err := rbs.Create(context.Background(), rb, metav1.CreateOptions{}); err != nil {
			t.Errorf("restore the reader binding: %v", err)
		}
	})
	rtIP(ctx, t, "-4", "route", "flush", "table", "all", "proto", "98")
	begin := time.Now()
	a := nodeTableAgent(t, "", false)
	st, err := a.WaitStatus(ctx, 20*time.Second, func(st *daemon.Status) bool {
		return st.Ready && st.NodeRoutes != nil && st.NodeRoutes.Source == "nodes"
	})
	if err != nil {
		t.Fatal(err)
	}
	// The reason names the refusal: the agent fell back on the error, not
	// on the timeout it keeps for a table it cannot tell about.
	if !strings.Contains(st.NodeRoutes.Reason, "forbidden") {
		t.Errorf("node source reason %q, want the refusal named", st.NodeRoutes.Reason)
	}
	t.Logf("ready %s after the start", time.Since(begin).Round(time.Millisecond))
	var want []string
	for _, nd := range tb.Nodes {
		want = append(want, rtNodeRoutes(nd)...)
	}
	rtWait(t, 10*time.Second, "routes to every node's pods", func() bool { return rtHas(rtOurs(ctx, t), want) })
}
