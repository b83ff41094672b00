package dnsstub

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

var localClient = netip.MustParseAddr("127.0.0.1")

// slowWire is the handler's reply to raw, packed, as dns.Server would
// send it over UDP (nil when it sends nothing).
func slowWire(s *Server, raw []byte) []byte {
	w := newRecorder("127.0.0.1:40000", false)
	serveRaw(s, w, raw)
	if w.writes == 0 {
		return nil
	}
	return w.wire
}

// fastWire is the fast path's reply to raw, copied, or nil.
func fastWire(s *Server, r *fastReader, raw []byte) []byte {
	return bytes.Clone(s.answerFast(r, raw, localClient))
}

// ednsVariant is how a query carries EDNS0.
type ednsVariant struct {
	name string
	size uint16 // 0: no OPT
	do   bool
}

var ednsVariants = []ednsVariant{
	{"no edns", 0, false}, {"edns 100", 100, false}, {"edns 512", 512, false}, {"edns 1232", 1232, false},
	{"edns 1232 do", 1232, true}, {"edns 4096 do", 4096, true}, {"edns 65000", 65000, false},
}

// flagVariants are header bits of the query: RD, CD, AD, none.
var flagVariants = []func(*dns.Msg){
	func(m *dns.Msg) {},
	func(m *dns.Msg) { m.RecursionDesired = false },
	func(m *dns.Msg) { m.CheckingDisabled = true },
	func(m *dns.Msg) { m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData = false, true, true },
}

func packQuery(t testing.TB, name string, qtype uint16, v ednsVariant, id uint16, flags func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if v.size > 0 {
		m.SetEdns0(v.size, v.do)
	}
	flags(m)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fastTestServer is the zone tests' server, with a Service big enough
// to be truncated.
func fastTestServer(t testing.TB) *Server {
	snap := testSnapshot()
	big := &cluster.Service{ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "big"}, Type: cluster.TypeClusterIP, Headless: true}
	for i := range 200 {
		big.Endpoints = append(big.Endpoints, ep(netip.AddrFrom4([4]byte{10, 245, byte(i / 250), byte(i%250 + 1)}).String(), 0, true, ""))
	}
	snap.Services[big.ServiceKey] = big
	return newTestServer(t, Options{NamespaceDomains: []string{"default"}}, snap)
}

