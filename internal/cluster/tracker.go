package cluster

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networking "k8s.io/api/networking/v1"
)

// Tracker records what changed and builds snapshots. Event handlers only
// record (cheap, under a short lock); the work of joining Services with their
// slices happens in Snapshot, once per sync, and only for Services that
// changed since the previous snapshot.
type Tracker struct {
	proxyName  string
	namespaces map[string]bool // nil: all
	now        func() time.Time

	mu         sync.Mutex
	services   map[ServiceKey]*serviceInfo
	slices     map[ServiceKey]map[string]*sliceInfo
	sliceOwner map[sliceRef]ServiceKey
	nodes      map[string]*Node
	built      map[ServiceKey]*Service
	dirty      map[ServiceKey]struct{}
	nodesDirty bool
	last       *Snapshot
	onChange   func()
	start      time.Time // trigger times before it are not this agent's to measure

	// received is when the oldest change not yet in a snapshot arrived,
	// receivedWhat what it was; triggers are the trigger times of the
	// EndpointSlice changes not yet in a snapshot, by Service.
	received     time.Time
	receivedWhat string
	triggers     map[ServiceKey][]time.Time

	// serviceCIDRs are the ranges of each ServiceCIDR object by name.
	serviceCIDRs map[string][]netip.Prefix
	cidrsDirty   bool

	// events counts the changes delivered to the Tracker by kind and
	// whether they changed what the agent uses (see Events).
	events map[EventCount]uint64
	// onNodes is called (without locks held) after the Nodes changed.
	onNodes func()
}

// EventCount names one counter of Events: the kind of object delivered
// (Service, EndpointSlice, Node, ServiceCIDR) and whether it changed what
// the agent uses.
type EventCount struct {
	Kind    string
	Changed bool
}

type sliceRef struct{ namespace, name string }

// TrackerOptions scope what a Tracker keeps.
type TrackerOptions struct {
	// Namespaces limits Services to these namespaces (empty: all).
	Namespaces []string
	// ServiceProxyName is the agent's service-proxy-name.
	ServiceProxyName string
	// OnChange is called (without locks held) after each recorded change.
	OnChange func()
}

// NewTracker returns an empty Tracker.
func NewTracker(o TrackerOptions) *Tracker {
	t := &Tracker{
		proxyName:  o.ServiceProxyName,
		now:        time.Now,
		services:   map[ServiceKey]*serviceInfo{},
		slices:     map[ServiceKey]map[string]*sliceInfo{},
		sliceOwner: map[sliceRef]ServiceKey{},
		nodes:      map[string]*Node{},
		built:      map[ServiceKey]*Service{},
		dirty:      map[ServiceKey]struct{}{},
		onChange:   o.OnChange,
		triggers:   map[ServiceKey][]time.Time{},

		serviceCIDRs: map[string][]netip.Prefix{},
		events:       map[EventCount]uint64{},
	}
	t.start = t.now()
	if len(o.Namespaces) > 0 {
		t.namespaces = map[string]bool{}
		for _, ns := range o.Namespaces {
			t.namespaces[ns] = true
		}
	}
	return t
}

func (t *Tracker) inScope(ns string) bool { return t.namespaces == nil || t.namespaces[ns] }

// receivedLocked notes that a change of what arrived now, for the oldest
// change the next snapshot carries.
func (t *Tracker) receivedLocked(kind, name string) {
	if t.received.IsZero() {
		t.received, t.receivedWhat = t.now(), kind+" "+name
	}
}

func (t *Tracker) changed() {
	if t.onChange != nil {
		t.onChange()
	}
}

// countLocked counts one delivered change of kind.
func (t *Tracker) countLocked(kind string, changed bool) {
	t.events[EventCount{Kind: kind, Changed: changed}]++
}

// Events returns how many changes were delivered to the Tracker, by kind
// and by whether they changed what the agent uses. An update of a field
// the agent ignores (a Node's heartbeat, a Service's annotations) counts
// as unchanged and wakes no consumer.
func (t *Tracker) Events() map[EventCount]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.events)
}

// UpdateService records a Service added or updated.
func (t *Tracker) UpdateService(s *v1.Service) {
	t.updateService(convertService(s, t.proxyName))
}

// updateService records a Service added or updated, converted.
func (t *Tracker) updateService(si *serviceInfo) {
	if !t.inScope(si.key.Namespace) {
		return
	}
	t.mu.Lock()
	if old, ok := t.services[si.key]; ok && reflect.DeepEqual(old, si) {
		t.countLocked("Service", false)
		t.mu.Unlock()
		return
	}
	t.countLocked("Service", true)
	t.services[si.key] = si
	t.dirty[si.key] = struct{}{}
	t.receivedLocked("Service", si.key.String())
	t.mu.Unlock()
	t.changed()
}

