package routes

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
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
	// MinPrefixLen4 and MinPrefixLen6 are the shortest prefix a Node's pod
	// CIDR may have (nodes mode); broader ones are refused. Zero: the
	// defaults, DefaultMinPrefixLen4 and DefaultMinPrefixLen6.
	MinPrefixLen4, MinPrefixLen6 int
	// AllowedCIDRs are the ranges a Node's pod CIDR must lie in (nodes
	// mode); empty: the private ranges, hostguard.Private.
	AllowedCIDRs []netip.Prefix
}

// Defaults of Spec.MinPrefixLen4 and Spec.MinPrefixLen6: nothing broader
// than a /16 (IPv4) or a /48 (IPv6) from a Node.
const (
	DefaultMinPrefixLen4 = 16
	DefaultMinPrefixLen6 = 48
)

// minPrefixLen returns the shortest prefix allowed for a pod CIDR of p's
// family.
func (s Spec) minPrefixLen(p netip.Prefix) int {
	if p.Addr().Is4() {
		return cmp.Or(s.MinPrefixLen4, DefaultMinPrefixLen4)
	}
	return cmp.Or(s.MinPrefixLen6, DefaultMinPrefixLen6)
}

// allowedCIDRs returns the ranges a Node's pod CIDR must lie in.
func (s Spec) allowedCIDRs() []netip.Prefix {
	if len(s.AllowedCIDRs) == 0 {
		return hostguard.Private
	}
	return s.AllowedCIDRs
}

// allowed reports whether p lies in one of the allowed ranges.
func (s Spec) allowed(p netip.Prefix) bool {
	for _, a := range s.allowedCIDRs() {
		if a.Bits() <= p.Bits() && a.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Host is what the desired routes depend on of this host: its addresses,
// connected subnets, default gateways and resolvers, as the host guard
// knows them. Every destination and next hop passes the guard's checks.
type Host = hostguard.Facts

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
	// ReasonTooBroad: a Node's pod CIDR is broader than
	// routes.minPrefixLength allows.
	ReasonTooBroad Reason = "tooBroad"
	// ReasonNotAllowed: a Node's pod CIDR lies outside routes.allowedCIDRs
	// (by default, outside the private ranges).
	ReasonNotAllowed Reason = "notAllowed"
	// The host guard's reasons (see hostguard.Reason): the destination
	// overlaps a special range or one of this host's own addresses,
	// gateways, resolvers or networks, or the next hop is special.
	ReasonSpecialRange Reason = Reason(hostguard.ReasonSpecial)
	ReasonHostAddress  Reason = Reason(hostguard.ReasonHostAddress)
	ReasonHostGateway  Reason = Reason(hostguard.ReasonHostGateway)
	ReasonHostResolver Reason = Reason(hostguard.ReasonHostResolver)
	ReasonHostNetwork  Reason = Reason(hostguard.ReasonHostNetwork)
)

// reasons lists every Reason, for metrics.
var reasons = []Reason{ReasonConflict, ReasonNotOnLink, ReasonNoPodCIDR, ReasonNoInternalIP, ReasonLocalNode,
	ReasonOverlap, ReasonNoDevice, ReasonTooBroad, ReasonNotAllowed, ReasonSpecialRange, ReasonHostAddress,
	ReasonHostGateway, ReasonHostResolver, ReasonHostNetwork}

// guarded turns a refusal of the host guard into a Problem.
func guarded(r *hostguard.Refusal, node string, c netip.Prefix) *Problem {
	return &Problem{Reason: Reason(r.Reason), Node: node, CIDR: c, Detail: r.Detail}
}

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
		routes, problems = nodeRoutes(spec, nodes, &host)
	case ModeGateway:
		routes, problems = gatewayRoutes(spec, &host)
	}
	sortRoutes(routes)
	sortProblems(problems)
	return routes, problems
}

// nodeRoutes routes every Node's pod CIDRs via its InternalIP.
func nodeRoutes(spec Spec, nodes []*cluster.Node, host *Host) ([]Route, []Problem) {
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
			p := screenPodCIDR(spec, n, c, host)
			var gw netip.Addr
			if p == nil {
				gw, p = nodeGateway(n, c, host)
			}
			if p != nil {
				problems = append(problems, *p)
				continue
			}
			routes = append(routes, Route{Dst: c, Table: spec.Table, Nexthops: []Nexthop{{Gw: gw}}, Node: n.Name})
		}
	}
	routes, overlaps := dropOverlaps(routes)
	return routes, append(problems, overlaps...)
}

// screenPodCIDR refuses a Node's pod CIDR that the host guard refuses
// (special ranges, this host's addresses, gateways, resolvers and
// networks), that is broader than the configured limit, or that lies
// outside routes.allowedCIDRs.
func screenPodCIDR(spec Spec, n *cluster.Node, c netip.Prefix, host *Host) *Problem {
	if r := host.CheckPrefix(c); r != nil {
		return guarded(r, n.Name, c)
	}
	if min := spec.minPrefixLen(c); c.Bits() < min {
		return &Problem{Reason: ReasonTooBroad, Node: n.Name, CIDR: c,
			Detail: fmt.Sprintf("a Node's pod CIDR may be no broader than /%d (routes.minPrefixLength)", min)}
	}
	if !spec.allowed(c) {
		detail := "outside routes.allowedCIDRs (" + joinPrefixes(spec.AllowedCIDRs) + ")"
		if len(spec.AllowedCIDRs) == 0 {
			detail = "outside the private ranges (" + joinPrefixes(hostguard.Private) + "); list a public pod range in routes.allowedCIDRs"
		}
		return &Problem{Reason: ReasonNotAllowed, Node: n.Name, CIDR: c, Detail: detail}
	}
	return nil
}

// nodeGateway picks the InternalIP of node n to route pod CIDR c via: the
// first of c's family that is on-link.
func nodeGateway(n *cluster.Node, c netip.Prefix, host *Host) (netip.Addr, *Problem) {
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
		if r := host.CheckNexthop(ip, false); r != nil {
			return netip.Addr{}, guarded(&hostguard.Refusal{Reason: r.Reason, Detail: "InternalIP: " + r.Detail}, n.Name, c)
		}
	}
	for _, ip := range family {
		if host.OnLink(ip) {
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
func gatewayRoutes(spec Spec, host *Host) ([]Route, []Problem) {
	var routes []Route
	var problems []Problem
	reported := map[netip.Addr]bool{}
	for _, c := range spec.CIDRs {
		c = c.Masked()
		if r := host.CheckPrefix(c); r != nil {
			problems = append(problems, *guarded(r, "", c))
			continue
		}
		var hops []Nexthop
		family := 0
		for _, gw := range spec.Gateways {
			gw = gw.Unmap()
			if gw.Is4() != c.Addr().Is4() {
				continue
			}
			family++
			if r := host.CheckNexthop(gw, spec.Device != ""); r != nil {
				if !reported[gw] {
					reported[gw] = true
					problems = append(problems, *guarded(r, "", c))
				}
				continue
			}
			// A link-local gateway is on-link on its device by definition.
			if !host.OnLink(gw) && !(gw.IsLinkLocalUnicast() && spec.Device != "") {
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
