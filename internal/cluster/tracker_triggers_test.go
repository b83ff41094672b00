package cluster

import (
	"slices"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"
)

// Each EndpointSlice change's trigger time is in exactly one snapshot: the
// first to carry the change. A relist delivering the same slice again adds
// nothing; trigger times from before the tracker started are not counted.
// Every snapshot names the oldest change it carries and when it arrived.
func TestTrackerTriggersOncePerChange(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	clock := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tr.start = clock.Add(-time.Minute)
	tr.now = func() time.Time { return clock }
	a := ServiceKey{"ns", "a"}
	at := func(d time.Duration) string { return tr.start.Add(d).Format(time.RFC3339Nano) }
	sl := func(name, trigger, addr string) *discovery.EndpointSlice {
		es := slice("ns", name, "a", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)}, ep{addr: addr})
		es.Annotations = map[string]string{AnnotationTriggerTime: trigger}
		return es
	}
	tr.UpdateService(svc("ns", "a"))
	tr.UpdateSlice(sl("a-1", at(-time.Second), "10.244.1.1")) // before the start: not measured
	s1 := tr.Snapshot()
	if len(s1.Triggers) != 0 || s1.ReceivedWhat != "Service ns/a" || !s1.Received.Equal(clock) {
		t.Errorf("first snapshot: triggers %v, oldest %q at %v", s1.Triggers, s1.ReceivedWhat, s1.Received)
	}

	clock = clock.Add(time.Second)
	tr.UpdateSlice(sl("a-1", at(1*time.Second), "10.244.1.2"))
	clock = clock.Add(time.Second)
	tr.UpdateSlice(sl("a-1", at(2*time.Second), "10.244.1.3"))
	tr.UpdateSlice(sl("a-1", at(2*time.Second), "10.244.1.3")) // relisted
	tr.UpdateSlice(sl("a-2", at(3*time.Second), "10.244.1.4"))
	s2 := tr.Snapshot()
	want := []time.Time{tr.start.Add(time.Second), tr.start.Add(2 * time.Second), tr.start.Add(3 * time.Second)}
	if got := s2.Triggers[a]; !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("second snapshot's triggers = %v, want %v", got, want)
	}
	if s2.ReceivedWhat != "EndpointSlice ns/a-1" || !s2.Received.Equal(clock.Add(-time.Second)) {
		t.Errorf("second snapshot's oldest change: %q at %v, want EndpointSlice ns/a-1 at %v", s2.ReceivedWhat, s2.Received, clock.Add(-time.Second))
	}

	// Nothing new: the same snapshot, and the next one carries only its own.
	if s := tr.Snapshot(); s != s2 {
		t.Fatal("a snapshot without news must be the previous one")
	}
	tr.UpdateSlice(sl("a-2", at(4*time.Second), "10.244.1.5"))
	s3 := tr.Snapshot()
	if got := s3.Triggers[a]; !slices.EqualFunc(got, []time.Time{tr.start.Add(4 * time.Second)}, time.Time.Equal) {
		t.Errorf("third snapshot's triggers = %v", got)
	}
	// A slice of no Service is no change, and leaves no oldest change for
	// the next snapshot to report.
	clock = clock.Add(time.Second)
	tr.UpdateSlice(slice("ns", "stray", "", discovery.AddressTypeIPv4, nil))
	clock = clock.Add(time.Second)
	tr.DeleteSlice("ns", "a-2")
	s4 := tr.Snapshot()
	if s4.ReceivedWhat != "EndpointSlice ns/a-2 (deleted)" || !s4.Received.Equal(clock) || len(s4.Triggers) != 0 {
		t.Errorf("fourth snapshot: oldest %q at %v (want %v), triggers %v", s4.ReceivedWhat, s4.Received, clock, s4.Triggers)
	}
}
