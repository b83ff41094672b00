package proxy

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// nftModel is the desired content of one family's table as groups of
// elements, one group per Service, plus reference counts of what groups
// share (hairpin elements and the pick and affinity chains). The backend
// keeps it between syncs and patches it: a sync renders only the Services
// whose *cluster.Service changed (Services in a snapshot are immutable, and
// an unchanged Service keeps its pointer), and sends only the difference of
// their groups. Rendering a whole snapshot into a new model gives the same
// content as patching one, which the tests check after every step.
//
// The model also keeps the position of each endpoint of a Service port with
// session affinity: affinity records name a position, so an endpoint keeps
// its position for as long as it stays, a new endpoint takes the first free
// one, and positions are renumbered only when more than half are free.
type nftModel struct {
	fam     Family
	opts    NFTRenderInput // Snapshot unused
	famWord string
	// key is the key of service-ips and no-endpoints in rules (protocol
	// and port of any transport header); see protoKey for the others.
	key string

	groups    map[cluster.ServiceKey]*nftGroup
	hairpin   map[netip.Addr]int
	picks     map[[2]int]int // {protocol, endpoint count} → uses
	affinity  map[[4]int]int // {protocol, positions, count, timeout} → uses
	posChains map[[3]int]int // {protocol, timeout, position} → uses
	counts    NFTRenderStats // the per-Service counts, summed
	elements  int            // elements of all groups (hairpin excepted)
	static    []NFTChain     // base chains, then services and mark-for-masquerade
	fixedSets []NFTSet       // service-ips, no-endpoints, hairpin, without elements
	addrType  string         // ipv4_addr or ipv6_addr
}

// nftGroup is what one Service contributes to the table.
type nftGroup struct {
	// elements holds the Service's elements by set name, in its port
	// order.
	elements map[string][]NFTElement
	hairpin  []netip.Addr // sorted, unique
	picks    [][2]int
	affinity [][4]int
	counts   NFTRenderStats
	local    bool
	// positions holds, per port with session affinity ("name/proto"), the
	// endpoint at each position; an invalid AddrPort is a free position.
	positions map[string][]netip.AddrPort
}

// nftProtocols are the protocols the agent proxies, in the order of their
// per-protocol maps, sets and chains.
var nftProtocols = [...]string{"tcp", "udp", "sctp"}

const nftProtoCount = len(nftProtocols)

// protoIndex returns the index in nftProtocols of an nft protocol name.
func protoIndex(proto string) int {
	for i, p := range nftProtocols {
		if p == proto {
			return i
		}
	}
	panic("nftables: unknown protocol " + proto)
}

// Bases of the names of the per-protocol, per-index maps, sets and chains
// (indexName): endpoints-R-PROTO holds the R-th endpoint of every Service
// port, and the chain endpoint-R-PROTO DNATs to it; see doc.go.
const (
	nftEndpointChain     = "endpoint"
	nftAffinityClients   = "affinity-clients"
	nftAffinityHeld      = "affinity-held"
	nftAffinitySlots     = "affinity-slots"
	nftAffinitySlotChain = "affinity-slot"
)

// protoName returns the name of a chain base for protocol index p
// (nftProtocols): "pick-2-udp".
func protoName(base string, p int) string {
	return base + "-" + nftProtocols[p]
}

// indexName returns the name of the per-protocol, per-index map, set or
// chain base with index i for protocol index p: "endpoints-0-tcp".
func indexName(base string, i, p int) string {
	return base + "-" + strconv.Itoa(i) + "-" + nftProtocols[p]
}

// protoKey is the key of the per-protocol maps and sets: the destination
// address and port, the port read as the protocol's own field, so that
// every rule using them tests its chain's protocol (nft adds "meta l4proto
// PROTO" before the port).
func (m *nftModel) protoKey(p int) string {
	return m.famWord + " daddr . " + nftProtocols[p] + " dport"
}

