package dnsstub

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// dupSnapshot is a cluster where the same record could come twice: ports
// with one number on two protocols (kube-dns's 53/UDP and 53/TCP), a
// dual-stack ClusterIP, an endpoint in two EndpointSlices, the same pod
// on two ports, an address that is both a ClusterIP and an endpoint, an
// endpoint of two Services, and an ExternalName to chase.
func dupSnapshot() *cluster.Snapshot {
	dnsPorts := func(eps ...cluster.Endpoint) []*cluster.Port {
		at := func(port int32) []cluster.Endpoint {
			out := slices.Clone(eps)
			for i := range out {
				out[i].Port = port
			}
			return out
		}
		return []*cluster.Port{
			{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: at(53)},
			{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: at(53)},
			{Name: "metrics", Port: 9153, Protocol: "TCP", Endpoints: at(9153)},
		}
	}
	// 10.244.0.2 is in two slices of each Service.
	pods := []cluster.Endpoint{ep("10.244.0.2", 0, true, ""), ep("10.244.0.2", 0, true, ""), ep("fd00:10:244::3", 0, true, "")}
	// Many endpoints: SRV records deduplicated with a set.
	big := &cluster.Service{ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "big"}, Type: cluster.TypeClusterIP, Headless: true}
	for i := range bigEndpoints {
		big.Endpoints = append(big.Endpoints, ep(netip.AddrFrom4([4]byte{10, 245, 0, byte(i + 1)}).String(), 0, true, ""))
	}
	big.Ports = dnsPorts(big.Endpoints...)
	svcs := []*cluster.Service{
		{
			ServiceKey: cluster.ServiceKey{Namespace: "kube-system", Name: "kube-dns"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.0.10"), ip("fd00:96::a")},
			Ports:      dnsPorts(pods...),
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "kube-system", Name: "dns-headless"}, Type: cluster.TypeClusterIP, Headless: true,
			Endpoints: pods,
			Ports:     dnsPorts(pods...),
		},
		{
			// The same pod on two ports; its address is also web's ClusterIP.
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "multi"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.0.20"), ip("10.96.0.20")},
			Ports: []*cluster.Port{
				{Name: "http", Port: 80, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.5", 8080, true, ""), ep("10.96.0.30", 8080, true, "")}},
				{Name: "alt", Port: 8080, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.5", 8080, true, ""), ep("10.244.0.5", 8080, true, "")}},
			},
		},
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "web"}, Type: cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip("10.96.0.30")},
			Ports:      []*cluster.Port{{Name: "http", Port: 80, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.5", 80, true, "")}}},
		},
		big,
		{
			ServiceKey: cluster.ServiceKey{Namespace: "default", Name: "alias"}, Type: cluster.TypeExternalName,
			ExternalName: "kube-dns.kube-system.svc.cluster.local",
		},
	}
	snap := &cluster.Snapshot{Version: 7, Time: time.Unix(1700000000, 0), Services: map[cluster.ServiceKey]*cluster.Service{}}
	for _, s := range svcs {
		snap.Services[s.ServiceKey] = s
		snap.Changed = append(snap.Changed, s.ServiceKey)
	}
	return snap
}

const bigEndpoints = 20

