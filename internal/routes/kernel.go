package routes

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// netlinkHandle is what the reconciler needs of netlink: *netlink.Handle in
// production (for this network namespace or another), a fake that models
// the kernel's route state in tests.
type netlinkHandle interface {
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	LinkByName(name string) (netlink.Link, error)
	LinkList() ([]netlink.Link, error)
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteAdd(route *netlink.Route) error
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
}

var _ netlinkHandle = (*netlink.Handle)(nil)

func prefixFrom(n *net.IPNet) (netip.Prefix, bool) { return hostguard.PrefixFrom(n) }

// dstOf returns a kernel route's destination; a nil Dst is the default
// route of the route's family.
func dstOf(r *netlink.Route) netip.Prefix {
	if r.Dst != nil {
		if p, ok := prefixFrom(r.Dst); ok {
			return p.Masked()
		}
	}
	if r.Family == unix.AF_INET6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

func familyOf(p netip.Prefix) int {
	if p.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// tableOf returns a listed route's table (the netlink library leaves it 0
// for the main table on some paths).
func tableOf(r *netlink.Route) int {
	if r.Table == unix.RT_TABLE_UNSPEC {
		return mainTable
	}
	return r.Table
}

// toNetlink renders a desired route for the kernel. links maps device
// names to interface indexes.
func toNetlink(r Route, protocol int, links map[string]int) *netlink.Route {
	nr := &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		Family:   familyOf(r.Dst),
		Protocol: netlink.RouteProtocol(protocol),
		Table:    r.Table,
		Type:     unix.RTN_UNICAST,
		Scope:    netlink.SCOPE_UNIVERSE,
	}
	if len(r.Nexthops) == 1 {
		n := r.Nexthops[0]
		if n.Gw.IsValid() {
			nr.Gw = n.Gw.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		nr.LinkIndex = links[n.Dev]
		return nr
	}
	for _, n := range r.Nexthops {
		nr.MultiPath = append(nr.MultiPath, &netlink.NexthopInfo{Gw: n.Gw.AsSlice(), LinkIndex: links[n.Dev]})
	}
	return nr
}

// hop is a next hop as the kernel lists it.
type hop struct {
	gw    netip.Addr
	index int
}

func hopsOf(r *netlink.Route) []hop {
	addr := func(ip net.IP) netip.Addr {
		a, _ := netip.AddrFromSlice(ip)
		return a.Unmap()
	}
	var hops []hop
	if len(r.MultiPath) == 0 {
		hops = []hop{{gw: addr(r.Gw), index: r.LinkIndex}}
	}
	for _, n := range r.MultiPath {
		hops = append(hops, hop{gw: addr(n.Gw), index: n.LinkIndex})
	}
	slices.SortFunc(hops, func(a, b hop) int { return a.gw.Compare(b.gw) })
	return hops
}

// matches reports whether an installed route of ours is the desired route:
// same table, destination, type and next hops (a device only counts when
// the desired next hop names one).
func matches(installed *netlink.Route, want Route, links map[string]int) bool {
	if tableOf(installed) != want.Table || dstOf(installed) != want.Dst ||
		(installed.Type != 0 && installed.Type != unix.RTN_UNICAST) {
		return false
	}
	hops := hopsOf(installed)
	if len(hops) != len(want.Nexthops) {
		return false
	}
	for i, h := range hops {
		w := want.Nexthops[i]
		if h.gw != w.Gw || (w.Dev != "" && h.index != links[w.Dev]) {
			return false
		}
	}
	return true
}

// routeKey identifies a destination in a table.
type routeKey struct {
	table int
	dst   netip.Prefix
}

// plan is the work of one sync.
type plan struct {
	add     []*netlink.Route // destinations without a route of ours
	replace []*netlink.Route // routes of ours that differ
	del     []*netlink.Route // routes of ours no longer wanted
	keep    int              // routes of ours already as desired
}

// makePlan compares the desired routes with the installed routes of ours
// (any table) and returns what to change; routes that already match are
// left alone.
func makePlan(want []Route, ours []netlink.Route, protocol int, links map[string]int) plan {
	installed := map[routeKey][]*netlink.Route{}
	for i := range ours {
		r := &ours[i]
		k := routeKey{tableOf(r), dstOf(r)}
		installed[k] = append(installed[k], r)
	}
	var p plan
	wanted := map[routeKey]bool{}
	for _, w := range want {
		k := routeKey{w.Table, w.Dst}
		wanted[k] = true
		have := installed[k]
		i := slices.IndexFunc(have, func(r *netlink.Route) bool { return matches(r, w, links) })
		switch {
		case i >= 0:
			p.keep++
			have = slices.Delete(slices.Clone(have), i, i+1)
		case len(have) == 0:
			p.add = append(p.add, toNetlink(w, protocol, links))
		default:
			// Replace overwrites the route of ours with the kernel's default
			// metric; any other one (another metric) goes.
			p.replace = append(p.replace, toNetlink(w, protocol, links))
			have = slices.DeleteFunc(slices.Clone(have), func(r *netlink.Route) bool { return r.Priority == defaultPriority(r.Family) })
		}
		for _, r := range have {
			p.del = append(p.del, deletion(r))
		}
	}
	keys := make([]routeKey, 0, len(installed))
	for k := range installed {
		if !wanted[k] {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b routeKey) int {
		if a.table != b.table {
			return a.table - b.table
		}
		return comparePrefix(a.dst, b.dst)
	})
	for _, k := range keys {
		for _, r := range installed[k] {
			p.del = append(p.del, deletion(r))
		}
	}
	return p
}

// defaultPriority is the metric the kernel gives a route added without one.
func defaultPriority(family int) int {
	if family == unix.AF_INET6 {
		return 1024
	}
	return 0
}

// deletion returns the request that deletes exactly the listed route of
// ours: it names destination, table, metric and protocol (which the kernel
// matches), and no next hop, so an IPv6 multipath route goes whole.
func deletion(r *netlink.Route) *netlink.Route {
	d := dstOf(r)
	return &netlink.Route{
		Dst:      &net.IPNet{IP: d.Addr().AsSlice(), Mask: net.CIDRMask(d.Bits(), d.Addr().BitLen())},
		Family:   familyOf(d),
		Table:    tableOf(r),
		Protocol: r.Protocol,
		Priority: r.Priority,
		Tos:      r.Tos,
		Type:     r.Type,
		Scope:    netlink.SCOPE_NOWHERE,
	}
}

// listRoutes lists every route of both families in every table.
func listRoutes(h netlinkHandle) ([]netlink.Route, error) { return hostguard.ListRoutes(h) }

// linkNames maps interface indexes to names, for messages.
type linkNames map[int]string

// listLinkNames returns the names of h's interfaces; on error, an empty
// map (messages then show "dev #<index>").
func listLinkNames(h netlinkHandle) linkNames {
	names := linkNames{}
	links, err := h.LinkList()
	if err != nil {
		return names
	}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return names
}

func (n linkNames) name(index int) string {
	if s, ok := n[index]; ok {
		return s
	}
	return "#" + strconv.Itoa(index)
}

// describe renders a kernel route for messages: "10.244.3.0/24 via 10.0.0.2
// dev eth0 proto static", "blackhole 10.244.3.0/24 proto boot".
func describe(r *netlink.Route, names linkNames) string {
	var b strings.Builder
	switch r.Type {
	case unix.RTN_BLACKHOLE:
		b.WriteString("blackhole ")
	case unix.RTN_UNREACHABLE:
		b.WriteString("unreachable ")
	case unix.RTN_PROHIBIT:
		b.WriteString("prohibit ")
	}
	b.WriteString(dstOf(r).String())
	for _, h := range hopsOf(r) {
		if len(r.MultiPath) > 0 {
			b.WriteString(" nexthop")
		}
		if h.gw.IsValid() {
			b.WriteString(" via " + h.gw.String())
		}
		if h.index != 0 {
			b.WriteString(" dev " + names.name(h.index))
		}
	}
	b.WriteString(" proto " + protocolName(int(r.Protocol)))
	if r.Priority != 0 && r.Priority != defaultPriority(r.Family) {
		b.WriteString(" metric " + strconv.Itoa(r.Priority))
	}
	return b.String()
}

// protocolName names route protocols as iproute2's rt_protos does.
func protocolName(p int) string {
	names := map[int]string{
		0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
		10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
		18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf",
		189: "rip", 192: "eigrp",
	}
	if n, ok := names[p]; ok {
		return n
	}
	return strconv.Itoa(p)
}
