package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// partialTestPrevious derives, from snap, an earlier snapshot that differs
// in every way a partial render must handle: a third of the Services keep
// their pointer, a third differ (fewer or other endpoints, another port, no
// endpoints, new cluster IPs), a third are missing, and some Services of the
// earlier one are gone from snap.
func partialTestPrevious(snap *cluster.Snapshot) *cluster.Snapshot {
	prev := &cluster.Snapshot{Version: 1, Services: map[cluster.ServiceKey]*cluster.Service{}}
	for i, svc := range snap.SortedServices() {
		switch i % 3 {
		case 0:
			prev.Services[svc.ServiceKey] = svc
		case 1:
			old := *svc
			old.Ports = nil
			for j, p := range svc.Ports {
				q := *p
				switch (i + j) % 4 {
				case 0:
					q.Endpoints = q.Endpoints[:len(q.Endpoints)/2]
				case 1:
					q.Endpoints = append(slices.Clone(q.Endpoints), ready("10.244.9.9", 9), ready("fd00:244:9::9", 9))
				case 2:
					q.Port++
				}
				old.Ports = append(old.Ports, &q)
			}
			if i%2 == 1 {
				old.ClusterIPs = append(slices.Clone(old.ClusterIPs), mustAddr("172.30.9.9"), mustAddr("fd00:30::9:9"))
			}
			prev.Services[svc.ServiceKey] = &old
		}
	}
	for _, s := range []*cluster.Service{
		service("gone", "a", []string{"172.30.8.1", "fd00:30::8:1"}, svcPort("http", 80, "TCP", ready("10.244.8.1", 80), ready("fd00:244:8::1", 80))),
		service("gone", "b", []string{"172.30.8.2"}, svcPort("", 53, "UDP", ready("10.244.8.2", 53)), svcPort("x", 54, "TCP")),
	} {
		prev.Services[s.ServiceKey] = s
	}
	return prev
}

// partialRuleset restores the full render of in.Previous and then the
// partial render of in, as the backend does.
func partialRuleset(t testing.TB, in RenderInput) *ruleset {
	t.Helper()
	full := in
	full.Snapshot, full.Previous = in.Previous, nil
	full.ExistingNATChains, full.ExistingFilterChains = nil, nil
	nat0, filter0, _ := render(t, full)
	rs, err := parseRestore(nat0, filter0)
	if err != nil {
		t.Fatalf("full render of the previous snapshot: %v", err)
	}
	nat, filter, _ := render(t, in)
	for _, p := range [][]byte{nat, filter} {
		if err := rs.restore(p); err != nil {
			t.Fatalf("partial payload: %v\n%s", err, p)
		}
	}
	return rs
}

func TestRenderIPTablesPartialGolden(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			in := goldenInput(f)
			in.Previous = partialTestPrevious(in.Snapshot)
			nat, filter, _ := render(t, in)
			checkGolden(t, "iptables-partial-"+strings.ToLower(f.String())+".golden", slices.Concat(nat, filter))
		})
	}
}