// TestFastPathMatchesHandler: for every question the fast path answers,
// its reply is byte for byte the handler's, the first time (packed by the
// handler) and from its cache, for any ID and header bits.
func TestFastPathMatchesHandler(t *testing.T) {
	s := fastTestServer(t)
	r := &fastReader{s: s}
	questions := []struct {
		name  string
		qtype uint16
	}{
		{webFQDN, dns.TypeA}, {"Web.Default.SVC.Cluster.Local.", dns.TypeA}, {"WEB.default.svc.cluster.local.", dns.TypeA},
		{webFQDN, dns.TypeAAAA}, {webFQDN, dns.TypeMX}, {webFQDN, dns.TypeSRV}, {webFQDN, dns.TypeANY}, {webFQDN, dns.TypeHINFO},
		{"_http._tcp." + webFQDN, dns.TypeSRV}, {"_HTTP._TCP.Web.default.svc.cluster.local.", dns.TypeSRV},
		{"_http._udp." + webFQDN, dns.TypeSRV}, {"_tcp." + webFQDN, dns.TypeSRV},
		{"dual.default.svc.cluster.local.", dns.TypeAAAA}, {"dual.default.svc.cluster.local.", dns.TypeANY},
		{dbFQDN, dns.TypeA}, {"DB-1.db.default.svc.cluster.local.", dns.TypeA}, {"_pg._tcp." + dbFQDN, dns.TypeSRV},
		{"h6.default.svc.cluster.local.", dns.TypeAAAA}, {"nr.default.svc.cluster.local.", dns.TypeA},
		{"big.default.svc.cluster.local.", dns.TypeA}, {"Big.Default.Svc.Cluster.Local.", dns.TypeANY},
		{"nope.default.svc.cluster.local.", dns.TypeA}, {"NoPe.default.svc.cluster.local.", dns.TypeSRV},
		{"a.b." + webFQDN, dns.TypeA}, {"default.svc.cluster.local.", dns.TypeA}, {"svc.cluster.local.", dns.TypeA},
		{apex, dns.TypeSOA}, {"Cluster.Local.", dns.TypeNS}, {apex, dns.TypeANY}, {apex, dns.TypeA},
		{"dns-version.cluster.local.", dns.TypeTXT}, {"DNS-Version.cluster.local.", dns.TypeA},
		{"ext.default.svc.cluster.local.", dns.TypeCNAME}, {"ext.default.svc.cluster.local.", dns.TypeANY},
		{"web.default.svc.", dns.TypeA}, {"Web.Default.Svc.", dns.TypeA}, {"_http._tcp.web.default.svc.", dns.TypeSRV},
		{"nope.default.svc.", dns.TypeA}, {"svc.", dns.TypeA}, {"web.default.", dns.TypeA}, {"Web.DEFAULT.", dns.TypeAAAA},
		{"nope.default.", dns.TypeA}, {"default.", dns.TypeSOA},
		{"we\\.b.default.svc.cluster.local.", dns.TypeA}, {"w\\000b.default.svc.cluster.local.", dns.TypeA},
	}
	fast := 0
	id := uint16(1)
	for _, q := range questions {
		for _, v := range ednsVariants {
			for fi, flags := range flagVariants {
				// Twice: packed on the first, from the cache on the second.
				for round := range 2 {
					id++
					raw := packQuery(t, q.name, q.qtype, v, id, flags)
					want := slowWire(s, raw)
					got := fastWire(s, r, raw)
					if got == nil {
						t.Errorf("%s %s %s flags %d: not answered by the fast path", q.name, dns.TypeToString[q.qtype], v.name, fi)
						continue
					}
					fast++
					if !bytes.Equal(got, want) {
						t.Errorf("%s %s %s flags %d round %d: fast path reply differs from the handler's\nfast: %x\nslow: %x",
							q.name, dns.TypeToString[q.qtype], v.name, fi, round, got, want)
					}
				}
			}
		}
	}
	if fast == 0 {
		t.Fatal("the fast path answered nothing")
	}
	// The truncated replies really are truncated, and fit.
	raw := packQuery(t, "big.default.svc.cluster.local.", dns.TypeA, ednsVariant{size: 1232}, 9, flagVariants[0])
	m := new(dns.Msg)
	bw := fastWire(s, r, raw)
	if err := m.Unpack(bw); err != nil || !m.Truncated || len(bw) > 1232 || m.IsEdns0() == nil {
		t.Errorf("big reply to a 1232-byte buffer: %v (TC %v, %d bytes)", err, m.Truncated, len(bw))
	}
}

