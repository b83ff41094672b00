package cluster

import (
	"context"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestWatcherKeepsSlimObjects: the Service and EndpointSlice informers store
// the converted form, not the API objects, and adds, updates and deletes
// still reach the snapshot.
func TestWatcherKeepsSlimObjects(t *testing.T) {
	es := slice("shop", "orders-1", "orders", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)},
		ep{addr: "10.244.1.5", node: "n1"})
	es.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "endpointslice-controller"}}
	client := fake.NewClientset(svc("shop", "orders"), es)
	tr := NewTracker(TrackerOptions{})
	w, err := NewWatcher(client, tr, WatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Shutdown() }()
	w.Start(ctx)
	key := ServiceKey{Namespace: "shop", Name: "orders"}
	endpoints := func() int {
		s := tr.Snapshot().Services[key]
		if s == nil {
			return -1
		}
		n := 0
		for _, p := range s.Ports {
			n += len(p.Endpoints)
		}
		return n
	}
	waitFor := func(what string, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for endpoints() != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := endpoints(); got != want {
			t.Fatalf("%s: %d endpoints, want %d", what, got, want)
		}
	}
	waitFor("listed", 1)

	svcStore := w.factories[0].Core().V1().Services().Informer().GetStore()
	sliceStore := w.factories[1].Discovery().V1().EndpointSlices().Informer().GetStore()
	for _, obj := range svcStore.List() {
		if s, ok := obj.(*slimService); !ok || s.info == nil || s.info.key != key {
			t.Errorf("Service store holds %T %+v", obj, obj)
		}
	}
	for _, obj := range sliceStore.List() {
		s, ok := obj.(*slimSlice)
		if !ok || s.info == nil || len(s.info.endpoints) != 1 || s.ManagedFields != nil {
			t.Errorf("EndpointSlice store holds %T %+v", obj, obj)
		}
	}

	es2 := es.DeepCopy()
	es2.Endpoints = append(es2.Endpoints, es2.Endpoints[0])
	es2.Endpoints[1].Addresses = []string{"10.244.2.5"}
	if _, err := client.DiscoveryV1().EndpointSlices("shop").Update(ctx, es2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("updated", 2)
	if err := client.DiscoveryV1().EndpointSlices("shop").Delete(ctx, es.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("slice deleted", 0)
	if err := client.CoreV1().Services("shop").Delete(ctx, "orders", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("service deleted", -1)
}
