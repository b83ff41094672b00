package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// IPTablesOptions configure the iptables backend.
type IPTablesOptions struct {
	// Variant is legacy or nft; empty means DetectVariant.
	Variant Variant
	// Families to program (default both).
	Families []Family
	// Masquerade and MasqueradeMark: see RenderInput.
	Masquerade     bool
	MasqueradeMark uint32
	// Zone: see RenderInput.
	Zone string
	// FullSyncPeriod is how often a sync is full (checking the jumps,
	// listing the chains and restoring every chain, even unchanged), which
	// repairs chains and rules someone else removed or changed; syncs in
	// between are partial (default 1 hour, as kube-proxy's).
	FullSyncPeriod time.Duration
	// CheckPeriod is how often, between full syncs, the jumps into the
	// agent's chains are checked (iptables -C, a few commands whatever the
	// number of Services); a missing one, as after a firewall reload that
	// flushed the built-in chains, makes that sync full (default 1
	// minute; the daemon passes proxy.syncPeriod).
	CheckPeriod time.Duration
	// CreatedTables is the file (CreatedTablesFile of the state directory)
	// recording the iptables-nft tables the agent's writes create, which
	// RemoveCreatedTables deletes again; empty records nothing.
	CreatedTables string
	Logger        *slog.Logger
}

// IPTables is the iptables backend: a consumer of cluster snapshots that
// keeps the agent's chains in the kernel.
type IPTables struct {
	opts      IPTablesOptions
	x         xtables
	conntrack conntrackCleaner
	log       *slog.Logger
	now       func() time.Time

	metrics *proxyMetrics

	applied map[Family]*appliedState
	// checked is when the jumps of each family were last checked.
	checked map[Family]time.Time
	// noted tells the families whose missing tables were recorded.
	noted map[Family]bool

	mu      sync.Mutex // guards stats and written, read by Status concurrently with Sync
	stats   map[Family]RenderStats
	written map[Family]time.Time
	warned  map[cluster.ServiceKey]bool
}

// appliedState is what the last successful restore of a family wrote. Its
// presence means the tables hold exactly what a full render of snap writes
// (with the settings below): the next sync may then be partial.
type appliedState struct {
	snap *cluster.Snapshot // written from; snapshots are immutable
	// full is when the last full sync was written.
	full time.Time
	// The settings snap was rendered with; a change forces a full sync.
	masquerade bool
	mark       uint32
	zone       string
}

// NewIPTables returns the backend for this host's iptables variant.
func NewIPTables(ctx context.Context, o IPTablesOptions) (*IPTables, error) {
	if len(o.Families) == 0 {
		o.Families = []Family{IPv4, IPv6}
	}
	if o.Variant == "" {
		v, err := DetectVariant(ctx)
		if err != nil {
			return nil, err
		}
		o.Variant = v
	}
	x, err := newExecXtables(o.Variant, o.Families)
	if err != nil {
		return nil, err
	}
	return newIPTables(o, x, netlinkConntrack{}), nil
}

