package routes

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// TestKernelErrors: a route the kernel refuses fails the sync after every
// other change was made, counts in the metric, and is retried.
func TestKernelErrors(t *testing.T) {
	f := newFakeNetlink()
	f.addLink("v0", "10.9.0.1/24", "fd00:9::1/64")
	r := newReconciler(f, Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto})
	f.fail[netip.MustParsePrefix("10.244.2.0/24")] = unix.ENOMEM
	snap := snapshotOf(node1, node2)
	err := r.Sync(context.Background(), snap)
	if err == nil || !strings.Contains(err.Error(), "add 10.244.2.0/24 via 10.9.0.22 proto 98: cannot allocate memory") {
		t.Fatalf("want the refused route named in the error, got %v", err)
	}
	if !strings.HasPrefix(err.Error(), "routes: ") {
		t.Errorf("error not prefixed with the operation: %v", err)
	}
	st := r.Status().(*Status)
	if len(st.Routes) != 3 || st.LastChanges.Added != 3 {
		t.Errorf("the other routes: %+v", st)
	}
	if got := counterValue(t, r.metrics.syncErrors); got != 1 {
		t.Errorf("sync errors = %v", got)
	}
	if err := r.Sync(context.Background(), snap); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if st := r.Status().(*Status); len(st.Routes) != 4 || st.LastChanges != (Changes{Added: 1}) {
		t.Errorf("after retry: %+v", st)
	}
	// The host cannot be read: the sync fails and the status stays.
	f.failList = unix.EBUSY
	if err := r.Sync(context.Background(), snap); err == nil || !strings.Contains(err.Error(), "list routes") {
		t.Errorf("want a list error, got %v", err)
	}
	if st := r.Status().(*Status); len(st.Routes) != 4 {
		t.Errorf("status after a failed read: %+v", st)
	}
	f.failList = nil
	// An interrupted dump (the table changed while read) is read again.
	f.failList, f.failListTimes = netlink.ErrDumpInterrupted, 2
	if err := r.Sync(context.Background(), snap); err != nil {
		t.Errorf("interrupted dumps: %v", err)
	}
	// The host loses its addresses: every node is off-link, and the routes
	// (which the kernel could not use any more) go.
	f.addrs = nil
	if err := r.Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	if st := r.Status().(*Status); len(st.Routes) != 0 || len(st.Problems) != 4 {
		t.Errorf("without addresses every node is off-link: %+v", st.Problems)
	}
}

// TestMissingDevice: a configured device that does not exist is a problem,
// not an error; routes of ours for it are removed.
func TestMissingDevice(t *testing.T) {
	f := newFakeNetlink()
	f.addLink("v0", "10.9.0.1/24")
	spec := Spec{Mode: ModeGateway, Table: mainTable, CIDRs: mustPrefixes("10.245.0.0/16"), Device: "wg0"}
	r := newReconciler(f, Options{Spec: spec, Protocol: testProto})
	if err := r.Sync(context.Background(), snapshotOf()); err != nil {
		t.Fatal(err)
	}
	if got := problemLines(r.Status().(*Status).Problems); got != "10.245.0.0/16: noDevice: device wg0 does not exist" {
		t.Errorf("problems: %s", got)
	}
	f.addLink("wg0", "10.7.0.1/24")
	if err := r.Sync(context.Background(), snapshotOf()); err != nil {
		t.Fatal(err)
	}
	if got := dumpRoutes(t, f); got != "10.245.0.0/16 dev wg0 proto 98" {
		t.Errorf("routes: %s", got)
	}
}

// TestProblemsLoggedOnce: a problem is logged when it appears and when it
// goes, not on every sync.
func TestProblemsLoggedOnce(t *testing.T) {
	f := newFakeNetlink()
	f.addLink("v0", "10.9.0.1/24")
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := newReconciler(f, Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto, Logger: log})
	far := node("far", "192.168.7.5", "10.244.7.0/24")
	for range 3 {
		if err := r.Sync(context.Background(), snapshotOf(far)); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "route not installed"); n != 1 {
		t.Errorf("problem logged %d times:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "reason=notOnLink node=far cidr=10.244.7.0/24") {
		t.Errorf("log lacks the node and reason:\n%s", buf.String())
	}
	if err := r.Sync(context.Background(), snapshotOf(node("far", "10.9.0.7", "10.244.7.0/24"))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "route problem resolved") || !strings.Contains(buf.String(), `msg="routes changed" added=1`) {
		t.Errorf("resolution or change not logged:\n%s", buf.String())
	}
}