// newNFTModel renders the snapshot of in. Positions of endpoints of Service
// ports with session affinity are taken from prev (nil: numbered in order).
func newNFTModel(in NFTRenderInput, prev map[cluster.ServiceKey]*nftGroup) (*nftModel, error) {
	if !in.Family.valid() {
		return nil, fmt.Errorf("render nftables: unknown IP family %d", in.Family)
	}
	if in.MasqueradeMark == 0 {
		in.MasqueradeMark = DefaultMasqueradeMark
	}
	snap := in.Snapshot
	in.Snapshot = nil
	fam, addrType := nftFamily(in.Family)
	m := &nftModel{
		fam: in.Family, opts: in, famWord: fam, addrType: addrType,
		key:       fam + " daddr . meta l4proto . th dport",
		groups:    map[cluster.ServiceKey]*nftGroup{},
		hairpin:   map[netip.Addr]int{},
		picks:     map[[2]int]int{},
		affinity:  map[[4]int]int{},
		posChains: map[[3]int]int{},
	}
	m.static, m.fixedSets = m.fixed(addrType)
	if snap != nil {
		m.groups = make(map[cluster.ServiceKey]*nftGroup, len(snap.Services))
		for k, svc := range snap.Services {
			if g := m.render(svc, prev[k]); g != nil {
				m.add(k, g)
			}
		}
	}
	return m, nil
}

// fixed returns the chains and sets that every ruleset of the family has.
func (m *nftModel) fixed(addrType string) ([]NFTChain, []NFTSet) {
	fam, key := m.famWord, m.key
	mark := fmt.Sprintf("%#x", m.opts.MasqueradeMark)
	base := func(typ, hook string, prio int) string {
		return fmt.Sprintf("type %s hook %s priority %d; policy accept;", typ, hook, prio)
	}
	rejectRule := "ct state new " + key + " @" + nftNoEndpoints + " reject"
	chains := []NFTChain{
		{Name: nftNATOutput, Base: base("nat", "output", nftPriorityDNAT), Rules: []string{"jump " + nftServices}},
		{Name: nftNATPrerouting, Base: base("nat", "prerouting", nftPriorityDNAT), Rules: []string{"jump " + nftServices}},
		{Name: nftNATPostrouting, Base: base("nat", "postrouting", nftPrioritySNAT), Rules: []string{
			// Clear the mark, so that a packet traversing the stack again
			// (after IPsec or tunnel encapsulation) is not masqueraded twice.
			"meta mark & " + mark + " == " + mark + " meta mark set meta mark ^ " + mark + " masquerade fully-random",
			// Hairpin: an endpoint that reached itself through its Service
			// would get replies from itself; masquerade so that they come
			// back through this host's conntrack.
			"ct status dnat " + fam + " saddr . " + fam + " daddr @" + nftHairpin + " masquerade fully-random",
		}},
		{Name: nftFilterOutput, Base: base("filter", "output", nftPriorityFilter), Rules: []string{rejectRule}},
		{Name: nftFilterForward, Base: base("filter", "forward", nftPriorityFilter), Rules: []string{rejectRule}},
		// Masquerading is marked in the chains service-ips sends to
		// (pick and affinity): kernels before 6.4 reject a map used as
		// a plain set ("@service-ips jump ..."), see doc.go.
		{Name: nftServices, Rules: []string{key + " vmap @" + nftServiceIPs}},
		{Name: nftMarkMasq, Rules: []string{"meta mark set meta mark | " + mark}},
	}
	sets := []NFTSet{
		{Name: nftServiceIPs, Map: true, Decl: "type " + addrType + " . inet_proto . inet_service : verdict;"},
		{Name: nftNoEndpoints, Decl: "type " + addrType + " . inet_proto . inet_service;"},
		{Name: nftHairpin, Decl: "type " + addrType + " . " + addrType + ";"},
	}
	return m.withCounters(chains, sets)
}

