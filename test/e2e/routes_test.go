package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/routes"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// rtIP runs `ip args...` in the VM namespace.
func rtIP(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := tb.Exec(ctx, tb.VMNetns, append([]string{"ip"}, args...)...)
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// rtOurs returns the VM's routes with the agent's protocol, both families,
// every table, one per line, sorted.
func rtOurs(ctx context.Context, t *testing.T) []string {
	t.Helper()
	var lines []string
	for _, fam := range []string{"-4", "-6"} {
		for _, l := range strings.Split(rtIP(ctx, t, fam, "route", "show", "table", "all", "proto", "98"), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	slices.Sort(lines)
	return lines
}

// rtAll returns every route of the VM, both families, every table.
func rtAll(ctx context.Context, t *testing.T) []string {
	t.Helper()
	var lines []string
	for _, fam := range []string{"-4", "-6"} {
		for _, l := range strings.Split(rtIP(ctx, t, fam, "route", "show", "table", "all"), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	slices.Sort(lines)
	return lines
}

// rtNodeRoutes returns the routes the agent should keep for a node, as
// `ip route show proto 98` prints their start.
func rtNodeRoutes(nd testbed.Node) []string {
	return []string{
		nd.PodCIDRs[0] + " via " + nd.IPv4 + " dev eth0",
		nd.PodCIDRs[1] + " via " + nd.IPv6 + " dev eth0",
	}
}

// rtHas reports whether every wanted route starts one of the lines.
func rtHas(lines, want []string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, w+" ") || l == w }) {
			return false
		}
	}
	return true
}

// rtHasNone reports whether no line starts with a destination of the node.
func rtHasNone(lines []string, nd testbed.Node) bool {
	return !slices.ContainsFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, nd.PodCIDRs[0]+" ") || strings.HasPrefix(l, nd.PodCIDRs[1]+" ")
	})
}

