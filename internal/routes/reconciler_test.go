package routes

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

const testProto = 98

// setupHost gives a backend two links and routes of someone else that
// every state must leave alone.
func setupHost(t *testing.T, b *backend) {
	t.Helper()
	b.addLink(t, "v0", "10.9.0.1/24", "fd00:9::1/64")
	b.addLink(t, "v1", "10.8.0.1/24", "fd00:8::1/64")
	for _, r := range []struct {
		dst, gw      string
		proto, table int
	}{
		{"10.0.0.0/8", "10.9.0.254", unix.RTPROT_STATIC, mainTable},       // broader: no conflict
		{"10.244.9.0/24", "10.9.0.2", unix.RTPROT_STATIC, mainTable},      // equals node-9's v4 pods
		{"fd00:244:9:0:1::/80", "fd00:9::2", unix.RTPROT_BOOT, mainTable}, // inside node-9's v6 pods
		{"10.244.1.0/24", "10.8.0.2", unix.RTPROT_STATIC, 100},            // in table 100 only
		{"192.0.2.0/24", "", unix.RTPROT_STATIC, mainTable},               // a blackhole
	} {
		b.addRoute(t, foreignRoute(r.dst, r.gw, r.proto, r.table))
	}
}

const foreignDump = `
	10.0.0.0/8 via 10.9.0.254 dev v0 proto static
	10.244.1.0/24 via 10.8.0.2 dev v1 proto static table 100
	10.244.9.0/24 via 10.9.0.2 dev v0 proto static
	blackhole 192.0.2.0/24 proto static
	fd00:244:9:0:1::/80 via fd00:9::2 dev v0 proto boot`

// state is one desired configuration and the host it must produce.
type state struct {
	name     string
	spec     Spec
	nodes    []*cluster.Node
	routes   string // our routes, dumped (foreign ones are added)
	problems string
}

func snapshotOf(nodes ...*cluster.Node) *cluster.Snapshot {
	s := &cluster.Snapshot{Version: 1, Nodes: map[string]*cluster.Node{}}
	for _, n := range nodes {
		s.Nodes[n.Name] = n
	}
	return s
}

var (
	node1      = node("node-1", "10.9.0.21", "fd00:9::21", "10.244.1.0/24", "fd00:244:1::/64")
	node2      = node("node-2", "10.9.0.22", "fd00:9::22", "10.244.2.0/24", "fd00:244:2::/64")
	node2Moved = node("node-2", "10.9.0.32", "fd00:9::32", "10.244.2.0/24", "fd00:244:2::/64")
	node3      = node("node-3", "10.8.0.23", "fd00:8::23", "10.244.3.0/24", "fd00:244:3::/64")
	node9      = node("node-9", "10.9.0.29", "fd00:9::29", "10.244.9.0/24", "fd00:244:9::/64")
	nodeFar    = node("far", "192.168.7.5", "10.244.7.0/24")
)

