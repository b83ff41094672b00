package proxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Chain names. Every chain the agent owns, in every table and family, starts
// with ChainPrefix; the fixed chains below always exist once the agent has
// synced, even when empty, and per-object chains come and go with Services.
const (
	// ChainPrefix begins the name of every chain the agent owns.
	ChainPrefix = "BRIDGE-"
	// ServicesChain is, in nat, where traffic to cluster IPs is sent to its
	// Service port's chain and, in filter, where traffic to a Service port
	// without usable endpoints is rejected.
	ServicesChain = "BRIDGE-SERVICES"
	// PostroutingChain (nat) masquerades packets carrying the masquerade mark.
	PostroutingChain = "BRIDGE-POSTROUTING"
	// MarkMasqChain (nat) sets the masquerade mark.
	MarkMasqChain = "BRIDGE-MARK-MASQ"

	svcChainPrefix = ChainPrefix + "SVC-"
	sepChainPrefix = ChainPrefix + "SEP-"
	// cntChainPrefix names the connection counter of a Service port
	// (iptables_counters.go).
	cntChainPrefix = ChainPrefix + "CNT-"
)

// DefaultMasqueradeMark is the packet mark bit that asks BRIDGE-POSTROUTING to
// masquerade, the same bit kube-proxy uses by default (1<<14).
const DefaultMasqueradeMark uint32 = 0x4000

// Jump is a rule the backend keeps in a built-in chain to hand packets to one
// of the agent's fixed chains. Rule is the rule specification after the chain
// name, one argument per element (no shell quoting), as given to
// "iptables -t Table -I Chain".
type Jump struct {
	Table string
	Chain string
	Rule  []string
}

const portalsComment = "bridge-agent service portals"

// IPTablesJumps returns the jumps from built-in chains into the agent's chains,
// the same for both families. They belong first in their chains, so that
// traffic to cluster IPs is handled before any other rule can accept or drop
// it.
func IPTablesJumps() []Jump {
	return []Jump{
		{"nat", "OUTPUT", []string{"-m", "comment", "--comment", portalsComment, "-j", ServicesChain}},
		{"nat", "PREROUTING", []string{"-m", "comment", "--comment", portalsComment, "-j", ServicesChain}},
		{"nat", "POSTROUTING", []string{"-m", "comment", "--comment", "bridge-agent postrouting rules", "-j", PostroutingChain}},
		{"filter", "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", portalsComment, "-j", ServicesChain}},
		{"filter", "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", portalsComment, "-j", ServicesChain}},
	}
}

// RenderInput is everything RenderIPTables reads.
type RenderInput struct {
	// Snapshot is the cluster view to render; nil renders the fixed chains only.
	Snapshot *cluster.Snapshot
	// Family selects the cluster IPs and endpoints to render.
	Family Family
	// Masquerade sends all Service traffic through MASQUERADE (the resolved
	// value of the masquerade mode always|never|auto). Hairpin traffic, from
	// an endpoint to itself, is masqueraded either way.
	Masquerade bool
	// MasqueradeMark is the mark bit that requests masquerading; 0 means
	// DefaultMasqueradeMark.
	MasqueradeMark uint32
	// Zone is this host's topology zone. Empty (the default) means topology
	// hints are never used.
	Zone string
	// ExistingNATChains and ExistingFilterChains are the chain names found in
	// the nat and filter tables of this family (as listed by iptables-save).
	// Per-Service chains of ours among them that the snapshot no longer needs
	// are deleted by the payload; all other chains are left alone. A
	// partial render (Previous set) does not read them.
	ExistingNATChains, ExistingFilterChains []string
	// Previous, when not nil, makes the render partial: it is the snapshot
	// of the last render (full or partial) whose payloads were restored, with
	// the same Family, Masquerade, MasqueradeMark and Zone, into tables that
	// still hold what it wrote. Services are immutable and an unchanged
	// Service keeps its pointer, so the Services whose pointer is the same
	// in Previous and Snapshot are unchanged: their chains are neither
	// declared nor written, and "iptables-restore --noflush" leaves them as
	// they are. The nat payload declares and rewrites BRIDGE-SERVICES (which
	// lists every Service port), the chains of the Services added or
	// updated, and deletes (-X) the chains that the Services updated or
	// removed since Previous no longer need; the filter payload rewrites
	// BRIDGE-SERVICES. The fixed chains BRIDGE-POSTROUTING and
	// BRIDGE-MARK-MASQ are left as they are. Restored after Previous's, the
	// payloads leave the tables as a full render of Snapshot would (with
	// ExistingNATChains listing the chains Previous's render left), and the
	// stats are the ones that full render reports.
	Previous *cluster.Snapshot
}