// TestRenderIPTablesPartialInline spells out a partial payload: one Service
// updated, one unchanged, one removed.
func TestRenderIPTablesPartialInline(t *testing.T) {
	a := service("ns", "a", []string{"172.30.0.1"}, svcPort("http", 80, "TCP", ready("10.244.0.1", 80)))
	b1 := service("ns", "b", []string{"172.30.0.2"}, svcPort("http", 80, "TCP", ready("10.244.0.2", 80), ready("10.244.0.3", 80)))
	b2 := service("ns", "b", []string{"172.30.0.2"}, svcPort("http", 80, "TCP", ready("10.244.0.3", 80)))
	c := service("ns", "c", []string{"172.30.0.3"}, svcPort("dns", 53, "UDP"))
	d := service("ns", "d", []string{"172.30.0.4"}, svcPort("dns", 53, "UDP", ready("10.244.0.4", 53)))
	in := RenderInput{Snapshot: snapshot(a, b2, c), Previous: snapshot(a, b1, c, d), Family: IPv4, Masquerade: true}
	nat, filter, _ := render(t, in)
	svcB := chainOf(svcChainPrefix, "ns/b:http", "tcp", "")
	sep2 := chainOf(sepChainPrefix, "ns/b:http", "tcp", "10.244.0.2:80")
	sep3 := chainOf(sepChainPrefix, "ns/b:http", "tcp", "10.244.0.3:80")
	svcD := chainOf(svcChainPrefix, "ns/d:dns", "udp", "")
	sepD := chainOf(sepChainPrefix, "ns/d:dns", "udp", "10.244.0.4:53")
	cntD := chainOf(cntChainPrefix, "ns/d:dns", "udp", "")
	// b's counter stays as it is (not declared: its count goes on); d's
	// goes with d.
	stale := []string{sep2, svcD, sepD, cntD}
	slices.Sort(stale)
	want := dedent(`
		*nat
		:BRIDGE-SERVICES - [0:0]
		:` + svcB + ` - [0:0]
		:` + sep3 + ` - [0:0]
		:` + stale[0] + ` - [0:0]
		:` + stale[1] + ` - [0:0]
		:` + stale[2] + ` - [0:0]
		:` + stale[3] + ` - [0:0]
		-A BRIDGE-SERVICES -d 172.30.0.1/32 -p tcp -m comment --comment "ns/a:http cluster IP" -m tcp --dport 80 -j ` + chainOf(svcChainPrefix, "ns/a:http", "tcp", "") + `
		-A BRIDGE-SERVICES -d 172.30.0.2/32 -p tcp -m comment --comment "ns/b:http cluster IP" -m tcp --dport 80 -j ` + svcB + `
		-A ` + svcB + ` -j ` + chainOf(cntChainPrefix, "ns/b:http", "tcp", "") + `
		-A ` + svcB + ` -m comment --comment "ns/b:http cluster IP" -j BRIDGE-MARK-MASQ
		-A ` + svcB + ` -m comment --comment "ns/b:http -> 10.244.0.3:80" -j ` + sep3 + `
		-A ` + sep3 + ` -s 10.244.0.3/32 -m comment --comment "ns/b:http" -j BRIDGE-MARK-MASQ
		-A ` + sep3 + ` -p tcp -m comment --comment "ns/b:http" -m tcp -j DNAT --to-destination 10.244.0.3:80
		-X ` + stale[0] + `
		-X ` + stale[1] + `
		-X ` + stale[2] + `
		-X ` + stale[3] + `
		COMMIT
		*filter
		:BRIDGE-SERVICES - [0:0]
		-A BRIDGE-SERVICES -d 172.30.0.3/32 -p udp -m comment --comment "ns/c:dns has no endpoints" -m udp --dport 53 -j REJECT
		COMMIT
	`)
	if diff := cmpText(want, string(nat)+string(filter)); diff != "" {
		t.Errorf("partial payload (-want +got):\n%s", diff)
	}
}

// TestRenderIPTablesPartialEquivalent checks that the full render of the
// previous snapshot followed by a partial render leaves the tables a full
// render of the snapshot gives, with the same stats.
func TestRenderIPTablesPartialEquivalent(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   RenderInput
	}{
		{"golden IPv4", goldenInput(IPv4)},
		{"golden IPv6", goldenInput(IPv6)},
		{"zone, no masquerade", RenderInput{Snapshot: snapshot(testServices()...), Family: IPv4, Zone: "zone-a", MasqueradeMark: 0x8000}},
		{"synthetic", RenderInput{Snapshot: syntheticSnapshot(200, 3), Family: IPv4, Masquerade: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.ExistingNATChains, in.ExistingFilterChains = nil, nil
			in.Previous = partialTestPrevious(in.Snapshot)
			got := partialRuleset(t, in)

			full := in
			full.Previous = nil
			nat, filter, want := render(t, full)
			wantRS, err := parseRestore(nat, filter)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmpText(rulesetText(wantRS), rulesetText(got)); diff != "" {
				t.Errorf("tables after the partial restore differ from a full restore (-full +partial):\n%s", diff)
			}

			// The stats equal those of a full render given the chains the
			// previous render left.
			prev := in
			prev.Snapshot, prev.Previous = in.Previous, nil
			pnat, pfilter, _ := render(t, prev)
			full.ExistingNATChains = declaredChains(pnat)
			full.ExistingFilterChains = declaredChains(pfilter)
			_, _, want = render(t, full)
			_, _, stats := render(t, in)
			if diff := cmpAny(want, stats); diff != "" {
				t.Errorf("stats (-full +partial):\n%s", diff)
			}
			r := &iptRenderer{in: in, mark: "0x4000"}
			r.plan()
			if n := len(r.writeNAT()); n > r.natSize {
				t.Errorf("partial nat payload is %d bytes, estimated at most %d", n, r.natSize)
			}
		})
	}
}

