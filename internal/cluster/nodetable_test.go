package cluster

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var cmpAddrs = []cmp.Option{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// The table carries what a Node conversion keeps, and reads back equal.
func TestNodeTableRoundTrip(t *testing.T) {
	nodes := []*Node{
		convertNode(heartbeatNode("a", "10.244.1.0/24", "10.250.0.21", 0)),
		{Name: "b", Zone: "z1", InternalIPs: []netip.Addr{netip.MustParseAddr("fd00::22")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:244:2::/64")}},
		{Name: "bare"},
	}
	data, err := encodeNodeTable("agent-1", 7, nodes)
	if err != nil {
		t.Fatal(err)
	}
	tab, got, err := decodeNodeTable(data)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Publisher != "agent-1" || tab.Generation != 7 {
		t.Errorf("header: %+v", tab)
	}
	if diff := cmp.Diff(nodes, got, cmpAddrs...); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	if !sameNodes(nodes, got) {
		t.Error("sameNodes says the round trip differs")
	}
	// About 100 bytes a Node: 5,000 Nodes fit a ConfigMap many times over.
	if per := len(data) / len(nodes); per > 120 {
		t.Errorf("%d bytes per Node", per)
	}
}

// A table is untrusted input: what does not parse is dropped, entry by
// entry, as in a Node; a table of another format, or without a
// publisher, is refused whole.
func TestNodeTableBadInput(t *testing.T) {
	_, got, err := decodeNodeTable(`{"format":1,"publisher":"p","nodes":[
		{"name":"ok","podCIDRs":["10.244.1.0/24","nonsense","10.244.9.7/24"],"internalIPs":["10.250.0.1","300.1.1.1","::ffff:10.250.0.9"]},
		{"name":"","podCIDRs":["10.244.3.0/24"]},
		{"name":"ok","podCIDRs":["10.244.4.0/24"]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	want := []*Node{{Name: "ok",
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.9.0/24")},
		InternalIPs: []netip.Addr{netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("10.250.0.9")}}}
	if diff := cmp.Diff(want, got, cmpAddrs...); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	for _, bad := range []struct{ data, want string }{
		{``, "decode node route table: EOF"},
		{`{"format":2,"publisher":"p","nodes":[]}`, "format 2, want 1"},
		{`{"format":1,"nodes":[]}`, "no publisher"},
		{`{"format":1,"publisher":"p","nodes":{}}`, "cannot unmarshal"},
		{`{"format":1,"publisher":"p","nodes":[` + strings.Repeat(`{"name":"x"},`, maxTableNodes) + `{"name":"y"}]}`, "at most"},
	} {
		if _, _, err := decodeNodeTable(bad.data); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("decode %.40q: err %v, want %q", bad.data, err, bad.want)
		}
	}
}

// A reader uses the table while its publisher holds the Lease and renews
// it; a good table outlives a publisher's restart or handover by the
// grace, and not longer; a table never seen good gets no grace.
func TestSharedTableFreshness(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	s := &SharedNodes{o: SharedNodesOptions{LeaseDuration: time.Minute}, grace: 90 * time.Second}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	check := func(when time.Duration, want bool, reason string) {
		t.Helper()
		got, why := s.freshLocked(at(when))
		if got != want || !strings.Contains(why, reason) {
			t.Errorf("at %s: fresh %v (%q), want %v (%q)", when, got, why, want, reason)
		}
	}
	check(0, false, "absent")
	s.table = &nodeTable{Format: 1, Publisher: "a"}
	s.holder, s.leaseSeen = "b", at(0)
	check(0, false, "written by a, the lease is held by b") // never good: no grace
	s.holder = "a"
	check(10*time.Second, true, "")
	s.holder = "" // a releases the Lease (a restart)
	check(60*time.Second, true, "")
	s.holder, s.leaseSeen = "c", at(70*time.Second) // c took over, has not written yet
	check(99*time.Second, true, "")
	check(101*time.Second, false, "written by a, the lease is held by c")
	s.table = &nodeTable{Format: 1, Publisher: "c"}
	check(102*time.Second, true, "")
	// c dies: no renewal after 70 s; stale after 1.5 periods and the grace.
	check(70*time.Second+89*time.Second, true, "")
	check(70*time.Second+90*time.Second+91*time.Second, false, "has not been renewed")
	s.table = nil
	check(300*time.Second, false, "absent") // a deleted table: at once
}