// RenderStats counts what a RenderIPTables call produced.
type RenderStats struct {
	// Services is the number of Services with at least one rendered port.
	Services int
	// ServicePorts is the number of rendered (Service port, protocol) pairs.
	ServicePorts int
	// Endpoints is the number of endpoint chains.
	Endpoints int
	// NoEndpoints is the number of Service ports whose traffic is rejected
	// because no endpoint is usable.
	NoEndpoints int
	// Terminating is the number of Service ports served by terminating
	// endpoints because none is ready.
	Terminating int
	// Zonal is the number of Service ports narrowed by topology hints.
	Zonal int
	// NATChains, NATRules and FilterRules count chain declarations and
	// rules in the payloads. For a partial render (RenderInput.Previous)
	// they count those of the full render it stands for, that is what the
	// tables hold once the payloads are restored.
	NATChains, NATRules, FilterRules int
	// StaleChains is the number of chains the payloads delete.
	StaleChains int
	// LocalPolicyIgnored lists, sorted, the rendered Services that ask for
	// internalTrafficPolicy: Local, proxied as Cluster instead.
	LocalPolicyIgnored []cluster.ServiceKey
}

// RenderIPTables renders the snapshot as two iptables-restore payloads for
// one family, one for the nat table and one for the filter table. Each is
// meant for "iptables-restore --noflush": it declares (and so flushes) every
// chain of ours it fills, and deletes our stale per-Service chains, without
// touching anyone else's chains. With RenderInput.Previous set, the render
// is partial and the payloads leave the chains of unchanged Services alone.
// The output depends only on the input: equal inputs give equal bytes.
func RenderIPTables(in RenderInput) (nat, filter []byte, stats RenderStats, err error) {
	if !in.Family.valid() {
		return nil, nil, RenderStats{}, fmt.Errorf("render iptables: unknown IP family %d", in.Family)
	}
	if in.MasqueradeMark == 0 {
		in.MasqueradeMark = DefaultMasqueradeMark
	}
	r := &iptRenderer{in: in, mark: fmt.Sprintf("%#x", in.MasqueradeMark)}
	r.plan()
	nat = r.writeNAT()
	filter = r.writeFilter()
	return nat, filter, r.stats, nil
}

// iptRenderer renders in two passes: plan selects the endpoints and names
// the chains of every Service port, so that the chain declarations, which
// iptables-restore wants before the rules, and the payload size are known
// before the first rule is written; the write pass then fills one buffer.
type iptRenderer struct {
	in    RenderInput
	mark  string
	stats RenderStats

	plans  []portPlan
	hashes [][hashLen]byte // endpoint chain hashes; see portPlan.sep
	// partial is set for a partial render (RenderInput.Previous).
	partial bool
	// natSize is an upper estimate of the nat payload's size.
	natSize int

	staleNAT, staleFilter []string

	probabilities []string
	hashBuf       []byte
}

// hashLen is the number of base32 characters of a chain name's hash.
const hashLen = 16

