package proxy

import (
	"bytes"
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
	nftNoEndpoints = "no-endpoints"
	nftHairpin     = "hairpin"
	// Per protocol and index: endpoints-0-tcp (indexName).
	nftEndpoints = "endpoints"

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
	// Counters names the connection counters in the table, for a previous
	// ruleset given to nftFullScript whose Sets hold no elements; a rendered
	// ruleset has them as the values of its service-counters elements
	// (nftables_counters.go).
	Counters []string
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
// Services and endpoints are only elements of maps, so the number of chains
// does not grow with the number of Services: numgen's modulus must be a
// constant of its rule, so there is one small chain per protocol and
// distinct endpoint count (pick-N-PROTO) and, for sessionAffinity: ClientIP,
// per protocol and distinct number of positions, endpoint count and timeout
// (affinity-C-N-T-PROTO) and per protocol, timeout and position
// (affinity-tT-I-PROTO), plus per protocol and index the chains, maps and
// sets of one endpoint index (endpoint-R-PROTO, endpoints-R-PROTO, ...).
// All of them are shared by every Service port with those numbers. See
// doc.go for the layout and why it is so (Linux 5.10, nft 0.9.8).
//
// A fresh render numbers the endpoints of a Service port with session
// affinity in order; the backend keeps their positions across syncs (see
// nftModel).
func RenderNFTables(in NFTRenderInput) (*NFTRuleset, NFTRenderStats, error) {
	m, err := newNFTModel(in, nil)
	if err != nil {
		return nil, NFTRenderStats{}, err
	}
	return m.ruleset(), m.renderStats(true), nil
}

// svcKey is the key of a Service port in service-ips and no-endpoints.
func svcKey(ip netip.Addr, proto string, port int32) string {
	return ip.String() + " . " + proto + " . " + strconv.Itoa(int(port))
}

// protoKeyElement is the key of a Service port in the per-protocol,
// per-index maps and sets: their name gives the protocol and index.
func protoKeyElement(ip netip.Addr, port int32) string {
	return ip.String() + " . " + strconv.Itoa(int(port))
}

// pickChain, affinityChain and affinityPosChain name the shared chains of
// protocol index p (nftProtocols): pick-N-tcp, affinity-C-N-T-tcp,
// affinity-tT-I-tcp.
func pickChain(p, n int) string {
	return protoName(nftPickPrefix+strconv.Itoa(n), p)
}

func affinityChain(p, positions, n, timeout int) string {
	return protoName(nftAffinityPrefix+strconv.Itoa(positions)+"-"+strconv.Itoa(n)+"-"+strconv.Itoa(timeout), p)
}

func affinityPosChain(p, timeout, i int) string {
	return protoName(nftAffinityPrefix+"t"+strconv.Itoa(timeout)+"-"+strconv.Itoa(i), p)
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
	// Sized up front: at 10k Services the script is some 20 MB, and
	// growing a buffer by doubling would leave as much again as garbage.
	size := 4096
	for i := range rs.Chains {
		for _, r := range rs.Chains[i].Rules {
			size += len(r) + 64
		}
	}
	for i := range rs.Sets {
		size += (len(rs.Sets[i].Elements)/nftElementsPerCommand + 1) * 64
		for _, e := range rs.Sets[i].Elements {
			size += len(e.Key) + len(e.Value) + len(e.Comment) + 16
		}
	}
	s.b.Grow(size)
	if recreate {
		s.cmd("add", "table", "", "")
		s.cmd("delete", "table", "", "")
	}
	s.declareAndFlush(rs)
	var counters []NFTElement
	for i := range rs.Sets {
		if rs.Sets[i].Name == nftServiceCounters {
			counters = rs.Sets[i].Elements
		}
	}
	s.addCounters(counters)
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
		staleSets := removedSets(prev.Sets, rs.Sets)
		// Flushed first: a stale chain may jump to another stale one, and
		// a stale verdict map's elements to a stale chain.
		for _, c := range stale {
			s.cmd("flush", "chain", c, "")
		}
		for i := range staleSets {
			s.cmd("flush", setKind(&staleSets[i]), staleSets[i].Name, "")
		}
		for _, c := range stale {
			s.cmd("delete", "chain", c, "")
		}
		for i := range staleSets {
			s.cmd("delete", setKind(&staleSets[i]), staleSets[i].Name, "")
		}
		next := make([]string, len(counters))
		for i, e := range counters {
			next[i] = e.Value
		}
		old := slices.Clone(prev.Counters)
		for i := range prev.Sets {
			if prev.Sets[i].Name == nftServiceCounters {
				for _, e := range prev.Sets[i].Elements {
					old = append(old, e.Value)
				}
			}
		}
		for _, c := range staleCounters(old, next) {
			s.cmd("delete", "counter", c, "")
		}
	}
	return s.b.Bytes(), s.commands
}

