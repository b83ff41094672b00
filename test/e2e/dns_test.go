package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// digResult is what dig printed: the header's status and the answer
// section's records as "owner TYPE rdata" (TTL and class dropped).
type digResult struct {
	Status string
	Answer []string
	Flags  string
}

// dig runs dig in the VM namespace against server and parses its output.
func dig(ctx context.Context, t *testing.T, server string, args ...string) digResult {
	t.Helper()
	argv := append([]string{"dig", "@" + server, "+noall", "+comments", "+answer", "+time=5", "+tries=1"}, args...)
	out := vmExec(ctx, t, argv...)
	var r digResult
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.Contains(line, "->>HEADER<<-"):
			if i := strings.Index(line, "status: "); i >= 0 {
				r.Status = strings.TrimSuffix(strings.Fields(line[i+len("status: "):])[0], ",")
			}
		case strings.HasPrefix(line, ";; flags:"):
			r.Flags = strings.TrimSpace(strings.SplitN(strings.TrimPrefix(line, ";; flags:"), ";", 2)[0])
		case line == "" || strings.HasPrefix(line, ";"):
		default:
			f := strings.Fields(line)
			if len(f) >= 5 {
				r.Answer = append(r.Answer, f[0]+" "+f[3]+" "+strings.Join(f[4:], " "))
			}
		}
	}
	if r.Status == "" {
		t.Fatalf("dig %v: no header in output:\n%s", args, out)
	}
	return r
}

func (r digResult) String() string { return r.Status + " " + fmt.Sprint(r.Answer) }

// stubServer is the agent's stub address as dig wants it.
func stubServer(a *testbed.Agent) string {
	return netip.MustParseAddrPort(a.Config.DNS.ListenAddress).Addr().String()
}

