package dnsstub

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// bigSnapshot has n Services over 100 namespaces: ClusterIP ones with two
// named ports and three endpoints, and every tenth headless with three
// named endpoints.
func bigSnapshot(n int) *cluster.Snapshot { return bigSnapshotEndpoints(n, 3) }

// bigSnapshotEndpoints is bigSnapshot with eps endpoints per Service.
func bigSnapshotEndpoints(n, eps int) *cluster.Snapshot {
	snap := &cluster.Snapshot{Version: 1, Services: make(map[cluster.ServiceKey]*cluster.Service, n)}
	for i := range n {
		key := cluster.ServiceKey{Namespace: fmt.Sprintf("ns-%d", i%100), Name: fmt.Sprintf("svc-%d", i)}
		eps := make([]cluster.Endpoint, eps)
		for j := range eps {
			a := netip.AddrFrom4([4]byte{10, byte(100 + j), byte(i >> 8), byte(i)})
			eps[j] = cluster.Endpoint{Addr: a, Port: 8080, Ready: true}
		}
		svc := &cluster.Service{ServiceKey: key, Type: cluster.TypeClusterIP, Ports: []*cluster.Port{
			{Name: "http", Port: 80, Protocol: "TCP", Endpoints: eps},
			{Name: "grpc", Port: 9000, Protocol: "TCP", Endpoints: eps},
		}}
		if i%10 == 0 {
			svc.Headless = true
			svc.Endpoints = make([]cluster.Endpoint, len(eps))
			for j, e := range eps {
				e.Hostname = fmt.Sprintf("pod-%d", j)
				e.Port = 0
				svc.Endpoints[j] = e
			}
		} else {
			svc.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}
		}
		snap.Services[key] = svc
	}
	return snap
}

func BenchmarkBuildZone10k(b *testing.B) {
	snap := bigSnapshot(10000)
	b.ReportAllocs()
	var z *zone
	for b.Loop() {
		z = buildZone(snap, "cluster.local.", 5)
	}
	b.ReportMetric(float64(z.records), "records")
}

// BenchmarkZoneChange measures the zone of a snapshot in which one
// Service changed (an endpoint replaced, as by an EndpointSlice update):
// derived from the previous zone, and built in full.
func BenchmarkZoneChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		prev := bigSnapshotEndpoints(n, 10)
		next := &cluster.Snapshot{Version: 2, Services: maps.Clone(prev.Services)}
		key := cluster.ServiceKey{Namespace: "ns-21", Name: "svc-321"}
		svc := *next.Services[key]
		svc.Ports = slices.Clone(svc.Ports)
		for i, p := range svc.Ports {
			q := *p
			q.Endpoints = slices.Clone(q.Endpoints)
			q.Endpoints[0].Addr = netip.MustParseAddr("10.250.0.1")
			svc.Ports[i] = &q
		}
		next.Services[key] = &svc
		snaps := [2]*cluster.Snapshot{prev, next}
		b.Run(fmt.Sprintf("%dk/update", n/1000), func(b *testing.B) {
			z := buildZone(prev, "cluster.local.", 5)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				z = z.update(snaps[i%2])
				if z.rendered != 1 {
					b.Fatalf("%d sub-zones rendered, want 1", z.rendered)
				}
			}
			b.ReportMetric(float64(z.records), "records")
		})
		b.Run(fmt.Sprintf("%dk/full", n/1000), func(b *testing.B) {
			var z *zone
			b.ReportAllocs()
			for b.Loop() {
				z = buildZone(next, "cluster.local.", 5)
			}
			b.ReportMetric(float64(z.records), "records")
		})
	}
}

// BenchmarkZoneLookup measures the zone alone.
func BenchmarkZoneLookup(b *testing.B) {
	s := newTestServer(b, Options{}, bigSnapshot(10000))
	z := s.zone.Load()
	names := []string{"svc-1234.ns-34.svc.cluster.local.", "_http._tcp.svc-77.ns-77.svc.cluster.local.", "svc-500.ns-0.svc.cluster.local.", "nope.ns-1.svc.cluster.local."}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		name := names[i%len(names)]
		i++
		_, canonical, apex := s.classify(name)
		a := z.lookup(name, canonical, apex, dns.TypeA)
		if a.rcode != dns.RcodeSuccess && a.rcode != dns.RcodeNameError {
			b.Fatal(a.rcode)
		}
	}
}

// BenchmarkServeDNS measures a zone query through the whole handler,
// reply packing included.
func BenchmarkServeDNS(b *testing.B) {
	s := newTestServer(b, Options{}, bigSnapshot(10000))
	req := query("svc-1234.ns-34.svc.cluster.local.", dns.TypeA, 1232)
	b.ReportAllocs()
	for b.Loop() {
		w := newRecorder("127.0.0.1:40000", false)
		s.ServeDNS(w, req)
		if w.msg == nil || len(w.msg.Answer) != 1 {
			b.Fatal("no answer")
		}
	}
}

// BenchmarkServeDNSParallel is the same under concurrent queries, as a
// queries/s figure.
func BenchmarkServeDNSParallel(b *testing.B) {
	s := newTestServer(b, Options{}, bigSnapshot(10000))
	req := query("_http._tcp.svc-1235.ns-35.svc.cluster.local.", dns.TypeSRV, 1232)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := newRecorder("127.0.0.1:40000", false)
			s.ServeDNS(w, req)
			if w.msg == nil || len(w.msg.Answer) != 1 {
				b.Fatal("no answer")
			}
		}
	})
}