// indexSetDecl returns the declaration of a per-index map or set (see
// indexName) whose name starts with base.
func (m *nftModel) indexSetDecl(base, name string) NFTSet {
	a := m.addrType
	switch base {
	case nftEndpoints:
		return NFTSet{Name: name, Map: true, Decl: "type " + a + " . inet_service : " + a + " . inet_service;"}
	case nftAffinitySlots:
		return NFTSet{Name: name, Map: true, Decl: "type " + a + " . inet_service : verdict;"}
	case nftAffinityHeld:
		return NFTSet{Name: name, Decl: "type " + a + " . inet_service;"}
	}
	return NFTSet{Name: name, Dynamic: true, Decl: fmt.Sprintf("type %s . %s . inet_service; flags dynamic,timeout; size %d;", a, a, nftAffinitySize)}
}

// indexCounts returns, per protocol, how many endpoints-R maps (and
// endpoint-R chains of pick chains), affinity positions (affinity-clients
// and affinity-held sets) and affinity slots (affinity-slots maps and
// affinity-slot chains) the chains in use need: the largest endpoint count
// of a pick chain, number of positions and occupied count of an affinity
// chain.
func (m *nftModel) indexCounts() (picks, positions, slots [nftProtoCount]int) {
	for pn := range m.picks {
		picks[pn[0]] = max(picks[pn[0]], pn[1])
	}
	for a := range m.affinity {
		positions[a[0]] = max(positions[a[0]], a[1])
		slots[a[0]] = max(slots[a[0]], a[2])
	}
	return picks, positions, slots
}

// setDecls returns the declarations of the model's maps and sets, without
// elements: the fixed ones, then the per-index ones in name order.
func (m *nftModel) setDecls() []NFTSet {
	picks, positions, slots := m.indexCounts()
	var idx []NFTSet
	for p := range nftProtoCount {
		for i := range max(picks[p], positions[p]) {
			idx = append(idx, m.indexSetDecl(nftEndpoints, indexName(nftEndpoints, i, p)))
		}
		for i := range positions[p] {
			idx = append(idx, m.indexSetDecl(nftAffinityClients, indexName(nftAffinityClients, i, p)),
				m.indexSetDecl(nftAffinityHeld, indexName(nftAffinityHeld, i, p)))
		}
		for r := range slots[p] {
			idx = append(idx, m.indexSetDecl(nftAffinitySlots, indexName(nftAffinitySlots, r, p)))
		}
	}
	slices.SortFunc(idx, func(a, b NFTSet) int { return compareChainNames(a.Name, b.Name) })
	return append(slices.Clone(m.fixedSets), idx...)
}

