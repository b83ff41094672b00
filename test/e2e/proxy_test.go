package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// vmExec runs a command in the VM namespace and fails the test on error.
func vmExec(ctx context.Context, t *testing.T, argv ...string) string {
	t.Helper()
	out, err := tb.Exec(ctx, tb.VMNetns, argv...)
	if err != nil {
		t.Fatalf("%v: %v: %s", argv, err, out)
	}
	return string(out)
}

// serviceRoutes stands in for the host's default route: the kernel routes a
// locally sent packet before the nat OUTPUT hook rewrites its destination,
// so the Service ranges need a route, and the sandbox VM has no default
// route. Pod routes are the agent's own (routes.mode: nodes).
func serviceRoutes(ctx context.Context, t *testing.T) {
	t.Helper()
	var added [][]string
	n := tb.Nodes[0]
	for _, c := range tb.ServiceCIDRs {
		via := n.IPv4
		if strings.Contains(c, ":") {
			via = n.IPv6
		}
		vmExec(ctx, t, "ip", "route", "replace", c, "via", via, "proto", "static")
		added = append(added, []string{"ip", "route", "del", c, "via", via, "proto", "static"})
	}
	t.Cleanup(func() {
		for _, r := range added {
			_, _ = tb.Exec(context.Background(), tb.VMNetns, r...)
		}
	})
}

// askTCP connects to addr from the VM and returns the pod name it answers.
// The 500 ms limit is far above a connect on this LAN and keeps a probe that
// hits a vanished pod from eating a whole measuring window.
func askTCP(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	c, err := tb.DialContext(tb.VMNetns)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// askUDP sends one datagram to addr from the VM and returns the answer.
func askUDP(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := tb.DialContext(tb.VMNetns)(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// hits asks addr n times and counts answers per pod.
func hits(ctx context.Context, ask func(context.Context, string) (string, error), addr string, n int) (map[string]int, error) {
	got := map[string]int{}
	for range n {
		name, err := ask(ctx, addr)
		if err != nil {
			return got, err
		}
		got[name]++
	}
	return got, nil
}

// waitFor polls cond until it holds. Waits for first reachability are
// generous, as they include the EndpointSlice controller's latency, which
// grows on a loaded machine; waits that measure the agent are tight.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
	return 0
}

// createPod creates a pod in the sandbox and deletes it when the test ends.
func createPod(ctx context.Context, t *testing.T, spec testbed.PodSpec) testbed.Pod {
	t.Helper()
	p, err := tb.CreatePod(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.DeletePod(context.Background(), spec.Namespace, spec.Name) })
	return p
}

// httpPod is a ready pod of the given name on node, serving its "http" port
// 8080/TCP, labelled sel.
func httpPod(ns, name string, node int, sel map[string]string) testbed.PodSpec {
	return testbed.PodSpec{Namespace: ns, Name: name, Node: node, Labels: sel,
		Ports: []testbed.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}, Ready: true}
}

