package proxy

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Family is an IP family. Each family gets its own ruleset (iptables and
// ip6tables are separate), built from the Service's cluster IP of that family
// and the endpoints of that family.
type Family uint8

// The IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "Family(" + strconv.Itoa(int(f)) + ")"
}

// Contains reports whether a is an address of family f. IPv4-mapped IPv6
// addresses belong to neither family.
func (f Family) Contains(a netip.Addr) bool {
	switch f {
	case IPv4:
		return a.Is4()
	case IPv6:
		return a.Is6() && !a.Is4In6()
	}
	return false
}

func (f Family) valid() bool { return f == IPv4 || f == IPv6 }

// Selection is the outcome of choosing which endpoints of one Service port,
// in one family, receive traffic from this host.
type Selection struct {
	// Endpoints get the traffic, sorted by address and port. Empty means the
	// Service port has no usable endpoint: its traffic is rejected.
	Endpoints []cluster.Endpoint
	// Terminating is true when no endpoint was ready and Endpoints holds the
	// serving, terminating ones instead.
	Terminating bool
	// Zonal is true when topology hints narrowed Endpoints to the host's zone.
	Zonal bool
	// LocalPolicyIgnored is true when the Service asks for
	// internalTrafficPolicy: Local. This host has no local endpoints, so the
	// policy is ignored and the Service is proxied as Cluster; callers should
	// say so in a warning.
	LocalPolicyIgnored bool
}

// SelectEndpoints returns the endpoints of port (a port of svc) in family that
// get traffic from this host, with kube-proxy's semantics for a client that
// is not a node:
//
//   - ready endpoints get traffic;
//   - when none is ready, serving and terminating endpoints get it instead;
//   - endpoints that are not serving never do;
//   - topology hints narrow the set only when zone is not empty, every ready
//     endpoint carries zone hints, and at least one is hinted for zone;
//     otherwise they are ignored;
//   - internalTrafficPolicy: Local is treated as Cluster (see the package
//     documentation) and flagged in the result.
//
// The result never aliases port.Endpoints.
func SelectEndpoints(svc *cluster.Service, port *cluster.Port, family Family, zone string) Selection {
	sel := Selection{LocalPolicyIgnored: svc.InternalTrafficLocal}

	var ready, servingTerminating int
	allHinted, zoneHinted := true, false
	for i := range port.Endpoints {
		ep := &port.Endpoints[i]
		if !family.Contains(ep.Addr) {
			continue
		}
		switch {
		case ep.Ready:
			ready++
			if len(ep.HintZones) == 0 {
				allHinted = false
			} else if slices.Contains(ep.HintZones, zone) {
				zoneHinted = true
			}
		case ep.Serving && ep.Terminating:
			servingTerminating++
		}
	}

	var keep func(*cluster.Endpoint) bool
	n := 0
	switch {
	case ready > 0 && zone != "" && allHinted && zoneHinted:
		sel.Zonal = true
		keep = func(ep *cluster.Endpoint) bool { return ep.Ready && slices.Contains(ep.HintZones, zone) }
		n = ready
	case ready > 0:
		keep = func(ep *cluster.Endpoint) bool { return ep.Ready }
		n = ready
	case servingTerminating > 0:
		// Topology never applies here: hints are only considered among
		// ready endpoints, and there are none.
		sel.Terminating = true
		keep = func(ep *cluster.Endpoint) bool { return ep.Serving && ep.Terminating }
		n = servingTerminating
	default:
		return sel
	}

	sel.Endpoints = make([]cluster.Endpoint, 0, n)
	for i := range port.Endpoints {
		ep := &port.Endpoints[i]
		if family.Contains(ep.Addr) && keep(ep) {
			sel.Endpoints = append(sel.Endpoints, *ep)
		}
	}
	// Snapshots keep endpoints sorted; sort anyway so that the rules never
	// depend on how a Snapshot was put together.
	if !slices.IsSortedFunc(sel.Endpoints, compareEndpoints) {
		slices.SortFunc(sel.Endpoints, compareEndpoints)
	}
	return sel
}

func compareEndpoints(a, b cluster.Endpoint) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}
