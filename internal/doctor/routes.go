package doctor

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is a route as the doctor reads it from the kernel.
type Route struct {
	Dst      netip.Prefix `json:"dst"`
	Gw       netip.Addr   `json:"gateway,omitzero"`
	Dev      string       `json:"dev,omitempty"`
	Src      netip.Addr   `json:"src,omitzero"`
	Table    int          `json:"table"`
	Protocol int          `json:"protocol"`
}

// String is like `ip route get`'s answer.
func (r Route) String() string {
	var b strings.Builder
	if r.Gw.IsValid() {
		fmt.Fprintf(&b, "via %s ", r.Gw)
	}
	if r.Dev != "" {
		fmt.Fprintf(&b, "dev %s ", r.Dev)
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, "src %s ", r.Src)
	}
	fmt.Fprintf(&b, "table %s", tableName(r.Table))
	return b.String()
}

// Rule is a policy routing rule.
type Rule struct {
	Priority int          `json:"priority"`
	Table    int          `json:"table"`
	Src      netip.Prefix `json:"src,omitzero"`
	Dst      netip.Prefix `json:"dst,omitzero"`
}

func (r Rule) String() string {
	s := fmt.Sprintf("%d:", r.Priority)
	if r.Src.IsValid() {
		s += " from " + r.Src.String()
	} else {
		s += " from all"
	}
	if r.Dst.IsValid() {
		s += " to " + r.Dst.String()
	}
	return s + " lookup " + tableName(r.Table)
}

func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_LOCAL:
		return "local"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	}
	return fmt.Sprint(t)
}

// Kernel is what the doctor asks the kernel's routing: the route it picks
// for an address, the routes of a table, the policy rules.
type Kernel interface {
	RouteGet(a netip.Addr) (Route, error)
	Routes(table int) ([]Route, error)
	Rules() ([]Rule, error)
}

// NetlinkKernel asks the kernel of the current network namespace.
type NetlinkKernel struct{}

var _ Kernel = NetlinkKernel{}

// RouteGet is `ip route get a`: the route the kernel picks for a packet
// from this host to a.
func (NetlinkKernel) RouteGet(a netip.Addr) (Route, error) {
	rs, err := netlink.RouteGet(net.IP(a.AsSlice()))
	if err != nil {
		return Route{}, err
	}
	if len(rs) == 0 {
		return Route{}, fmt.Errorf("route get %s: no answer", a)
	}
	return fromNetlink(rs[0]), nil
}

// Routes lists the unicast routes of a table, both families.
func (NetlinkKernel) Routes(table int) ([]Route, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", table, err)
	}
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		if r.Type != unix.RTN_UNICAST && r.Type != 0 {
			continue
		}
		out = append(out, fromNetlink(r))
	}
	return out, nil
}

// Rules lists the policy rules, both families.
func (NetlinkKernel) Rules() ([]Rule, error) {
	rs, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out := make([]Rule, 0, len(rs))
	for _, r := range rs {
		out = append(out, Rule{Priority: r.Priority, Table: r.Table, Src: prefixOf(r.Src), Dst: prefixOf(r.Dst)})
	}
	return out, nil
}

func fromNetlink(r netlink.Route) Route {
	out := Route{Dst: prefixOf(r.Dst), Table: r.Table, Protocol: int(r.Protocol)}
	if a, ok := netip.AddrFromSlice(r.Gw); ok {
		out.Gw = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok {
		out.Src = a.Unmap()
	}
	if len(r.MultiPath) > 0 && !out.Gw.IsValid() {
		if a, ok := netip.AddrFromSlice(r.MultiPath[0].Gw); ok {
			out.Gw = a.Unmap()
		}
		r.LinkIndex = r.MultiPath[0].LinkIndex
	}
	if r.LinkIndex > 0 {
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			out.Dev = l.Attrs().Name
		}
	}
	return out
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked()
}

// Range is a destination range the host must route: a Service range or a
// pod range.
type Range struct {
	Prefix netip.Prefix
	// Kind is "Service range" or "pod range".
	Kind string
	// Probe is the address asked about (a ClusterIP or a pod address in
	// the range when one is known, else the range's first host address).
	Probe netip.Addr
}

// probeAddr returns the first host address of p (the network address + 1).
func probeAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	if n := a.Next(); n.IsValid() && p.Contains(n) {
		return n
	}
	return a
}

// rangeCheck judges the kernel's route for one range; pure.
func rangeCheck(r Range, got Route, err error) Check {
	ch := Check{Name: "route to " + r.Kind + " " + r.Prefix.String()}
	if err != nil {
		ch.Verdict = Fail
		ch.Detail = fmt.Sprintf("the kernel has no route for %s (ip route get: %v)", r.Probe, err)
		if r.Kind == KindService {
			ch.Detail += ": connections to ClusterIPs fail before the agent's NAT rules run, since the kernel routes a packet before NAT rewrites its destination"
			ch.Fix = fmt.Sprintf("add a route for the Service range, e.g. ip route add %s via <the gateway toward the cluster> (a default route also does; the agent only needs one to exist)", r.Prefix)
		} else {
			ch.Detail += ": pods in it are unreachable from this host"
			ch.Fix = fmt.Sprintf("make the pod network reachable: put this host on the nodes' L2 network (routes.mode nodes routes each Node's pod range via it), or add a router that knows the pods, or set routes.mode gateway with routes.cidrs [%s] and routes.gateways; with an overlay (VXLAN, Geneve) pods are reachable only through a node acting as gateway", r.Prefix)
		}
		return ch
	}
	ch.Verdict = OK
	ch.Detail = fmt.Sprintf("%s %s", r.Probe, got)
	return ch
}

