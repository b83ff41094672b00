package cluster

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networking "k8s.io/api/networking/v1"
)

// Well-known labels and annotations the agent reads.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelServiceName      = discovery.LabelServiceName
	AnnotationTriggerTime = v1.EndpointsLastChangeTriggerTime
	LabelZone             = v1.LabelTopologyZone
)

// serviceInfo is a Service as converted at the informer edge, before it is
// joined with its EndpointSlices.
type serviceInfo struct {
	key                      ServiceKey
	typ                      string
	clusterIPs               []netip.Addr
	headless                 bool
	externalName             string
	proxied                  bool
	affinityTimeout          time.Duration
	internalTrafficLocal     bool
	publishNotReadyAddresses bool
	ports                    []servicePort
}

type servicePort struct {
	name     string
	port     int32
	protocol string
}

// convertService converts a Service. proxyName is the agent's own
// service-proxy-name (see config.Scope.ServiceProxyName).
func convertService(s *v1.Service, proxyName string) *serviceInfo {
	si := &serviceInfo{
		key:                      ServiceKey{Namespace: s.Namespace, Name: s.Name},
		typ:                      string(s.Spec.Type),
		externalName:             s.Spec.ExternalName,
		publishNotReadyAddresses: s.Spec.PublishNotReadyAddresses,
		internalTrafficLocal:     s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
	}
	if si.typ == "" {
		si.typ = TypeClusterIP
	}
	name, labelled := s.Labels[LabelServiceProxyName]
	si.proxied = !labelled || (proxyName != "" && name == proxyName)

	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == v1.ClusterIPNone {
			si.headless = true
			continue
		}
		if a, err := netip.ParseAddr(ip); err == nil {
			si.clusterIPs = append(si.clusterIPs, a.Unmap())
		}
	}
	if si.typ == TypeExternalName {
		si.clusterIPs, si.headless = nil, false
	}
	if s.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		secs := int32(v1.DefaultClientIPServiceAffinitySeconds)
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs = *c.ClientIP.TimeoutSeconds
		}
		si.affinityTimeout = time.Duration(secs) * time.Second
	}
	for _, p := range s.Spec.Ports {
		if p.Port <= 0 || p.Port > 65535 {
			continue
		}
		proto := string(p.Protocol)
		if proto == "" {
			proto = string(v1.ProtocolTCP)
		}
		si.ports = append(si.ports, servicePort{name: p.Name, port: p.Port, protocol: proto})
	}
	return si
}

// sliceInfo is an EndpointSlice as converted at the informer edge.
type sliceInfo struct {
	name        string
	service     ServiceKey
	ports       []slicePort
	endpoints   []Endpoint // Port unset; one per usable endpoint
	triggerTime time.Time
}

type slicePort struct {
	name     string
	port     int32
	protocol string
}

// convertSlice converts an EndpointSlice. It returns nil for slices the agent
// ignores: FQDN slices and slices that name no Service. Unusable parts (an
// endpoint with no valid address, a port without a number) are dropped one by
// one, so a single bad entry never hides the rest of the slice.
func convertSlice(es *discovery.EndpointSlice) *sliceInfo {
	svc := es.Labels[LabelServiceName]
	if svc == "" {
		return nil
	}
	var family func(netip.Addr) bool
	switch es.AddressType {
	case discovery.AddressTypeIPv4:
		family = netip.Addr.Is4
	case discovery.AddressTypeIPv6:
		family = func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }
	default:
		return nil
	}
	si := &sliceInfo{name: es.Name, service: ServiceKey{Namespace: es.Namespace, Name: svc}}
	if t, err := time.Parse(time.RFC3339Nano, es.Annotations[AnnotationTriggerTime]); err == nil {
		si.triggerTime = t
	}
	for _, p := range es.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		sp := slicePort{port: *p.Port, protocol: string(v1.ProtocolTCP)}
		if p.Name != nil {
			sp.name = *p.Name
		}
		if p.Protocol != nil {
			sp.protocol = string(*p.Protocol)
		}
		si.ports = append(si.ports, sp)
	}
	for _, ep := range es.Endpoints {
		// Only the first address counts (the API says consumers may assume
		// all addresses are fungible and kube-proxy uses the first).
		if len(ep.Addresses) == 0 {
			continue
		}
		addr, err := netip.ParseAddr(ep.Addresses[0])
		if err != nil || !family(addr) || addr.Zone() != "" {
			continue
		}
		e := Endpoint{
			Addr:        addr,
			Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
			Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
			Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		}
		if ep.Hostname != nil {
			e.Hostname = *ep.Hostname
		}
		if ep.NodeName != nil {
			e.NodeName = *ep.NodeName
		}
		if ep.Zone != nil {
			e.Zone = *ep.Zone
		}
		if ep.Hints != nil {
			for _, z := range ep.Hints.ForZones {
				e.HintZones = append(e.HintZones, z.Name)
			}
		}
		si.endpoints = append(si.endpoints, e)
	}
	return si
}

