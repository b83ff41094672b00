package dnsstub

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// dnsSchemaVersion is the version of the Kubernetes DNS specification the
// zone implements, served as dns-version.<domain> TXT.
const dnsSchemaVersion = "1.1.0"

// kubeDNSKey is the Service whose endpoints answer the cluster names the
// stub does not serve itself.
var kubeDNSKey = cluster.ServiceKey{Namespace: "kube-system", Name: "kube-dns"}

// SOA timers as CoreDNS writes them.
const (
	soaRefresh = 7200
	soaRetry   = 1800
	soaExpire  = 86400
)

// zone is the immutable set of records built from one snapshot. All names
// are lower-case FQDNs. Below the namespaces, its names and PTRs are those
// of its sub-zones, one per Service: the zone of the next snapshot shares
// them, and renders again only those of the Services that changed (see
// update).
type zone struct {
	domain  string // "cluster.local."
	ttl     uint32
	serial  uint32
	version uint64
	// services are the Services rendered: the snapshot's own map, read
	// only, against which the next snapshot's changes are found.
	services map[cluster.ServiceKey]*cluster.Service
	// subs are the Services' sub-zones, by lower-case key.
	subs shardedMap[svcName, *subzone]
	// namespaces counts the sub-zones of each lower-case namespace: the
	// name <ns>.svc.<domain> exists while there is one.
	namespaces map[string]int
	// ptr maps addresses (unmapped, without zone) to the names pointing at
	// them, sorted: the PTRs of all sub-zones.
	ptr shardedMap[netip.Addr, []string]
	// kubeDNS are the servers of cluster names we do not serve, in the
	// order to try them.
	kubeDNS []kubeDNSTarget
	// kubeDNSIPs are kube-dns's ClusterIPs, glue for the apex NS.
	kubeDNSIPs []netip.Addr
	records    int
	names      int // names with or without records, parents included
	// rendered is how many sub-zones were rendered to make this zone: all
	// of them for a full build, the changed ones for an update.
	rendered int
	// replies are the packed UDP replies of this zone's answers, by
	// question as asked (see fastpath.go); a new zone starts empty.
	replies *replyCache
}

// The names every zone has above the Services; never modified.
var (
	apexNode    = &node{apex: true}                      // the domain
	emptyNode   = &node{}                                // svc.<domain> and the namespaces
	versionNode = &node{txt: []string{dnsSchemaVersion}} // dns-version.<domain>
)

// fixedNames and fixedRecords are what the names above give: the domain
// (SOA, NS), svc.<domain> and dns-version.<domain> (TXT).
const (
	fixedNames   = 3
	fixedRecords = 3
)

// svcName is a Service's key in lower case, as its names are spelled.
type svcName struct {
	ns, name string
}

// nameOfKey returns k in lower case.
func nameOfKey(k cluster.ServiceKey) svcName {
	return svcName{ns: strings.ToLower(k.Namespace), name: strings.ToLower(k.Name)}
}

// fqdn is the Service's name under domain: <name>.<namespace>.svc.<domain>.
func (k svcName) fqdn(domain string) string {
	return k.name + "." + k.ns + ".svc." + domain
}

// subzone is what the Services of one lower-case key give the zone: the
// names at and under <name>.<namespace>.svc.<domain>, and the PTRs to
// them (in the zone's PTR index, where they are the PTRs whose target is
// at or under the base). Kubernetes keys are lower-case, so that is one
// Service. A sub-zone is never modified once rendered.
type subzone struct {
	svcs    []*cluster.Service // rendered, in key order
	base    string             // <name>.<namespace>.svc.<domain>
	names   map[string]*node
	records int // the records of names and PTRs
}

// under tells whether name is at or under base.
func under(name, base string) bool {
	return strings.HasSuffix(name, base) && (len(name) == len(base) || name[len(name)-len(base)-1] == '.')
}

// ptrRecord is one PTR: the address (unmapped, without zone) and the name
// it points at.
type ptrRecord struct {
	addr   netip.Addr
	target string
}