var states = []state{{
	name:  "two nodes",
	spec:  Spec{Mode: ModeNodes},
	nodes: []*cluster.Node{node1, node2},
	routes: `
		10.244.1.0/24 via 10.9.0.21 dev v0 proto 98
		10.244.2.0/24 via 10.9.0.22 dev v0 proto 98
		fd00:244:1::/64 via fd00:9::21 dev v0 proto 98
		fd00:244:2::/64 via fd00:9::22 dev v0 proto 98`,
}, {
	name:  "node-2 moved, node-3 on the other link",
	spec:  Spec{Mode: ModeNodes},
	nodes: []*cluster.Node{node1, node2Moved, node3},
	routes: `
		10.244.1.0/24 via 10.9.0.21 dev v0 proto 98
		10.244.2.0/24 via 10.9.0.32 dev v0 proto 98
		10.244.3.0/24 via 10.8.0.23 dev v1 proto 98
		fd00:244:1::/64 via fd00:9::21 dev v0 proto 98
		fd00:244:2::/64 via fd00:9::32 dev v0 proto 98
		fd00:244:3::/64 via fd00:8::23 dev v1 proto 98`,
}, {
	name:  "conflicts and an off-link node",
	spec:  Spec{Mode: ModeNodes},
	nodes: []*cluster.Node{node1, node9, nodeFar},
	routes: `
		10.244.1.0/24 via 10.9.0.21 dev v0 proto 98
		fd00:244:1::/64 via fd00:9::21 dev v0 proto 98`,
	problems: `
		node far 10.244.7.0/24: notOnLink: InternalIP 192.168.7.5 is in no subnet this host is connected to; route the pod CIDR through a router (routes.mode: gateway)
		node node-9 10.244.9.0/24: conflict: someone else's route in table main covers it (10.244.9.0/24 via 10.9.0.2 dev v0 proto static); not installing 10.244.9.0/24 via 10.9.0.29
		node node-9 fd00:244:9::/64: conflict: someone else's route in table main covers it (fd00:244:9:0:1::/80 via fd00:9::2 dev v0 proto boot); not installing fd00:244:9::/64 via fd00:9::29`,
}, {
	name: "gateway mode with ECMP",
	spec: Spec{Mode: ModeGateway,
		CIDRs:    mustPrefixes("10.245.0.0/16", "10.246.0.0/16", "fd00:245::/48"),
		Gateways: mustAddrs("10.9.0.2", "10.9.0.3", "fd00:9::2", "fd00:9::3")},
	nodes: []*cluster.Node{node1},
	routes: `
		10.245.0.0/16 nexthop via 10.9.0.2 dev v0 nexthop via 10.9.0.3 dev v0 proto 98
		10.246.0.0/16 nexthop via 10.9.0.2 dev v0 nexthop via 10.9.0.3 dev v0 proto 98
		fd00:245::/48 nexthop via fd00:9::2 dev v0 nexthop via fd00:9::3 dev v0 proto 98`,
}, {
	name: "gateway mode onto a device in table 100",
	spec: Spec{Mode: ModeGateway, Table: 100, Device: "v1",
		CIDRs: mustPrefixes("10.244.0.0/16", "10.247.0.0/16", "fd00:247::/48")},
	nodes: []*cluster.Node{node1},
	routes: `
		10.247.0.0/16 dev v1 proto 98 table 100
		fd00:247::/48 dev v1 proto 98 table 100`,
	problems: `
		10.244.0.0/16: conflict: someone else's route in table 100 covers it (10.244.1.0/24 via 10.8.0.2 dev v1 proto static); not installing 10.244.0.0/16 dev v1 table 100`,
}, {
	name:  "gateway mode, one gateway left",
	spec:  Spec{Mode: ModeGateway, CIDRs: mustPrefixes("10.245.0.0/16", "fd00:245::/48"), Gateways: mustAddrs("10.9.0.3", "fd00:9::2")},
	nodes: []*cluster.Node{node1},
	routes: `
		10.245.0.0/16 via 10.9.0.3 dev v0 proto 98
		fd00:245::/48 via fd00:9::2 dev v0 proto 98`,
}, {
	name:  "mode none",
	spec:  Spec{Mode: ModeNone},
	nodes: []*cluster.Node{node1, node2},
}, {
	name: "no nodes",
	spec: Spec{Mode: ModeNodes},
}}