// TestPacketFlowsPartial traces the packet-flow cases through tables built
// by a partial restore.
func TestPacketFlowsPartial(t *testing.T) {
	snap := snapshot(testServices()...)
	for _, f := range []Family{IPv4, IPv6} {
		in := RenderInput{Snapshot: snap, Previous: partialTestPrevious(snap), Family: f, Masquerade: true}
		rs := partialRuleset(t, in)
		for _, tt := range []flowTest{
			{dst: "172.30.0.10", dport: 80, output: "10.244.1.5:8080, 10.244.2.7:8081, 10.244.3.9:8080", masq: true},
			{dst: "172.30.0.10", dport: 443, output: "10.244.1.5:8443", masq: true},
			{dst: "172.30.0.53", proto: "udp", dport: 53, output: "10.244.1.10:53, 10.244.2.10:53", masq: true},
			{dst: "172.30.0.53", dport: 53, output: "10.244.1.10:53, 10.244.2.10:53", masq: true},
			{dst: "172.30.0.60", proto: "sctp", dport: 9999, output: "10.244.1.20:9999", masq: true},
			{dst: "172.30.0.40", dport: 80, output: "10.244.1.40:8080, 10.244.2.40:8080", masq: true},
			{dst: "fd00:30::40", dport: 80, output: "[fd00:244:1::40]:8080", masq: true},
			{dst: "fd00:30::50", dport: 80, output: "[fd00:244:1::50]:80, [fd00:244:2::50]:80", masq: true},
			{dst: "172.30.0.70", dport: 80, output: "10.244.1.70:80, 10.244.2.70:80", masq: true},
			{dst: "172.30.0.80", dport: 80, output: "REJECT"},
			{dst: "fd00:30::80", dport: 80, output: "REJECT"},
			{dst: "172.30.0.81", dport: 80, output: "REJECT"},
			{dst: "172.30.0.82", dport: 80, output: "10.244.1.82:80", masq: true},
			{dst: "172.30.0.83", dport: 80, output: "10.244.1.83:80", masq: true},
			{dst: "172.30.0.90", dport: 80},
			{dst: "172.30.8.1", dport: 80},
			{dst: "172.30.8.2", proto: "udp", dport: 53},
			{dst: "172.30.9.9", dport: 80},
			{dst: "172.30.0.10", dport: 81},
		} {
			p := mustPacket(tt)
			if p.dst.Is4() != (f == IPv4) {
				continue
			}
			paths, err := (&tracer{rs: rs}).trace(p)
			if err != nil {
				t.Fatalf("%v %s:%d: %v", f, tt.dst, tt.dport, err)
			}
			output, masq, err := flow(paths)
			if err != nil {
				t.Fatal(err)
			}
			if output != tt.output || masq != tt.masq {
				t.Errorf("%v %s %s:%d: got %q masq=%v, want %q masq=%v", f, tt.proto, tt.dst, tt.dport, output, masq, tt.output, tt.masq)
			}
		}
	}
}

