package dnsstub

import (
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
// are lower-case FQDNs.
type zone struct {
	domain  string // "cluster.local."
	ttl     uint32
	serial  uint32
	version uint64
	names   map[string]*node
	// ptr maps reverse names (in-addr.arpa., ip6.arpa.) to the names they
	// point at.
	ptr map[string][]string
	// kubeDNS are the servers of cluster names we do not serve, in the
	// order to try them.
	kubeDNS []kubeDNSTarget
	// kubeDNSIPs are kube-dns's ClusterIPs, glue for the apex NS.
	kubeDNSIPs []netip.Addr
	records    int
	// replies are the packed UDP replies of this zone's answers, by
	// question as asked (see fastpath.go); a new zone starts empty.
	replies *replyCache
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

// buildZone renders the zone of snap under domain ("cluster.local.").
func buildZone(snap *cluster.Snapshot, domain string, ttl uint32) *zone {
	z := &zone{
		domain:  domain,
		ttl:     ttl,
		serial:  uint32(snap.Version),
		version: snap.Version,
		names:   make(map[string]*node, 3*len(snap.Services)+4),
		ptr:     map[string][]string{},
		replies: newReplyCache(replyCacheGeneration),
	}
	z.names[domain] = &node{apex: true}
	z.names["svc."+domain] = &node{}
	z.names["dns-version."+domain] = &node{txt: []string{dnsSchemaVersion}}
	z.records += 3 // SOA, NS, TXT

	for _, svc := range snap.SortedServices() {
		z.addService(svc)
	}
	for _, targets := range z.ptr {
		slices.Sort(targets)
	}
	if kd := snap.Services[kubeDNSKey]; kd != nil {
		z.kubeDNS, z.kubeDNSIPs = kubeDNSTargets(kd)
	}
	return z
}

// get returns the node of name, creating it and its missing parents up to
// the domain.
func (z *zone) get(name string) *node {
	n := z.names[name]
	if n != nil {
		return n
	}
	n = &node{}
	z.names[name] = n
	for p := name; ; {
		i := strings.IndexByte(p, '.')
		if i < 0 || i == len(p)-1 {
			break
		}
		p = p[i+1:]
		if len(p) <= len(z.domain) || z.names[p] != nil {
			break
		}
		z.names[p] = &node{}
	}
	return n
}

func (z *zone) addPTR(a netip.Addr, target string) {
	rev, err := dns.ReverseAddr(a.Unmap().WithZone("").String())
	if err != nil {
		return
	}
	if !slices.Contains(z.ptr[rev], target) {
		z.ptr[rev] = append(z.ptr[rev], target)
		z.records++
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

func (z *zone) addService(svc *cluster.Service) {
	ns := strings.ToLower(svc.Namespace)
	nsName := ns + ".svc." + z.domain
	z.get(nsName)
	name := strings.ToLower(svc.Name) + "." + nsName

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
		z.get(name).cname = dns.Fqdn(target)
		z.records++

	case svc.Headless:
		z.addHeadless(svc, name)

	default:
		n := z.get(name)
		for _, ip := range svc.ClusterIPs {
			if addAddr(n, ip) {
				z.records++
				z.addPTR(ip, name)
			}
		}
		var all []srvRecord
		for _, p := range svc.Ports {
			rec := srvRecord{port: uint16(p.Port), target: name, addrs: n.addrs}
			all = append(all, rec)
			if p.Name != "" {
				z.setSRV(srvName(p, name), []srvRecord{rec})
			}
			for _, ep := range p.Endpoints {
				if usable(svc, ep) {
					z.addPTR(ep.Addr, endpointLabel(ep)+"."+name)
				}
			}
		}
		z.setSRV(name, all)
	}
}

func (z *zone) addHeadless(svc *cluster.Service, name string) {
	var n *node
	for _, ep := range svc.Endpoints {
		if !usable(svc, ep) {
			continue
		}
		if n == nil {
			n = z.get(name)
		}
		if addAddr(n, ep.Addr) {
			z.records++
		}
		epName := endpointLabel(ep) + "." + name
		if addAddr(z.get(epName), ep.Addr) {
			z.records++
		}
		z.addPTR(ep.Addr, epName)
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
			tn := z.names[target]
			if tn == nil {
				// Ready for this port but not among the Service's
				// endpoints: publish it all the same.
				tn = z.get(target)
				addAddr(tn, ep.Addr)
				z.records++
			}
			recs = append(recs, srvRecord{port: uint16(ep.Port), target: target, addrs: tn.addrs})
		}
		all = append(all, recs...)
		if p.Name != "" && len(recs) > 0 {
			z.setSRV(srvName(p, name), recs)
		}
	}
	z.setSRV(name, all)
}

func srvName(p *cluster.Port, service string) string {
	return "_" + strings.ToLower(p.Name) + "._" + strings.ToLower(p.Protocol) + "." + service
}

// setSRV sets the SRV records of name, weighted as CoreDNS does: one
// priority, weights sharing 100.
func (z *zone) setSRV(name string, recs []srvRecord) {
	if len(recs) == 0 {
		return
	}
	w := uint16(100 / len(recs))
	for i := range recs {
		recs[i].weight = w
	}
	n := z.get(name)
	n.srv = append(n.srv, recs...)
	z.records += len(recs)
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
	n := z.names[canonical]
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

// lookupPTR answers a reverse name the zone knows; ok is false otherwise.
func (z *zone) lookupPTR(owner, name string) (rrs []dns.RR, ok bool) {
	targets := z.ptr[name]
	for _, t := range targets {
		rrs = append(rrs, &dns.PTR{Hdr: z.hdr(owner, dns.TypePTR), Ptr: t})
	}
	return rrs, len(targets) > 0
}
