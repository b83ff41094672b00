package routes

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// node builds a cluster Node; words are InternalIPs and pod CIDRs (those
// with a '/').
func node(name string, words ...string) *cluster.Node {
	n := &cluster.Node{Name: name}
	for _, w := range words {
		if strings.Contains(w, "/") {
			n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(w))
		} else {
			n.InternalIPs = append(n.InternalIPs, netip.MustParseAddr(w))
		}
	}
	return n
}

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func mustAddrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// lan is a host on 10.9.0.0/24 and fd00:9::/64 (and 10.8.0.0/24 on a
// second interface).
var lan = Host{
	Connected: mustPrefixes("10.8.0.0/24", "10.9.0.0/24", "fd00:9::/64"),
	Local:     mustAddrs("10.8.0.1", "10.9.0.1", "127.0.0.1", "::1", "fd00:9::1"),
}

// render writes routes and problems one per line, for compact tables.
func render(routes []Route, problems []Problem) string {
	var lines []string
	for _, r := range routes {
		s := r.String()
		if r.Node != "" {
			s += " [" + r.Node + "]"
		}
		lines = append(lines, s)
	}
	for _, p := range problems {
		lines = append(lines, "! "+p.String())
	}
	return strings.Join(lines, "\n")
}

// dedent strips the common tab indentation and blank edge lines of an
// inline expectation.
func dedent(s string) string {
	var out []string
	for _, l := range strings.Split(strings.Trim(s, "\n"), "\n") {
		out = append(out, strings.TrimSpace(l))
	}
	return strings.Join(out, "\n")
}