func newIPTables(o IPTablesOptions, x xtables, ct conntrackCleaner) *IPTables {
	if o.FullSyncPeriod == 0 {
		o.FullSyncPeriod = time.Hour
	}
	if o.CheckPeriod == 0 {
		o.CheckPeriod = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &IPTables{
		checked: map[Family]time.Time{}, noted: map[Family]bool{},
		opts: o, x: x, conntrack: ct, log: o.Logger, now: time.Now, metrics: newProxyMetrics(),
		applied: map[Family]*appliedState{},
		stats:   map[Family]RenderStats{},
		written: map[Family]time.Time{},
		warned:  map[cluster.ServiceKey]bool{},
	}
}

// Name implements daemon.Consumer.
func (p *IPTables) Name() string { return "proxy" }

// Variant returns the iptables variant in use.
func (p *IPTables) Variant() Variant { return p.opts.Variant }

// Sync implements daemon.Consumer: it writes the snapshot's rules in one
// restore per family.
//
// A full sync checks our jumps in the built-in chains, lists the chains of
// the nat and filter tables, renders every chain and restores them all; it
// is the first sync, the first after a failure, and one every
// FullSyncPeriod, which also repairs chains or jumps that someone else
// removed. Between full syncs, a sync is partial: it runs no check and no
// listing (the chains of ours that exist are those the last write left),
// and restores only BRIDGE-SERVICES and the chains of the Services whose
// pointer changed since the last write, deleting those they no longer need
// (see RenderInput.Previous). A partial restore that fails, because
// someone removed a chain it refers to, leaves the rules as they were and
// makes the next sync full. A snapshot already written is not written again
// until the next full sync.
func (p *IPTables) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	var errs []error
	for _, fam := range p.opts.Families {
		if err := p.syncFamily(ctx, snap, fam); err != nil {
			delete(p.applied, fam) // force a full write next time
			errs = append(errs, fmt.Errorf("%s: %w", fam, err))
		}
	}
	return errors.Join(errs...)
}

func (p *IPTables) syncFamily(ctx context.Context, snap *cluster.Snapshot, fam Family) error {
	last := p.applied[fam]
	now := p.now()
	mark := p.opts.MasqueradeMark
	if mark == 0 {
		mark = DefaultMasqueradeMark
	}
	full := last == nil || now.Sub(last.full) >= p.opts.FullSyncPeriod ||
		last.masquerade != p.opts.Masquerade || last.mark != mark || last.zone != p.opts.Zone
	if !full && now.Sub(p.checked[fam]) >= p.opts.CheckPeriod {
		p.checked[fam] = now
		full = !p.jumpsPresent(fam)
	}
	if !full {
		if last.snap == snap {
			return nil
		}
		return p.partialSync(ctx, snap, fam, last)
	}

	if err := p.noteCreatedTables(ctx, fam); err != nil {
		return err
	}
	var missing []Jump
	for _, j := range IPTablesJumps() {
		ok, err := p.x.JumpExists(fam, j)
		if err != nil && !isMissingChain(err) {
			return fmt.Errorf("check jump %s/%s: %w", j.Table, j.Chain, err)
		}
		if !ok {
			missing = append(missing, j)
		}
	}
	natChains, err := p.x.Chains(ctx, fam, "nat")
	if err != nil {
		return err
	}
	filterChains, err := p.x.Chains(ctx, fam, "filter")
	if err != nil {
		return err
	}
	nat, filter, stats, err := RenderIPTables(RenderInput{
		Snapshot: snap, Family: fam, Masquerade: p.opts.Masquerade, MasqueradeMark: mark,
		Zone: p.opts.Zone, ExistingNATChains: natChains, ExistingFilterChains: filterChains,
	})
	if err != nil {
		return err
	}
	if last != nil && len(missing) > 0 {
		p.metrics.repairs.Inc()
		p.log.Warn("rules of ours were removed by someone else; restoring", "family", fam.String(), "missingJumps", len(missing))
	}
	payload := append(slices.Clip(nat), filter...)
	if err := p.restore(ctx, fam, payload, stats); err != nil {
		return err
	}
	// The jumps go in after the chains they target exist.
	for _, j := range missing {
		if err := p.x.InsertJump(fam, j); err != nil {
			return fmt.Errorf("insert jump %s/%s: %w", j.Table, j.Chain, err)
		}
	}
	if last != nil {
		clearStaleUDP(p.conntrack, p.log, udpServicePorts(last.snap, fam, p.opts.Zone), udpServicePorts(snap, fam, p.opts.Zone))
	}
	p.checked[fam] = now
	p.recordWrite(fam, snap, now, now, mark, stats, "full", len(payload))
	return nil
}

// jumpsPresent reports whether every jump into the agent's chains is in
// place; when one is not, it logs why.
func (p *IPTables) jumpsPresent(fam Family) bool {
	for _, j := range IPTablesJumps() {
		ok, err := p.x.JumpExists(fam, j)
		if err != nil || !ok {
			p.log.Warn("iptables: a jump into the agent's chains is gone; rewriting every chain", "family", fam.String(),
				"table", j.Table, "chain", j.Chain, "err", err)
			return false
		}
	}
	return true
}

