package cluster

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func svc(ns, name string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type ep struct {
	addr                        string
	ready, serving, terminating *bool
	node                        string
}

func slice(ns, name, service string, family discovery.AddressType, ports []discovery.EndpointPort, eps ...ep) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
		AddressType: family,
		Ports:       ports,
	}
	if service != "" {
		es.Labels[LabelServiceName] = service
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.addr},
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
			NodeName:   ptr.To(e.node),
		})
	}
	return es
}

func port(name string, p int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(v1.ProtocolTCP)}
}

func endpoints(snap *Snapshot, ns, name string, portIdx int) []string {
	s := snap.Services[ServiceKey{ns, name}]
	if s == nil {
		return nil
	}
	var out []string
	for _, e := range s.Ports[portIdx].Endpoints {
		st := "ready"
		switch {
		case e.Ready:
		case e.Serving && e.Terminating:
			st = "terminating"
		default:
			st = "notready"
		}
		out = append(out, e.AddrPort().String()+" "+st)
	}
	return out
}

func TestSliceSemantics(t *testing.T) {
	http := []discovery.EndpointPort{port("http", 8080)}
	for _, tc := range []struct {
		name   string
		slices []*discovery.EndpointSlice
		want   []string
	}{{
		name:   "nil conditions read as ready and serving",
		slices: []*discovery.EndpointSlice{slice("ns", "a", "web", discovery.AddressTypeIPv4, http, ep{addr: "10.244.1.2"})},
		want:   []string{"10.244.1.2:8080 ready"},
	}, {
		name: "same ip:port in two slices counted once, ready copy wins",
		slices: []*discovery.EndpointSlice{
			slice("ns", "a", "web", discovery.AddressTypeIPv4, http, ep{addr: "10.244.1.2", ready: ptr.To(false)}),
			slice("ns", "b", "web", discovery.AddressTypeIPv4, http, ep{addr: "10.244.1.2"}, ep{addr: "10.244.1.3"}),
		},
		want: []string{"10.244.1.2:8080 ready", "10.244.1.3:8080 ready"},
	}, {
		name: "fqdn and unlabelled slices ignored",
		slices: []*discovery.EndpointSlice{
			slice("ns", "a", "web", discovery.AddressTypeFQDN, http, ep{addr: "example.com"}),
			slice("ns", "b", "", discovery.AddressTypeIPv4, http, ep{addr: "10.244.1.9"}),
		},
		want: nil,
	}, {
		name: "bad addresses and wrong family dropped one by one",
		slices: []*discovery.EndpointSlice{slice("ns", "a", "web", discovery.AddressTypeIPv4, http,
			ep{addr: "not-an-ip"}, ep{addr: "fd00::1"}, ep{addr: "10.244.1.4"}, ep{addr: "999.1.1.1"})},
		want: []string{"10.244.1.4:8080 ready"},
	}, {
		name: "port 0 and nil port dropped",
		slices: []*discovery.EndpointSlice{
			slice("ns", "a", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 0)}, ep{addr: "10.244.1.5"}),
			slice("ns", "b", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{{Name: ptr.To("http")}}, ep{addr: "10.244.1.6"}),
		},
		want: nil,
	}, {
		name: "conditions",
		slices: []*discovery.EndpointSlice{slice("ns", "a", "web", discovery.AddressTypeIPv4, http,
			ep{addr: "10.244.1.7", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true)},
			ep{addr: "10.244.1.8", ready: ptr.To(false), serving: ptr.To(false)},
		)},
		want: []string{"10.244.1.7:8080 terminating", "10.244.1.8:8080 notready"},
	}, {
		name: "named target port resolved per slice",
		slices: []*discovery.EndpointSlice{
			slice("ns", "a", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)}, ep{addr: "10.244.1.2"}),
			slice("ns", "b", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 9090), port("other", 1)}, ep{addr: "10.244.2.2"}),
		},
		want: []string{"10.244.1.2:8080 ready", "10.244.2.2:9090 ready"},
	}, {
		name: "IPv6 slice",
		slices: []*discovery.EndpointSlice{slice("ns", "a", "web", discovery.AddressTypeIPv6, http,
			ep{addr: "fd00:244:1::2"}, ep{addr: "10.244.1.2"}, ep{addr: "::ffff:10.0.0.1"})},
		want: []string{"[fd00:244:1::2]:8080 ready"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(TrackerOptions{})
			tr.UpdateService(svc("ns", "web"))
			for _, s := range tc.slices {
				tr.UpdateSlice(s)
			}
			got := endpoints(tr.Snapshot(), "ns", "web", 0)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
		})
	}
}

