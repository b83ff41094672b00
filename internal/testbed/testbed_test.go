package testbed

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bridge-agent/bridge-agent/deploy"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces")
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// rootNetState captures the root network namespace's configuration.
func rootNetState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, argv := range [][]string{
		{"ip", "addr"}, {"ip", "route"}, {"ip", "-6", "route"}, {"ip", "rule"}, {"ip", "-6", "rule"},
		{"sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"},
		{"nft", "list", "ruleset"},
	} {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(argv, " "), out)
	}
	return b.String()
}

// sliceEndpoints returns address -> ready of the EndpointSlices of a
// Service.
func sliceEndpoints(ctx context.Context, c kubernetes.Interface, ns, svc string) (map[string]bool, error) {
	list, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc,
	})
	if err != nil {
		return nil, err
	}
	eps := map[string]bool{}
	for _, s := range list.Items {
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				eps[a] = ep.Conditions.Ready != nil && *ep.Conditions.Ready
			}
		}
	}
	return eps, nil
}

// waitSlices polls the Service's EndpointSlices until ok accepts them.
func waitSlices(t *testing.T, ctx context.Context, c kubernetes.Interface, ns, svc, what string, ok func(map[string]bool) bool) {
	t.Helper()
	start := time.Now()
	var eps map[string]bool
	var err error
	for time.Since(start) < 20*time.Second {
		eps, err = sliceEndpoints(ctx, c, ns, svc)
		if err == nil && ok(eps) {
			t.Logf("endpointslices %s after %v: %v", what, time.Since(start).Round(time.Millisecond), eps)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("endpointslices of %s/%s never %s: %v (err %v)", ns, svc, what, eps, err)
}

func readTCP(ctx context.Context, tb *Testbed, fromNetns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := tb.DialContext(fromNetns)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func readUDP(ctx context.Context, tb *Testbed, fromNetns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := tb.DialContext(fromNetns)(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func TestTestbed(t *testing.T) {
	requireRoot(t)
	before := rootNetState(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	begin := time.Now()
	tb, err := Start(ctx, Options{Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start took %v", time.Since(begin).Round(time.Millisecond))
	stopped := false
	defer func() {
		if !stopped {
			_ = tb.Stop()
		}
	}()
	c := tb.Client

	t.Run("Topology", func(t *testing.T) {
		if len(tb.Nodes) != 2 {
			t.Fatalf("nodes: %+v", tb.Nodes)
		}
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range nodes.Items {
			want := tb.Nodes[i]
			if n.Name != want.Name || !slices.Equal(n.Spec.PodCIDRs, want.PodCIDRs) ||
				n.Labels["topology.kubernetes.io/zone"] != want.Zone || len(n.Status.Addresses) != 3 {
				t.Errorf("node %d: %+v / %+v", i, n.Spec, n.Status.Addresses)
			}
		}
		// Sysctls are set inside the namespaces (the root one is checked
		// at the end).
		out, err := tb.Exec(ctx, tb.Nodes[1].Netns, "sysctl", "-n", "net.ipv4.ip_forward",
			"net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.accept_dad")
		if err != nil || strings.Fields(string(out))[0] != "1" || strings.Fields(string(out))[1] != "1" ||
			strings.Fields(string(out))[2] != "0" {
			t.Errorf("node-2 sysctls: %q, %v", out, err)
		}
		// The VM has nothing but its LAN: no route to pods or services.
		for _, fam := range []string{"-4", "-6"} {
			out, err := tb.Exec(ctx, tb.VMNetns, "ip", fam, "route", "show", "table", "main")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if !strings.HasPrefix(line, "10.250.0.0/24 ") && !strings.HasPrefix(line, "fd00:250::/64 ") &&
					!strings.HasPrefix(line, "fe80::/64 ") {
					t.Errorf("unexpected route in vm netns: %q", line)
				}
			}
		}
		if _, err := readTCP(ctx, tb, tb.VMNetns, net.JoinHostPort(tb.Nodes[0].IPv4, "1")); err == nil {
			t.Error("unexpected TCP answer from node")
		}
	})

	var pod1, pod2 Pod
	t.Run("EndpointSlices", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web"},
			Spec: corev1.ServiceSpec{
				Selector:       map[string]string{"app": "web"},
				IPFamilyPolicy: new(corev1.IPFamilyPolicyPreferDualStack),
				Ports: []corev1.ServicePort{
					{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
					{Name: "echo", Protocol: corev1.ProtocolUDP, Port: 7, TargetPort: intstr.FromInt32(7007)},
				},
			},
		}
		ports := []Port{{Name: "http", Port: 8080}, {Name: "echo", Port: 7007, Protocol: "UDP"}}
		var err error
		if pod1, err = tb.CreatePod(ctx, PodSpec{Namespace: "demo", Name: "web-1", Node: 1,
			Labels: map[string]string{"app": "web"}, Ports: ports, Ready: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if pod2, err = tb.CreatePod(ctx, PodSpec{Namespace: "demo", Name: "web-2", Node: 2,
			Labels: map[string]string{"app": "web"}, Ports: ports, Ready: true}); err != nil {
			t.Fatal(err)
		}
		t.Logf("pods: %+v %+v", pod1, pod2)
		waitSlices(t, ctx, c, "demo", "web", "list both pods ready", func(eps map[string]bool) bool {
			return eps[pod1.IPv4] && eps[pod1.IPv6] && eps[pod2.IPv4] && eps[pod2.IPv6]
		})

		// Node 2 reaches the pod on node 1 directly (pod routes).
		for _, ip := range []string{pod1.IPv4, pod1.IPv6} {
			if got, err := readTCP(ctx, tb, tb.Nodes[1].Netns, net.JoinHostPort(ip, "8080")); err != nil || got != "web-1" {
				t.Errorf("tcp %s from node-2: %q, %v", ip, got, err)
			}
			if got, err := readUDP(ctx, tb, tb.Nodes[1].Netns, net.JoinHostPort(ip, "7007")); err != nil || got != "web-1" {
				t.Errorf("udp %s from node-2: %q, %v", ip, got, err)
			}
		}
		// Pod to pod across nodes.
		if got, err := readTCP(ctx, tb, pod2.Netns, net.JoinHostPort(pod1.IPv6, "8080")); err != nil || got != "web-1" {
			t.Errorf("tcp from pod web-2 to web-1: %q, %v", got, err)
		}

		if err := tb.SetPodReady(ctx, "demo", "web-1", false); err != nil {
			t.Fatal(err)
		}
		waitSlices(t, ctx, c, "demo", "web", "show web-1 not ready", func(eps map[string]bool) bool {
			r1, ok := eps[pod1.IPv4]
			return ok && !r1 && eps[pod2.IPv4]
		})
		if err := tb.DeletePod(ctx, "demo", "web-1"); err != nil {
			t.Fatal(err)
		}
		waitSlices(t, ctx, c, "demo", "web", "drop web-1", func(eps map[string]bool) bool {
			_, ok4 := eps[pod1.IPv4]
			_, ok6 := eps[pod1.IPv6]
			return !ok4 && !ok6 && eps[pod2.IPv4]
		})
		gone, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := readTCP(gone, tb, tb.Nodes[1].Netns, net.JoinHostPort(pod1.IPv4, "8080")); err == nil {
			t.Error("deleted pod still answers")
		}
	})

	t.Run("DNS", func(t *testing.T) {
		dnsPod, err := c.CoreV1().Pods("kube-system").Get(ctx, "coredns-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		corednsIP := dnsPod.Status.PodIP
		waitSlices(t, ctx, c, "kube-system", "kube-dns", "list coredns ready", func(eps map[string]bool) bool {
			return eps[corednsIP]
		})
		from := pod2.Netns
		r, err := tb.DNSQuery(ctx, from, corednsIP, "kubernetes.default.svc.cluster.local", dns.TypeA)
		if err != nil {
			t.Fatal(err)
		}
		if got := Answers(r); !slices.Equal(got, []string{"10.96.0.1"}) {
			t.Errorf("kubernetes.default: %v", got)
		}
		r, err = tb.DNSQuery(ctx, from, corednsIP, "web.demo.svc.cluster.local", dns.TypeA)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := c.CoreV1().Services("demo").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := Answers(r); !slices.Equal(got, []string{svc.Spec.ClusterIP}) {
			t.Errorf("web.demo: %v, want %s", got, svc.Spec.ClusterIP)
		}

		q0 := tb.UpstreamQueries()
		out, err := tb.Exec(ctx, from, "dig", "+short", "+time=2", "+tries=2", "@"+corednsIP, "www.example.test", "A")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != UpstreamTestIPv4 {
			t.Errorf("dig www.example.test A: %q", got)
		}
		r, err = tb.DNSQuery(ctx, from, net.JoinHostPort(corednsIP, "53"), "www.example.test", dns.TypeAAAA)
		if err != nil {
			t.Fatal(err)
		}
		if got := Answers(r); !slices.Equal(got, []string{UpstreamTestIPv6}) {
			t.Errorf("www.example.test AAAA: %v", got)
		}
		r, err = tb.DNSQuery(ctx, from, corednsIP, "nope.example.test", dns.TypeA)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeNameError {
			t.Errorf("nope.example.test: rcode %s", dns.RcodeToString[r.Rcode])
		}
		if n := tb.UpstreamQueries() - q0; n < 3 {
			t.Errorf("upstream saw %d queries, want >= 3", n)
		}
		// The upstream server is reachable from the VM too.
		r, err = tb.DNSQuery(ctx, tb.VMNetns, tb.UpstreamDNSIP, "www.example.test", dns.TypeA)
		if err != nil || !slices.Equal(Answers(r), []string{UpstreamTestIPv4}) {
			t.Errorf("upstream from vm: %v, %v", r, err)
		}
	})

	t.Run("AgentRBAC", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", tb.AgentKubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Dial = tb.DialContext(tb.VMNetns) // over the LAN, as the agent does
		ac, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ac.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list services: %v", err)
		}
		if _, err := ac.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list endpointslices: %v", err)
		}
		if _, err := ac.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list nodes: %v", err)
		}
		if _, err := ac.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{}); err != nil {
			t.Errorf("list servicecidrs: %v", err)
		}
		if _, err := ac.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list pods: want forbidden, got %v", err)
		}
		if _, err := ac.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list secrets: want forbidden, got %v", err)
		}
		_, err = ac.CoreV1().Services("demo").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "evil"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 1}}},
		}, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("create service: want forbidden, got %v", err)
		}
	})

	t.Run("APIServerRestart", func(t *testing.T) {
		if err := tb.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		_, err := c.CoreV1().Namespaces().List(sctx, metav1.ListOptions{})
		scancel()
		if err == nil {
			t.Error("API server still answers after StopAPIServer")
		}
		begin := time.Now()
		if err := tb.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("API server restart took %v", time.Since(begin).Round(time.Millisecond))
		if _, err := c.CoreV1().Services("demo").Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Fatalf("data lost across restart: %v", err)
		}
		// The controller manager follows the restarted API server.
		p3, err := tb.CreatePod(ctx, PodSpec{Namespace: "demo", Name: "web-3", Node: 1,
			Labels: map[string]string{"app": "web"}, Ports: []Port{{Name: "http", Port: 8080}}, Ready: true})
		if err != nil {
			t.Fatal(err)
		}
		waitSlices(t, ctx, c, "demo", "web", "add web-3 after restart", func(eps map[string]bool) bool {
			return eps[p3.IPv4] && eps[p3.IPv6]
		})
	})

	t.Run("AddDeleteNode", func(t *testing.T) {
		nd, err := tb.AddNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if nd.Name != "node-3" {
			t.Fatalf("added %+v", nd)
		}
		p, err := tb.CreatePod(ctx, PodSpec{Namespace: "demo", Name: "web-4", Node: 3,
			Labels: map[string]string{"app": "web"}, Ports: []Port{{Name: "http", Port: 8080}}, Ready: true})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readTCP(ctx, tb, tb.Nodes[0].Netns, net.JoinHostPort(p.IPv4, "8080")); err != nil || got != "web-4" {
			t.Errorf("tcp from node-1 to pod on node-3: %q, %v", got, err)
		}
		if got, err := readTCP(ctx, tb, p.Netns, net.JoinHostPort(pod2.IPv6, "8080")); err != nil || got != "web-2" {
			t.Errorf("tcp from pod on node-3 to node-2: %q, %v", got, err)
		}
		waitSlices(t, ctx, c, "demo", "web", "add web-4", func(eps map[string]bool) bool { return eps[p.IPv4] })
		if err := tb.DeleteNode(ctx, 3); err != nil {
			t.Fatal(err)
		}
		waitSlices(t, ctx, c, "demo", "web", "drop web-4", func(eps map[string]bool) bool {
			_, ok := eps[p.IPv4]
			return !ok
		})
		if _, err := c.CoreV1().Nodes().Get(ctx, "node-3", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("node-3 object: %v", err)
		}
	})

	prefix, stateDir, workDir := tb.Prefix, tb.stateDir, tb.WorkDir
	stopped = true
	if err := tb.Stop(); err != nil {
		t.Fatal(err)
	}
	names, err := listNetns(ctx, prefix)
	if err != nil || len(names) > 0 {
		t.Errorf("namespaces left after Stop: %v (%v)", names, err)
	}
	for _, p := range []string{stateDir, workDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after Stop (%v)", p, err)
		}
	}
	if after := rootNetState(t); after != before {
		t.Errorf("root network namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestCleanupStale fakes the leftovers of a crashed run and checks that
// CleanupStale removes them.
func TestCleanupStale(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	prefix := "zz" + randomHex(2)
	ns := prefix + "-cp"
	if err := addNetns(ctx, ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = deleteNetns(ctx, ns) }()
	sleeper := netnsCommand(ns, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(exited) }()
	defer func() { _ = sleeper.Process.Kill() }()

	workDir := t.TempDir() + "/work"
	if err := os.Mkdir(workDir, 0o755); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(stateRoot, prefix)
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// An owner that cannot be alive: our pid with a wrong start time.
	if err := os.WriteFile(filepath.Join(stateDir, "owner"), fmt.Appendf(nil, "%d 1\n", os.Getpid()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stateDir, "workdir"), []byte(workDir), 0o644); err != nil {
		t.Fatal(err)
	}
	// Wait until the sleeper has entered the namespace.
	for i := 0; len(netnsPids(ctx, ns)) == 0 && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}

	if err := CleanupStale(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process in stale namespace not killed")
	}
	if names, _ := listNetns(ctx, prefix); len(names) > 0 {
		t.Errorf("stale namespaces left: %v", names)
	}
	for _, p := range []string{stateDir, workDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left (%v)", p, err)
		}
	}
}