// createService creates a dual-stack (where it can) ClusterIP Service with
// one port named after its target port, and the namespace if needed.
func createService(ctx context.Context, t *testing.T, ns, name string, proto v1.Protocol, port int32, target string, selector map[string]string) *v1.Service {
	t.Helper()
	if _, err := tb.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		if _, err := tb.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := tb.Client.CoreV1().Services(ns).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.ServiceSpec{
			Selector:       selector,
			IPFamilyPolicy: ptr.To(v1.IPFamilyPolicyPreferDualStack),
			Ports:          []v1.ServicePort{{Name: target, Port: port, TargetPort: intstr.FromString(target), Protocol: proto}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tb.Client.CoreV1().Services(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return s
}

// proxyMode is one proxy backend the proxy tests run against.
type proxyMode struct {
	name    string // subtest name, also a namespace suffix
	mode    string // proxy.mode
	variant string // proxy.iptablesVariant, for iptables
}

// proxyModes are the backends every proxy test runs on: the same packets,
// the same expectations.
var proxyModes = []proxyMode{
	{name: "iptables", mode: "iptables", variant: "auto"},
	{name: "nftables", mode: "nftables"},
}

func (m proxyMode) configure(c *config.Config) {
	c.Proxy.Mode = m.mode
	if m.variant != "" {
		c.Proxy.IPTablesVariant = m.variant
	}
}

// forEachMode runs test once per backend, in a namespace of its own.
func forEachMode(t *testing.T, ns string, test func(t *testing.T, m proxyMode, ns string)) {
	for _, m := range proxyModes {
		t.Run(m.name, func(t *testing.T) {
			test(t, m, ns+"-"+m.name)
		})
	}
}

// dnatTargets counts the endpoint translations the backend holds in the VM:
// DNAT rules for iptables, elements of the endpoints maps (one per
// protocol and endpoint index, endpoints-R-PROTO) for nftables.
func (m proxyMode) dnatTargets(ctx context.Context, t *testing.T) int {
	t.Helper()
	if m.mode == "nftables" {
		n := 0
		for _, fam := range []string{"ip", "ip6"} {
			inMap := false
			for line := range strings.Lines(vmExec(ctx, t, "nft", "list", "table", fam, "bridge-agent")) {
				line = strings.TrimSpace(line)
				switch {
				case strings.HasPrefix(line, "map "), strings.HasPrefix(line, "set "), strings.HasPrefix(line, "chain "):
					inMap = strings.HasPrefix(line, "map endpoints-")
				case inMap && !strings.HasPrefix(line, "type "):
					n += strings.Count(line, " : ")
				}
			}
		}
		return n
	}
	out := vmExec(ctx, t, "iptables-save", "-t", "nat")
	return strings.Count(out, "-j DNAT")
}

// TestProxy sends real packets from the VM namespace to ClusterIPs through
// the agent's rules: iptables in both variants, and nftables.
func TestProxy(t *testing.T) {
	requireTestbed(t)
	for i, m := range []proxyMode{
		{name: "iptables-legacy", mode: "iptables", variant: "legacy"},
		{name: "iptables-nft", mode: "iptables", variant: "nft"},
		{name: "nftables", mode: "nftables"},
	} {
		t.Run(m.name, func(t *testing.T) {
			testProxy(t, m, fmt.Sprintf("px%d", i))
		})
	}
}

// foreignRules are someone else's rules in the VM (a docker chain, a host
// firewall) that the agent must never touch.
type foreignRules struct {
	add, del [][]string
	dump     []string // command whose output must keep showing want
	want     []string
}

func foreignFor(m proxyMode) foreignRules {
	if m.mode == "nftables" {
		return foreignRules{
			add: [][]string{
				{"iptables-nft", "-t", "nat", "-N", "DOCKER"},
				{"iptables-nft", "-t", "nat", "-A", "DOCKER", "-d", "198.51.100.1/32", "-j", "RETURN"},
				{"nft", "add table inet hostfw; add chain inet hostfw input { type filter hook input priority 0; policy accept; }; add rule inet hostfw input tcp dport 2222 accept"},
			},
			del: [][]string{
				{"iptables-nft", "-t", "nat", "-F", "DOCKER"},
				{"iptables-nft", "-t", "nat", "-X", "DOCKER"},
				{"nft", "delete table inet hostfw"},
			},
			dump: []string{"nft", "list", "ruleset"},
			want: []string{"chain DOCKER", "ip daddr 198.51.100.1 ", "table inet hostfw", "tcp dport 2222 accept"},
		}
	}
	v := m.variant
	return foreignRules{
		add: [][]string{
			{"iptables-" + v, "-t", "nat", "-N", "DOCKER"},
			{"iptables-" + v, "-t", "nat", "-A", "DOCKER", "-d", "198.51.100.1/32", "-j", "RETURN"},
			{"iptables-" + v, "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"},
		},
		del: [][]string{
			{"iptables-" + v, "-t", "nat", "-F", "DOCKER"},
			{"iptables-" + v, "-t", "nat", "-X", "DOCKER"},
			{"iptables-" + v, "-t", "filter", "-D", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"},
		},
		dump: []string{"iptables-" + v + "-save"},
		want: []string{":DOCKER", "-A DOCKER -d 198.51.100.1/32 -j RETURN", "-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT"},
	}
}

func testProxy(t *testing.T, m proxyMode, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)

	// Someone else's rules that must survive everything we do.
	fr := foreignFor(m)
	for _, cmd := range fr.add {
		vmExec(ctx, t, cmd...)
	}
	t.Cleanup(func() {
		for _, cmd := range fr.del {
			_, _ = tb.Exec(context.Background(), tb.VMNetns, cmd...)
		}
	})
	foreign := func() {
		t.Helper()
		out := vmExec(ctx, t, fr.dump...)
		for _, want := range fr.want {
			if !strings.Contains(out, want) {
				t.Errorf("foreign rule %q is gone:\n%s", want, out)
			}
		}
	}

	web := map[string]string{"app": "web-" + ns}
	tcpPorts := []testbed.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}
	var pods []testbed.Pod
	for i := 1; i <= 2; i++ {
		p := createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: fmt.Sprintf("web-%d", i), Node: i, Labels: web, Ports: tcpPorts, Ready: true})
		pods = append(pods, p)
	}
	svc := createService(ctx, t, ns, "web", v1.ProtocolTCP, 80, "http", web)
	echoSel := map[string]string{"app": "echo-" + ns}
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "echo-1", Node: 1, Labels: echoSel, Ports: []testbed.Port{{Name: "echo", Port: 7007, Protocol: "UDP"}}, Ready: true})
	echo := createService(ctx, t, ns, "echo", v1.ProtocolUDP, 7, "echo", echoSel)
	empty := createService(ctx, t, ns, "empty", v1.ProtocolTCP, 80, "http", map[string]string{"app": "nothing"})

	// The legacy tables that exist before the agent: a mode that does not
	// use iptables-legacy, its probing and its cleanup create none.
	legacyTables := func() string {
		return vmExec(ctx, t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")
	}
	legacyBefore := legacyTables()
	a := newAgent(t, true, func(c *config.Config) {
		m.configure(c)
		c.Proxy.SyncPeriod.Duration = 2 * time.Second
	})
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	for _, ip := range svc.Spec.ClusterIPs {
		addr := net.JoinHostPort(ip, "80")
		waitFor(t, 20*time.Second, "service answers on "+addr, func() error { _, err := askTCP(ctx, addr); return err })
		got, err := hits(ctx, askTCP, addr, 40)
		if err != nil {
			t.Fatalf("%s: %v (%v)", addr, err, got)
		}
		if got["web-1"] == 0 || got["web-2"] == 0 || got["web-1"]+got["web-2"] != 40 {
			t.Errorf("%s: traffic not spread over both pods: %v", addr, got)
		}
	}
	for _, ip := range echo.Spec.ClusterIPs {
		addr := net.JoinHostPort(ip, "7")
		waitFor(t, 20*time.Second, "UDP service answers on "+addr, func() error {
			name, err := askUDP(ctx, addr)
			if err == nil && name != "echo-1" {
				err = fmt.Errorf("answered by %q", name)
			}
			return err
		})
	}

	// No endpoints: refused at once, not a time-out.
	emptyAddr := net.JoinHostPort(empty.Spec.ClusterIPs[0], "80")
	waitFor(t, 5*time.Second, "empty service refused", func() error {
		start := time.Now()
		_, err := askTCP(ctx, emptyAddr)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("want connection refused, got %v", err)
		}
		if d := time.Since(start); d > time.Second {
			return fmt.Errorf("refusal took %v", d)
		}
		return nil
	})

	// A deleted pod stops getting traffic within 2 s.
	if err := tb.DeletePod(ctx, ns, "web-1"); err != nil {
		t.Fatal(err)
	}
	webAddr := net.JoinHostPort(svc.Spec.ClusterIPs[0], "80")
	took := waitFor(t, 2*time.Second, "deleted pod drained", func() error {
		got, err := hits(ctx, askTCP, webAddr, 10)
		if err != nil || got["web-2"] != 10 {
			return fmt.Errorf("%v %v", got, err)
		}
		return nil
	})
	t.Logf("%s: deleted pod out of rotation after %v", m.name, took.Round(time.Millisecond))
	foreign()

	// Someone flushes the agent's rules: the agent restores them.
	if m.mode == "nftables" {
		vmExec(ctx, t, "nft", "flush", "table", "ip", "bridge-agent")
	} else {
		vmExec(ctx, t, "iptables-"+m.variant, "-t", "nat", "-F")
	}
	took = waitFor(t, 10*time.Second, "rules restored after a flush", func() error { _, err := askTCP(ctx, webAddr); return err })
	t.Logf("%s: rules restored %v after a flush", m.name, took.Round(time.Millisecond))
	if m.mode != "nftables" {
		vmExec(ctx, t, "iptables-"+m.variant, "-t", "nat", "-A", "DOCKER", "-d", "198.51.100.1/32", "-j", "RETURN") // ours to repair, not the agent's
	}

	// cleanup removes every chain and jump of ours, and nothing else.
	if err := a.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if _, err := askTCP(ctx, webAddr); err != nil {
		t.Errorf("rules must outlive the agent (start-up and shutdown never flush): %v", err)
	}
	if out, err := a.Run(ctx, "cleanup"); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	for _, s := range []string{"iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"} {
		if out := vmExec(ctx, t, s); strings.Contains(out, "BRIDGE-") {
			t.Errorf("%s still shows our rules after cleanup:\n%s", s, out)
		}
	}
	if out := vmExec(ctx, t, "nft", "list", "tables"); strings.Contains(out, "bridge-agent") {
		t.Errorf("nft still lists our tables after cleanup:\n%s", out)
	}
	if m.variant != "legacy" {
		if after := legacyTables(); after != legacyBefore {
			t.Errorf("%s: legacy tables before the agent %q, after its run and cleanup %q", m.name, legacyBefore, after)
		} else {
			t.Logf("%s: legacy tables before and after the agent: %q", m.name, after)
		}
	}
	foreign()
}

