// Package cluster is the agent's view of the cluster. It is the only package
// that imports client-go informers: it turns Services, EndpointSlices and Nodes
// into the small, immutable types below and hands consumers (proxy, routes,
// DNS, status) a versioned Snapshot. Nodes are watched only when routes need
// them, and then preferably read from the shared node route table one elected
// agent publishes (SharedNodes). An update that leaves what the agent uses
// unchanged makes no new Snapshot.
package cluster

import (
	"net/netip"
	"time"
)

// ServiceKey names a Service.
type ServiceKey struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Service types, as in core/v1.
const (
	TypeClusterIP    = "ClusterIP"
	TypeNodePort     = "NodePort"
	TypeLoadBalancer = "LoadBalancer"
	TypeExternalName = "ExternalName"
)

// Service is one Service with its ports and, per port, its endpoints.
// Values reachable from a Snapshot are never modified.
type Service struct {
	ServiceKey
	Type string `json:"type"`
	// ClusterIPs in the Service's order (primary family first); empty for
	// headless and ExternalName Services.
	ClusterIPs []netip.Addr `json:"clusterIPs,omitempty"`
	// Headless is true for clusterIP: None.
	Headless     bool   `json:"headless,omitempty"`
	ExternalName string `json:"externalName,omitempty"`
	// Proxied is false when the Service is meant for another proxy
	// (service.kubernetes.io/service-proxy-name names someone else).
	Proxied bool `json:"proxied"`
	// SessionAffinityTimeout is non-zero for sessionAffinity: ClientIP.
	SessionAffinityTimeout   time.Duration `json:"sessionAffinityTimeout,omitempty"`
	InternalTrafficLocal     bool          `json:"internalTrafficLocal,omitempty"`
	PublishNotReadyAddresses bool          `json:"publishNotReadyAddresses,omitempty"`
	Ports                    []*Port       `json:"ports"`
	// Endpoints of a headless Service, whatever their ports: one per address
	// over all its slices (Port unset), sorted by address. DNS answers from
	// them, and a headless Service may have no ports at all. Empty for
	// Services with a ClusterIP.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// TriggerTime is the newest endpoints.kubernetes.io/last-change-trigger-time
	// of the Service's EndpointSlices (zero when none carries it).
	TriggerTime time.Time `json:"-"`
}

// Port is one Service port and the endpoints behind it.
type Port struct {
	Name     string `json:"name,omitempty"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
	// Endpoints are sorted by address and deduplicated across slices.
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one backend address of a Service port.
type Endpoint struct {
	Addr        netip.Addr `json:"addr"`
	Port        int32      `json:"port"`
	Ready       bool       `json:"ready"`
	Serving     bool       `json:"serving"`
	Terminating bool       `json:"terminating"`
	Hostname    string     `json:"hostname,omitempty"`
	NodeName    string     `json:"nodeName,omitempty"`
	Zone        string     `json:"zone,omitempty"`
	// HintZones are the zones this endpoint is hinted for (topology aware
	// routing); empty when the slice carries no hints.
	HintZones []string `json:"hintZones,omitempty"`
}

// AddrPort returns the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, uint16(e.Port)) }

// Node is what the agent needs of a Node: where its pods live.
type Node struct {
	Name        string         `json:"name"`
	InternalIPs []netip.Addr   `json:"internalIPs,omitempty"`
	PodCIDRs    []netip.Prefix `json:"podCIDRs,omitempty"`
	Zone        string         `json:"zone,omitempty"`
}

// Snapshot is an immutable, versioned view of the cluster. Consumers may keep
// it for as long as they like; the agent never mutates one once handed out.
type Snapshot struct {
	Version uint64    `json:"version"`
	Time    time.Time `json:"time"`
	// Services by key. Treat as read-only.
	Services map[ServiceKey]*Service `json:"-"`
	// Nodes by name. Treat as read-only.
	Nodes map[string]*Node `json:"-"`
	// ServiceCIDRs are the cluster's Service IP ranges from its ServiceCIDR
	// objects (networking.k8s.io/v1), sorted and deduplicated; empty when
	// the cluster serves none. Treat as read-only.
	ServiceCIDRs []netip.Prefix `json:"-"`
	// Changed lists the Services added, updated or removed since the previous
	// snapshot (all of them in the first one), for incremental consumers.
	Changed []ServiceKey `json:"-"`
	// Received is when the oldest change this snapshot is the first to
	// carry arrived from the API server (the informer's event), and
	// ReceivedWhat names it ("EndpointSlice ns/name"); zero when the
	// snapshot carries none.
	Received     time.Time `json:"-"`
	ReceivedWhat string    `json:"-"`
	// Triggers are the endpoints.kubernetes.io/last-change-trigger-time
	// values of the EndpointSlice changes this snapshot is the first to
	// carry, by Service: each change's trigger time is in exactly one
	// snapshot (none from before the tracker started). Treat as read-only.
	Triggers map[ServiceKey][]time.Time `json:"-"`
	// Restored is non-zero for a snapshot read back from the state
	// directory (the last one known good): it is when that one was saved.
	// Live snapshots from the API server leave it zero.
	Restored time.Time `json:"-"`
}

// SortedServices returns the snapshot's Services ordered by key.
func (s *Snapshot) SortedServices() []*Service {
	out := make([]*Service, 0, len(s.Services))
	for _, svc := range s.Services {
		out = append(out, svc)
	}
	sortServices(out)
	return out
}

// SortedNodes returns the snapshot's Nodes ordered by name.
func (s *Snapshot) SortedNodes() []*Node {
	out := make([]*Node, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		out = append(out, n)
	}
	sortNodes(out)
	return out
}

// EndpointCount returns the number of endpoints over all ports of all Services.
func (s *Snapshot) EndpointCount() int {
	n := 0
	for _, svc := range s.Services {
		for _, p := range svc.Ports {
			n += len(p.Endpoints)
		}
	}
	return n
}