// render returns the group of one Service, or nil when it gets no rule in
// this family. old is its previous group, for the endpoint positions.
func (m *nftModel) render(svc *cluster.Service, old *nftGroup) *nftGroup {
	if !svc.Proxied || svc.Headless || svc.Type == cluster.TypeExternalName {
		return nil
	}
	var ips []netip.Addr
	for _, ip := range svc.ClusterIPs {
		if m.fam.Contains(ip) {
			ips = append(ips, ip)
		}
	}
	if len(ips) == 0 {
		return nil
	}
	g := &nftGroup{elements: map[string][]NFTElement{}}
	add := func(set string, e NFTElement) { g.elements[set] = append(g.elements[set], e) }
	rendered := false
	timeout := 0
	if t := svc.SessionAffinityTimeout; t > 0 {
		timeout = int(math.Ceil(t.Seconds()))
	}
	for _, port := range svc.Ports {
		proto := protocolName(port.Protocol)
		if proto == "" {
			continue
		}
		rendered = true
		g.counts.ServicePorts++
		name := servicePortName(svc.ServiceKey, port.Name)
		for _, ip := range ips {
			add(nftServiceCounters, counterElement(ip, proto, port.Port, name))
		}
		sel := SelectEndpoints(svc, port, m.fam, m.opts.Zone)
		if len(sel.Endpoints) == 0 {
			g.counts.NoEndpoints++
			for _, ip := range ips {
				add(nftNoEndpoints, NFTElement{Key: svcKey(ip, proto, port.Port), Comment: name})
			}
			continue
		}
		if sel.Terminating {
			g.counts.Terminating++
		}
		if sel.Zonal {
			g.counts.Zonal++
		}
		for _, ep := range sel.Endpoints {
			g.hairpin = append(g.hairpin, ep.Addr)
		}
		pi := protoIndex(proto)
		if timeout == 0 {
			n := len(sel.Endpoints)
			g.counts.Endpoints += n
			g.picks = append(g.picks, [2]int{pi, n})
			verdict := "goto " + pickChain(pi, n)
			for _, ip := range ips {
				add(nftServiceIPs, NFTElement{Key: svcKey(ip, proto, port.Port), Value: verdict, Comment: name})
				k := protoKeyElement(ip, port.Port)
				for i, ep := range sel.Endpoints {
					add(indexName(nftEndpoints, i, pi), NFTElement{Key: k, Value: endpointValue(ep.AddrPort())})
				}
			}
			continue
		}
		id := port.Name + "/" + proto
		var prev []netip.AddrPort
		if old != nil {
			prev = old.positions[id]
		}
		pos := assignPositions(prev, sel.Endpoints)
		if g.positions == nil {
			g.positions = map[string][]netip.AddrPort{}
		}
		g.positions[id] = pos
		n := 0
		for _, ap := range pos {
			if ap.IsValid() {
				n++
			}
		}
		g.counts.Endpoints += n
		g.affinity = append(g.affinity, [4]int{pi, len(pos), n, timeout})
		verdict := "goto " + affinityChain(pi, len(pos), n, timeout)
		for _, ip := range ips {
			add(nftServiceIPs, NFTElement{Key: svcKey(ip, proto, port.Port), Value: verdict, Comment: name})
			k := protoKeyElement(ip, port.Port)
			r := 0
			for i, ap := range pos {
				if !ap.IsValid() {
					continue
				}
				add(indexName(nftEndpoints, i, pi), NFTElement{Key: k, Value: endpointValue(ap)})
				add(indexName(nftAffinityHeld, i, pi), NFTElement{Key: k})
				add(indexName(nftAffinitySlots, r, pi), NFTElement{Key: k, Value: "goto " + affinityPosChain(pi, timeout, i)})
				r++
			}
		}
	}
	if !rendered {
		return nil
	}
	g.counts.Services = 1
	g.local = svc.InternalTrafficLocal
	slices.SortFunc(g.hairpin, func(a, b netip.Addr) int { return a.Compare(b) })
	g.hairpin = slices.Compact(g.hairpin)
	return g
}

func endpointValue(ap netip.AddrPort) string {
	return ap.Addr().String() + " . " + strconv.Itoa(int(ap.Port()))
}

// assignPositions numbers the endpoints of a Service port with session
// affinity: endpoints in prev keep their position, new ones (in order) take
// the first free positions, then new ones at the end. Trailing free
// positions are dropped, and when more than half of the positions would be
// free, endpoints from the end move into the free ones.
func assignPositions(prev []netip.AddrPort, eps []cluster.Endpoint) []netip.AddrPort {
	want := make(map[netip.AddrPort]bool, len(eps))
	for _, ep := range eps {
		want[ep.AddrPort()] = true
	}
	pos := make([]netip.AddrPort, 0, max(len(prev), len(eps)))
	for _, ap := range prev {
		if want[ap] {
			delete(want, ap)
		} else {
			ap = netip.AddrPort{}
		}
		pos = append(pos, ap)
	}
	free := 0
	for _, ep := range eps {
		ap := ep.AddrPort()
		if !want[ap] {
			continue
		}
		delete(want, ap)
		for free < len(pos) && pos[free].IsValid() {
			free++
		}
		if free < len(pos) {
			pos[free] = ap
		} else {
			pos = append(pos, ap)
		}
	}
	trim := func() {
		for len(pos) > 0 && !pos[len(pos)-1].IsValid() {
			pos = pos[:len(pos)-1]
		}
	}
	trim()
	n := 0
	for _, ap := range pos {
		if ap.IsValid() {
			n++
		}
	}
	if len(pos) > 2*n {
		for i := 0; i < len(pos); i++ {
			if !pos[i].IsValid() {
				pos[i] = pos[len(pos)-1]
				pos = pos[:len(pos)-1]
				trim()
			}
		}
	}
	if len(pos) == 0 {
		return nil
	}
	return pos
}

