package cluster

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	networking "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
)

func serviceCIDR(name string, cidrs ...string) *networking.ServiceCIDR {
	return &networking.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       networking.ServiceCIDRSpec{CIDRs: cidrs},
	}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestServiceCIDRs(t *testing.T) {
	changes := 0
	tr := NewTracker(TrackerOptions{OnChange: func() { changes++ }})
	tr.UpdateServiceCIDR(serviceCIDR("kubernetes", "10.96.0.0/16", "fd00:96::/112"))
	tr.UpdateServiceCIDR(serviceCIDR("extra", "10.97.0.0/16", "not-a-cidr", "10.96.0.0/16"))
	s1 := tr.Snapshot()
	if want := prefixes("10.96.0.0/16", "10.97.0.0/16", "fd00:96::/112"); !slices.Equal(s1.ServiceCIDRs, want) {
		t.Errorf("ServiceCIDRs = %v, want %v (sorted, deduplicated, invalid dropped)", s1.ServiceCIDRs, want)
	}
	// An update that changes nothing is no change.
	tr.UpdateServiceCIDR(serviceCIDR("extra", "10.97.0.0/16", "10.96.0.0/16"))
	if changes != 2 {
		t.Errorf("changes = %d, want 2", changes)
	}
	if s := tr.Snapshot(); s != s1 {
		t.Error("unchanged ranges made a new snapshot")
	}
	tr.DeleteServiceCIDR("extra")
	tr.DeleteServiceCIDR("never-seen")
	s2 := tr.Snapshot()
	if want := prefixes("10.96.0.0/16", "fd00:96::/112"); s2.Version == s1.Version || !slices.Equal(s2.ServiceCIDRs, want) {
		t.Errorf("after delete: version %d, %v", s2.Version, s2.ServiceCIDRs)
	}
	if len(s1.ServiceCIDRs) != 3 {
		t.Error("older snapshot changed")
	}
	// A Service change keeps the ranges.
	tr.UpdateService(svc("ns", "a"))
	if s3 := tr.Snapshot(); !slices.Equal(s3.ServiceCIDRs, s2.ServiceCIDRs) {
		t.Errorf("ranges lost on a Service change: %v", s3.ServiceCIDRs)
	}
}

// TestWatcherServiceCIDRs runs the watcher against a fake API server that
// serves ServiceCIDRs, and one that does not: readiness never waits for
// them.
func TestWatcherServiceCIDRs(t *testing.T) {
	for _, served := range []bool{true, false} {
		client := fake.NewClientset(serviceCIDR("kubernetes", "10.96.0.0/16"))
		if served {
			client.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
				GroupVersion: "networking.k8s.io/v1",
				APIResources: []metav1.APIResource{{Name: "servicecidrs", Kind: "ServiceCIDR"}},
			}}
		}
		tr := NewTracker(TrackerOptions{})
		w, err := NewWatcher(client, tr, WatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		w.Start(ctx)
		deadline := time.Now().Add(5 * time.Second)
		for !w.HasSynced() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !w.HasSynced() {
			t.Fatalf("served=%v: not synced", served)
		}
		var got []netip.Prefix
		for time.Now().Before(deadline) {
			if got = tr.Snapshot().ServiceCIDRs; len(got) > 0 || !served {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		w.Shutdown()
		want := prefixes("10.96.0.0/16")
		if !served {
			want = nil
		}
		if !slices.Equal(got, want) {
			t.Errorf("served=%v: ServiceCIDRs = %v, want %v", served, got, want)
		}
	}
}

func TestStripServiceCIDR(t *testing.T) {
	sc := serviceCIDR("kubernetes", "10.96.0.0/16")
	sc.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "x"}}
	sc.Status.Conditions = []metav1.Condition{{Type: "Ready"}}
	obj, _ := StripUnused(sc)
	if got := obj.(*networking.ServiceCIDR); got.ManagedFields != nil || got.Status.Conditions != nil || len(got.Spec.CIDRs) != 1 {
		t.Errorf("not stripped: %+v", got)
	}
}
