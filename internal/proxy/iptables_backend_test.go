package proxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// fakeXtables models the kernel's state as the backend sees it: the chains
// of each table with their rules, and the jumps in built-in chains. Restore
// applies a payload the way iptables-restore --noflush does, table by table
// at each COMMIT, and fails as it would on a rule for a missing chain, a jump
// to a missing chain, or -X of a chain that is missing, not empty or still
// referenced.
type fakeXtables struct {
	chains   map[Family]map[string][]string            // table -> chain names
	rules    map[Family]map[string]map[string][]string // table -> chain -> rules (after "-A chain ")
	jumps    map[Family]map[string]bool                // "table/chain/rule"
	restores int
	// listings and jumpChecks count Chains and JumpExists calls.
	listings, jumpChecks int
	payloads             [][]byte // every payload restored
	failNext             error
	// failAfterTables applies that many tables of the failing payload
	// before failing, as iptables-restore does when a later table fails.
	failAfterTables int
}

var _ xtables = (*fakeXtables)(nil)

func newFakeXtables() *fakeXtables {
	f := &fakeXtables{chains: map[Family]map[string][]string{}, rules: map[Family]map[string]map[string][]string{}, jumps: map[Family]map[string]bool{}}
	for _, fam := range []Family{IPv4, IPv6} {
		f.chains[fam] = map[string][]string{"nat": {"PREROUTING", "OUTPUT", "POSTROUTING", "DOCKER"}, "filter": {"INPUT", "FORWARD", "OUTPUT"}}
		f.rules[fam] = map[string]map[string][]string{"nat": {}, "filter": {}}
		f.jumps[fam] = map[string]bool{}
	}
	return f
}

func jumpKey(j Jump) string { return j.Table + "/" + j.Chain + "/" + strings.Join(j.Rule, " ") }

func (f *fakeXtables) Tables(_ context.Context, fam Family) ([]string, error) {
	return slices.Sorted(maps.Keys(f.chains[fam])), nil
}