// TestFastPathDeclines: what the fast path leaves to the handler.
func TestFastPathDeclines(t *testing.T) {
	s := fastTestServer(t)
	r := &fastReader{s: s}
	std := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		return m
	}
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := pack(std(webFQDN, dns.TypeA))
	cases := map[string][]byte{
		"forwarded name":         pack(std(extName, dns.TypeA)),
		"kube-dns name":          pack(std("x.default.pod.cluster.local.", dns.TypeA)),
		"reverse name":           pack(std("10.0.96.10.in-addr.arpa.", dns.TypePTR)),
		"ExternalName A (chase)": pack(std("ext.default.svc.cluster.local.", dns.TypeA)),
		"ExternalName outside":   pack(std("ext-out.default.svc.cluster.local.", dns.TypeA)),
		"zone transfer":          pack(std(apex, dns.TypeAXFR)),
		"IXFR":                   pack(std(apex, dns.TypeIXFR)),
		"OPT question":           pack(std(apex, dns.TypeOPT)),
		"short header":           good[:11],
		"cut question":           good[:len(good)-1],
		"trailing byte":          append(bytes.Clone(good), 0),
		"compressed name":        {0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1},
		"no question":            good[:12:12],
		"name not fully qualified": func() []byte {
			b := bytes.Clone(good)
			b[12] = 0xff // a label longer than 63
			return b
		}(),
	}
	chaos := std("version.bind.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	cases["class CH"] = pack(chaos)
	zoneCH := std(webFQDN, dns.TypeA)
	zoneCH.Question[0].Qclass = dns.ClassANY
	cases["class ANY"] = pack(zoneCH)
	resp := std(webFQDN, dns.TypeA)
	resp.Response = true
	cases["response"] = pack(resp)
	upd := std(webFQDN, dns.TypeA)
	upd.Opcode = dns.OpcodeUpdate
	cases["opcode UPDATE"] = pack(upd)
	two := std(webFQDN, dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	cases["two questions"] = pack(two)
	badvers := query(webFQDN, dns.TypeA, 1232)
	badvers.IsEdns0().SetVersion(1)
	cases["EDNS version 1"] = pack(badvers)
	cookie := query(webFQDN, dns.TypeA, 1232)
	cookie.IsEdns0().Option = append(cookie.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	cases["EDNS option"] = pack(cookie)
	ext := query(webFQDN, dns.TypeA, 1232)
	ext.Rcode = dns.RcodeBadVers // packed as the OPT's extended rcode
	cases["OPT extended rcode"] = pack(ext)
	ans := std(webFQDN, dns.TypeA)
	ans.Answer = []dns.RR{rr(t, A(webFQDN, "10.96.0.10"))}
	cases["answer section"] = pack(ans)
	extra := std(webFQDN, dns.TypeA)
	extra.Extra = []dns.RR{rr(t, A(webFQDN, "10.96.0.10"))}
	cases["additional A"] = pack(extra)
	twoOPT := query(webFQDN, dns.TypeA, 1232)
	twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
	cases["two OPT"] = pack(twoOPT)
	marked := s.upstreamQuery(dns.Question{Name: webFQDN, Qtype: dns.TypeA, Qclass: dns.ClassINET}, true, false, false, netip.MustParseAddrPort("127.0.0.1:53"))
	cases["our own upstream query"] = pack(marked)

	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			if got := s.answerFast(r, raw, localClient); got != nil {
				t.Errorf("fast path answered %x", got)
			}
		})
	}

	t.Run("non-local client", func(t *testing.T) {
		for _, src := range []string{"192.0.2.1", "2001:db8::1", "10.244.1.5"} {
			if got := s.answerFast(r, good, netip.MustParseAddr(src)); got != nil {
				t.Errorf("answered %s", src)
			}
		}
		for _, src := range []string{"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"} {
			if got := s.answerFast(r, good, netip.MustParseAddr(src)); got == nil {
				t.Errorf("did not answer %s", src)
			}
		}
	})
	t.Run("before the first sync", func(t *testing.T) {
		s := newTestServer(t, Options{}, nil)
		if got := s.answerFast(&fastReader{s: s}, good, localClient); got != nil {
			t.Errorf("answered before the first sync: %x", got)
		}
		if w := slowWire(s, good); w == nil || w[3]&0xF != dns.RcodeServerFailure {
			t.Errorf("handler before the first sync: %x, want SERVFAIL", w)
		}
	})
	t.Run("forwarding limits reached", func(t *testing.T) {
		// Zone answers take no forwarding slot: with every slot taken
		// they are answered, fast path and handler alike.
		s := newTestServer(t, Options{MaxPerClient: 1, MaxForwards: 1}, testSnapshot())
		k := fairKey{addr: localClient, domain: "cluster.local."}
		if limit := s.forwards.acquire(k); limit != "" {
			t.Fatalf("acquire: %s", limit)
		}
		defer s.forwards.release(k)
		if s.answerFast(&fastReader{s: s}, good, localClient) == nil {
			t.Error("fast path did not answer with the forwarding slots taken")
		}
		if w := slowWire(s, good); w == nil || w[3]&0xF != dns.RcodeSuccess {
			t.Errorf("handler with the forwarding slots taken: %x, want NOERROR", w)
		}
	})
}

