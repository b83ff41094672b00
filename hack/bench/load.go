package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The bench's own objects: Services without selectors (so the EndpointSlice
// controller leaves them alone) and EndpointSlices written directly, all
// labelled as managed by the bench.
const (
	managedBy      = "bench.bridge-agent.io"
	benchLabel     = "bench.bridge-agent.io/load"
	loadNamespaces = 10
	maxEndpoints   = 100 // per Service; fixes the address plan
	servicePort    = 80
	targetPort     = 8080
)

// Loaded endpoint addresses come from 10.128.0.0/9 (Service i, endpoint j:
// 10.128.0.0 + i*maxEndpoints + j); addresses written by changes from
// 10.64.0.0/10, never reused. Neither overlaps the pod CIDRs (10.244/16).
var (
	loadBase   = netip.MustParseAddr("10.128.0.0")
	changeBase = netip.MustParseAddr("10.64.0.0")
)

func addAt(base netip.Addr, off uint32) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// benchService is one loaded Service and its one EndpointSlice as last
// written.
type benchService struct {
	ns, name string
	slice    *discoveryv1.EndpointSlice
}

// loader creates, resizes and changes the bench's Services.
type loader struct {
	client  kubernetes.Interface
	workers int

	mu       sync.Mutex
	services []*benchService // index i is Service svc-<i>
	eps      int             // endpoints per Service of the current load
	nextAddr atomic.Uint32   // next change address offset
}

func newLoader(client kubernetes.Interface, workers int) *loader {
	return &loader{client: client, workers: workers}
}

func loadNS(i int) string  { return fmt.Sprintf("bench-%d", i%loadNamespaces) }
func svcName(i int) string { return fmt.Sprintf("svc-%d", i) }

// endpointAddr is the loaded address of endpoint j of Service i.
func endpointAddr(i, j int) netip.Addr { return addAt(loadBase, uint32(i*maxEndpoints+j)) }

// Count returns how many Services are loaded.
func (l *loader) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.services)
}

// Sentinel is the address of the last endpoint of the last loaded Service:
// every peer programs a snapshot at once, and the loader writes that
// Service last, so once its address is in the kernel everything is.
func (l *loader) Sentinel() netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.services) == 0 {
		return netip.Addr{}
	}
	return endpointAddr(len(l.services)-1, l.eps-1)
}

// Endpoints is the number of loaded endpoints.
func (l *loader) Endpoints() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.services) * l.eps
}

func (l *loader) ensureNamespaces(ctx context.Context) error {
	for i := range loadNamespaces {
		_, err := l.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: loadNS(i)}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", loadNS(i), err)
		}
	}
	return nil
}

func sliceFor(i, eps int, trigger time.Time) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: loadNS(i),
			Name:      svcName(i) + "-bench",
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svcName(i),
				discoveryv1.LabelManagedBy:   managedBy,
				benchLabel:                   "true",
			},
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger.UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{
			Name: ptr.To("http"), Port: ptr.To[int32](targetPort), Protocol: ptr.To(corev1.ProtocolTCP),
		}},
	}
	for j := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{endpointAddr(i, j).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	return es
}

