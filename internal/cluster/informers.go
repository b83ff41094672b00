package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networking "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	clientdiscovery "k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// WatchOptions scope the watch.
type WatchOptions struct {
	// Namespaces limits the watch (empty: all). With exactly one namespace
	// the API server filters; otherwise the Tracker does.
	Namespaces []string
	// LabelSelector limits Services (server-side).
	LabelSelector string
	// Nodes is where the Nodes come from: NodesNone (the default: no Node
	// is watched, for routes.mode gateway and none), NodesWatch (a Node
	// informer) or NodesShared (the shared node route table; see
	// SharedNodes).
	Nodes string
	// Shared configures NodesShared.
	Shared SharedNodesOptions
}

// Node sources (WatchOptions.Nodes).
const (
	// NodesNone watches no Node: nothing the agent does needs them.
	NodesNone = "none"
	// NodesWatch watches every Node.
	NodesWatch = "watch"
	// NodesShared reads the node route table one elected agent publishes,
	// and watches Nodes only while that table is absent or stale (or
	// while this agent is the one publishing it).
	NodesShared = "shared"
)

// Watcher runs the shared informers for Services, EndpointSlices and, when
// routes need them, Nodes, and feeds a Tracker.
type Watcher struct {
	factories []informers.SharedInformerFactory
	synced    []cache.InformerSynced
	shared    *SharedNodes // nil unless WatchOptions.Nodes is NodesShared

	mu        sync.Mutex
	lastErr   error
	lastErrAt time.Time

	// cidrF watches ServiceCIDRs. It starts only once discovery shows the
	// cluster serves them (Kubernetes 1.33 and later), and readiness does
	// not wait for it: the agent works without knowing the Service ranges.
	cidrF     informers.SharedInformerFactory
	discovery clientdiscovery.DiscoveryInterface
	cidrWG    sync.WaitGroup
}

// watchError records a list/watch failure for status, then logs it the way
// client-go does; the reflector retries with backoff by itself.
func (w *Watcher) watchError(ctx context.Context, r *cache.Reflector, err error) {
	w.mu.Lock()
	w.lastErr, w.lastErrAt = err, time.Now()
	w.mu.Unlock()
	cache.DefaultWatchErrorHandler(ctx, r, err)
}

// RecordError records an error reaching the API server found outside the
// informers (they report some failures, such as a streaming list that
// cannot connect, only in their logs).
func (w *Watcher) RecordError(err error) {
	w.mu.Lock()
	w.lastErr, w.lastErrAt = err, time.Now()
	w.mu.Unlock()
}

// LastError returns the most recent list/watch error and when it happened.
func (w *Watcher) LastError() (error, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr, w.lastErrAt
}

// ClearError forgets the last error (called after a successful sync).
func (w *Watcher) ClearError() {
	w.mu.Lock()
	w.lastErr, w.lastErrAt = nil, time.Time{}
	w.mu.Unlock()
}

// NewWatcher sets up informers on client feeding t. Call Start to run them.
func NewWatcher(client kubernetes.Interface, t *Tracker, o WatchOptions) (*Watcher, error) {
	if o.LabelSelector != "" {
		if _, err := labels.Parse(o.LabelSelector); err != nil {
			return nil, fmt.Errorf("watch: label selector: %w", err)
		}
	}
	base := []informers.SharedInformerOption{informers.WithTransform(slimTransform(t.proxyName))}
	if len(o.Namespaces) == 1 {
		base = append(base, informers.WithNamespace(o.Namespaces[0]))
	}
	svcOpts := append(slices.Clip(base), informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.LabelSelector = o.LabelSelector
	}))
	// Slices without the service-name label are never used: let the API
	// server drop them.
	sliceOpts := append(slices.Clip(base), informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.LabelSelector = LabelServiceName
	}))
	svcF := informers.NewSharedInformerFactoryWithOptions(client, 0, svcOpts...)
	sliceF := informers.NewSharedInformerFactoryWithOptions(client, 0, sliceOpts...)

	cidrF := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(StripUnused))

	w := &Watcher{factories: []informers.SharedInformerFactory{svcF, sliceF}}
	w.cidrF, w.discovery = cidrF, client.Discovery()
	cidrInf := cidrF.Networking().V1().ServiceCIDRs().Informer()
	_, err := cidrInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.UpdateServiceCIDR(obj.(*networking.ServiceCIDR)) },
		UpdateFunc: func(_, obj any) { t.UpdateServiceCIDR(obj.(*networking.ServiceCIDR)) },
		DeleteFunc: func(obj any) {
			if _, name, ok := deletedKey(obj); ok {
				t.DeleteServiceCIDR(name)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch: add handler: %w", err)
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{svcF.Core().V1().Services().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { t.updateSlimService(obj) },
			UpdateFunc: func(_, obj any) { t.updateSlimService(obj) },
			DeleteFunc: func(obj any) {
				if ns, name, ok := deletedKey(obj); ok {
					t.DeleteService(ns, name)
				}
			},
		}},
		{sliceF.Discovery().V1().EndpointSlices().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { t.updateSlimSlice(obj) },
			UpdateFunc: func(_, obj any) { t.updateSlimSlice(obj) },
			DeleteFunc: func(obj any) {
				if ns, name, ok := deletedKey(obj); ok {
					t.DeleteSlice(ns, name)
				}
			},
		}},
	}
	switch o.Nodes {
	case NodesNone, "":
	case NodesWatch:
		nodeF := newNodeFactory(client)
		w.factories = append(w.factories, nodeF)
		handlers = append(handlers, struct {
			inf cache.SharedIndexInformer
			h   cache.ResourceEventHandlerFuncs
		}{nodeF.Core().V1().Nodes().Informer(), nodeHandler(t, nil)})
	case NodesShared:
		sn, err := NewSharedNodes(client, t, o.Shared, w.watchError)
		if err != nil {
			return nil, err
		}
		w.shared = sn
		w.synced = append(w.synced, sn.HasSynced)
	default:
		return nil, fmt.Errorf("watch: unknown node source %q", o.Nodes)
	}
	for _, h := range handlers {
		if err := h.inf.SetWatchErrorHandlerWithContext(w.watchError); err != nil {
			return nil, fmt.Errorf("watch: set error handler: %w", err)
		}
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return nil, fmt.Errorf("watch: add handler: %w", err)
		}
		w.synced = append(w.synced, reg.HasSynced)
	}
	return w, nil
}