func TestServiceConversion(t *testing.T) {
	tr := NewTracker(TrackerOptions{ServiceProxyName: "bridge"})
	tr.UpdateService(svc("ns", "headless", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }))
	tr.UpdateService(svc("ns", "ext", func(s *v1.Service) {
		s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ServiceTypeExternalName, "db.example.com", "", nil
	}))
	tr.UpdateService(svc("ns", "dual", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"fd00:96::10", "10.96.0.10"} }))
	tr.UpdateService(svc("ns", "other", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "someone-else"} }))
	tr.UpdateService(svc("ns", "ours", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "bridge"} }))
	tr.UpdateService(svc("ns", "sticky", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}, v1.ServicePort{Name: "bad", Port: 0})
	}))
	snap := tr.Snapshot()
	get := func(n string) *Service { return snap.Services[ServiceKey{"ns", n}] }

	if s := get("headless"); !s.Headless || len(s.ClusterIPs) != 0 {
		t.Errorf("headless: %+v", s)
	}
	if s := get("ext"); s.Type != TypeExternalName || s.ExternalName != "db.example.com" || len(s.ClusterIPs) != 0 {
		t.Errorf("externalname: %+v", s)
	}
	if s := get("dual"); !slices.Equal(s.ClusterIPs, []netip.Addr{netip.MustParseAddr("fd00:96::10"), netip.MustParseAddr("10.96.0.10")}) {
		t.Errorf("dual: %v", s.ClusterIPs)
	}
	if get("other").Proxied || !get("ours").Proxied || !get("dual").Proxied {
		t.Errorf("service-proxy-name: other=%v ours=%v unlabelled=%v", get("other").Proxied, get("ours").Proxied, get("dual").Proxied)
	}
	s := get("sticky")
	if s.SessionAffinityTimeout != time.Minute || !s.InternalTrafficLocal || len(s.Ports) != 2 || s.Ports[1].Protocol != "UDP" {
		t.Errorf("sticky: %+v ports=%d", s, len(s.Ports))
	}
}

func TestNamespaceScope(t *testing.T) {
	tr := NewTracker(TrackerOptions{Namespaces: []string{"shop"}})
	tr.UpdateService(svc("shop", "orders"))
	tr.UpdateService(svc("other", "x"))
	tr.UpdateSlice(slice("other", "x-1", "x", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 1)}, ep{addr: "10.0.0.1"}))
	snap := tr.Snapshot()
	if len(snap.Services) != 1 || snap.Services[ServiceKey{"shop", "orders"}] == nil {
		t.Errorf("scope: %v", snap.Services)
	}
	if s, e, _ := tr.Counts(); s != 1 || e != 0 {
		t.Errorf("out-of-scope objects kept: services=%d slices=%d", s, e)
	}
}

func TestSnapshotVersionsAndChanges(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	tr.UpdateService(svc("ns", "a"))
	tr.UpdateService(svc("ns", "b"))
	s1 := tr.Snapshot()
	if s1.Version != 1 || len(s1.Changed) != 2 {
		t.Fatalf("first snapshot: v%d changed=%v", s1.Version, s1.Changed)
	}
	if s := tr.Snapshot(); s != s1 {
		t.Errorf("no change must return the same snapshot")
	}
	tr.UpdateSlice(slice("ns", "a-1", "a", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)}, ep{addr: "10.244.1.2"}))
	s2 := tr.Snapshot()
	if s2.Version != 2 || !slices.Equal(s2.Changed, []ServiceKey{{"ns", "a"}}) {
		t.Errorf("second snapshot: v%d changed=%v", s2.Version, s2.Changed)
	}
	if len(s1.Services[ServiceKey{"ns", "a"}].Ports[0].Endpoints) != 0 {
		t.Errorf("an older snapshot changed after the fact")
	}
	if s2.Services[ServiceKey{"ns", "b"}] != s1.Services[ServiceKey{"ns", "b"}] {
		t.Errorf("unchanged service was rebuilt")
	}
	// A slice relabelled to another service moves with its endpoints.
	moved := slice("ns", "a-1", "b", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)}, ep{addr: "10.244.1.2"})
	tr.UpdateSlice(moved)
	s3 := tr.Snapshot()
	if got := endpoints(s3, "ns", "a", 0); got != nil {
		t.Errorf("a kept moved endpoints: %v", got)
	}
	if got := endpoints(s3, "ns", "b", 0); len(got) != 1 {
		t.Errorf("b: %v", got)
	}
	tr.DeleteService("ns", "a")
	tr.DeleteSlice("ns", "a-1")
	s4 := tr.Snapshot()
	if _, ok := s4.Services[ServiceKey{"ns", "a"}]; ok || !slices.Contains(s4.Changed, ServiceKey{"ns", "a"}) {
		t.Errorf("deleted service: present=%v changed=%v", ok, s4.Changed)
	}
	if got := endpoints(s4, "ns", "b", 0); got != nil {
		t.Errorf("deleted slice still counted: %v", got)
	}
}