// comparePTR orders PTRs by address, then target.
func comparePTR(a, b ptrRecord) int {
	return cmp.Or(a.addr.Compare(b.addr), strings.Compare(a.target, b.target))
}

// node is one name of the zone. A node without records is an empty
// non-terminal or a name with no data (NODATA).
type node struct {
	addrs []netip.Addr // A and AAAA
	cname string       // ExternalName target, as written, FQDN
	srv   []srvRecord
	txt   []string
	apex  bool
}

type srvRecord struct {
	port   uint16
	weight uint16
	target string
	addrs  []netip.Addr // the target's addresses, for the additional section
}

// kubeDNSTarget is one kube-dns server, with its UDP and TCP ports.
type kubeDNSTarget struct {
	UDP netip.AddrPort `json:"udp"`
	TCP netip.AddrPort `json:"tcp"`
}

// usable tells whether DNS publishes an endpoint.
func usable(svc *cluster.Service, ep cluster.Endpoint) bool {
	return ep.Addr.IsValid() && (ep.Ready || svc.PublishNotReadyAddresses)
}

// servable tells whether svc can have names: its namespace and its name
// are each one label, as Kubernetes requires. Other Services (and nil
// ones) are left out of the zone.
func servable(svc *cluster.Service) bool {
	oneLabel := func(s string) bool { return s != "" && !strings.Contains(s, ".") }
	return svc != nil && oneLabel(svc.Namespace) && oneLabel(svc.Name)
}

// endpointLabel is the endpoint's name under its Service: its hostname, or
// as CoreDNS does, its address with dots or colons as dashes.
func endpointLabel(ep cluster.Endpoint) string {
	if ep.Hostname != "" {
		return strings.ToLower(ep.Hostname)
	}
	a := ep.Addr.Unmap().WithZone("")
	if a.Is4() {
		return strings.ReplaceAll(a.String(), ".", "-")
	}
	s := strings.ReplaceAll(a.String(), ":", "-")
	if strings.HasSuffix(s, "-") {
		s += "0"
	}
	if strings.HasPrefix(s, "-") {
		s = "0" + s
	}
	return s
}

// newZone returns the zone of snap under domain ("cluster.local.") with
// nothing below the namespaces yet.
func newZone(snap *cluster.Snapshot, domain string, ttl uint32) *zone {
	return &zone{
		domain:     domain,
		ttl:        ttl,
		serial:     uint32(snap.Version),
		version:    snap.Version,
		services:   snap.Services,
		subs:       newShardedMap[svcName, *subzone](hashSvcName),
		namespaces: map[string]int{},
		ptr:        newShardedMap[netip.Addr, []string](hashAddr),
		records:    fixedRecords,
		names:      fixedNames,
		replies:    newReplyCache(replyCacheGeneration, replyCacheGenerationBytes),
	}
}

// buildZone renders the zone of snap under domain ("cluster.local."), every
// Service afresh.
func buildZone(snap *cluster.Snapshot, domain string, ttl uint32) *zone {
	z := newZone(snap, domain, ttl)
	groups := make(map[svcName][]*cluster.Service, len(snap.Services))
	for _, svc := range snap.Services {
		if servable(svc) {
			k := nameOfKey(svc.ServiceKey)
			groups[k] = append(groups[k], svc)
		}
	}
	subs := z.subs.edit()
	subs.reserve(len(groups))
	ptrs := make([][]ptrRecord, 0, len(groups))
	n := 0
	for k, svcs := range groups {
		if len(svcs) > 1 {
			slices.SortFunc(svcs, func(a, b *cluster.Service) int { return compareKeys(a.ServiceKey, b.ServiceKey) })
		}
		sub, p := renderSubzone(svcs, domain)
		subs.set(k, sub)
		ptrs = append(ptrs, p)
		n += len(p)
		z.namespaces[k.ns]++
		z.records += sub.records
		z.names += len(sub.names)
	}
	ptr := z.ptr.edit()
	ptr.reserve(n)
	for _, ps := range ptrs {
		for _, p := range ps {
			shard := ptr.shard(p.addr)
			shard[p.addr] = append(shard[p.addr], p.target)
		}
	}
	for _, shard := range z.ptr.shards {
		for _, targets := range shard {
			slices.Sort(targets)
		}
	}
	z.names += len(z.namespaces)
	z.rendered = len(groups)
	if kd := snap.Services[kubeDNSKey]; kd != nil {
		z.kubeDNS, z.kubeDNSIPs = kubeDNSTargets(kd)
	}
	return z
}