// add puts g in the model under k; k must have no group.
func (m *nftModel) add(k cluster.ServiceKey, g *nftGroup) {
	m.groups[k] = g
	for _, a := range g.hairpin {
		m.hairpin[a]++
	}
	for _, n := range g.picks {
		m.picks[n]++
	}
	for _, a := range g.affinity {
		m.affinity[a]++
		for i := range a[1] {
			m.posChains[[3]int{a[0], a[3], i}]++
		}
	}
	m.sumCounts(&g.counts, 1)
	m.elements += g.size()
}

// remove takes the group of k out of the model.
func (m *nftModel) remove(k cluster.ServiceKey) {
	g := m.groups[k]
	if g == nil {
		return
	}
	delete(m.groups, k)
	for _, a := range g.hairpin {
		if m.hairpin[a]--; m.hairpin[a] <= 0 {
			delete(m.hairpin, a)
		}
	}
	for _, n := range g.picks {
		if m.picks[n]--; m.picks[n] <= 0 {
			delete(m.picks, n)
		}
	}
	for _, a := range g.affinity {
		if m.affinity[a]--; m.affinity[a] <= 0 {
			delete(m.affinity, a)
		}
		for i := range a[1] {
			pc := [3]int{a[0], a[3], i}
			if m.posChains[pc]--; m.posChains[pc] <= 0 {
				delete(m.posChains, pc)
			}
		}
	}
	m.sumCounts(&g.counts, -1)
	m.elements -= g.size()
}

func (g *nftGroup) size() int {
	n := 0
	for _, els := range g.elements {
		n += len(els)
	}
	return n
}

func (m *nftModel) sumCounts(c *NFTRenderStats, sign int) {
	m.counts.Services += sign * c.Services
	m.counts.ServicePorts += sign * c.ServicePorts
	m.counts.Endpoints += sign * c.Endpoints
	m.counts.NoEndpoints += sign * c.NoEndpoints
	m.counts.Terminating += sign * c.Terminating
	m.counts.Zonal += sign * c.Zonal
}

// chains returns the chains of the model: base chains, then regular ones by
// name.
func (m *nftModel) chains() []NFTChain {
	fam := m.famWord
	out := slices.Clone(m.static[:5])
	regular := slices.Clone(m.static[5:])
	var markRule []string
	if m.opts.Masquerade {
		markRule = []string{"jump " + nftMarkMasq}
	}
	// pickRule sends to chain base-R-PROTO, R random below n.
	pickRule := func(base string, p, n int) string {
		if n == 1 {
			return "goto " + indexName(base, 0, p)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "numgen random mod %d vmap { ", n)
		for r := range n {
			if r > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%d : goto %s", r, indexName(base, r, p))
		}
		b.WriteString(" }")
		return b.String()
	}
	for pn := range m.picks {
		p, n := pn[0], pn[1]
		regular = append(regular, NFTChain{Name: pickChain(p, n), Rules: append(slices.Clone(markRule), pickRule(nftEndpointChain, p, n))})
	}
	for a := range m.affinity {
		p, c, n, t := a[0], a[1], a[2], a[3]
		key := m.protoKey(p)
		rules := make([]string, 0, c+2)
		rules = append(rules, markRule...)
		for i := range c {
			// A client recorded for position i goes there again, as long
			// as an endpoint holds it.
			rules = append(rules, fmt.Sprintf("%s saddr . %s @%s %s @%s goto %s",
				fam, key, indexName(nftAffinityClients, i, p), key, indexName(nftAffinityHeld, i, p), affinityPosChain(p, t, i)))
		}
		rules = append(rules, pickRule(nftAffinitySlotChain, p, n))
		regular = append(regular, NFTChain{Name: affinityChain(p, c, n, t), Rules: rules})
	}
	for pti := range m.posChains {
		p, t, i := pti[0], pti[1], pti[2]
		key := m.protoKey(p)
		regular = append(regular, NFTChain{Name: affinityPosChain(p, t, i), Rules: []string{
			fmt.Sprintf("update @%s { %s saddr . %s timeout %ds }", indexName(nftAffinityClients, i, p), fam, key, t),
			m.dnatRule(p, i),
		}})
	}
	picks, _, slots := m.indexCounts()
	for p := range nftProtoCount {
		for r := range picks[p] {
			regular = append(regular, NFTChain{Name: indexName(nftEndpointChain, r, p), Rules: []string{m.dnatRule(p, r)}})
		}
		for r := range slots[p] {
			regular = append(regular, NFTChain{Name: indexName(nftAffinitySlotChain, r, p), Rules: []string{
				m.protoKey(p) + " vmap @" + indexName(nftAffinitySlots, r, p),
			}})
		}
	}
	slices.SortFunc(regular, func(a, b NFTChain) int { return compareChainNames(a.Name, b.Name) })
	return append(out, regular...)
}