// portPlan is one rendered Service port.
type portPlan struct {
	svc   *cluster.Service
	port  *cluster.Port
	name  string // "namespace/name:port"
	proto string // "tcp", "udp" or "sctp"
	// eps are the selected endpoints; none means the port is rejected.
	eps     []cluster.Endpoint
	svcHash [hashLen]byte
	// sep indexes the hash of eps[0]'s chain in iptRenderer.hashes.
	sep int
	// cntExists marks a port whose counter chain the tables hold already:
	// it is neither declared nor written, which keeps its count.
	cntExists bool
	// unchanged marks, in a partial render, a port of a Service whose
	// pointer is the same as in RenderInput.Previous: only its capture in
	// BRIDGE-SERVICES is written, and its endpoint hashes are not computed.
	unchanged bool
}

// size returns an upper estimate of the size of pp's nat declarations and
// rules, for a Service with ips cluster IPs in family. It follows the rule
// templates in writeServicePort, with the longest address, port and
// affinity timeout.
func (pp *portPlan) size(ips int, family Family) int {
	addr := len("255.255.255.255:65535")
	if family == IPv6 {
		addr = len("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")
	}
	name := len(pp.name)
	if pp.unchanged {
		return ips * (160 + name + addr) // capture in BRIDGE-SERVICES
	}
	perPort := 37 + // declaration
		ips*(160+name+addr) + // capture in BRIDGE-SERVICES
		86 + name + // masquerade mark
		60 // jump to the counter
	perEndpoint := 37 + // declaration
		144 + name + addr + // spread
		83 + name + addr + // hairpin
		97 + name + addr // DNAT
	if pp.svc.SessionAffinityTimeout > 0 {
		perEndpoint += 168 + name + addr + // recent check
			51 // recent set
	}
	return perPort + len(pp.eps)*perEndpoint
}

// fixedNATRules are the rules of the fixed nat chains, with {mark} standing
// for the masquerade mark.
var fixedNATRules = []string{
	"-A " + PostroutingChain + " -m mark ! --mark {mark}/{mark} -j RETURN",
	// Clear the mark, so that a packet traversing the stack again (after
	// IPsec or tunnel encapsulation) is not masqueraded twice.
	"-A " + PostroutingChain + " -j MARK --xor-mark {mark}",
	"-A " + PostroutingChain + ` -m comment --comment "bridge-agent service traffic requiring SNAT" -j MASQUERADE --random-fully`,
	"-A " + MarkMasqChain + " -j MARK --or-mark {mark}",
}

