package routes

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeNetlink models the kernel's links, addresses and routes with the
// invariants the reconciler relies on: a gateway must be on a connected
// subnet (of its device, when one is named), an add fails when a route with
// the same destination, table and metric exists whoever owns it, a replace
// overwrites that route, a delete matches destination, table, metric and
// (when given) protocol, and IPv6 routes get metric 1024 by default.
type fakeNetlink struct {
	links  []netlink.Link
	addrs  []netlink.Addr
	routes []netlink.Route
	writes int
	// fail makes the next write to a destination fail with this error.
	fail map[netip.Prefix]error
	// failList, when set, makes route listing fail (failListTimes times,
	// or always when that is 0).
	failList      error
	failListTimes int
}

var _ netlinkHandle = (*fakeNetlink)(nil)

func newFakeNetlink() *fakeNetlink {
	f := &fakeNetlink{fail: map[netip.Prefix]error{}}
	f.addLink("lo", "127.0.0.1/8", "::1/128")
	return f
}

// addLink adds an interface with addresses and, as the kernel does, the
// connected routes of their subnets.
func (f *fakeNetlink) addLink(name string, cidrs ...string) {
	idx := len(f.links) + 1
	f.links = append(f.links, &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: idx, Name: name}})
	for _, c := range cidrs {
		p := netip.MustParsePrefix(c)
		scope := unix.RT_SCOPE_UNIVERSE
		if name == "lo" {
			scope = unix.RT_SCOPE_HOST
		}
		f.addrs = append(f.addrs, netlink.Addr{IPNet: ipNet(p), LinkIndex: idx, Scope: scope})
		if name == "lo" {
			continue
		}
		kr := netlink.Route{Dst: ipNet(p.Masked()), Family: familyOf(p), LinkIndex: idx, Protocol: unix.RTPROT_KERNEL,
			Scope: netlink.SCOPE_LINK, Table: mainTable, Type: unix.RTN_UNICAST}
		if p.Addr().Is6() {
			kr.Priority = 256
		}
		f.routes = append(f.routes, kr)
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (f *fakeNetlink) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	var out []netlink.Addr
	for _, a := range f.addrs {
		if link != nil && a.LinkIndex != link.Attrs().Index {
			continue
		}
		if family != netlink.FAMILY_ALL && family != familyOf(netip.MustParsePrefix(a.IPNet.String())) {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

func (f *fakeNetlink) LinkByName(name string) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Name == name {
			return l, nil
		}
	}
	return nil, fmt.Errorf("link %s: %w", name, unix.ENODEV)
}

func (f *fakeNetlink) LinkList() ([]netlink.Link, error) { return f.links, nil }

func (f *fakeNetlink) LinkByIndex(index int) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Index == index {
			return l, nil
		}
	}
	return nil, unix.ENODEV
}

