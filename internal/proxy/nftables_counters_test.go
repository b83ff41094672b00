package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// listCounters answers as "nft -j list counters table FAMILY bridge-agent".
func (f *fakeNFT) listCounters(_ context.Context, fam Family) ([]byte, error) {
	t := f.tables[nftTableName(fam)]
	if t == nil {
		return nil, fmt.Errorf("no table %s", nftTableName(fam))
	}
	word, _ := nftFamily(fam)
	items := []map[string]any{{"metainfo": map[string]any{"json_schema_version": 1}}}
	for _, n := range slices.Sorted(maps.Keys(t.counters)) {
		items = append(items, map[string]any{"counter": map[string]any{"family": word, "name": n, "table": NFTablesTable, "packets": t.counters[n], "bytes": 60 * t.counters[n]}})
	}
	return json.Marshal(map[string]any{"nftables": items})
}

// counterOf returns the counter of the Service port named name (as
// servicePortName) in the fake's table, from its service-counters map.
func counterOf(t *testing.T, x *fakeNFT, fam Family, name string) string {
	t.Helper()
	for _, e := range x.tables[nftTableName(fam)].sets[nftServiceCounters].elements {
		if e.Comment == name {
			return e.Value
		}
	}
	t.Fatalf("no counter for %s", name)
	return ""
}

// Every Service port gets a counter per cluster IP; the counters keep their
// values through incremental and periodic full writes and through changes
// of their Service's endpoints, go with their Service port, and come back
// at zero with it. ServiceCounters sums them per Service port.
func TestNFTablesCounters(t *testing.T) {
	ctx := context.Background()
	x := newFakeNFT()
	p := newNFTables(NFTablesOptions{Families: []Family{IPv4, IPv6}, FullSyncPeriod: time.Hour}, x, &fakeConntrack{})
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }

	web := func(eps ...string) *cluster.Service {
		var list []cluster.Endpoint
		for _, e := range eps {
			list = append(list, ready(e, 8080))
		}
		return service("ns", "web", []string{"10.96.0.80", "fd00:96::80"}, svcPort("http", 80, "TCP", list...), svcPort("", 81, "UDP", list...))
	}
	empty := service("ns", "empty", []string{"10.96.0.90"}, svcPort("http", 80, "TCP"))
	if err := p.Sync(ctx, snapshot(web("10.244.1.1", "fd00:244::1"), empty)); err != nil {
		t.Fatal(err)
	}
	// Every service-ips and no-endpoints key has its counter.
	for _, fam := range []Family{IPv4, IPv6} {
		tb := x.tables[nftTableName(fam)]
		for _, set := range []string{nftServiceIPs, nftNoEndpoints} {
			for k, e := range tb.sets[set].elements {
				c, ok := tb.sets[nftServiceCounters].elements[k]
				if !ok || c.Comment != e.Comment {
					t.Errorf("%v: %s element %q has no counter", fam, set, k)
				}
				if _, ok := tb.counters[c.Value]; !ok {
					t.Errorf("%v: counter %s of %q does not exist", fam, c.Value, k)
				}
			}
		}
	}
	x.tables["ip bridge-agent"].counters[counterOf(t, x, IPv4, "ns/web:http")] = 5
	x.tables["ip6 bridge-agent"].counters[counterOf(t, x, IPv6, "ns/web:http")] = 2
	x.tables["ip bridge-agent"].counters[counterOf(t, x, IPv4, "ns/web")] = 1
	x.tables["ip bridge-agent"].counters[counterOf(t, x, IPv4, "ns/empty:http")] = 3
	want := []ServicePortCounter{
		{Namespace: "ns", Service: "empty", Port: "http", Protocol: "TCP", Connections: 3},
		{Namespace: "ns", Service: "web", Port: "", Protocol: "UDP", Connections: 1},
		{Namespace: "ns", Service: "web", Port: "http", Protocol: "TCP", Connections: 7},
	}
	check := func(step string, want []ServicePortCounter) {
		t.Helper()
		got, err := p.ServiceCounters(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: counters (-want +got):\n%s", step, diff)
		}
	}
	check("first write", want)

	// Endpoints change, incrementally, then the periodic full write.
	if err := p.Sync(ctx, snapshot(web("10.244.1.2"), empty)); err != nil {
		t.Fatal(err)
	}
	check("endpoints changed", want)
	clock = clock.Add(2 * time.Hour)
	s := snapshot(web("10.244.1.2", "10.244.1.3"), empty)
	if err := p.Sync(ctx, s); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(x.scripts[len(x.scripts)-1]), "flush map ip6 bridge-agent service-counters") {
		t.Fatal("the last sync was not the full write")
	}
	check("periodic full write", want)

	// The Service goes: its counters are deleted; it comes back at zero.
	gone := counterOf(t, x, IPv4, "ns/web:http")
	if err := p.Sync(ctx, snapshot(empty)); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.tables["ip bridge-agent"].counters[gone]; ok {
		t.Errorf("counter %s of a deleted Service port is left", gone)
	}
	check("web deleted", want[:1])
	if err := p.Sync(ctx, snapshot(web("10.244.1.2"), empty)); err != nil {
		t.Fatal(err)
	}
	check("web back", []ServicePortCounter{want[0],
		{Namespace: "ns", Service: "web", Port: "", Protocol: "UDP"},
		{Namespace: "ns", Service: "web", Port: "http", Protocol: "TCP"}})

	// A full write also deletes the counters of Service ports gone since
	// the last one.
	clock = clock.Add(2 * time.Hour)
	if err := p.Sync(ctx, snapshot(web("10.244.1.2"))); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []Family{IPv4, IPv6} {
		tb := x.tables[nftTableName(fam)]
		used := map[string]bool{}
		for _, e := range tb.sets[nftServiceCounters].elements {
			used[e.Value] = true
		}
		for c := range tb.counters {
			if !used[c] {
				t.Errorf("%v: counter %s left without its Service port", fam, c)
			}
		}
	}
}