// TestProxyResilience: rules outlive the agent (SIGKILL, restart) and the
// API server; not-ready pods leave rotation; ClientIP affinity sticks.
func TestProxyResilience(t *testing.T) {
	requireTestbed(t)
	forEachMode(t, "resil", testProxyResilience)
}

func testProxyResilience(t *testing.T, m proxyMode, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	sel := map[string]string{"app": "res"}
	for i := 1; i <= 2; i++ {
		createPod(ctx, t, httpPod(ns, fmt.Sprintf("res-%d", i), i, sel))
	}
	svc := createService(ctx, t, ns, "res", v1.ProtocolTCP, 80, "http", sel)
	sticky := createService(ctx, t, ns, "sticky", v1.ProtocolTCP, 80, "http", sel)
	sticky.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	if _, err := tb.Client.CoreV1().Services(ns).Update(ctx, sticky, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	a := newAgent(t, true, m.configure)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIPs[0], "80")
	waitFor(t, 20*time.Second, "service answers", func() error { _, err := askTCP(ctx, addr); return err })

	// Affinity: every connection from this host lands on the same pod.
	stickyAddr := net.JoinHostPort(sticky.Spec.ClusterIPs[0], "80")
	waitFor(t, 20*time.Second, "sticky service answers", func() error { _, err := askTCP(ctx, stickyAddr); return err })
	if got, err := hits(ctx, askTCP, stickyAddr, 20); err != nil || len(got) != 1 {
		t.Errorf("sessionAffinity ClientIP: want one pod, got %v (%v)", got, err)
	}

	// A long connection open across SIGKILL and restart.
	long, err := tb.DialContext(tb.VMNetns)(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	_ = long.SetDeadline(time.Now().Add(time.Minute))
	rd := bufio.NewReader(long)
	if _, err := rd.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if got, err := hits(ctx, askTCP, addr, 10); err != nil {
		t.Errorf("new connections while the agent is down: %v (%v)", err, got)
	}
	// Restart: probe continuously; the first sync replaces the rules in
	// place, so no connection may fail.
	stop := make(chan struct{})
	failures := make(chan error, 1000)
	probes := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			probes++
			if _, err := askTCP(ctx, addr); err != nil {
				failures <- err
			}
		}
	}()
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-done
	if n := len(failures); n > 0 {
		t.Errorf("%d of %d connections failed across the restart; first: %v", n, probes, <-failures)
	}
	t.Logf("%d connections across the agent restart, none failed", probes)
	// The long connection still carries data both ways: our FIN reaches
	// the pod, whose server then closes, and we read that EOF.
	if err := long.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := rd.ReadString('\n'); err != io.EOF {
		t.Errorf("long connection broken across kill and restart: %v", err)
	}

	// Not ready: out of rotation within 2 s.
	if err := tb.SetPodReady(ctx, ns, "res-1", false); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 2*time.Second, "not-ready pod out of rotation", func() error {
		got, err := hits(ctx, askTCP, addr, 10)
		if err != nil || got["res-2"] != 10 {
			return fmt.Errorf("%v %v", got, err)
		}
		return nil
	})
	t.Logf("not-ready pod out of rotation after %v", took.Round(time.Millisecond))

	// API server away: existing services keep working; back: a new one works.
	if err := tb.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if got, err := hits(ctx, askTCP, addr, 5); err != nil {
		t.Errorf("service while the API server is down: %v (%v)", err, got)
	}
	if err := tb.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	later := createService(ctx, t, ns, "later", v1.ProtocolTCP, 80, "http", sel)
	laterAddr := net.JoinHostPort(later.Spec.ClusterIPs[0], "80")
	took = waitFor(t, 60*time.Second, "service created after the API server returned", func() error { _, err := askTCP(ctx, laterAddr); return err })
	t.Logf("new service reachable %v after creation (API server just restarted)", took.Round(time.Millisecond))
}

