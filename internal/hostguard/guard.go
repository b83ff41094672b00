package hostguard

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Facts is what the guard knows of this host. Values are immutable once
// handed out; a change of the host makes a new Facts.
type Facts struct {
	// Local are this host's own addresses, every interface, loopback
	// included.
	Local []netip.Addr `json:"local"`
	// Connected are the subnets of this host's interfaces (the peer prefix
	// of a point-to-point address); loopback and IPv6 link-local subnets
	// are left out (the special ranges cover them). A next hop in one of
	// them is on-link.
	Connected []netip.Prefix `json:"connected"`
	// Gateways are the next hops of this host's default routes, every
	// table.
	Gateways []netip.Addr `json:"gateways"`
	// Resolvers are the host's upstream DNS resolvers (never the agent's
	// own stub).
	Resolvers []netip.Addr `json:"resolvers"`
}

// Reason says why the guard refuses an address or a range.
type Reason string

// Reasons of a Refusal.
const (
	// ReasonSpecial: in a special range (loopback, link-local and cloud
	// metadata, multicast, broadcast, unspecified, IPv4-mapped, NAT64, ...).
	ReasonSpecial Reason = "specialRange"
	// ReasonHostAddress: is, or contains, one of this host's own addresses.
	ReasonHostAddress Reason = "hostAddress"
	// ReasonHostGateway: is, or contains, one of this host's default
	// gateways.
	ReasonHostGateway Reason = "hostGateway"
	// ReasonHostResolver: is, or contains, one of this host's DNS resolvers.
	ReasonHostResolver Reason = "hostResolver"
	// ReasonHostNetwork: lies in, or overlaps, a subnet this host is
	// directly connected to.
	ReasonHostNetwork Reason = "hostNetwork"
)

// Reasons lists every Reason, for metrics.
var Reasons = []Reason{ReasonSpecial, ReasonHostAddress, ReasonHostGateway, ReasonHostResolver, ReasonHostNetwork}

// Refusal is the guard's answer for something it does not let through.
type Refusal struct {
	Reason Reason `json:"reason"`
	Detail string `json:"detail"`
}

func (r *Refusal) String() string { return string(r.Reason) + ": " + r.Detail }

// Range is a special range and what it is.
type Range struct {
	Prefix netip.Prefix
	Name   string
	// linkLocal ranges hold legitimate next hops on a named device (an
	// IPv6 router's fe80:: address, Calico's 169.254.1.1).
	linkLocal bool
}

// Special are the ranges no address or route derived from API objects may
// touch, whatever the host looks like. The more specific ones come first,
// so a refusal names the most telling one.
var Special = []Range{
	{Prefix: netip.MustParsePrefix("0.0.0.0/8"), Name: `"this network" (0.0.0.0/8, the unspecified address)`},
	{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Name: "loopback (127.0.0.0/8)"},
	{Prefix: netip.MustParsePrefix("169.254.169.254/32"), Name: "the cloud metadata address (169.254.169.254)"},
	{Prefix: netip.MustParsePrefix("169.254.0.0/16"), Name: "link-local (169.254.0.0/16)", linkLocal: true},
	{Prefix: netip.MustParsePrefix("100.100.100.200/32"), Name: "the cloud metadata address (Alibaba Cloud, 100.100.100.200)"},
	{Prefix: netip.MustParsePrefix("168.63.129.16/32"), Name: "the cloud platform address (Azure, 168.63.129.16)"},
	{Prefix: netip.MustParsePrefix("224.0.0.0/4"), Name: "multicast (224.0.0.0/4)"},
	{Prefix: netip.MustParsePrefix("255.255.255.255/32"), Name: "the limited broadcast address (255.255.255.255)"},
	{Prefix: netip.MustParsePrefix("::/128"), Name: "the unspecified address (::)"},
	{Prefix: netip.MustParsePrefix("::1/128"), Name: "loopback (::1)"},
	{Prefix: netip.MustParsePrefix("::/96"), Name: "IPv4-compatible (::/96, deprecated)"},
	{Prefix: netip.MustParsePrefix("::ffff:0:0/96"), Name: "IPv4-mapped (::ffff:0:0/96)"},
	{Prefix: netip.MustParsePrefix("64:ff9b::/96"), Name: "NAT64 (64:ff9b::/96): this host's IPv4 traffic on an IPv6-only network"},
	{Prefix: netip.MustParsePrefix("64:ff9b:1::/48"), Name: "local-use NAT64 (64:ff9b:1::/48)"},
	{Prefix: netip.MustParsePrefix("fd00:ec2::254/128"), Name: "the cloud metadata address (AWS, fd00:ec2::254)"},
	{Prefix: netip.MustParsePrefix("fe80::/10"), Name: "link-local (fe80::/10)", linkLocal: true},
	{Prefix: netip.MustParsePrefix("ff00::/8"), Name: "multicast (ff00::/8)"},
}

