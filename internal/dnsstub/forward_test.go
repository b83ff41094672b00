package dnsstub

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// upstream is an in-process DNS server on 127.0.0.1, UDP and TCP on one
// port.
type upstream struct {
	addr    netip.AddrPort
	udpN    atomic.Int64
	tcpN    atomic.Int64
	servers []*dns.Server
}

// startUpstream serves h on 127.0.0.1:0 until the test ends.
func startUpstream(t testing.TB, h func(w dns.ResponseWriter, r *dns.Msg, tcp bool)) *upstream {
	t.Helper()
	u := &upstream{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	ln, err := net.Listen("tcp", u.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.udpN.Add(1)
		h(w, r, false)
	})}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.tcpN.Add(1)
		h(w, r, true)
	})}
	u.servers = []*dns.Server{udp, tcp}
	for _, srv := range u.servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
	}
	t.Cleanup(u.stop)
	return u
}

func (u *upstream) stop() {
	for _, s := range u.servers {
		_ = s.Shutdown()
	}
}

func (u *upstream) queries() int64 { return u.udpN.Load() + u.tcpN.Load() }

// answerA answers every A question with ip, TTL ttl.
func answerA(ipAddr string, ttl uint32) func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
	return func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		if q.Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(ipAddr)}}
		} else {
			m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
				Ns: "ns.test.", Mbox: "h.test.", Serial: 1, Minttl: ttl}}
		}
		_ = w.WriteMsg(m)
	}
}

func rcodeOnly(rcode int) func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
	return func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		_ = w.WriteMsg(m)
	}
}

// deadAddr returns a UDP address nothing listens on.
func deadAddr(t testing.TB) netip.AddrPort {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	return a
}

const extName = "www.example.test."

func aAnswer(t *testing.T, m *dns.Msg, want string) {
	t.Helper()
	if m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("reply %v, want one answer", m)
	}
	a, ok := m.Answer[0].(*dns.A)
	if !ok || a.A.String() != want {
		t.Fatalf("answer %v, want A %s", m.Answer[0], want)
	}
}

func TestForwardFailover(t *testing.T) {
	failing := startUpstream(t, rcodeOnly(dns.RcodeServerFailure))
	good := startUpstream(t, answerA("192.0.2.80", 30))
	dead := deadAddr(t)
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{dead, failing.addr, good.addr}, Timeout: time.Second}, testSnapshot())

	r := ask(s, query("WWW.Example.Test.", dns.TypeA, 1232))
	aAnswer(t, r, "192.0.2.80")
	if r.Authoritative {
		t.Error("forwarded answer has AA set")
	}
	if r.Answer[0].Header().Name != "WWW.Example.Test." || r.Question[0].Name != "WWW.Example.Test." {
		t.Errorf("forwarded reply does not keep the asker's spelling: %v", r)
	}
	if failing.queries() != 1 || good.queries() != 1 {
		t.Errorf("queries: failing %d, good %d; want 1 each", failing.queries(), good.queries())
	}
	for _, u := range []netip.AddrPort{dead, failing.addr} {
		if n := val(s.metrics.upstreamErrs.WithLabelValues(u.String())); n != 1 {
			t.Errorf("upstream errors of %s: %v, want 1", u, n)
		}
	}
	st := s.Status().(*Status)
	if len(st.LastErrors) != 2 || !strings.Contains(st.LastErrors[1].Error, "SERVFAIL") {
		t.Errorf("status last errors: %+v", st.LastErrors)
	}
	if n := val(s.metrics.queries.WithLabelValues("A", resultForwarded)); n != 1 {
		t.Errorf("queries_total{A,forwarded} = %v, want 1", n)
	}

	// All failing, nothing cached: SERVFAIL.
	s.SetUpstreams([]netip.AddrPort{dead, failing.addr})
	r = ask(s, query("other.example.test.", dns.TypeA, 0))
	if r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("reply %v, want SERVFAIL", r)
	}
}

func TestForwardTimeout(t *testing.T) {
	silent := startUpstream(t, func(dns.ResponseWriter, *dns.Msg, bool) {})
	good := startUpstream(t, answerA("192.0.2.81", 30))
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{silent.addr, good.addr}, Timeout: 300 * time.Millisecond}, testSnapshot())
	start := time.Now()
	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.81")
	if took := time.Since(start); took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("answer after %v, want after one timeout (300ms)", took)
	}
	if silent.queries() != 1 {
		t.Errorf("silent upstream asked %d times, want 1", silent.queries())
	}
}

