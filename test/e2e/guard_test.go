package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networking "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
	"github.com/bridge-agent/bridge-agent/internal/routes"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// guardResponder serves, in netns on addr, one line with name on every TCP
// connection, as the sandbox's pods do, so an answer names who answered.
func guardResponder(t *testing.T, netns, addr, name string) {
	t.Helper()
	ln, err := tb.Listen(netns, "tcp", addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, netns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintln(c, name)
			c.Close()
		}
	}()
}

// guardHost adds a sandbox host and runs ip commands in it.
func guardHost(ctx context.Context, t *testing.T, name string, cmds ...[]string) testbed.Host {
	t.Helper()
	h, err := tb.AddHost(ctx, name, testbed.HostOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		if out, err := tb.Exec(ctx, h.Netns, c...); err != nil {
			t.Fatalf("%s: %v: %v: %s", name, c, err, out)
		}
	}
	return h
}

// guardNode creates a Ready Node with one InternalIP and one pod CIDR, as a
// kubelet (or whoever holds a node credential) would.
func guardNode(ctx context.Context, t *testing.T, name, internalIP, podCIDR string) {
	t.Helper()
	created, err := tb.Client.CoreV1().Nodes().Create(ctx, &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s with pod CIDR %s: %v", name, podCIDR, err)
	}
	t.Cleanup(func() { _ = tb.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	now := metav1.Now()
	created.Status = v1.NodeStatus{
		Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: internalIP}},
		Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now}},
		Capacity: v1.ResourceList{v1.ResourcePods: resource.MustParse("10")},
	}
	if _, err := tb.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("node %s status: %v", name, err)
	}
}

