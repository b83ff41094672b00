package proxy

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Builders for the plain structs of a cluster.Snapshot.

func service(ns, name string, ips []string, ports ...*cluster.Port) *cluster.Service {
	s := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: ns, Name: name},
		Type:       cluster.TypeClusterIP,
		Proxied:    true,
		Ports:      ports,
	}
	for _, ip := range ips {
		s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(ip))
	}
	return s
}

func svcPort(name string, port int32, proto string, eps ...cluster.Endpoint) *cluster.Port {
	return &cluster.Port{Name: name, Port: port, Protocol: proto, Endpoints: eps}
}

// ready is a ready (and so serving) endpoint.
func ready(addr string, port int32) cluster.Endpoint {
	return cluster.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Ready: true, Serving: true}
}

// servingTerminating is an endpoint of a Pod being deleted that still serves.
func servingTerminating(addr string, port int32) cluster.Endpoint {
	return cluster.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Serving: true, Terminating: true}
}

// terminated is a terminating endpoint that no longer serves.
func terminated(addr string, port int32) cluster.Endpoint {
	return cluster.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Terminating: true}
}

// notReady is an endpoint that is neither ready nor serving.
func notReady(addr string, port int32) cluster.Endpoint {
	return cluster.Endpoint{Addr: netip.MustParseAddr(addr), Port: port}
}

func hinted(e cluster.Endpoint, zone string, hints ...string) cluster.Endpoint {
	e.Zone = zone
	e.HintZones = hints
	return e
}

func snapshot(svcs ...*cluster.Service) *cluster.Snapshot {
	s := &cluster.Snapshot{Version: 1, Services: map[cluster.ServiceKey]*cluster.Service{}}
	for _, svc := range svcs {
		s.Services[svc.ServiceKey] = svc
	}
	return s
}

// testServices is the representative cluster of the golden files and the
// packet-flow tests. Service IPs are 172.30.0.0/16 and fd00:30::/108, Pod IPs
// 10.244.0.0/16 and fd00:244::/48.
func testServices() []*cluster.Service {
	web := service("ns1", "web", []string{"172.30.0.10"},
		// Named port "http" resolves to 8080 in one EndpointSlice and to
		// 8081 in another (a rolling update changing the container port).
		svcPort("http", 80, "TCP", ready("10.244.1.5", 8080), ready("10.244.2.7", 8081), ready("10.244.3.9", 8080)),
		svcPort("https", 443, "TCP", ready("10.244.1.5", 8443)),
	)
	web.Type = cluster.TypeNodePort

	dns := service("ns1", "dns", []string{"172.30.0.53"},
		svcPort("dns", 53, "UDP", ready("10.244.1.10", 53), ready("10.244.2.10", 53)),
		svcPort("dns-tcp", 53, "TCP", ready("10.244.1.10", 53), ready("10.244.2.10", 53)),
	)

	sctp := service("ns1", "sctp", []string{"172.30.0.60"},
		svcPort("", 9999, "SCTP", ready("10.244.1.20", 9999)),
	)

	dual := service("ns2", "dual", []string{"172.30.0.40", "fd00:30::40"},
		svcPort("http", 80, "TCP", ready("10.244.1.40", 8080), ready("10.244.2.40", 8080), ready("fd00:244:1::40", 8080)),
	)

	v6only := service("ns2", "v6only", []string{"fd00:30::50"},
		svcPort("http", 80, "TCP", ready("fd00:244:1::50", 80), ready("fd00:244:2::50", 80)),
	)

	sticky := service("ns2", "sticky", []string{"fd00:30::70", "172.30.0.70"},
		svcPort("http", 80, "TCP",
			ready("10.244.1.70", 80), ready("10.244.2.70", 80),
			ready("fd00:244:1::70", 80), ready("fd00:244:2::70", 80)),
	)
	sticky.SessionAffinityTimeout = 3 * time.Hour

	empty := service("ns3", "empty", []string{"172.30.0.80", "fd00:30::80"},
		svcPort("http", 80, "TCP"),
		svcPort("syslog", 514, "UDP"),
	)

	notready := service("ns3", "notready", []string{"172.30.0.81"},
		svcPort("http", 80, "TCP", notReady("10.244.1.81", 80), terminated("10.244.2.81", 80)),
	)

	terminating := service("ns3", "terminating", []string{"172.30.0.82"},
		svcPort("http", 80, "TCP", servingTerminating("10.244.1.82", 80), terminated("10.244.2.82", 80), notReady("10.244.3.82", 80)),
	)

	mixed := service("ns3", "mixed", []string{"172.30.0.83"},
		svcPort("http", 80, "TCP", ready("10.244.1.83", 80), servingTerminating("10.244.2.83", 80), notReady("10.244.3.83", 80)),
	)

	headless := service("ns4", "headless", nil, svcPort("http", 80, "TCP", ready("10.244.1.88", 80)))
	headless.Headless = true

	extname := service("ns4", "extname", nil, svcPort("http", 80, "TCP"))
	extname.Type = cluster.TypeExternalName
	extname.ExternalName = "example.com"

	other := service("ns4", "other-proxy", []string{"172.30.0.90"}, svcPort("http", 80, "TCP", ready("10.244.1.90", 80)))
	other.Proxied = false

	local := service("ns4", "local", []string{"172.30.0.91"}, svcPort("http", 80, "TCP", ready("10.244.1.91", 80)))
	local.InternalTrafficLocal = true

	zoned := service("ns4", "zoned", []string{"172.30.0.92"},
		svcPort("http", 80, "TCP",
			hinted(ready("10.244.1.92", 80), "zone-a", "zone-a"),
			hinted(ready("10.244.2.92", 80), "zone-b", "zone-b"),
			hinted(ready("10.244.3.92", 80), "zone-b", "zone-a"),
		),
	)

	return []*cluster.Service{web, dns, sctp, dual, v6only, sticky, empty, notready, terminating, mixed, headless, extname, other, local, zoned}
}

// syntheticSnapshot has n Services with one TCP port and eps ready endpoints
// each, like a large cluster.
func syntheticSnapshot(n, eps int) *cluster.Snapshot {
	s := &cluster.Snapshot{Version: 1, Services: make(map[cluster.ServiceKey]*cluster.Service, n)}
	for i := range n {
		ip := netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)})
		p := &cluster.Port{Name: "http", Port: 80, Protocol: "TCP"}
		for j := range eps {
			k := i*eps + j
			p.Endpoints = append(p.Endpoints, ready(netip.AddrFrom4([4]byte{10, byte(k >> 16), byte(k >> 8), byte(k)}).String(), 8080))
		}
		svc := &cluster.Service{
			ServiceKey: cluster.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc-%d", i)},
			Type:       cluster.TypeClusterIP,
			ClusterIPs: []netip.Addr{ip},
			Proxied:    true,
			Ports:      []*cluster.Port{p},
		}
		s.Services[svc.ServiceKey] = svc
	}
	return s
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
