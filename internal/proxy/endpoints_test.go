package proxy

import (
	"net/netip"
	"testing"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/google/go-cmp/cmp"
)

func TestSelectEndpoints(t *testing.T) {
	type want struct {
		addrs       []string // ip:port of the selected endpoints
		terminating bool
		zonal       bool
	}
	tests := []struct {
		name   string
		family Family
		zone   string
		eps    []cluster.Endpoint
		want   want
	}{{
		name: "no endpoints",
	}, {
		name: "ready only",
		eps:  []cluster.Endpoint{ready("10.0.0.2", 80), ready("10.0.0.1", 80)},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.2:80"}},
	}, {
		name: "not ready never, even when serving",
		eps: []cluster.Endpoint{
			ready("10.0.0.1", 80),
			notReady("10.0.0.2", 80),
			{Addr: netip.MustParseAddr("10.0.0.3"), Port: 80, Serving: true},
		},
		want: want{addrs: []string{"10.0.0.1:80"}},
	}, {
		name: "ready wins over serving terminating",
		eps:  []cluster.Endpoint{ready("10.0.0.1", 80), servingTerminating("10.0.0.2", 80)},
		want: want{addrs: []string{"10.0.0.1:80"}},
	}, {
		name: "no ready: fall back to serving terminating",
		eps:  []cluster.Endpoint{servingTerminating("10.0.0.1", 80), terminated("10.0.0.2", 80), notReady("10.0.0.3", 80), servingTerminating("10.0.0.4", 80)},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.4:80"}, terminating: true},
	}, {
		name: "nothing usable",
		eps:  []cluster.Endpoint{terminated("10.0.0.1", 80), notReady("10.0.0.2", 80)},
	}, {
		name: "same address on two ports (named port resolved per slice)",
		eps:  []cluster.Endpoint{ready("10.0.0.1", 8081), ready("10.0.0.1", 8080)},
		want: want{addrs: []string{"10.0.0.1:8080", "10.0.0.1:8081"}},
	}, {
		name:   "other family ignored",
		family: IPv6,
		eps:    []cluster.Endpoint{ready("10.0.0.1", 80), ready("fd00::1", 80)},
		want:   want{addrs: []string{"[fd00::1]:80"}},
	}, {
		name:   "ready in the other family does not prevent the fallback",
		family: IPv6,
		eps:    []cluster.Endpoint{ready("10.0.0.1", 80), servingTerminating("fd00::1", 80)},
		want:   want{addrs: []string{"[fd00::1]:80"}, terminating: true},
	}, {
		name: "hints ignored without a zone",
		eps:  []cluster.Endpoint{hinted(ready("10.0.0.1", 80), "a", "a"), hinted(ready("10.0.0.2", 80), "b", "b")},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.2:80"}},
	}, {
		name: "hints narrow to the zone",
		zone: "a",
		eps: []cluster.Endpoint{
			hinted(ready("10.0.0.1", 80), "a", "a"),
			hinted(ready("10.0.0.2", 80), "b", "b"),
			hinted(ready("10.0.0.3", 80), "b", "b", "a"),
		},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.3:80"}, zonal: true},
	}, {
		name: "hints ignored when a ready endpoint has none",
		zone: "a",
		eps:  []cluster.Endpoint{hinted(ready("10.0.0.1", 80), "a", "a"), ready("10.0.0.2", 80)},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.2:80"}},
	}, {
		name: "hints ignored when none is for the zone",
		zone: "c",
		eps:  []cluster.Endpoint{hinted(ready("10.0.0.1", 80), "a", "a"), hinted(ready("10.0.0.2", 80), "b", "b")},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.2:80"}},
	}, {
		name: "hints of endpoints that are not ready do not count",
		zone: "a",
		eps: []cluster.Endpoint{
			hinted(ready("10.0.0.1", 80), "b", "b"),
			hinted(ready("10.0.0.2", 80), "a", "a"),
			notReady("10.0.0.3", 80),
			servingTerminating("10.0.0.4", 80),
		},
		want: want{addrs: []string{"10.0.0.2:80"}, zonal: true},
	}, {
		name: "hints ignored in the terminating fallback",
		zone: "a",
		eps: []cluster.Endpoint{
			hinted(servingTerminating("10.0.0.1", 80), "a", "a"),
			hinted(servingTerminating("10.0.0.2", 80), "b", "b"),
		},
		want: want{addrs: []string{"10.0.0.1:80", "10.0.0.2:80"}, terminating: true},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.family == 0 {
				tt.family = IPv4
			}
			svc := service("ns", "svc", []string{"172.30.0.1", "fd00:30::1"}, svcPort("http", 80, "TCP", tt.eps...))
			sel := SelectEndpoints(svc, svc.Ports[0], tt.family, tt.zone)
			got := want{terminating: sel.Terminating, zonal: sel.Zonal}
			for _, ep := range sel.Endpoints {
				got.addrs = append(got.addrs, ep.AddrPort().String())
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("SelectEndpoints (-want +got):\n%s", diff)
			}
			if sel.LocalPolicyIgnored {
				t.Errorf("LocalPolicyIgnored for a Cluster policy Service")
			}
		})
	}
}

func TestSelectEndpointsLocalPolicy(t *testing.T) {
	svc := service("ns", "svc", []string{"172.30.0.1"}, svcPort("http", 80, "TCP", ready("10.0.0.1", 80), ready("10.0.0.2", 80)))
	svc.InternalTrafficLocal = true
	sel := SelectEndpoints(svc, svc.Ports[0], IPv4, "")
	if !sel.LocalPolicyIgnored {
		t.Errorf("LocalPolicyIgnored = false for internalTrafficPolicy: Local")
	}
	if len(sel.Endpoints) != 2 {
		t.Errorf("got %d endpoints, want all 2 (Local is treated as Cluster)", len(sel.Endpoints))
	}
}

func TestSelectEndpointsDoesNotAlias(t *testing.T) {
	svc := service("ns", "svc", []string{"172.30.0.1"}, svcPort("http", 80, "TCP", ready("10.0.0.2", 80), ready("10.0.0.1", 80)))
	before := svc.Ports[0].Endpoints[0]
	sel := SelectEndpoints(svc, svc.Ports[0], IPv4, "")
	sel.Endpoints[0].Port = 1
	if diff := cmp.Diff(before, svc.Ports[0].Endpoints[0], cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("SelectEndpoints modified the snapshot (-before +after):\n%s", diff)
	}
}

func TestCountForeignRules(t *testing.T) {
	save := []byte(`# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:BRIDGE-SERVICES - [0:0]
:DOCKER - [0:0]
-A OUTPUT -m comment --comment "bridge-agent service portals" -j BRIDGE-SERVICES
-A BRIDGE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j BRIDGE-SVC-ABC
-A DOCKER -d 198.51.100.1/32 -j RETURN
COMMIT
*filter
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
`)
	if n := countForeignRules(save); n != 2 {
		t.Errorf("countForeignRules = %d, want 2 (DOCKER and INPUT)", n)
	}
	if n := countForeignRules(nil); n != 0 {
		t.Errorf("empty dump: %d", n)
	}
}