// TestFastPathSync: a Sync drops the replies of the previous zone.
func TestFastPathSync(t *testing.T) {
	s := newTestServer(t, Options{}, testSnapshot())
	r := &fastReader{s: s}
	raw := packQuery(t, webFQDN, dns.TypeA, ednsVariant{size: 1232}, 5, flagVariants[0])
	before := fastWire(s, r, raw)
	if before == nil || !bytes.Equal(before, slowWire(s, raw)) {
		t.Fatalf("fast reply %x before the sync", before)
	}
	if s.zone.Load().replies.len() == 0 {
		t.Fatal("no reply kept")
	}
	next := testSnapshot()
	next.Version = 8
	web := next.Services[cluster.ServiceKey{Namespace: "default", Name: "web"}]
	web.ClusterIPs = []netip.Addr{ip("10.96.0.99")}
	if err := s.Sync(t.Context(), next); err != nil {
		t.Fatal(err)
	}
	if n := s.zone.Load().replies.len(); n != 0 {
		t.Fatalf("the new zone starts with %d replies", n)
	}
	after := fastWire(s, r, raw)
	if !bytes.Equal(after, slowWire(s, raw)) {
		t.Fatalf("after the sync the fast reply differs from the handler's:\n%x\n%x", after, slowWire(s, raw))
	}
	m := new(dns.Msg)
	if err := m.Unpack(after); err != nil || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "10.96.0.99" {
		t.Fatalf("after the sync: %v %v, want the new address", m, err)
	}
	// The same snapshot again is no new zone: the replies stay.
	if err := s.Sync(t.Context(), next); err != nil {
		t.Fatal(err)
	}
	if s.zone.Load().replies.len() == 0 {
		t.Error("a Sync with the same snapshot dropped the replies")
	}
}

func TestReplyCacheBounded(t *testing.T) {
	c := newReplyCache(4, 1<<20)
	for i := range 100 {
		c.put(fmt.Sprint(i), &fastReply{})
		if n := c.len(); n > 8 {
			t.Fatalf("%d replies kept, bound 8", n)
		}
	}
	if c.get([]byte("99")) == nil || c.get([]byte("0")) != nil {
		t.Error("not the most recent kept")
	}
	// A reply still asked for survives a generation.
	c = newReplyCache(4, 1<<20)
	c.put("keep", &fastReply{})
	for i := range 3 {
		c.put(fmt.Sprint(i), &fastReply{})
	}
	for i := range 8 {
		if c.get([]byte("keep")) == nil {
			t.Fatalf("round %d: a reply in use was dropped", i)
		}
		c.put(fmt.Sprint("x", i), &fastReply{})
	}
	// Big replies: the bytes bound the generation before the count does.
	c = newReplyCache(1000, 10*(4096+replyOverhead+3))
	for i := range 100 {
		c.put(fmt.Sprintf("%03d", i), &fastReply{wire: make([]byte, 4096)})
		if n := c.len(); n > 20 {
			t.Fatalf("%d replies of 4 KiB kept, bound 2 generations of 10", n)
		}
	}
	if c.get([]byte("099")) == nil {
		t.Error("the newest big reply is not kept")
	}
}

