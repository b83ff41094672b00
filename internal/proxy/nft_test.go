package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

func renderNFT(t testing.TB, in NFTRenderInput) (*NFTRuleset, NFTRenderStats) {
	t.Helper()
	rs, stats, err := RenderNFTables(in)
	if err != nil {
		t.Fatalf("RenderNFTables: %v", err)
	}
	return rs, stats
}

func TestRenderNFTablesGolden(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			rs, _ := renderNFT(t, NFTRenderInput{Snapshot: snapshot(testServices()...), Family: f, Masquerade: true})
			checkGolden(t, "nftables-"+strings.ToLower(f.String())+".golden", rs.Text())
			if err := newFakeNFT().Run(context.Background(), rs.Text()); err != nil {
				t.Errorf("does not load: %v", err)
			}
		})
	}
}

func TestRenderNFTablesStats(t *testing.T) {
	_, got := renderNFT(t, NFTRenderInput{Snapshot: snapshot(testServices()...), Family: IPv4, Masquerade: true})
	want := NFTRenderStats{
		Services: 11, ServicePorts: 14, Endpoints: 19, NoEndpoints: 3, Terminating: 1,
		// 5 base chains, services, mark-for-masquerade, pick-1-sctp,
		// pick-1-tcp, pick-2-tcp, pick-2-udp, pick-3-tcp,
		// endpoint-0..2-tcp, endpoint-0..1-udp, endpoint-0-sctp,
		// affinity-2-2-10800-tcp, affinity-slot-0..1-tcp and
		// affinity-t10800-0..1-tcp, count-services. Rules: 9 in the base
		// chains, services (2) and count-services, 2 in each pick and
		// endpoint chain but one, 4 in the affinity chain, 1 in each
		// affinity-slot, 2 in each affinity-t10800 chain.
		// 11 service-ips, 19 endpoints, 2 affinity-held, 2
		// affinity-slots, 3 no-endpoints, 16 hairpin, 14
		// service-counters (one per Service port).
		Chains: 24, Rules: 36, NATRules: 34, FilterRules: 2, Elements: 11 + 19 + 2 + 2 + 3 + 16 + 14,
		LocalPolicyIgnored: []cluster.ServiceKey{{Namespace: "ns4", Name: "local"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

// TestRenderNFTablesFixedChains checks that the number of chains does not
// grow with the number of Services.
func TestRenderNFTablesFixedChains(t *testing.T) {
	var chains []int
	for _, n := range []int{1, 100, 5000} {
		_, stats := renderNFT(t, NFTRenderInput{Snapshot: syntheticSnapshot(n, 10), Family: IPv4, Masquerade: true})
		chains = append(chains, stats.Chains)
		if stats.Elements != n+10*n+10*n+n { // service-ips, endpoints, hairpin, service-counters
			t.Errorf("%d services: %d elements", n, stats.Elements)
		}
	}
	if chains[0] != chains[1] || chains[1] != chains[2] {
		t.Errorf("chains by number of Services: %v", chains)
	}
}

func TestRenderNFTablesDeterministic(t *testing.T) {
	in := NFTRenderInput{Snapshot: snapshot(testServices()...), Family: IPv4, Masquerade: true}
	a, _ := renderNFT(t, in)
	for range 5 {
		b, _ := renderNFT(t, in)
		if string(a.Text()) != string(b.Text()) {
			t.Fatal("two renders of the same input differ")
		}
	}
}

// mutate returns a copy of snap with a few random changes: endpoints added,
// removed or made terminating, Services added, removed or given affinity.
func mutate(r *rand.Rand, snap *cluster.Snapshot, version uint64) *cluster.Snapshot {
	out := &cluster.Snapshot{Version: version, Services: map[cluster.ServiceKey]*cluster.Service{}}
	for k, v := range snap.Services {
		out.Services[k] = v
	}
	keys := slices.SortedFunc(func(yield func(cluster.ServiceKey) bool) {
		for k := range out.Services {
			if !yield(k) {
				return
			}
		}
	}, func(a, b cluster.ServiceKey) int { return strings.Compare(a.String(), b.String()) })
	for range 1 + r.IntN(3) {
		k := keys[r.IntN(len(keys))]
		if out.Services[k] == nil || len(out.Services[k].Ports) == 0 {
			continue
		}
		svc := *out.Services[k]
		port := *svc.Ports[0]
		port.Endpoints = slices.Clone(port.Endpoints)
		switch r.IntN(6) {
		case 0:
			port.Endpoints = append(port.Endpoints, ready(fmt.Sprintf("10.250.%d.%d", r.IntN(250), r.IntN(250)), 8080))
			slices.SortFunc(port.Endpoints, compareEndpoints)
		case 1:
			if len(port.Endpoints) > 0 {
				port.Endpoints = slices.Delete(port.Endpoints, 0, 1)
			}
		case 2:
			for i := range port.Endpoints {
				port.Endpoints[i].Ready = false
				port.Endpoints[i].Terminating = true
			}
		case 3:
			if svc.SessionAffinityTimeout == 0 {
				svc.SessionAffinityTimeout = time.Duration(60+r.IntN(2)*60) * time.Second
			} else {
				svc.SessionAffinityTimeout = 0
			}
		case 4:
			delete(out.Services, k)
			continue
		case 5:
			n := service("new", fmt.Sprintf("s%d-%d", version, r.IntN(1000)), []string{fmt.Sprintf("172.31.%d.%d", r.IntN(250), r.IntN(250))},
				svcPort("p", 80, "UDP", ready("10.251.0.1", 53)))
			out.Services[n.ServiceKey] = n
			continue
		}
		svc.Ports = append([]*cluster.Port{&port}, svc.Ports[1:]...)
		out.Services[k] = &svc
	}
	return out
}

// TestNFTablesDiffMatchesFull replays random changes: after each, the table
// updated incrementally must equal a table loaded from scratch, and the
// periodic full rewrite over it must change nothing.
func TestNFTablesDiffMatchesFull(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, fam := range []Family{IPv4, IPv6} {
		snap := snapshot(testServices()...)
		for i := range 20 {
			var eps []cluster.Endpoint
			for j := range 1 + i%4 {
				eps = append(eps, ready(fmt.Sprintf("10.245.%d.%d", i, j), 8080), ready(fmt.Sprintf("fd00:245::%d:%d", i, j), 8080))
			}
			svc := service("extra", fmt.Sprintf("s%d", i), []string{fmt.Sprintf("172.29.0.%d", i), fmt.Sprintf("fd00:29::%d", i)},
				svcPort("http", 80, "TCP", eps...))
			snap.Services[svc.ServiceKey] = svc
		}
		in := NFTRenderInput{Snapshot: snap, Family: fam, Masquerade: true}
		fake, prev, _, err := loadNFT(in)
		if err != nil {
			t.Fatal(err)
		}
		table := nftTableName(fam)
		for i := range 200 {
			in.Snapshot = mutate(r, in.Snapshot, uint64(i+2))
			next, _ := renderNFT(t, in)
			// Odd steps take the periodic full rewrite instead of the diff.
			script, _ := nftDiffScript(prev, next)
			if i%2 == 1 {
				script, _ = nftFullScript(next, prev, false)
			}
			if script != nil {
				if err := fake.Run(context.Background(), script); err != nil {
					t.Fatalf("%v step %d: transaction does not apply: %v\n%s", fam, i, err, script)
				}
			}
			want, _, _, err := loadNFT(in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want.dump(table), fake.dump(table)); diff != "" {
				t.Fatalf("%v step %d: state differs from a full load (-full +updated):\n%s\nscript:\n%s", fam, i, diff, script)
			}
			prev = next
		}
	}
}

func TestNFTablesBackendSync(t *testing.T) {
	ctx := context.Background()
	x := newFakeNFT()
	ct := &fakeConntrack{}
	p := newNFTables(NFTablesOptions{Families: []Family{IPv4}, FullSyncPeriod: time.Hour}, x, ct)
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }
	table := nftTableName(IPv4)

	udp := func(eps ...string) *cluster.Service {
		var list []cluster.Endpoint
		for _, e := range eps {
			list = append(list, ready(e, 53))
		}
		return service("ns", "dns", []string{"10.96.0.10"}, svcPort("dns", 53, "UDP", list...))
	}
	web := service("ns", "web", []string{"10.96.0.80"}, svcPort("http", 80, "TCP", ready("10.244.1.1", 8080)))
	x.tables["ip other"] = &fakeNFTTable{chains: map[string]*fakeNFTChain{"input": {}}, sets: map[string]*fakeNFTSet{}}

	s1 := snapshot(udp("10.244.1.2", "10.244.2.2"), web)
	if err := p.Sync(ctx, s1); err != nil {
		t.Fatal(err)
	}
	if x.runs != 1 || !strings.HasPrefix(string(x.scripts[0]), "add table ip bridge-agent\ndelete table ip bridge-agent\n") {
		t.Fatalf("first sync must recreate the table: runs=%d", x.runs)
	}
	if len(ct.deleted) != 0 {
		t.Errorf("first sync must not guess at stale conntrack entries: %v", ct.deleted)
	}

	// Same snapshot: nothing written.
	if err := p.Sync(ctx, s1); err != nil || x.runs != 1 {
		t.Fatalf("no-op sync wrote: runs=%d err=%v", x.runs, err)
	}
	// Equal content in a new snapshot: rendered, nothing sent.
	if err := p.Sync(ctx, snapshot(udp("10.244.1.2", "10.244.2.2"), web)); err != nil || x.runs != 1 {
		t.Fatalf("unchanged sync wrote: runs=%d err=%v", x.runs, err)
	}

	// An endpoint goes away: only its elements change, and its UDP flows
	// are deleted.
	s2 := snapshot(udp("10.244.2.2"), web)
	if err := p.Sync(ctx, s2); err != nil {
		t.Fatal(err)
	}
	got := string(x.scripts[len(x.scripts)-1])
	want := dedent(`
		add chain ip bridge-agent pick-1-udp
		delete element ip bridge-agent service-ips { 10.96.0.10 . udp . 53 }
		delete element ip bridge-agent hairpin { 10.244.1.2 . 10.244.1.2 }
		delete element ip bridge-agent endpoints-0-udp { 10.96.0.10 . 53 }
		delete element ip bridge-agent endpoints-1-udp { 10.96.0.10 . 53 }
		flush chain ip bridge-agent endpoint-1-udp
		flush chain ip bridge-agent pick-2-udp
		add rule ip bridge-agent pick-1-udp goto endpoint-0-udp
		add element ip bridge-agent service-ips { 10.96.0.10 . udp . 53 comment "ns/dns:dns" : goto pick-1-udp }
		add element ip bridge-agent endpoints-0-udp { 10.96.0.10 . 53 : 10.244.2.2 . 53 }
		delete chain ip bridge-agent endpoint-1-udp
		delete chain ip bridge-agent pick-2-udp
		delete map ip bridge-agent endpoints-1-udp
		`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("incremental transaction (-want +got):\n%s", diff)
	}
	if !slices.Equal(ct.deleted, []string{"10.96.0.10:53->10.244.1.2"}) {
		t.Errorf("conntrack after endpoint removal: %v", ct.deleted)
	}

	// N -> 0 -> N: flows recorded while rejected are cleared when endpoints return.
	ct.deleted = nil
	if err := p.Sync(ctx, snapshot(udp(), web)); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, snapshot(udp("10.244.3.3"), web)); err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.96.0.10:53->10.244.2.2", "10.96.0.10:53->invalid IP"}; !slices.Equal(ct.deleted, want) {
		t.Errorf("conntrack N->0->N: got %v, want %v", ct.deleted, want)
	}

	// A failed transaction leaves no applied state: the next sync recreates
	// the table even though the snapshot did not change.
	x.failNext = errors.New("nft: Device or resource busy")
	s3 := snapshot(udp("10.244.3.3", "10.244.3.4"), web)
	if err := p.Sync(ctx, s3); err == nil {
		t.Fatal("want the transaction error")
	}
	n := x.runs
	if err := p.Sync(ctx, s3); err != nil || x.runs != n+1 || !strings.HasPrefix(string(x.scripts[n]), "add table ip bridge-agent\ndelete table") {
		t.Errorf("retry after failure: runs %d -> %d, err=%v", n, x.runs, err)
	}

	// Someone deletes an element and flushes a chain; the periodic full
	// resync puts them back, without recreating the table.
	wantDump := x.dump(table)
	delete(x.tables[table].sets[indexName(nftEndpoints, 0, protoIndex("tcp"))].elements, "10.96.0.80 . 80")
	x.tables[table].chains[nftServices].rules = nil
	clock = clock.Add(2 * time.Hour)
	n = x.runs
	if err := p.Sync(ctx, s3); err != nil || x.runs != n+1 {
		t.Fatalf("full resync: runs %d -> %d, err=%v", n, x.runs, err)
	}
	if strings.Contains(string(x.scripts[n]), "delete table") {
		t.Errorf("periodic resync recreated the table (and dropped affinity records)")
	}
	if diff := cmp.Diff(wantDump, x.dump(table)); diff != "" {
		t.Errorf("after repair (-want +got):\n%s", diff)
	}

	st := p.Status().(ProxyStatus)
	if st.Backend != "nftables" || st.Families["IPv4"].Services != 2 || st.Families["IPv4"].Endpoints != 3 {
		t.Errorf("status: %+v", st)
	}

	// Cleanup removes our tables, nothing else.
	if err := cleanupNFTables(ctx, x); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.tables[table]; ok || x.tables["ip other"] == nil || len(x.tables) != 1 {
		t.Errorf("after cleanup: tables %v", slices.Sorted(func(yield func(string) bool) {
			for k := range x.tables {
				yield(k)
			}
		}))
	}
}

// TestNFTablesSingleChangeIsSmall checks that changing one Service of many
// sends a transaction whose size does not depend on the others.
func TestNFTablesSingleChangeIsSmall(t *testing.T) {
	base := syntheticSnapshot(2000, 10)
	prev, _ := renderNFT(t, NFTRenderInput{Snapshot: base, Family: IPv4})
	next, _ := renderNFT(t, NFTRenderInput{Snapshot: changeOne(base, 7), Family: IPv4})
	script, commands := nftDiffScript(prev, next)
	// The Service's own endpoint elements (positions shift: one element
	// deleted and added in each of its 10 endpoints maps) and hairpin
	// entries, nothing of the other 1999 Services.
	if commands > 22 || len(script) > 2000 {
		t.Errorf("one changed endpoint: %d commands, %d bytes:\n%s", commands, len(script), script)
	}
}

// changeOne returns snap with the first endpoint of Service i replaced.
func changeOne(snap *cluster.Snapshot, i int) *cluster.Snapshot {
	out := &cluster.Snapshot{Version: snap.Version + 1, Services: make(map[cluster.ServiceKey]*cluster.Service, len(snap.Services))}
	for k, v := range snap.Services {
		out.Services[k] = v
	}
	k := cluster.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc-%d", i)}
	svc := *out.Services[k]
	port := *svc.Ports[0]
	port.Endpoints = slices.Clone(port.Endpoints)
	port.Endpoints[0].Addr = netip.AddrFrom4([4]byte{10, 255, byte(snap.Version >> 8), byte(snap.Version)})
	slices.SortFunc(port.Endpoints, compareEndpoints)
	svc.Ports = []*cluster.Port{&port}
	out.Services[k] = &svc
	out.Changed = []cluster.ServiceKey{k}
	return out
}

// BenchmarkRenderNFTables measures the work of a sync without nft: a full
// render with its script, and the incremental path for one changed Service
// (pointer comparison of the snapshots, re-render of that Service, patch and
// script), with its median and 99th percentile over at least 200 changes.
func BenchmarkRenderNFTables(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		snap := syntheticSnapshot(n, 10)
		in := NFTRenderInput{Snapshot: snap, Family: IPv4, Masquerade: true}
		b.Run(fmt.Sprintf("full/services=%d/endpoints=10", n), func(b *testing.B) {
			b.ReportAllocs()
			var script []byte
			for b.Loop() {
				rs, _, _ := RenderNFTables(in)
				script, _ = nftFullScript(rs, nil, true)
			}
			b.ReportMetric(float64(len(script)), "script-bytes")
		})
		b.Run(fmt.Sprintf("one-change/services=%d/endpoints=10", n), func(b *testing.B) {
			m, err := newNFTModel(in, nil)
			if err != nil {
				b.Fatal(err)
			}
			chains, sets := m.chains(), m.setDecls()
			cur := snap
			var lat []time.Duration
			var script []byte
			b.ReportAllocs()
			for range max(b.N, 200) {
				next := changeOne(cur, int(cur.Version)%n)
				start := time.Now()
				keys := changedServices(cur, next)
				patch := m.patch(next, keys)
				nextChains, nextSets := m.chains(), m.setDecls()
				script, _ = nftChangeScript(IPv4, chains, nextChains, sets, nextSets, patch.del, patch.add)
				lat = append(lat, time.Since(start))
				cur, chains, sets = next, nextChains, nextSets
			}
			slices.Sort(lat)
			us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
			b.ReportMetric(us(lat[len(lat)/2]), "p50-us")
			b.ReportMetric(us(lat[len(lat)*99/100]), "p99-us")
			b.ReportMetric(float64(len(script)), "script-bytes")
		})
	}
}
