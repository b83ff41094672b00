package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// fakeXtables models the kernel's state as the backend sees it: the chains
// of each table and the jumps in built-in chains. Restore parses just enough
// of a payload (chain declarations and -X) to keep that state.
type fakeXtables struct {
	chains   map[Family]map[string][]string // table -> chain names
	jumps    map[Family]map[string]bool     // "table/chain/rule"
	restores int
	failNext error
}

var _ xtables = (*fakeXtables)(nil)

func newFakeXtables() *fakeXtables {
	f := &fakeXtables{chains: map[Family]map[string][]string{}, jumps: map[Family]map[string]bool{}}
	for _, fam := range []Family{IPv4, IPv6} {
		f.chains[fam] = map[string][]string{"nat": {"PREROUTING", "OUTPUT", "POSTROUTING", "DOCKER"}, "filter": {"INPUT", "FORWARD", "OUTPUT"}}
		f.jumps[fam] = map[string]bool{}
	}
	return f
}

func jumpKey(j Jump) string { return j.Table + "/" + j.Chain + "/" + strings.Join(j.Rule, " ") }

func (f *fakeXtables) Chains(_ context.Context, fam Family, table string) ([]string, error) {
	return slices.Clone(f.chains[fam][table]), nil
}

func (f *fakeXtables) Restore(_ context.Context, fam Family, payload []byte) error {
	if f.failNext != nil {
		err := f.failNext
		f.failNext = nil
		return err
	}
	f.restores++
	table := ""
	for _, line := range strings.Split(string(payload), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if !slices.Contains(f.chains[fam][table], name) {
				f.chains[fam][table] = append(f.chains[fam][table], name)
			}
		case strings.HasPrefix(line, "-X "):
			name := strings.TrimPrefix(line, "-X ")
			f.chains[fam][table] = slices.DeleteFunc(f.chains[fam][table], func(c string) bool { return c == name })
		}
	}
	return nil
}

func (f *fakeXtables) JumpExists(fam Family, j Jump) (bool, error) {
	if !slices.Contains(f.chains[fam][j.Table], j.Rule[len(j.Rule)-1]) {
		return false, errors.New("Couldn't load target")
	}
	return f.jumps[fam][jumpKey(j)], nil
}

func (f *fakeXtables) InsertJump(fam Family, j Jump) error {
	if !slices.Contains(f.chains[fam][j.Table], j.Rule[len(j.Rule)-1]) {
		return fmt.Errorf("no chain %s", j.Rule[len(j.Rule)-1])
	}
	f.jumps[fam][jumpKey(j)] = true
	return nil
}

func (f *fakeXtables) DeleteJump(fam Family, j Jump) error {
	delete(f.jumps[fam], jumpKey(j))
	return nil
}

// dump renders the fake's state for comparisons.
func (f *fakeXtables) dump(fam Family) string {
	var ours []string
	for _, t := range []string{"nat", "filter"} {
		for _, c := range f.chains[fam][t] {
			if strings.HasPrefix(c, ChainPrefix) {
				ours = append(ours, t+":"+c)
			}
		}
	}
	slices.Sort(ours)
	return fmt.Sprintf("chains=%d jumps=%d", len(ours), len(f.jumps[fam]))
}

type fakeConntrack struct{ deleted []string }

func (c *fakeConntrack) DeleteUDP(svc netip.AddrPort, ep netip.Addr) (uint, error) {
	c.deleted = append(c.deleted, svc.String()+"->"+ep.String())
	return 1, nil
}

func TestIPTablesBackendSync(t *testing.T) {
	ctx := context.Background()
	x := newFakeXtables()
	ct := &fakeConntrack{}
	p := newIPTables(IPTablesOptions{Families: []Family{IPv4}, FullSyncPeriod: time.Hour}, x, ct)
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }

	udp := func(eps ...string) *cluster.Service {
		var list []cluster.Endpoint
		for _, e := range eps {
			list = append(list, ready(e, 53))
		}
		return service("ns", "dns", []string{"10.96.0.10"}, svcPort("dns", 53, "UDP", list...))
	}
	s1 := snapshot(udp("10.244.1.2", "10.244.2.2"))
	if err := p.Sync(ctx, s1); err != nil {
		t.Fatal(err)
	}
	if x.restores != 1 || len(x.jumps[IPv4]) != len(IPTablesJumps()) {
		t.Fatalf("first sync: restores=%d %s", x.restores, x.dump(IPv4))
	}
	if len(ct.deleted) != 0 {
		t.Errorf("first sync must not guess at stale conntrack entries: %v", ct.deleted)
	}

	// Same snapshot: nothing written.
	if err := p.Sync(ctx, s1); err != nil || x.restores != 1 {
		t.Fatalf("no-op sync wrote rules: restores=%d err=%v", x.restores, err)
	}

	// Someone flushes our jumps: restored and re-inserted.
	clear(x.jumps[IPv4])
	if err := p.Sync(ctx, s1); err != nil || x.restores != 2 || len(x.jumps[IPv4]) != len(IPTablesJumps()) {
		t.Fatalf("repair: restores=%d %s err=%v", x.restores, x.dump(IPv4), err)
	}

	// An endpoint goes away: its UDP flows are deleted; its chain is removed.
	before := len(x.chains[IPv4]["nat"])
	s2 := snapshot(udp("10.244.2.2"))
	if err := p.Sync(ctx, s2); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ct.deleted, []string{"10.96.0.10:53->10.244.1.2"}) {
		t.Errorf("conntrack after endpoint removal: %v", ct.deleted)
	}
	if after := len(x.chains[IPv4]["nat"]); after != before-1 {
		t.Errorf("stale endpoint chain not removed: %d -> %d chains", before, after)
	}
	if !slices.Contains(x.chains[IPv4]["nat"], "DOCKER") {
		t.Errorf("foreign chain removed")
	}

	// N -> 0 -> N: flows recorded while rejected are cleared when endpoints return.
	ct.deleted = nil
	if err := p.Sync(ctx, snapshot(udp())); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, snapshot(udp("10.244.3.3"))); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.96.0.10:53->10.244.2.2", "10.96.0.10:53->invalid IP"}
	if !slices.Equal(ct.deleted, want) {
		t.Errorf("conntrack N->0->N: got %v, want %v", ct.deleted, want)
	}

	// A failed restore leaves no applied state: the next sync writes again
	// even though the snapshot did not change.
	x.failNext = errors.New("xtables lock held")
	s3 := snapshot(udp("10.244.3.3", "10.244.3.4"))
	if err := p.Sync(ctx, s3); err == nil {
		t.Fatal("want the restore error")
	}
	n := x.restores
	if err := p.Sync(ctx, s3); err != nil || x.restores != n+1 {
		t.Errorf("retry after failure: restores %d -> %d, err=%v", n, x.restores, err)
	}

	// The periodic full resync rewrites an unchanged state.
	clock = clock.Add(2 * time.Hour)
	n = x.restores
	if err := p.Sync(ctx, s3); err != nil || x.restores != n+1 {
		t.Errorf("full resync: restores %d -> %d, err=%v", n, x.restores, err)
	}

	// Cleanup removes our chains and jumps, nothing else.
	if err := cleanupFamily(ctx, x, IPv4); err != nil {
		t.Fatal(err)
	}
	if got := x.dump(IPv4); got != "chains=0 jumps=0" || !slices.Contains(x.chains[IPv4]["nat"], "DOCKER") {
		t.Errorf("after cleanup: %s, nat chains %v", got, x.chains[IPv4]["nat"])
	}
}