// TestDNS asks the agent's stub, with dig from the VM namespace, for every
// kind of cluster name, for names it forwards to the cluster's CoreDNS and
// to the VM's own resolver, and checks how it behaves when those fail.
func TestDNS(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const ns = "dnse2e"

	web := createService(ctx, t, ns, "web", v1.ProtocolTCP, 80, "http", map[string]string{"app": "dns-web"})
	webPod := createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "web-1", Labels: map[string]string{"app": "dns-web"},
		Ports: []testbed.Port{{Name: "http", Port: 8080}}, Ready: true})
	db0 := createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "db-0", Node: 1, Hostname: "db-0", Subdomain: "db",
		Labels: map[string]string{"app": "dns-db"}, Ports: []testbed.Port{{Name: "pg", Port: 5432}}, Ready: true})
	db1 := createPod(ctx, t, testbed.PodSpec{Namespace: ns, Name: "db-1", Node: 2, Hostname: "db-1", Subdomain: "db",
		Labels: map[string]string{"app": "dns-db"}, Ports: []testbed.Port{{Name: "pg", Port: 5432}}, Ready: true})
	createRaw(ctx, t, ns, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: v1.ServiceSpec{
			ClusterIP: v1.ClusterIPNone, Selector: map[string]string{"app": "dns-db"},
			Ports: []v1.ServicePort{{Name: "pg", Port: 5432, TargetPort: intstr.FromString("pg"), Protocol: v1.ProtocolTCP}},
		},
	})
	createRaw(ctx, t, ns, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ext"},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "www.example.test"},
	})

	a := newAgent(t, true, func(c *config.Config) {
		c.DNS.Timeout.Duration = 500 * time.Millisecond
		c.Proxy.SyncPeriod.Duration = 2 * time.Second // how often the resolver wiring is checked
	})
	original := testbed.HostResolvConf
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	server := stubServer(a)
	webV4, webV6 := web.Spec.ClusterIPs[0], ""
	if len(web.Spec.ClusterIPs) > 1 {
		webV6 = web.Spec.ClusterIPs[1]
	}
	full := "web." + ns + ".svc.cluster.local."
	waitFor(t, 60*time.Second, "headless db has both pods in DNS", func() error {
		r := dig(ctx, t, server, "db."+ns+".svc", "A")
		if len(r.Answer) != 2 {
			return fmt.Errorf("db: %s", r)
		}
		return nil
	})

	// A pod name in a namespace CoreDNS has known since it started (it
	// answers pod names only in namespaces it has seen).
	pod5 := "10-244-1-5.default.pod.cluster.local."
	for _, tc := range []struct {
		name string
		args []string
		want digResult
	}{
		{"service A, full name", []string{full, "A"}, digResult{Status: "NOERROR", Answer: []string{full + " A " + webV4}}},
		{"service A, short name keeps the asked owner", []string{"Web." + ns + ".SVC", "A"},
			digResult{Status: "NOERROR", Answer: []string{"Web." + ns + ".SVC. A " + webV4}}},
		{"service AAAA over TCP", []string{"+tcp", full, "AAAA"}, digResult{Status: "NOERROR", Answer: []string{full + " AAAA " + webV6}}},
		{"SRV of a named port", []string{"_http._tcp.web." + ns + ".svc.cluster.local", "SRV"},
			digResult{Status: "NOERROR", Answer: []string{"_http._tcp." + full + " SRV 0 100 80 " + full}}},
		{"headless A: ready endpoints", []string{"db." + ns + ".svc.cluster.local", "A"},
			digResult{Status: "NOERROR", Answer: sortedCopy([]string{
				"db." + ns + ".svc.cluster.local. A " + db0.IPv4, "db." + ns + ".svc.cluster.local. A " + db1.IPv4})}},
		{"headless endpoint hostname", []string{"db-1.db." + ns + ".svc", "A"},
			digResult{Status: "NOERROR", Answer: []string{"db-1.db." + ns + ".svc. A " + db1.IPv4}}},
		{"ExternalName: CNAME first, then the target", []string{"ext." + ns + ".svc.cluster.local", "A"},
			digResult{Status: "NOERROR", Answer: []string{
				"ext." + ns + ".svc.cluster.local. CNAME www.example.test.", "www.example.test. A " + testbed.UpstreamTestIPv4}}},
		{"PTR of a ClusterIP", []string{"-x", webV4}, digResult{Status: "NOERROR", Answer: []string{reverse(webV4) + " PTR " + full}}},
		{"PTR of an IPv6 ClusterIP", []string{"-x", webV6}, digResult{Status: "NOERROR", Answer: []string{reverse(webV6) + " PTR " + full}}},
		{"unknown service is NXDOMAIN", []string{"nope." + ns + ".svc.cluster.local", "A"}, digResult{Status: "NXDOMAIN"}},
		{"unknown namespace is NXDOMAIN", []string{"web.nope.svc", "A"}, digResult{Status: "NXDOMAIN"}},
		{"other type of a known name is NODATA", []string{full, "TXT"}, digResult{Status: "NOERROR"}},
		{"pod name forwarded to kube-dns", []string{pod5, "A"}, digResult{Status: "NOERROR", Answer: []string{pod5 + " A 10.244.1.5"}}},
		{"other names forwarded to the VM's resolver", []string{testbed.UpstreamTestName, "A"},
			digResult{Status: "NOERROR", Answer: []string{testbed.UpstreamTestName + " A " + testbed.UpstreamTestIPv4}}},
		{"unknown outside name is the upstream's NXDOMAIN", []string{"nothing.example.test", "A"}, digResult{Status: "NXDOMAIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := dig(ctx, t, server, tc.args...)
			if strings.HasPrefix(tc.name, "headless A") {
				got.Answer = sortedCopy(got.Answer)
			}
			if got.Status != tc.want.Status || !slices.Equal(got.Answer, tc.want.Answer) {
				t.Errorf("dig %v:\n got %s\nwant %s", tc.args, got, tc.want)
			}
		})
	}

	t.Run("an unchanged app on the VM reaches a Service by name", func(t *testing.T) {
		// The VM's programs read the resolv.conf the agent manages in its
		// host root, as they would read /etc/resolv.conf on a real VM.
		if err := tb.SetVMResolvConf(filepath.Join(a.HostRoot, "etc", "resolv.conf")); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := tb.SetVMResolvConf(""); err != nil {
				t.Error(err)
			}
		})
		serviceRoutes(ctx, t)
		for _, name := range []string{"web." + ns + ".svc", "web." + ns + ".svc.cluster.local"} {
			out := vmExec(ctx, t, "getent", "ahostsv4", name)
			if !strings.Contains(out, webV4) {
				t.Errorf("getent ahostsv4 %s: %q, want %s", name, out, webV4)
			}
			// The first reachability includes the EndpointSlice controller's lag.
			waitFor(t, 20*time.Second, "curl http://"+name+"/", func() error {
				out, err := tb.Exec(ctx, tb.VMNetns, "curl", "-s", "--http0.9", "--max-time", "5", "http://"+name+"/")
				if got := strings.TrimSpace(string(out)); err != nil || got != webPod.Name {
					return fmt.Errorf("answered %q (%v), want pod %s", got, err, webPod.Name)
				}
				return nil
			})
		}
		if out := vmExec(ctx, t, "getent", "ahostsv4", strings.TrimSuffix(testbed.UpstreamTestName, ".")); !strings.Contains(out, testbed.UpstreamTestIPv4) {
			t.Errorf("getent for a name outside the cluster: %q", out)
		}
	})

	t.Run("a new Service resolves within 1s", func(t *testing.T) {
		name := "late"
		s := createService(ctx, t, ns, name, v1.ProtocolTCP, 80, "http", map[string]string{"app": "dns-web"})
		created := time.Now()
		var took time.Duration
		for {
			r, err := tb.DNSQuery(ctx, tb.VMNetns, server, name+"."+ns+".svc.cluster.local", dns.TypeA)
			if err == nil && slices.Contains(testbed.Answers(r), s.Spec.ClusterIPs[0]) {
				took = time.Since(created)
				break
			}
			if time.Since(created) > 5*time.Second {
				t.Fatalf("%s not resolvable 5s after it was created: %v %v", name, r, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("Service resolvable %s after create", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("Service resolvable only %s after create, want within 1s", took)
		}
	})

	t.Run("kube-dns hung: service names answered, forwarded names served stale", func(t *testing.T) {
		// The pod name was answered above with CoreDNS's 5 s TTL; let it
		// expire, then freeze CoreDNS.
		time.Sleep(6 * time.Second)
		if err := tb.PauseKubeDNS(true); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := tb.PauseKubeDNS(false); err != nil {
				t.Error(err)
			}
		}()
		if r := dig(ctx, t, server, full, "A"); r.Status != "NOERROR" || len(r.Answer) != 1 {
			t.Errorf("service name while kube-dns hangs: %s", r)
		}
		start := time.Now()
		r := dig(ctx, t, server, pod5, "A")
		t.Logf("stale answer after %s: %s", time.Since(start).Round(time.Millisecond), r)
		if r.Status != "NOERROR" || !slices.Equal(r.Answer, []string{pod5 + " A 10.244.1.5"}) {
			t.Errorf("pod name while kube-dns hangs: %s, want the stale answer", r)
		}
		// A name never asked before has nothing stale to serve.
		if r := dig(ctx, t, server, "10-244-1-6.default.pod.cluster.local", "A"); r.Status != "SERVFAIL" {
			t.Errorf("uncached pod name while kube-dns hangs: %s, want SERVFAIL", r)
		}
	})

	t.Run("resolver wired into the host root", func(t *testing.T) {
		got, err := os.ReadFile(filepath.Join(a.HostRoot, "etc", "resolv.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(got), "nameserver "+server+"\n") || strings.Contains(string(got), "nameserver 10.250.0.53") {
			t.Errorf("managed resolv.conf:\n%s", got)
		}
		if !strings.Contains(string(got), "search example.test") {
			t.Errorf("managed resolv.conf lost the host's search list:\n%s", got)
		}
	})

	t.Run("a DHCP client rewrites resolv.conf: wired again, new resolvers followed", func(t *testing.T) {
		path := filepath.Join(a.HostRoot, "etc", "resolv.conf")
		dhcp := "# written by the DHCP client\nsearch example.test\nnameserver fd00:250::53\n"
		if err := os.WriteFile(path+".dhcp", []byte(dhcp), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".dhcp", path); err != nil {
			t.Fatal(err)
		}
		original = dhcp
		took := waitFor(t, 10*time.Second, "resolv.conf wired again", func() error {
			got, err := os.ReadFile(path)
			if err != nil || !strings.Contains(string(got), "nameserver "+server+"\n") {
				return fmt.Errorf("%q %v", got, err)
			}
			return nil
		})
		t.Logf("resolv.conf rewritten by someone else: wired again after %s", took.Round(time.Millisecond))
		st, err := a.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ds struct {
			Stub struct {
				Upstreams []string `json:"upstreams"`
			} `json:"stub"`
		}
		for _, c := range st.Consumers {
			if c.Name == "dns" {
				if err := json.Unmarshal(c.Details, &ds); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !slices.Equal(ds.Stub.Upstreams, []string{"[fd00:250::53]:53"}) {
			t.Errorf("stub upstreams after the DHCP rewrite: %v, want [[fd00:250::53]:53]", ds.Stub.Upstreams)
		}
		if r := dig(ctx, t, server, "www2.example.test", "A"); r.Status != "NXDOMAIN" {
			t.Errorf("forwarded over the new (IPv6) resolver: %s, want the upstream's NXDOMAIN", r)
		}
	})

	t.Run("restarted while the API server is down: answers from the saved snapshot", func(t *testing.T) {
		if err := a.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := tb.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				_ = tb.StartAPIServer(context.WithoutCancel(ctx))
			}
		}()
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		st, err := a.WaitStatus(ctx, 20*time.Second, func(st *daemon.Status) bool { return st.Degraded && st.Ready })
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("degraded after restart, snapshot age %s, %d services", st.Snapshot.Age, len(st.Snapshot.Services))
		if r := dig(ctx, t, server, full, "A"); r.Status != "NOERROR" || !slices.Equal(r.Answer, []string{full + " A " + webV4}) {
			t.Errorf("service name from the saved snapshot: %s", r)
		}
		code, body, err := httpGet(ctx, "http://"+a.Config.HealthzBindAddress+"/readyz")
		if err != nil || code != http.StatusOK || !strings.HasPrefix(body, "degraded:") {
			t.Errorf("readyz on the saved snapshot: %d %q %v", code, body, err)
		}
		out, err := a.Run(ctx, "status")
		if err != nil || !strings.Contains(string(out), "degraded: serving the last snapshot known good") {
			t.Errorf("status on the saved snapshot: %v\n%s", err, out)
		}
		if err := tb.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		restarted = true
		if _, err := a.WaitStatus(ctx, 60*time.Second, func(st *daemon.Status) bool { return st.Synced && !st.Degraded }); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("cleanup restores the host's resolv.conf", func(t *testing.T) {
		if err := a.Stop(); err != nil {
			t.Fatal(err)
		}
		if out, err := a.Run(ctx, "cleanup"); err != nil {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		got, err := os.ReadFile(filepath.Join(a.HostRoot, "etc", "resolv.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != original {
			t.Errorf("resolv.conf after cleanup:\n%s\nwant the original:\n%s", got, original)
		}
	})
}

// createRaw creates a Service as given (the namespace must exist) and
// deletes it when the test ends.
func createRaw(ctx context.Context, t *testing.T, ns string, s *v1.Service) {
	t.Helper()
	if _, err := tb.Client.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tb.Client.CoreV1().Services(ns).Delete(context.Background(), s.Name, metav1.DeleteOptions{})
	})
}

func reverse(ip string) string {
	r, err := dns.ReverseAddr(ip)
	if err != nil {
		panic(err)
	}
	return r
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// TestDNSHostResolved: on a host root that looks like one running
// systemd-resolved, the agent wires resolved over the system bus. This root
// has no bus (the real thing is proven in TestPackage, with systemd-resolved
// booted in a Debian guest): the agent does not start, says why and what to
// do, and leaves nothing behind: no link in the namespace, /etc/resolv.conf
// untouched, no drop-in.
func TestDNSHostResolved(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "run/systemd/resolve"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "run/systemd/resolve/stub-resolv.conf"),
		[]byte("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.test\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "run/systemd/resolve/resolv.conf"),
		[]byte("nameserver 10.250.0.53\nsearch example.test\n"), 0o644))
	must(os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf")))

	a := newAgent(t, true, func(c *config.Config) {
		c.HostRoot = root
		c.DNS.NamespaceDomains = []string{"shop"}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !a.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("the agent runs without a system bus to reach systemd-resolved:\n%s", a.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	log := a.Log()
	for _, want := range []string{"system bus", "is dbus running", "dns.hostResolver"} {
		if !strings.Contains(log, want) {
			t.Errorf("the agent's error does not say %q:\n%s", want, log)
		}
	}
	if out, err := tb.Exec(ctx, tb.VMNetns, "ip", "link", "show", "dev", "bagent-dns"); err == nil {
		t.Errorf("the link was left behind:\n%s", out)
	}
	if link, err := os.Readlink(filepath.Join(root, "etc/resolv.conf")); err != nil || link != "../run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("/etc/resolv.conf changed under systemd-resolved: %q %v", link, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/systemd")); !os.IsNotExist(err) {
		t.Errorf("/etc/systemd created: %v", err)
	}
}

// digSections runs dig in the VM namespace and returns the records of each
// section (ANSWER, AUTHORITY, ADDITIONAL) as "owner TYPE rdata", the owner
// in lower case, TTL and class dropped; the OPT pseudo-record is left out.
func digSections(ctx context.Context, t *testing.T, server string, args ...string) map[string][]string {
	t.Helper()
	argv := append([]string{"dig", "@" + server, "+noall", "+comments", "+answer", "+authority", "+additional", "+time=5", "+tries=1"}, args...)
	out := vmExec(ctx, t, argv...)
	secs := map[string][]string{}
	sec := ""
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, ";; ") && strings.HasSuffix(line, " SECTION:"):
			sec = strings.TrimSuffix(strings.TrimPrefix(line, ";; "), " SECTION:")
		case line == "" || strings.HasPrefix(line, ";"):
		case sec != "":
			if f := strings.Fields(line); len(f) >= 5 {
				secs[sec] = append(secs[sec], strings.ToLower(f[0])+" "+f[3]+" "+strings.Join(f[4:], " "))
			}
		}
	}
	if len(secs) == 0 {
		t.Fatalf("dig %v: no section in output:\n%s", args, out)
	}
	return secs
}

// TestDNSNoDuplicates asks the stub, with dig, for the real kube-dns
// Service (53/UDP "dns" and 53/TCP "dns-tcp", dual-stack) and for the
// reverse names of its addresses and of its CoreDNS pod, and finds no
// record twice in any section (RFC 2181 section 5).
func TestDNSNoDuplicates(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kd, err := tb.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := tb.Client.CoreV1().Pods("kube-system").Get(ctx, "coredns-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, true, nil)
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	server := stubServer(a)
	const name = "kube-dns.kube-system.svc.cluster.local."
	waitFor(t, 30*time.Second, "kube-dns in the stub's zone", func() error {
		if r := dig(ctx, t, server, name, "SRV"); r.Status != "NOERROR" || len(r.Answer) == 0 {
			return fmt.Errorf("%s SRV: %s", name, r)
		}
		return nil
	})

	questions := [][]string{
		{name, "SRV"}, {"+tcp", name, "SRV"}, {"_dns._udp." + name, "SRV"}, {"_dns-tcp._tcp." + name, "SRV"},
		{name, "A"}, {name, "AAAA"}, {name, "ANY"}, {"cluster.local.", "NS"},
	}
	var addrs []string
	addrs = append(addrs, kd.Spec.ClusterIPs...)
	for _, ip := range pod.Status.PodIPs {
		addrs = append(addrs, ip.IP)
	}
	for _, ip := range addrs {
		questions = append(questions, []string{"-x", ip})
	}
	for _, q := range questions {
		secs := digSections(ctx, t, server, q...)
		if len(secs["ANSWER"]) == 0 {
			t.Errorf("dig %v: no answer: %v", q, secs)
		}
		for sec, rrs := range secs {
			seen := map[string]bool{}
			for _, r := range rrs {
				if seen[r] {
					t.Errorf("dig %v: %s section holds %q twice: %v", q, sec, r, rrs)
				}
				seen[r] = true
			}
		}
		t.Logf("dig %v: %v", q, secs)
	}
	// The Service's SRV: one record for port 53, whatever the protocols.
	if got, want := digSections(ctx, t, server, name, "SRV")["ANSWER"], []string{name + " SRV 0 100 53 " + name}; !slices.Equal(got, want) {
		t.Errorf("%s SRV: %q, want %q", name, got, want)
	}
}
