package dnsstub

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// TestZoneUpdateMatchesFull replays random changes through the zone's
// incremental path: after each step, the zone updated from the previous one
// must hold exactly what a full build of the same snapshot holds (names and
// their records, PTRs, counts, namespaces, kube-dns) and answer every name
// alike; the zone it came from must be as it was, and share the sub-zones
// of the Services that did not change. Some snapshots are skipped, as when
// the daemon coalesces changes.
func TestZoneUpdateMatchesFull(t *testing.T) {
	for _, tc := range []struct {
		name     string
		seed     uint64
		services int // in the first snapshot
		steps    int
	}{
		{"from 30 Services", 5, 30, 300},
		{"from none", 9, 0, 150},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(tc.seed, tc.seed+1))
			snap := &cluster.Snapshot{Version: 1, Services: map[cluster.ServiceKey]*cluster.Service{}}
			for range tc.services {
				k := randomKey(r)
				snap.Services[k] = randomService(r, k)
			}
			z := buildZone(snap, apex, 5)
			synced := 0
			for i := range tc.steps {
				snap = mutateSnapshot(r, snap, uint64(i+2))
				if r.IntN(4) == 0 {
					continue // this snapshot is never synced
				}
				synced++
				before := dumpZone(z)
				next := z.update(snap)
				if diff := cmp.Diff(before, dumpZone(z)); diff != "" {
					t.Fatalf("step %d: the update changed the zone it came from (-before +after):\n%s", i, diff)
				}
				full := buildZone(snap, apex, 5)
				if diff := cmp.Diff(dumpZone(full), dumpZone(next)); diff != "" {
					t.Fatalf("step %d: updated zone differs from a full build (-full +updated):\n%s", i, diff)
				}
				checkCounts(t, i, next)
				compareAnswers(t, i, full, next)
				checkShared(t, i, z, next)
				z = next
			}
			if synced < tc.steps/2 {
				t.Fatalf("only %d steps of %d synced", synced, tc.steps)
			}
		})
	}
}