// guardService creates a single-stack Service with the given ClusterIP
// (empty: allocated) on port 80 to the pods' "http" port; the test's end
// deletes it.
func guardService(ctx context.Context, t *testing.T, ns, name, clusterIP string, sel map[string]string) (*v1.Service, error) {
	t.Helper()
	spec := v1.ServiceSpec{
		Selector:       sel,
		IPFamilyPolicy: ptr.To(v1.IPFamilyPolicySingleStack),
		Ports:          []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: v1.ProtocolTCP}},
	}
	if clusterIP != "" {
		spec.ClusterIP, spec.ClusterIPs = clusterIP, []string{clusterIP}
	}
	s, err := tb.Client.CoreV1().Services(ns).Create(ctx, &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create Service %s/%s (clusterIP %q): %w", ns, name, clusterIP, err)
	}
	t.Cleanup(func() { _ = tb.Client.CoreV1().Services(ns).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return s, nil
}

// TestHostileCluster: whoever controls Nodes, Services and ServiceCIDRs
// cannot redirect the VM's own traffic. Nodes claim pod CIDRs over half of
// IPv4, a public resolver, the metadata address, the VM's gateway,
// loopback and multicast, and one Node claims the VM's own address; a
// ServiceCIDR covers the VM's LAN, with Services on the VM's gateway and
// on another LAN host. None is installed, each is in `status -o json` with
// its reason, the VM's connections to its gateway, a LAN host and the
// metadata address reach the same responders as before, and a legitimate
// Service and pod route keep working throughout.
func TestHostileCluster(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// The VM's surroundings, inside the sandbox: a gateway (the VM has no
	// default route of its own), behind it a stand-in metadata service at
	// 169.254.169.254, and another host on the LAN. Each answers its name.
	meta := guardHost(ctx, t, "gmeta", []string{"ip", "addr", "add", "169.254.169.254/32", "dev", "lo"})
	gw := guardHost(ctx, t, "ggw",
		[]string{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		[]string{"ip", "route", "add", "169.254.169.254/32", "via", meta.IPv4})
	lanHost := guardHost(ctx, t, "glan")
	evil := guardHost(ctx, t, "gevil")
	guardResponder(t, gw.Netns, gw.IPv4+":80", "gateway")
	guardResponder(t, meta.Netns, "169.254.169.254:80", "metadata")
	guardResponder(t, lanHost.Netns, lanHost.IPv4+":80", "lan host")
	vmExec(ctx, t, "ip", "route", "add", "default", "via", gw.IPv4, "proto", "static")
	t.Cleanup(func() {
		_, _ = tb.Exec(context.Background(), tb.VMNetns, "ip", "route", "del", "default", "via", gw.IPv4, "proto", "static")
	})
	targets := map[string]string{
		gw.IPv4 + ":80":      "gateway",
		"169.254.169.254:80": "metadata",
		lanHost.IPv4 + ":80": "lan host",
	}
	checkTargets := func(when string) {
		t.Helper()
		for addr, want := range targets {
			if got, err := askTCP(ctx, addr); err != nil || got != want {
				t.Errorf("%s: VM to %s: got %q (%v), want %q", when, addr, got, err, want)
			}
		}
	}
	checkTargets("before the agent")

	// A legitimate Service and pod, and the agent.
	const ns = "guard"
	sel := map[string]string{"app": "guard-web"}
	pod := createPod(ctx, t, httpPod(ns, "guard-web", 1, sel))
	web, err := guardService(ctx, t, ns, "web", "", sel)
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, true, nil)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	legit := func(when string) {
		t.Helper()
		waitFor(t, 10*time.Second, when+": the legitimate Service and pod route", func() error {
			if got, err := askTCP(ctx, web.Spec.ClusterIP+":80"); err != nil || got != pod.Name {
				return fmt.Errorf("Service %s: got %q, %v", web.Spec.ClusterIP, got, err)
			}
			if got, err := rtAsk(ctx, pod.IPv4); err != nil || got != pod.Name {
				return fmt.Errorf("pod %s: got %q, %v", pod.IPv4, got, err)
			}
			return nil
		})
	}
	legit("agent started")
	checkTargets("agent started")
	before := rtOurs(ctx, t)

	// The hostile cluster.
	vm := tb.VMIPv4
	hostile := []struct {
		node, internalIP, podCIDR string
		reason                    routes.Reason
	}{
		{"hostile-half", evil.IPv4, "0.0.0.0/1", routes.ReasonSpecialRange},
		{"hostile-resolver", evil.IPv4, "8.8.8.8/32", routes.ReasonNotAllowed},
		{"hostile-metadata", evil.IPv4, "169.254.169.254/32", routes.ReasonSpecialRange},
		{"hostile-gateway", evil.IPv4, gw.IPv4 + "/32", routes.ReasonHostGateway},
		{"hostile-loopback", evil.IPv4, "127.0.0.0/8", routes.ReasonSpecialRange},
		{"hostile-multicast", evil.IPv4, "224.0.0.0/4", routes.ReasonSpecialRange},
		{"hostile-self", vm, "10.244.200.0/24", routes.ReasonLocalNode},
	}
	for _, h := range hostile {
		guardNode(ctx, t, h.node, h.internalIP, h.podCIDR)
	}
	// A ServiceCIDR over the VM's LAN (ready, as the cluster's ServiceCIDR
	// controller would mark it), and Services on the VM's gateway and on
	// another LAN host.
	const lanCIDR = "10.250.0.0/24"
	sc, err := tb.Client.NetworkingV1().ServiceCIDRs().Create(ctx, &networking.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: "hostile-lan"},
		Spec:       networking.ServiceCIDRSpec{CIDRs: []string{lanCIDR}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create ServiceCIDR: %v", err)
	}
	t.Cleanup(func() {
		_ = tb.Client.NetworkingV1().ServiceCIDRs().Delete(context.Background(), "hostile-lan", metav1.DeleteOptions{})
	})
	sc.Status.Conditions = []metav1.Condition{{Type: networking.ServiceCIDRConditionReady, Status: metav1.ConditionTrue,
		Reason: "Ready", LastTransitionTime: metav1.Now()}}
	if _, err := tb.Client.NetworkingV1().ServiceCIDRs().UpdateStatus(ctx, sc, metav1.UpdateOptions{}); err != nil {
		t.Logf("mark ServiceCIDR ready: %v", err)
	}
	// The API server allocates from a ServiceCIDR once it has seen it.
	created := map[string]bool{}
	waitFor(t, 20*time.Second, "Services in the LAN ServiceCIDR", func() error {
		for name, ip := range map[string]string{"gateway": gw.IPv4, "lanhost": lanHost.IPv4} {
			if !created[name] {
				if _, err := guardService(ctx, t, ns, name, ip, sel); err != nil {
					return err
				}
				created[name] = true
			}
		}
		return nil
	})

	// Every refusal in status -o json, with its reason.
	wantRoutes := map[string]string{}
	for _, h := range hostile {
		wantRoutes[h.node+" "+h.podCIDR] = string(h.reason)
	}
	wantGuard := map[string]string{
		"serviceCIDR " + lanCIDR:        "hostAddress",
		ns + "/gateway " + gw.IPv4:      "hostGateway",
		ns + "/lanhost " + lanHost.IPv4: "hostNetwork",
	}
	var last string
	st, err := a.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool {
		got := map[string]string{}
		for _, p := range rtStatus(t, st).Problems {
			got[p.Node+" "+p.CIDR.String()] = string(p.Reason)
		}
		if g := st.Guard; g != nil {
			for _, c := range g.RefusedServiceCIDRs {
				got["serviceCIDR "+c.CIDR.String()] = string(c.Reason)
			}
			for _, r := range g.RefusedClusterIPs {
				got[r.Service.String()+" "+r.IP.String()] = string(r.Reason)
			}
		}
		var missing []string
		for k, v := range wantRoutes {
			if got[k] != v {
				missing = append(missing, fmt.Sprintf("%s: %q, want %q", k, got[k], v))
			}
		}
		for k, v := range wantGuard {
			if got[k] != v {
				missing = append(missing, fmt.Sprintf("%s: %q, want %q", k, got[k], v))
			}
		}
		slices.Sort(missing)
		last = strings.Join(missing, "; ")
		return len(missing) == 0
	})
	if err != nil {
		// Go on: the packets below say what the missing refusals cost.
		t.Errorf("refusals in status: %s: %v", last, err)
	}
	if g := st.Guard; g == nil || g.Facts == nil || !slices.Contains(g.Facts.Gateways, netip.MustParseAddr(gw.IPv4)) ||
		!slices.Contains(g.Facts.Resolvers, netip.MustParseAddr(tb.UpstreamDNSIP)) || g.ServiceCIDRsFrom != "cluster" {
		t.Errorf("guard facts: %+v", st.Guard)
	}

	// Nothing hostile installed: no route of ours but the legitimate ones,
	// and the VM's traffic goes where it went.
	if got := rtOurs(ctx, t); !slices.Equal(got, before) {
		t.Errorf("routes of ours changed under the hostile cluster:\n%s\nwas:\n%s", strings.Join(got, "\n"), strings.Join(before, "\n"))
	}
	checkTargets("hostile cluster")
	legit("hostile cluster")
	// The proxy's rules name no refused address.
	rules := vmExec(ctx, t, "nft", "list", "table", "ip", "bridge-agent")
	for _, ip := range []string{gw.IPv4, lanHost.IPv4} {
		if strings.Contains(rules, ip+" ") {
			t.Errorf("the proxy's rules name the refused ClusterIP %s:\n%s", ip, rules)
		}
	}
	if !strings.Contains(rules, web.Spec.ClusterIP+" ") {
		t.Errorf("the proxy's rules lack the legitimate ClusterIP %s", web.Spec.ClusterIP)
	}
	// DNS answers no refused ClusterIP; the legitimate Service resolves.
	if r := dig(ctx, t, stubServer(a), "gateway."+ns+".svc.cluster.local", "A"); r.Status != "NXDOMAIN" {
		t.Errorf("DNS for the refused Service: %s", r)
	}
	if r := dig(ctx, t, stubServer(a), "web."+ns+".svc.cluster.local", "A"); !slices.Contains(r.Answer, "web."+ns+".svc.cluster.local. A "+web.Spec.ClusterIP) {
		t.Errorf("DNS for the legitimate Service: %s", r)
	}

	// The text status and the metrics say the same.
	out, err := a.Run(ctx, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		"! node hostile-half 0.0.0.0/1: specialRange",
		"! node hostile-gateway " + gw.IPv4 + "/32: hostGateway",
		"! service range " + lanCIDR + ": hostAddress",
		"! " + ns + "/gateway " + gw.IPv4 + ": hostGateway",
	} {
		if !strings.Contains(string(out), w) {
			t.Errorf("status text lacks %q:\n%s", w, out)
		}
	}
	_, metrics, err := httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		`bridge_agent_routes_problems{reason="specialRange"} 4`,
		`bridge_agent_routes_problems{reason="hostGateway"} 1`,
		`bridge_agent_guard_refused{kind="clusterIP",reason="hostGateway"} 1`,
		`bridge_agent_guard_refused{kind="serviceCIDR",reason="hostAddress"} 1`,
	} {
		if !strings.Contains(metrics, w) {
			t.Errorf("metrics lack %q", w)
		}
	}
	// One warning per refusal, not one per sync: after several periodic
	// checks the log holds each once.
	time.Sleep(2 * time.Second)
	logText, err := os.ReadFile(a.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"node=hostile-half", "ip=" + gw.IPv4} {
		if n := strings.Count(string(logText), w); n != 1 {
			t.Errorf("%s logged %d times, want once (when it was refused):\n%s", w, n, a.Log())
		}
	}

	// The host changes under a running agent: a Service's ClusterIP becomes
	// one of the VM's own addresses. The guard hears it from netlink (well
	// before the periodic check, proxy.syncPeriod 10s) and the VM's own
	// traffic to that address reaches the VM again, not the pod; when the
	// address goes, the Service works again.
	const ownIP = "10.96.250.250"
	if _, err := guardService(ctx, t, ns, "later", ownIP, sel); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the Service on "+ownIP, func() error {
		if got, err := askTCP(ctx, ownIP+":80"); err != nil || got != pod.Name {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})
	vmExec(ctx, t, "ip", "addr", "add", ownIP+"/32", "dev", "lo")
	t.Cleanup(func() {
		_, _ = tb.Exec(context.Background(), tb.VMNetns, "ip", "addr", "del", ownIP+"/32", "dev", "lo")
	})
	guardResponder(t, tb.VMNetns, ownIP+":80", "the VM itself")
	took := waitFor(t, 5*time.Second, "the VM's new address refused as a ClusterIP", func() error {
		st, err := a.Status(ctx)
		if err != nil {
			return err
		}
		for _, r := range st.Guard.RefusedClusterIPs {
			if r.IP.String() == ownIP && r.Reason == hostguard.ReasonHostAddress {
				return nil
			}
		}
		return fmt.Errorf("not refused: %+v", st.Guard.RefusedClusterIPs)
	})
	t.Logf("a new address of the VM refused as a ClusterIP %s after it appeared", took.Round(time.Millisecond))
	waitFor(t, 5*time.Second, "the VM's traffic to its own address", func() error {
		if got, err := askTCP(ctx, ownIP+":80"); err != nil || got != "the VM itself" {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})
	vmExec(ctx, t, "ip", "addr", "del", ownIP+"/32", "dev", "lo")
	waitFor(t, 5*time.Second, "the Service once the address is gone", func() error {
		if got, err := askTCP(ctx, ownIP+":80"); err != nil || got != pod.Name {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})

	// The hostile objects go: the refusals go with them, and the VM's traffic
	// still goes where it went.
	for _, h := range hostile {
		_ = tb.Client.CoreV1().Nodes().Delete(ctx, h.node, metav1.DeleteOptions{})
	}
	for _, n := range []string{"gateway", "lanhost"} {
		_ = tb.Client.CoreV1().Services(ns).Delete(ctx, n, metav1.DeleteOptions{})
	}
	_ = tb.Client.NetworkingV1().ServiceCIDRs().Delete(ctx, "hostile-lan", metav1.DeleteOptions{})
	if _, err := a.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool {
		return len(rtStatus(t, st).Problems) == 0 && st.Guard != nil && len(st.Guard.RefusedClusterIPs) == 0
	}); err != nil {
		t.Errorf("refusals after the hostile objects went: %v", err)
	}
	checkTargets("hostile objects removed")
	legit("hostile objects removed")
}
