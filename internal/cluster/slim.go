package cluster

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The informers of Services and EndpointSlices keep only what the Tracker
// needs. Their transform converts each object as it arrives into the
// Tracker's own form (serviceInfo, sliceInfo) and stores that, wrapped with
// the few metadata fields an informer's store reads (name, namespace,
// resource version, uid), instead of the API object: at 10k Services × 10
// endpoints that is some 35 MB less held for the whole run. The event
// handlers hand the converted form to the Tracker, which therefore never
// converts twice.

// slimService is what the Service informer stores.
type slimService struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	info *serviceInfo // immutable once made
}

// slimSlice is what the EndpointSlice informer stores; info is nil for a
// slice the Tracker ignores (no service-name label, another address type).
type slimSlice struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	info *sliceInfo // immutable once made
}

var (
	_ runtime.Object = (*slimService)(nil)
	_ metav1.Object  = (*slimService)(nil)
	_ runtime.Object = (*slimSlice)(nil)
	_ metav1.Object  = (*slimSlice)(nil)
)

// DeepCopyObject implements runtime.Object; info is shared, being immutable.
func (s *slimService) DeepCopyObject() runtime.Object {
	c := *s
	s.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// DeepCopyObject implements runtime.Object; info is shared, being immutable.
func (s *slimSlice) DeepCopyObject() runtime.Object {
	c := *s
	s.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// slimMeta keeps the identity of an object: what an informer's store and
// its relists read.
func slimMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion, UID: m.UID}
}

// slimTransform is the transform of the Service and EndpointSlice
// informers: it converts those objects (see above) and strips the others.
// proxyName is the scope's service-proxy-name, which the conversion of a
// Service reads.
func slimTransform(proxyName string) func(obj any) (any, error) {
	return func(obj any) (any, error) {
		switch o := obj.(type) {
		case *v1.Service:
			return &slimService{ObjectMeta: slimMeta(&o.ObjectMeta), info: convertService(o, proxyName)}, nil
		case *discovery.EndpointSlice:
			return &slimSlice{ObjectMeta: slimMeta(&o.ObjectMeta), info: convertSlice(o)}, nil
		}
		return StripUnused(obj)
	}
}

// updateSlimService is the Service informer's add and update handler. The
// transform made every object a *slimService; an API object (an informer
// without the transform) is converted here.
func (t *Tracker) updateSlimService(obj any) {
	switch o := obj.(type) {
	case *slimService:
		t.updateService(o.info)
	case *v1.Service:
		t.UpdateService(o)
	}
}

// updateSlimSlice is the EndpointSlice informer's add and update handler;
// see updateSlimService.
func (t *Tracker) updateSlimSlice(obj any) {
	switch o := obj.(type) {
	case *slimSlice:
		t.updateSlice(o.Namespace, o.Name, o.info)
	case *discovery.EndpointSlice:
		t.UpdateSlice(o)
	}
}
