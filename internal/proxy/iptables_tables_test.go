package proxy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// nftListing wraps objects in `nft -j list table` output.
func nftListing(objs ...string) []byte {
	return []byte(`{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "nat", "handle": 1}}` +
		strings.Join(append([]string{""}, objs...), ", ") + `]}`)
}

func nftChain(name, policy string) string {
	if policy == "" {
		return `{"chain": {"family": "ip", "table": "nat", "name": "` + name + `", "handle": 2}}`
	}
	return `{"chain": {"family": "ip", "table": "nat", "name": "` + name + `", "handle": 2, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "` + policy + `"}}`
}

func TestTableEmpty(t *testing.T) {
	for _, tc := range []struct {
		name    string
		listing []byte
		want    bool
	}{
		{"no chain", nftListing(), true},
		{"built-in chains accepting", nftListing(nftChain("PREROUTING", "accept"), nftChain("POSTROUTING", "accept")), true},
		{"a user chain", nftListing(nftChain("PREROUTING", "accept"), nftChain("DOCKER", "")), false},
		{"a chain of ours left", nftListing(nftChain("BRIDGE-SERVICES", "")), false},
		{"a dropping policy", nftListing(nftChain("INPUT", "drop")), false},
		{"a rule", nftListing(nftChain("INPUT", "accept"), `{"rule": {"family": "ip", "table": "nat", "chain": "INPUT", "handle": 3, "expr": []}}`), false},
		{"a set", nftListing(`{"set": {"family": "ip", "name": "s", "table": "nat", "type": "ipv4_addr", "handle": 4}}`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tableEmpty(tc.listing)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("tableEmpty = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := tableEmpty([]byte("table ip nat {")); err == nil {
		t.Error("text listing parsed as JSON")
	}
}

// TestRemoveIfEmpty: a created table is deleted only when empty, and a
// table already gone is no error.
func TestRemoveIfEmpty(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		listing []byte
		listErr error
		deleted bool
	}{
		{"empty", nftListing(nftChain("PREROUTING", "accept")), nil, true},
		{"in use", nftListing(nftChain("DOCKER", "")), nil, false},
		{"gone", nil, errors.New("nft: exit status 1: Error: No such file or directory"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran [][]string
			nft := func(_ context.Context, args ...string) ([]byte, error) {
				ran = append(ran, args)
				if args[0] == "-j" {
					return tc.listing, tc.listErr
				}
				return nil, nil
			}
			if err := removeIfEmpty(ctx, createdTable{VariantNFT, IPv6, "nat"}, nft); err != nil {
				t.Fatal(err)
			}
			deleted := slices.ContainsFunc(ran, func(a []string) bool { return slices.Equal(a, []string{"delete", "table", "ip6", "nat"}) })
			if deleted != tc.deleted {
				t.Errorf("deleted %v, want %v (ran %q)", deleted, tc.deleted, ran)
			}
		})
	}
}

// TestNoteCreatedTables: before its first write to a family, the nft
// variant records the tables that do not exist yet, once, keeping earlier
// records; the legacy variant records nothing.
func TestNoteCreatedTables(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state", createdTablesName)
	x := newFakeXtables()
	delete(x.chains[IPv4], "nat") // IPv4 has only filter; IPv6 has both
	p := newIPTables(IPTablesOptions{Variant: VariantNFT, Families: []Family{IPv4, IPv6}, CreatedTables: path}, x, &fakeConntrack{})
	if err := p.Sync(ctx, snapshot(testServices()...)); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if want := "nft ip nat\n"; string(got) != want {
		t.Errorf("record %q, want %q", got, want)
	}
	// A restarted agent finds the table its earlier run created: the
	// record stays.
	p = newIPTables(IPTablesOptions{Variant: VariantNFT, Families: []Family{IPv4, IPv6}, CreatedTables: path}, x, &fakeConntrack{})
	if err := p.Sync(ctx, snapshot(testServices()...)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "nft ip nat\n" {
		t.Errorf("record after a restart %q", got)
	}
	recs, err := readCreatedTables(path)
	if err != nil || len(recs) != 1 || recs[0] != (createdTable{VariantNFT, IPv4, "nat"}) {
		t.Errorf("read back %v, %v", recs, err)
	}

	legacy := filepath.Join(t.TempDir(), createdTablesName)
	x = newFakeXtables()
	delete(x.chains[IPv4], "nat")
	p = newIPTables(IPTablesOptions{Variant: VariantLegacy, Families: []Family{IPv4, IPv6}, CreatedTables: legacy}, x, &fakeConntrack{})
	if err := p.Sync(ctx, snapshot(testServices()...)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(legacy); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("legacy variant wrote a record: %v", err)
	}
}

// TestReadCreatedTables: lines this version does not write are ignored,
// never acted on.
func TestReadCreatedTables(t *testing.T) {
	path := filepath.Join(t.TempDir(), createdTablesName)
	content := "nft ip6 filter\nlegacy ip nat\nnft ip mangle\nnft ip\nnft ipv4 nat\ngarbage\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := readCreatedTables(path)
	if err != nil || len(recs) != 1 || recs[0] != (createdTable{VariantNFT, IPv6, "filter"}) {
		t.Errorf("records %v, %v", recs, err)
	}
}
