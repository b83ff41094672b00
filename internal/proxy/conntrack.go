package proxy

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// conntrackCleaner deletes UDP conntrack entries. UDP has no connection
// end, so an entry that NATs a client's flow to an endpoint that is gone (or
// that recorded a flow while the Service had no endpoints) keeps
// black-holing the client's packets until it times out, unless deleted.
type conntrackCleaner interface {
	// DeleteUDP deletes entries of UDP flows to service; with endpoint valid,
	// only those NATed to that endpoint. It returns how many it deleted.
	DeleteUDP(service netip.AddrPort, endpoint netip.Addr) (uint, error)
}

// netlinkConntrack is the real conntrackCleaner, over netlink.
type netlinkConntrack struct{}

var _ conntrackCleaner = netlinkConntrack{}

func (netlinkConntrack) DeleteUDP(service netip.AddrPort, endpoint netip.Addr) (uint, error) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
		return 0, err
	}
	if err := f.AddIP(netlink.ConntrackOrigDstIP, net.IP(service.Addr().AsSlice())); err != nil {
		return 0, err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, service.Port()); err != nil {
		return 0, err
	}
	if endpoint.IsValid() {
		if err := f.AddIP(netlink.ConntrackReplySrcIP, net.IP(endpoint.AsSlice())); err != nil {
			return 0, err
		}
	}
	family := netlink.InetFamily(unix.AF_INET)
	if service.Addr().Is6() {
		family = unix.AF_INET6
	}
	return netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
}

// udpServicePorts maps every proxied UDP cluster IP:port of family fam to the
// endpoints that get its traffic.
func udpServicePorts(snap *cluster.Snapshot, fam Family, zone string) map[netip.AddrPort][]netip.AddrPort {
	out := map[netip.AddrPort][]netip.AddrPort{}
	if snap == nil {
		return out
	}
	for _, svc := range snap.Services {
		if !svc.Proxied || svc.Headless || svc.Type == cluster.TypeExternalName {
			continue
		}
		for _, port := range svc.Ports {
			if port.Protocol != "UDP" {
				continue
			}
			sel := SelectEndpoints(svc, port, fam, zone)
			eps := make([]netip.AddrPort, 0, len(sel.Endpoints))
			for _, e := range sel.Endpoints {
				eps = append(eps, e.AddrPort())
			}
			for _, ip := range svc.ClusterIPs {
				if fam.Contains(ip) {
					out[netip.AddrPortFrom(ip, uint16(port.Port))] = eps
				}
			}
		}
	}
	return out
}

// clearStaleUDP deletes the UDP entries made stale by the change from the
// service ports prev to next (both as returned by udpServicePorts).
func clearStaleUDP(ct conntrackCleaner, log *slog.Logger, prev, next map[netip.AddrPort][]netip.AddrPort) {
	if ct == nil {
		return
	}
	for sp, oldEps := range prev {
		newEps := next[sp]
		for _, ep := range oldEps {
			if !containsAddrPort(newEps, ep) {
				deleteUDP(ct, log, sp, ep.Addr())
			}
		}
	}
	for sp, newEps := range next {
		if len(newEps) > 0 && len(prev[sp]) == 0 {
			deleteUDP(ct, log, sp, netip.Addr{})
		}
	}
}

func deleteUDP(ct conntrackCleaner, log *slog.Logger, sp netip.AddrPort, ep netip.Addr) {
	n, err := ct.DeleteUDP(sp, ep)
	if err != nil {
		log.Warn("deleting stale UDP conntrack entries failed", "service", sp.String(), "endpoint", ep.String(), "err", err)
		return
	}
	if n > 0 {
		log.Debug("deleted stale UDP conntrack entries", "service", sp.String(), "endpoint", ep.String(), "count", n)
	}
}

func containsAddrPort(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}