// TestNoDuplicateRecords: every section of every answer holds each record
// once (RFC 2181 section 5), for every record type, at every name of a
// zone built to tempt duplicates; the fast path, which caches the
// handler's packed reply, is checked too.
func TestNoDuplicateRecords(t *testing.T) {
	s := newTestServer(t, Options{}, dupSnapshot())
	const kd = "kube-dns.kube-system.svc.cluster.local."
	const hd = "dns-headless.kube-system.svc.cluster.local."
	const multi = "multi.default.svc.cluster.local."
	cases := []qcase{
		// kube-dns: 53/UDP and 53/TCP make one SRV record.
		{Qname: kd, Qtype: dns.TypeSRV,
			Answer: []string{SRV(kd, 50, 53, kd), SRV(kd, 50, 9153, kd)},
			Extra:  []string{A(kd, "10.96.0.10"), AAAA(kd, "fd00:96::a")}},
		{Qname: "_dns._udp." + kd, Qtype: dns.TypeSRV, Answer: []string{SRV("_dns._udp."+kd, 100, 53, kd)},
			Extra: []string{A(kd, "10.96.0.10"), AAAA(kd, "fd00:96::a")}},
		{Qname: "_dns-tcp._tcp." + kd, Qtype: dns.TypeSRV, Answer: []string{SRV("_dns-tcp._tcp."+kd, 100, 53, kd)},
			Extra: []string{A(kd, "10.96.0.10"), AAAA(kd, "fd00:96::a")}},
		{Qname: kd, Qtype: dns.TypeA, Answer: []string{A(kd, "10.96.0.10")}},
		{Qname: kd, Qtype: dns.TypeAAAA, Answer: []string{AAAA(kd, "fd00:96::a")}},
		{Qname: kd, Qtype: dns.TypeANY, Answer: []string{A(kd, "10.96.0.10"), AAAA(kd, "fd00:96::a"), SRV(kd, 50, 53, kd), SRV(kd, 50, 9153, kd)}},
		// Headless with the same ports, one endpoint in two slices.
		{Qname: hd, Qtype: dns.TypeA, Answer: []string{A(hd, "10.244.0.2")}},
		{Qname: hd, Qtype: dns.TypeAAAA, Answer: []string{AAAA(hd, "fd00:10:244::3")}},
		{Qname: hd, Qtype: dns.TypeSRV,
			Answer: []string{SRV(hd, 25, 53, "10-244-0-2."+hd), SRV(hd, 25, 53, "fd00-10-244--3."+hd), SRV(hd, 25, 9153, "10-244-0-2."+hd), SRV(hd, 25, 9153, "fd00-10-244--3."+hd)},
			Extra:  []string{A("10-244-0-2."+hd, "10.244.0.2"), AAAA("fd00-10-244--3."+hd, "fd00:10:244::3")}},
		{Qname: "_dns._udp." + hd, Qtype: dns.TypeSRV,
			Answer: []string{SRV("_dns._udp."+hd, 50, 53, "10-244-0-2."+hd), SRV("_dns._udp."+hd, 50, 53, "fd00-10-244--3."+hd)},
			Extra:  []string{A("10-244-0-2."+hd, "10.244.0.2"), AAAA("fd00-10-244--3."+hd, "fd00:10:244::3")}},
		{Qname: "10-244-0-2." + hd, Qtype: dns.TypeA, Answer: []string{A("10-244-0-2."+hd, "10.244.0.2")}},
		// The same pod on two ports, and a ClusterIP listed twice.
		{Qname: multi, Qtype: dns.TypeA, Answer: []string{A(multi, "10.96.0.20")}},
		{Qname: "_alt._tcp." + multi, Qtype: dns.TypeSRV, Answer: []string{SRV("_alt._tcp."+multi, 100, 8080, multi)},
			Extra: []string{A(multi, "10.96.0.20")}},
		// PTR: an endpoint of two Services, in two slices of each, has one
		// record per name; an address that is a ClusterIP and an endpoint
		// has both names, once each.
		{Qname: "2.0.244.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{
			PTR("2.0.244.10.in-addr.arpa.", "10-244-0-2."+hd), PTR("2.0.244.10.in-addr.arpa.", "10-244-0-2."+kd)}},
		{Qname: "5.0.244.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{
			PTR("5.0.244.10.in-addr.arpa.", "10-244-0-5."+multi), PTR("5.0.244.10.in-addr.arpa.", "10-244-0-5.web.default.svc.cluster.local.")}},
		{Qname: "30.0.96.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{
			PTR("30.0.96.10.in-addr.arpa.", "10-96-0-30."+multi), PTR("30.0.96.10.in-addr.arpa.", "web.default.svc.cluster.local.")}},
		{Qname: "20.0.96.10.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []string{PTR("20.0.96.10.in-addr.arpa.", multi)}},
		// The CNAME chased to kube-dns.
		{Qname: "alias.default.svc.cluster.local.", Qtype: dns.TypeSRV,
			Answer: []string{CNAME("alias.default.svc.cluster.local.", kd), SRV(kd, 50, 53, kd), SRV(kd, 50, 9153, kd)},
			Extra:  []string{A(kd, "10.96.0.10"), AAAA(kd, "fd00:96::a")}},
	}
	for _, c := range cases {
		t.Run(c.Qname+"/"+dns.TypeToString[c.Qtype], func(t *testing.T) {
			c.check(t, ask(s, query(c.Qname, c.Qtype, 4096)))
		})
	}

	// Every name and address of the zone, every type, through the handler
	// and the fast path.
	z := s.zone.Load()
	names := append(zoneNames(z), apex, "svc."+apex, "kube-system.svc."+apex, "ns.dns."+apex)
	for _, shard := range z.ptr.shards {
		for a := range maps.Keys(shard) {
			rev, err := dns.ReverseAddr(a.String())
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, rev)
		}
	}
	slices.Sort(names)
	r := &fastReader{s: s}
	asked := 0
	for _, name := range names {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypePTR, dns.TypeTXT, dns.TypeCNAME, dns.TypeANY, dns.TypeNS, dns.TypeSOA, dns.TypeMX} {
			what := name + " " + dns.TypeToString[qtype]
			m := ask(s, query(name, qtype, 4096))
			if m == nil {
				t.Fatalf("%s: no reply", what)
			}
			checkNoDuplicates(t, what, m)
			asked++
			for range 2 { // packed, then from the cache
				if wire := fastWire(s, r, packQuery(t, name, qtype, ednsVariant{size: 4096}, 1, flagVariants[0])); wire != nil {
					fm := new(dns.Msg)
					if err := fm.Unpack(wire); err != nil {
						t.Fatalf("%s: fast path reply: %v", what, err)
					}
					checkNoDuplicates(t, what+" (fast path)", fm)
				}
			}
		}
	}
	m := ask(s, query("big.default.svc.cluster.local.", dns.TypeSRV, 65000))
	if got, want := len(m.Answer), 2*bigEndpoints; got != want {
		t.Errorf("big SRV: %d records, want %d (ports 53 and 9153 of %d endpoints)", got, want, bigEndpoints)
	}
	if asked < 200 {
		t.Fatalf("asked only %d questions", asked)
	}
}