// dnatRule DNATs to the endpoint at index i of the destination Service
// port. "addr . port to" is the form nft 0.9.8 parses (later versions list
// it as "dnat ip to ...").
func (m *nftModel) dnatRule(p, i int) string {
	return "dnat " + m.famWord + " addr . port to " + m.protoKey(p) + " map @" + indexName(nftEndpoints, i, p)
}

func compareServiceKeys(a, b cluster.ServiceKey) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

func hairpinElement(a netip.Addr) NFTElement {
	s := a.String()
	return NFTElement{Key: s + " . " + s}
}

// ruleset returns the model's whole content: Services in key order, their
// elements in port order.
func (m *nftModel) ruleset() *NFTRuleset {
	keys := make([]cluster.ServiceKey, 0, len(m.groups))
	for k := range m.groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareServiceKeys)
	rs := &NFTRuleset{Family: m.fam, Chains: m.chains(), Sets: m.setDecls()}
	index := make(map[string]int, len(rs.Sets))
	for i := range rs.Sets {
		index[rs.Sets[i].Name] = i
	}
	sizes := make([]int, len(rs.Sets))
	for _, k := range keys {
		for name, els := range m.groups[k].elements {
			sizes[index[name]] += len(els)
		}
	}
	for i := range rs.Sets {
		if sizes[i] > 0 {
			rs.Sets[i].Elements = make([]NFTElement, 0, sizes[i])
		}
	}
	for _, k := range keys {
		for name, els := range m.groups[k].elements {
			i := index[name]
			rs.Sets[i].Elements = append(rs.Sets[i].Elements, els...)
		}
	}
	hairpins := make([]NFTElement, 0, len(m.hairpin))
	for a := range m.hairpin {
		hairpins = append(hairpins, hairpinElement(a))
	}
	slices.SortFunc(hairpins, func(a, b NFTElement) int { return strings.Compare(a.Key, b.Key) })
	rs.Sets[index[nftHairpin]].Elements = hairpins
	return rs
}

// renderStats returns the model's counts; LocalPolicyIgnored only with
// local (it walks every Service).
func (m *nftModel) renderStats(local bool) NFTRenderStats {
	st := m.counts
	for _, c := range m.chains() {
		st.Chains++
		st.Rules += len(c.Rules)
		if strings.HasPrefix(c.Base, "type filter") {
			st.FilterRules += len(c.Rules)
		} else {
			st.NATRules += len(c.Rules)
		}
	}
	st.Elements = m.elements + len(m.hairpin)
	if local {
		for k, g := range m.groups {
			if g.local {
				st.LocalPolicyIgnored = append(st.LocalPolicyIgnored, k)
			}
		}
		slices.SortFunc(st.LocalPolicyIgnored, compareServiceKeys)
	}
	return st
}