// DeleteService records a Service removed.
func (t *Tracker) DeleteService(namespace, name string) {
	key := ServiceKey{Namespace: namespace, Name: name}
	t.mu.Lock()
	_, had := t.services[key]
	delete(t.services, key)
	if had {
		t.dirty[key] = struct{}{}
		t.receivedLocked("Service", key.String()+" (deleted)")
	}
	t.mu.Unlock()
	if had {
		t.changed()
	}
}

// UpdateSlice records an EndpointSlice added or updated.
func (t *Tracker) UpdateSlice(es *discovery.EndpointSlice) {
	t.updateSlice(es.Namespace, es.Name, convertSlice(es))
}

// updateSlice records an EndpointSlice added or updated, converted; si is
// nil for a slice that belongs to no Service the agent handles.
func (t *Tracker) updateSlice(namespace, name string, si *sliceInfo) {
	if !t.inScope(namespace) {
		return
	}
	ref := sliceRef{namespace, name}
	t.mu.Lock()
	var prevTrigger time.Time
	owner, had := t.sliceOwner[ref]
	if had {
		prev := t.slices[owner][name]
		if si != nil && reflect.DeepEqual(prev, si) {
			t.countLocked("EndpointSlice", false)
			t.mu.Unlock()
			return
		}
		prevTrigger = prev.triggerTime
	}
	if !had && si == nil {
		// Neither before nor now a slice the agent uses.
		t.countLocked("EndpointSlice", false)
		t.mu.Unlock()
		return
	}
	t.countLocked("EndpointSlice", true)
	if t.forgetSliceLocked(ref) || si != nil {
		t.receivedLocked("EndpointSlice", namespace+"/"+name)
	}
	if si != nil {
		// Each trigger time once: a relist delivers the same slice again.
		if tt := si.triggerTime; tt.After(t.start) && !tt.Equal(prevTrigger) {
			t.triggers[si.service] = append(t.triggers[si.service], tt)
		}
		if t.slices[si.service] == nil {
			t.slices[si.service] = map[string]*sliceInfo{}
		}
		t.slices[si.service][si.name] = si
		t.sliceOwner[ref] = si.service
		t.dirty[si.service] = struct{}{}
	}
	t.mu.Unlock()
	t.changed()
}

// DeleteSlice records an EndpointSlice removed.
func (t *Tracker) DeleteSlice(namespace, name string) {
	t.mu.Lock()
	had := t.forgetSliceLocked(sliceRef{namespace, name})
	if had {
		t.receivedLocked("EndpointSlice", namespace+"/"+name+" (deleted)")
	}
	t.mu.Unlock()
	if had {
		t.changed()
	}
}

// forgetSliceLocked drops a slice from the Service it belonged to (its
// service-name label may have changed since).
func (t *Tracker) forgetSliceLocked(ref sliceRef) bool {
	owner, ok := t.sliceOwner[ref]
	if !ok {
		return false
	}
	delete(t.sliceOwner, ref)
	delete(t.slices[owner], ref.name)
	if len(t.slices[owner]) == 0 {
		delete(t.slices, owner)
	}
	t.dirty[owner] = struct{}{}
	return true
}

// UpdateNode records a Node added or updated. An update that leaves what
// the agent uses of the Node as it was (a kubelet's status heartbeat:
// conditions, images, resource version) changes nothing and wakes no one.
func (t *Tracker) UpdateNode(n *v1.Node) {
	t.updateNode(convertNode(n))
}

// updateNode records a Node added or updated, converted.
func (t *Tracker) updateNode(node *Node) {
	t.mu.Lock()
	if old, ok := t.nodes[node.Name]; ok && reflect.DeepEqual(old, node) {
		t.countLocked("Node", false)
		t.mu.Unlock()
		return
	}
	t.countLocked("Node", true)
	t.nodes[node.Name] = node
	t.nodesDirty = true
	t.receivedLocked("Node", node.Name)
	t.mu.Unlock()
	t.nodesChanged()
}

// DeleteNode records a Node removed.
func (t *Tracker) DeleteNode(name string) {
	t.mu.Lock()
	_, had := t.nodes[name]
	delete(t.nodes, name)
	t.nodesDirty = t.nodesDirty || had
	t.countLocked("Node", had)
	if had {
		t.receivedLocked("Node", name+" (deleted)")
	}
	t.mu.Unlock()
	if had {
		t.nodesChanged()
	}
}