// Start runs the informers until ctx ends. They list, watch and retry with
// backoff on their own; an unreachable API server only delays HasSynced.
func (w *Watcher) Start(ctx context.Context) {
	for _, f := range w.factories {
		f.Start(ctx.Done())
	}
	if w.shared != nil {
		w.cidrWG.Go(func() { w.shared.Run(ctx) })
	}
	w.cidrWG.Go(func() { w.startServiceCIDRs(ctx) })
}

// Shared returns the shared node route table's reader, nil unless the
// Nodes come from it.
func (w *Watcher) Shared() *SharedNodes { return w.shared }

// newNodeFactory returns an informer factory for Nodes that keeps only what
// the agent reads of them.
func newNodeFactory(client kubernetes.Interface) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(StripUnused))
}

// nodeHandler feeds a Node informer's events to t; while active is not nil
// and returns false, events are dropped (a source being stopped).
func nodeHandler(t *Tracker, active func() bool) cache.ResourceEventHandlerFuncs {
	on := func() bool { return active == nil || active() }
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*v1.Node); ok && on() {
				t.UpdateNode(n)
			}
		},
		UpdateFunc: func(_, obj any) {
			if n, ok := obj.(*v1.Node); ok && on() {
				t.UpdateNode(n)
			}
		},
		DeleteFunc: func(obj any) {
			if _, name, ok := deletedKey(obj); ok && on() {
				t.DeleteNode(name)
			}
		},
	}
}

// startServiceCIDRs starts the ServiceCIDR informer once discovery says the
// API server serves networking.k8s.io/v1 servicecidrs; it gives up quietly
// when the server does not, and retries while the server is unreachable.
func (w *Watcher) startServiceCIDRs(ctx context.Context) {
	disc := clientdiscovery.ToDiscoveryInterfaceWithContext(w.discovery)
	for {
		served, err := servesServiceCIDRs(ctx, disc)
		if err == nil {
			if served {
				w.cidrF.Start(ctx.Done())
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// servesServiceCIDRs asks discovery whether the API server has
// networking.k8s.io/v1 servicecidrs.
func servesServiceCIDRs(ctx context.Context, disc clientdiscovery.DiscoveryInterfaceWithContext) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := disc.ServerResourcesForGroupVersionWithContext(ctx, networking.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == "servicecidrs" {
			return true, nil
		}
	}
	return false, nil
}

// Shutdown waits for the informers' goroutines after ctx has ended.
func (w *Watcher) Shutdown() {
	for _, f := range w.factories {
		f.Shutdown()
	}
	w.cidrWG.Wait()
	w.cidrF.Shutdown()
}

// HasSynced reports whether Services, EndpointSlices and, when watched,
// Nodes (or the shared node route table) have all been listed and
// delivered to the Tracker.
func (w *Watcher) HasSynced() bool {
	for _, s := range w.synced {
		if !s() {
			return false
		}
	}
	return true
}

// deletedKey returns namespace and name of a deleted object, which may come
// wrapped in a tombstone when a watch missed the delete.
func deletedKey(obj any) (string, string, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return "", "", false
	}
	return m.GetNamespace(), m.GetName(), true
}

// StripUnused is the informers' transform: it drops what the agent never
// reads (managed fields, most annotations, node images and conditions) so
// memory stays flat in large clusters.
func StripUnused(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		o.ManagedFields = nil
		o.Annotations = nil
		o.Status = v1.ServiceStatus{}
	case *discovery.EndpointSlice:
		o.ManagedFields = nil
		if t, ok := o.Annotations[AnnotationTriggerTime]; ok {
			o.Annotations = map[string]string{AnnotationTriggerTime: t}
		} else {
			o.Annotations = nil
		}
		o.OwnerReferences = nil
		for i := range o.Endpoints {
			o.Endpoints[i].TargetRef = nil
			o.Endpoints[i].DeprecatedTopology = nil
		}
	case *networking.ServiceCIDR:
		o.ManagedFields = nil
		o.Annotations = nil
		o.Status = networking.ServiceCIDRStatus{}
	case *v1.Node:
		o.ManagedFields = nil
		o.Annotations = nil
		if z, ok := o.Labels[LabelZone]; ok {
			o.Labels = map[string]string{LabelZone: z}
		} else {
			o.Labels = nil
		}
		o.Status = v1.NodeStatus{Addresses: o.Status.Addresses}
		o.Spec = v1.NodeSpec{PodCIDR: o.Spec.PodCIDR, PodCIDRs: o.Spec.PodCIDRs}
	}
	return obj, nil
}
