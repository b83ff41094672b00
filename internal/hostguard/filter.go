package hostguard

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Reasons of a refused ClusterIP besides the guard's own.
const (
	// ReasonOutsideServiceCIDRs: the ClusterIP lies in none of the
	// cluster's Service ranges.
	ReasonOutsideServiceCIDRs Reason = "outsideServiceCIDRs"
	// ReasonRefusedServiceCIDR: the ClusterIP lies only in Service ranges
	// the guard refused.
	ReasonRefusedServiceCIDR Reason = "refusedServiceCIDR"
)

// RefusedCIDR is a Service range the guard refused.
type RefusedCIDR struct {
	CIDR   netip.Prefix `json:"cidr"`
	Reason Reason       `json:"reason"`
	Detail string       `json:"detail"`
}

// RefusedIP is a ClusterIP the guard refused: it gets no rules and no DNS
// answer; the Service's other ClusterIPs keep theirs.
type RefusedIP struct {
	Service cluster.ServiceKey `json:"service"`
	IP      netip.Addr         `json:"ip"`
	Reason  Reason             `json:"reason"`
	Detail  string             `json:"detail"`
}

func (r RefusedIP) key() string { return r.Service.String() + "|" + r.IP.String() }

// Status is the guard's part of `bridge-agent status`.
type Status struct {
	// Version counts changes of the host's facts; Facts are the current
	// ones.
	Version uint64 `json:"version"`
	Facts   *Facts `json:"facts"`
	// ServiceCIDRs are the Service ranges ClusterIPs must lie in (the
	// refused ones left out), from the cluster's ServiceCIDR objects
	// ("cluster"), else from the configuration ("config"); none ("") means
	// ClusterIPs are checked against the host guard alone.
	ServiceCIDRs     []netip.Prefix `json:"serviceCIDRs"`
	ServiceCIDRsFrom string         `json:"serviceCIDRsFrom,omitempty"`
	// Note says what the guard cannot check.
	Note                string        `json:"note,omitempty"`
	RefusedServiceCIDRs []RefusedCIDR `json:"refusedServiceCIDRs,omitempty"`
	RefusedClusterIPs   []RefusedIP   `json:"refusedClusterIPs,omitempty"`
}

// NoRangesNote is Status.Note when no Service range is known.
const NoRangesNote = "no Service ranges known (the cluster serves no ServiceCIDR objects and serviceCIDRs is empty): ClusterIPs are checked against the host guard only"

// entry is a Service with at least one refused ClusterIP.
type entry struct {
	in      *cluster.Service
	out     *cluster.Service // nil: every ClusterIP refused, the Service is left out
	refused []RefusedIP
}

// Filter is the guard between the cluster view and the consumers: it turns
// each snapshot into one without the ClusterIPs the guard refuses. See the
// package documentation for its contract.
type Filter struct {
	configured []netip.Prefix
	log        *slog.Logger
	refusedG   *prometheus.GaugeVec

	mu      sync.Mutex
	lastIn  *cluster.Snapshot
	lastF   *Facts
	lastOut *cluster.Snapshot
	entries map[cluster.ServiceKey]*entry
	cidrs   []RefusedCIDR
	allowed []netip.Prefix
	from    string
	logged  map[string]string // refusals logged, by key: their detail
	full    int               // full evaluations, for tests
}

// NewFilter returns a Filter; configured are the Service ranges of the
// configuration (serviceCIDRs), used while the cluster serves none.
func NewFilter(configured []netip.Prefix, log *slog.Logger) *Filter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Filter{
		configured: configured,
		log:        log,
		entries:    map[cluster.ServiceKey]*entry{},
		logged:     map[string]string{},
		refusedG: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_guard_refused",
			Help: "What the host guard refuses after the last snapshot, by kind (clusterIP, serviceCIDR) and reason; refused routes are in bridge_agent_routes_problems.",
		}, []string{"kind", "reason"}),
	}
	for _, k := range []string{"clusterIP", "serviceCIDR"} {
		for _, r := range append(slices.Clone(Reasons), ReasonOutsideServiceCIDRs, ReasonRefusedServiceCIDR) {
			if k == "serviceCIDR" && (r == ReasonOutsideServiceCIDRs || r == ReasonRefusedServiceCIDR) {
				continue
			}
			f.refusedG.WithLabelValues(k, string(r))
		}
	}
	return f
}

// Collectors returns the guard's metrics.
func (f *Filter) Collectors() []prometheus.Collector { return []prometheus.Collector{f.refusedG} }