// rulesetText renders every chain of a ruleset with its rules, sorted by
// table and chain.
func rulesetText(rs *ruleset) string {
	var b strings.Builder
	for _, t := range slices.Sorted(maps.Keys(rs.tables)) {
		for _, c := range slices.Sorted(maps.Keys(rs.tables[t])) {
			fmt.Fprintf(&b, "%s :%s\n", t, c)
			for _, r := range rs.tables[t][c] {
				fmt.Fprintf(&b, "%s -A %s %s\n", t, c, strings.Join(r.args, " "))
			}
		}
	}
	return b.String()
}

func declaredChains(payload []byte) []string {
	var out []string
	for _, line := range strings.Split(string(payload), "\n") {
		if name, ok := strings.CutPrefix(line, ":"); ok {
			name, _, _ = strings.Cut(name, " ")
			out = append(out, name)
		}
	}
	return out
}

// randomService builds a Service of the key from a pool of addresses, so
// that endpoints come and go and Services share nothing but the pool.
func randomService(rng *rand.Rand, key cluster.ServiceKey, idx int) *cluster.Service {
	var ips []string
	switch rng.IntN(4) {
	case 0:
		ips = []string{fmt.Sprintf("fd00:30::%x", idx)}
	case 1:
		ips = []string{fmt.Sprintf("172.30.1.%d", idx), fmt.Sprintf("fd00:30::%x", idx)}
	default:
		ips = []string{fmt.Sprintf("172.30.1.%d", idx)}
	}
	var ports []*cluster.Port
	for j := range 1 + rng.IntN(2) {
		proto := []string{"TCP", "UDP", "SCTP"}[rng.IntN(3)]
		p := svcPort(fmt.Sprintf("p%d", j), int32(80+j), proto)
		for range rng.IntN(5) {
			k := rng.IntN(8)
			addr := fmt.Sprintf("10.244.%d.%d", idx, k)
			if rng.IntN(3) == 0 {
				addr = fmt.Sprintf("fd00:244:%x::%x", idx, k)
			}
			var ep cluster.Endpoint
			switch rng.IntN(6) {
			case 0:
				ep = servingTerminating(addr, 8080)
			case 1:
				ep = notReady(addr, 8080)
			default:
				ep = ready(addr, int32(8080+rng.IntN(2)))
			}
			if rng.IntN(4) == 0 {
				ep = hinted(ep, "zone-a", []string{"zone-a", "zone-b"}[rng.IntN(2)])
			}
			if !slices.ContainsFunc(p.Endpoints, func(e cluster.Endpoint) bool { return e.AddrPort() == ep.AddrPort() }) {
				p.Endpoints = append(p.Endpoints, ep)
			}
		}
		ports = append(ports, p)
	}
	svc := service(key.Namespace, key.Name, ips, ports...)
	switch rng.IntN(10) {
	case 0:
		svc.SessionAffinityTimeout = time.Duration(1+rng.IntN(3)) * time.Hour
	case 1:
		svc.Proxied = false
	case 2:
		svc.InternalTrafficLocal = true
	}
	return svc
}