// update returns the zone of snap derived from z, which is left as it
// was: the sub-zones of the Services whose pointer differs between z's
// snapshot and snap (added, removed or replaced) are rendered again, and
// the new zone shares everything else with z. It answers as buildZone's
// zone of snap would.
func (z *zone) update(snap *cluster.Snapshot) *zone {
	nz := newZone(snap, z.domain, z.ttl)
	nz.subs, nz.ptr, nz.namespaces = z.subs, z.ptr, z.namespaces
	nz.records, nz.names = z.records, z.names
	nz.kubeDNS, nz.kubeDNSIPs = z.kubeDNS, z.kubeDNSIPs
	if kd := snap.Services[kubeDNSKey]; kd != z.services[kubeDNSKey] {
		nz.kubeDNS, nz.kubeDNSIPs = nil, nil
		if kd != nil {
			nz.kubeDNS, nz.kubeDNSIPs = kubeDNSTargets(kd)
		}
	}
	changed := changedKeys(z.services, snap.Services)
	if len(changed) == 0 {
		return nz
	}
	subs := nz.subs.edit()
	ptr := nz.ptr.edit()
	nsCopied := false
	countNamespace := func(ns string, delta int) {
		if !nsCopied {
			nz.namespaces = maps.Clone(z.namespaces)
			nsCopied = true
		}
		before := nz.namespaces[ns]
		after := before + delta
		if after > 0 {
			nz.namespaces[ns] = after
		} else {
			delete(nz.namespaces, ns)
		}
		if (before > 0) != (after > 0) {
			nz.names += delta // the namespace's name comes or goes
		}
	}
	none := &subzone{}
	for k, keys := range changed {
		old, ok := z.subs.get(k)
		if !ok {
			old = none
		}
		for _, svc := range old.svcs {
			keys = append(keys, svc.ServiceKey)
		}
		slices.SortFunc(keys, compareKeys)
		var svcs []*cluster.Service
		for _, key := range slices.Compact(keys) {
			if svc := snap.Services[key]; svc != nil && servable(svc) {
				svcs = append(svcs, svc)
			}
		}
		cur := none
		var ptrs []ptrRecord
		if len(svcs) > 0 {
			cur, ptrs = renderSubzone(svcs, z.domain)
			nz.rendered++
		}
		switch {
		case old == none && cur == none:
			continue
		case old == none:
			countNamespace(k.ns, +1)
			subs.set(k, cur)
		case cur == none:
			countNamespace(k.ns, -1)
			subs.delete(k)
		default:
			subs.set(k, cur)
		}
		nz.records += cur.records - old.records
		nz.names += len(cur.names) - len(old.names)
		patchPTR(ptr, k.fqdn(z.domain), addrsOf(old.svcs), ptrs)
	}
	return nz
}

// compareKeys orders Service keys as cluster.Snapshot.SortedServices does:
// by namespace, then name.
func compareKeys(a, b cluster.ServiceKey) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// changedKeys returns the keys whose Service pointer differs between old
// and cur (added, removed or replaced), by lower-case key. A nil Service
// counts as none.
func changedKeys(old, cur map[cluster.ServiceKey]*cluster.Service) map[svcName][]cluster.ServiceKey {
	out := map[svcName][]cluster.ServiceKey{}
	mark := func(k cluster.ServiceKey) {
		n := nameOfKey(k)
		out[n] = append(out[n], k)
	}
	kept := 0 // Services of old whose key is in cur
	for k, svc := range cur {
		o := old[k]
		if o != nil {
			kept++
		}
		if o != svc {
			mark(k)
		}
	}
	if kept == len(old) {
		return out
	}
	for k, o := range old {
		if _, ok := cur[k]; !ok && o != nil {
			mark(k)
		}
	}
	return out
}