func TestForwardTruncatedRetriesTCP(t *testing.T) {
	u := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		if !tcp {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Truncated = true
			_ = w.WriteMsg(m)
			return
		}
		answerA("192.0.2.82", 30)(w, r, tcp)
	})
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{u.addr}}, testSnapshot())
	r := ask(s, query(extName, dns.TypeA, 0))
	aAnswer(t, r, "192.0.2.82")
	if r.Truncated {
		t.Error("relayed reply is truncated")
	}
	if u.udpN.Load() != 1 || u.tcpN.Load() != 1 {
		t.Errorf("upstream asked %d times over UDP and %d over TCP, want 1 and 1", u.udpN.Load(), u.tcpN.Load())
	}
}

// TestForwardMismatchDropped: replies with a wrong ID or question are
// dropped, never relayed nor cached.
func TestForwardMismatchDropped(t *testing.T) {
	wrongID := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Id = r.Id + 1
		m.Answer = []dns.RR{rr(t, "www.example.test. 30 IN A 203.0.113.66")}
		_ = w.WriteMsg(m)
	})
	wrongQuestion := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Question[0].Name = "evil.example.test."
		m.Answer = []dns.RR{rr(t, "www.example.test. 30 IN A 203.0.113.67")}
		_ = w.WriteMsg(m)
	})
	// A spoofed reply first, then the real one: the real one wins.
	spoofThenReal := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Question[0].Qtype = dns.TypeAAAA
		m.Answer = []dns.RR{rr(t, "www.example.test. 30 IN A 203.0.113.68")}
		_ = w.WriteMsg(m)
		answerA("192.0.2.83", 30)(w, r, tcp)
	})
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{wrongID.addr, wrongQuestion.addr}, Timeout: 200 * time.Millisecond}, testSnapshot())
	r := ask(s, query(extName, dns.TypeA, 0))
	if r == nil || r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Fatalf("reply %v, want SERVFAIL with no answer", r)
	}
	if s.cache.len() != 0 {
		t.Errorf("a mismatched reply was cached")
	}
	s.SetUpstreams([]netip.AddrPort{spoofThenReal.addr})
	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.83")
}

func TestForwardCache(t *testing.T) {
	u := startUpstream(t, answerA("192.0.2.84", 60))
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{u.addr}}, testSnapshot())
	now := time.Unix(1700000000, 0)
	s.now = func() time.Time { return now }

	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.84")
	now = now.Add(10 * time.Second)
	r := ask(s, query("WWW.EXAMPLE.TEST.", dns.TypeA, 0))
	aAnswer(t, r, "192.0.2.84")
	if ttl := r.Answer[0].Header().Ttl; ttl != 50 {
		t.Errorf("cached TTL %d, want 50 (60 aged 10s)", ttl)
	}
	if r.Answer[0].Header().Name != "WWW.EXAMPLE.TEST." {
		t.Errorf("cached answer owner %q, want the asker's spelling", r.Answer[0].Header().Name)
	}
	// Negative answers are cached too, by their SOA.
	ask(s, query(extName, dns.TypeAAAA, 0))
	ask(s, query(extName, dns.TypeAAAA, 0))
	// The DO bit is part of the key.
	do := query(extName, dns.TypeA, 1232)
	do.SetEdns0(1232, true)
	ask(s, do)
	if got := u.queries(); got != 3 {
		t.Errorf("upstream asked %d times, want 3 (A, AAAA, A with DO)", got)
	}
	if h, m := val(s.metrics.cacheHits), val(s.metrics.cacheMisses); h != 2 || m != 3 {
		t.Errorf("cache hits %v misses %v, want 2 and 3", h, m)
	}
	// Past its TTL the entry is refreshed from upstream.
	now = now.Add(61 * time.Second)
	ask(s, query(extName, dns.TypeA, 0))
	if got := u.queries(); got != 4 {
		t.Errorf("upstream asked %d times after expiry, want 4", got)
	}
	// Zone answers are not cached.
	ask(s, query(webFQDN, dns.TypeA, 0))
	if n := s.cache.len(); n != 3 {
		t.Errorf("cache holds %d entries, want 3", n)
	}
}