// Ensure makes the load n Services with eps endpoints each: it creates the
// missing ones, rewrites the slices of existing ones when eps changed, and
// deletes the Services beyond n. Services are written in index order as far
// as the workers allow, and the last one strictly last.
func (l *loader) Ensure(ctx context.Context, n, eps int) (written int, err error) {
	if eps < 1 || eps > maxEndpoints {
		return 0, fmt.Errorf("load: %d endpoints per Service: want 1..%d", eps, maxEndpoints)
	}
	if err := l.ensureNamespaces(ctx); err != nil {
		return 0, err
	}
	l.mu.Lock()
	have, oldEps := len(l.services), l.eps
	for len(l.services) < n {
		i := len(l.services)
		l.services = append(l.services, &benchService{ns: loadNS(i), name: svcName(i)})
	}
	l.mu.Unlock()

	var count atomic.Int64
	work := func(i int) error {
		l.mu.Lock()
		bs := l.services[i]
		l.mu.Unlock()
		if i >= have {
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: bs.ns, Name: bs.name, Labels: map[string]string{benchLabel: "true"}},
				Spec: corev1.ServiceSpec{
					Ports: []corev1.ServicePort{{Name: "http", Port: servicePort, TargetPort: intstr.FromInt32(targetPort), Protocol: corev1.ProtocolTCP}},
				},
			}
			if _, err := l.client.CoreV1().Services(bs.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create service %s/%s: %w", bs.ns, bs.name, err)
			}
			es, err := l.client.DiscoveryV1().EndpointSlices(bs.ns).Create(ctx, sliceFor(i, eps, time.Now()), metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create endpointslice for %s/%s: %w", bs.ns, bs.name, err)
			}
			count.Add(2)
			l.setSlice(bs, es)
			return nil
		}
		if oldEps == eps {
			return nil
		}
		want := sliceFor(i, eps, time.Now())
		l.mu.Lock()
		want.ResourceVersion = bs.slice.ResourceVersion
		l.mu.Unlock()
		es, err := l.client.DiscoveryV1().EndpointSlices(bs.ns).Update(ctx, want, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update endpointslice for %s/%s: %w", bs.ns, bs.name, err)
		}
		count.Add(1)
		l.setSlice(bs, es)
		return nil
	}
	last := n - 1
	if n > 0 && (last >= have || oldEps != eps) {
		// Every index but the last in parallel, then the last alone.
		if err := parallel(ctx, l.workers, last, work); err != nil {
			return int(count.Load()), err
		}
		if err := work(last); err != nil {
			return int(count.Load()), err
		}
	}
	// Shrink: delete the Services beyond n (their slices go with them by
	// name here, as nothing owns them).
	if have > n {
		l.mu.Lock()
		extra := append([]*benchService(nil), l.services[n:]...)
		l.services = l.services[:n]
		l.mu.Unlock()
		err := parallel(ctx, l.workers, len(extra), func(k int) error {
			bs := extra[k]
			if err := l.client.DiscoveryV1().EndpointSlices(bs.ns).Delete(ctx, bs.name+"-bench", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			if err := l.client.CoreV1().Services(bs.ns).Delete(ctx, bs.name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			count.Add(2)
			return nil
		})
		if err != nil {
			return int(count.Load()), fmt.Errorf("shrink load: %w", err)
		}
	}
	l.mu.Lock()
	l.eps = eps
	l.mu.Unlock()
	return int(count.Load()), nil
}

// ChangeTo replaces the first endpoint of Service i with addr, stamped
// with the trigger-time annotation, and returns when the write started.
// Service i must not be the last (its address is the sentinel).
func (l *loader) ChangeTo(ctx context.Context, i int, addr netip.Addr) (time.Time, error) {
	l.mu.Lock()
	bs := l.services[i]
	es := bs.slice.DeepCopy()
	l.mu.Unlock()
	start := time.Now()
	es.Annotations[corev1.EndpointsLastChangeTriggerTime] = start.UTC().Format(time.RFC3339Nano)
	es.Endpoints[0].Addresses = []string{addr.String()}
	out, err := l.client.DiscoveryV1().EndpointSlices(bs.ns).Update(ctx, es, metav1.UpdateOptions{})
	if err != nil {
		return start, fmt.Errorf("change endpointslice of %s/%s: %w", bs.ns, bs.name, err)
	}
	l.mu.Lock()
	bs.slice = out
	l.mu.Unlock()
	return start, nil
}

// parallel runs fn(0..n-1) on workers goroutines, roughly in index order,
// and returns the first error.
func parallel(ctx context.Context, workers, n int, fn func(i int) error) error {
	if n <= 0 {
		return nil
	}
	var next atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// setSlice records es as the EndpointSlice of bs last written.
func (l *loader) setSlice(bs *benchService, es *discoveryv1.EndpointSlice) {
	l.mu.Lock()
	bs.slice = es
	l.mu.Unlock()
}