// TestProxyXtablesLock: another process holds the xtables lock for 10 s.
// The agent's sync waits for it, services already programmed keep working
// throughout, and the new Service works once the lock is released.
func TestProxyXtablesLock(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	const ns = "lock"
	sel := map[string]string{"app": "lock"}
	createPod(ctx, t, httpPod(ns, "lock-1", 1, sel))
	first := createService(ctx, t, ns, "first", v1.ProtocolTCP, 80, "http", sel)

	// A private lock file, so the test never contends with the machine's own.
	lock := t.TempDir() + "/xtables.lock"
	a := newAgent(t, true, func(c *config.Config) { c.Proxy.Mode, c.Proxy.IPTablesVariant = "iptables", "legacy" }, "XTABLES_LOCKFILE="+lock)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	firstAddr := net.JoinHostPort(first.Spec.ClusterIPs[0], "80")
	waitFor(t, 20*time.Second, "first service", func() error { _, err := askTCP(ctx, firstAddr); return err })

	holder := exec.CommandContext(ctx, "flock", lock, "sleep", "10")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	time.Sleep(200 * time.Millisecond)
	second := createService(ctx, t, ns, "second", v1.ProtocolTCP, 80, "http", sel)
	secondAddr := net.JoinHostPort(second.Spec.ClusterIPs[0], "80")
	for time.Since(held) < 9*time.Second {
		if _, err := askTCP(ctx, firstAddr); err != nil {
			t.Fatalf("programmed service broke while the lock was held: %v", err)
		}
		if _, err := askTCP(ctx, secondAddr); err == nil {
			t.Fatalf("new service programmed while another process held the xtables lock")
		}
		time.Sleep(250 * time.Millisecond)
	}
	_ = holder.Wait()
	took := waitFor(t, 10*time.Second, "second service after the lock is released", func() error { _, err := askTCP(ctx, secondAddr); return err })
	t.Logf("second service reachable %v after the lock was released", took.Round(time.Millisecond))
	if _, err := askTCP(ctx, firstAddr); err != nil {
		t.Errorf("first service: %v", err)
	}
}