// convertNode converts a Node.
func convertNode(n *v1.Node) *Node {
	var ips []string
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			ips = append(ips, a.Address)
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	return nodeFromStrings(n.Name, n.Labels[LabelZone], ips, cidrs)
}

// convertServiceCIDR returns the valid ranges of a ServiceCIDR.
func convertServiceCIDR(sc *networking.ServiceCIDR) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range sc.Spec.CIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// buildService joins a Service with its slices into the immutable Service
// consumers see. slices may be in any order; the result does not depend on it.
func buildService(si *serviceInfo, slicesByName map[string]*sliceInfo) *Service {
	svc := &Service{
		ServiceKey:               si.key,
		Type:                     si.typ,
		ClusterIPs:               si.clusterIPs,
		Headless:                 si.headless,
		ExternalName:             si.externalName,
		Proxied:                  si.proxied,
		SessionAffinityTimeout:   si.affinityTimeout,
		InternalTrafficLocal:     si.internalTrafficLocal,
		PublishNotReadyAddresses: si.publishNotReadyAddresses,
	}
	names := make([]string, 0, len(slicesByName))
	for n, sl := range slicesByName {
		names = append(names, n)
		if sl.triggerTime.After(svc.TriggerTime) {
			svc.TriggerTime = sl.triggerTime
		}
	}
	slices.Sort(names)
	for _, sp := range si.ports {
		p := &Port{Name: sp.name, Port: sp.port, Protocol: sp.protocol}
		seen := map[netip.AddrPort]int{}
		for _, n := range names {
			sl := slicesByName[n]
			for _, slp := range sl.ports {
				if slp.name != sp.name || slp.protocol != sp.protocol {
					continue
				}
				for _, e := range sl.endpoints {
					e.Port = slp.port
					if i, dup := seen[e.AddrPort()]; dup {
						// The same ip:port in two slices (a pod moving between
						// slices): count it once, preferring the ready copy.
						if e.Ready && !p.Endpoints[i].Ready {
							p.Endpoints[i] = e
						}
						continue
					}
					seen[e.AddrPort()] = len(p.Endpoints)
					p.Endpoints = append(p.Endpoints, e)
				}
			}
		}
		slices.SortFunc(p.Endpoints, compareEndpoints)
		svc.Ports = append(svc.Ports, p)
	}
	if si.headless {
		seen := map[netip.Addr]int{}
		for _, n := range names {
			for _, e := range slicesByName[n].endpoints {
				if i, dup := seen[e.Addr]; dup {
					if e.Ready && !svc.Endpoints[i].Ready {
						svc.Endpoints[i] = e
					}
					continue
				}
				seen[e.Addr] = len(svc.Endpoints)
				svc.Endpoints = append(svc.Endpoints, e)
			}
		}
		slices.SortFunc(svc.Endpoints, compareEndpoints)
	}
	return svc
}

func compareEndpoints(a, b Endpoint) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

func sortServices(s []*Service) {
	slices.SortFunc(s, func(a, b *Service) int { return compareKeys(a.ServiceKey, b.ServiceKey) })
}

// compareKeys orders Service keys by namespace, then name.
func compareKeys(a, b ServiceKey) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

func sortNodes(n []*Node) {
	slices.SortFunc(n, func(a, b *Node) int { return strings.Compare(a.Name, b.Name) })
}