// removedSets returns the sets of prev that next lacks.
func removedSets(prev, next []NFTSet) []NFTSet {
	want := make(map[string]bool, len(next))
	for i := range next {
		want[next[i].Name] = true
	}
	var out []NFTSet
	for i := range prev {
		if !want[prev[i].Name] {
			out = append(out, NFTSet{Name: prev[i].Name, Map: prev[i].Map, Dynamic: prev[i].Dynamic, Decl: prev[i].Decl})
		}
	}
	return out
}

// nftDiffScript returns a transaction that turns a table holding prev into
// one holding next, sending only what changed: elements added, removed or
// changed, chains added, rewritten or removed, and sets added or removed.
// It returns nil when nothing changed.
func nftDiffScript(prev, next *NFTRuleset) (script []byte, commands int) {
	prevSets := map[string]*NFTSet{}
	for i := range prev.Sets {
		prevSets[prev.Sets[i].Name] = &prev.Sets[i]
	}
	del := map[string][]NFTElement{}
	add := map[string][]NFTElement{}
	for _, set := range removedSets(prev.Sets, next.Sets) {
		if old := prevSets[set.Name]; !old.Dynamic {
			del[set.Name] = old.Elements
		}
	}
	for i := range next.Sets {
		set := &next.Sets[i]
		var old []NFTElement
		if o := prevSets[set.Name]; o != nil {
			old = o.Elements
		}
		d, a := del[set.Name], add[set.Name]
		elementDelta(old, set.Elements, &d, &a)
		slices.SortFunc(d, func(a, b NFTElement) int { return strings.Compare(a.Key, b.Key) })
		del[set.Name], add[set.Name] = d, a
	}
	return nftChangeScript(next.Family, prev.Chains, next.Chains, prev.Sets, next.Sets, del, add)
}

// nftChangeScript writes the transaction that turns chains prevChains into
// nextChains and sets prevSets into nextSets (declarations: sets are added
// and deleted whole), removing del[name] from and adding add[name] to the
// set of that name. del lists every element of a deleted map (those of
// dynamic sets excepted): a verdict map's elements hold their chains. It
// returns nil when there is nothing to do.
func nftChangeScript(fam Family, prevChains, nextChains []NFTChain, prevSets, nextSets []NFTSet, del, add map[string][]NFTElement) (script []byte, commands int) {
	s := newNFTScript(fam)
	prevByName := make(map[string]*NFTChain, len(prevChains))
	for i := range prevChains {
		prevByName[prevChains[i].Name] = &prevChains[i]
	}
	nextNames := make(map[string]bool, len(nextChains))
	var added, changed []*NFTChain
	for i := range nextChains {
		c := &nextChains[i]
		nextNames[c.Name] = true
		switch p := prevByName[c.Name]; {
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
	for _, c := range prevChains {
		if !nextNames[c.Name] {
			removed = append(removed, c.Name)
		}
	}
	newSets := removedSets(nextSets, prevSets)
	goneSets := removedSets(prevSets, nextSets)
	// All sets, in a fixed order, for the element commands.
	all := append(slices.Clone(nextSets), goneSets...)

	// New chains and sets exist before anything refers to them.
	for _, c := range added {
		s.addChain(c)
	}
	for i := range newSets {
		set := &newSets[i]
		s.cmd("add", setKind(set), set.Name, "{ "+set.Decl+" }")
	}
	s.addCounters(add[nftServiceCounters])
	// Removed and changed elements go first: they may point to chains that
	// are deleted below (and a verdict map is deleted empty).
	for i := range all {
		s.elements(&all[i], del[all[i].Name], true)
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
	for i := range nextSets {
		s.elements(&nextSets[i], add[nextSets[i].Name], false)
	}
	for _, c := range removed {
		s.cmd("delete", "chain", c, "")
	}
	for i := range goneSets {
		s.cmd("delete", setKind(&goneSets[i]), goneSets[i].Name, "")
	}
	s.deleteCounters(del[nftServiceCounters], add[nftServiceCounters])
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