func TestCacheBounded(t *testing.T) {
	c := newCache(2, time.Hour)
	now := time.Unix(0, 0)
	for _, n := range []string{"a.", "b.", "c."} {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		m.Answer = []dns.RR{rr(t, n+" 60 IN A 192.0.2.1")}
		c.put(keyOf(m.Question[0], false, false), m, now)
	}
	if c.len() != 2 {
		t.Fatalf("cache of 2 holds %d", c.len())
	}
	if _, _, ok := c.get(keyOf(dns.Question{Name: "a.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, false, false), now, false); ok {
		t.Error("the least recently used entry was kept")
	}
	servfail := new(dns.Msg)
	servfail.SetQuestion("d.", dns.TypeA)
	servfail.Rcode = dns.RcodeServerFailure
	c.put(keyOf(servfail.Question[0], false, false), servfail, now)
	if _, _, ok := c.get(keyOf(servfail.Question[0], false, false), now, true); ok {
		t.Error("a SERVFAIL was cached")
	}
}

// Big answers: the bytes bound the cache before its entry count does, the
// weight kept matches what it holds, and an answer too big for it is not
// kept.
func TestCacheBoundedInBytes(t *testing.T) {
	c := newCache(10000, time.Hour)
	c.maxBytes = 64 << 10
	now := time.Unix(0, 0)
	big := func(name string, records int) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeTXT)
		for i := range records {
			m.Answer = append(m.Answer, rr(t, fmt.Sprintf("%s 60 IN TXT \"%0200d\"", name, i)))
		}
		return m
	}
	for i := range 100 {
		m := big(fmt.Sprintf("n%d.example.", i), 2) // about 450 bytes packed
		c.put(keyOf(m.Question[0], false, false), m, now)
		if c.bytes > c.maxBytes {
			t.Fatalf("after %d answers the cache weighs %d, bound %d", i+1, c.bytes, c.maxBytes)
		}
	}
	if n := c.len(); n == 0 || n >= 100 {
		t.Errorf("cache of %d bytes holds %d answers of about 2 KiB weight, want some but not all", c.maxBytes, n)
	}
	sum := 0
	for el := c.ll.Front(); el != nil; el = el.Next() {
		sum += el.Value.(*cacheEntry).weight
	}
	if sum != c.bytes {
		t.Errorf("entries weigh %d, the cache counts %d", sum, c.bytes)
	}
	huge := big("huge.example.", 40) // over a sixteenth of the cache
	c.put(keyOf(huge.Question[0], false, false), huge, now)
	if _, _, ok := c.get(keyOf(huge.Question[0], false, false), now, false); ok {
		t.Error("an answer of over a sixteenth of the cache was kept")
	}
}

func TestServeStale(t *testing.T) {
	u := startUpstream(t, answerA("192.0.2.85", 10))
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{u.addr}, Timeout: 200 * time.Millisecond, ServeStale: time.Minute}, testSnapshot())
	now := time.Unix(1700000000, 0)
	s.now = func() time.Time { return now }
	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.85")

	u.stop()
	now = now.Add(30 * time.Second) // expired, within the stale window
	r := ask(s, query(extName, dns.TypeA, 0))
	aAnswer(t, r, "192.0.2.85")
	if ttl := r.Answer[0].Header().Ttl; ttl != 30 {
		t.Errorf("stale answer TTL %d, want 30", ttl)
	}
	if n := val(s.metrics.queries.WithLabelValues("A", resultStale)); n != 1 {
		t.Errorf("queries_total{A,stale} = %v, want 1", n)
	}
	now = now.Add(2 * time.Minute) // past the stale window
	if r := ask(s, query(extName, dns.TypeA, 0)); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("reply %v past the stale window, want SERVFAIL", r)
	}
}

