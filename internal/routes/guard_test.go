package routes

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// guardedLAN is lan with a default gateway and resolvers.
var guardedLAN = func() Host {
	h := lan
	h.Gateways = mustAddrs("10.9.0.254", "fd00:9::fe")
	h.Resolvers = mustAddrs("10.9.0.53", "8.8.8.8")
	return h
}()

// TestDesiredNodesGuard: a hostile Node's pod CIDR or InternalIP gets no
// route, and a legitimate Node beside it keeps its own.
func TestDesiredNodesGuard(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  Spec
		nodes []*cluster.Node
		want  string
	}{{
		name:  "half of IPv4",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "0.0.0.0/1"), node("good", "10.9.0.21", "10.244.1.0/24")},
		want: `
			10.244.1.0/24 via 10.9.0.21 [good]
			! node evil 0.0.0.0/1: specialRange: 0.0.0.0/1 overlaps "this network" (0.0.0.0/8, the unspecified address)`,
	}, {
		name:  "a public resolver",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "8.8.8.8/32")},
		want:  `! node evil 8.8.8.8/32: hostResolver: 8.8.8.8/32 contains this host's DNS resolver 8.8.8.8`,
	}, {
		name:  "the metadata address",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "169.254.169.254/32")},
		want:  `! node evil 169.254.169.254/32: specialRange: 169.254.169.254/32 overlaps the cloud metadata address (169.254.169.254)`,
	}, {
		name:  "the host's gateway",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "10.9.0.254/32")},
		want:  `! node evil 10.9.0.254/32: hostGateway: 10.9.0.254/32 contains this host's default gateway 10.9.0.254`,
	}, {
		name:  "loopback and multicast",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "127.0.0.0/8", "fd00:9::66", "ff00::/8")},
		want: `
			! node evil 127.0.0.0/8: specialRange: 127.0.0.0/8 overlaps loopback (127.0.0.0/8)
			! node evil ff00::/8: specialRange: ff00::/8 overlaps multicast (ff00::/8)`,
	}, {
		name:  "IPv4 multicast",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "224.0.0.0/4")},
		want:  `! node evil 224.0.0.0/4: specialRange: 224.0.0.0/4 overlaps multicast (224.0.0.0/4)`,
	}, {
		name:  "a range containing the host's network",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "10.8.0.0/15")},
		want:  `! node evil 10.8.0.0/15: hostAddress: 10.8.0.0/15 contains this host's own address 10.8.0.1, 10.9.0.1`,
	}, {
		name:  "inside the host's network",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "10.9.0.64/26")},
		want:  `! node evil 10.9.0.64/26: hostNetwork: 10.9.0.64/26 overlaps 10.9.0.0/24, a network this host is connected to`,
	}, {
		name:  "broader than /16 and /48",
		nodes: []*cluster.Node{node("big", "10.9.0.21", "fd00:9::21", "10.0.0.0/15", "fd00:244::/47")},
		want: `
			! node big 10.0.0.0/15: tooBroad: a Node's pod CIDR may be no broader than /16 (routes.minPrefixLength)
			! node big fd00:244::/47: tooBroad: a Node's pod CIDR may be no broader than /48 (routes.minPrefixLength)`,
	}, {
		name:  "a /16 and a /48 pass; a configured limit of /20 refuses the /16",
		spec:  Spec{MinPrefixLen4: 20},
		nodes: []*cluster.Node{node("big", "10.9.0.21", "fd00:9::21", "10.244.0.0/16", "fd00:244::/48")},
		want: `
			fd00:244::/48 via fd00:9::21 [big]
			! node big 10.244.0.0/16: tooBroad: a Node's pod CIDR may be no broader than /20 (routes.minPrefixLength)`,
	}, {
		name:  "outside the allowed CIDRs",
		spec:  Spec{AllowedCIDRs: mustPrefixes("10.244.0.0/16"), MinPrefixLen4: 8},
		nodes: []*cluster.Node{node("a", "10.9.0.21", "10.244.1.0/24"), node("b", "10.9.0.22", "10.245.1.0/24"), node("c", "10.9.0.23", "10.244.0.0/15")},
		want: `
			10.244.1.0/24 via 10.9.0.21 [a]
			! node b 10.245.1.0/24: notAllowed: outside routes.allowedCIDRs (10.244.0.0/16)
			! node c 10.244.0.0/15: notAllowed: outside routes.allowedCIDRs (10.244.0.0/16)`,
	}, {
		name:  "a Node whose InternalIP is the host's own",
		nodes: []*cluster.Node{node("me", "10.9.0.1", "10.244.7.0/24")},
		want:  `! node me 10.244.7.0/24: localNode: the Node's InternalIP 10.9.0.1 is this host's own address`,
	}, {
		name:  "a Node whose InternalIP is the metadata address or loopback",
		nodes: []*cluster.Node{node("m", "169.254.169.254", "10.244.7.0/24"), node("l", "127.0.0.2", "10.244.8.0/24")},
		want: `
			! node l 10.244.8.0/24: specialRange: InternalIP: 127.0.0.2 is loopback (127.0.0.0/8)
			! node m 10.244.7.0/24: specialRange: InternalIP: 169.254.169.254 is the cloud metadata address (169.254.169.254)`,
	}, {
		name:  "a refused broad claim does not knock out the legitimate Node inside it",
		nodes: []*cluster.Node{node("evil", "10.9.0.66", "10.0.0.0/8"), node("good", "10.9.0.21", "10.244.1.0/24")},
		want: `
			10.244.1.0/24 via 10.9.0.21 [good]
			! node evil 10.0.0.0/8: hostAddress: 10.0.0.0/8 contains this host's own address 10.8.0.1, 10.9.0.1`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Mode, tc.spec.Table = ModeNodes, mainTable
			got := render(Desired(tc.spec, tc.nodes, guardedLAN))
			if diff := cmp.Diff(dedent(tc.want), got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestDesiredGatewayGuard: configured gateway-mode routes get the host
// checks at run time.
func TestDesiredGatewayGuard(t *testing.T) {
	spec := Spec{Mode: ModeGateway, Table: mainTable,
		CIDRs:    mustPrefixes("10.244.0.0/16", "10.9.0.0/16", "8.8.0.0/16"),
		Gateways: mustAddrs("10.9.0.2")}
	got := render(Desired(spec, nil, guardedLAN))
	want := dedent(`
		10.244.0.0/16 via 10.9.0.2
		! 8.8.0.0/16: hostResolver: 8.8.0.0/16 contains this host's DNS resolver 8.8.8.8
		! 10.9.0.0/16: hostAddress: 10.9.0.0/16 contains this host's own address 10.9.0.1`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	spec = Spec{Mode: ModeGateway, Table: mainTable, CIDRs: mustPrefixes("10.244.0.0/16"), Gateways: mustAddrs("10.9.0.1")}
	got = render(Desired(spec, nil, guardedLAN))
	want = `! 10.244.0.0/16: hostAddress: the next hop 10.9.0.1 is this host's own address`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestDesiredPrivateByDefault: without routes.allowedCIDRs a Node's pod
// CIDR must be private; listing a public range allows it.
func TestDesiredPrivateByDefault(t *testing.T) {
	nodes := []*cluster.Node{node("a", "10.9.0.21", "fd00:9::21", "9.9.9.0/24", "2001:db8:1::/64"),
		node("b", "10.9.0.22", "fd00:9::22", "172.16.5.0/24", "fd00:244:5::/64")}
	got := render(Desired(Spec{Mode: ModeNodes, Table: mainTable}, nodes, guardedLAN))
	want := dedent(`
		172.16.5.0/24 via 10.9.0.22 [b]
		fd00:244:5::/64 via fd00:9::22 [b]
		! node a 9.9.9.0/24: notAllowed: outside the private ranges (10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, fc00::/7); list a public pod range in routes.allowedCIDRs
		! node a 2001:db8:1::/64: notAllowed: outside the private ranges (10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, fc00::/7); list a public pod range in routes.allowedCIDRs`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	got = render(Desired(Spec{Mode: ModeNodes, Table: mainTable, AllowedCIDRs: mustPrefixes("2001:db8::/32", "172.16.0.0/12")}, nodes, guardedLAN))
	want = dedent(`
		172.16.5.0/24 via 10.9.0.22 [b]
		2001:db8:1::/64 via fd00:9::21 [a]
		! node a 9.9.9.0/24: notAllowed: outside routes.allowedCIDRs (2001:db8::/32, 172.16.0.0/12)
		! node b fd00:244:5::/64: notAllowed: outside routes.allowedCIDRs (2001:db8::/32, 172.16.0.0/12)`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