// TestRouterStates replays the states in random orders against the fake
// and a real kernel: after each sync the host holds exactly the state's
// routes plus everyone else's, and a second sync changes nothing.
func TestRouterStates(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		setupHost(t, b)
		seed := uint64(time.Now().UnixNano())
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, seed))
		order := make([]int, 0, 4*len(states))
		for range 4 {
			order = append(order, rng.Perm(len(states))...)
		}
		var prev string
		for _, i := range order {
			st := states[i]
			spec := st.spec
			if spec.Table == 0 {
				spec.Table = mainTable
			}
			r := newReconciler(b.h, Options{Spec: spec, Protocol: testProto})
			if err := r.Sync(context.Background(), snapshotOf(st.nodes...)); err != nil {
				t.Fatalf("%s (after %s): %v", st.name, prev, err)
			}
			want := joinLines(dedent(st.routes), dedent(foreignDump))
			if diff := cmp.Diff(want, b.dump(t)); diff != "" {
				t.Fatalf("%s (after %s): routes (-want +got):\n%s", st.name, prev, diff)
			}
			status := r.Status().(*Status)
			if diff := cmp.Diff(dedent(st.problems), problemLines(status.Problems)); diff != "" {
				t.Errorf("%s: problems (-want +got):\n%s", st.name, diff)
			}
			writes := b.writes()
			if err := r.Sync(context.Background(), snapshotOf(st.nodes...)); err != nil {
				t.Fatal(err)
			}
			if c := r.Status().(*Status).LastChanges; c != (Changes{}) || b.writes() != writes {
				t.Errorf("%s: a second sync changed %+v", st.name, c)
			}
			prev = st.name
		}
	})
}

func joinLines(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, strings.Split(p, "\n")...)
		}
	}
	return sortedLines(out)
}

func sortedLines(lines []string) string {
	s := append([]string(nil), lines...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return strings.Join(s, "\n")
}

func problemLines(ps []Problem) string {
	var lines []string
	for _, p := range ps {
		lines = append(lines, p.String())
	}
	return strings.Join(lines, "\n")
}

// TestRestartKeepsRoutes: a new reconciler (a restarted agent) finds the
// routes of the previous one as desired and writes nothing; one that wants
// a route moved replaces it in place, never deleting it first.
func TestRestartKeepsRoutes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		setupHost(t, b)
		opts := Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto}
		snap := snapshotOf(node1, node2)
		if err := newReconciler(b.h, opts).Sync(context.Background(), snap); err != nil {
			t.Fatal(err)
		}
		before := b.dump(t)
		writes := b.writes()
		restarted := newReconciler(b.h, opts)
		if err := restarted.Sync(context.Background(), snap); err != nil {
			t.Fatal(err)
		}
		if c := restarted.Status().(*Status).LastChanges; c != (Changes{}) || b.writes() != writes {
			t.Errorf("first sync after a restart changed %+v", c)
		}
		if diff := cmp.Diff(before, b.dump(t)); diff != "" {
			t.Errorf("routes changed across a restart (-before +after):\n%s", diff)
		}
		if err := restarted.Sync(context.Background(), snapshotOf(node1, node2Moved)); err != nil {
			t.Fatal(err)
		}
		if c := restarted.Status().(*Status).LastChanges; c != (Changes{Replaced: 2}) {
			t.Errorf("moving node-2: %+v, want 2 replaced and nothing deleted", c)
		}
	})
}