// changedServices returns the keys of the Services that differ between two
// snapshots, by pointer: Services are immutable and an unchanged one keeps
// its pointer, so a changed pointer is all a sync needs to look at (a new
// pointer with equal content renders to the same group, and sends nothing).
func changedServices(prev, next *cluster.Snapshot) []cluster.ServiceKey {
	var old, cur map[cluster.ServiceKey]*cluster.Service
	if prev != nil {
		old = prev.Services
	}
	if next != nil {
		cur = next.Services
	}
	var out []cluster.ServiceKey
	common := 0
	for k, s := range cur {
		o, ok := old[k]
		if ok {
			common++
		}
		if o != s {
			out = append(out, k)
		}
	}
	if common < len(old) {
		for k := range old {
			if _, ok := cur[k]; !ok {
				out = append(out, k)
			}
		}
	}
	slices.SortFunc(out, compareServiceKeys)
	return out
}

// nftPatch is the element changes of one patch, by set.
type nftPatch struct {
	del, add map[string][]NFTElement
	// local lists the changed Services asking for internalTrafficPolicy: Local.
	local []cluster.ServiceKey
}

// patch brings the model from the Services of prev to those of next,
// rendering only the given keys (changedServices), and returns the element
// changes.
func (m *nftModel) patch(next *cluster.Snapshot, keys []cluster.ServiceKey) *nftPatch {
	p := &nftPatch{del: map[string][]NFTElement{}, add: map[string][]NFTElement{}}
	hairpinBefore := map[netip.Addr]int{}
	for _, k := range keys {
		old := m.groups[k]
		var g *nftGroup
		if next != nil {
			if svc := next.Services[k]; svc != nil {
				g = m.render(svc, old)
			}
		}
		for _, gg := range []*nftGroup{old, g} {
			if gg == nil {
				continue
			}
			for _, a := range gg.hairpin {
				if _, ok := hairpinBefore[a]; !ok {
					hairpinBefore[a] = m.hairpin[a]
				}
			}
		}
		if old != nil {
			m.remove(k)
		}
		if g != nil {
			m.add(k, g)
			if g.local {
				p.local = append(p.local, k)
			}
		}
		var oldEls, newEls map[string][]NFTElement
		if old != nil {
			oldEls = old.elements
		}
		if g != nil {
			newEls = g.elements
		}
		for name, o := range oldEls {
			d, a := p.del[name], p.add[name]
			elementDelta(o, newEls[name], &d, &a)
			p.del[name], p.add[name] = d, a
		}
		for name, n := range newEls {
			if _, ok := oldEls[name]; !ok {
				p.add[name] = append(p.add[name], n...)
			}
		}
	}
	for a, before := range hairpinBefore {
		switch after := m.hairpin[a]; {
		case before == 0 && after > 0:
			p.add[nftHairpin] = append(p.add[nftHairpin], hairpinElement(a))
		case before > 0 && after == 0:
			p.del[nftHairpin] = append(p.del[nftHairpin], hairpinElement(a))
		}
	}
	byKey := func(a, b NFTElement) int { return strings.Compare(a.Key, b.Key) }
	slices.SortFunc(p.add[nftHairpin], byKey)
	for i := range p.del {
		slices.SortFunc(p.del[i], byKey)
	}
	return p
}

// elementDelta appends to del the elements of old that new lacks or has with
// another value or comment, and to add those of new that old lacks or has
// otherwise: nft cannot change an element in place.
func elementDelta(old, new []NFTElement, del, add *[]NFTElement) {
	if len(old) == 0 {
		*add = append(*add, new...)
		return
	}
	have := make(map[string]NFTElement, len(old))
	for _, e := range old {
		have[e.Key] = e
	}
	for _, e := range new {
		if o, ok := have[e.Key]; ok {
			delete(have, e.Key)
			if o == e {
				continue
			}
			*del = append(*del, o)
		}
		*add = append(*add, e)
	}
	for _, e := range old {
		if _, ok := have[e.Key]; ok {
			*del = append(*del, e)
		}
	}
}