// The pools random Services draw from: few enough that names, namespaces,
// ClusterIPs and endpoint addresses are often shared or reused.
var (
	updateNamespaces = []string{"default", "team-a", "team-b", "kube-system"}
	// S1 and s1 share their names; bad.dot is no one label.
	updateNames      = []string{"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "S1", "bad.dot"}
	updateClusterIPs = []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4", "10.96.0.5", "fd00:96::1", "fd00:96::2", "::ffff:10.96.0.6"}
	updateEndpoints  = []string{
		"10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5", "10.244.0.6", "10.244.0.7", "10.244.0.8",
		"fd00:244::1", "fd00:244::2", "fd00:244::3", "::ffff:10.244.0.9",
	}
	updateHostnames = []string{"", "", "h0", "h1", "H2"}
	updateExternal  = []string{"www.example.test", "s1.default.svc.cluster.local", "s2.team-a.svc.cluster.local.", "10.1.2.3", "", "bad..name"}
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

func randomKey(r *rand.Rand) cluster.ServiceKey {
	if r.IntN(15) == 0 {
		return kubeDNSKey
	}
	return cluster.ServiceKey{Namespace: pick(r, updateNamespaces), Name: pick(r, updateNames)}
}

// randomEndpoints returns up to n endpoints from the pool, sorted by
// address, some not ready.
func randomEndpoints(r *rand.Rand, n int) []cluster.Endpoint {
	var eps []cluster.Endpoint
	for _, a := range updateEndpoints {
		if r.IntN(len(updateEndpoints)) < n {
			eps = append(eps, ep(a, int32(8000+r.IntN(2)), r.IntN(4) != 0, pick(r, updateHostnames)))
		}
	}
	return eps
}

func randomPorts(r *rand.Rand, headless []cluster.Endpoint) []*cluster.Port {
	var ports []*cluster.Port
	for i := range r.IntN(3) {
		p := &cluster.Port{Port: int32(80 + i), Protocol: pick(r, []string{"TCP", "UDP"})}
		if i > 0 && r.IntN(3) == 0 {
			// The previous port's number on the other protocol, as
			// kube-dns's 53/UDP and 53/TCP: the same SRV records.
			p.Port, p.Protocol = ports[i-1].Port, map[string]string{"TCP": "UDP", "UDP": "TCP"}[ports[i-1].Protocol]
		}
		if r.IntN(3) != 0 {
			p.Name = pick(r, []string{"http", "dns", "dns-tcp", "Metrics"})
		}
		switch {
		case headless != nil && r.IntN(4) != 0:
			// The port's endpoints are the Service's, and at times one
			// more that is not among them.
			for _, e := range headless {
				if r.IntN(5) != 0 {
					e.Port = p.Port + 8000
					p.Endpoints = append(p.Endpoints, e)
				}
			}
			if r.IntN(4) == 0 {
				p.Endpoints = append(p.Endpoints, ep(pick(r, updateEndpoints), 53, true, ""))
			}
		default:
			p.Endpoints = randomEndpoints(r, 4)
		}
		ports = append(ports, p)
	}
	return ports
}

// randomService returns a Service of any kind under k.
func randomService(r *rand.Rand, k cluster.ServiceKey) *cluster.Service {
	svc := &cluster.Service{ServiceKey: k, Type: cluster.TypeClusterIP}
	switch r.IntN(9) {
	case 0, 1: // ClusterIP, single stack
		svc.ClusterIPs = []netip.Addr{ip(pick(r, updateClusterIPs))}
		svc.Ports = randomPorts(r, nil)
	case 2: // dual stack, at times the same address twice
		svc.Type = pick(r, []string{cluster.TypeClusterIP, cluster.TypeNodePort, cluster.TypeLoadBalancer})
		svc.ClusterIPs = []netip.Addr{ip(pick(r, updateClusterIPs)), ip(pick(r, updateClusterIPs))}
		svc.Ports = randomPorts(r, nil)
	case 3, 4: // headless with endpoints, ready or not
		svc.Headless = true
		svc.Endpoints = randomEndpoints(r, 5)
		svc.Ports = randomPorts(r, svc.Endpoints)
	case 5: // headless publishing not-ready addresses
		svc.Headless = true
		svc.PublishNotReadyAddresses = true
		svc.Endpoints = randomEndpoints(r, 3)
		svc.Ports = randomPorts(r, svc.Endpoints)
	case 6: // headless without endpoints
		svc.Headless = true
		svc.Ports = randomPorts(r, nil)
	default:
		svc.Type = cluster.TypeExternalName
		svc.ExternalName = pick(r, updateExternal)
	}
	return svc
}

// mutateSnapshot returns the next snapshot: a few Services added, removed,
// replaced by others or by copies of themselves (a new pointer, the same
// content), rarely by nil; at times many at once.
func mutateSnapshot(r *rand.Rand, snap *cluster.Snapshot, version uint64) *cluster.Snapshot {
	next := &cluster.Snapshot{Version: version, Services: maps.Clone(snap.Services)}
	n := 1 + r.IntN(3)
	if r.IntN(20) == 0 {
		n = 15
	}
	for range n {
		k := randomKey(r)
		switch old := next.Services[k]; {
		case old != nil && r.IntN(3) == 0:
			delete(next.Services, k)
		case old != nil && r.IntN(4) == 0:
			same := *old
			next.Services[k] = &same
		case r.IntN(40) == 0:
			next.Services[k] = nil // no Service, as bad input goes
		default:
			next.Services[k] = randomService(r, k)
		}
		next.Changed = append(next.Changed, k)
	}
	return next
}

// dumpZone is everything z holds, one item a line, in order.
func dumpZone(z *zone) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "serial %d version %d records %d names %d\n", z.serial, z.version, z.records, z.names)
	fmt.Fprintf(&b, "kube-dns %v glue %v\n", z.kubeDNS, z.kubeDNSIPs)
	for _, ns := range slices.Sorted(maps.Keys(z.namespaces)) {
		fmt.Fprintf(&b, "namespace %s: %d\n", ns, z.namespaces[ns])
	}
	var lines []string
	for _, shard := range z.subs.shards {
		for k, sub := range shard {
			var keys []string
			for _, svc := range sub.svcs {
				keys = append(keys, svc.ServiceKey.String())
			}
			lines = append(lines, fmt.Sprintf("sub-zone %s/%s %s: %v, %d records", k.ns, k.name, sub.base, keys, sub.records))
			for name, n := range sub.names {
				lines = append(lines, "name "+name+" "+dumpNode(n))
			}
		}
	}
	for _, shard := range z.ptr.shards {
		for a, targets := range shard {
			lines = append(lines, fmt.Sprintf("ptr %s %v", a, targets))
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func dumpNode(n *node) string {
	s := fmt.Sprintf("addrs %v", n.addrs)
	if n.cname != "" {
		s += " cname " + n.cname
	}
	for _, r := range n.srv {
		s += fmt.Sprintf(" srv(%d %d %s %v)", r.port, r.weight, r.target, r.addrs)
	}
	if len(n.txt) > 0 || n.apex {
		s += fmt.Sprintf(" txt %q apex %v", n.txt, n.apex)
	}
	return s
}

// checkCounts recounts z's records and names from its content.
func checkCounts(t *testing.T, step int, z *zone) {
	t.Helper()
	records := 3                   // SOA, NS and dns-version's TXT
	names := 3 + len(z.namespaces) // the domain, svc.<domain>, dns-version.<domain>
	for _, shard := range z.subs.shards {
		for _, sub := range shard {
			names += len(sub.names)
			for _, n := range sub.names {
				records += len(n.addrs) + len(n.srv) + len(n.txt)
				if n.cname != "" {
					records++
				}
			}
		}
	}
	for _, shard := range z.ptr.shards {
		for _, targets := range shard {
			records += len(targets)
		}
	}
	if z.records != records || z.names != names {
		t.Fatalf("step %d: zone counts %d records and %d names, holds %d and %d", step, z.records, z.names, records, names)
	}
}

// zoneNames returns the names z holds.
func zoneNames(z *zone) []string {
	var out []string
	for _, shard := range z.subs.shards {
		for _, sub := range shard {
			out = slices.AppendSeq(out, maps.Keys(sub.names))
		}
	}
	return out
}

// compareAnswers checks got answers as want does: every name either holds
// and names that are not there, for the usual types, and every PTR.
func compareAnswers(t *testing.T, step int, want, got *zone) {
	t.Helper()
	names := append(zoneNames(want), zoneNames(got)...)
	names = append(names, apex, "svc."+apex, "dns-version."+apex, "nope.svc."+apex, ".svc."+apex, "x.y.svc."+apex)
	for _, ns := range updateNamespaces {
		nsName := ns + ".svc." + apex
		names = append(names, nsName, "nope."+nsName, "x.s1."+nsName, "_tcp.s1."+nsName, "h0.s3."+nsName, "bad.dot."+nsName, "dot."+nsName)
	}
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeCNAME, dns.TypeSOA, dns.TypeNS, dns.TypeANY, dns.TypeMX} {
			ga := got.lookup(name, name, apex, qtype)
			for _, sec := range [][]dns.RR{ga.answer, ga.ns, ga.extra} {
				for i, rr := range sec {
					if slices.ContainsFunc(sec[:i], func(o dns.RR) bool { return dns.IsDuplicate(o, rr) }) {
						t.Fatalf("step %d: %s %s: %v twice in one section", step, name, dns.TypeToString[qtype], rr)
					}
				}
			}
			w, g := answerText(want.lookup(name, name, apex, qtype)), answerText(ga)
			if w != g {
				t.Fatalf("step %d: %s %s: updated zone answers\n%s\nfull build answers\n%s", step, name, dns.TypeToString[qtype], g, w)
			}
		}
	}
	var addrs []netip.Addr
	for _, s := range slices.Concat(updateClusterIPs, updateEndpoints, []string{"10.244.0.99", "fd00:96::99"}) {
		addrs = append(addrs, ip(s), ip(s).Unmap())
	}
	for _, z := range []*zone{want, got} {
		for _, shard := range z.ptr.shards {
			addrs = slices.AppendSeq(addrs, maps.Keys(shard))
		}
	}
	for _, a := range addrs {
		rev, err := dns.ReverseAddr(a.String())
		if err != nil {
			t.Fatal(err)
		}
		w, wok := want.lookupPTR(rev, rev)
		g, gok := got.lookupPTR(rev, rev)
		if wok != gok || fmt.Sprint(w) != fmt.Sprint(g) {
			t.Fatalf("step %d: PTR %s: updated zone answers %v (%v), full build %v (%v)", step, rev, g, gok, w, wok)
		}
	}
}

func answerText(a answer) string {
	return fmt.Sprintf("rcode %d chase %q\nanswer %v\nns %v\nextra %v", a.rcode, a.chase, a.answer, a.ns, a.extra)
}

// checkShared checks next shares with prev the sub-zones of the Services
// that stayed the same.
func checkShared(t *testing.T, step int, prev, next *zone) {
	t.Helper()
	for i, shard := range next.subs.shards {
		for k, sub := range shard {
			old := prev.subs.shards[i][k]
			if old != nil && old != sub && slices.Equal(old.svcs, sub.svcs) {
				t.Fatalf("step %d: the sub-zone of %v, unchanged, was rendered again", step, sub.svcs[0].ServiceKey)
			}
		}
	}
}

// TestSyncWhileQueried runs lookups on the zones as Sync swaps them: a
// zone in use is never changed (see go test -race), and a Service that
// stays the same is answered throughout.
func TestSyncWhileQueried(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	snap := testSnapshot()
	s := newTestServer(t, Options{}, snap)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			z := s.zone.Load()
			if a := z.lookup(webFQDN, webFQDN, apex, dns.TypeA); len(a.answer) != 1 {
				t.Errorf("zone %d: %s answers %v", z.version, webFQDN, a.answer)
				return
			}
			rev := "10.0.96.10.in-addr.arpa."
			if rrs, ok := z.lookupPTR(rev, rev); !ok || len(rrs) != 1 {
				t.Errorf("zone %d: %s answers %v", z.version, rev, rrs)
				return
			}
		}
	})
	for i := range 100 {
		snap = mutateSnapshot(r, snap, uint64(i+8))
		if err := s.Sync(t.Context(), snap); err != nil {
			t.Error(err)
		}
	}
	close(done)
	wg.Wait()
}