// TestIPTablesPartialSyncRandom replays random snapshot sequences through
// the backend, with partial syncs, periodic full ones and failed restores,
// and after every sync compares the tables with a full restore of the same
// snapshot into empty ones. It also checks that partial syncs list and check
// nothing and mention no chain of an unchanged Service.
func TestIPTablesPartialSyncRandom(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			ctx := context.Background()
			x := newFakeXtables()
			ct := &fakeConntrack{}
			opts := IPTablesOptions{Families: []Family{IPv4, IPv6}, FullSyncPeriod: time.Hour, Masquerade: seed%2 == 0}
			if seed%3 == 0 {
				opts.Zone = "zone-a"
			}
			p := newIPTables(opts, x, ct)
			clock := time.Unix(1000, 0)
			p.now = func() time.Time { return clock }

			services := map[cluster.ServiceKey]*cluster.Service{}
			var synced *cluster.Snapshot
			partials, fulls := 0, 0
			for step := range 60 {
				// Change a few Services: add, remove, update, or replace with
				// an equal copy.
				for range 1 + rng.IntN(4) {
					i := rng.IntN(25)
					key := cluster.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%3), Name: fmt.Sprintf("svc%d", i)}
					switch rng.IntN(5) {
					case 0:
						delete(services, key)
					case 1:
						if s := services[key]; s != nil {
							c := *s
							services[key] = &c
						}
					default:
						services[key] = randomService(rng, key, i)
					}
				}
				snap := &cluster.Snapshot{Version: uint64(step + 2), Services: maps.Clone(services)}
				if rng.IntN(4) == 0 {
					continue // skipped snapshot
				}
				if rng.IntN(6) == 0 {
					clock = clock.Add(time.Hour) // periodic full sync
				} else {
					clock = clock.Add(time.Second)
				}
				if rng.IntN(12) == 0 {
					x.failNext = errors.New("injected failure")
					x.failAfterTables = rng.IntN(3)
					if err := p.Sync(ctx, snap); err == nil {
						// Nothing to write: no restore ran.
						x.failNext = nil
						synced = snap
					}
					continue
				}

				wasPartial := p.applied[IPv4] != nil && clock.Sub(p.applied[IPv4].full) < time.Hour
				listings, checks, restores := x.listings, x.jumpChecks, x.restores
				ct.deleted = nil
				prevSynced := synced
				if err := p.Sync(ctx, snap); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				synced = snap
				if wasPartial {
					partials++
					if x.listings != listings || x.jumpChecks != checks {
						t.Fatalf("step %d: partial sync listed chains (%d) or checked jumps (%d)", step, x.listings-listings, x.jumpChecks-checks)
					}
					unchanged := unchangedChains(t, prevSynced, snap, opts)
					for _, payload := range x.payloads[restores:] {
						checkUntouched(t, step, payload, unchanged)
					}
				} else {
					fulls++
				}

				fresh := newFakeXtables()
				q := newIPTables(opts, fresh, nil)
				if err := q.Sync(ctx, snap); err != nil {
					t.Fatalf("step %d: full sync into empty tables: %v", step, err)
				}
				for _, fam := range opts.Families {
					if diff := cmpText(fresh.state(fam), x.state(fam)); diff != "" {
						t.Fatalf("step %d %v (partial=%v): tables differ from a full restore (-full +synced):\n%s", step, fam, wasPartial, diff)
					}
					want, got := q.stats[fam], p.stats[fam]
					got.NATChains -= got.StaleChains
					got.StaleChains = 0
					if diff := cmpAny(want, got); diff != "" {
						t.Fatalf("step %d %v: stats (-full +synced):\n%s", step, fam, diff)
					}
				}
			}
			if partials < 10 || fulls < 3 {
				t.Errorf("only %d partial and %d full syncs", partials, fulls)
			}
		})
	}
}

// unchangedChains returns the per-Service chains of the Services that keep
// their pointer from prev to next.
func unchangedChains(t *testing.T, prev, next *cluster.Snapshot, o IPTablesOptions) map[string]bool {
	out := map[string]bool{}
	same := &cluster.Snapshot{Services: map[cluster.ServiceKey]*cluster.Service{}}
	for k, s := range next.Services {
		if prev.Services[k] == s {
			same.Services[k] = s
		}
	}
	for _, fam := range o.Families {
		nat, _, _ := render(t, RenderInput{Snapshot: same, Family: fam, Masquerade: o.Masquerade, Zone: o.Zone})
		for _, c := range declaredChains(nat) {
			if strings.HasPrefix(c, svcChainPrefix) || strings.HasPrefix(c, sepChainPrefix) {
				out[c] = true
			}
		}
	}
	return out
}