// Apply returns in without what facts refuse. It returns the same snapshot
// for the same in and facts; an unchanged, unrefused Service keeps its
// pointer, and an unchanged refused one gets the same filtered copy every
// time, so consumers that find changes by pointer see only real ones.
// Changed lists the Services whose filtered value changed since the last
// result. nil facts: only the special ranges and the Service ranges apply.
func (f *Filter) Apply(in *cluster.Snapshot, facts *Facts) *cluster.Snapshot {
	if in == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if in == f.lastIn && facts == f.lastF && f.lastOut != nil {
		return f.lastOut
	}
	incremental := f.lastOut != nil && facts == f.lastF && in.Restored.Equal(f.lastIn.Restored) &&
		in.Version == f.lastIn.Version+1 && slices.Equal(in.ServiceCIDRs, f.lastIn.ServiceCIDRs)
	var changed []cluster.ServiceKey
	if incremental {
		for _, k := range in.Changed {
			f.evaluate(k, in.Services[k], facts)
		}
		changed = in.Changed
	} else {
		f.full++
		f.ranges(in, facts)
		old := f.entries
		f.entries = map[cluster.ServiceKey]*entry{}
		for k, svc := range in.Services {
			if e := f.check(k, svc, facts, old[k]); e != nil {
				f.entries[k] = e
			}
		}
	}
	out := *in
	out.ServiceCIDRs = f.allowed
	out.Services = in.Services
	if len(f.entries) > 0 {
		out.Services = maps.Clone(in.Services)
		for k, e := range f.entries {
			if e.out == nil {
				delete(out.Services, k)
			} else {
				out.Services[k] = e.out
			}
		}
	}
	if !incremental {
		changed = diffServices(f.lastOut, &out)
	}
	out.Changed = changed
	f.lastIn, f.lastF, f.lastOut = in, facts, &out
	f.report()
	return &out
}

// ranges works out the Service ranges ClusterIPs must lie in.
func (f *Filter) ranges(in *cluster.Snapshot, facts *Facts) {
	known, from := in.ServiceCIDRs, "cluster"
	if len(known) == 0 {
		known, from = f.configured, "config"
	}
	if len(known) == 0 {
		from = ""
	}
	f.allowed, f.cidrs, f.from = nil, nil, from
	for _, p := range known {
		if r := facts.CheckPrefix(p); r != nil {
			f.cidrs = append(f.cidrs, RefusedCIDR{CIDR: p, Reason: r.Reason, Detail: r.Detail})
			continue
		}
		f.allowed = append(f.allowed, p)
	}
}

// evaluate re-checks one Service of an incremental snapshot.
func (f *Filter) evaluate(k cluster.ServiceKey, svc *cluster.Service, facts *Facts) {
	if e := f.check(k, svc, facts, f.entries[k]); e != nil {
		f.entries[k] = e
	} else {
		delete(f.entries, k)
	}
}

// check returns the entry of a Service with a refused ClusterIP, reusing
// old when it holds the same Service refused the same way; nil when
// nothing of the Service is refused.
func (f *Filter) check(k cluster.ServiceKey, svc *cluster.Service, facts *Facts, old *entry) *entry {
	if svc == nil || len(svc.ClusterIPs) == 0 {
		return nil
	}
	var refused []RefusedIP
	for _, ip := range svc.ClusterIPs {
		if r := f.checkIP(ip, facts); r != nil {
			refused = append(refused, RefusedIP{Service: k, IP: ip, Reason: r.Reason, Detail: r.Detail})
		}
	}
	if len(refused) == 0 {
		return nil
	}
	var keep []netip.Addr
	for _, ip := range svc.ClusterIPs {
		if !slices.ContainsFunc(refused, func(r RefusedIP) bool { return r.IP == ip }) {
			keep = append(keep, ip)
		}
	}
	if old != nil && old.in == svc && slices.Equal(old.refused, refused) {
		return old
	}
	e := &entry{in: svc, refused: refused}
	if len(keep) > 0 {
		c := *svc
		c.ClusterIPs = keep
		e.out = &c
	}
	return e
}

// checkIP refuses a ClusterIP outside the allowed Service ranges (when any
// are known) or refused by the facts.
func (f *Filter) checkIP(ip netip.Addr, facts *Facts) *Refusal {
	if r := facts.CheckAddr(ip); r != nil {
		return r
	}
	if f.from == "" {
		return nil
	}
	for _, p := range f.allowed {
		if p.Contains(ip) {
			return nil
		}
	}
	for _, c := range f.cidrs {
		if c.CIDR.Contains(ip) {
			return &Refusal{Reason: ReasonRefusedServiceCIDR, Detail: ip.String() + " is in the refused Service range " + c.CIDR.String()}
		}
	}
	return &Refusal{Reason: ReasonOutsideServiceCIDRs, Detail: ip.String() + " is in none of the Service ranges (" + joinPrefixes(f.allowed) + ", from the " + f.from + ")"}
}