func (r *iptRenderer) plan() {
	var services []*cluster.Service
	var prev map[cluster.ServiceKey]*cluster.Service
	r.partial = r.in.Previous != nil
	if r.partial {
		prev = r.in.Previous.Services
	}
	if r.in.Snapshot != nil {
		services = r.in.Snapshot.SortedServices()
		if !r.partial {
			r.hashes = make([][hashLen]byte, 0, r.in.Snapshot.EndpointCount())
		}
	}
	// Our per-Service chains that may be stale; kept[i] records that the
	// snapshot still needs existing[i]. A full render takes those found in
	// nat; a partial one those of the Services changed or removed since
	// Previous, as Previous's render named them.
	var existing []string
	var index map[string]int
	if r.partial {
		existing, index = ownChains(r.previousChains())
	} else {
		existing, index = ownChains(r.in.ExistingNATChains)
	}
	kept := make([]bool, len(existing))
	keep := func(prefix string, h *[hashLen]byte) bool {
		if len(index) == 0 {
			return false
		}
		name := append(append(r.hashBuf[:0], prefix...), h[:]...)
		r.hashBuf = name
		i, ok := index[string(name)]
		if ok {
			kept[i] = true
		}
		return ok
	}

	r.natSize = 4096
	for _, svc := range services {
		ips := renderedIPs(svc, r.in.Family)
		if ips == 0 {
			continue
		}
		unchanged := r.partial && prev[svc.ServiceKey] == svc
		rendered := false
		for _, port := range svc.Ports {
			proto := protocolName(port.Protocol)
			if proto == "" {
				continue
			}
			rendered = true
			r.stats.ServicePorts++
			sel := SelectEndpoints(svc, port, r.in.Family, r.in.Zone)
			pp := portPlan{
				svc:       svc,
				port:      port,
				name:      servicePortName(svc.ServiceKey, port.Name),
				proto:     proto,
				eps:       sel.Endpoints,
				sep:       len(r.hashes),
				unchanged: unchanged,
			}
			pp.svcHash = r.hash(pp.name, proto, netip.AddrPort{})
			if !unchanged {
				pp.cntExists = keep(cntChainPrefix, &pp.svcHash)
			}
			r.stats.NATChains++ // its counter
			r.stats.NATRules++
			r.natSize += 2*len(cntChainPrefix+"0123456789abcdef") + len(pp.name) + 64
			if len(pp.eps) == 0 {
				r.stats.NoEndpoints++
				r.plans = append(r.plans, pp)
				continue
			}
			if sel.Terminating {
				r.stats.Terminating++
			}
			if sel.Zonal {
				r.stats.Zonal++
			}
			if !unchanged {
				keep(svcChainPrefix, &pp.svcHash)
				for _, ep := range pp.eps {
					r.hashes = append(r.hashes, r.hash(pp.name, proto, ep.AddrPort()))
					keep(sepChainPrefix, &r.hashes[len(r.hashes)-1])
				}
			}
			r.plans = append(r.plans, pp)
			r.stats.NATChains += 1 + len(pp.eps)
			r.natSize += pp.size(ips, r.in.Family)
		}
		if rendered {
			r.stats.Services++
			if svc.InternalTrafficLocal {
				r.stats.LocalPolicyIgnored = append(r.stats.LocalPolicyIgnored, svc.ServiceKey)
			}
		}
	}

	for i, c := range existing {
		if !kept[i] {
			r.staleNAT = append(r.staleNAT, c)
			r.natSize += 2*len(c) + 16
		}
	}
	slices.Sort(r.staleNAT)
	if !r.partial {
		// Nothing in filter is per Service: every such chain found there
		// is stale.
		r.staleFilter, _ = ownChains(r.in.ExistingFilterChains)
		slices.Sort(r.staleFilter)
	}
	r.stats.NATChains += 3 + len(r.staleNAT)
	r.stats.StaleChains = len(r.staleNAT) + len(r.staleFilter)
}

// renderedIPs returns how many cluster IPs of family svc has, or 0 when svc
// gets no rule at all.
func renderedIPs(svc *cluster.Service, family Family) int {
	if !svc.Proxied || svc.Headless || svc.Type == cluster.TypeExternalName {
		return 0
	}
	ips := 0
	for _, ip := range svc.ClusterIPs {
		if family.Contains(ip) {
			ips++
		}
	}
	return ips
}

// previousChains returns, for a partial render, the per-Service chains that
// the render of Previous gave the Services whose pointer differs in
// Snapshot (updated or removed): the only chains the change can make stale.
func (r *iptRenderer) previousChains() []string {
	var cur map[cluster.ServiceKey]*cluster.Service
	if r.in.Snapshot != nil {
		cur = r.in.Snapshot.Services
	}
	var out []string
	for key, svc := range r.in.Previous.Services {
		if cur[key] == svc || renderedIPs(svc, r.in.Family) == 0 {
			continue
		}
		for _, port := range svc.Ports {
			proto := protocolName(port.Protocol)
			if proto == "" {
				continue
			}
			name := servicePortName(key, port.Name)
			h := r.hash(name, proto, netip.AddrPort{})
			out = append(out, cntChainPrefix+string(h[:]))
			if len(SelectEndpoints(svc, port, r.in.Family, r.in.Zone).Endpoints) == 0 {
				continue
			}
			out = append(out, svcChainPrefix+string(h[:]))
			for _, ep := range SelectEndpoints(svc, port, r.in.Family, r.in.Zone).Endpoints {
				h := r.hash(name, proto, ep.AddrPort())
				out = append(out, sepChainPrefix+string(h[:]))
			}
		}
	}
	return out
}