func TestDecodeRBAC(t *testing.T) {
	objs, err := decodeRBAC([]byte("# comment\n---\n" + string(mustReadRBAC(t))))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.namespaces) != 1 || len(objs.serviceAccounts) != 1 || len(objs.clusterRoles) != 1 ||
		len(objs.clusterRoleBindings) != 1 {
		t.Fatalf("decoded %+v", objs)
	}
	var rules []string
	for _, r := range objs.clusterRoles[0].Rules {
		rules = append(rules, fmt.Sprint(r.APIGroups, r.Resources, r.Verbs))
	}
	want := []string{"[] [services nodes] [get list watch]", "[discovery.k8s.io] [endpointslices] [get list watch]",
		"[networking.k8s.io] [servicecidrs] [get list watch]"}
	if !slices.Equal(rules, want) {
		t.Errorf("rules %q, want %q", rules, want)
	}
	// The node route table: read only, and only those two objects.
	if len(objs.roles) != 1 || len(objs.roleBindings) != 1 {
		t.Fatalf("decoded %d roles, %d role bindings, want 1 each", len(objs.roles), len(objs.roleBindings))
	}
	rules = nil
	for _, r := range objs.roles[0].Rules {
		rules = append(rules, fmt.Sprint(r.APIGroups, r.Resources, r.ResourceNames, r.Verbs))
	}
	want = []string{"[] [configmaps] [bridge-agent-node-routes] [get list watch]",
		"[coordination.k8s.io] [leases] [bridge-agent-node-routes] [get]"}
	if !slices.Equal(rules, want) {
		t.Errorf("node route table rules %q, want %q", rules, want)
	}
	w, err := decodeRBAC(deploy.NodeRoutesWriter)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.configMaps) != 1 || len(w.leases) != 1 || len(w.roles) != 1 || len(w.clusterRoles) != 0 {
		t.Fatalf("writer manifest decoded %+v", w)
	}
	for _, r := range w.roles[0].Rules {
		if !slices.Equal(r.ResourceNames, []string{"bridge-agent-node-routes"}) || slices.Contains(r.Verbs, "create") {
			t.Errorf("writer rule not scoped to the table's objects: %+v", r)
		}
	}
	if _, err := decodeRBAC([]byte("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n")); err == nil {
		t.Error("unsupported kind accepted")
	}
}

func mustReadRBAC(t *testing.T) []byte {
	t.Helper()
	p := findRepoFile("deploy/rbac.yaml")
	if p == "" {
		t.Fatal("deploy/rbac.yaml not found")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