// Private are the address ranges a Node's pod CIDR must lie in when the
// configuration names none (routes.allowedCIDRs): RFC 1918, the shared
// address space of RFC 6598 and IPv6 unique local addresses. A pod network
// in public space (common with IPv6) must be listed explicitly, so that a
// Node cannot claim a public address this host talks to.
var Private = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("fc00::/7"),
}

// clean drops a zone: fe80::1%eth0 is still fe80::1.
func clean(a netip.Addr) netip.Addr { return a.WithZone("") }

// SpecialAddr refuses an address in a special range. An IPv4-mapped IPv6
// address is refused as such: it is not the IPv4 address it maps.
func SpecialAddr(a netip.Addr) *Refusal { return specialAddr(a, false) }

func specialAddr(a netip.Addr, allowLinkLocal bool) *Refusal {
	if !a.IsValid() {
		return &Refusal{Reason: ReasonSpecial, Detail: "not an IP address"}
	}
	a = clean(a)
	for _, r := range Special {
		if r.Prefix.Contains(a) && !(allowLinkLocal && r.linkLocal) {
			return &Refusal{Reason: ReasonSpecial, Detail: a.String() + " is " + r.Name}
		}
	}
	return nil
}

// SpecialPrefix refuses a prefix that overlaps a special range (lies in
// one, equals one or contains one).
func SpecialPrefix(p netip.Prefix) *Refusal {
	if !p.IsValid() {
		return &Refusal{Reason: ReasonSpecial, Detail: "not a CIDR"}
	}
	p = p.Masked()
	for _, r := range Special {
		if r.Prefix.Overlaps(p) {
			return &Refusal{Reason: ReasonSpecial, Detail: p.String() + " overlaps " + r.Name}
		}
	}
	return nil
}

// SpecialNexthop refuses a next hop in a special range; link-local
// addresses (fe80::/10, 169.254.0.0/16 but its metadata address) pass when
// allowLinkLocal is set, for routes onto a named device.
func SpecialNexthop(a netip.Addr, allowLinkLocal bool) *Refusal {
	return specialAddr(a, allowLinkLocal)
}

// CheckAddr refuses an address that traffic of this host must keep
// reaching unchanged (a ClusterIP the proxy would capture): one in a
// special range, one of the host's own addresses, gateways or resolvers,
// or one in a subnet the host is connected to. nil: it may be used.
func (f *Facts) CheckAddr(a netip.Addr) *Refusal {
	if r := SpecialAddr(a); r != nil {
		return r
	}
	a = clean(a)
	if f == nil {
		return nil
	}
	switch {
	case slices.Contains(f.Local, a):
		return &Refusal{Reason: ReasonHostAddress, Detail: a.String() + " is this host's own address"}
	case slices.Contains(f.Gateways, a):
		return &Refusal{Reason: ReasonHostGateway, Detail: a.String() + " is this host's default gateway"}
	case slices.Contains(f.Resolvers, a):
		return &Refusal{Reason: ReasonHostResolver, Detail: a.String() + " is this host's DNS resolver"}
	}
	for _, c := range f.Connected {
		if c.Contains(a) {
			return &Refusal{Reason: ReasonHostNetwork, Detail: a.String() + " is in " + c.String() + ", a network this host is connected to"}
		}
	}
	return nil
}