// RouteListFiltered lists as the netlink library does: only the main table
// unless RT_FILTER_TABLE is set (table 0 then means every table).
func (f *fakeNetlink) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	if f.failList != nil {
		err := f.failList
		if f.failListTimes > 0 {
			if f.failListTimes--; f.failListTimes == 0 {
				f.failList = nil
			}
		}
		return nil, err
	}
	var out []netlink.Route
	for _, r := range f.routes {
		switch {
		case family != netlink.FAMILY_ALL && r.Family != family:
		case mask&netlink.RT_FILTER_TABLE == 0 && r.Table != mainTable:
		case mask&netlink.RT_FILTER_TABLE != 0 && filter.Table != 0 && r.Table != filter.Table:
		case mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol:
		default:
			c := r
			c.MultiPath = slices.Clone(r.MultiPath)
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeNetlink) RouteAdd(r *netlink.Route) error {
	nr, err := f.check(r)
	if err != nil {
		return err
	}
	if i := f.find(nr); i >= 0 {
		return unix.EEXIST
	}
	f.writes++
	f.routes = append(f.routes, nr)
	return nil
}

func (f *fakeNetlink) RouteReplace(r *netlink.Route) error {
	nr, err := f.check(r)
	if err != nil {
		return err
	}
	f.writes++
	if i := f.find(nr); i >= 0 {
		f.routes[i] = nr
		return nil
	}
	f.routes = append(f.routes, nr)
	return nil
}

func (f *fakeNetlink) RouteDel(r *netlink.Route) error {
	if r.Dst == nil {
		return unix.EINVAL
	}
	if err := f.fail[dstOf(r)]; err != nil {
		delete(f.fail, dstOf(r))
		return err
	}
	table := tableOf(r)
	for i, x := range f.routes {
		if x.Family != r.Family || x.Table != table || dstOf(&x) != dstOf(r) ||
			(r.Protocol != 0 && x.Protocol != r.Protocol) ||
			(r.Priority != 0 && x.Priority != r.Priority) ||
			(r.Type != 0 && x.Type != r.Type) ||
			(r.Gw != nil && !x.Gw.Equal(r.Gw)) {
			continue
		}
		f.writes++
		f.routes = slices.Delete(f.routes, i, i+1)
		return nil
	}
	return unix.ESRCH
}

// find returns the index of the route with nr's family, table, destination,
// TOS and metric.
func (f *fakeNetlink) find(nr netlink.Route) int {
	return slices.IndexFunc(f.routes, func(x netlink.Route) bool {
		return x.Family == nr.Family && x.Table == nr.Table && dstOf(&x) == dstOf(&nr) && x.Tos == nr.Tos && x.Priority == nr.Priority
	})
}

// check validates a route to add and returns it as the kernel would store
// it.
func (f *fakeNetlink) check(r *netlink.Route) (netlink.Route, error) {
	if r.Dst == nil {
		return netlink.Route{}, unix.EINVAL
	}
	if err := f.fail[dstOf(r)]; err != nil {
		delete(f.fail, dstOf(r))
		return netlink.Route{}, err
	}
	nr := *r
	nr.Family = familyOf(dstOf(r))
	nr.Table = tableOf(r)
	if nr.Type == 0 {
		nr.Type = unix.RTN_UNICAST
	}
	if nr.Priority == 0 {
		nr.Priority = defaultPriority(nr.Family)
	}
	hop := func(gw net.IP, index int) (int, error) {
		if index != 0 {
			if _, err := f.LinkByIndex(index); err != nil {
				return 0, err
			}
		}
		if gw == nil {
			if index == 0 {
				return 0, unix.EINVAL
			}
			return index, nil
		}
		a, _ := netip.AddrFromSlice(gw)
		a = a.Unmap()
		if a.Is4() != (nr.Family == unix.AF_INET) {
			return 0, unix.EINVAL
		}
		for _, ad := range f.addrs {
			p := netip.MustParsePrefix(ad.IPNet.String()).Masked()
			if ad.Scope != unix.RT_SCOPE_HOST && p.Contains(a) && (index == 0 || ad.LinkIndex == index) {
				return ad.LinkIndex, nil
			}
		}
		return 0, unix.ENETUNREACH
	}
	if nr.Type != unix.RTN_UNICAST {
		return nr, nil // blackhole, unreachable, prohibit: no next hop
	}
	var err error
	if len(nr.MultiPath) == 0 {
		nr.LinkIndex, err = hop(nr.Gw, nr.LinkIndex)
		return nr, err
	}
	nr.MultiPath = nil
	for _, n := range r.MultiPath {
		c := *n
		if c.LinkIndex, err = hop(c.Gw, c.LinkIndex); err != nil {
			return netlink.Route{}, err
		}
		nr.MultiPath = append(nr.MultiPath, &c)
	}
	return nr, nil
}

// linkNamer is what dumpRoutes needs besides listing: the fake or a real
// netlink handle.
type linkNamer interface {
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	LinkByIndex(index int) (netlink.Link, error)
}

// dumpRoutes renders every route except the kernel's own (connected
// subnets, the local table) one per line, sorted, in `ip route` words:
//
//	10.244.1.0/24 via 10.9.0.21 dev v0 proto 98
//	10.245.0.0/16 nexthop via 10.9.0.2 dev v0 nexthop via 10.9.0.3 dev v0 proto 98 table 100
func dumpRoutes(t *testing.T, h linkNamer) string {
	t.Helper()
	all, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("dump routes: %v", err)
	}
	name := func(index int) string {
		l, err := h.LinkByIndex(index)
		if err != nil {
			return "#" + strconv.Itoa(index)
		}
		return l.Attrs().Name
	}
	var lines []string
	for i := range all {
		r := &all[i]
		if r.Protocol == unix.RTPROT_KERNEL || tableOf(r) == 255 {
			continue
		}
		var b strings.Builder
		switch r.Type {
		case unix.RTN_BLACKHOLE:
			b.WriteString("blackhole ")
		case unix.RTN_UNREACHABLE:
			b.WriteString("unreachable ")
		}
		b.WriteString(dstOf(r).String())
		hop := func(gw net.IP, index int) {
			if gw != nil {
				a, _ := netip.AddrFromSlice(gw)
				b.WriteString(" via " + a.Unmap().String())
			}
			if index != 0 {
				b.WriteString(" dev " + name(index))
			}
		}
		if len(r.MultiPath) == 0 {
			hop(r.Gw, r.LinkIndex)
		}
		hops := slices.Clone(r.MultiPath)
		sort.Slice(hops, func(i, j int) bool { return hops[i].Gw.String() < hops[j].Gw.String() })
		for _, n := range hops {
			b.WriteString(" nexthop")
			hop(n.Gw, n.LinkIndex)
		}
		b.WriteString(" proto " + protocolName(int(r.Protocol)))
		if r.Priority != 0 && r.Priority != defaultPriority(r.Family) {
			b.WriteString(" metric " + strconv.Itoa(r.Priority))
		}
		if tableOf(r) != mainTable {
			b.WriteString(" table " + tableName(tableOf(r)))
		}
		lines = append(lines, b.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