// rtWait polls cond every 10 ms and returns how long it took to hold.
func rtWait(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// rtAsk connects to a pod's TCP test server from the VM and returns the
// name it answers.
func rtAsk(ctx context.Context, ip string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addr := ip + ":8080"
	if strings.Contains(ip, ":") {
		addr = "[" + ip + "]:8080"
	}
	c, err := tb.DialContext(tb.VMNetns)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// rtReach checks that the VM reaches pod p on both families.
func rtReach(ctx context.Context, t *testing.T, p testbed.Pod) {
	t.Helper()
	for _, ip := range []string{p.IPv4, p.IPv6} {
		if got, err := rtAsk(ctx, ip); err != nil || got != p.Name {
			t.Errorf("VM to pod %s at %s: got %q, %v", p.Name, ip, got, err)
		}
	}
}

// rtStatus returns the routes consumer's status.
func rtStatus(t *testing.T, st *daemon.Status) *routes.Status {
	t.Helper()
	for _, c := range st.Consumers {
		if c.Name == "routes" {
			var rs routes.Status
			if err := json.Unmarshal(c.Details, &rs); err != nil {
				t.Fatalf("routes status: %v: %s", err, c.Details)
			}
			return &rs
		}
	}
	t.Fatalf("no routes consumer in status: %+v", st.Consumers)
	return nil
}

func rtPod(ctx context.Context, t *testing.T, nd testbed.Node) testbed.Pod {
	t.Helper()
	p := createPod(ctx, t, testbed.PodSpec{Namespace: "routes", Name: fmt.Sprintf("rt-%d", nd.Number), Node: nd.Number,
		Ports: []testbed.Port{{Name: "http", Port: 8080}}, Ready: true})
	t.Cleanup(func() { _ = tb.DeletePod(context.Background(), p.Namespace, p.Name) })
	return p
}

// TestRoutes: the VM reaches pods on every node, v4 and v6, only through
// the agent's routes; they follow nodes joining and leaving, yield to
// someone else's routes in a pod range, survive a restart without a
// flap, and cleanup removes exactly them.
func TestRoutes(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Agents of earlier tests leave their routes (neither start nor stop
	// flushes): start from a VM without any.
	rtIP(ctx, t, "-4", "route", "flush", "table", "all", "proto", "98")
	rtIP(ctx, t, "-6", "route", "flush", "table", "all", "proto", "98")
	baseline := rtAll(ctx, t)

	var pods []testbed.Pod
	for _, nd := range tb.Nodes {
		pods = append(pods, rtPod(ctx, t, nd))
	}
	for _, p := range pods {
		for _, ip := range []string{p.IPv4, p.IPv6} {
			if got, err := rtAsk(ctx, ip); err == nil {
				t.Fatalf("the VM reaches pod %s at %s (%q) without the agent: the testbed routes pods itself", p.Name, ip, got)
			}
		}
	}

	a := startAgent(t, true)
	begin := time.Now()
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, nd := range tb.Nodes {
		want = append(want, rtNodeRoutes(nd)...)
	}
	rtWait(t, 5*time.Second, "routes to every node's pods", func() bool { return rtHas(rtOurs(ctx, t), want) })
	t.Logf("routes to %d nodes' pods in place %s after the agent started", len(tb.Nodes), time.Since(begin).Round(time.Millisecond))
	if got := rtOurs(ctx, t); len(got) != len(want) {
		t.Errorf("routes of ours: %q, want %q", got, want)
	}
	for _, p := range pods {
		rtReach(ctx, t, p)
	}

	// Status: the routes, the cluster's pod and Service ranges.
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs := rtStatus(t, st)
	if rs.Mode != "nodes" || rs.Protocol != 98 || len(rs.Routes) != len(want) || len(rs.Problems) != 0 {
		t.Errorf("routes status: %+v", rs)
	}
	if _, err := a.WaitStatus(ctx, 10*time.Second, func(st *daemon.Status) bool {
		rs := rtStatus(t, st)
		return rs.ServiceCIDRsFrom == "cluster" && fmt.Sprint(rs.ServiceCIDRs) == fmt.Sprint(tb.ServiceCIDRs)
	}); err != nil {
		t.Errorf("Service ranges from the cluster's ServiceCIDRs: %v", err)
	}
	out, err := a.Run(ctx, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Routes:\n  mode nodes, protocol 98, table main", "cluster service ranges: 10.96.0.0/16, fd00:96::/112 (from the cluster)",
		"cluster pod ranges: " + tb.Nodes[0].PodCIDRs[0]} {
		if !strings.Contains(string(out), w) {
			t.Errorf("status text lacks %q:\n%s", w, out)
		}
	}

	// A node joins: its route within 2 s.
	nd, err := tb.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = tb.DeleteNode(context.Background(), nd.Number)
		}
	})
	took := rtWait(t, 2*time.Second, "route to the new node's pods", func() bool { return rtHas(rtOurs(ctx, t), rtNodeRoutes(nd)) })
	t.Logf("node %s joined: its routes in place %s after its Node object was complete", nd.Name, took.Round(time.Millisecond))
	newPod := rtPod(ctx, t, nd)
	rtReach(ctx, t, newPod)

	// Someone else routes part of the new node's v4 pods and all of its v6
	// pods (with a better metric): the agent leaves their routes alone,
	// withdraws its own there and says so.
	via4, via6 := tb.Nodes[0].IPv4, tb.Nodes[0].IPv6
	inside := strings.TrimSuffix(nd.PodCIDRs[0], ".0/24") + ".128/25"
	foreign := [][]string{
		{"-4", "route", "add", inside, "via", via4, "proto", "static"},
		{"-6", "route", "add", nd.PodCIDRs[1], "via", via6, "proto", "static", "metric", "100"},
	}
	for _, f := range foreign {
		rtIP(ctx, t, f...)
	}
	foreignLines := func() []string {
		var out []string
		for _, l := range rtAll(ctx, t) {
			if strings.Contains(l, "proto static") && (strings.HasPrefix(l, inside+" ") || strings.HasPrefix(l, nd.PodCIDRs[1]+" ")) {
				out = append(out, l)
			}
		}
		return out
	}
	before := foreignLines()
	if len(before) != 2 {
		t.Fatalf("foreign routes: %q", before)
	}
	// Nothing in the cluster changed: the periodic resync (proxy.syncPeriod,
	// 10 s in the sandbox) finds them.
	resync := a.Config.Proxy.SyncPeriod.Duration + 5*time.Second
	added := time.Now()
	st, err = a.WaitStatus(ctx, resync, func(st *daemon.Status) bool { return rtStatus(t, st).Conflicts() == 2 })
	if err != nil {
		t.Fatalf("conflicts not reported: %v", err)
	}
	t.Logf("conflicts reported %s after the foreign routes appeared (next periodic resync)", time.Since(added).Round(time.Millisecond))
	for _, p := range rtStatus(t, st).Problems {
		if p.Reason != routes.ReasonConflict || p.Node != nd.Name {
			t.Errorf("unexpected problem: %s", p)
		}
	}
	if lines := rtOurs(ctx, t); !rtHasNone(lines, nd) {
		t.Errorf("our routes stayed beside someone else's: %q", lines)
	}
	if after := foreignLines(); !slices.Equal(before, after) {
		t.Errorf("foreign routes changed: %q, were %q", after, before)
	}
	out, _ = a.Run(ctx, "status")
	if !strings.Contains(string(out), "conflict: someone else's route in table main covers it ("+inside+" via "+via4+" dev eth0 proto static)") {
		t.Errorf("status text lacks the conflict:\n%s", out)
	}
	_, metrics, err := httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
	if err != nil || !strings.Contains(metrics, "bridge_agent_routes_conflicts 2") || !strings.Contains(metrics, `bridge_agent_routes_problems{reason="conflict"} 2`) {
		t.Errorf("metrics lack the conflicts (%v)", err)
	}
	for _, f := range foreign {
		f[2] = "del"
		rtIP(ctx, t, f...)
	}
	took = rtWait(t, resync, "routes back after the foreign ones went", func() bool { return rtHas(rtOurs(ctx, t), rtNodeRoutes(nd)) })
	t.Logf("routes back %s after the foreign routes went", took.Round(time.Millisecond))
	rtReach(ctx, t, newPod)

	// The node leaves: its routes go.
	if err := tb.DeleteNode(ctx, nd.Number); err != nil {
		t.Fatal(err)
	}
	deleted = true
	took = rtWait(t, 2*time.Second, "routes of the deleted node gone", func() bool { return rtHasNone(rtOurs(ctx, t), nd) })
	t.Logf("node %s left: its routes gone %s after its Node object was deleted", nd.Name, took.Round(time.Millisecond))

	_, metrics, _ = httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
	for _, c := range []string{"routes", "proxy"} {
		t.Logf("mean sync of %s: %s", c, rtMeanSync(metrics, c))
	}

	// Restart: routes stay through the stop and the new start, with no
	// route event of ours and no failed connection.
	ours := rtOurs(ctx, t)
	mon := tb.Command(tb.VMNetns, "ip", "monitor", "route")
	var monOut bytes.Buffer
	mon.Stdout = &monOut
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the monitor subscribe
	var probes, failures atomic.Int32
	var failMu sync.Mutex
	var firstFail error
	probeCtx, stopProbes := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; probeCtx.Err() == nil; i++ {
			p := pods[i%len(pods)]
			ip := p.IPv4
			if i%2 == 1 {
				ip = p.IPv6
			}
			if got, err := rtAsk(probeCtx, ip); probeCtx.Err() == nil {
				probes.Add(1)
				if err != nil || got != p.Name {
					failures.Add(1)
					failMu.Lock()
					if firstFail == nil {
						firstFail = fmt.Errorf("%s: %q %v", ip, got, err)
					}
					failMu.Unlock()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	if err := a.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got := rtOurs(ctx, t); !slices.Equal(got, ours) {
		t.Errorf("routes after stop: %q, want %q", got, ours)
	}
	time.Sleep(300 * time.Millisecond) // traffic flows with no agent at all
	restart := time.Now()
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	st, err = a.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool { return st.Ready && st.PID == a.PID() })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted agent ready in %s", time.Since(restart).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond) // a few more syncs
	stopProbes()
	wg.Wait()
	_ = mon.Process.Kill()
	_ = mon.Wait()
	if rs := rtStatus(t, st); rs.LastChanges != (routes.Changes{}) || len(rs.Routes) != len(ours) {
		t.Errorf("first sync after restart: changes %+v, %d routes", rs.LastChanges, len(rs.Routes))
	}
	for _, l := range strings.Split(monOut.String(), "\n") {
		if strings.Contains(l, "proto 98") {
			t.Errorf("route event of ours during the restart: %q", l)
		}
	}
	if got := rtOurs(ctx, t); !slices.Equal(got, ours) {
		t.Errorf("routes after restart: %q, want %q", got, ours)
	}
	_, metrics, _ = httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
	for _, m := range []string{`bridge_agent_routes_changes_total{op="add"} 0`, `bridge_agent_routes_changes_total{op="delete"} 0`, `bridge_agent_routes_installed{family="ipv4"} ` + fmt.Sprint(len(tb.Nodes))} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics of the restarted agent lack %q", m)
		}
	}
	t.Logf("%d connections to pods during stop and restart, %d failed (first: %v)", probes.Load(), failures.Load(), firstFail)
	if failures.Load() > 0 {
		t.Errorf("connections failed during the restart")
	}

	// Cleanup: ours go, everyone else's stay.
	keep := [][]string{
		{"-4", "route", "add", "10.244.250.0/24", "via", via4, "proto", "static"},
		{"-6", "route", "add", "fd00:244:fa::/64", "via", via6, "proto", "static", "table", "100"},
	}
	for _, k := range keep {
		rtIP(ctx, t, k...)
	}
	t.Cleanup(func() {
		for _, k := range keep {
			k[2] = "del"
			_, _ = tb.Exec(context.Background(), tb.VMNetns, append([]string{"ip"}, k...)...)
		}
	})
	withForeign := rtAll(ctx, t)
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err = a.Run(ctx, "cleanup")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), fmt.Sprintf("removed %d routes of ours (protocol 98", len(ours))) {
		t.Errorf("cleanup output:\n%s", out)
	}
	var wantAfter []string
	for _, l := range withForeign {
		if !strings.Contains(l, "proto 98") {
			wantAfter = append(wantAfter, l)
		}
	}
	if got := rtAll(ctx, t); !slices.Equal(got, wantAfter) {
		t.Errorf("after cleanup:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantAfter, "\n"))
	}
	if len(wantAfter) != len(baseline)+len(keep) {
		t.Errorf("routes besides ours changed during the test:\nnow:\n%s\nat the start:\n%s", strings.Join(wantAfter, "\n"), strings.Join(baseline, "\n"))
	}
	if got := rtOurs(ctx, t); len(got) != 0 {
		t.Errorf("routes of ours after cleanup: %q", got)
	}
}

// rtMeanSync returns a consumer's mean sync duration from /metrics text.
func rtMeanSync(metrics, consumer string) string {
	var sum, count float64
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, `bridge_agent_sync_duration_seconds_sum{consumer="`+consumer+`"} `); ok {
			fmt.Sscan(v, &sum)
		}
		if v, ok := strings.CutPrefix(l, `bridge_agent_sync_duration_seconds_count{consumer="`+consumer+`"} `); ok {
			fmt.Sscan(v, &count)
		}
	}
	if count == 0 {
		return "-"
	}
	return fmt.Sprintf("%s over %.0f syncs", time.Duration(sum/count*float64(time.Second)).Round(time.Microsecond), count)
}