// patchPTR sets, in ptr, the PTRs of one sub-zone (those whose target is
// at or under base) to cur, sorted by address, then target. The sub-zone's
// PTRs until now are at addresses among old. Addresses whose PTRs stay the
// same are not touched.
func patchPTR(ptr *mapEdit[netip.Addr, []string], base string, old []netip.Addr, cur []ptrRecord) {
	addrs := old
	for _, p := range cur {
		addrs = append(addrs, p.addr)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	var next []string
	for _, a := range slices.Compact(addrs) {
		var mine []ptrRecord
		mine, cur = cutAddr(cur, a)
		targets, _ := ptr.get(a)
		next = next[:0]
		for _, t := range targets {
			if !under(t, base) {
				next = append(next, t)
			}
		}
		for _, p := range mine {
			next = append(next, p.target)
		}
		slices.Sort(next)
		switch {
		case slices.Equal(next, targets):
		case len(next) == 0:
			ptr.delete(a)
		default:
			ptr.set(a, slices.Clone(next))
		}
	}
}

// addrsOf returns the addresses (unmapped, without zone) at which svcs
// may have PTRs: their ClusterIPs and their endpoints' addresses.
func addrsOf(svcs []*cluster.Service) []netip.Addr {
	var out []netip.Addr
	add := func(a netip.Addr) {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	for _, svc := range svcs {
		for _, a := range svc.ClusterIPs {
			add(a)
		}
		for _, ep := range svc.Endpoints {
			add(ep.Addr)
		}
		for _, p := range svc.Ports {
			for _, ep := range p.Endpoints {
				add(ep.Addr)
			}
		}
	}
	return out
}

// cutAddr splits ps, sorted by address, after its leading records of
// address a.
func cutAddr(ps []ptrRecord, a netip.Addr) (head, rest []ptrRecord) {
	i := 0
	for i < len(ps) && ps[i].addr == a {
		i++
	}
	return ps[:i], ps[i:]
}

// renderer renders one sub-zone.
type renderer struct {
	*subzone
	ptrs []ptrRecord // PTRs to the sub-zone's names, maybe twice
}

// renderSubzone renders svcs, the Services of one lower-case key in key
// order, under domain. It returns the sub-zone and its PTRs, sorted by
// address, then target.
func renderSubzone(svcs []*cluster.Service, domain string) (*subzone, []ptrRecord) {
	s := &renderer{subzone: &subzone{svcs: svcs, base: nameOfKey(svcs[0].ServiceKey).fqdn(domain), names: map[string]*node{}}}
	for _, svc := range svcs {
		s.addService(svc)
	}
	slices.SortFunc(s.ptrs, comparePTR)
	s.ptrs = slices.Compact(s.ptrs)
	s.records += len(s.ptrs)
	return s.subzone, s.ptrs
}

// get returns the node of name, at or under the sub-zone's base, creating
// it and its missing parents up to the base.
func (s *renderer) get(name string) *node {
	n := s.names[name]
	if n != nil {
		return n
	}
	n = &node{}
	s.names[name] = n
	for p := name; p != s.base; {
		i := strings.IndexByte(p, '.')
		if i < 0 {
			break
		}
		p = p[i+1:]
		if len(p) < len(s.base) || s.names[p] != nil {
			break
		}
		s.names[p] = &node{}
	}
	return n
}

// addPTR adds a PTR from a to target; duplicates go when rendering ends.
func (s *renderer) addPTR(a netip.Addr, target string) {
	if a.IsValid() {
		s.ptrs = append(s.ptrs, ptrRecord{addr: a.Unmap().WithZone(""), target: target})
	}
}

func addAddr(n *node, a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if slices.Contains(n.addrs, a) {
		return false
	}
	n.addrs = append(n.addrs, a)
	return true
}

func (s *renderer) addService(svc *cluster.Service) {
	name := s.base

	switch {
	case svc.Type == cluster.TypeExternalName:
		target := strings.TrimSpace(svc.ExternalName)
		if target == "" {
			return
		}
		if _, err := netip.ParseAddr(target); err == nil {
			// CoreDNS serves no record for an ExternalName that is an
			// address: it would not be a valid CNAME target.
			return
		}
		if _, ok := dns.IsDomainName(target); !ok {
			return
		}
		n := s.get(name)
		if n.cname == "" {
			s.records++
		}
		n.cname = dns.Fqdn(target)

	case svc.Headless:
		s.addHeadless(svc, name)

	default:
		n := s.get(name)
		for _, ip := range svc.ClusterIPs {
			if addAddr(n, ip) {
				s.records++
				s.addPTR(ip, name)
			}
		}
		var all []srvRecord
		for i, p := range svc.Ports {
			rec := srvRecord{port: uint16(p.Port), target: name, addrs: n.addrs}
			all = append(all, rec)
			if p.Name != "" {
				s.setSRV(srvName(p, name), []srvRecord{rec})
			}
			if slices.ContainsFunc(svc.Ports[:i], func(q *cluster.Port) bool { return sameEndpointNames(q.Endpoints, p.Endpoints) }) {
				continue // the PTRs of an earlier port's endpoints
			}
			s.ptrs = slices.Grow(s.ptrs, len(p.Endpoints))
			for _, ep := range p.Endpoints {
				if usable(svc, ep) {
					s.addPTR(ep.Addr, endpointLabel(ep)+"."+name)
				}
			}
		}
		s.setSRV(name, all)
	}
}

// sameEndpointNames tells whether two ports' endpoints have the same
// names and readiness, hence the same PTRs: the usual case of a Service's
// ports, all served by the same pods.
func sameEndpointNames(a, b []cluster.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y cluster.Endpoint) bool {
		return x.Addr == y.Addr && x.Hostname == y.Hostname && x.Ready == y.Ready
	})
}

