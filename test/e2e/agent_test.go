package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

var portSeq atomic.Int32

// startAgent starts an agent with its own directory and its own health and
// metrics ports (several agents may share the VM namespace in one run).
func startAgent(t *testing.T, start bool) *testbed.Agent {
	t.Helper()
	return newAgent(t, start, nil)
}

// newAgent is startAgent with the configuration adjusted by mutate and env
// added to the agent's environment. When the test ends the agent is
// stopped and `bridge-agent cleanup` removes what it left on the VM.
func newAgent(t *testing.T, start bool, mutate func(*config.Config), env ...string) *testbed.Agent {
	t.Helper()
	dir := t.TempDir()
	cfg := tb.AgentConfig(dir)
	seq := int(portSeq.Add(1))
	base := 20000 + 10*seq
	cfg.HealthzBindAddress = "127.0.0.1:" + strconv.Itoa(base)
	cfg.MetricsBindAddress = "127.0.0.1:" + strconv.Itoa(base+1)
	// Each agent's DNS stub gets a loopback address of its own, port 53.
	cfg.DNS.ListenAddress = fmt.Sprintf("127.0.%d.77:53", seq%250+1)
	if mutate != nil {
		mutate(cfg)
	}
	a, err := tb.NewAgent(agentBin, dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.Env = env
	t.Cleanup(func() {
		if err := a.Stop(); err != nil && !a.Exited() {
			t.Errorf("stop agent: %v", err)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log())
			for _, argv := range [][]string{{"nft", "list", "ruleset"}, {"iptables-save"}, {"ip", "route"}} {
				out, err := tb.Exec(context.Background(), tb.VMNetns, argv...)
				t.Logf("VM: %v (%v):\n%s", argv, err, out)
			}
		}
		_, _ = a.Run(context.Background(), "cleanup")
	})
	if start {
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// httpGet fetches a URL from inside the VM namespace.
func httpGet(ctx context.Context, url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: tb.DialContext(tb.VMNetns)}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func findService(st *daemon.Status, ns, name string) *cluster.Service {
	for _, s := range st.Snapshot.Services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	return nil
}

// endpointsOf returns "ip:port ready|notready|terminating" of a Service's
// first port, or nil when the Service is not in the snapshot.
func endpointsOf(st *daemon.Status, ns, name string) []string {
	s := findService(st, ns, name)
	if s == nil || len(s.Ports) == 0 {
		return nil
	}
	out := []string{}
	for _, e := range s.Ports[0].Endpoints {
		state := "ready"
		if !e.Ready {
			state = "notready"
			if e.Serving && e.Terminating {
				state = "terminating"
			}
		}
		out = append(out, e.AddrPort().String()+" "+state)
	}
	return out
}

func sameSet(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	m := map[string]int{}
	for _, g := range got {
		m[g]++
	}
	for _, w := range want {
		if m[w] == 0 {
			return false
		}
		m[w]--
	}
	return true
}

// TestSnapshotFollowsCluster is the foundation's end-to-end test: the
// built agent, running in the VM namespace with the least-privilege RBAC
// of deploy/, follows Services and Pods as they come and go.
func TestSnapshotFollowsCluster(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := startAgent(t, true)
	begin := time.Now()
	st, err := a.WaitReady(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent ready %s after start", time.Since(begin).Round(time.Millisecond))

	// What the sandbox already has.
	if s := findService(st, "default", "kubernetes"); s == nil || len(s.ClusterIPs) == 0 || s.ClusterIPs[0].String() != "10.96.0.1" {
		t.Errorf("default/kubernetes: %+v", s)
	}
	if s := findService(st, "kube-system", "kube-dns"); s == nil || len(endpointsOf(st, "kube-system", "kube-dns")) == 0 {
		t.Errorf("kube-system/kube-dns without endpoints: %+v", s)
	}
	if len(st.Snapshot.Nodes) != len(tb.Nodes) {
		t.Errorf("nodes: got %d, want %d", len(st.Snapshot.Nodes), len(tb.Nodes))
	}
	for _, n := range st.Snapshot.Nodes {
		if len(n.PodCIDRs) == 0 || len(n.InternalIPs) == 0 {
			t.Errorf("node %s lacks pod CIDRs or addresses: %+v", n.Name, n)
		}
	}

	const ns = "follow"
	sel := map[string]string{"app": "web"}
	ports := []testbed.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}
	svc := createService(ctx, t, ns, "web", v1.ProtocolTCP, 80, "http", sel)
	p1 := createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "web-1", Node: 1, Labels: sel, Ports: ports, Ready: true})
	p2 := createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "web-2", Node: 2, Labels: sel, Ports: ports, Ready: true})
	// PreferDualStack: each pod is an endpoint of both families.
	ep := func(p testbed.Pod, state string) []string {
		return []string{p.IPv4 + ":8080 " + state, "[" + p.IPv6 + "]:8080 " + state}
	}
	eps := func(lists ...[]string) []string {
		var out []string
		for _, l := range lists {
			out = append(out, l...)
		}
		return out
	}

	step := func(what string, want []string) {
		t.Helper()
		start := time.Now()
		_, err := a.WaitStatus(ctx, 10*time.Second, func(st *daemon.Status) bool {
			got := endpointsOf(st, ns, "web")
			if want == nil {
				return findService(st, ns, "web") == nil
			}
			return sameSet(got, want)
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: seen by the agent in %s", what, time.Since(start).Round(time.Millisecond))
	}
	step("two ready pods", eps(ep(p1, "ready"), ep(p2, "ready")))

	st, _ = a.Status(ctx)
	if s := findService(st, ns, "web"); s == nil || len(s.ClusterIPs) != 2 || s.ClusterIPs[0].String() != svc.Spec.ClusterIPs[0] {
		t.Errorf("dual-stack cluster IPs: got %+v, want %v", s, svc.Spec.ClusterIPs)
	} else if s.Ports[0].Port != 80 || s.Ports[0].Name != "http" {
		t.Errorf("port: %+v", s.Ports[0])
	}

	if err := tb.SetPodReady(ctx, ns, "web-1", false); err != nil {
		t.Fatal(err)
	}
	step("pod made not ready", eps(ep(p1, "notready"), ep(p2, "ready")))
	if err := tb.DeletePod(ctx, ns, "web-1"); err != nil {
		t.Fatal(err)
	}
	step("pod deleted", ep(p2, "ready"))
	if err := tb.Client.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	step("service deleted", nil)
	if err := tb.DeletePod(ctx, ns, "web-2"); err != nil {
		t.Fatal(err)
	}

	// The human-readable status says the same.
	out, err := a.Run(ctx, "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), ": ready") || !strings.Contains(string(out), "kube-system/kube-dns") ||
		!(strings.Contains(string(out), "Proxy: nftables\n") || strings.Contains(string(out), "Proxy: iptables (")) ||
		!strings.Contains(string(out), "IPv4: ") || !strings.Contains(string(out), "DNS stub on "+a.Config.DNS.ListenAddress) {
		t.Errorf("status text:\n%s", out)
	}

	// Health, readiness and metrics on the configured local addresses.
	code, body, err := httpGet(ctx, "http://"+a.Config.HealthzBindAddress+"/readyz")
	if err != nil || code != 200 {
		t.Errorf("readyz: %d %q %v", code, body, err)
	}
	code, body, err = httpGet(ctx, "http://"+a.Config.HealthzBindAddress+"/healthz")
	if err != nil || code != 200 {
		t.Errorf("healthz: %d %q %v", code, body, err)
	}
	code, body, err = httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
	if err != nil || code != 200 {
		t.Fatalf("metrics: %d %v", code, err)
	}
	for _, m := range []string{
		`bridge_agent_watched_objects{kind="Service"}`,
		`bridge_agent_watched_objects{kind="Node"} ` + strconv.Itoa(len(tb.Nodes)),
		`bridge_agent_ready 1`,
		`bridge_agent_sync_duration_seconds_count{consumer="all"}`,
		`bridge_agent_last_successful_sync_timestamp_seconds`,
	} {
		if !strings.Contains(body, m) {
			t.Errorf("metrics lack %q", m)
		}
	}
	if rss, err := vmRSS(a.PID()); err == nil {
		t.Logf("agent RSS with the sandbox's objects: %s", rss)
	}

	// The least-privilege role is enough: nothing was refused.
	if log, _ := os.ReadFile(a.LogPath()); strings.Contains(strings.ToLower(string(log)), "forbidden") {
		t.Errorf("agent was refused something by RBAC:\n%s", a.Log())
	}

	// SIGTERM: clean exit, socket removed.
	if err := a.Stop(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(a.Config.HostPath(a.Config.StatusSocket)); !os.IsNotExist(err) {
		t.Errorf("status socket left behind: %v", err)
	}
}

// TestAPIServerUnreachableAtStart: the agent keeps retrying, reports
// not-ready, does not exit, and becomes ready once the API server is up.
func TestAPIServerUnreachableAtStart(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := tb.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = tb.StartAPIServer(ctx)
		}
	}()
	a := startAgent(t, true)
	st, err := a.WaitStatus(ctx, 20*time.Second, func(st *daemon.Status) bool { return st.APIServer.LastError != "" })
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready || st.Synced {
		t.Errorf("ready without an API server: %+v", st)
	}
	code, body, err := httpGet(ctx, "http://"+a.Config.HealthzBindAddress+"/readyz")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the API server") {
		t.Errorf("readyz while unreachable: %d %q %v", code, body, err)
	}
	if code, _, err := httpGet(ctx, "http://"+a.Config.HealthzBindAddress+"/healthz"); err != nil || code != 200 {
		t.Errorf("healthz while unreachable (process alive): %d %v", code, err)
	}
	time.Sleep(2 * time.Second)
	if a.Exited() {
		t.Fatalf("agent exited while the API server was down:\n%s", a.Log())
	}
	if err := tb.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	begin := time.Now()
	st, err = a.WaitReady(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ready %s after the API server came up", time.Since(begin).Round(time.Millisecond))
	if findService(st, "default", "kubernetes") == nil {
		t.Errorf("snapshot lacks default/kubernetes")
	}
}

// TestAPIServerRestartMidRun: the agent keeps its view while the API
// server is away and picks up changes made after it returns.
func TestAPIServerRestartMidRun(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := startAgent(t, true)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := tb.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || findService(st, "kube-system", "kube-dns") == nil {
		t.Errorf("view lost while the API server is down: ready=%v", st.Ready)
	}
	if err := tb.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	createService(ctx, t, "restart", "after", v1.ProtocolTCP, 80, "http", map[string]string{"app": "after"})
	begin := time.Now()
	if _, err := a.WaitStatus(ctx, 60*time.Second, func(st *daemon.Status) bool { return findService(st, "restart", "after") != nil }); err != nil {
		t.Fatal(err)
	}
	t.Logf("new Service seen %s after the API server returned", time.Since(begin).Round(time.Millisecond))
	if a.Exited() {
		t.Fatal("agent exited")
	}
}

// TestStartupErrors: bad input at start is one clear line and exit 1.
func TestStartupErrors(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	brokenKubeconfig := dir + "/broken.kubeconfig"
	if err := os.WriteFile(brokenKubeconfig, []byte("apiVersion: v1\nclusters: {oops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badConfig := dir + "/bad.yaml"
	if err := os.WriteFile(badConfig, []byte("apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nkubeconfig: /k\nproxy:\n  syncPeriod: 0s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing kubeconfig", []string{"run", "--kubeconfig", dir + "/nope"}, "kubeconfig"},
		{"broken kubeconfig", []string{"run", "--kubeconfig", brokenKubeconfig}, brokenKubeconfig},
		{"invalid config", []string{"run", "--config", badConfig}, "proxy.syncPeriod"},
		{"missing config", []string{"run", "--config", dir + "/none.yaml"}, "none.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", tb.VMNetns, agentBin}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 78 {
				t.Fatalf("want exit 78 (EX_CONFIG), got %v; output:\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Errorf("want one line naming %q, got:\n%s", tc.want, out)
			}
		})
	}
}

func vmRSS(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:")), nil
		}
	}
	return "", fmt.Errorf("no VmRSS")
}
