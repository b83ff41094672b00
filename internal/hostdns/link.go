package hostdns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
)

// The link systemd-resolved sends the cluster's names through.
//
// Why a link at all: resolved keeps DNS servers and routing domains per
// link, and a VPN or a cluster agent sets them over D-Bus on a link it owns
// (tailscale, Telepresence). resolved ignores the loopback link, and a link
// without carrier or without a routable (scope global) address, so the
// stub's 127.0.0.77 cannot be named on any link; and for a link's server
// resolved binds its socket to that link, so the server must be an address
// that lives on the link. Hence: a link of ours, up, with carrier and one
// address of scope global, on which the stub also listens.
//
// Why veth: a veth pair has carrier as soon as both ends are up, needs no
// process to hold it open (a tun device has no carrier unless one does)
// and is built into every distribution kernel, including the ones where
// the dummy module is not installed (dummy would do as well, and is the
// fallback when the kernel has no veth). NetworkManager's udev rules mark
// veth devices unmanaged (85-nm-unmanaged.rules), so it neither takes the
// link over nor pushes its own DNS settings onto it; systemd-networkd
// leaves it alone unless a .network file matches its name. The peer end
// stays without addresses, so resolved finds it irrelevant.
//
// Why 169.254.255.77/32: the address must not collide with any host the
// machine talks to, since it becomes a local address. Link-local space
// (RFC 3927) is never forwarded by a router, so no host beyond this
// machine's links can have it; and 169.254.255.0/24 is reserved by RFC 3927
// (section 2.1): hosts autoconfiguring link-local addresses never pick it.
// The well-known link-local services (cloud metadata 169.254.169.254 and
// .253, NodeLocal DNSCache's 169.254.20.10) are elsewhere. As a /32 it adds
// no prefix route; only its local route. Scope global because resolved
// ignores links whose addresses are all of link scope.
const (
	// LinkName is the link bridge-agent creates in systemd-resolved mode.
	LinkName = "bagent-dns"
	// linkPeer is the veth pair's other end.
	linkPeer = "bagent-dns-p"
	// linkAlias marks the link as ours (IFLA_IFALIAS); a link of that name
	// without it is never changed or deleted.
	linkAlias = "bridge-agent: cluster DNS for systemd-resolved"
)

// LinkAddr is the address of the agent's link, where the stub also
// listens in systemd-resolved mode.
var LinkAddr = netip.MustParseAddr("169.254.255.77")

// linkSpec is the link Apply wants.
type linkSpec struct {
	Name, Peer, Alias string
	Addr              netip.Addr
}

func defaultLinkSpec() linkSpec {
	return linkSpec{Name: LinkName, Peer: linkPeer, Alias: linkAlias, Addr: LinkAddr}
}

// linker creates and removes the agent's link.
type linker interface {
	// ensure makes the link exist, up, with the address, and returns its
	// index and whether anything had to change.
	ensure(spec linkSpec) (ifindex int, changed bool, err error)
	// lookup returns the index of the link if it exists; errNotOurs when
	// it exists without our alias.
	lookup(spec linkSpec) (ifindex int, ok bool, err error)
	// remove deletes the link if it exists and is ours (alias), and says
	// whether it did. A link of that name that is not ours is an error
	// of type errNotOurs.
	remove(spec linkSpec) (bool, error)
}

// errNotOurs is a link named as ours without our alias.
type errNotOurs struct{ name, alias string }

func (e errNotOurs) Error() string {
	return fmt.Sprintf("a link named %s exists and is not bridge-agent's (alias %q); rename or remove it", e.name, e.alias)
}

// netlinkLinker is the real linker, in the calling process's network
// namespace.
type netlinkLinker struct{}

func (netlinkLinker) ensure(spec linkSpec) (int, bool, error) {
	changed := false
	l, err := netlink.LinkByName(spec.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		if l, err = createLink(spec); err != nil {
			return 0, false, err
		}
		changed = true
	case err != nil:
		return 0, false, fmt.Errorf("look up link %s: %w", spec.Name, err)
	case l.Attrs().Alias != spec.Alias:
		return 0, false, errNotOurs{spec.Name, l.Attrs().Alias}
	}
	added, err := ensureAddr(l, spec.Addr)
	if err != nil {
		return 0, false, err
	}
	changed = changed || added
	if peer, err := netlink.LinkByName(spec.Peer); err == nil && peer.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(peer); err != nil {
			return 0, false, fmt.Errorf("set link %s up: %w", spec.Peer, err)
		}
		changed = true
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return 0, false, fmt.Errorf("set link %s up: %w", spec.Name, err)
		}
		changed = true
	}
	return l.Attrs().Index, changed, nil
}

// createLink adds the veth pair (the dummy link where the kernel has no
// veth), marked with our alias, without IPv6 link-local addresses: they
// would make resolved consider the link for LLMNR and mDNS, which are
// also turned off on it over D-Bus.
func createLink(spec linkSpec) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = spec.Name
	var l netlink.Link = &netlink.Veth{LinkAttrs: attrs, PeerName: spec.Peer}
	err := netlink.LinkAdd(l)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		l = &netlink.Dummy{LinkAttrs: attrs}
		err = netlink.LinkAdd(l)
	}
	if err != nil {
		return nil, fmt.Errorf("create link %s: %w", spec.Name, err)
	}
	l, err = netlink.LinkByName(spec.Name)
	if err != nil {
		return nil, fmt.Errorf("create link %s: %w", spec.Name, err)
	}
	if err := netlink.LinkSetAlias(l, spec.Alias); err != nil {
		netlink.LinkDel(l)
		return nil, fmt.Errorf("create link %s: set alias: %w", spec.Name, err)
	}
	l.Attrs().Alias = spec.Alias
	for _, name := range []string{spec.Name, spec.Peer} {
		if x, err := netlink.LinkByName(name); err == nil {
			// IN6_ADDR_GEN_MODE_NONE; fails harmlessly where IPv6 is off.
			_ = netlink.LinkSetIP6AddrGenMode(x, 1)
		}
	}
	return l, nil
}

// ensureAddr adds a, scope global, to l unless it is there, and says
// whether it added it.
func ensureAddr(l netlink.Link, a netip.Addr) (bool, error) {
	fam := netlink.FAMILY_V4
	bits := 32
	if a.Is6() {
		fam, bits = netlink.FAMILY_V6, 128
	}
	addrs, err := netlink.AddrList(l, fam)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			return false, nil
		}
	}
	p := netip.PrefixFrom(a, bits)
	addr, err := netlink.ParseAddr(p.String())
	if err != nil {
		return false, err
	}
	addr.Scope = int(netlink.SCOPE_UNIVERSE)
	if err := netlink.AddrAdd(l, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return false, fmt.Errorf("add address %s to %s: %w", p, l.Attrs().Name, err)
	}
	return true, nil
}

func (netlinkLinker) lookup(spec linkSpec) (int, bool, error) {
	l, err := netlink.LinkByName(spec.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("look up link %s: %w", spec.Name, err)
	case l.Attrs().Alias != spec.Alias:
		return 0, false, errNotOurs{spec.Name, l.Attrs().Alias}
	}
	return l.Attrs().Index, true, nil
}

func (netlinkLinker) remove(spec linkSpec) (bool, error) {
	l, err := netlink.LinkByName(spec.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look up link %s: %w", spec.Name, err)
	case l.Attrs().Alias != spec.Alias:
		return false, errNotOurs{spec.Name, l.Attrs().Alias}
	}
	if err := netlink.LinkDel(l); err != nil {
		return false, fmt.Errorf("delete link %s: %w", spec.Name, err)
	}
	return true, nil
}