// TestFastPathOverUDP: through the real socket, zone questions are
// answered by the fast path, byte for byte as the handler would, and
// counted; the rest still works.
func TestFastPathOverUDP(t *testing.T) {
	host := startUpstream(t, answerA("192.0.2.91", 30))
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{host.addr}, NamespaceDomains: []string{"default"}}, testSnapshot())
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	conn, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exchange := func(raw []byte) []byte {
		t.Helper()
		if err := conn.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(raw); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65535)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no reply: %v", err)
			}
			if n >= 2 && binary.BigEndian.Uint16(buf) == binary.BigEndian.Uint16(raw) {
				return buf[:n]
			}
		}
	}
	id := uint16(100)
	names := []struct {
		name  string
		qtype uint16
	}{{webFQDN, dns.TypeA}, {"WEB.default.svc.", dns.TypeA}, {"_http._tcp." + webFQDN, dns.TypeSRV}, {"nope.default.svc.cluster.local.", dns.TypeA}}
	for _, q := range names {
		for _, v := range []ednsVariant{{"no edns", 0, false}, {"edns 1232 do", 1232, true}} {
			for range 3 {
				id++
				raw := packQuery(t, q.name, q.qtype, v, id, flagVariants[0])
				got := exchange(raw)
				if want := slowWire(s, raw); !bytes.Equal(got, want) {
					t.Errorf("%s %s: reply over UDP differs from the handler's:\n%x\n%x", q.name, v.name, got, want)
				}
			}
		}
	}
	if n := s.zone.Load().replies.len(); n != len(names)*2 {
		t.Errorf("%d replies kept, want %d: the fast path did not answer", n, len(names)*2)
	}
	// Each query counted once, over UDP and through the handler (the
	// comparison): 3 of each per question and EDNS variant.
	if n := val(s.metrics.queries.WithLabelValues("A", resultAnswered)); n != 24 {
		t.Errorf("queries_total{A,answered} = %v, want 24", n)
	}
	if n := val(s.metrics.queries.WithLabelValues("SRV", resultAnswered)); n != 12 {
		t.Errorf("queries_total{SRV,answered} = %v, want 12", n)
	}
	if n := val(s.metrics.queries.WithLabelValues("A", resultNXDomain)); n != 12 {
		t.Errorf("queries_total{A,nxdomain} = %v, want 12", n)
	}
	// Forwarded names and malformed queries still take the handler.
	id++
	fwd := new(dns.Msg)
	if err := fwd.Unpack(exchange(packQuery(t, extName, dns.TypeA, ednsVariant{}, id, flagVariants[0]))); err != nil {
		t.Fatal(err)
	}
	aAnswer(t, fwd, "192.0.2.91")
	two := query(webFQDN, dns.TypeA, 0)
	two.Id = 4242
	two.Question = append(two.Question, two.Question[0])
	raw, _ := two.Pack()
	if got := exchange(raw); got[3]&0xF != dns.RcodeFormatError {
		t.Errorf("two questions: rcode %d, want FORMERR", got[3]&0xF)
	}
}

// TestFastPathNoAllocs: a query answered from the cache allocates
// nothing.
func TestFastPathNoAllocs(t *testing.T) {
	s := newTestServer(t, Options{}, testSnapshot())
	r := &fastReader{s: s}
	raw := packQuery(t, strings.ToUpper(webFQDN), dns.TypeA, ednsVariant{size: 1232}, 1, flagVariants[0])
	if s.answerFast(r, raw, localClient) == nil {
		t.Fatal("not answered")
	}
	if n := testing.AllocsPerRun(100, func() { s.answerFast(r, raw, localClient) }); n != 0 {
		t.Errorf("%v allocations per query", n)
	}
}

// BenchmarkFastPath measures a zone query answered from the packed
// replies, without the socket.
func BenchmarkFastPath(b *testing.B) {
	s := newTestServer(b, Options{}, bigSnapshot(10000))
	r := &fastReader{s: s}
	raw := packQuery(b, "svc-1234.ns-34.svc.cluster.local.", dns.TypeA, ednsVariant{size: 1232}, 1, flagVariants[0])
	b.ReportAllocs()
	for b.Loop() {
		if s.answerFast(r, raw, localClient) == nil {
			b.Fatal("no answer")
		}
	}
}