func (s *renderer) addHeadless(svc *cluster.Service, name string) {
	var n *node
	for _, ep := range svc.Endpoints {
		if !usable(svc, ep) {
			continue
		}
		if n == nil {
			n = s.get(name)
		}
		if addAddr(n, ep.Addr) {
			s.records++
		}
		epName := endpointLabel(ep) + "." + name
		if addAddr(s.get(epName), ep.Addr) {
			s.records++
		}
		s.addPTR(ep.Addr, epName)
	}
	if n == nil {
		// No endpoint to publish: the name does not exist (NXDOMAIN), as
		// with CoreDNS.
		return
	}
	var all []srvRecord
	for _, p := range svc.Ports {
		var recs []srvRecord
		for _, ep := range p.Endpoints {
			if !usable(svc, ep) {
				continue
			}
			target := endpointLabel(ep) + "." + name
			if slices.ContainsFunc(recs, func(r srvRecord) bool { return r.target == target && r.port == uint16(ep.Port) }) {
				continue
			}
			tn := s.names[target]
			if tn == nil {
				// Ready for this port but not among the Service's
				// endpoints: publish it all the same.
				tn = s.get(target)
				addAddr(tn, ep.Addr)
				s.records++
			}
			recs = append(recs, srvRecord{port: uint16(ep.Port), target: target, addrs: tn.addrs})
		}
		all = append(all, recs...)
		if p.Name != "" && len(recs) > 0 {
			s.setSRV(srvName(p, name), recs)
		}
	}
	s.setSRV(name, all)
}

func srvName(p *cluster.Port, service string) string {
	return "_" + strings.ToLower(p.Name) + "._" + strings.ToLower(p.Protocol) + "." + service
}