// TestConflictAppearsLater: when someone adds a route in a range we
// route, our route goes and theirs stays; when theirs goes, ours returns.
func TestConflictAppearsLater(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		b.addLink(t, "v0", "10.9.0.1/24", "fd00:9::1/64")
		r := newReconciler(b.h, Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto})
		reg := prometheus.NewRegistry()
		reg.MustRegister(r.Collectors()...)
		snap := snapshotOf(node1)
		sync := func() {
			t.Helper()
			if err := r.Sync(context.Background(), snap); err != nil {
				t.Fatal(err)
			}
		}
		sync()
		// A VPN routes part of node-1's v6 pods, an admin all of its v4 pods
		// with a better metric.
		vpn := foreignRoute("fd00:244:1::/96", "fd00:9::2", unix.RTPROT_BOOT, mainTable)
		static := foreignRoute("10.244.1.0/24", "10.9.0.2", unix.RTPROT_STATIC, mainTable)
		static.Priority = 10
		b.addRoute(t, vpn)
		b.addRoute(t, static)
		sync()
		want := dedent(`
			10.244.1.0/24 via 10.9.0.2 dev v0 proto static metric 10
			fd00:244:1::/96 via fd00:9::2 dev v0 proto boot`)
		if diff := cmp.Diff(want, b.dump(t)); diff != "" {
			t.Errorf("after foreign routes appeared (-want +got):\n%s", diff)
		}
		st := r.Status().(*Status)
		if st.Conflicts() != 2 || len(st.Routes) != 0 {
			t.Errorf("status: %+v", st)
		}
		if got := gaugeValue(t, r.metrics.conflicts); got != 2 {
			t.Errorf("conflicts metric = %v", got)
		}
		// Theirs go: ours come back.
		for _, fr := range []*netlink.Route{vpn, static} {
			if err := b.h.RouteDel(deletion(fr)); err != nil {
				t.Fatal(err)
			}
		}
		sync()
		want = dedent(`
			10.244.1.0/24 via 10.9.0.21 dev v0 proto 98
			fd00:244:1::/64 via fd00:9::21 dev v0 proto 98`)
		if diff := cmp.Diff(want, b.dump(t)); diff != "" {
			t.Errorf("after foreign routes went (-want +got):\n%s", diff)
		}
		if st := r.Status().(*Status); st.Conflicts() != 0 || len(st.Routes) != 2 {
			t.Errorf("status: %+v", st)
		}
	})
}

// leftovers adds routes of ours that an earlier configuration put in
// other tables, and a route of another program with its own protocol.
func leftovers(t *testing.T, b *backend) {
	t.Helper()
	b.addRoute(t, foreignRoute("10.247.0.0/16", "10.8.0.2", testProto, 100))
	b.addRoute(t, foreignRoute("fd00:247::/48", "fd00:8::2", testProto, 200))
	b.addRoute(t, foreignRoute("10.248.0.0/16", "10.9.0.2", 0x61, mainTable))
}

// TestStaleTablesPruned: routes of ours in tables the configuration no
// longer names go; another program's protocol is someone else's.
func TestStaleTablesPruned(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		setupHost(t, b)
		leftovers(t, b)
		r := newReconciler(b.h, Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto})
		if err := r.Sync(context.Background(), snapshotOf(node1)); err != nil {
			t.Fatal(err)
		}
		want := joinLines(dedent(`
			10.244.1.0/24 via 10.9.0.21 dev v0 proto 98
			10.248.0.0/16 via 10.9.0.2 dev v0 proto 97
			fd00:244:1::/64 via fd00:9::21 dev v0 proto 98`), dedent(foreignDump))
		if diff := cmp.Diff(want, b.dump(t)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		if c := r.Status().(*Status).LastChanges; c != (Changes{Added: 2, Deleted: 2}) {
			t.Errorf("changes %+v", c)
		}
	})
}

// TestCleanup removes our routes in every table and family, and nothing
// else.
func TestCleanup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		setupHost(t, b)
		r := newReconciler(b.h, Options{Spec: Spec{Mode: ModeNodes, Table: mainTable}, Protocol: testProto})
		if err := r.Sync(context.Background(), snapshotOf(node1, node2)); err != nil {
			t.Fatal(err)
		}
		leftovers(t, b)
		removed, err := cleanup(b.h, testProto)
		if err != nil {
			t.Fatal(err)
		}
		if len(removed) != 6 {
			t.Errorf("removed %q, want 6 routes", removed)
		}
		want := joinLines("10.248.0.0/16 via 10.9.0.2 dev v0 proto 97", dedent(foreignDump))
		if diff := cmp.Diff(want, b.dump(t)); diff != "" {
			t.Errorf("after cleanup (-want +got):\n%s", diff)
		}
		if removed, err := cleanup(b.h, testProto); err != nil || len(removed) != 0 {
			t.Errorf("second cleanup: %q %v", removed, err)
		}
	})
}

// gaugeValue reads a gauge.
func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
