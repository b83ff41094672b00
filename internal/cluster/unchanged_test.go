package cluster

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func heartbeatNode(name, cidr, ip string, beat int) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: strings.Repeat("9", beat+1),
			Labels: map[string]string{"kubernetes.io/hostname": name}},
		Spec: v1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		Status: v1.NodeStatus{
			Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip}},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue,
				LastHeartbeatTime: metav1.NewTime(time.Unix(int64(1000+beat), 0))}},
			Images: []v1.ContainerImage{{Names: []string{"image"}, SizeBytes: int64(beat)}},
		},
	}
}

// An update of what the agent does not use (a kubelet heartbeat, a
// Service's annotation, an EndpointSlice's unused fields) wakes no one and
// makes no new snapshot; one of what it uses does both.
func TestUnchangedUpdatesWakeNoOne(t *testing.T) {
	woken := 0
	tr := NewTracker(TrackerOptions{OnChange: func() { woken++ }})
	tr.UpdateNode(heartbeatNode("n1", "10.244.1.0/24", "10.250.0.21", 0))
	tr.UpdateService(svc("ns", "a"))
	es := slice("ns", "a-1", "a", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)}, ep{addr: "10.244.1.5"})
	tr.UpdateSlice(es)
	first := tr.Snapshot()
	if woken != 3 {
		t.Fatalf("woken %d times by three new objects, want 3", woken)
	}

	for beat := 1; beat <= 5; beat++ {
		tr.UpdateNode(heartbeatNode("n1", "10.244.1.0/24", "10.250.0.21", beat))
	}
	tr.UpdateService(svc("ns", "a", func(s *v1.Service) {
		s.Annotations = map[string]string{"note": "x"}
		s.ResourceVersion = "2"
	}))
	es2 := es.DeepCopy()
	es2.ResourceVersion = "7"
	es2.Endpoints[0].TargetRef = &v1.ObjectReference{Name: "pod-a"}
	tr.UpdateSlice(es2)
	tr.UpdateSlice(slice("ns", "other", "", discovery.AddressTypeIPv4, nil)) // no Service: never used
	tr.DeleteNode("absent")
	if woken != 3 {
		t.Errorf("unchanged updates woke consumers %d times", woken-3)
	}
	if s := tr.Snapshot(); s != first {
		t.Errorf("unchanged updates made snapshot %d, want still %d", s.Version, first.Version)
	}
	ev := tr.Events()
	if got := ev[EventCount{"Node", false}]; got != 6 {
		t.Errorf("unchanged Node events = %d, want 6 (five heartbeats, one delete of an absent Node)", got)
	}
	if ev[EventCount{"Service", false}] != 1 || ev[EventCount{"EndpointSlice", false}] != 2 {
		t.Errorf("unchanged events: %v", ev)
	}

	tr.UpdateNode(heartbeatNode("n1", "10.244.7.0/24", "10.250.0.21", 6))
	if woken != 4 {
		t.Errorf("a pod CIDR change woke %d times, want once", woken-3)
	}
	if s := tr.Snapshot(); s == first || s.Nodes["n1"].PodCIDRs[0] != netip.MustParsePrefix("10.244.7.0/24") {
		t.Errorf("pod CIDR change not in a new snapshot")
	}
}

// ReplaceNodes changes, and wakes, only where the set differs.
func TestReplaceNodes(t *testing.T) {
	woken := 0
	tr := NewTracker(TrackerOptions{OnChange: func() { woken++ }})
	tr.UpdateNode(heartbeatNode("n1", "10.244.1.0/24", "10.250.0.21", 0))
	tr.UpdateNode(heartbeatNode("n2", "10.244.2.0/24", "10.250.0.22", 0))
	s1 := tr.Snapshot()
	same := []*Node{convertNode(heartbeatNode("n2", "10.244.2.0/24", "10.250.0.22", 9)), convertNode(heartbeatNode("n1", "10.244.1.0/24", "10.250.0.21", 9))}
	tr.ReplaceNodes(same, "test")
	if woken != 2 || tr.Snapshot() != s1 {
		t.Errorf("the same set woke consumers (%d) or made a snapshot", woken-2)
	}
	tr.ReplaceNodes(same[:1], "test")
	s2 := tr.Snapshot()
	if woken != 3 || s2 == s1 || len(s2.Nodes) != 1 || s2.Nodes["n2"] == nil {
		t.Errorf("replace with one Node: woken %d, nodes %v", woken-2, s2.Nodes)
	}
}