func TestStatus(t *testing.T) {
	f := newFakeNetlink()
	f.addLink("v0", "10.9.0.1/24", "fd00:9::1/64")
	f.routes = append(f.routes, netlink.Route{Dst: ipNet(netip.MustParsePrefix("10.244.9.0/24")), Family: unix.AF_INET,
		Gw: net.ParseIP("10.9.0.2"), LinkIndex: 2, Protocol: unix.RTPROT_STATIC, Table: mainTable, Type: unix.RTN_UNICAST})
	r := newReconciler(f, Options{Spec: Spec{Mode: ModeNodes}, Protocol: testProto,
		ServiceCIDRs: mustPrefixes("10.96.0.0/12")})
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.Collectors()...)
	snap := snapshotOf(node1, node9, node("new"))
	if err := r.Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	st := r.Status().(*Status)
	var text bytes.Buffer
	st.WriteText(&text)
	want := `  mode nodes, protocol 98, table main: 3 routes installed, 2 not installed (1 conflicts)
    10.244.1.0/24    via 10.9.0.21   node-1
    fd00:244:1::/64  via fd00:9::21  node-1
    fd00:244:9::/64  via fd00:9::29  node-9
    ! node new: noPodCIDR: the Node has no spec.podCIDRs
    ! node node-9 10.244.9.0/24: conflict: someone else's route in table main covers it (10.244.9.0/24 via 10.9.0.2 dev v0 proto static); not installing 10.244.9.0/24 via 10.9.0.29
  cluster pod ranges: 10.244.1.0/24, 10.244.9.0/24, fd00:244:1::/64, fd00:244:9::/64
  cluster service ranges: 10.96.0.0/12 (from the config)
`
	if diff := cmp.Diff(want, text.String()); diff != "" {
		t.Errorf("text (-want +got):\n%s", diff)
	}
	// The cluster's own ranges win over the configured ones.
	snap2 := snapshotOf(node1)
	snap2.ServiceCIDRs = mustPrefixes("10.96.0.0/16", "fd00:96::/112")
	if err := r.Sync(context.Background(), snap2); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r.Status())
	if err != nil {
		t.Fatal(err)
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.ServiceCIDRsFrom != "cluster" || len(back.ServiceCIDRs) != 2 || len(back.Routes) != 2 ||
		back.Routes[0].Nexthops[0].Gw != netip.MustParseAddr("10.9.0.21") || back.LastChanges.Deleted != 1 {
		t.Errorf("JSON round trip: %s", b)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if diff := cmp.Diff([]string{"bridge_agent_routes_changes_total", "bridge_agent_routes_conflicts",
		"bridge_agent_routes_installed", "bridge_agent_routes_problems", "bridge_agent_routes_sync_errors_total"}, names); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

func TestHostFrom(t *testing.T) {
	addr := func(cidr string, scope int, peer string) netlink.Addr {
		p := netip.MustParsePrefix(cidr)
		a := netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Scope: scope}
		if peer != "" {
			a.Peer = ipNet(netip.MustParsePrefix(peer))
		}
		return a
	}
	h := *hostguard.FromNetlink([]netlink.Addr{
		addr("127.0.0.1/8", unix.RT_SCOPE_HOST, ""),
		addr("::1/128", unix.RT_SCOPE_HOST, ""),
		addr("10.9.0.1/24", unix.RT_SCOPE_UNIVERSE, ""),
		addr("10.9.0.7/24", unix.RT_SCOPE_UNIVERSE, ""),
		addr("fe80::1/64", unix.RT_SCOPE_LINK, ""),
		addr("fd00:9::1/64", unix.RT_SCOPE_UNIVERSE, ""),
		addr("10.7.0.1/32", unix.RT_SCOPE_UNIVERSE, "10.7.0.2/32"),
	}, nil, nil)
	want := Host{
		Connected: mustPrefixes("10.7.0.2/32", "10.9.0.0/24", "fd00:9::/64"),
		Local:     mustAddrs("10.7.0.1", "10.9.0.1", "10.9.0.7", "127.0.0.1", "::1", "fd00:9::1", "fe80::1"),
		Gateways:  []netip.Addr{},
		Resolvers: []netip.Addr{},
	}
	if diff := cmp.Diff(want, h, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestLargeCluster: 5000 dual-stack nodes cost one add each, then nothing.
func TestLargeCluster(t *testing.T) {
	f := newFakeNetlink()
	f.addLink("v0", "10.0.0.1/16", "fd00::1/64")
	var nodes []*cluster.Node
	for i := range 5000 {
		nodes = append(nodes, node(fmt.Sprintf("n%04d", i),
			"10.0."+itoa(i/250)+"."+itoa(i%250+2), "fd00::"+hex(i+2),
			"10."+itoa(64+i/256)+"."+itoa(i%256)+".0/24", "fd00:244:"+hex(i)+"::/64"))
	}
	r := newReconciler(f, Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto})
	snap := snapshotOf(nodes...)
	if err := r.Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	if st := r.Status().(*Status); len(st.Routes) != 10000 || len(st.Problems) != 0 {
		t.Fatalf("routes %d, problems %v", len(st.Routes), st.Problems[:min(3, len(st.Problems))])
	}
	writes := f.writes
	if err := r.Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	if f.writes != writes {
		t.Errorf("unchanged sync wrote %d times", f.writes-writes)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
func hex(i int) string  { return strconv.FormatInt(int64(i), 16) }

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