// KindService and KindPod are the kinds of Range.
const (
	KindService = "Service range"
	KindPod     = "pod range"
)

// EndpointRoute is one endpoint of a Service port and the kernel's route
// to it.
type EndpointRoute struct {
	Service string
	Addr    netip.Addr
	Route   Route
	Err     error
}

// endpointsCheck judges the routes to the Services' endpoints: each must be
// inside a range the agent routes (ours) or on a directly connected network
// (a route without gateway); one the kernel cannot route at all fails;
// pure.
func endpointsCheck(eps []EndpointRoute, ours []Route) Check {
	ch := Check{Name: "routes to endpoints"}
	var unreachable, foreign []string
	for _, e := range eps {
		switch {
		case e.Err != nil:
			unreachable = append(unreachable, fmt.Sprintf("%s (%s)", e.Addr, e.Service))
		case !e.Route.Gw.IsValid():
		case slices.ContainsFunc(ours, func(r Route) bool { return r.Dst.Contains(e.Addr) }):
		default:
			foreign = append(foreign, fmt.Sprintf("%s via %s", e.Addr, e.Route.Gw))
		}
	}
	switch {
	case len(eps) == 0:
		ch.Verdict, ch.Detail = Skip, "no endpoints known"
	case len(unreachable) > 0:
		ch.Verdict = Fail
		ch.Detail = fmt.Sprintf("%d of %d endpoints are outside every routed pod range and not on a connected network (connections get \"network is unreachable\"): %s", len(unreachable), len(eps), firstN(unreachable, 5))
		ch.Fix = "route their pod range: with routes.mode nodes the Node's podCIDR must hold them and the Node's InternalIP must be on this host's network; else add routes.cidrs with routes.mode gateway, or a route via a router that knows the pods"
	case len(foreign) > 0:
		ch.Verdict = Warn
		ch.Detail = fmt.Sprintf("%d of %d endpoints are reached through a gateway the agent does not manage (fine if that router knows the pods): %s", len(foreign), len(eps), firstN(foreign, 5))
		ch.Fix = "if connections to them fail, route their pod range (routes.mode gateway with routes.cidrs) or ask the router's admin"
	default:
		ch.Verdict = OK
		ch.Detail = fmt.Sprintf("all %d endpoints routed (the agent's routes or a connected network)", len(eps))
	}
	return ch
}

func firstN(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ", ")
	}
	return strings.Join(s[:n], ", ") + fmt.Sprintf(" and %d more", len(s)-n)
}

// shadowCheck looks for what overrides the agent's routes (ours, of
// protocol proto in table): a more specific route of someone else in the
// same table, or a policy rule consulted before that table that answers
// first (got holds the kernel's pick for each of our routes' first
// address); pure.
func shadowCheck(ours, table []Route, rules []Rule, got map[netip.Prefix]Route, proto, ourTable int) Check {
	ch := Check{Name: "foreign routes and rules"}
	if len(ours) == 0 {
		ch.Verdict, ch.Detail = Skip, "the agent has no routes here"
		return ch
	}
	var problems, fixes []string
	for _, o := range ours {
		for _, r := range table {
			if r.Protocol == proto || !r.Dst.IsValid() || r.Dst.Bits() <= o.Dst.Bits() || !o.Dst.Overlaps(r.Dst) {
				continue
			}
			problems = append(problems, fmt.Sprintf("%s %s (protocol %d) is more specific than the agent's %s %s and wins for its addresses", r.Dst, r, r.Protocol, o.Dst, o))
			fixes = append(fixes, fmt.Sprintf("ip route del %s table %s", r.Dst, tableName(r.Table)))
		}
		g, ok := got[o.Dst]
		if !ok || g.Table == ourTable {
			continue
		}
		var before []string
		for _, ru := range rules {
			if ru.Table == g.Table {
				before = append(before, ru.String())
			}
		}
		problems = append(problems, fmt.Sprintf("the kernel routes %s %s, not by the agent's route in table %s: policy rule %s answers first", o.Dst, g, tableName(ourTable), orNone(strings.Join(before, "; "))))
		fixes = append(fixes, fmt.Sprintf("remove that rule (ip rule del priority N) or give table %s the route too", tableName(g.Table)))
	}
	if len(problems) > 0 {
		ch.Verdict = Fail
		ch.Detail = strings.Join(problems, "; ")
		ch.Fix = strings.Join(slices.Compact(fixes), "; ")
		return ch
	}
	ch.Verdict = OK
	ch.Detail = fmt.Sprintf("no foreign route or rule overrides the agent's %d routes", len(ours))
	return ch
}

func orNone(s string) string {
	if s == "" {
		return "(none found)"
	}
	return s
}
