package proxy

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// TestNFTablesIncrementalMatchesFull replays random changes through the
// backend's incremental path: after each sync, the patched model must equal a
// model rendered from scratch (with the endpoint positions it started from),
// and the fake kernel's table must equal a fresh load of that render. Some
// snapshots are skipped, as when a sync fails or the daemon serves a saved
// snapshot, and some steps hit the periodic full rewrite.
func TestNFTablesIncrementalMatchesFull(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	for _, fam := range []Family{IPv4, IPv6} {
		snap := snapshot(testServices()...)
		for i := range 20 {
			var eps []cluster.Endpoint
			for j := range 1 + i%4 {
				eps = append(eps, ready(fmt.Sprintf("10.245.%d.%d", i, j), 8080), ready(fmt.Sprintf("fd00:245::%d:%d", i, j), 8080))
			}
			svc := service("extra", fmt.Sprintf("s%d", i), []string{fmt.Sprintf("172.29.0.%d", i), fmt.Sprintf("fd00:29::%d", i)},
				svcPort("http", 80, "TCP", eps...))
			if i%2 == 0 {
				svc.SessionAffinityTimeout = 30 * time.Second
			}
			snap.Services[svc.ServiceKey] = svc
		}
		x := newFakeNFT()
		p := newNFTables(NFTablesOptions{Families: []Family{fam}, Masquerade: true, FullSyncPeriod: time.Hour}, x, &fakeConntrack{})
		clock := time.Unix(1000, 0)
		p.now = func() time.Time { return clock }
		if err := p.Sync(ctx, snap); err != nil {
			t.Fatal(err)
		}
		table := nftTableName(fam)
		incremental := 0
		for i := range 300 {
			snap = mutate(r, snap, uint64(i+2))
			if r.IntN(4) == 0 {
				continue // this snapshot is never synced
			}
			if i%37 == 36 {
				clock = clock.Add(2 * time.Hour)
			}
			before := maps.Clone(p.applied[fam].model.groups)
			runs := x.runs
			if err := p.Sync(ctx, snap); err != nil {
				t.Fatalf("%v step %d: %v", fam, i, err)
			}
			if x.runs > runs && !strings.Contains(string(x.scripts[len(x.scripts)-1]), "flush map") {
				incremental++
			}
			got := p.applied[fam].model
			fresh, err := newNFTModel(NFTRenderInput{Snapshot: snap, Family: fam, Masquerade: true}, before)
			if err != nil {
				t.Fatal(err)
			}
			want := fresh.ruleset()
			if diff := cmp.Diff(string(want.Text()), string(got.ruleset().Text())); diff != "" {
				t.Fatalf("%v step %d: patched model differs from a full render (-full +patched):\n%s", fam, i, diff)
			}
			if diff := cmp.Diff(fresh.renderStats(true), p.stats[fam], cmpLocalIgnored); diff != "" {
				t.Fatalf("%v step %d: stats (-full +patched):\n%s", fam, i, diff)
			}
			if diff := cmp.Diff(want.Chains, p.applied[fam].chains); diff != "" {
				t.Fatalf("%v step %d: chains recorded as written (-want +got):\n%s", fam, i, diff)
			}
			load := newFakeNFT()
			if err := load.Run(ctx, want.Text()); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(load.dump(table), x.dump(table)); diff != "" {
				t.Fatalf("%v step %d: table differs from a full load (-full +updated):\n%s\nscript:\n%s", fam, i, diff, x.scripts[len(x.scripts)-1])
			}
			checkPositions(t, got)
		}
		if incremental < 20 {
			t.Errorf("%v: only %d incremental transactions", fam, incremental)
		}
	}
}

// cmpLocalIgnored ignores LocalPolicyIgnored, which incremental syncs fill
// only with the Services they rendered.
var cmpLocalIgnored = cmp.FilterPath(func(p cmp.Path) bool {
	return p.Last().String() == ".LocalPolicyIgnored"
}, cmp.Ignore())

// checkPositions checks that no Service port holds an endpoint twice, that
// positions end with an endpoint, and that at most half are free.
func checkPositions(t *testing.T, m *nftModel) {
	t.Helper()
	for k, g := range m.groups {
		for id, pos := range g.positions {
			seen := map[netip.AddrPort]bool{}
			n := 0
			for _, ap := range pos {
				if !ap.IsValid() {
					continue
				}
				if seen[ap] {
					t.Fatalf("%v %s: endpoint %v twice in %v", k, id, ap, pos)
				}
				seen[ap] = true
				n++
			}
			if len(pos) == 0 || !pos[len(pos)-1].IsValid() || len(pos) > 2*n {
				t.Fatalf("%v %s: positions %v", k, id, pos)
			}
		}
	}
}

