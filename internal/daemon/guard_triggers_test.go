package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// staticHost is a hostguard.Reader with one address and one default route.
type staticHost struct{}

func (staticHost) AddrList(netlink.Link, int) ([]netlink.Addr, error) {
	return []netlink.Addr{{IPNet: &net.IPNet{IP: net.IPv4(192, 0, 2, 10), Mask: net.CIDRMask(24, 32)}}}, nil
}

func (staticHost) RouteListFiltered(int, *netlink.Route, uint64) ([]netlink.Route, error) {
	return []netlink.Route{{Gw: net.IPv4(192, 0, 2, 1)}}, nil
}

// When the host's facts change, the daemon publishes a newly guarded copy
// of the same cluster snapshot; the changes that snapshot carries were
// queued already and must not be counted again.
func TestGuardRepublishCountsTriggersOnce(t *testing.T) {
	var resolver atomic.Uint32
	resolver.Store(1)
	w, err := hostguard.NewWatcher(hostguard.WatcherOptions{
		Reader: staticHost{},
		Resolvers: func() []netip.Addr {
			return []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(resolver.Load())})}
		},
		Every:  20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	cons := &observingConsumer{}
	_, client, stop := newTestDaemonOpts(t, []Consumer{cons}, func(o *Options) { o.Guard = w })
	defer stop()
	ctx := context.Background()

	if _, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}, Ports: []v1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	trigger := time.Now().UTC().Truncate(time.Microsecond)
	if _, err := client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders-a",
			Labels:      map[string]string{discovery.LabelServiceName: "orders"},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.1.5"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	observed := func() int {
		cons.mu.Lock()
		defer cons.mu.Unlock()
		return len(cons.observed)
	}
	waitUntil(t, 5*time.Second, func() bool { return observed() >= 1 })

	// Change the host's facts a few times: each is a new guarded copy of
	// the same cluster snapshot, synced by the consumer.
	for i := range 3 {
		v := w.Version()
		resolver.Store(uint32(2 + i))
		waitUntil(t, 5*time.Second, func() bool { return w.Version() > v })
	}
	syncs := func() int {
		cons.mu.Lock()
		defer cons.mu.Unlock()
		return cons.syncs
	}
	// At least one more sync of a guarded copy after the last change; no
	// more is due (a delivery that changes nothing adds no sync).
	before := syncs()
	waitUntil(t, 5*time.Second, func() bool { return syncs() > before })
	if n := observed(); n != 1 {
		t.Errorf("the trigger time was observed %d times, want once", n)
	}
}