// touch models the legacy kernel interface: naming a table that does not
// exist, to list it or to check, insert or delete a rule, creates it with
// its built-in chains.
func (f *fakeXtables) touch(fam Family, table string) {
	if _, ok := f.chains[fam][table]; ok {
		return
	}
	builtin := map[string][]string{"nat": {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, "filter": {"INPUT", "FORWARD", "OUTPUT"}}
	f.chains[fam][table] = builtin[table]
	f.rules[fam][table] = map[string][]string{}
}

func (f *fakeXtables) Chains(_ context.Context, fam Family, table string) ([]string, error) {
	f.touch(fam, table)
	f.listings++
	return slices.Clone(f.chains[fam][table]), nil
}

func (f *fakeXtables) Restore(_ context.Context, fam Family, payload []byte) error {
	tables := strings.SplitAfter(string(payload), "COMMIT\n")
	if tables[len(tables)-1] == "" {
		tables = tables[:len(tables)-1]
	}
	if f.failNext != nil {
		err := f.failNext
		f.failNext = nil
		for _, t := range tables[:min(f.failAfterTables, len(tables))] {
			if err := f.restoreTable(fam, t); err != nil {
				return err
			}
		}
		f.failAfterTables = 0
		return err
	}
	f.restores++
	f.payloads = append(f.payloads, slices.Clone(payload))
	for _, t := range tables {
		if err := f.restoreTable(fam, t); err != nil {
			return err
		}
	}
	return nil
}

// restoreTable applies one table's part of a payload, all or nothing.
func (f *fakeXtables) restoreTable(fam Family, payload string) error {
	lines := strings.Split(strings.TrimSuffix(payload, "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "*") || lines[len(lines)-1] != "COMMIT" {
		return fmt.Errorf("fake restore: malformed table payload %q", payload)
	}
	table := lines[0][1:]
	f.touch(fam, table)
	chains := slices.Clone(f.chains[fam][table])
	rules := map[string][]string{}
	for c, r := range f.rules[fam][table] {
		rules[c] = slices.Clone(r)
	}
	exists := func(c string) bool { return slices.Contains(chains, c) }
	for _, line := range lines[1 : len(lines)-1] {
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if !exists(name) {
				chains = append(chains, name)
			}
			rules[name] = nil // declaring flushes
		case strings.HasPrefix(line, "-A "):
			name, rule, _ := strings.Cut(line[3:], " ")
			if !exists(name) {
				return fmt.Errorf("fake restore: rule for missing chain %s", name)
			}
			if i := strings.Index(rule, "-j "+ChainPrefix); i >= 0 {
				target, _, _ := strings.Cut(rule[i+3:], " ")
				if !exists(target) {
					return fmt.Errorf("fake restore: jump to missing chain %s", target)
				}
			}
			rules[name] = append(rules[name], rule)
		case strings.HasPrefix(line, "-X "):
			name := line[3:]
			if !exists(name) {
				return fmt.Errorf("fake restore: -X of missing chain %s", name)
			}
			if len(rules[name]) > 0 {
				return fmt.Errorf("fake restore: -X of non-empty chain %s", name)
			}
			for c, rs := range rules {
				for _, r := range rs {
					if strings.HasSuffix(r, "-j "+name) || strings.Contains(r, "-j "+name+" ") {
						return fmt.Errorf("fake restore: -X of chain %s referenced from %s", name, c)
					}
				}
			}
			for k := range f.jumps[fam] {
				if strings.HasPrefix(k, table+"/") && strings.HasSuffix(k, " "+name) {
					return fmt.Errorf("fake restore: -X of chain %s referenced from a built-in chain", name)
				}
			}
			chains = slices.DeleteFunc(chains, func(c string) bool { return c == name })
			delete(rules, name)
		default:
			return fmt.Errorf("fake restore: unknown line %q", line)
		}
	}
	f.chains[fam][table] = chains
	f.rules[fam][table] = rules
	return nil
}

func (f *fakeXtables) JumpExists(fam Family, j Jump) (bool, error) {
	f.touch(fam, j.Table)
	f.jumpChecks++
	if !slices.Contains(f.chains[fam][j.Table], j.Rule[len(j.Rule)-1]) {
		return false, errors.New("Couldn't load target")
	}
	return f.jumps[fam][jumpKey(j)], nil
}

func (f *fakeXtables) InsertJump(fam Family, j Jump) error {
	f.touch(fam, j.Table)
	if !slices.Contains(f.chains[fam][j.Table], j.Rule[len(j.Rule)-1]) {
		return fmt.Errorf("no chain %s", j.Rule[len(j.Rule)-1])
	}
	f.jumps[fam][jumpKey(j)] = true
	return nil
}

func (f *fakeXtables) DeleteJump(fam Family, j Jump) error {
	f.touch(fam, j.Table)
	delete(f.jumps[fam], jumpKey(j))
	return nil
}

// state renders our chains, their rules and the jumps of a family, sorted by
// chain, for comparisons of whole tables.
func (f *fakeXtables) state(fam Family) string {
	var b strings.Builder
	for _, t := range []string{"nat", "filter"} {
		chains := slices.Clone(f.chains[fam][t])
		slices.Sort(chains)
		for _, c := range chains {
			if !strings.HasPrefix(c, ChainPrefix) {
				continue
			}
			fmt.Fprintf(&b, "%s :%s\n", t, c)
			for _, r := range f.rules[fam][t][c] {
				fmt.Fprintf(&b, "%s -A %s %s\n", t, c, r)
			}
		}
	}
	jumps := slices.Sorted(maps.Keys(f.jumps[fam]))
	for _, j := range jumps {
		fmt.Fprintf(&b, "jump %s\n", j)
	}
	return b.String()
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

	// Every CheckPeriod the jumps are checked, and only they: no listing,
	// no restore while they are in place.
	clock = clock.Add(time.Minute)
	checks, listings := x.jumpChecks, x.listings
	if err := p.Sync(ctx, s1); err != nil || x.restores != 1 || x.jumpChecks != checks+len(IPTablesJumps()) || x.listings != listings {
		t.Fatalf("check: restores=%d jump checks %d -> %d listings %d -> %d err=%v", x.restores, checks, x.jumpChecks, listings, x.listings, err)
	}

	// Someone flushes our jumps (a firewall reload): restored and
	// re-inserted by the first sync after the check period, not before.
	clear(x.jumps[IPv4])
	clock = clock.Add(30 * time.Second)
	if err := p.Sync(ctx, s1); err != nil || x.restores != 1 || len(x.jumps[IPv4]) != 0 {
		t.Fatalf("sync within the check period: restores=%d %s err=%v", x.restores, x.dump(IPv4), err)
	}
	clock = clock.Add(30 * time.Second)
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

// TestCleanupCreatesNoTable: cleanup looks only into tables that exist and
// hold chains of ours, so it creates no table (as naming a legacy table
// would) and writes nothing where it has nothing to remove.
func TestCleanupCreatesNoTable(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tables []string // tables that exist before, with only built-in chains
	}{
		{"no table", nil},
		{"filter only", []string{"filter"}},
		{"nat and filter", []string{"nat", "filter"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newFakeXtables()
			for _, fam := range []Family{IPv4, IPv6} {
				x.chains[fam] = map[string][]string{}
				x.rules[fam] = map[string]map[string][]string{}
				for _, table := range tc.tables {
					x.touch(fam, table)
				}
			}
			for _, fam := range []Family{IPv4, IPv6} {
				if err := cleanupFamily(ctx, x, fam); err != nil {
					t.Fatal(err)
				}
				got, _ := x.Tables(ctx, fam)
				if want := slices.Sorted(slices.Values(tc.tables)); !slices.Equal(got, want) {
					t.Errorf("%s: tables after cleanup %v, want %v", fam, got, want)
				}
			}
			if x.restores != 0 || x.listings != 2*len(tc.tables) {
				t.Errorf("cleanup of tables without chains of ours: %d restores, %d listings; want 0 and one per existing table", x.restores, x.listings)
			}
		})
	}
}

// TestExistingTables: legacy tables come from the kernel's list, never from
// running a legacy tool; nft tables from iptables-nft-save without -t.
func TestExistingTables(t *testing.T) {
	ctx := context.Background()
	nftSave := []byte("# Generated by iptables-nft-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
	for _, tc := range []struct {
		name    string
		fam     Family
		v       Variant
		proc    map[string]string // file -> content; missing file: absent
		want    []string
		wantErr bool
	}{
		{name: "legacy module not loaded", fam: IPv4, v: VariantLegacy, proc: nil, want: nil},
		{name: "legacy loaded, no table in this netns", fam: IPv4, v: VariantLegacy, proc: map[string]string{"/proc/net/ip_tables_names": ""}, want: nil},
		{name: "legacy nat", fam: IPv4, v: VariantLegacy, proc: map[string]string{"/proc/net/ip_tables_names": "nat\n"}, want: []string{"nat"}},
		{name: "legacy ipv6 reads its own list", fam: IPv6, v: VariantLegacy, proc: map[string]string{"/proc/net/ip_tables_names": "nat\n", "/proc/net/ip6_tables_names": "filter\nmangle\n"}, want: []string{"filter", "mangle"}},
		{name: "legacy unreadable", fam: IPv4, v: VariantLegacy, proc: map[string]string{"/proc/net/ip_tables_names": "\x00EACCES"}, wantErr: true},
		{name: "nft", fam: IPv4, v: VariantNFT, want: []string{"nat", "filter"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []string
			readFile := func(path string) ([]byte, error) {
				c, ok := tc.proc[path]
				if !ok {
					return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
				}
				if c == "\x00EACCES" {
					return nil, fmt.Errorf("open %s: %w", path, fs.ErrPermission)
				}
				return []byte(c), nil
			}
			save := func(_ context.Context, tool string) ([]byte, error) {
				ran = append(ran, tool)
				return nftSave, nil
			}
			got, err := existingTables(ctx, tc.fam, tc.v, readFile, save)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("tables %q, want %q", got, tc.want)
			}
			if tc.v == VariantLegacy && len(ran) > 0 {
				t.Errorf("ran %v for the legacy variant: a legacy tool may create the table it lists", ran)
			}
		})
	}
}
