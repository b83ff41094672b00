package proxy

import (
	"bytes"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// NFTablesTable is the name of the agent's private table, one per family
// ("ip bridge-agent" and "ip6 bridge-agent"). Everything the nftables backend
// writes lives in it; nothing outside it is touched.
const NFTablesTable = "bridge-agent"

// Fixed chains, sets and maps of the nftables layout; see the package
// documentation for what each does.
const (
	nftNATOutput      = "nat-output"
	nftNATPrerouting  = "nat-prerouting"
	nftNATPostrouting = "nat-postrouting"
	nftFilterOutput   = "filter-output"
	nftFilterForward  = "filter-forward"
	nftServices       = "services"
	nftMarkMasq       = "mark-for-masquerade"

	nftServiceIPs  = "service-ips"
	nftEndpoints   = "endpoints"
	nftNoEndpoints = "no-endpoints"
	nftHairpin     = "hairpin"
	nftAffinity    = "affinity"

	nftPickPrefix     = "pick-"
	nftAffinityPrefix = "affinity-"
)

// Base chain priorities, documented in doc.go: DNAT at the standard dstnat
// priority, masquerade at srcnat, rejects at filter.
const (
	nftPriorityDNAT   = -100
	nftPrioritySNAT   = 100
	nftPriorityFilter = 0
)

// nftAffinitySize bounds the number of client → endpoint records kept for
// sessionAffinity: ClientIP (the kernel's default for a dynamic set is 65535).
const nftAffinitySize = 1 << 20

// NFTRenderInput is everything RenderNFTables reads.
type NFTRenderInput struct {
	// Snapshot is the cluster view to render; nil renders the fixed objects only.
	Snapshot *cluster.Snapshot
	// Family selects the table, cluster IPs and endpoints to render.
	Family Family
	// Masquerade, MasqueradeMark and Zone: see RenderInput.
	Masquerade     bool
	MasqueradeMark uint32
	Zone           string
}

// NFTRuleset is the desired content of one family's table, as data: the
// backend diffs two of them to send only what changed.
type NFTRuleset struct {
	Family Family
	// Chains in a fixed order: base chains, then regular ones by name.
	Chains []NFTChain
	// Sets holds the sets and maps, in a fixed order.
	Sets []NFTSet
}

// NFTChain is one chain. Base is the hook declaration of a base chain
// ("type nat hook output priority -100; policy accept;"), empty otherwise.
type NFTChain struct {
	Name  string
	Base  string
	Rules []string
}

// NFTSet is a set or map. Decl is its declaration without braces. Dynamic
// sets are filled by the kernel (session affinity) and never flushed or
// given elements by the agent.
type NFTSet struct {
	Name     string
	Map      bool
	Decl     string
	Dynamic  bool
	Elements []NFTElement
}

// NFTElement is one element: Key, and for maps Value. Comment names the
// Service port it belongs to.
type NFTElement struct {
	Key, Value, Comment string
}

// NFTRenderStats counts what a RenderNFTables call produced.
type NFTRenderStats struct {
	Services, ServicePorts, Endpoints, NoEndpoints, Terminating, Zonal int
	// Chains, Rules and Elements count the table's objects; NATRules and
	// FilterRules split Rules by chain type.
	Chains, Rules, NATRules, FilterRules, Elements int
	// LocalPolicyIgnored: see RenderStats.
	LocalPolicyIgnored []cluster.ServiceKey
}

// nftFamily returns the nft family keyword and the address type of f.
func nftFamily(f Family) (family, addrType string) {
	if f == IPv6 {
		return "ip6", "ipv6_addr"
	}
	return "ip", "ipv4_addr"
}

// RenderNFTables renders the snapshot as the desired content of one family's
// table. It reads no kernel state; equal inputs give equal rulesets.
//
// Services and endpoints are only elements of a few maps, so the number of
// chains does not grow with the number of Services: numgen's modulus must be
// a constant of its rule, so there is one small chain per distinct endpoint
// count (pick-N) and, for sessionAffinity: ClientIP, per distinct count and
// timeout (affinity-N-T) and per timeout and endpoint position
// (affinity-T-I). All of them are shared by every Service with that count.
func RenderNFTables(in NFTRenderInput) (*NFTRuleset, NFTRenderStats, error) {
	var stats NFTRenderStats
	if !in.Family.valid() {
		return nil, stats, fmt.Errorf("render nftables: unknown IP family %d", in.Family)
	}
	if in.MasqueradeMark == 0 {
		in.MasqueradeMark = DefaultMasqueradeMark
	}
	fam, addrType := nftFamily(in.Family)
	key := fam + " daddr . meta l4proto . th dport"
	mark := fmt.Sprintf("%#x", in.MasqueradeMark)

	var serviceIPs, endpoints, noEndpoints []NFTElement
	hairpin := map[netip.Addr]bool{}
	picks := map[int]bool{}        // endpoint counts without affinity
	affinity := map[[2]int]bool{}  // {count, timeout seconds}
	affinityWidth := map[int]int{} // timeout → largest count
	var services []*cluster.Service
	if in.Snapshot != nil {
		services = in.Snapshot.SortedServices()
		endpoints = make([]NFTElement, 0, in.Snapshot.EndpointCount())
	}
	for _, svc := range services {
		if !svc.Proxied || svc.Headless || svc.Type == cluster.TypeExternalName {
			continue
		}
		var ips []netip.Addr
		for _, ip := range svc.ClusterIPs {
			if in.Family.Contains(ip) {
				ips = append(ips, ip)
			}
		}
		if len(ips) == 0 {
			continue
		}
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
			stats.ServicePorts++
			name := servicePortName(svc.ServiceKey, port.Name)
			sel := SelectEndpoints(svc, port, in.Family, in.Zone)
			n := len(sel.Endpoints)
			if n == 0 {
				stats.NoEndpoints++
				for _, ip := range ips {
					noEndpoints = append(noEndpoints, NFTElement{Key: svcKey(ip, proto, port.Port), Comment: name})
				}
				continue
			}
			if sel.Terminating {
				stats.Terminating++
			}
			if sel.Zonal {
				stats.Zonal++
			}
			stats.Endpoints += n
			verdict := "goto " + nftPickPrefix + strconv.Itoa(n)
			if timeout > 0 {
				verdict = "goto " + affinityChain(n, timeout)
				affinity[[2]int{n, timeout}] = true
				affinityWidth[timeout] = max(affinityWidth[timeout], n)
			} else {
				picks[n] = true
			}
			for _, ip := range ips {
				k := svcKey(ip, proto, port.Port)
				serviceIPs = append(serviceIPs, NFTElement{Key: k, Value: verdict, Comment: name})
				for i, ep := range sel.Endpoints {
					endpoints = append(endpoints, NFTElement{
						Key:   k + " . " + strconv.Itoa(i),
						Value: ep.Addr.String() + " . " + strconv.Itoa(int(ep.Port)),
					})
				}
			}
			for _, ep := range sel.Endpoints {
				hairpin[ep.Addr] = true
			}
		}
		if rendered {
			stats.Services++
			if svc.InternalTrafficLocal {
				stats.LocalPolicyIgnored = append(stats.LocalPolicyIgnored, svc.ServiceKey)
			}
		}
	}

	rs := &NFTRuleset{Family: in.Family}
	base := func(typ, hook string, prio int) string {
		return fmt.Sprintf("type %s hook %s priority %d; policy accept;", typ, hook, prio)
	}
	rejectRule := "ct state new " + key + " @" + nftNoEndpoints + " reject"
	rs.Chains = []NFTChain{
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
	}
	var regular []NFTChain
	svcRules := []string{key + " vmap @" + nftServiceIPs}
	if in.Masquerade {
		svcRules = []string{key + " @" + nftServiceIPs + " jump " + nftMarkMasq, svcRules[0]}
	}
	regular = append(regular,
		NFTChain{Name: nftServices, Rules: svcRules},
		NFTChain{Name: nftMarkMasq, Rules: []string{"meta mark set meta mark | " + mark}},
	)
	for n := range picks {
		regular = append(regular, NFTChain{Name: nftPickPrefix + strconv.Itoa(n), Rules: []string{
			"dnat " + fam + " to " + key + " . numgen random mod " + strconv.Itoa(n) + " map @" + nftEndpoints,
		}})
	}
	for nt := range affinity {
		n, t := nt[0], nt[1]
		var rules []string
		var vmap []string
		for i := range n {
			target := affinityPosChain(t, i)
			// A client recorded for position i goes there again.
			rules = append(rules, fmt.Sprintf("%s saddr . %s . %s @%s goto %s", fam, key, fixedIndex(i), nftAffinity, target))
			vmap = append(vmap, fmt.Sprintf("%d : goto %s", i, target))
		}
		rules = append(rules, fmt.Sprintf("numgen random mod %d vmap { %s }", n, strings.Join(vmap, ", ")))
		regular = append(regular, NFTChain{Name: affinityChain(n, t), Rules: rules})
	}
	for t, width := range affinityWidth {
		for i := range width {
			regular = append(regular, NFTChain{Name: affinityPosChain(t, i), Rules: []string{
				fmt.Sprintf("update @%s { %s saddr . %s . %s timeout %ds }", nftAffinity, fam, key, fixedIndex(i), t),
				fmt.Sprintf("dnat %s to %s . %s map @%s", fam, key, fixedIndex(i), nftEndpoints),
			}})
		}
	}
	slices.SortFunc(regular, func(a, b NFTChain) int { return compareChainNames(a.Name, b.Name) })
	rs.Chains = append(rs.Chains, regular...)

	hairpins := make([]NFTElement, 0, len(hairpin))
	for a := range hairpin {
		hairpins = append(hairpins, NFTElement{Key: a.String() + " . " + a.String()})
	}
	slices.SortFunc(hairpins, func(a, b NFTElement) int { return strings.Compare(a.Key, b.Key) })
	// The typeof declarations say "udp dport" where the rules read "th
	// dport" (the same two bytes of every transport header the agent
	// proxies): nft 1.0.6 cannot read back a typeof that mixes "ip daddr"
	// and "th dport" ("conflicting protocols specified"), so every later
	// transaction adding a rule that uses the map would fail.
	typeofKey := fam + " daddr . meta l4proto . udp dport"
	rs.Sets = []NFTSet{
		{Name: nftServiceIPs, Map: true, Decl: "type " + addrType + " . inet_proto . inet_service : verdict;", Elements: serviceIPs},
		{Name: nftEndpoints, Map: true, Decl: "typeof " + typeofKey + " . numgen random mod 65536 : " + fam + " daddr . udp dport;", Elements: endpoints},
		{Name: nftNoEndpoints, Decl: "type " + addrType + " . inet_proto . inet_service;", Elements: noEndpoints},
		{Name: nftHairpin, Decl: "type " + addrType + " . " + addrType + ";", Elements: hairpins},
		{Name: nftAffinity, Dynamic: true, Decl: fmt.Sprintf("typeof %s saddr . %s . numgen random mod 65536; flags dynamic,timeout; size %d;", fam, typeofKey, nftAffinitySize)},
	}
	for _, c := range rs.Chains {
		stats.Chains++
		stats.Rules += len(c.Rules)
		if strings.HasPrefix(c.Base, "type filter") {
			stats.FilterRules += len(c.Rules)
		} else {
			stats.NATRules += len(c.Rules)
		}
	}
	for _, s := range rs.Sets {
		stats.Elements += len(s.Elements)
	}
	return rs, stats, nil
}