func TestParseReverse(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" when the name is no address of ours
	}{
		{"10.0.96.10.in-addr.arpa.", "10.96.0.10"},
		{"0.0.0.0.in-addr.arpa.", "0.0.0.0"},
		{"255.255.255.255.in-addr.arpa.", "255.255.255.255"},
		{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", "::1"},
		{"b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa.", "fd00:96::ab"},
		// An IPv4-mapped address in ip6.arpa. stays an IPv6 address.
		{"1.0.0.0.0.0.a.0.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", "::ffff:10.0.0.1"},
		{"010.0.96.10.in-addr.arpa.", ""},
		{"256.0.96.10.in-addr.arpa.", ""},
		{"1000.0.96.10.in-addr.arpa.", ""},
		{"0.96.10.in-addr.arpa.", ""},
		{"1.10.0.96.10.in-addr.arpa.", ""},
		{"..96.10.in-addr.arpa.", ""},
		{"a.0.96.10.in-addr.arpa.", ""},
		{"-1.0.96.10.in-addr.arpa.", ""},
		{"in-addr.arpa.", ""},
		{".in-addr.arpa.", ""},
		{"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", ""},
		{"10.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", ""},
		{"g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", ""},
		{"1.00.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", ""},
		{"ip6.arpa.", ""},
		{"10.0.96.10.example.", ""},
		{"", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, ok := parseReverse(tc.name)
			if tc.want == "" {
				if ok {
					t.Fatalf("parsed as %v, want no address", a)
				}
				return
			}
			if !ok || a != ip(tc.want) {
				t.Fatalf("parsed as %v (%v), want %s", a, ok, tc.want)
			}
		})
	}
	// Every address comes back from its reverse name as dns.ReverseAddr
	// writes it.
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		a := netip.AddrFrom16(b)
		if r.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte(b[:4]))
		}
		name, err := dns.ReverseAddr(a.String())
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := parseReverse(name); !ok || got != a {
			t.Fatalf("%s: parsed as %v (%v), want %v", name, got, ok, a)
		}
	}
}