// setSRV adds recs to the SRV records of name, weighted as CoreDNS does:
// one priority, weights sharing 100. A record already there (the same
// port and target) is not added again: an RRset holds no duplicates (RFC
// 2181 section 5), and a Service's ports with one number on two protocols
// (kube-dns: 53/UDP and 53/TCP) make the same SRV record, as do two
// Services whose names differ only in case.
func (s *renderer) setSRV(name string, recs []srvRecord) {
	if len(recs) == 0 {
		return
	}
	n := s.get(name)
	before := len(n.srv)
	var seen map[srvKey]bool
	if before+len(recs) > 16 {
		seen = make(map[srvKey]bool, before+len(recs))
		for _, r := range n.srv {
			seen[srvKey{r.port, r.target}] = true
		}
	}
	for _, r := range recs {
		k := srvKey{r.port, r.target}
		if seen != nil {
			if seen[k] {
				continue
			}
			seen[k] = true
		} else if slices.ContainsFunc(n.srv, func(o srvRecord) bool { return o.port == k.port && o.target == k.target }) {
			continue
		}
		n.srv = append(n.srv, r)
	}
	w := uint16(100 / len(n.srv))
	for i := range n.srv {
		n.srv[i].weight = w
	}
	s.records += len(n.srv) - before
}

// srvKey is what makes two SRV records of one name the same record: the
// priority is always 0 and the weight follows from their number.
type srvKey struct {
	port   uint16
	target string
}

// kubeDNSTargets returns the servers of kube-dns: its ready endpoints, with
// the UDP port named "dns" and the TCP port named "dns-tcp" (else port 53),
// then its ClusterIPs on port 53.
func kubeDNSTargets(svc *cluster.Service) ([]kubeDNSTarget, []netip.Addr) {
	var udp, tcp *cluster.Port
	for _, p := range svc.Ports {
		switch {
		case p.Name == "dns" && strings.EqualFold(p.Protocol, "UDP"):
			udp = p
		case p.Name == "dns-tcp" && strings.EqualFold(p.Protocol, "TCP"):
			tcp = p
		}
	}
	for _, p := range svc.Ports {
		if udp == nil && p.Port == 53 && strings.EqualFold(p.Protocol, "UDP") {
			udp = p
		}
		if tcp == nil && p.Port == 53 && strings.EqualFold(p.Protocol, "TCP") {
			tcp = p
		}
	}
	type ports struct{ udp, tcp uint16 }
	byAddr := map[netip.Addr]*ports{}
	var order []netip.Addr
	add := func(p *cluster.Port, tcpPort bool) {
		if p == nil {
			return
		}
		for _, ep := range p.Endpoints {
			if !ep.Ready || !ep.Addr.IsValid() || ep.Port <= 0 {
				continue
			}
			a := ep.Addr.Unmap()
			pp := byAddr[a]
			if pp == nil {
				pp = &ports{}
				byAddr[a] = pp
				order = append(order, a)
			}
			if tcpPort {
				pp.tcp = uint16(ep.Port)
			} else {
				pp.udp = uint16(ep.Port)
			}
		}
	}
	add(udp, false)
	add(tcp, true)
	var out []kubeDNSTarget
	for _, a := range order {
		pp := byAddr[a]
		u, t := pp.udp, pp.tcp
		if u == 0 {
			u = t
		}
		if t == 0 {
			t = u
		}
		out = append(out, kubeDNSTarget{UDP: netip.AddrPortFrom(a, u), TCP: netip.AddrPortFrom(a, t)})
	}
	var ips []netip.Addr
	for _, ip := range svc.ClusterIPs {
		ip = ip.Unmap()
		if slices.Contains(ips, ip) {
			continue // listed twice: one NS glue record, one server
		}
		ips = append(ips, ip)
		out = append(out, kubeDNSTarget{UDP: netip.AddrPortFrom(ip, 53), TCP: netip.AddrPortFrom(ip, 53)})
	}
	return out, ips
}

// nameClass says who answers a name.
type nameClass int

const (
	classHost    nameClass = iota // the host's upstreams
	classZone                     // our zone
	classKubeDNS                  // kube-dns
	classReverse                  // our PTRs, else the host's upstreams
)