// partialSync writes what changed since last (see Sync).
func (p *IPTables) partialSync(ctx context.Context, snap *cluster.Snapshot, fam Family, last *appliedState) error {
	now := p.now()
	keys := changedServices(last.snap, snap)
	if len(keys) == 0 {
		last.snap = snap // same Services: later calls with this snapshot return at once
		return nil
	}
	nat, filter, stats, err := RenderIPTables(RenderInput{
		Snapshot: snap, Family: fam, Masquerade: last.masquerade, MasqueradeMark: last.mark,
		Zone: last.zone, Previous: last.snap,
	})
	if err != nil {
		return err
	}
	payload := append(slices.Clip(nat), filter...)
	if err := p.restore(ctx, fam, payload, stats); err != nil {
		return err
	}
	clearStaleUDP(p.conntrack, p.log,
		udpServicePorts(subSnapshot(last.snap, keys), fam, last.zone),
		udpServicePorts(subSnapshot(snap, keys), fam, last.zone))
	p.recordWrite(fam, snap, now, last.full, last.mark, stats, "partial", len(payload))
	return nil
}

// restore writes a payload and counts the outcome.
func (p *IPTables) restore(ctx context.Context, fam Family, payload []byte, stats RenderStats) error {
	if err := p.x.Restore(ctx, fam, payload); err != nil {
		p.metrics.writes.WithLabelValues(fam.String(), "error").Inc()
		return err
	}
	p.metrics.writes.WithLabelValues(fam.String(), "success").Inc()
	p.metrics.rules.WithLabelValues(fam.String(), "nat").Set(float64(stats.NATRules))
	p.metrics.rules.WithLabelValues(fam.String(), "filter").Set(float64(stats.FilterRules))
	p.metrics.noEndpoints.WithLabelValues(fam.String()).Set(float64(stats.NoEndpoints))
	return nil
}

// recordWrite records a successful write of snap.
func (p *IPTables) recordWrite(fam Family, snap *cluster.Snapshot, now, full time.Time, mark uint32, stats RenderStats, kind string, size int) {
	for _, key := range stats.LocalPolicyIgnored {
		if !p.warned[key] {
			p.warned[key] = true
			p.log.Warn("internalTrafficPolicy: Local has no local endpoints on this host; proxying as Cluster", "service", key.String())
		}
	}
	p.applied[fam] = &appliedState{snap: snap, full: full, masquerade: p.opts.Masquerade, mark: mark, zone: p.opts.Zone}
	p.mu.Lock()
	p.stats[fam] = stats
	p.written[fam] = now
	p.mu.Unlock()
	p.log.Debug("iptables rules written", "family", fam.String(), "kind", kind, "services", stats.Services,
		"endpoints", stats.Endpoints, "noEndpoints", stats.NoEndpoints, "bytes", size)
}

// FamilyStatus is what the proxy shows of one family in `bridge-agent status`.
type FamilyStatus struct {
	Services     int `json:"services"`
	ServicePorts int `json:"servicePorts"`
	Endpoints    int `json:"endpoints"`
	NoEndpoints  int `json:"portsWithoutEndpoints"`
	NATRules     int `json:"natRules"`
	FilterRules  int `json:"filterRules"`
	// Elements counts the set and map elements (nftables only).
	Elements  int       `json:"elements,omitempty"`
	LastWrite time.Time `json:"lastWrite,omitzero"`
	// NFTPeakRSS is the largest peak resident memory, in bytes, of an nft
	// process run for this family (nftables only).
	NFTPeakRSS int64 `json:"nftPeakRSSBytes,omitempty"`
}

