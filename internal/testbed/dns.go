package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Fixed record of the upstream DNS server, for tests of forwarding.
const (
	UpstreamTestName = "www.example.test."
	UpstreamTestIPv4 = "192.0.2.80"
	UpstreamTestIPv6 = "2001:db8::80"
)

// upstreamDNS is the authoritative server in the upstream namespace that
// CoreDNS forwards non-cluster names to. It answers its records and
// NXDOMAIN for any other name.
type upstreamDNS struct {
	mu      sync.Mutex
	records map[string][]netip.Addr // lower-case FQDN -> addresses
	queries atomic.Int64
	down    atomic.Bool // drop every query, as a dead resolver would
	servers []*dns.Server
	closers []io.Closer
}

func (u *upstreamDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	u.queries.Add(1)
	if u.down.Load() {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	u.mu.Lock()
	addrs, ok := u.records[strings.ToLower(q.Name)]
	u.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
	}
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 30}
		switch {
		case a.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	_ = w.WriteMsg(m)
}

// startUpstreamDNS serves the upstream DNS server on port 53 (UDP and TCP)
// of both upstream addresses, inside the upstream namespace.
func (t *Testbed) startUpstreamDNS() error {
	u := &upstreamDNS{records: map[string][]netip.Addr{
		UpstreamTestName: {netip.MustParseAddr(UpstreamTestIPv4), netip.MustParseAddr(UpstreamTestIPv6)},
	}}
	t.upstream = u
	for _, ip := range []string{upstreamIPv4, upstreamIPv6} {
		addr := net.JoinHostPort(ip, "53")
		pc, err := listenPacketIn(t.UpstreamNetns, "udp", addr)
		if err != nil {
			return fmt.Errorf("start upstream dns: %w", err)
		}
		u.closers = append(u.closers, pc)
		l, err := listenIn(t.UpstreamNetns, "tcp", addr)
		if err != nil {
			return fmt.Errorf("start upstream dns: %w", err)
		}
		u.closers = append(u.closers, l)
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: u}, {Listener: l, Handler: u}} {
			u.servers = append(u.servers, s)
			go func() { _ = s.ActivateAndServe() }()
		}
	}
	return nil
}

func (u *upstreamDNS) stop() {
	if u == nil {
		return
	}
	for _, s := range u.servers {
		_ = s.Shutdown()
	}
	for _, c := range u.closers {
		_ = c.Close()
	}
}

// UpstreamQueries returns how many queries the upstream DNS server has
// received, so tests can tell that a name was forwarded.
func (t *Testbed) UpstreamQueries() int64 { return t.upstream.queries.Load() }

// SetUpstreamDown makes the upstream resolver drop every query (down) or
// answer again.
func (t *Testbed) SetUpstreamDown(down bool) { t.upstream.down.Store(down) }

// PauseKubeDNS freezes (SIGSTOP) or resumes (SIGCONT) the CoreDNS process
// behind kube-dns: paused, it accepts packets and answers none, as a hung
// or partitioned kube-dns would. Its Pod stays Ready, so the cluster does
// not notice either.
func (t *Testbed) PauseKubeDNS(pause bool) error {
	t.mu.Lock()
	ps := t.pods[podKey("kube-system", "coredns-0")]
	var procs []*proc
	if ps != nil {
		procs = ps.procs
	}
	t.mu.Unlock()
	if len(procs) == 0 {
		return errors.New("pause kube-dns: no coredns process")
	}
	sig := syscall.SIGCONT
	if pause {
		sig = syscall.SIGSTOP
	}
	for _, p := range procs {
		if p.exited() {
			return p.exitError()
		}
		if err := p.cmd.Process.Signal(sig); err != nil {
			return fmt.Errorf("pause kube-dns: %w", err)
		}
	}
	return nil
}

// AddUpstreamRecord makes the upstream DNS server answer name (absolute or
// not) with addrs (IPv4 addresses as A, IPv6 ones as AAAA records).
func (t *Testbed) AddUpstreamRecord(name string, addrs ...string) error {
	var as []netip.Addr
	for _, s := range addrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("add upstream record %s: %w", name, err)
		}
		as = append(as, a.Unmap())
	}
	t.upstream.mu.Lock()
	t.upstream.records[strings.ToLower(dns.Fqdn(name))] = as
	t.upstream.mu.Unlock()
	return nil
}