// TestKubeDNSForwarding: cluster names the zone does not serve go to the
// kube-dns endpoints of the snapshot, never to the host's upstreams.
func TestKubeDNSForwarding(t *testing.T) {
	var asked sync.Map
	kubeDNS := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		asked.Store(strings.ToLower(r.Question[0].Name), true)
		answerA("10.244.1.5", 30)(w, r, tcp)
	})
	host := startUpstream(t, answerA("192.0.2.86", 30))
	snap := testSnapshot()
	kd := snap.Services[kubeDNSKey]
	kd = &cluster.Service{ServiceKey: kd.ServiceKey, Type: kd.Type, ClusterIPs: kd.ClusterIPs, Ports: []*cluster.Port{
		{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{
			ep("127.0.0.1", int32(kubeDNS.addr.Port()), true, ""), ep("127.0.0.2", 53, false, "")}},
		{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("127.0.0.1", int32(kubeDNS.addr.Port()), true, "")}},
	}}
	snap.Services[kubeDNSKey] = kd
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{host.addr}}, snap)

	pod := "10-244-1-5.default.pod.cluster.local."
	aAnswer(t, ask(s, query(pod, dns.TypeA, 0)), "10.244.1.5")
	if _, ok := asked.Load(pod); !ok {
		t.Errorf("kube-dns was not asked for %s", pod)
	}
	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.86")
	if _, ok := asked.Load(extName); ok {
		t.Errorf("kube-dns was asked for a host name")
	}
	if host.queries() != 1 || kubeDNS.queries() != 1 {
		t.Errorf("host asked %d, kube-dns %d; want 1 each", host.queries(), kubeDNS.queries())
	}
	st := s.Status().(*Status)
	if len(st.KubeDNS) != 2 || st.KubeDNS[0].UDP != kubeDNS.addr || st.KubeDNS[1].UDP.String() != "10.96.0.53:53" {
		t.Errorf("status kube-dns targets %v", st.KubeDNS)
	}
	if n := series(s.metrics.forward); n != 2 {
		t.Errorf("forward duration series: %d, want 2 (kube-dns and host)", n)
	}

	// ExternalName pointing outside the cluster: CNAME, then the forwarded
	// target.
	r := ask(s, query("ext-out.default.svc.cluster.local.", dns.TypeA, 0))
	qcase{Qname: "ext-out.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{
		CNAME("ext-out.default.svc.cluster.local.", extName), "www.example.test. 30 IN A 192.0.2.86"}}.check(t, r)

	// Reverse names the zone does not know go to the host.
	r = ask(s, query("1.2.0.192.in-addr.arpa.", dns.TypePTR, 0))
	if r == nil || r.Rcode != dns.RcodeSuccess || r.Authoritative {
		t.Errorf("unknown reverse name: %v, want a forwarded reply", r)
	}
	// Without kube-dns in the snapshot: SERVFAIL, not NXDOMAIN.
	snap2 := *snap
	snap2.Services = maps.Clone(snap.Services) // snapshots are never modified once synced
	delete(snap2.Services, kubeDNSKey)
	if err := s.Sync(t.Context(), &snap2); err != nil {
		t.Fatal(err)
	}
	if r := ask(s, query("x.default.pod.cluster.local.", dns.TypeA, 0)); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("pod name without kube-dns: %v, want SERVFAIL", r)
	}
}

// TestNamespaceDomainsOnly: a namespace not listed is not a short form.
func TestNamespaceDomainsOnly(t *testing.T) {
	host := startUpstream(t, answerA("192.0.2.87", 30))
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{host.addr}, NamespaceDomains: []string{"default"}}, testSnapshot())
	aAnswer(t, ask(s, query("api.other.", dns.TypeA, 0)), "192.0.2.87")
	qcase{Qname: "web.default.", Qtype: dns.TypeA, Answer: []string{A("web.default.", "10.96.0.10")}}.check(t, ask(s, query("web.default.", dns.TypeA, 0)))
}

// relay returns an upstream that passes every query on to next as a naive
// forwarder would; strip removes the EDNS0 record first.
func relay(t *testing.T, next func() netip.AddrPort, strip bool) *upstream {
	return startUpstream(t, relayTo(next, strip))
}

// relayTo is relay's handler.
func relayTo(next func() netip.AddrPort, strip bool) func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
	return func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		q := r.Copy()
		if strip {
			q.Extra = stripOPT(q.Extra)
		}
		c := &dns.Client{Timeout: time.Second}
		resp, _, err := c.Exchange(q, next().String())
		if err != nil {
			resp = new(dns.Msg)
			resp.SetRcode(r, dns.RcodeServerFailure)
		}
		_ = w.WriteMsg(resp)
	}
}

// startStub starts s on its sockets until the test ends and stores its
// address in addr.
func startStub(t *testing.T, s *Server, addr *atomic.Pointer[netip.AddrPort]) netip.AddrPort {
	t.Helper()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a := s.Addr()
	addr.Store(&a)
	return a
}