// classify maps a lower-case FQDN to who answers it and, for the zone, its
// canonical name under the cluster domain and the apex of the zone the
// asker sees (for the SOA of negative answers).
func (s *Server) classify(name string) (class nameClass, canonical, apex string) {
	domain := s.domain
	if name == domain || strings.HasSuffix(name, "."+domain) {
		rel := strings.TrimSuffix(strings.TrimSuffix(name, domain), ".")
		if rel == "" || rel == "dns-version" || rel == "svc" || strings.HasSuffix(rel, ".svc") {
			return classZone, name, domain
		}
		return classKubeDNS, "", ""
	}
	if name == "svc." || strings.HasSuffix(name, ".svc.") {
		return classZone, name + domain, "svc."
	}
	if len(s.nsDomains) > 0 {
		last := name
		if i := strings.LastIndexByte(strings.TrimSuffix(name, "."), '.'); i >= 0 {
			last = name[i+1:]
		}
		if s.nsDomains[last] {
			return classZone, strings.TrimSuffix(name, last) + last[:len(last)-1] + ".svc." + domain, last
		}
	}
	if strings.HasSuffix(name, ".in-addr.arpa.") || strings.HasSuffix(name, ".ip6.arpa.") {
		return classReverse, name, ""
	}
	return classHost, "", ""
}

// answer is the zone's reply to one question.
type answer struct {
	rcode  int
	answer []dns.RR
	ns     []dns.RR
	extra  []dns.RR
	// chase is the CNAME target to follow, as written.
	chase string
}

func (z *zone) hdr(owner string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: z.ttl}
}

// soa is the zone's SOA, owned by apex (the zone as the asker sees it).
func (z *zone) soa(apex string) dns.RR {
	return &dns.SOA{
		Hdr:     z.hdr(apex, dns.TypeSOA),
		Ns:      "ns.dns." + z.domain,
		Mbox:    "hostmaster." + z.domain,
		Serial:  z.serial,
		Refresh: soaRefresh,
		Retry:   soaRetry,
		Expire:  soaExpire,
		Minttl:  z.ttl,
	}
}

