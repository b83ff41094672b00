package dnsstub

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// rr parses one record in zone-file syntax.
func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("bad record %q: %v", s, err)
	}
	return r
}

// RR constructors, in the zone-file syntax of the records they return.
func A(owner, ip string) string    { return owner + " 5 IN A " + ip }
func AAAA(owner, ip string) string { return owner + " 5 IN AAAA " + ip }
func SRV(owner string, weight, port int, target string) string {
	return owner + " 5 IN SRV 0 " + itoa(weight) + " " + itoa(port) + " " + target
}
func CNAME(owner, target string) string { return owner + " 5 IN CNAME " + target }
func PTR(owner, target string) string   { return owner + " 5 IN PTR " + target }
func TXT(owner, txt string) string      { return owner + " 5 IN TXT \"" + txt + "\"" }
func NS(owner, target string) string    { return owner + " 5 IN NS " + target }
func SOA(owner string) string {
	return owner + " 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5"
}

func itoa(i int) string { return strconv.Itoa(i) }

// recorder is a dns.ResponseWriter that keeps what was written.
type recorder struct {
	remote net.Addr
	local  net.Addr
	msg    *dns.Msg
	wire   []byte
	writes int
}

func newRecorder(src string, tcp bool) *recorder {
	ap := netip.MustParseAddrPort(src)
	r := &recorder{}
	if tcp {
		r.remote = net.TCPAddrFromAddrPort(ap)
		r.local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	} else {
		r.remote = net.UDPAddrFromAddrPort(ap)
		r.local = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return r
}

func (r *recorder) LocalAddr() net.Addr  { return r.local }
func (r *recorder) RemoteAddr() net.Addr { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	r.writes++
	r.wire = b
	r.msg = new(dns.Msg)
	return r.msg.Unpack(b)
}
func (r *recorder) Write(b []byte) (int, error) {
	r.writes++
	r.wire = append([]byte(nil), b...)
	r.msg = new(dns.Msg)
	return len(b), r.msg.Unpack(b)
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

// qcase is one query and the reply expected.
type qcase struct {
	Qname  string
	Qtype  uint16
	Rcode  int
	Answer []string
	Ns     []string
	Extra  []string
	// NoAA is set for answers not from our zone.
	NoAA bool
}

// check compares a reply with the case, section by section, records as
// text in order.
func (c qcase) check(t *testing.T, m *dns.Msg) {
	t.Helper()
	if m == nil {
		t.Fatalf("%s %s: no reply", c.Qname, dns.TypeToString[c.Qtype])
	}
	if m.Rcode != c.Rcode {
		t.Errorf("%s %s: rcode %s, want %s", c.Qname, dns.TypeToString[c.Qtype], dns.RcodeToString[m.Rcode], dns.RcodeToString[c.Rcode])
	}
	if !c.NoAA && c.Rcode != dns.RcodeServerFailure && c.Rcode != dns.RcodeRefused && !m.Authoritative {
		t.Errorf("%s %s: AA not set", c.Qname, dns.TypeToString[c.Qtype])
	}
	if len(m.Question) != 1 || m.Question[0].Name != c.Qname {
		t.Errorf("%s: question %v, want the name as asked", c.Qname, m.Question)
	}
	sections := []struct {
		name      string
		got, want []string
	}{
		{"answer", rrStrings(m.Answer), canon(t, c.Answer)},
		{"authority", rrStrings(m.Ns), canon(t, c.Ns)},
		{"additional", rrStrings(stripOPT(m.Extra)), canon(t, c.Extra)},
	}
	for _, s := range sections {
		if diff := cmp.Diff(s.want, s.got); diff != "" {
			t.Errorf("%s %s %s section (-want +got):\n%s", c.Qname, dns.TypeToString[c.Qtype], s.name, diff)
		}
	}
	checkNoDuplicates(t, c.Qname+" "+dns.TypeToString[c.Qtype], m)
}

// checkNoDuplicates fails when a section of m holds the same record twice
// (same owner, ignoring case, class, type and data; RFC 2181 section 5).
func checkNoDuplicates(t *testing.T, what string, m *dns.Msg) {
	t.Helper()
	for _, sec := range []struct {
		name string
		rrs  []dns.RR
	}{{"answer", m.Answer}, {"authority", m.Ns}, {"additional", m.Extra}} {
		for i, a := range sec.rrs {
			for _, b := range sec.rrs[:i] {
				if dns.IsDuplicate(a, b) {
					t.Errorf("%s: %s section holds %q twice", what, sec.name, a.String())
				}
			}
		}
	}
}

// canon returns records as dns.RR.String prints them (owner case kept).
func canon(t *testing.T, ss []string) []string {
	var out []string
	for _, s := range ss {
		out = append(out, rr(t, s).String())
	}
	return out
}

func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, r := range rrs {
		out = append(out, r.String())
	}
	return out
}

// query builds a query with EDNS0 (4096 bytes) unless size is 0.
func query(name string, qtype uint16, size uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if size > 0 {
		m.SetEdns0(size, false)
	}
	return m
}

// ask sends req through the handler as a loopback UDP client would.
func ask(s *Server, req *dns.Msg) *dns.Msg {
	w := newRecorder("127.0.0.1:40000", false)
	s.ServeDNS(w, req)
	return w.msg
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testLogger(buf *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(addr string, port int32, ready bool, hostname string) cluster.Endpoint {
	return cluster.Endpoint{Addr: ip(addr), Port: port, Ready: ready, Serving: ready, Hostname: hostname}
}

// testSnapshot is the cluster of the zone tests.
func testSnapshot() *cluster.Snapshot {
	svcs := []*cluster.Service{
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "web"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.0.10")},
			Ports: []*cluster.Port{
				{Name: "http", Port: 80, Protocol: "TCP", Endpoints: []cluster.Endpoint{
					ep("10.244.1.5", 8080, true, ""), ep("10.244.2.6", 8080, true, ""), ep("10.244.3.7", 8080, false, ""),
				}},
				{Name: "metrics", Port: 9090, Protocol: "UDP"},
			},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "dual"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.0.11"), ip("fd00:96::11")},
			Ports:      []*cluster.Port{{Name: "https", Port: 443, Protocol: "TCP"}},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "plain"}, Type: cluster.TypeNodePort,
			ClusterIPs: []netip.Addr{ip("10.96.0.12")},
			Ports:      []*cluster.Port{{Port: 8080, Protocol: "TCP"}},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "db"}, Type: cluster.TypeClusterIP, Headless: true,
			Endpoints: []cluster.Endpoint{
				ep("10.244.1.10", 0, true, "db-0"), ep("10.244.1.11", 0, true, "db-1"), ep("10.244.1.12", 0, false, ""),
			},
			Ports: []*cluster.Port{{Name: "pg", Port: 5432, Protocol: "TCP", Endpoints: []cluster.Endpoint{
				ep("10.244.1.10", 5432, true, "db-0"), ep("10.244.1.11", 5432, true, "db-1"), ep("10.244.1.12", 5432, false, ""),
			}}},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "h6"}, Type: cluster.TypeClusterIP, Headless: true,
			Endpoints: []cluster.Endpoint{ep("10.244.1.30", 0, true, ""), ep("fd00:10:244::5", 0, true, "")},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "nr"}, Type: cluster.TypeClusterIP, Headless: true,
			Endpoints: []cluster.Endpoint{ep("10.244.1.40", 0, false, "nr-0")},
			Ports: []*cluster.Port{{Name: "p", Port: 1, Protocol: "TCP", Endpoints: []cluster.Endpoint{
				ep("10.244.1.40", 1, false, "nr-0"),
			}}},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "pub"}, Type: cluster.TypeClusterIP, Headless: true,
			PublishNotReadyAddresses: true,
			Endpoints:                []cluster.Endpoint{ep("10.244.1.20", 0, false, "pub-0")},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "ext"}, Type: cluster.TypeExternalName,
			ExternalName: "web.default.svc.cluster.local",
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "ext-out"}, Type: cluster.TypeExternalName,
			ExternalName: "www.example.test",
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "loop1"}, Type: cluster.TypeExternalName,
			ExternalName: "loop2.default.svc.cluster.local",
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "loop2"}, Type: cluster.TypeExternalName,
			ExternalName: "loop1.default.svc.cluster.local.",
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "ext-gone"}, Type: cluster.TypeExternalName,
			ExternalName: "missing.default.svc.cluster.local",
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "other", Name: "api"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.1.1")},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "kube-system", Name: "kube-dns"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.0.53")},
			Ports: []*cluster.Port{
				{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 53, true, "")}},
				{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 53, true, "")}},
			},
		},
	}
	snap := &cluster.Snapshot{Version: 7, Time: time.Unix(1700000000, 0), Services: map[cluster.ServiceKey]*cluster.Service{}}
	for _, s := range svcs {
		snap.Services[s.ServiceKey] = s
		snap.Changed = append(snap.Changed, s.ServiceKey)
	}
	return snap
}

// newTestServer returns a Server (not started) with the test snapshot
// synced, unless snap is nil.
func newTestServer(t testing.TB, o Options, snap *cluster.Snapshot) *Server {
	t.Helper()
	if !o.Listen.IsValid() {
		o.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if snap != nil {
		if err := s.Sync(t.Context(), snap); err != nil {
			t.Fatal(err)
		}
	}
	return s
}