func TestForwardingLoop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		strip  bool
		marked bool
	}{
		{"edns marker", false, true},
		{"in-flight id and name", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			var stubAddr atomic.Pointer[netip.AddrPort]
			r := relay(t, func() netip.AddrPort { return *stubAddr.Load() }, tc.strip)
			s := newTestServer(t, Options{Upstreams: []netip.AddrPort{r.addr}, Timeout: 500 * time.Millisecond, Logger: testLogger(&logs)}, testSnapshot())
			stub := startStub(t, s, &stubAddr)

			c := &dns.Client{Timeout: 3 * time.Second}
			for range 2 {
				resp, _, err := c.Exchange(query(extName, dns.TypeA, 0), stub.String())
				if err != nil {
					t.Fatal(err)
				}
				if resp.Rcode != dns.RcodeServerFailure {
					t.Fatalf("looping query answered %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
				}
			}
			want := "forwarding loop detected: upstream " + r.addr.String() + " points back at the stub"
			if got := strings.Count(logs.String(), want); got != 1 {
				t.Errorf("loop logged %d times, want once; logs:\n%s", got, logs.String())
			}
			if n := val(s.metrics.loops); n < 1 {
				t.Errorf("loops counted %v", n)
			}
			st := s.Status().(*Status)
			if want := r.addr.String() + " " + extName + " A"; len(st.Looping) != 1 || st.Looping[0] != want {
				t.Errorf("status looping %v, want [%s]", st.Looping, want)
			}
			// A query carrying our marker is answered SERVFAIL at once.
			if tc.marked {
				m := s.upstreamQuery(dns.Question{Name: "x.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, true, false, false, r.addr)
				if resp := ask(s, m); resp == nil || resp.Rcode != dns.RcodeServerFailure {
					t.Errorf("marked query: %v, want SERVFAIL", resp)
				}
			}
		})
	}
}

// TestRealServer exercises the stub over real UDP and TCP sockets.
func TestRealServer(t *testing.T) {
	host := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		m := new(dns.Msg)
		m.SetReply(r)
		// Big enough to need TCP towards a client without EDNS.
		for i := range 60 {
			m.Answer = append(m.Answer, rr(t, r.Question[0].Name+" 30 IN A 192.0.2."+itoa(i+1)))
		}
		_ = w.WriteMsg(m)
	})
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{host.addr}}, testSnapshot())
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	addr := s.Addr().String()

	for _, netw := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: netw, Timeout: 2 * time.Second}
		resp, _, err := c.Exchange(query("_http._tcp.web.default.svc.cluster.local.", dns.TypeSRV, 1232), addr)
		if err != nil {
			t.Fatalf("%s: %v", netw, err)
		}
		qcase{Qname: "_http._tcp.web.default.svc.cluster.local.", Qtype: dns.TypeSRV,
			Answer: []string{SRV("_http._tcp."+webFQDN, 100, 80, webFQDN)},
			Extra:  []string{A(webFQDN, "10.96.0.10")}}.check(t, resp)

		resp, _, err = c.Exchange(query(extName, dns.TypeA, 0), addr)
		if err != nil {
			t.Fatalf("%s: %v", netw, err)
		}
		if netw == "udp" && (!resp.Truncated || len(resp.Answer) == 60) {
			t.Errorf("udp reply without EDNS not truncated: TC=%v, %d answers", resp.Truncated, len(resp.Answer))
		}
		if netw == "tcp" && (resp.Truncated || len(resp.Answer) != 60) {
			t.Errorf("tcp reply: TC=%v, %d answers, want all 60", resp.Truncated, len(resp.Answer))
		}
	}

	// Malformed packets: FORMERR or silence, and the server lives on.
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	good, _ := query(webFQDN, dns.TypeA, 0).Pack()
	for _, p := range [][]byte{{0, 1}, good[:15], append(append([]byte{}, good[:12]...), 0xff, 0xff, 0xff)} {
		if _, err := conn.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	c := &dns.Client{Timeout: 2 * time.Second}
	resp, _, err := c.Exchange(query(webFQDN, dns.TypeA, 0), addr)
	if err != nil || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("after malformed packets: %v %v", resp, err)
	}

	// A second stub on the same address fails clearly.
	s2 := newTestServer(t, Options{Listen: s.Addr()}, nil)
	err = s2.Start()
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), addr) {
		t.Errorf("second Start on %s: %v, want address in use", addr, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// val reads a counter.
func val(c prometheus.Counter) float64 { return float64(counterValue(c)) }

// series counts the series a collector exports.
func series(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 100)
	c.Collect(ch)
	close(ch)
	return len(ch)
}

// TestCacheOff: negative CacheSize and ServeStale turn them off.
func TestCacheOff(t *testing.T) {
	u := startUpstream(t, answerA("192.0.2.89", 60))
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{u.addr}, CacheSize: -1, ServeStale: -1}, testSnapshot())
	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.89")
	aAnswer(t, ask(s, query(extName, dns.TypeA, 0)), "192.0.2.89")
	if u.queries() != 2 || s.cache.len() != 0 {
		t.Errorf("with the cache off: upstream asked %d times (want 2), cache holds %d", u.queries(), s.cache.len())
	}
}