func TestNodes(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	tr.UpdateNode(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{LabelZone: "z1"}},
		Spec:       v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:244:1::/64"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: "n1"},
			{Type: v1.NodeInternalIP, Address: "10.250.0.21"},
			{Type: v1.NodeExternalIP, Address: "192.0.2.1"},
		}},
	})
	tr.UpdateNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare"}})
	snap := tr.Snapshot()
	want := &Node{Name: "n1", Zone: "z1",
		InternalIPs: []netip.Addr{netip.MustParseAddr("10.250.0.21")},
		PodCIDRs:    []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}}
	if diff := cmp.Diff(want, snap.Nodes["n1"], cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
	if n := snap.Nodes["bare"]; n == nil || len(n.PodCIDRs) != 0 {
		t.Errorf("bare node: %+v", n)
	}
	tr.DeleteNode("n1")
	if _, ok := tr.Snapshot().Nodes["n1"]; ok {
		t.Error("deleted node still there")
	}
	if _, ok := snap.Nodes["n1"]; !ok {
		t.Error("older snapshot lost its node")
	}
}

func TestStripUnused(t *testing.T) {
	es := slice("ns", "a", "web", discovery.AddressTypeIPv4, nil, ep{addr: "10.0.0.1"})
	es.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "x"}}
	es.Annotations = map[string]string{AnnotationTriggerTime: "2026-01-01T00:00:00Z", "big": "x"}
	es.Endpoints[0].TargetRef = &v1.ObjectReference{Name: "pod"}
	obj, _ := StripUnused(es)
	got := obj.(*discovery.EndpointSlice)
	if got.ManagedFields != nil || len(got.Annotations) != 1 || got.Endpoints[0].TargetRef != nil {
		t.Errorf("slice not stripped: %+v", got)
	}
	n := &v1.Node{Status: v1.NodeStatus{Images: []v1.ContainerImage{{Names: []string{"x"}}}, Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "10.0.0.1"}}}}
	obj, _ = StripUnused(n)
	if got := obj.(*v1.Node); got.Status.Images != nil || len(got.Status.Addresses) != 1 {
		t.Errorf("node not stripped: %+v", got.Status)
	}
}

func TestHeadlessEndpoints(t *testing.T) {
	headless := func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.Ports = v1.ClusterIPNone, []string{v1.ClusterIPNone}, nil
	}
	tr := NewTracker(TrackerOptions{})
	tr.UpdateService(svc("ns", "db", headless))
	tr.UpdateService(svc("ns", "web"))
	// A headless Service without ports gets slices without ports; its
	// endpoints must still reach DNS.
	a := slice("ns", "a", "db", discovery.AddressTypeIPv4, nil, ep{addr: "10.244.1.3", ready: ptr.To(false)}, ep{addr: "10.244.1.2"})
	a.Endpoints[1].Hostname = ptr.To("db-0")
	tr.UpdateSlice(a)
	tr.UpdateSlice(slice("ns", "b", "db", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("x", 1)}, ep{addr: "10.244.1.3"}))
	tr.UpdateSlice(slice("ns", "c", "db", discovery.AddressTypeIPv6, nil, ep{addr: "fd00::2"}))
	tr.UpdateSlice(slice("ns", "w", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 80)}, ep{addr: "10.244.1.9"}))
	snap := tr.Snapshot()

	var got []string
	for _, e := range snap.Services[ServiceKey{"ns", "db"}].Endpoints {
		got = append(got, e.Addr.String()+" "+e.Hostname+" "+map[bool]string{true: "ready", false: "notready"}[e.Ready])
	}
	want := []string{"10.244.1.2 db-0 ready", "10.244.1.3  ready", "fd00::2  ready"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("headless endpoints (-want +got):\n%s", diff)
	}
	if eps := snap.Services[ServiceKey{"ns", "web"}].Endpoints; len(eps) != 0 {
		t.Errorf("a Service with a ClusterIP got service-level endpoints %v", eps)
	}
}