// ProxyStatus is the proxy's status detail.
type ProxyStatus struct {
	Mode string `json:"mode"`
	// Backend is "iptables" or "nftables".
	Backend  string                  `json:"backend"`
	Variant  Variant                 `json:"variant,omitempty"`
	Families map[string]FamilyStatus `json:"families"`
	// ModeReason says why proxy.mode auto chose Backend (ChooseBackend:
	// when not nftables, the probe's error); empty for an explicit mode.
	ModeReason string `json:"modeReason,omitempty"`
	// Connections are the connections this host opened to each Service
	// port, from the kernel's counters (counters.go); ConnectionsError
	// says why they could not be read.
	Connections      []ServicePortCounter `json:"connections,omitempty"`
	ConnectionsError string               `json:"connectionsError,omitempty"`
}

// Status implements daemon.StatusReporter.
func (p *IPTables) Status() any {
	st := ProxyStatus{Mode: "iptables", Backend: "iptables", Variant: p.opts.Variant, Families: map[string]FamilyStatus{}}
	st.connections(p.ServiceCounters)
	p.mu.Lock()
	defer p.mu.Unlock()
	for fam, s := range p.stats {
		st.Families[fam.String()] = FamilyStatus{
			Services: s.Services, ServicePorts: s.ServicePorts, Endpoints: s.Endpoints, NoEndpoints: s.NoEndpoints,
			NATRules: s.NATRules, FilterRules: s.FilterRules, LastWrite: p.written[fam],
		}
	}
	return st
}

func isMissingChain(err error) bool {
	s := err.Error()
	// -C and -D of a jump whose target chain does not exist yet fail with
	// one of these, depending on the variant.
	return strings.Contains(s, "No chain/target/match by that name") || strings.Contains(s, "does not exist") ||
		strings.Contains(s, "Couldn't load target")
}

// CleanupIPTables removes every chain and jump of ours, in both variants and
// both families, and nothing else. Tools that are not installed are skipped,
// and so is every table that does not exist: a table is never created to
// look into it (see existingTables). The tables themselves stay: see
// RemoveCreatedTables for the iptables-nft ones the agent created.
func CleanupIPTables(ctx context.Context) error {
	var errs []error
	for _, v := range []Variant{VariantLegacy, VariantNFT} {
		for _, fam := range []Family{IPv4, IPv6} {
			x, err := newExecXtables(v, []Family{fam})
			if err != nil {
				continue // variant not installed
			}
			if err := cleanupFamily(ctx, x, fam); err != nil {
				errs = append(errs, fmt.Errorf("cleanup %s %s: %w", v, fam, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cleanupFamily deletes our jumps and chains from the tables that exist and
// hold chains of ours. A jump of ours cannot exist without its target
// chain, so a table without our chains is left untouched.
func cleanupFamily(ctx context.Context, x xtables, fam Family) error {
	tables, err := x.Tables(ctx, fam)
	if err != nil {
		return err
	}
	ours := map[string][]string{}
	for _, table := range []string{"nat", "filter"} {
		if !slices.Contains(tables, table) {
			continue
		}
		chains, err := x.Chains(ctx, fam, table)
		if err != nil {
			return err
		}
		for _, c := range chains {
			if strings.HasPrefix(c, ChainPrefix) {
				ours[table] = append(ours[table], c)
			}
		}
	}
	for _, j := range IPTablesJumps() {
		if len(ours[j.Table]) == 0 {
			continue
		}
		if err := x.DeleteJump(fam, j); err != nil && !isMissingChain(err) {
			return err
		}
	}
	var payload bytes.Buffer
	for _, table := range []string{"nat", "filter"} {
		if len(ours[table]) == 0 {
			continue
		}
		fmt.Fprintf(&payload, "*%s\n", table)
		for _, c := range ours[table] {
			fmt.Fprintf(&payload, ":%s - [0:0]\n", c)
		}
		for _, c := range ours[table] {
			fmt.Fprintf(&payload, "-X %s\n", c)
		}
		payload.WriteString("COMMIT\n")
	}
	if payload.Len() == 0 {
		return nil
	}
	return x.Restore(ctx, fam, payload.Bytes())
}