// checkUntouched fails when a payload declares, fills or deletes one of the
// given chains.
func checkUntouched(t *testing.T, step int, payload []byte, chains map[string]bool) {
	t.Helper()
	for _, line := range strings.Split(string(payload), "\n") {
		var name string
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ = strings.Cut(line[1:], " ")
		case strings.HasPrefix(line, "-A "), strings.HasPrefix(line, "-X "):
			name, _, _ = strings.Cut(line[3:], " ")
		}
		if chains[name] {
			t.Fatalf("step %d: partial payload touches %s of an unchanged Service: %q", step, name, line)
		}
	}
}

// TestIPTablesPartialSyncConntrack checks that a partial sync deletes the
// UDP flows to the removed endpoints of changed Services only.
func TestIPTablesPartialSyncConntrack(t *testing.T) {
	ctx := context.Background()
	x := newFakeXtables()
	ct := &fakeConntrack{}
	p := newIPTables(IPTablesOptions{Families: []Family{IPv4}, FullSyncPeriod: time.Hour}, x, ct)
	dns := func(name, ip string, eps ...string) *cluster.Service {
		var list []cluster.Endpoint
		for _, e := range eps {
			list = append(list, ready(e, 53))
		}
		return service("ns", name, []string{ip}, svcPort("dns", 53, "UDP", list...))
	}
	a, b := dns("a", "172.30.0.1", "10.244.0.1", "10.244.0.2"), dns("b", "172.30.0.2", "10.244.1.1")
	if err := p.Sync(ctx, snapshot(a, b)); err != nil {
		t.Fatal(err)
	}
	listings := x.listings
	// a loses an endpoint, b disappears, c appears.
	if err := p.Sync(ctx, snapshot(dns("a", "172.30.0.1", "10.244.0.2"), dns("c", "172.30.0.3", "10.244.2.1"))); err != nil {
		t.Fatal(err)
	}
	if x.listings != listings {
		t.Fatal("second sync was not partial")
	}
	slices.Sort(ct.deleted)
	// c's flows recorded before it had endpoints (0 -> N) go too.
	want := []string{"172.30.0.1:53->10.244.0.1", "172.30.0.2:53->10.244.1.1", "172.30.0.3:53->invalid IP"}
	if !slices.Equal(ct.deleted, want) {
		t.Errorf("conntrack deletions %v, want %v", ct.deleted, want)
	}
}

// TestIPTablesPartialSyncRepair checks that a partial restore failing on
// chains someone removed makes the next sync a full one that repairs them.
func TestIPTablesPartialSyncRepair(t *testing.T) {
	ctx := context.Background()
	x := newFakeXtables()
	p := newIPTables(IPTablesOptions{Families: []Family{IPv4}, FullSyncPeriod: time.Hour}, x, nil)
	s1 := syntheticSnapshot(5, 2)
	if err := p.Sync(ctx, s1); err != nil {
		t.Fatal(err)
	}
	want := x.state(IPv4)
	// Someone deletes our jumps and chains in nat.
	for _, j := range IPTablesJumps() {
		delete(x.jumps[IPv4], jumpKey(j))
	}
	x.chains[IPv4]["nat"] = slices.DeleteFunc(x.chains[IPv4]["nat"], func(c string) bool { return strings.HasPrefix(c, ChainPrefix) })
	clear(x.rules[IPv4]["nat"])

	s2 := &cluster.Snapshot{Services: maps.Clone(s1.Services)}
	for k, s := range s2.Services {
		c := *s
		c.Ports = []*cluster.Port{{Name: "http", Port: 80, Protocol: "TCP", Endpoints: s.Ports[0].Endpoints[:1]}}
		s2.Services[k] = &c
		break
	}
	if err := p.Sync(ctx, s2); err == nil {
		t.Fatal("the partial restore referring to deleted chains must fail")
	}
	if err := p.Sync(ctx, s1); err != nil {
		t.Fatal(err)
	}
	if diff := cmpText(want, x.state(IPv4)); diff != "" {
		t.Errorf("not repaired (-want +got):\n%s", diff)
	}
}

func cmpText(want, got string) string { return cmp.Diff(want, got) }

func cmpAny(want, got any) string { return cmp.Diff(want, got) }