func (z *zone) addrRRs(owner string, addrs []netip.Addr, qtype uint16) []dns.RR {
	var out []dns.RR
	for _, a := range addrs {
		switch {
		case a.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
			out = append(out, &dns.A{Hdr: z.hdr(owner, dns.TypeA), A: a.AsSlice()})
		case a.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			out = append(out, &dns.AAAA{Hdr: z.hdr(owner, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	return out
}

// lookup answers (canonical, qtype) with owner as the answer's owner name
// (the name as asked) and apex as the owner of the SOA.
func (z *zone) lookup(owner, canonical, apex string, qtype uint16) answer {
	n := z.find(canonical)
	if n == nil {
		return answer{rcode: dns.RcodeNameError, ns: []dns.RR{z.soa(apex)}}
	}
	var a answer
	if n.cname != "" {
		a.answer = []dns.RR{&dns.CNAME{Hdr: z.hdr(owner, dns.TypeCNAME), Target: n.cname}}
		if qtype != dns.TypeCNAME && qtype != dns.TypeANY {
			a.chase = n.cname
		}
		return a
	}
	switch qtype {
	case dns.TypeA, dns.TypeAAAA:
		a.answer = z.addrRRs(owner, n.addrs, qtype)
	case dns.TypeSRV:
		a.answer, a.extra = z.srvRRs(owner, n)
	case dns.TypeTXT:
		a.answer = z.txtRRs(owner, n)
	case dns.TypeSOA:
		if n.apex {
			a.answer = []dns.RR{z.soa(owner)}
		}
	case dns.TypeNS:
		if n.apex {
			a.answer, a.extra = z.nsRRs(owner)
		}
	case dns.TypeANY:
		a.answer = z.addrRRs(owner, n.addrs, qtype)
		srv, _ := z.srvRRs(owner, n)
		a.answer = append(a.answer, srv...)
		a.answer = append(a.answer, z.txtRRs(owner, n)...)
		if n.apex {
			a.answer = append(a.answer, z.soa(owner))
			ns, _ := z.nsRRs(owner)
			a.answer = append(a.answer, ns...)
		}
	}
	if len(a.answer) == 0 {
		a.ns = []dns.RR{z.soa(apex)}
	}
	return a
}

func (z *zone) srvRRs(owner string, n *node) (answer, extra []dns.RR) {
	var seen map[string]bool
	for _, r := range n.srv {
		answer = append(answer, &dns.SRV{Hdr: z.hdr(owner, dns.TypeSRV), Priority: 0, Weight: r.weight, Port: r.port, Target: r.target})
		if seen[r.target] {
			continue
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[r.target] = true
		extra = append(extra, z.addrRRs(r.target, r.addrs, dns.TypeA)...)
		extra = append(extra, z.addrRRs(r.target, r.addrs, dns.TypeAAAA)...)
	}
	return answer, extra
}

func (z *zone) txtRRs(owner string, n *node) []dns.RR {
	if len(n.txt) == 0 {
		return nil
	}
	return []dns.RR{&dns.TXT{Hdr: z.hdr(owner, dns.TypeTXT), Txt: n.txt}}
}

func (z *zone) nsRRs(owner string) (answer, extra []dns.RR) {
	target := "ns.dns." + z.domain
	answer = []dns.RR{&dns.NS{Hdr: z.hdr(owner, dns.TypeNS), Ns: target}}
	extra = append(z.addrRRs(target, z.kubeDNSIPs, dns.TypeA), z.addrRRs(target, z.kubeDNSIPs, dns.TypeAAAA)...)
	return answer, extra
}

// find returns the node of name, a lower-case FQDN, or nil when the zone
// has no such name.
func (z *zone) find(name string) *node {
	rel, ok := strings.CutSuffix(name, z.domain)
	if !ok {
		return nil
	}
	switch rel {
	case "":
		return apexNode
	case "svc.":
		return emptyNode
	case "dns-version.":
		return versionNode
	}
	// <labels>.<name>.<ns>.svc.: the sub-zone of the Service <ns>/<name>.
	rest, ok := strings.CutSuffix(rel, ".svc.")
	if !ok {
		return nil
	}
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		if z.namespaces[rest] > 0 {
			return emptyNode
		}
		return nil
	}
	ns, rest := rest[i+1:], rest[:i]
	sub, _ := z.subs.get(svcName{ns: ns, name: rest[strings.LastIndexByte(rest, '.')+1:]})
	if sub == nil {
		return nil
	}
	return sub.names[name]
}

// lookupPTR answers a reverse name the zone knows (name in lower case);
// ok is false otherwise.
func (z *zone) lookupPTR(owner, name string) (rrs []dns.RR, ok bool) {
	a, ok := parseReverse(name)
	if !ok {
		return nil, false
	}
	targets, _ := z.ptr.get(a)
	for _, t := range targets {
		rrs = append(rrs, &dns.PTR{Hdr: z.hdr(owner, dns.TypePTR), Ptr: t})
	}
	return rrs, len(targets) > 0
}

// parseReverse returns the address of a lower-case reverse name written
// as dns.ReverseAddr writes it: four decimal labels without leading zeros
// under in-addr.arpa., or 32 hexadecimal nibbles under ip6.arpa. Any other
// spelling is no address of ours (ok false).
func parseReverse(name string) (a netip.Addr, ok bool) {
	if rest, found := strings.CutSuffix(name, ".in-addr.arpa."); found {
		var b [4]byte
		for i := range b {
			l, next, more := strings.Cut(rest, ".")
			if more != (i < len(b)-1) || l == "" || len(l) > 3 || (l[0] == '0' && len(l) > 1) {
				return a, false
			}
			rest = next
			v := 0
			for _, c := range []byte(l) {
				if c < '0' || c > '9' {
					return a, false
				}
				v = 10*v + int(c-'0')
			}
			if v > 255 {
				return a, false
			}
			b[len(b)-1-i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	}
	if rest, found := strings.CutSuffix(name, ".ip6.arpa."); found {
		var b [16]byte
		const nibbles = 2 * len(b)
		if len(rest) != 2*nibbles-1 {
			return a, false
		}
		for i := range nibbles {
			if i > 0 && rest[2*i-1] != '.' {
				return a, false
			}
			v := strings.IndexByte("0123456789abcdef", rest[2*i])
			if v < 0 {
				return a, false
			}
			// The least significant nibble comes first.
			b[len(b)-1-i/2] |= byte(v) << (4 * (i % 2))
		}
		return netip.AddrFrom16(b), true
	}
	return a, false
}