// diffServices returns the keys whose Service pointer differs between the
// two snapshots, sorted.
func diffServices(prev, next *cluster.Snapshot) []cluster.ServiceKey {
	var old map[cluster.ServiceKey]*cluster.Service
	if prev != nil {
		old = prev.Services
	}
	var out []cluster.ServiceKey
	for k, s := range next.Services {
		if old[k] != s {
			out = append(out, k)
		}
	}
	for k := range old {
		if _, ok := next.Services[k]; !ok {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b cluster.ServiceKey) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return out
}

// maxLogged bounds the refusals logged one by one per snapshot; the rest
// are summed up in one line (status lists them all).
const maxLogged = 10

// report logs refusals when they appear or change and when they go away,
// and sets the metrics. Called with f.mu held.
func (f *Filter) report() {
	current := map[string]string{}
	var fresh []string
	counts := map[[2]string]int{}
	for _, c := range f.cidrs {
		k := "cidr|" + c.CIDR.String()
		current[k] = c.Detail
		counts[[2]string{"serviceCIDR", string(c.Reason)}]++
		if f.logged[k] != c.Detail {
			f.log.Warn("host guard: Service range refused; ClusterIPs in it get no rules", "cidr", c.CIDR, "reason", c.Reason, "detail", c.Detail)
		}
	}
	for _, e := range f.entries {
		for _, r := range e.refused {
			k := "ip|" + r.key()
			current[k] = r.Detail
			counts[[2]string{"clusterIP", string(r.Reason)}]++
			if f.logged[k] != r.Detail {
				fresh = append(fresh, k)
				if len(fresh) <= maxLogged {
					f.log.Warn("host guard: ClusterIP refused: no rules, no DNS answer", "service", r.Service, "ip", r.IP, "reason", r.Reason, "detail", r.Detail)
				}
			}
		}
	}
	if len(fresh) > maxLogged {
		f.log.Warn("host guard: more ClusterIPs refused (bridge-agent status lists them)", "count", len(fresh)-maxLogged)
	}
	gone := 0
	for k := range f.logged {
		if _, ok := current[k]; !ok {
			if gone++; gone <= maxLogged {
				f.log.Info("host guard: no longer refused", "what", strings.Replace(k, "|", " ", 2))
			}
		}
	}
	if gone > maxLogged {
		f.log.Info("host guard: more refusals resolved", "count", gone-maxLogged)
	}
	f.logged = current
	f.refusedG.Reset()
	for _, k := range []string{"clusterIP", "serviceCIDR"} {
		for _, r := range append(slices.Clone(Reasons), ReasonOutsideServiceCIDRs, ReasonRefusedServiceCIDR) {
			if k == "serviceCIDR" && (r == ReasonOutsideServiceCIDRs || r == ReasonRefusedServiceCIDR) {
				continue
			}
			f.refusedG.WithLabelValues(k, string(r)).Set(float64(counts[[2]string{k, string(r)}]))
		}
	}
}

// Status returns what the filter refused in its last result.
func (f *Filter) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{
		Facts:               f.lastF,
		ServiceCIDRs:        slices.Clone(f.allowed),
		ServiceCIDRsFrom:    f.from,
		RefusedServiceCIDRs: slices.Clone(f.cidrs),
	}
	if st.ServiceCIDRs == nil {
		st.ServiceCIDRs = []netip.Prefix{}
	}
	if f.from == "" {
		st.Note = NoRangesNote
	}
	for _, e := range f.entries {
		st.RefusedClusterIPs = append(st.RefusedClusterIPs, e.refused...)
	}
	slices.SortFunc(st.RefusedClusterIPs, func(a, b RefusedIP) int {
		return cmp.Or(strings.Compare(a.Service.String(), b.Service.String()), a.IP.Compare(b.IP))
	})
	return st
}

func joinPrefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// WriteText writes the status for humans, indented by two spaces.
func (s *Status) WriteText(w io.Writer) {
	if f := s.Facts; f != nil {
		fmt.Fprintf(w, "  this host (version %d): %d addresses, networks %s, gateways %s, resolvers %s\n", s.Version,
			len(f.Local), joinPrefixes(f.Connected), joinAddrsOr(f.Gateways), joinAddrsOr(f.Resolvers))
	}
	if s.ServiceCIDRsFrom != "" {
		fmt.Fprintf(w, "  service ranges: %s (from the %s)\n", joinPrefixes(s.ServiceCIDRs), s.ServiceCIDRsFrom)
	}
	if s.Note != "" {
		fmt.Fprintf(w, "  note: %s\n", s.Note)
	}
	for _, c := range s.RefusedServiceCIDRs {
		fmt.Fprintf(w, "    ! service range %s: %s: %s\n", c.CIDR, c.Reason, c.Detail)
	}
	for _, r := range s.RefusedClusterIPs {
		fmt.Fprintf(w, "    ! %s %s: %s: %s\n", r.Service, r.IP, r.Reason, r.Detail)
	}
	if len(s.RefusedServiceCIDRs)+len(s.RefusedClusterIPs) == 0 {
		fmt.Fprintln(w, "  nothing refused")
	}
}

func joinAddrsOr(as []netip.Addr) string {
	if len(as) == 0 {
		return "none"
	}
	return joinAddrs(as)
}