// DNSQuery sends one query for name and qtype (e.g. dns.TypeA) over UDP to
// server (an IP, or IP:port; port 53 by default) from inside network
// namespace netnsName, and returns the response.
func (t *Testbed) DNSQuery(ctx context.Context, netnsName, server, name string, qtype uint16) (*dns.Msg, error) {
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "53")
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	conn, err := dialIn(netnsName)(ctx, "udp", server)
	if err != nil {
		return nil, fmt.Errorf("dns query %s: %w", name, err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok || time.Until(deadline) > 2*time.Second {
		deadline = time.Now().Add(2 * time.Second)
	}
	_ = conn.SetDeadline(deadline)
	co := &dns.Conn{Conn: conn}
	if err := co.WriteMsg(m); err != nil {
		return nil, fmt.Errorf("dns query %s: %w", name, err)
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, fmt.Errorf("dns query %s: %w", name, err)
		}
		if r.Id == m.Id {
			return r, nil
		}
	}
}

// Answers returns the A and AAAA addresses in a DNS response.
func Answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

// corefile is CoreDNS's configuration: the cluster zone from the API
// server, everything else forwarded to the upstream server.
const corefile = `.:53 {
    errors
    kubernetes %[1]s in-addr.arpa ip6.arpa {
        kubeconfig %[2]s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    forward . %[3]s
    cache 5
}
`

// startKubeDNS creates Service kube-system/kube-dns and the CoreDNS pod
// coredns-0 on node 1 running the real coredns binary, and marks the pod
// Ready once it answers for the cluster zone.
func (t *Testbed) startKubeDNS(ctx context.Context) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "kube-system", Name: "kube-dns",
			Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
		},
		Spec: corev1.ServiceSpec{
			Selector:       map[string]string{"k8s-app": "kube-dns"},
			ClusterIP:      kubeDNSIPv4,
			ClusterIPs:     []string{kubeDNSIPv4, kubeDNSIPv6},
			IPFamilies:     []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			IPFamilyPolicy: new(corev1.IPFamilyPolicyRequireDualStack),
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	if _, err := t.Client.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("start kube-dns: service: %w", err)
	}
	pod, err := t.createPod(ctx, PodSpec{
		Namespace: "kube-system", Name: "coredns-0", Node: 1,
		Labels: map[string]string{"k8s-app": "kube-dns"},
		Ports:  []Port{{Name: "dns", Port: 53, Protocol: "UDP"}, {Name: "dns-tcp", Port: 53, Protocol: "TCP"}},
	}, false)
	if err != nil {
		return fmt.Errorf("start kube-dns: %w", err)
	}
	dir := filepath.Join(t.WorkDir, "coredns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("start kube-dns: %w", err)
	}
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, fmt.Appendf(nil, corefile, clusterDomain, t.AdminKubeconfig, upstreamIPv4), 0o644); err != nil {
		return fmt.Errorf("start kube-dns: %w", err)
	}
	p, err := t.startProc("coredns", pod.Netns, filepath.Join(t.BinDir, "coredns"), "-conf", conf)
	if err != nil {
		return fmt.Errorf("start kube-dns: %w", err)
	}
	t.mu.Lock()
	t.pods[podKey(pod.Namespace, pod.Name)].procs = append(t.pods[podKey(pod.Namespace, pod.Name)].procs, p)
	t.mu.Unlock()
	apiName := "kubernetes.default.svc." + clusterDomain
	err = waitFor(ctx, "coredns", 60*time.Second, []*proc{p}, func(ctx context.Context) error {
		r, err := t.DNSQuery(ctx, pod.Netns, pod.IPv4, apiName, dns.TypeA)
		if err != nil {
			return err
		}
		if got := Answers(r); !slices.Contains(got, apiServiceIPv4) {
			return fmt.Errorf("%s: got %v (%s)", apiName, got, dns.RcodeToString[r.Rcode])
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("start kube-dns: %w", err)
	}
	if err := t.SetPodReady(ctx, pod.Namespace, pod.Name, true); err != nil {
		return fmt.Errorf("start kube-dns: %w", err)
	}
	return nil
}