// ReplaceNodes makes nodes the whole set of Nodes (a new source of them,
// such as the shared node route table, took over); it changes, and wakes,
// only where the set differs.
func (t *Tracker) ReplaceNodes(nodes []*Node, what string) {
	next := make(map[string]*Node, len(nodes))
	for _, n := range nodes {
		next[n.Name] = n
	}
	t.mu.Lock()
	if maps.EqualFunc(t.nodes, next, func(a, b *Node) bool { return reflect.DeepEqual(a, b) }) {
		t.countLocked("Node", false)
		t.mu.Unlock()
		return
	}
	t.countLocked("Node", true)
	t.nodes = next
	t.nodesDirty = true
	t.receivedLocked("Node", what)
	t.mu.Unlock()
	t.nodesChanged()
}

// Nodes returns the Nodes the Tracker holds, ordered by name.
func (t *Tracker) Nodes() []*Node {
	t.mu.Lock()
	out := slices.Collect(maps.Values(t.nodes))
	t.mu.Unlock()
	sortNodes(out)
	return out
}

// OnNodes sets a function called (without locks held) after every change
// of the Nodes, for the publisher of the shared node route table.
func (t *Tracker) OnNodes(f func()) {
	t.mu.Lock()
	t.onNodes = f
	t.mu.Unlock()
}

func (t *Tracker) nodesChanged() {
	t.mu.Lock()
	f := t.onNodes
	t.mu.Unlock()
	if f != nil {
		f()
	}
	t.changed()
}

// UpdateServiceCIDR records a ServiceCIDR added or updated.
func (t *Tracker) UpdateServiceCIDR(sc *networking.ServiceCIDR) {
	cidrs := convertServiceCIDR(sc)
	t.mu.Lock()
	old, had := t.serviceCIDRs[sc.Name]
	t.serviceCIDRs[sc.Name] = cidrs
	changed := !had || !slices.Equal(old, cidrs)
	t.countLocked("ServiceCIDR", changed)
	t.cidrsDirty = t.cidrsDirty || changed
	if changed {
		t.receivedLocked("ServiceCIDR", sc.Name)
	}
	t.mu.Unlock()
	if changed {
		t.changed()
	}
}

// DeleteServiceCIDR records a ServiceCIDR removed.
func (t *Tracker) DeleteServiceCIDR(name string) {
	t.mu.Lock()
	_, had := t.serviceCIDRs[name]
	delete(t.serviceCIDRs, name)
	t.cidrsDirty = t.cidrsDirty || had
	if had {
		t.receivedLocked("ServiceCIDR", name+" (deleted)")
	}
	t.mu.Unlock()
	if had {
		t.changed()
	}
}

// Counts reports how many objects the tracker holds.
func (t *Tracker) Counts() (services, slices, nodes int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.services), len(t.sliceOwner), len(t.nodes)
}

// Snapshot returns the current view. When nothing changed since the last call
// it returns the same snapshot; otherwise it rebuilds only the changed
// Services and returns a new one with a higher Version.
func (t *Tracker) Snapshot() *Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last != nil && len(t.dirty) == 0 && !t.nodesDirty && !t.cidrsDirty {
		return t.last
	}
	first := t.last == nil
	var changed []ServiceKey
	for key := range t.dirty {
		si, ok := t.services[key]
		if !ok {
			if _, was := t.built[key]; was {
				delete(t.built, key)
				changed = append(changed, key)
			}
			continue
		}
		t.built[key] = buildService(si, t.slices[key])
		changed = append(changed, key)
	}
	clear(t.dirty)
	if first {
		changed = slices.Collect(maps.Keys(t.built))
	}
	slices.SortFunc(changed, compareKeys)
	nodes := map[string]*Node{}
	if t.last != nil && !t.nodesDirty {
		nodes = t.last.Nodes
	} else {
		maps.Copy(nodes, t.nodes)
	}
	t.nodesDirty = false
	var serviceCIDRs []netip.Prefix
	if t.last != nil && !t.cidrsDirty {
		serviceCIDRs = t.last.ServiceCIDRs
	} else {
		for _, cidrs := range t.serviceCIDRs {
			serviceCIDRs = append(serviceCIDRs, cidrs...)
		}
		slices.SortFunc(serviceCIDRs, comparePrefixes)
		serviceCIDRs = slices.Compact(serviceCIDRs)
	}
	t.cidrsDirty = false
	var version uint64 = 1
	if t.last != nil {
		version = t.last.Version + 1
	}
	t.last = &Snapshot{
		Version:  version,
		Time:     t.now(),
		Services: maps.Clone(t.built),
		Nodes:    nodes,
		Changed:  changed,

		ServiceCIDRs: serviceCIDRs,
		Received:     t.received,
		ReceivedWhat: t.receivedWhat,
	}
	if len(t.triggers) > 0 {
		t.last.Triggers = t.triggers
		t.triggers = map[ServiceKey][]time.Time{}
	}
	t.received, t.receivedWhat = time.Time{}, ""
	return t.last
}

// comparePrefixes orders prefixes IPv4 first, then by address and length.
func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
