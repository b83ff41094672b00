package daemon

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// observingConsumer is a consumer measuring programming latency; its syncs
// wait while the test holds it (its worker then skips snapshots), and
// every third one fails.
type observingConsumer struct {
	hold     sync.Mutex
	mu       sync.Mutex
	syncs    int
	last     *cluster.Snapshot
	observed []time.Time
}

func (c *observingConsumer) Name() string { return "proxy" }

func (c *observingConsumer) Sync(_ context.Context, snap *cluster.Snapshot) error {
	c.hold.Lock()
	c.hold.Unlock()
	time.Sleep(5 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.syncs++
	if c.syncs%3 == 0 {
		return errors.New("kernel said no")
	}
	c.last = snap
	return nil
}

func (c *observingConsumer) ObserveProgramming(triggers map[cluster.ServiceKey][]time.Time, _ time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ts := range triggers {
		c.observed = append(c.observed, ts...)
	}
}

// A burst of EndpointSlice changes faster than the sync loop: every
// change's trigger time is observed exactly once, though the worker
// skipped most snapshots and some syncs failed.
func TestProgrammingTriggersOnceUnderBursts(t *testing.T) {
	cons := &observingConsumer{}
	_, client, stop := newTestDaemon(t, cons)
	defer stop()
	ctx := context.Background()
	_, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}, Ports: []v1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, func() bool {
		cons.mu.Lock()
		defer cons.mu.Unlock()
		return cons.last != nil
	})
	// The consumer's next sync waits for the burst to be written: by then
	// its worker has skipped most of its snapshots.
	cons.hold.Lock()
	slices_ := client.DiscoveryV1().EndpointSlices("shop")
	var want []time.Time
	const changes = 200
	for i := range changes {
		trigger := time.Now().UTC().Truncate(time.Microsecond)
		want = append(want, trigger)
		es := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders-" + string(rune('a'+i%3)),
				Labels:      map[string]string{discovery.LabelServiceName: "orders"},
				Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
			Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.1." + strconv.Itoa(i%250+1)}}},
		}
		if i < 3 {
			_, err = slices_.Create(ctx, es, metav1.CreateOptions{})
		} else {
			_, err = slices_.Update(ctx, es, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	cons.hold.Unlock()
	last := "10.244.1." + strconv.Itoa((changes-1)%250+1)
	waitUntil(t, 10*time.Second, func() bool {
		cons.mu.Lock()
		defer cons.mu.Unlock()
		if cons.last == nil {
			return false
		}
		svc := cons.last.Services[cluster.ServiceKey{Namespace: "shop", Name: "orders"}]
		return svc != nil && slices.ContainsFunc(svc.Ports[0].Endpoints, func(e cluster.Endpoint) bool { return e.Addr.String() == last }) &&
			len(cons.observed) >= changes
	})
	time.Sleep(50 * time.Millisecond) // anything counted twice would show now
	cons.mu.Lock()
	defer cons.mu.Unlock()
	got := slices.Clone(cons.observed)
	slices.SortFunc(got, time.Time.Compare)
	if !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("observed %d trigger times, want each of the %d changes' once", len(got), len(want))
	}
	if cons.syncs >= changes/2 {
		t.Errorf("the consumer synced %d times for %d changes: the burst did not outrun it, the test proves nothing", cons.syncs, changes)
	}
}

// A worker keeps trigger times only for a consumer measuring them, and no
// more than maxPendingTriggers while its syncs keep failing; the oldest
// trigger time (for the debug line) is kept either way.
func TestPendingTriggersBounded(t *testing.T) {
	key := cluster.ServiceKey{Namespace: "shop", Name: "orders"}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	batch := func(i int) changes {
		ts := make([]time.Time, 1000)
		for j := range ts {
			ts[j] = t0.Add(time.Duration(i*1000+j) * time.Millisecond)
		}
		return changes{snapshots: 1, triggers: map[cluster.ServiceKey][]time.Time{key: ts}, ntriggers: len(ts), oldestTrigger: ts[0]}
	}
	var kept, dropped changes
	for i := range maxPendingTriggers/1000 + 5 {
		kept.add(batch(i), true)
		dropped.add(batch(i), false)
	}
	if kept.ntriggers != maxPendingTriggers || len(kept.triggers[key]) != maxPendingTriggers {
		t.Errorf("kept %d (%d counted) trigger times, want the bound %d", len(kept.triggers[key]), kept.ntriggers, maxPendingTriggers)
	}
	if dropped.triggers != nil || !dropped.oldestTrigger.Equal(t0) || dropped.snapshots != maxPendingTriggers/1000+5 {
		t.Errorf("without measuring: %d trigger times, oldest %v, %d snapshots", len(dropped.triggers[key]), dropped.oldestTrigger, dropped.snapshots)
	}
}
