package routes

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Modes of Spec.Mode, as in config.Routes.
const (
	ModeNodes   = "nodes"
	ModeGateway = "gateway"
	ModeNone    = "none"
)

// mainTable is the kernel's main routing table.
const mainTable = 254

// Spec is the configured shape of the desired routes.
type Spec struct {
	// Mode is ModeNodes, ModeGateway or ModeNone.
	Mode string
	// Table is the routing table of every route.
	Table int
	// CIDRs, Gateways and Device are gateway mode's destinations, next hops
	// and interface.
	CIDRs    []netip.Prefix
	Gateways []netip.Addr
	Device   string
}

// Host is what the desired routes depend on of this host.
type Host struct {
	// Connected are the subnets of this host's interfaces: a next hop in
	// one of them is on-link.
	Connected []netip.Prefix
	// Local are this host's own addresses.
	Local []netip.Addr
}

// onLink reports whether a is in a connected subnet.
func (h Host) onLink(a netip.Addr) bool {
	for _, p := range h.Connected {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Nexthop is one next hop: a gateway, a device or both.
type Nexthop struct {
	Gw  netip.Addr `json:"gw,omitzero"`
	Dev string     `json:"dev,omitempty"`
}

func (n Nexthop) String() string {
	var parts []string
	if n.Gw.IsValid() {
		parts = append(parts, "via "+n.Gw.String())
	}
	if n.Dev != "" {
		parts = append(parts, "dev "+n.Dev)
	}
	return strings.Join(parts, " ")
}

// Route is one desired route: a destination in a table via one or more
// next hops (several: equal-cost multipath).
type Route struct {
	Dst      netip.Prefix `json:"dst"`
	Table    int          `json:"table"`
	Nexthops []Nexthop    `json:"nexthops"`
	// Node is the Node whose pods the route reaches (nodes mode).
	Node string `json:"node,omitempty"`
}

// String renders the route as `ip route` would, roughly:
// "10.244.1.0/24 via 10.0.0.21", "10.244.0.0/16 nexthop via a nexthop via b".
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Dst.String())
	if len(r.Nexthops) == 1 {
		b.WriteString(" " + r.Nexthops[0].String())
	} else {
		for _, n := range r.Nexthops {
			b.WriteString(" nexthop " + n.String())
		}
	}
	if r.Table != mainTable {
		b.WriteString(" table " + tableName(r.Table))
	}
	return b.String()
}

// Reason says why a route the cluster or the configuration asks for is not
// installed.
type Reason string

// Reasons of Problems.
const (
	// ReasonNoPodCIDR: the Node has no spec.podCIDRs (yet).
	ReasonNoPodCIDR Reason = "noPodCIDR"
	// ReasonNoInternalIP: the Node has no InternalIP of a pod CIDR's family.
	ReasonNoInternalIP Reason = "noInternalIP"
	// ReasonNotOnLink: the next hop is not in a subnet this host is
	// connected to, so the kernel cannot use it as a gateway.
	ReasonNotOnLink Reason = "notOnLink"
	// ReasonLocalNode: the Node's InternalIP is this host's own address.
	ReasonLocalNode Reason = "localNode"
	// ReasonOverlap: two Nodes claim overlapping pod CIDRs; which one holds
	// the pods is unknowable, so neither gets a route.
	ReasonOverlap Reason = "overlap"
	// ReasonConflict: someone else's route equals or lies inside the
	// destination (see Refuse).
	ReasonConflict Reason = "conflict"
	// ReasonNoDevice: routes.device does not exist on this host.
	ReasonNoDevice Reason = "noDevice"
)

// Problem is a route that cannot be had, and why.
type Problem struct {
	Reason Reason       `json:"reason"`
	Node   string       `json:"node,omitempty"`
	CIDR   netip.Prefix `json:"cidr,omitzero"`
	Detail string       `json:"detail"`
}

// key identifies a problem across syncs (the detail may change).
func (p Problem) key() string {
	return string(p.Reason) + "|" + p.Node + "|" + p.CIDR.String()
}

func (p Problem) String() string {
	var parts []string
	if p.Node != "" {
		parts = append(parts, "node "+p.Node)
	}
	if p.CIDR.IsValid() {
		parts = append(parts, p.CIDR.String())
	}
	return fmt.Sprintf("%s: %s: %s", strings.Join(parts, " "), p.Reason, p.Detail)
}

// Desired returns the routes spec asks for, given the cluster's nodes and
// the host, sorted by table and destination; and a Problem for each route
// that cannot be had, sorted too. It reads nothing else.
func Desired(spec Spec, nodes []*cluster.Node, host Host) ([]Route, []Problem) {
	var routes []Route
	var problems []Problem
	switch spec.Mode {
	case ModeNodes:
		routes, problems = nodeRoutes(spec.Table, nodes, host)
	case ModeGateway:
		routes, problems = gatewayRoutes(spec, host)
	}
	sortRoutes(routes)
	sortProblems(problems)
	return routes, problems
}

// nodeRoutes routes every Node's pod CIDRs via its InternalIP.
func nodeRoutes(table int, nodes []*cluster.Node, host Host) ([]Route, []Problem) {
	var routes []Route
	var problems []Problem
	for _, n := range nodes {
		if len(n.PodCIDRs) == 0 {
			problems = append(problems, Problem{Reason: ReasonNoPodCIDR, Node: n.Name, Detail: "the Node has no spec.podCIDRs"})
			continue
		}
		seen := map[netip.Prefix]bool{}
		for _, c := range n.PodCIDRs {
			c = c.Masked()
			if seen[c] {
				continue
			}
			seen[c] = true
			gw, p := nodeGateway(n, c, host)
			if p != nil {
				problems = append(problems, *p)
				continue
			}
			routes = append(routes, Route{Dst: c, Table: table, Nexthops: []Nexthop{{Gw: gw}}, Node: n.Name})
		}
	}
	routes, overlaps := dropOverlaps(routes)
	return routes, append(problems, overlaps...)
}