// ownChains returns our per-Service chains among names, without duplicates,
// and an index of them. Only per-Service chains are ever deleted as stale:
// nothing but our own chains (rewritten in the same payload) jumps to them, so
// deleting them cannot fail. Other chains with our prefix are left to
// cleanup, since a built-in chain may still jump to them.
func ownChains(names []string) ([]string, map[string]int) {
	var own []string
	var index map[string]int
	for _, c := range names {
		if !strings.HasPrefix(c, svcChainPrefix) && !strings.HasPrefix(c, sepChainPrefix) && !strings.HasPrefix(c, cntChainPrefix) {
			continue
		}
		if index == nil {
			index = make(map[string]int, len(names))
		}
		if _, dup := index[c]; !dup {
			index[c] = len(own)
			own = append(own, c)
		}
	}
	return own, index
}

func (r *iptRenderer) writeNAT() []byte {
	w := &writer{b: make([]byte, 0, r.natSize)}
	w.str("*nat\n")
	fixed := []string{ServicesChain, PostroutingChain, MarkMasqChain}
	if r.partial {
		fixed = fixed[:1]
	}
	for _, c := range fixed {
		w.declare(c, nil)
	}
	r.declareCounters(w)
	for i := range r.plans {
		pp := &r.plans[i]
		if len(pp.eps) == 0 || pp.unchanged {
			continue
		}
		w.declare(svcChainPrefix, &pp.svcHash)
		for j := range pp.eps {
			w.declare(sepChainPrefix, &r.hashes[pp.sep+j])
		}
	}
	for _, c := range r.staleNAT {
		w.declare(c, nil)
	}

	if !r.partial {
		for _, rule := range fixedNATRules {
			w.str(strings.ReplaceAll(rule, "{mark}", r.mark))
			w.nl()
		}
	}
	r.stats.NATRules += len(fixedNATRules)
	r.writeCounters(w)
	for i := range r.plans {
		if len(r.plans[i].eps) > 0 {
			r.writeServicePort(w, &r.plans[i])
		}
	}
	for _, c := range r.staleNAT {
		w.str("-X ", c)
		w.nl()
	}
	w.str("COMMIT\n")
	return w.b
}

func (r *iptRenderer) writeFilter() []byte {
	w := &writer{}
	w.str("*filter\n")
	w.declare(ServicesChain, nil)
	for _, c := range r.staleFilter {
		w.declare(c, nil)
	}
	for i := range r.plans {
		pp := &r.plans[i]
		if len(pp.eps) > 0 {
			continue
		}
		for _, ip := range pp.svc.ClusterIPs {
			if r.in.Family.Contains(ip) {
				// -A BRIDGE-SERVICES -d IP -p PROTO -m comment --comment "NAME has no endpoints" -m PROTO --dport PORT -j REJECT
				w.capture(ip, pp, " has no endpoints")
				w.str("REJECT")
				w.nl()
				r.stats.FilterRules++
			}
		}
	}
	for _, c := range r.staleFilter {
		w.str("-X ", c)
		w.nl()
	}
	w.str("COMMIT\n")
	return w.b
}