// svcKey is the key of a Service port in service-ips and no-endpoints.
func svcKey(ip netip.Addr, proto string, port int32) string {
	return ip.String() + " . " + proto + " . " + strconv.Itoa(int(port))
}

// fixedIndex is the constant i as an expression of numgen's type: nft 1.0.6
// does not accept a bare constant inside a concatenation, but a numgen with
// modulus 1 and offset i always yields i.
func fixedIndex(i int) string {
	if i == 0 {
		return "numgen random mod 1"
	}
	return "numgen random mod 1 offset " + strconv.Itoa(i)
}

func affinityChain(n, timeout int) string {
	return nftAffinityPrefix + strconv.Itoa(n) + "-" + strconv.Itoa(timeout)
}

func affinityPosChain(timeout, i int) string {
	return nftAffinityPrefix + "t" + strconv.Itoa(timeout) + "-" + strconv.Itoa(i)
}

// compareChainNames orders names with numbers inside numerically, so that
// pick-2 comes before pick-10.
func compareChainNames(a, b string) int {
	for a != "" && b != "" {
		ia, ib := numPrefixEnd(a), numPrefixEnd(b)
		if ia > 0 && ib > 0 {
			na, _ := strconv.Atoi(a[:ia])
			nb, _ := strconv.Atoi(b[:ib])
			if na != nb {
				return na - nb
			}
			a, b = a[ia:], b[ib:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func numPrefixEnd(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// nftElementsPerCommand bounds the elements of one "add element" command, to
// keep lines of a script reasonable; a whole script is still one transaction.
const nftElementsPerCommand = 1000

// nftScript writes "nft -f" commands for one family's table.
type nftScript struct {
	b        bytes.Buffer
	fam      string
	commands int
}

func newNFTScript(f Family) *nftScript {
	fam, _ := nftFamily(f)
	return &nftScript{fam: fam}
}

func (s *nftScript) cmd(verb, kind, name, rest string) {
	s.commands++
	s.b.WriteString(verb)
	s.b.WriteByte(' ')
	s.b.WriteString(kind)
	s.b.WriteByte(' ')
	s.b.WriteString(s.fam)
	s.b.WriteString(" " + NFTablesTable)
	if name != "" {
		s.b.WriteByte(' ')
		s.b.WriteString(name)
	}
	if rest != "" {
		s.b.WriteByte(' ')
		s.b.WriteString(rest)
	}
	s.b.WriteByte('\n')
}

func (s *nftScript) addChain(c *NFTChain) {
	if c.Base != "" {
		s.cmd("add", "chain", c.Name, "{ "+c.Base+" }")
	} else {
		s.cmd("add", "chain", c.Name, "")
	}
}

func (s *nftScript) rules(c *NFTChain) {
	for _, r := range c.Rules {
		s.cmd("add", "rule", c.Name, r)
	}
}

func setKind(set *NFTSet) string {
	if set.Map {
		return "map"
	}
	return "set"
}

// elements writes "add element" (or, with del, "delete element") commands.
func (s *nftScript) elements(set *NFTSet, els []NFTElement, del bool) {
	for len(els) > 0 {
		chunk := els[:min(len(els), nftElementsPerCommand)]
		els = els[len(chunk):]
		s.commands++
		if del {
			s.b.WriteString("delete element ")
		} else {
			s.b.WriteString("add element ")
		}
		s.b.WriteString(s.fam + " " + NFTablesTable + " " + set.Name + " { ")
		for i, e := range chunk {
			if i > 0 {
				s.b.WriteString(", ")
			}
			s.b.WriteString(e.Key)
			if del {
				continue
			}
			if e.Comment != "" {
				s.b.WriteString(` comment "`)
				s.b.WriteString(e.Comment)
				s.b.WriteByte('"')
			}
			if set.Map {
				s.b.WriteString(" : ")
				s.b.WriteString(e.Value)
			}
		}
		s.b.WriteString(" }\n")
	}
}

// declare writes idempotent declarations of the table and all of rs's chains
// and sets, and flushes them (dynamic sets excepted), so that the rules and
// elements that follow are the whole content.
func (s *nftScript) declareAndFlush(rs *NFTRuleset) {
	s.cmd("add", "table", "", `{ comment "rules of bridge-agent, rewritten by it; do not edit" ; }`)
	for i := range rs.Chains {
		s.addChain(&rs.Chains[i])
	}
	for i := range rs.Sets {
		set := &rs.Sets[i]
		s.cmd("add", setKind(set), set.Name, "{ "+set.Decl+" }")
	}
	for i := range rs.Chains {
		s.cmd("flush", "chain", rs.Chains[i].Name, "")
	}
	for i := range rs.Sets {
		if set := &rs.Sets[i]; !set.Dynamic {
			s.cmd("flush", setKind(set), set.Name, "")
		}
	}
}

// nftFullScript returns a transaction that makes the table hold exactly rs.
// With recreate, the table is deleted and created again, dropping anything
// else in it (session affinity records too); otherwise existing chains and
// sets are flushed and refilled, and the chains of prev that rs no longer
// has are deleted.
func nftFullScript(rs, prev *NFTRuleset, recreate bool) (script []byte, commands int) {
	s := newNFTScript(rs.Family)
	if recreate {
		s.cmd("add", "table", "", "")
		s.cmd("delete", "table", "", "")
	}
	s.declareAndFlush(rs)
	for i := range rs.Chains {
		s.rules(&rs.Chains[i])
	}
	for i := range rs.Sets {
		s.elements(&rs.Sets[i], rs.Sets[i].Elements, false)
	}
	if prev != nil && !recreate {
		want := map[string]bool{}
		for _, c := range rs.Chains {
			want[c.Name] = true
		}
		var stale []string
		for _, c := range prev.Chains {
			if !want[c.Name] {
				stale = append(stale, c.Name)
			}
		}
		// Flushed first: a stale chain may jump to another stale one.
		for _, c := range stale {
			s.cmd("flush", "chain", c, "")
		}
		for _, c := range stale {
			s.cmd("delete", "chain", c, "")
		}
	}
	return s.b.Bytes(), s.commands
}

// nftDiffScript returns a transaction that turns a table holding prev into
// one holding next, sending only what changed: elements added, removed or
// changed, and chains added, rewritten or removed. It returns nil when
// nothing changed. Sets are the same in every ruleset of a family.
func nftDiffScript(prev, next *NFTRuleset) (script []byte, commands int) {
	s := newNFTScript(next.Family)
	prevChains := map[string]*NFTChain{}
	for i := range prev.Chains {
		prevChains[prev.Chains[i].Name] = &prev.Chains[i]
	}
	nextChains := map[string]bool{}
	var added, changed []*NFTChain
	for i := range next.Chains {
		c := &next.Chains[i]
		nextChains[c.Name] = true
		switch p := prevChains[c.Name]; {
		case p == nil:
			added = append(added, c)
		case p.Base != c.Base:
			// Not produced by the renderer: base chains are fixed.
			changed = append(changed, c)
		case !slices.Equal(p.Rules, c.Rules):
			changed = append(changed, c)
		}
	}
	var removed []string
	for _, c := range prev.Chains {
		if !nextChains[c.Name] {
			removed = append(removed, c.Name)
		}
	}

	// New chains exist before anything refers to them.
	for _, c := range added {
		s.addChain(c)
	}
	type setDiff struct {
		set      *NFTSet
		del, add []NFTElement
	}
	var diffs []setDiff
	prevSets := map[string]*NFTSet{}
	for i := range prev.Sets {
		prevSets[prev.Sets[i].Name] = &prev.Sets[i]
	}
	for i := range next.Sets {
		set := &next.Sets[i]
		old := prevSets[set.Name]
		if old == nil {
			s.cmd("add", setKind(set), set.Name, "{ "+set.Decl+" }")
			old = &NFTSet{}
		}
		d := setDiff{set: set}
		have := make(map[string]*NFTElement, len(old.Elements))
		for j := range old.Elements {
			have[old.Elements[j].Key] = &old.Elements[j]
		}
		for j := range set.Elements {
			e := &set.Elements[j]
			o := have[e.Key]
			if o != nil {
				delete(have, e.Key)
				if *o == *e {
					continue
				}
				// nft cannot change an element's value in place.
				d.del = append(d.del, *o)
			}
			d.add = append(d.add, *e)
		}
		for j := range old.Elements {
			if o := &old.Elements[j]; have[o.Key] != nil {
				d.del = append(d.del, *o)
			}
		}
		slices.SortFunc(d.del, func(a, b NFTElement) int { return strings.Compare(a.Key, b.Key) })
		diffs = append(diffs, d)
	}
	// Removed and changed elements go first: they may point to chains that
	// are deleted below.
	for _, d := range diffs {
		s.elements(d.set, d.del, true)
	}
	for _, c := range changed {
		s.cmd("flush", "chain", c.Name, "")
	}
	for _, c := range removed {
		s.cmd("flush", "chain", c, "")
	}
	for _, c := range added {
		s.rules(c)
	}
	for _, c := range changed {
		s.rules(c)
	}
	for _, d := range diffs {
		s.elements(d.set, d.add, false)
	}
	for _, c := range removed {
		s.cmd("delete", "chain", c, "")
	}
	if s.commands == 0 {
		return nil, 0
	}
	return s.b.Bytes(), s.commands
}

// Text returns rs as a complete "nft -f" script that creates the table from
// scratch: the form of the golden files.
func (rs *NFTRuleset) Text() []byte {
	b, _ := nftFullScript(rs, nil, true)
	return b
}
