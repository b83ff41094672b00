package dnsstub

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

const (
	webFQDN = "web.default.svc.cluster.local."
	dbFQDN  = "db.default.svc.cluster.local."
	apex    = "cluster.local."
)

func TestZoneQueries(t *testing.T) {
	s := newTestServer(t, Options{NamespaceDomains: []string{"default"}}, testSnapshot())
	nx := func(name string, qtype uint16, soaOwner string) qcase {
		return qcase{Qname: name, Qtype: qtype, Rcode: dns.RcodeNameError, Ns: []string{SOA(soaOwner)}}
	}
	nodata := func(name string, qtype uint16, soaOwner string) qcase {
		return qcase{Qname: name, Qtype: qtype, Rcode: dns.RcodeSuccess, Ns: []string{SOA(soaOwner)}}
	}
	cases := []qcase{
		// ClusterIP Services; the answer keeps the asker's spelling.
		{Qname: webFQDN, Qtype: dns.TypeA, Answer: []string{A(webFQDN, "10.96.0.10")}},
		{Qname: "Web.Default.SVC.Cluster.Local.", Qtype: dns.TypeA, Answer: []string{A("Web.Default.SVC.Cluster.Local.", "10.96.0.10")}},
		nodata(webFQDN, dns.TypeAAAA, apex),
		nodata(webFQDN, dns.TypeMX, apex),
		nodata(webFQDN, dns.TypeTXT, apex),
		{Qname: "plain.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("plain.default.svc.cluster.local.", "10.96.0.12")}},
		// Dual-stack.
		{Qname: "dual.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("dual.default.svc.cluster.local.", "10.96.0.11")}},
		{Qname: "dual.default.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{AAAA("dual.default.svc.cluster.local.", "fd00:96::11")}},
		{Qname: "_https._tcp.dual.default.svc.cluster.local.", Qtype: dns.TypeSRV,
			Answer: []string{SRV("_https._tcp.dual.default.svc.cluster.local.", 100, 443, "dual.default.svc.cluster.local.")},
			Extra:  []string{A("dual.default.svc.cluster.local.", "10.96.0.11"), AAAA("dual.default.svc.cluster.local.", "fd00:96::11")}},
		// SRV of a ClusterIP Service: the Service is the target.
		{Qname: "_http._tcp." + webFQDN, Qtype: dns.TypeSRV,
			Answer: []string{SRV("_http._tcp."+webFQDN, 100, 80, webFQDN)},
			Extra:  []string{A(webFQDN, "10.96.0.10")}},
		{Qname: "_HTTP._TCP.Web.default.svc.cluster.local.", Qtype: dns.TypeSRV,
			Answer: []string{SRV("_HTTP._TCP.Web.default.svc.cluster.local.", 100, 80, webFQDN)},
			Extra:  []string{A(webFQDN, "10.96.0.10")}},
		{Qname: "_metrics._udp." + webFQDN, Qtype: dns.TypeSRV,
			Answer: []string{SRV("_metrics._udp."+webFQDN, 100, 9090, webFQDN)},
			Extra:  []string{A(webFQDN, "10.96.0.10")}},
		nodata("_http._tcp."+webFQDN, dns.TypeA, apex),
		nx("_http._udp."+webFQDN, dns.TypeSRV, apex),
		nx("_nope._tcp."+webFQDN, dns.TypeSRV, apex),
		nodata("_tcp."+webFQDN, dns.TypeSRV, apex), // an empty non-terminal
		// The Service name itself has SRV for every port, as CoreDNS.
		{Qname: webFQDN, Qtype: dns.TypeSRV,
			Answer: []string{SRV(webFQDN, 50, 80, webFQDN), SRV(webFQDN, 50, 9090, webFQDN)},
			Extra:  []string{A(webFQDN, "10.96.0.10")}},
		// Headless: ready endpoints only, names by hostname or dashed IP.
		{Qname: dbFQDN, Qtype: dns.TypeA, Answer: []string{A(dbFQDN, "10.244.1.10"), A(dbFQDN, "10.244.1.11")}},
		nodata(dbFQDN, dns.TypeAAAA, apex),
		{Qname: "db-0." + dbFQDN, Qtype: dns.TypeA, Answer: []string{A("db-0."+dbFQDN, "10.244.1.10")}},
		{Qname: "DB-1.db.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("DB-1.db.default.svc.cluster.local.", "10.244.1.11")}},
		nx("10-244-1-12."+dbFQDN, dns.TypeA, apex), // not ready
		nx("db-9."+dbFQDN, dns.TypeA, apex),
		{Qname: "_pg._tcp." + dbFQDN, Qtype: dns.TypeSRV,
			Answer: []string{SRV("_pg._tcp."+dbFQDN, 50, 5432, "db-0."+dbFQDN), SRV("_pg._tcp."+dbFQDN, 50, 5432, "db-1."+dbFQDN)},
			Extra:  []string{A("db-0."+dbFQDN, "10.244.1.10"), A("db-1."+dbFQDN, "10.244.1.11")}},
		{Qname: "h6.default.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{AAAA("h6.default.svc.cluster.local.", "fd00:10:244::5")}},
		{Qname: "h6.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("h6.default.svc.cluster.local.", "10.244.1.30")}},
		{Qname: "10-244-1-30.h6.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("10-244-1-30.h6.default.svc.cluster.local.", "10.244.1.30")}},
		{Qname: "fd00-10-244--5.h6.default.svc.cluster.local.", Qtype: dns.TypeAAAA, Answer: []string{AAAA("fd00-10-244--5.h6.default.svc.cluster.local.", "fd00:10:244::5")}},
		nodata("h6.default.svc.cluster.local.", dns.TypeSRV, apex), // headless without ports
		// Headless without ready endpoints: NXDOMAIN, unless it publishes
		// not-ready addresses.
		nx("nr.default.svc.cluster.local.", dns.TypeA, apex),
		nx("_p._tcp.nr.default.svc.cluster.local.", dns.TypeSRV, apex),
		nx("nr-0.nr.default.svc.cluster.local.", dns.TypeA, apex),
		{Qname: "pub.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("pub.default.svc.cluster.local.", "10.244.1.20")}},
		{Qname: "pub-0.pub.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("pub-0.pub.default.svc.cluster.local.", "10.244.1.20")}},
		// ExternalName: the CNAME first, then the chased target.
		{Qname: "ext.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{
			CNAME("ext.default.svc.cluster.local.", "web.default.svc.cluster.local."), A("web.default.svc.cluster.local.", "10.96.0.10")}},
		{Qname: "EXT.default.svc.cluster.local.", Qtype: dns.TypeAAAA,
			Answer: []string{CNAME("EXT.default.svc.cluster.local.", "web.default.svc.cluster.local.")},
			Ns:     []string{SOA(apex)}},
		{Qname: "ext.default.svc.cluster.local.", Qtype: dns.TypeCNAME, Answer: []string{
			CNAME("ext.default.svc.cluster.local.", "web.default.svc.cluster.local.")}},
		{Qname: "ext-gone.default.svc.cluster.local.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError,
			Answer: []string{CNAME("ext-gone.default.svc.cluster.local.", "missing.default.svc.cluster.local.")},
			Ns:     []string{SOA(apex)}},
		// A CNAME loop stops where it would repeat.
		{Qname: "loop1.default.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{
			CNAME("loop1.default.svc.cluster.local.", "loop2.default.svc.cluster.local."),
			CNAME("loop2.default.svc.cluster.local.", "loop1.default.svc.cluster.local.")}},
		// Unknown names: NXDOMAIN; existing parents: NODATA.
		nx("nope.default.svc.cluster.local.", dns.TypeA, apex),
		nx("web.nope.svc.cluster.local.", dns.TypeA, apex),
		nx("nope.svc.cluster.local.", dns.TypeA, apex),
		nx("a.b."+webFQDN, dns.TypeA, apex),
		nodata("default.svc.cluster.local.", dns.TypeA, apex),
		nodata("other.svc.cluster.local.", dns.TypeA, apex),
		nodata("kube-system.svc.cluster.local.", dns.TypeSRV, apex),
		nodata("svc.cluster.local.", dns.TypeA, apex),
		nodata("cluster.local.", dns.TypeA, apex),
		{Qname: "Cluster.Local.", Qtype: dns.TypeSOA, Answer: []string{SOA("Cluster.Local.")}},
		{Qname: apex, Qtype: dns.TypeNS, Answer: []string{NS(apex, "ns.dns.cluster.local.")},
			Extra: []string{A("ns.dns.cluster.local.", "10.96.0.53")}},
		nodata("svc.cluster.local.", dns.TypeSOA, apex),
		// dns-version.
		{Qname: "dns-version.cluster.local.", Qtype: dns.TypeTXT, Answer: []string{TXT("dns-version.cluster.local.", "1.1.0")}},
		nodata("dns-version.cluster.local.", dns.TypeA, apex),
		// PTR, IPv4 and IPv6: ClusterIPs and endpoints.
		{Qname: "10.0.96.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{PTR("10.0.96.10.in-addr.arpa.", webFQDN)}},
		{Qname: "5.1.244.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{PTR("5.1.244.10.in-addr.arpa.", "10-244-1-5."+webFQDN)}},
		{Qname: "10.1.244.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{PTR("10.1.244.10.in-addr.arpa.", "db-0."+dbFQDN)}},
		{Qname: rev(t, "fd00:96::11"), Qtype: dns.TypePTR, Answer: []string{PTR(rev(t, "fd00:96::11"), "dual.default.svc.cluster.local.")}},
		{Qname: strings.ToUpper(rev(t, "fd00:10:244::5")), Qtype: dns.TypePTR, Answer: []string{
			PTR(strings.ToUpper(rev(t, "fd00:10:244::5")), "fd00-10-244--5.h6.default.svc.cluster.local.")}},
		// Short forms, answered with the name asked.
		{Qname: "web.default.svc.", Qtype: dns.TypeA, Answer: []string{A("web.default.svc.", "10.96.0.10")}},
		{Qname: "Web.Default.Svc.", Qtype: dns.TypeA, Answer: []string{A("Web.Default.Svc.", "10.96.0.10")}},
		{Qname: "_http._tcp.web.default.svc.", Qtype: dns.TypeSRV,
			Answer: []string{SRV("_http._tcp.web.default.svc.", 100, 80, webFQDN)},
			Extra:  []string{A(webFQDN, "10.96.0.10")}},
		{Qname: "db-0.db.default.svc.", Qtype: dns.TypeA, Answer: []string{A("db-0.db.default.svc.", "10.244.1.10")}},
		nx("nope.default.svc.", dns.TypeA, "svc."),
		nx("x.nope.svc.", dns.TypeA, "svc."),
		nodata("default.svc.", dns.TypeA, "svc."),
		nodata("svc.", dns.TypeA, "svc."),
		{Qname: "web.default.", Qtype: dns.TypeA, Answer: []string{A("web.default.", "10.96.0.10")}},
		{Qname: "_pg._tcp.db.default.", Qtype: dns.TypeSRV,
			Answer: []string{SRV("_pg._tcp.db.default.", 50, 5432, "db-0."+dbFQDN), SRV("_pg._tcp.db.default.", 50, 5432, "db-1."+dbFQDN)},
			Extra:  []string{A("db-0."+dbFQDN, "10.244.1.10"), A("db-1."+dbFQDN, "10.244.1.11")}},
		nx("nope.default.", dns.TypeA, "default."),
		nodata("default.", dns.TypeA, "default."),
		// ANY at a Service.
		{Qname: "dual.default.svc.cluster.local.", Qtype: dns.TypeANY, Answer: []string{
			A("dual.default.svc.cluster.local.", "10.96.0.11"), AAAA("dual.default.svc.cluster.local.", "fd00:96::11"),
			SRV("dual.default.svc.cluster.local.", 100, 443, "dual.default.svc.cluster.local.")}},
	}
	for _, c := range cases {
		t.Run(c.Qname+"/"+dns.TypeToString[c.Qtype], func(t *testing.T) {
			c.check(t, ask(s, query(c.Qname, c.Qtype, 4096)))
		})
	}
}

func rev(t *testing.T, a string) string {
	t.Helper()
	r, err := dns.ReverseAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestProtocolRcodes covers the answers that do not depend on the zone.
func TestProtocolRcodes(t *testing.T) {
	s := newTestServer(t, Options{}, testSnapshot())

	t.Run("no question is SERVFAIL", func(t *testing.T) {
		m := new(dns.Msg)
		m.Id = 7
		r := ask(s, m)
		if r == nil || r.Rcode != dns.RcodeServerFailure || r.Id != 7 {
			t.Fatalf("reply %v, want SERVFAIL", r)
		}
	})
	t.Run("two questions is FORMERR", func(t *testing.T) {
		m := query(webFQDN, dns.TypeA, 0)
		m.Question = append(m.Question, dns.Question{Name: dbFQDN, Qtype: dns.TypeA, Qclass: dns.ClassINET})
		if r := ask(s, m); r == nil || r.Rcode != dns.RcodeFormatError {
			t.Fatalf("reply %v, want FORMERR", r)
		}
		if got := acceptMsg(dns.Header{Qdcount: 2}); got != dns.MsgReject {
			t.Errorf("accept of two questions: %v, want reject (FORMERR)", got)
		}
		if got := acceptMsg(dns.Header{Qdcount: 0}); got != dns.MsgAccept {
			t.Errorf("accept of no question: %v, want accept (handler answers SERVFAIL)", got)
		}
	})
	t.Run("non-IN class is REFUSED", func(t *testing.T) {
		m := query("version.bind.", dns.TypeTXT, 0)
		m.Question[0].Qclass = dns.ClassCHAOS
		if r := ask(s, m); r == nil || r.Rcode != dns.RcodeRefused {
			t.Fatalf("reply %v, want REFUSED", r)
		}
	})
	t.Run("EDNS version 1 is BADVERS with OPT", func(t *testing.T) {
		m := query(webFQDN, dns.TypeA, 1232)
		m.IsEdns0().SetVersion(1)
		r := ask(s, m)
		if r == nil || r.Rcode != dns.RcodeBadVers {
			t.Fatalf("reply %v, want BADVERS", r)
		}
		opt := r.IsEdns0()
		if opt == nil || opt.Version() != 0 || len(r.Answer) != 0 {
			t.Fatalf("BADVERS reply without a version-0 OPT or with answers: %v", r)
		}
	})
	t.Run("other opcode is NOTIMP", func(t *testing.T) {
		m := query(webFQDN, dns.TypeA, 0)
		m.Opcode = dns.OpcodeUpdate
		if r := ask(s, m); r == nil || r.Rcode != dns.RcodeNotImplemented {
			t.Fatalf("reply %v, want NOTIMP", r)
		}
	})
	t.Run("zone transfer is REFUSED", func(t *testing.T) {
		if r := ask(s, query(apex, dns.TypeAXFR, 0)); r == nil || r.Rcode != dns.RcodeRefused {
			t.Fatalf("reply %v, want REFUSED", r)
		}
	})
	t.Run("responses are ignored", func(t *testing.T) {
		m := query(webFQDN, dns.TypeA, 0)
		m.Response = true
		w := newRecorder("127.0.0.1:40000", false)
		s.ServeDNS(w, m)
		if w.writes != 0 {
			t.Fatalf("answered a response: %v", w.msg)
		}
		if got := acceptMsg(dns.Header{Bits: 1 << 15, Qdcount: 1}); got != dns.MsgIgnore {
			t.Errorf("accept of a response: %v, want ignore", got)
		}
	})
	for _, src := range []string{"192.0.2.1:5353", "[2001:db8::1]:5353", "10.244.1.5:1000"} {
		t.Run("non-local source "+src+" is REFUSED", func(t *testing.T) {
			w := newRecorder(src, false)
			s.ServeDNS(w, query(webFQDN, dns.TypeA, 0))
			if w.msg == nil || w.msg.Rcode != dns.RcodeRefused || len(w.msg.Answer) != 0 {
				t.Fatalf("reply %v, want REFUSED", w.msg)
			}
		})
	}
	for _, src := range []string{"127.0.0.1:5353", "127.1.2.3:5353", "[::1]:5353", "[::ffff:127.0.0.1]:53"} {
		t.Run("loopback source "+src+" is answered", func(t *testing.T) {
			w := newRecorder(src, true)
			s.ServeDNS(w, query(webFQDN, dns.TypeA, 0))
			if w.msg == nil || w.msg.Rcode != dns.RcodeSuccess || len(w.msg.Answer) != 1 {
				t.Fatalf("reply %v, want an answer", w.msg)
			}
		})
	}
}

func TestBeforeFirstSync(t *testing.T) {
	s := newTestServer(t, Options{NamespaceDomains: []string{"default"}}, nil)
	for _, name := range []string{
		webFQDN, "nope.default.svc.cluster.local.", apex, "svc.cluster.local.", "dns-version.cluster.local.",
		"web.default.svc.", "web.default.", "10-244-1-5.default.pod.cluster.local.",
	} {
		qcase{Qname: name, Qtype: dns.TypeA, Rcode: dns.RcodeServerFailure}.check(t, ask(s, query(name, dns.TypeA, 0)))
	}
	if st := s.Status().(*Status); st.Synced {
		t.Errorf("status says synced before the first Sync")
	}
	if err := s.Sync(t.Context(), testSnapshot()); err != nil {
		t.Fatal(err)
	}
	qcase{Qname: webFQDN, Qtype: dns.TypeA, Answer: []string{A(webFQDN, "10.96.0.10")}}.check(t, ask(s, query(webFQDN, dns.TypeA, 0)))
	st := s.Status().(*Status)
	if !st.Synced || st.SnapshotVersion != 7 || st.ZoneRecords == 0 {
		t.Errorf("status after sync: %+v", st)
	}
}

func TestSyncSwapsZone(t *testing.T) {
	s := newTestServer(t, Options{}, testSnapshot())
	next := testSnapshot()
	next.Version = 8
	delete(next.Services, cluster.ServiceKey{Namespace: "default", Name: "web"})
	next.Services[cluster.ServiceKey{Namespace: "new", Name: "web"}] = &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "new", Name: "web"}, Type: cluster.TypeClusterIP,
		ClusterIPs: []netip.Addr{ip("10.96.9.9")},
	}
	if err := s.Sync(t.Context(), next); err != nil {
		t.Fatal(err)
	}
	soa8 := strings.Replace(SOA(apex), " 7 7200", " 8 7200", 1)
	qcase{Qname: webFQDN, Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []string{soa8}}.check(t, ask(s, query(webFQDN, dns.TypeA, 0)))
	qcase{Qname: "web.new.svc.cluster.local.", Qtype: dns.TypeA, Answer: []string{A("web.new.svc.cluster.local.", "10.96.9.9")}}.
		check(t, ask(s, query("web.new.svc.cluster.local.", dns.TypeA, 0)))
	if err := s.Sync(t.Context(), nil); err == nil {
		t.Error("Sync(nil) returned no error")
	}
}

// TestTruncation checks replies are cut to the client's buffer with TC.
func TestTruncation(t *testing.T) {
	snap := testSnapshot()
	big := &cluster.Service{ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "big"}, Type: cluster.TypeClusterIP, Headless: true}
	for i := range 200 {
		big.Endpoints = append(big.Endpoints, ep(netip.AddrFrom4([4]byte{10, 245, byte(i / 250), byte(i%250 + 1)}).String(), 0, true, ""))
	}
	snap.Services[big.ServiceKey] = big
	s := newTestServer(t, Options{}, snap)
	name := "big.default.svc.cluster.local."

	for _, tc := range []struct {
		name      string
		size      uint16
		tcp       bool
		maxLen    int
		truncated bool
	}{
		{"udp without edns", 0, false, 512, true},
		{"udp edns 1232", 1232, false, 1232, true},
		{"udp edns 65000 capped", 65000, false, maxClientSize, false},
		{"tcp", 0, true, dns.MaxMsgSize, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRecorder("127.0.0.1:5000", tc.tcp)
			s.ServeDNS(w, query(name, dns.TypeA, tc.size))
			if w.msg == nil {
				t.Fatal("no reply")
			}
			if len(w.wire) > tc.maxLen {
				t.Errorf("reply of %d bytes, over %d", len(w.wire), tc.maxLen)
			}
			if w.msg.Truncated != tc.truncated {
				t.Errorf("TC = %v, want %v", w.msg.Truncated, tc.truncated)
			}
			if !tc.truncated && len(w.msg.Answer) != 200 {
				t.Errorf("%d answers, want 200", len(w.msg.Answer))
			}
			if tc.size > 0 && w.msg.IsEdns0() == nil {
				t.Errorf("no OPT in the reply to an EDNS query")
			}
		})
	}
}

func TestKubeDNSTargets(t *testing.T) {
	svc := func(ports ...*cluster.Port) *cluster.Service {
		return &cluster.Service{ServiceKey: kubeDNSKey, Type: cluster.TypeClusterIP, ClusterIPs: []netip.Addr{ip("10.96.0.10"), ip("fd00::a")}, Ports: ports}
	}
	tgt := func(udp, tcp string) kubeDNSTarget {
		return kubeDNSTarget{UDP: netip.MustParseAddrPort(udp), TCP: netip.MustParseAddrPort(tcp)}
	}
	clusterIPs := []kubeDNSTarget{tgt("10.96.0.10:53", "10.96.0.10:53"), tgt("[fd00::a]:53", "[fd00::a]:53")}
	for _, tc := range []struct {
		name string
		svc  *cluster.Service
		want []kubeDNSTarget
	}{
		{"named ports", svc(
			&cluster.Port{Name: "metrics", Port: 9153, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 9153, true, "")}},
			&cluster.Port{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 1053, true, ""), ep("10.244.0.3", 1053, false, "")}},
			&cluster.Port{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 2053, true, ""), ep("10.244.0.3", 2053, false, "")}},
		), append([]kubeDNSTarget{tgt("10.244.0.2:1053", "10.244.0.2:2053")}, clusterIPs...)},
		{"port 53 unnamed", svc(
			&cluster.Port{Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("10.244.0.4", 53, true, ""), ep("10.244.0.5", 53, true, "")}},
		), append([]kubeDNSTarget{tgt("10.244.0.4:53", "10.244.0.4:53"), tgt("10.244.0.5:53", "10.244.0.5:53")}, clusterIPs...)},
		{"no ready endpoints: ClusterIPs", svc(
			&cluster.Port{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 53, false, "")}},
		), clusterIPs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := kubeDNSTargets(tc.svc)
			if len(got) != len(tc.want) {
				t.Fatalf("targets %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("target %d: %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	good := Options{Listen: netip.MustParseAddrPort("127.0.0.53:53"), ClusterDomain: "cluster.local"}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	bad := good
	bad.Listen = netip.MustParseAddrPort("0.0.0.0:53")
	bad.ClusterDomain = ""
	bad.Upstreams = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}
	bad.NamespaceDomains = []string{"a.b"}
	bad.MaxPerClient = -1
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad options accepted")
	}
	for _, field := range []string{"listen:", "clusterDomain:", "maxPerClient:", "namespaceDomains[0]:"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
	loop := good
	loop.Upstreams = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}
	if _, err := New(loop); err == nil || !strings.Contains(err.Error(), "forwarding loop") {
		t.Errorf("New with its own address as upstream: %v, want a forwarding loop error", err)
	}
	v6 := good
	v6.Listen = netip.MustParseAddrPort("[::]:53")
	if _, err := New(v6); err == nil {
		t.Error("New accepted [::]:53")
	}
	remote := good
	remote.Listen = netip.MustParseAddrPort("192.0.2.77:53")
	if err := remote.Validate(); err == nil {
		t.Error("a non-local listen address was accepted")
	}
}