// writeServicePort writes the nat rules of a Service port with endpoints;
// for an unchanged one (partial render), only its capture.
func (r *iptRenderer) writeServicePort(w *writer, pp *portPlan) {
	n := len(pp.eps)
	before := w.rules
	if pp.unchanged {
		r.writeCaptures(w, pp)
		// Its chains stay as written before: count their rules as the
		// full render does below.
		rules := w.rules - before + 3*n + 1 // + the jump to its counter
		if r.in.Masquerade {
			rules++
		}
		if pp.svc.SessionAffinityTimeout > 0 {
			rules += n
		}
		r.stats.Endpoints += n
		r.stats.NATRules += rules
		return
	}
	hashes := r.hashes[pp.sep : pp.sep+n]

	r.writeCaptures(w, pp)
	// -A BRIDGE-SVC-X -j BRIDGE-CNT-X
	w.rule(svcChainPrefix, &pp.svcHash)
	w.str(" -j ")
	w.chain(cntChainPrefix, &pp.svcHash)
	w.nl()
	if r.in.Masquerade {
		// -A BRIDGE-SVC-X -m comment --comment "NAME cluster IP" -j BRIDGE-MARK-MASQ
		w.rule(svcChainPrefix, &pp.svcHash)
		w.comment(pp.name, " cluster IP", "")
		w.str(" -j ", MarkMasqChain)
		w.nl()
	}

	affinity := ""
	if t := pp.svc.SessionAffinityTimeout; t > 0 {
		affinity = strconv.Itoa(int(math.Ceil(t.Seconds())))
		for i := range pp.eps {
			// -A BRIDGE-SVC-X -m comment --comment "NAME -> EP" -m recent --name BRIDGE-SEP-Y --rcheck --seconds N --reap -j BRIDGE-SEP-Y
			w.rule(svcChainPrefix, &pp.svcHash)
			w.endpointComment(pp.name, pp.eps[i])
			w.str(" -m recent --name ")
			w.chain(sepChainPrefix, &hashes[i])
			w.str(" --rcheck --seconds ", affinity, " --reap -j ")
			w.chain(sepChainPrefix, &hashes[i])
			w.nl()
		}
	}
	for i := range pp.eps {
		// -A BRIDGE-SVC-X -m comment --comment "NAME -> EP" [-m statistic --mode random --probability P] -j BRIDGE-SEP-Y
		w.rule(svcChainPrefix, &pp.svcHash)
		w.endpointComment(pp.name, pp.eps[i])
		if i < n-1 {
			// Rule i catches 1/(n-i) of what rules 0..i-1 let through,
			// so that every endpoint gets 1/n of the new connections.
			w.str(" -m statistic --mode random --probability ", r.probability(n-i))
		}
		w.str(" -j ")
		w.chain(sepChainPrefix, &hashes[i])
		w.nl()
	}

	for i, ep := range pp.eps {
		// Hairpin: an endpoint connecting to its own Service would get
		// replies from itself, with its own address as source; masquerade
		// so that replies come back through this host's conntrack.
		// -A BRIDGE-SEP-Y -s EP -m comment --comment "NAME" -j BRIDGE-MARK-MASQ
		w.rule(sepChainPrefix, &hashes[i])
		w.str(" -s ")
		w.prefix(ep.Addr)
		w.comment(pp.name, "", "")
		w.str(" -j ", MarkMasqChain)
		w.nl()
		// -A BRIDGE-SEP-Y -p PROTO -m comment --comment "NAME" [-m recent --name BRIDGE-SEP-Y --set] -m PROTO -j DNAT --to-destination EP
		w.rule(sepChainPrefix, &hashes[i])
		w.str(" -p ", pp.proto)
		w.comment(pp.name, "", "")
		if affinity != "" {
			w.str(" -m recent --name ")
			w.chain(sepChainPrefix, &hashes[i])
			w.str(" --set")
		}
		w.str(" -m ", pp.proto, " -j DNAT --to-destination ")
		w.b = ep.AddrPort().AppendTo(w.b)
		w.nl()
	}
	r.stats.Endpoints += n
	r.stats.NATRules += w.rules - before
}

// writeCaptures writes the BRIDGE-SERVICES rules sending traffic to a
// Service port with endpoints to its chain.
func (r *iptRenderer) writeCaptures(w *writer, pp *portPlan) {
	for _, ip := range pp.svc.ClusterIPs {
		if r.in.Family.Contains(ip) {
			// -A BRIDGE-SERVICES -d IP -p PROTO -m comment --comment "NAME cluster IP" -m PROTO --dport PORT -j BRIDGE-SVC-X
			w.capture(ip, pp, " cluster IP")
			w.chain(svcChainPrefix, &pp.svcHash)
			w.nl()
		}
	}
}

// writer appends payload text. It counts lines that are rules.
type writer struct {
	b     []byte
	rules int
}

func (w *writer) str(parts ...string) {
	for _, s := range parts {
		w.b = append(w.b, s...)
	}
}

func (w *writer) nl() { w.b = append(w.b, '\n') }