// TestProxyTerminatingAndLargeSlices: graceful deletion keeps serving
// endpoints in use when nothing is ready (terminating fallback), and a
// Service with 5,000 endpoints in five slices neither crashes the agent nor
// holds up other Services' rules.
func TestProxyTerminatingAndLargeSlices(t *testing.T) {
	requireTestbed(t)
	forEachMode(t, "term", testProxyTerminatingAndLargeSlices)
}

func testProxyTerminatingAndLargeSlices(t *testing.T, m proxyMode, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	sel := map[string]string{"app": "term"}
	for i := 1; i <= 2; i++ {
		createPod(ctx, t, httpPod(ns, fmt.Sprintf("term-%d", i), i, sel))
	}
	svc := createService(ctx, t, ns, "term", v1.ProtocolTCP, 80, "http", sel)
	a := newAgent(t, true, m.configure)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIPs[0], "80")
	waitFor(t, 20*time.Second, "service answers", func() error { _, err := askTCP(ctx, addr); return err })

	graceful := func(name string) {
		t.Helper()
		if err := tb.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](600)}); err != nil {
			t.Fatal(err)
		}
	}
	only := func(want ...string) func() error {
		return func() error {
			got, err := hits(ctx, askTCP, addr, 12)
			if err != nil {
				return err
			}
			for _, w := range want {
				if got[w] == 0 {
					return fmt.Errorf("%s got no traffic: %v", w, got)
				}
			}
			if len(got) != len(want) {
				return fmt.Errorf("traffic went to %v, want only %v", got, want)
			}
			return nil
		}
	}
	// One terminating, one ready: only the ready one.
	graceful("term-1")
	waitFor(t, 15*time.Second, "terminating pod leaves rotation while another is ready", only("term-2"))
	// Both terminating (still serving): fall back to them rather than reject.
	graceful("term-2")
	waitFor(t, 15*time.Second, "fallback to serving terminating endpoints", only("term-1", "term-2"))

	// 5,000 endpoints in five slices written directly.
	_, err := tb.Client.CoreV1().Services(ns).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "big"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.Background()
		_ = tb.Client.CoreV1().Services(ns).Delete(bg, "big", metav1.DeleteOptions{})
		_ = tb.Client.DiscoveryV1().EndpointSlices(ns).DeleteCollection(bg, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=big"})
	})
	for s := range 5 {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%d", s), Labels: map[string]string{
				discoveryv1.LabelServiceName: "big", discoveryv1.LabelManagedBy: "e2e.bridge-agent",
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		}
		for i := range 1000 {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.251.%d.%d", s*4+i/250, 1+i%250)}})
		}
		if _, err := tb.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if _, err := a.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool {
		s := findService(st, ns, "big")
		return s != nil && len(s.Ports[0].Endpoints) == 5000 && st.LastSync.Error == ""
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("5,000-endpoint service in the snapshot after %v", time.Since(start).Round(time.Millisecond))
	// Other services keep being programmed.
	other := createService(ctx, t, ns, "other", v1.ProtocolTCP, 80, "http", sel)
	otherAddr := net.JoinHostPort(other.Spec.ClusterIPs[0], "80")
	took := waitFor(t, 15*time.Second, "a Service created beside the large one", func() error { _, err := askTCP(ctx, otherAddr); return err })
	t.Logf("new service reachable %v after creation, beside 5,000 endpoints", took.Round(time.Millisecond))
	if n := m.dnatTargets(ctx, t); n < 5000 {
		t.Errorf("want at least 5,000 endpoint translations, got %d", n)
	}
}