func TestDesiredNodes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes []*cluster.Node
		want  string
	}{{
		name: "dual-stack",
		nodes: []*cluster.Node{
			node("node-2", "10.9.0.22", "fd00:9::22", "10.244.2.0/24", "fd00:244:2::/64"),
			node("node-1", "10.9.0.21", "fd00:9::21", "10.244.1.0/24", "fd00:244:1::/64"),
		},
		want: `
			10.244.1.0/24 via 10.9.0.21 [node-1]
			10.244.2.0/24 via 10.9.0.22 [node-2]
			fd00:244:1::/64 via fd00:9::21 [node-1]
			fd00:244:2::/64 via fd00:9::22 [node-2]`,
	}, {
		name: "single-stack node in a dual-stack host",
		nodes: []*cluster.Node{
			node("v4", "10.9.0.21", "10.244.1.0/24"),
			node("v6", "fd00:9::22", "fd00:244:2::/64"),
		},
		want: `
			10.244.1.0/24 via 10.9.0.21 [v4]
			fd00:244:2::/64 via fd00:9::22 [v6]`,
	}, {
		name: "missing podCIDR",
		nodes: []*cluster.Node{
			node("new", "10.9.0.23", "fd00:9::23"),
			node("node-1", "10.9.0.21", "10.244.1.0/24"),
		},
		want: `
			10.244.1.0/24 via 10.9.0.21 [node-1]
			! node new: noPodCIDR: the Node has no spec.podCIDRs`,
	}, {
		name: "no InternalIP of the family",
		nodes: []*cluster.Node{
			node("v4only", "10.9.0.21", "10.244.1.0/24", "fd00:244:1::/64"),
			node("bare", "10.244.2.0/24"),
		},
		want: `
			10.244.1.0/24 via 10.9.0.21 [v4only]
			! node bare 10.244.2.0/24: noInternalIP: the Node has no InternalIP of the pod CIDR's family
			! node v4only fd00:244:1::/64: noInternalIP: the Node has no InternalIP of the pod CIDR's family`,
	}, {
		name: "not on-link",
		nodes: []*cluster.Node{
			node("far", "192.168.7.5", "fd00:7::5", "10.244.7.0/24", "fd00:244:7::/64"),
			node("near", "10.9.0.21", "10.244.1.0/24"),
		},
		want: `
			10.244.1.0/24 via 10.9.0.21 [near]
			! node far 10.244.7.0/24: notOnLink: InternalIP 192.168.7.5 is in no subnet this host is connected to; route the pod CIDR through a router (routes.mode: gateway)
			! node far fd00:244:7::/64: notOnLink: InternalIP fd00:7::5 is in no subnet this host is connected to; route the pod CIDR through a router (routes.mode: gateway)`,
	}, {
		name: "first on-link InternalIP wins",
		nodes: []*cluster.Node{
			node("multi", "192.168.7.5", "10.8.0.21", "10.9.0.21", "10.244.1.0/24"),
		},
		want: `10.244.1.0/24 via 10.8.0.21 [multi]`,
	}, {
		name: "this host as a node",
		nodes: []*cluster.Node{
			node("self", "10.9.0.1", "10.244.0.0/24"),
		},
		want: `! node self 10.244.0.0/24: localNode: the Node's InternalIP 10.9.0.1 is this host's own address`,
	}, {
		name: "overlaps between nodes",
		nodes: []*cluster.Node{
			node("a", "10.9.0.21", "10.244.1.0/24"),
			node("b", "10.9.0.22", "10.244.1.0/24"),
			node("c", "10.9.0.23", "10.244.0.0/16"),
			node("d", "10.9.0.24", "fd00:9::24", "10.245.0.0/24", "fd00:244:4::/64"),
			node("e", "fd00:9::25", "fd00:244:4::/80"),
		},
		want: `
			10.245.0.0/24 via 10.9.0.24 [d]
			! node a 10.244.1.0/24: overlap: overlaps 10.244.0.0/16 of node c, 10.244.1.0/24 of node b
			! node b 10.244.1.0/24: overlap: overlaps 10.244.0.0/16 of node c, 10.244.1.0/24 of node a
			! node c 10.244.0.0/16: overlap: overlaps 10.244.1.0/24 of node a, 10.244.1.0/24 of node b
			! node d fd00:244:4::/64: overlap: overlaps fd00:244:4::/80 of node e
			! node e fd00:244:4::/80: overlap: overlaps fd00:244:4::/64 of node d`,
	}, {
		name: "a node's own duplicate CIDR is one route",
		nodes: []*cluster.Node{
			node("dup", "10.9.0.21", "10.244.1.0/24", "10.244.1.7/24"),
		},
		want: `10.244.1.0/24 via 10.9.0.21 [dup]`,
	}, {
		name:  "no nodes",
		nodes: nil,
		want:  ``,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := render(Desired(Spec{Mode: ModeNodes, Table: mainTable}, tc.nodes, lan))
			if diff := cmp.Diff(dedent(tc.want), got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDesiredGateway(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{{
		name: "ECMP over two gateways, one v6 gateway",
		spec: Spec{
			CIDRs:    mustPrefixes("10.244.0.0/16", "fd00:244::/48"),
			Gateways: mustAddrs("10.9.0.3", "fd00:9::2", "10.9.0.2"),
		},
		want: `
			10.244.0.0/16 nexthop via 10.9.0.2 nexthop via 10.9.0.3
			fd00:244::/48 via fd00:9::2`,
	}, {
		name: "device only",
		spec: Spec{CIDRs: mustPrefixes("10.244.0.0/16", "fd00:244::/48"), Device: "wg0"},
		want: `
			10.244.0.0/16 dev wg0
			fd00:244::/48 dev wg0`,
	}, {
		name: "gateways on a device, v6 onto the device",
		spec: Spec{CIDRs: mustPrefixes("10.244.0.0/16", "fd00:244::/48"), Gateways: mustAddrs("10.8.0.2"), Device: "eth1"},
		want: `
			10.244.0.0/16 via 10.8.0.2 dev eth1
			fd00:244::/48 dev eth1`,
	}, {
		name: "link-local gateway on its device",
		spec: Spec{CIDRs: mustPrefixes("fd00:244::/48"), Gateways: mustAddrs("fe80::1"), Device: "eth1"},
		want: `fd00:244::/48 via fe80::1 dev eth1`,
	}, {
		name: "other table",
		spec: Spec{CIDRs: mustPrefixes("10.244.0.0/16"), Gateways: mustAddrs("10.9.0.2"), Table: 100},
		want: `10.244.0.0/16 via 10.9.0.2 table 100`,
	}, {
		name: "an off-link gateway leaves the ECMP set",
		spec: Spec{CIDRs: mustPrefixes("10.244.0.0/16", "10.245.0.0/16"), Gateways: mustAddrs("10.9.0.2", "192.168.1.1")},
		want: `
			10.244.0.0/16 via 10.9.0.2
			10.245.0.0/16 via 10.9.0.2
			! 10.244.0.0/16: notOnLink: gateway 192.168.1.1 is in no subnet this host is connected to`,
	}, {
		name: "no usable gateway",
		spec: Spec{CIDRs: mustPrefixes("10.244.0.0/16", "fd00:244::/48"), Gateways: mustAddrs("192.168.1.1")},
		want: `
			! 10.244.0.0/16: notOnLink: gateway 192.168.1.1 is in no subnet this host is connected to
			! fd00:244::/48: notOnLink: no gateway of the CIDR's family and no device`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Mode = ModeGateway
			if tc.spec.Table == 0 {
				tc.spec.Table = mainTable
			}
			// Nodes do not matter in gateway mode.
			nodes := []*cluster.Node{node("n", "10.9.0.21", "10.244.1.0/24")}
			got := render(Desired(tc.spec, nodes, lan))
			if diff := cmp.Diff(dedent(tc.want), got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDesiredNone(t *testing.T) {
	nodes := []*cluster.Node{node("n", "10.9.0.21", "10.244.1.0/24")}
	spec := Spec{Mode: ModeNone, Table: mainTable, CIDRs: mustPrefixes("10.0.0.0/8"), Gateways: mustAddrs("10.9.0.2")}
	if r, p := Desired(spec, nodes, lan); len(r) != 0 || len(p) != 0 {
		t.Errorf("mode none: %v %v", r, p)
	}
}

func TestRefuse(t *testing.T) {
	routes, _ := Desired(Spec{Mode: ModeNodes, Table: mainTable}, []*cluster.Node{
		node("node-1", "10.9.0.21", "fd00:9::21", "10.244.1.0/24", "fd00:244:1::/64"),
		node("node-2", "10.9.0.22", "fd00:9::22", "10.244.2.0/24", "fd00:244:2::/64"),
		node("node-3", "10.9.0.23", "10.244.3.0/24"),
		node("node-4", "10.9.0.24", "10.244.4.0/24"),
	}, lan)
	foreign := []Foreign{
		// Equal: a static route for node-1's v4 pods.
		{Dst: netip.MustParsePrefix("10.244.1.0/24"), Table: mainTable, Desc: "10.244.1.0/24 via 10.9.0.2 proto static"},
		// Inside: a VPN's /25 and /32s in node-2's v6 pods.
		{Dst: netip.MustParsePrefix("fd00:244:2::/80"), Table: mainTable, Desc: "fd00:244:2::/80 dev #7 proto boot"},
		{Dst: netip.MustParsePrefix("fd00:244:2::5/128"), Table: mainTable, Desc: "fd00:244:2::5/128 dev #7 proto boot"},
		{Dst: netip.MustParsePrefix("fd00:244:2::6/128"), Table: mainTable, Desc: "fd00:244:2::6/128 dev #7 proto boot"},
		{Dst: netip.MustParsePrefix("fd00:244:2::7/128"), Table: mainTable, Desc: "fd00:244:2::7/128 dev #7 proto boot"},
		// Broader, default, other table, neighbouring: no conflict.
		{Dst: netip.MustParsePrefix("10.0.0.0/8"), Table: mainTable, Desc: "10.0.0.0/8 via 10.9.0.254 proto static"},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Table: mainTable, Desc: "0.0.0.0/0 via 10.9.0.254 proto dhcp"},
		{Dst: netip.MustParsePrefix("::/0"), Table: mainTable, Desc: "::/0 via fd00:9::fe proto ra"},
		{Dst: netip.MustParsePrefix("10.244.3.0/24"), Table: 100, Desc: "10.244.3.0/24 via 10.9.0.2 proto static"},
		{Dst: netip.MustParsePrefix("10.244.5.0/24"), Table: mainTable, Desc: "10.244.5.0/24 via 10.9.0.2 proto static"},
		{Dst: netip.MustParsePrefix("10.244.3.255/32"), Table: 100, Desc: "10.244.3.255/32 via 10.9.0.2 proto static"},
		// Inside node-4's range, found among many unrelated ones.
		{Dst: netip.MustParsePrefix("10.244.4.128/25"), Table: mainTable, Desc: "blackhole 10.244.4.128/25 proto static"},
		{Dst: netip.MustParsePrefix("10.244.3.0/25"), Table: 200, Desc: "10.244.3.0/25 via 10.9.0.2 proto static"},
		{Dst: netip.MustParsePrefix("10.243.0.0/16"), Table: mainTable, Desc: "10.243.0.0/16 via 10.9.0.2 proto static"},
	}
	got := render(Refuse(routes, foreign))
	want := dedent(`
		10.244.2.0/24 via 10.9.0.22 [node-2]
		10.244.3.0/24 via 10.9.0.23 [node-3]
		fd00:244:1::/64 via fd00:9::21 [node-1]
		! node node-1 10.244.1.0/24: conflict: someone else's route in table main covers it (10.244.1.0/24 via 10.9.0.2 proto static); not installing 10.244.1.0/24 via 10.9.0.21
		! node node-4 10.244.4.0/24: conflict: someone else's route in table main covers it (blackhole 10.244.4.128/25 proto static); not installing 10.244.4.0/24 via 10.9.0.24
		! node node-2 fd00:244:2::/64: conflict: 4 routes of someone else in table main cover it (fd00:244:2::/80 dev #7 proto boot; fd00:244:2::5/128 dev #7 proto boot; fd00:244:2::6/128 dev #7 proto boot; and 1 more); not installing fd00:244:2::/64 via fd00:9::22`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