// chain appends a chain name: prefix alone, or followed by a hash.
func (w *writer) chain(prefix string, h *[hashLen]byte) {
	w.b = append(w.b, prefix...)
	if h != nil {
		w.b = append(w.b, h[:]...)
	}
}

// declare appends ":CHAIN - [0:0]", which creates or flushes the chain.
func (w *writer) declare(prefix string, h *[hashLen]byte) {
	w.b = append(w.b, ':')
	w.chain(prefix, h)
	w.b = append(w.b, " - [0:0]\n"...)
}

// rule starts a rule appended to a chain.
func (w *writer) rule(prefix string, h *[hashLen]byte) {
	w.rules++
	w.b = append(w.b, "-A "...)
	w.chain(prefix, h)
}

// comment appends a comment match reading a+b+c.
func (w *writer) comment(a, b, c string) {
	w.str(` -m comment --comment "`, a, b, c, `"`)
}

// endpointComment appends the comment "NAME -> EP".
func (w *writer) endpointComment(name string, ep cluster.Endpoint) {
	w.str(` -m comment --comment "`, name, " -> ")
	w.b = ep.AddrPort().AppendTo(w.b)
	w.b = append(w.b, '"')
}

// prefix appends the single-address prefix of a ("10.0.0.1/32", "fd00::1/128").
func (w *writer) prefix(a netip.Addr) {
	w.b = a.AppendTo(w.b)
	if a.Is4() {
		w.b = append(w.b, "/32"...)
	} else {
		w.b = append(w.b, "/128"...)
	}
}

// capture appends the start of a BRIDGE-SERVICES rule matching traffic to a
// cluster IP and port, up to and including "-j ".
func (w *writer) capture(ip netip.Addr, pp *portPlan, comment string) {
	w.rule(ServicesChain, nil)
	w.str(" -d ")
	w.prefix(ip)
	w.str(" -p ", pp.proto)
	w.comment(pp.name, comment, "")
	w.str(" -m ", pp.proto, " --dport ")
	w.b = strconv.AppendInt(w.b, int64(pp.port.Port), 10)
	w.str(" -j ")
}

// probability returns the statistic match probability for the first of n
// remaining endpoints, formatted as kube-proxy does.
func (r *iptRenderer) probability(n int) string {
	for len(r.probabilities) <= n {
		i := len(r.probabilities)
		p := ""
		if i > 0 {
			p = strconv.FormatFloat(1/float64(i), 'f', 10, 64)
		}
		r.probabilities = append(r.probabilities, p)
	}
	return r.probabilities[n]
}

// hash returns the hash part of a chain name: 16 base32 characters of the
// SHA-256 of the Service port name, the protocol and, for an endpoint chain,
// the endpoint, as kube-proxy names its chains. Names are stable across
// restarts and versions, and prefix plus hash stays within iptables' limit of
// 28 characters.
func (r *iptRenderer) hash(portName, proto string, endpoint netip.AddrPort) [hashLen]byte {
	b := append(r.hashBuf[:0], portName...)
	b = append(b, proto...)
	if endpoint.IsValid() {
		b = endpoint.AppendTo(b)
	}
	r.hashBuf = b
	sum := sha256.Sum256(b)
	// 10 bytes are exactly 16 base32 characters, without padding.
	var h [hashLen]byte
	base32.StdEncoding.Encode(h[:], sum[:10])
	return h
}

// servicePortName is "namespace/name:port", or "namespace/name" for an
// unnamed port, as in kube-proxy's comments.
func servicePortName(k cluster.ServiceKey, port string) string {
	if port == "" {
		return k.Namespace + "/" + k.Name
	}
	return k.Namespace + "/" + k.Name + ":" + port
}

// protocolName returns the iptables name of a Service protocol, or "" for a
// protocol the agent does not proxy.
func protocolName(p string) string {
	switch p {
	case "TCP":
		return "tcp"
	case "UDP":
		return "udp"
	case "SCTP":
		return "sctp"
	}
	return ""
}