// TestProxyUDPConntrack: a UDP client that keeps its source port (one
// conntrack entry) follows the Service when its endpoint goes away, and
// when the Service goes from no endpoints to one.
func TestProxyUDPConntrack(t *testing.T) {
	requireTestbed(t)
	forEachMode(t, "udpct", testProxyUDPConntrack)
}

func testProxyUDPConntrack(t *testing.T, m proxyMode, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	sel := map[string]string{"app": "udpct"}
	port := []testbed.Port{{Name: "dns", Port: 5353, Protocol: "UDP"}}
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "u-1", Node: 1, Labels: sel, Ports: port, Ready: true})
	svc := createService(ctx, t, ns, "u", v1.ProtocolUDP, 53, "dns", sel)
	a := newAgent(t, true, m.configure)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	pc, err := tb.ListenPacket(tb.VMNetns, "udp", "10.250.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := &net.UDPAddr{IP: net.ParseIP(svc.Spec.ClusterIPs[0]), Port: 53}
	ask := func() (string, error) {
		if _, err := pc.WriteTo([]byte("who"), dst); err != nil {
			return "", err
		}
		_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 128)
		n, _, err := pc.ReadFrom(buf)
		return string(buf[:n]), err
	}
	answeredBy := func(want string) func() error {
		return func() error {
			got, err := ask()
			if err == nil && got != want {
				err = fmt.Errorf("answered by %q, want %q", got, want)
			}
			return err
		}
	}
	waitFor(t, 20*time.Second, "u-1 answers", answeredBy("u-1"))

	// Replace the endpoint: same client socket, new pod.
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "u-2", Node: 2, Labels: sel, Ports: port, Ready: true})
	if err := tb.DeletePod(ctx, ns, "u-1"); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 3*time.Second, "flow moves to u-2 after u-1 is deleted", answeredBy("u-2"))
	t.Logf("UDP flow followed the endpoint change in %v", took.Round(time.Millisecond))

	// N -> 0 -> N.
	if err := tb.DeletePod(ctx, ns, "u-2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "no endpoints: rejected", func() error {
		if _, err := ask(); err == nil {
			return errors.New("still answered")
		}
		return nil
	})
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "u-3", Node: 1, Labels: sel, Ports: port, Ready: true})
	took = waitFor(t, 3*time.Second, "flow reaches u-3 after 0 -> 1 endpoints", answeredBy("u-3"))
	t.Logf("UDP flow recovered from 0 endpoints in %v", took.Round(time.Millisecond))

	// Programming latency comes from the EndpointSlices' trigger-time
	// annotation, which the controller writes with its updates.
	waitFor(t, 10*time.Second, "network programming latency recorded", func() error {
		_, body, err := httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "bridge_agent_network_programming_duration_seconds_count ") {
				if strings.HasSuffix(l, " 0") {
					return fmt.Errorf("%s", l)
				}
				return nil
			}
		}
		return errors.New("metric missing")
	})
}