func TestAssignPositions(t *testing.T) {
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	eps := func(addrs ...string) []cluster.Endpoint {
		var out []cluster.Endpoint
		for _, a := range addrs {
			out = append(out, ready(a, 80))
		}
		slices.SortFunc(out, compareEndpoints)
		return out
	}
	a, b, c, d, e := ap("10.0.0.1:80"), ap("10.0.0.2:80"), ap("10.0.0.3:80"), ap("10.0.0.4:80"), ap("10.0.0.5:80")
	var none netip.AddrPort
	for _, tt := range []struct {
		name string
		prev []netip.AddrPort
		eps  []cluster.Endpoint
		want []netip.AddrPort
	}{
		{"fresh: in order", nil, eps("10.0.0.3", "10.0.0.1", "10.0.0.2"), []netip.AddrPort{a, b, c}},
		{"removed in the middle: a hole", []netip.AddrPort{a, b, c}, eps("10.0.0.1", "10.0.0.3"), []netip.AddrPort{a, none, c}},
		{"removed at the end: trimmed", []netip.AddrPort{a, b, c}, eps("10.0.0.1", "10.0.0.2"), []netip.AddrPort{a, b}},
		{"new endpoint takes the hole", []netip.AddrPort{a, none, c}, eps("10.0.0.1", "10.0.0.3", "10.0.0.4"), []netip.AddrPort{a, d, c}},
		{"then the end", []netip.AddrPort{a, none, c}, eps("10.0.0.1", "10.0.0.3", "10.0.0.4", "10.0.0.5"), []netip.AddrPort{a, d, c, e}},
		{"more than half free: compacted", []netip.AddrPort{a, b, c, d, e}, eps("10.0.0.1", "10.0.0.5"), []netip.AddrPort{a, e}},
		{"half free: kept", []netip.AddrPort{a, b, c, d}, eps("10.0.0.1", "10.0.0.4"), []netip.AddrPort{a, none, none, d}},
		{"none left", []netip.AddrPort{a, b}, nil, nil},
	} {
		if got := assignPositions(tt.prev, tt.eps); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestNFTablesAffinityStable pins a client to an endpoint, then removes and
// adds other endpoints of the Service in incremental syncs: the client stays
// on its endpoint while it exists, as with the iptables backend, and new
// clients spread over the current endpoints only.
func TestNFTablesAffinityStable(t *testing.T) {
	ctx := context.Background()
	sticky := func(eps ...string) *cluster.Service {
		var list []cluster.Endpoint
		for _, e := range eps {
			list = append(list, ready(e, 8080))
		}
		slices.SortFunc(list, compareEndpoints)
		svc := service("ns", "sticky", []string{"172.30.0.70"}, svcPort("http", 80, "TCP", list...))
		svc.SessionAffinityTimeout = 3 * time.Hour
		return svc
	}
	x := newFakeNFT()
	p := newNFTables(NFTablesOptions{Families: []Family{IPv4}, Masquerade: true, FullSyncPeriod: time.Hour}, x, &fakeConntrack{})
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }
	trace := func(pkt packet, recent map[string]bool) []path {
		t.Helper()
		paths, err := (&nftTracer{t: x.tables[nftTableName(IPv4)], recent: recent}).trace(pkt)
		if err != nil {
			t.Fatal(err)
		}
		return paths
	}
	client := mustPacket(flowTest{dst: "172.30.0.70", dport: 80})
	other := mustPacket(flowTest{dst: "172.30.0.70", dport: 80, src: "192.168.0.3"})

	if err := p.Sync(ctx, snapshot(sticky("10.244.1.1", "10.244.1.2", "10.244.1.3"))); err != nil {
		t.Fatal(err)
	}
	// The client's first connection goes to 10.244.1.2: keep its record.
	var record map[string]bool
	for _, pa := range trace(client, nil) {
		if pa.dnat == "10.244.1.2:8080" {
			record = map[string]bool{pa.recent[0]: true}
		}
	}
	if record == nil {
		t.Fatal("no path to 10.244.1.2")
	}
	steps := []struct {
		name string
		eps  []string
	}{
		{"an endpoint before it removed", []string{"10.244.1.2", "10.244.1.3"}},
		{"an endpoint added", []string{"10.244.1.0", "10.244.1.2", "10.244.1.3"}},
		{"an endpoint after it removed", []string{"10.244.1.0", "10.244.1.2"}},
		{"several added", []string{"10.244.0.9", "10.244.1.0", "10.244.1.2", "10.244.1.7", "10.244.1.8"}},
		{"all others removed", []string{"10.244.1.2"}},
		{"others back", []string{"10.244.1.1", "10.244.1.2", "10.244.1.3"}},
	}
	for i, st := range steps {
		runs := x.runs
		if err := p.Sync(ctx, snapshot(sticky(st.eps...))); err != nil {
			t.Fatal(err)
		}
		if x.runs != runs+1 || strings.Contains(string(x.scripts[len(x.scripts)-1]), "flush map") {
			t.Fatalf("%s: not one incremental transaction", st.name)
		}
		if out, _, err := flow(trace(client, record)); err != nil || out != "10.244.1.2:8080" {
			t.Errorf("step %d, %s: pinned client went to %q (%v), want 10.244.1.2:8080", i, st.name, out, err)
		}
		var want []string
		for _, e := range st.eps {
			want = append(want, e+":8080")
		}
		got := map[string]bool{}
		for _, pa := range trace(other, nil) {
			got[pa.dnat] = true
		}
		if diff := cmp.Diff(want, slices.Sorted(maps.Keys(got))); diff != "" {
			t.Errorf("step %d, %s: a new client's endpoints (-want +got):\n%s", i, st.name, diff)
		}
	}
	// Its endpoint goes away: the client's stale record leads nowhere, and
	// it is spread over the others like a new client.
	if err := p.Sync(ctx, snapshot(sticky("10.244.1.1", "10.244.1.3"))); err != nil {
		t.Fatal(err)
	}
	if out, _, err := flow(trace(client, record)); err != nil || out != "10.244.1.1:8080, 10.244.1.3:8080" {
		t.Errorf("after its endpoint is gone: %q (%v)", out, err)
	}
}