// nodeGateway picks the InternalIP of node n to route pod CIDR c via: the
// first of c's family that is on-link.
func nodeGateway(n *cluster.Node, c netip.Prefix, host Host) (netip.Addr, *Problem) {
	var family []netip.Addr
	for _, ip := range n.InternalIPs {
		if ip.Unmap().Is4() == c.Addr().Is4() {
			family = append(family, ip.Unmap())
		}
	}
	if len(family) == 0 {
		return netip.Addr{}, &Problem{Reason: ReasonNoInternalIP, Node: n.Name, CIDR: c,
			Detail: "the Node has no InternalIP of the pod CIDR's family"}
	}
	for _, ip := range family {
		if slices.Contains(host.Local, ip) {
			return netip.Addr{}, &Problem{Reason: ReasonLocalNode, Node: n.Name, CIDR: c,
				Detail: "the Node's InternalIP " + ip.String() + " is this host's own address"}
		}
	}
	for _, ip := range family {
		if host.onLink(ip) {
			return ip, nil
		}
	}
	return netip.Addr{}, &Problem{Reason: ReasonNotOnLink, Node: n.Name, CIDR: c,
		Detail: "InternalIP " + joinAddrs(family) + " is in no subnet this host is connected to; route the pod CIDR through a router (routes.mode: gateway)"}
}

// dropOverlaps removes the routes of different Nodes whose destinations
// overlap (equal or nested) and reports each of them.
func dropOverlaps(routes []Route) ([]Route, []Problem) {
	sorted := slices.Clone(routes)
	slices.SortFunc(sorted, func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) })
	// Sorted by address then length, a prefix comes after every prefix that
	// contains it; the stack holds the prefixes containing the current one.
	others := map[int][]string{} // index in sorted -> overlapping routes
	var stack []int
	for i, r := range sorted {
		for len(stack) > 0 && !sorted[stack[len(stack)-1]].Dst.Contains(r.Dst.Addr()) {
			stack = stack[:len(stack)-1]
		}
		for _, j := range stack {
			if sorted[j].Node != r.Node {
				others[i] = append(others[i], sorted[j].Dst.String()+" of node "+sorted[j].Node)
				others[j] = append(others[j], r.Dst.String()+" of node "+r.Node)
			}
		}
		stack = append(stack, i)
	}
	if len(others) == 0 {
		return routes, nil
	}
	var keep []Route
	var problems []Problem
	for i, r := range sorted {
		if o := others[i]; len(o) > 0 {
			problems = append(problems, Problem{Reason: ReasonOverlap, Node: r.Node, CIDR: r.Dst,
				Detail: "overlaps " + strings.Join(o, ", ")})
			continue
		}
		keep = append(keep, r)
	}
	return keep, problems
}

// gatewayRoutes routes the configured CIDRs via the configured gateways of
// their family (ECMP when several), or onto the device.
func gatewayRoutes(spec Spec, host Host) ([]Route, []Problem) {
	var routes []Route
	var problems []Problem
	reported := map[netip.Addr]bool{}
	for _, c := range spec.CIDRs {
		c = c.Masked()
		var hops []Nexthop
		family := 0
		for _, gw := range spec.Gateways {
			gw = gw.Unmap()
			if gw.Is4() != c.Addr().Is4() {
				continue
			}
			family++
			// A link-local gateway is on-link on its device by definition.
			if !host.onLink(gw) && !(gw.IsLinkLocalUnicast() && spec.Device != "") {
				if !reported[gw] {
					reported[gw] = true
					problems = append(problems, Problem{Reason: ReasonNotOnLink, CIDR: c,
						Detail: "gateway " + gw.String() + " is in no subnet this host is connected to"})
				}
				continue
			}
			hops = append(hops, Nexthop{Gw: gw, Dev: spec.Device})
		}
		switch {
		case family == 0 && spec.Device != "":
			hops = []Nexthop{{Dev: spec.Device}}
		case len(hops) == 0:
			if family == 0 {
				problems = append(problems, Problem{Reason: ReasonNotOnLink, CIDR: c, Detail: "no gateway of the CIDR's family and no device"})
			}
			continue
		}
		slices.SortFunc(hops, func(a, b Nexthop) int { return a.Gw.Compare(b.Gw) })
		routes = append(routes, Route{Dst: c, Table: spec.Table, Nexthops: hops})
	}
	return routes, problems
}

func sortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int {
		return cmp.Or(cmp.Compare(a.Table, b.Table), comparePrefix(a.Dst, b.Dst))
	})
}

func sortProblems(ps []Problem) {
	slices.SortFunc(ps, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), comparePrefix(a.CIDR, b.CIDR),
			strings.Compare(string(a.Reason), string(b.Reason)), strings.Compare(a.Detail, b.Detail))
	})
}

// comparePrefix orders prefixes IPv4 first, then by address, then shorter
// first.
func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// tableName names the well-known tables as iproute2 does.
func tableName(t int) string {
	switch t {
	case mainTable:
		return "main"
	case 253:
		return "default"
	case 255:
		return "local"
	}
	return strconv.Itoa(t)
}