// TestProxyMultiPort: one Service, two named ports of different protocols,
// each resolved to the pods' own container port by name.
func TestProxyMultiPort(t *testing.T) {
	requireTestbed(t)
	forEachMode(t, "multi", testProxyMultiPort)
}

func testProxyMultiPort(t *testing.T, m proxyMode, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	sel := map[string]string{"app": "multi"}
	// The two pods name the same ports but listen on different numbers.
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "m-1", Node: 1, Labels: sel, Ready: true,
		Ports: []testbed.Port{{Name: "web", Port: 8080, Protocol: "TCP"}, {Name: "dns", Port: 5353, Protocol: "UDP"}}})
	createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "m-2", Node: 2, Labels: sel, Ready: true,
		Ports: []testbed.Port{{Name: "web", Port: 9090, Protocol: "TCP"}, {Name: "dns", Port: 6363, Protocol: "UDP"}}})
	svc := createService(ctx, t, ns, "multi", v1.ProtocolTCP, 80, "web", sel)
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: v1.ProtocolUDP})
	if _, err := tb.Client.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, true, m.configure)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, ip := range svc.Spec.ClusterIPs {
		for _, c := range []struct {
			port string
			ask  func(context.Context, string) (string, error)
		}{{"80", askTCP}, {"53", askUDP}} {
			addr := net.JoinHostPort(ip, c.port)
			waitFor(t, 20*time.Second, "both pods answer on "+addr, func() error {
				got, err := hits(ctx, c.ask, addr, 20)
				if err != nil || got["m-1"] == 0 || got["m-2"] == 0 {
					return fmt.Errorf("%v %v", got, err)
				}
				return nil
			})
		}
	}
}

// TestProxyModeSwitch: an agent restarted in the other proxy mode takes over
// the Services and removes the first backend's rules once its own are in
// place; the Service answers throughout.
func TestProxyModeSwitch(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	const ns = "switch"
	sel := map[string]string{"app": "switch"}
	createPod(ctx, t, httpPod(ns, "sw-1", 1, sel))
	svc := createService(ctx, t, ns, "sw", v1.ProtocolTCP, 80, "http", sel)
	addr := net.JoinHostPort(svc.Spec.ClusterIPs[0], "80")

	ours := func() (iptables, nftables bool) {
		for _, save := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
			if strings.Contains(vmExec(ctx, t, save), "BRIDGE-") {
				iptables = true
			}
		}
		return iptables, strings.Contains(vmExec(ctx, t, "nft", "list", "tables"), "bridge-agent")
	}
	var prev *testbed.Agent
	for i, m := range []proxyMode{
		{name: "iptables", mode: "iptables", variant: "legacy"},
		{name: "nftables", mode: "nftables"},
		{name: "iptables", mode: "iptables", variant: "nft"},
	} {
		if prev != nil {
			if err := prev.Stop(); err != nil {
				t.Fatal(err)
			}
			if _, err := askTCP(ctx, addr); err != nil {
				t.Errorf("step %d: Service down while no agent runs: %v", i, err)
			}
		}
		a := newAgent(t, true, m.configure)
		if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, m.name+": Service answers", func() error { _, err := askTCP(ctx, addr); return err })
		waitFor(t, 5*time.Second, m.name+": only its own rules left", func() error {
			ipt, nft := ours()
			if ipt != (m.mode == "iptables") || nft != (m.mode == "nftables") {
				return fmt.Errorf("iptables rules of ours: %v, nftables table: %v", ipt, nft)
			}
			return nil
		})
		prev = a
	}
}