// CheckPrefix refuses a range whose capture would redirect traffic of this
// host (a route's destination, a Service range): one overlapping a
// special range or a subnet the host is connected to, or containing one of
// its own addresses, gateways or resolvers. nil: it may be used.
func (f *Facts) CheckPrefix(p netip.Prefix) *Refusal {
	if r := SpecialPrefix(p); r != nil {
		return r
	}
	p = p.Masked()
	if f == nil {
		return nil
	}
	in := func(as []netip.Addr) []netip.Addr {
		var hit []netip.Addr
		for _, a := range as {
			if p.Contains(clean(a)) {
				hit = append(hit, a)
			}
		}
		return hit
	}
	if hit := in(f.Local); len(hit) > 0 {
		return &Refusal{Reason: ReasonHostAddress, Detail: p.String() + " contains this host's own address " + joinAddrs(hit)}
	}
	if hit := in(f.Gateways); len(hit) > 0 {
		return &Refusal{Reason: ReasonHostGateway, Detail: p.String() + " contains this host's default gateway " + joinAddrs(hit)}
	}
	if hit := in(f.Resolvers); len(hit) > 0 {
		return &Refusal{Reason: ReasonHostResolver, Detail: p.String() + " contains this host's DNS resolver " + joinAddrs(hit)}
	}
	for _, c := range f.Connected {
		if c.Overlaps(p) {
			return &Refusal{Reason: ReasonHostNetwork, Detail: p.String() + " overlaps " + c.String() + ", a network this host is connected to"}
		}
	}
	return nil
}

// CheckNexthop refuses a next hop that is in a special range (link-local
// ones pass with allowLinkLocal) or is this host itself. Whether it is
// on-link is OnLink's to say.
func (f *Facts) CheckNexthop(a netip.Addr, allowLinkLocal bool) *Refusal {
	if r := SpecialNexthop(a, allowLinkLocal); r != nil {
		return r
	}
	if f != nil && slices.Contains(f.Local, clean(a)) {
		return &Refusal{Reason: ReasonHostAddress, Detail: "the next hop " + clean(a).String() + " is this host's own address"}
	}
	return nil
}

// OnLink reports whether a is in a subnet the host is connected to.
func (f *Facts) OnLink(a netip.Addr) bool {
	if f == nil {
		return false
	}
	a = clean(a).Unmap()
	for _, c := range f.Connected {
		if c.Contains(a) {
			return true
		}
	}
	return false
}

// Equal reports whether two Facts say the same.
func (f *Facts) Equal(o *Facts) bool {
	if f == nil || o == nil {
		return f == o
	}
	return slices.Equal(f.Local, o.Local) && slices.Equal(f.Connected, o.Connected) &&
		slices.Equal(f.Gateways, o.Gateways) && slices.Equal(f.Resolvers, o.Resolvers)
}

// Normalize sorts and deduplicates every list, unmapping IPv4-mapped
// addresses and dropping zones, so that equal hosts make equal Facts.
func (f *Facts) Normalize() {
	addrs := func(as []netip.Addr) []netip.Addr {
		out := make([]netip.Addr, 0, len(as))
		for _, a := range as {
			if a.IsValid() {
				out = append(out, clean(a).Unmap())
			}
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return slices.Compact(out)
	}
	f.Local, f.Gateways, f.Resolvers = addrs(f.Local), addrs(f.Gateways), addrs(f.Resolvers)
	cs := make([]netip.Prefix, 0, len(f.Connected))
	for _, c := range f.Connected {
		if c.IsValid() {
			cs = append(cs, netip.PrefixFrom(c.Addr().Unmap(), c.Bits()-unmapBits(c)).Masked())
		}
	}
	slices.SortFunc(cs, ComparePrefix)
	f.Connected = slices.Compact(cs)
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// ComparePrefix orders prefixes IPv4 first, then by address, then shorter
// first.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// String summarises the facts for logs.
func (f *Facts) String() string {
	if f == nil {
		return "<none>"
	}
	return fmt.Sprintf("addresses %d, connected %v, gateways %v, resolvers %v", len(f.Local), f.Connected, f.Gateways, f.Resolvers)
}
