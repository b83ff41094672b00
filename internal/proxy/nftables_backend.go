package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// NFTablesOptions configure the nftables backend.
type NFTablesOptions struct {
	// Families to program (default both).
	Families []Family
	// Masquerade, MasqueradeMark and Zone: see RenderInput.
	Masquerade     bool
	MasqueradeMark uint32
	Zone           string
	// FullSyncPeriod is how often the whole table is rewritten (flushed and
	// refilled in one transaction) instead of only the changes, to repair
	// elements someone else removed or changed (default 1 hour, as
	// kube-proxy's). At 10k Services a full write takes about a second and a
	// change arriving meanwhile waits for it.
	FullSyncPeriod time.Duration
	// CheckPeriod is how often, between full writes, the table's skeleton
	// is compared with what the agent wrote: the table, every chain with its
	// number of rules, every set. A difference (a "flush ruleset" by a
	// firewall reload, a deleted chain) makes that sync a full write. The
	// listing leaves out set elements and takes milliseconds at any size
	// (default 1 minute; the daemon passes proxy.syncPeriod).
	CheckPeriod time.Duration
	Logger      *slog.Logger
}

// NFTables is the nftables backend: a consumer of cluster snapshots that
// keeps the agent's private table of each family in the kernel. After a full
// write it sends only the changes since the last sync, in one transaction per
// family: it re-renders only the Services whose pointer changed since the
// applied snapshot and patches the desired state it keeps in memory
// (nftModel), so that a sync costs in proportion to the change.
type NFTables struct {
	opts      NFTablesOptions
	nft       nftRunner
	conntrack conntrackCleaner
	log       *slog.Logger
	now       func() time.Time
	metrics   *proxyMetrics

	applied map[Family]*nftApplied
	// checked is when the tables' skeletons were last compared.
	checked time.Time

	nftMetrics *nftMetrics

	mu    sync.Mutex // guards stats, written, peakRSS and counted, read by Status concurrently with Sync
	stats map[Family]NFTRenderStats
	// counted is the model of each family's last write, whose
	// service-counters elements name the counters (ServiceCounters);
	// patched under mu.
	counted map[Family]*nftModel
	written map[Family]time.Time
	peakRSS map[Family]int64
	warned  map[cluster.ServiceKey]bool
}

// nftMetrics are the nftables backend's own metrics.
type nftMetrics struct {
	peakRSS *prometheus.GaugeVec
}

func newNFTMetrics() *nftMetrics {
	return &nftMetrics{
		peakRSS: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_proxy_nft_peak_rss_bytes",
			Help: "Peak resident memory of the nft process of the last transaction, by family and kind (recreate, full, incremental).",
		}, []string{"family", "kind"}),
	}
}

// nftApplied is what the kernel holds for a family after the last
// successful transaction.
type nftApplied struct {
	snap *cluster.Snapshot
	// model is the table's desired content for snap, patched by later
	// syncs; chains and sets are its chains and set declarations as
	// written.
	model  *nftModel
	chains []NFTChain
	sets   []NFTSet
	// full is when the table was last written whole.
	full time.Time
}

// NewNFTables returns the nftables backend, or an error when this host's nft
// command or kernel cannot run it.
func NewNFTables(ctx context.Context, o NFTablesOptions) (*NFTables, error) {
	x, err := newExecNFT()
	if err != nil {
		return nil, err
	}
	if ok, reason := nftSupported(ctx, x); !ok {
		return nil, fmt.Errorf("nftables: %s", reason)
	}
	return newNFTables(o, x, netlinkConntrack{}), nil
}

func newNFTables(o NFTablesOptions, x nftRunner, ct conntrackCleaner) *NFTables {
	if len(o.Families) == 0 {
		o.Families = []Family{IPv4, IPv6}
	}
	if o.FullSyncPeriod == 0 {
		o.FullSyncPeriod = time.Hour
	}
	if o.CheckPeriod == 0 {
		o.CheckPeriod = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &NFTables{
		opts: o, nft: x, conntrack: ct, log: o.Logger, now: time.Now, metrics: newProxyMetrics(),
		nftMetrics: newNFTMetrics(),
		applied:    map[Family]*nftApplied{},
		peakRSS:    map[Family]int64{},
		stats:      map[Family]NFTRenderStats{},
		written:    map[Family]time.Time{},
		warned:     map[cluster.ServiceKey]bool{},
		counted:    map[Family]*nftModel{},
	}
}

// Name implements daemon.Consumer.
func (p *NFTables) Name() string { return "proxy" }

// Collectors implements daemon.MetricsProvider, with the iptables backend's
// metric names.
func (p *NFTables) Collectors() []prometheus.Collector {
	return append(p.metrics.collectors(), p.nftMetrics.peakRSS, newCounterCollector(p.ServiceCounters, p.log))
}

// Sync implements daemon.Consumer. The first sync of a family (and the first
// after a failure) recreates the table in one transaction; later ones send
// only the element and chain changes; every CheckPeriod the table's skeleton
// is checked, and rewritten when someone else changed it; every
// FullSyncPeriod the table is flushed and refilled to repair it. On error the kernel keeps its previous
// state and the next sync is a full one.
func (p *NFTables) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	if now := p.now(); len(p.applied) > 0 && now.Sub(p.checked) >= p.opts.CheckPeriod {
		p.checked = now
		p.checkTables(ctx)
	}
	var errs []error
	for _, fam := range p.opts.Families {
		if err := p.syncFamily(ctx, snap, fam); err != nil {
			delete(p.applied, fam) // force a full write next time
			errs = append(errs, fmt.Errorf("%s: %w", fam, err))
		}
	}
	return errors.Join(errs...)
}

func (p *NFTables) syncFamily(ctx context.Context, snap *cluster.Snapshot, fam Family) error {
	last := p.applied[fam]
	now := p.now()
	due := last == nil || now.Sub(last.full) >= p.opts.FullSyncPeriod
	if !due && last.snap == snap {
		return nil
	}
	renderStart := time.Now()
	in := NFTRenderInput{
		Snapshot: snap, Family: fam, Masquerade: p.opts.Masquerade,
		MasqueradeMark: p.opts.MasqueradeMark, Zone: p.opts.Zone,
	}

	var (
		script           []byte
		commands         int
		kind             string
		st               = &nftApplied{snap: snap, full: now}
		stats            NFTRenderStats
		local            []cluster.ServiceKey
		udpPrev, udpNext map[netip.AddrPort][]netip.AddrPort
	)
	if due {
		// The whole table: render every Service, keeping the endpoint
		// positions of the previous model.
		var prevGroups map[cluster.ServiceKey]*nftGroup
		if last != nil {
			prevGroups = last.model.groups
		}
		m, err := newNFTModel(in, prevGroups)
		if err != nil {
			return err
		}
		rs := m.ruleset()
		st.model, st.chains, st.sets = m, rs.Chains, m.setDecls()
		stats = m.renderStats(true)
		local = stats.LocalPolicyIgnored
		if last == nil {
			kind = "recreate"
			script, commands = nftFullScript(rs, nil, true)
		} else {
			kind = "full"
			prev := &NFTRuleset{Chains: last.chains, Sets: last.sets, Counters: last.model.counterNames()}
			script, commands = nftFullScript(rs, prev, false)
			udpPrev, udpNext = udpServicePorts(last.snap, fam, p.opts.Zone), udpServicePorts(snap, fam, p.opts.Zone)
		}
	} else {
		// Only the Services whose pointer changed since the applied
		// snapshot, whichever snapshots came in between.
		kind = "incremental"
		keys := changedServices(last.snap, snap)
		udpPrev = udpServicePorts(subSnapshot(last.snap, keys), fam, p.opts.Zone)
		udpNext = udpServicePorts(subSnapshot(snap, keys), fam, p.opts.Zone)
		m := last.model
		p.mu.Lock() // ServiceCounters may be reading m
		patch := m.patch(snap, keys)
		p.mu.Unlock()
		st.model, st.chains, st.sets, st.full = m, m.chains(), m.setDecls(), last.full
		script, commands = nftChangeScript(fam, last.chains, st.chains, last.sets, st.sets, patch.del, patch.add)
		stats = m.renderStats(false)
		local = patch.local
	}
	for _, key := range local {
		if !p.warned[key] {
			p.warned[key] = true
			p.log.Warn("internalTrafficPolicy: Local has no local endpoints on this host; proxying as Cluster", "service", key.String())
		}
	}
	var rss int64
	rendered := time.Since(renderStart)
	nftStart := time.Now()
	if script != nil {
		if err := p.nft.Run(ctx, script); err != nil {
			p.metrics.writes.WithLabelValues(fam.String(), "error").Inc()
			// The model may be patched already: the next sync starts over.
			return fmt.Errorf("%s nftables transaction: %w", kind, err)
		}
		p.metrics.writes.WithLabelValues(fam.String(), "success").Inc()
		if r, ok := p.nft.(interface{ lastPeakRSS() int64 }); ok {
			rss = r.lastPeakRSS()
			p.nftMetrics.peakRSS.WithLabelValues(fam.String(), kind).Set(float64(rss))
		}
	}
	p.metrics.rules.WithLabelValues(fam.String(), "nat").Set(float64(stats.NATRules))
	p.metrics.rules.WithLabelValues(fam.String(), "filter").Set(float64(stats.FilterRules))
	p.metrics.noEndpoints.WithLabelValues(fam.String()).Set(float64(stats.NoEndpoints))
	if last != nil {
		clearStaleUDP(p.conntrack, p.log, udpPrev, udpNext)
	}
	p.applied[fam] = st
	p.mu.Lock()
	p.stats[fam] = stats
	p.counted[fam] = st.model
	if script != nil {
		p.written[fam] = now
		if rss > 0 {
			p.peakRSS[fam] = max(p.peakRSS[fam], rss)
		}
	}
	p.mu.Unlock()
	p.log.Debug("nftables transaction", "family", fam.String(), "kind", kind, "commands", commands,
		"bytes", len(script), "services", stats.Services, "endpoints", stats.Endpoints, "noEndpoints", stats.NoEndpoints,
		"nftPeakRSS", rss, "render", rendered, "nft", time.Since(nftStart), "nftTimes", p.lastNFTTimes())
	return nil
}

// subSnapshot returns the Services of snap under keys, for the conntrack
// cleanup of an incremental sync.
func subSnapshot(snap *cluster.Snapshot, keys []cluster.ServiceKey) *cluster.Snapshot {
	out := &cluster.Snapshot{Services: make(map[cluster.ServiceKey]*cluster.Service, len(keys))}
	if snap == nil {
		return out
	}
	for _, k := range keys {
		if svc := snap.Services[k]; svc != nil {
			out.Services[k] = svc
		}
	}
	return out
}

// Status implements daemon.StatusReporter.
func (p *NFTables) Status() any {
	st := ProxyStatus{Mode: "nftables", Backend: "nftables", Families: map[string]FamilyStatus{}}
	st.connections(p.ServiceCounters)
	p.mu.Lock()
	defer p.mu.Unlock()
	for fam, s := range p.stats {
		st.Families[fam.String()] = FamilyStatus{
			Services: s.Services, ServicePorts: s.ServicePorts, Endpoints: s.Endpoints, NoEndpoints: s.NoEndpoints,
			NATRules: s.NATRules, FilterRules: s.FilterRules, Elements: s.Elements, LastWrite: p.written[fam],
			NFTPeakRSS: p.peakRSS[fam],
		}
	}
	return st
}

// CleanupNFTables deletes the agent's tables (ip and ip6 bridge-agent) and
// nothing else; tables that do not exist are fine, and a host without nft
// has nothing to clean. It and CleanupIPTables each remove only their own
// backend's rules: when switching proxy.mode, run both.
func CleanupNFTables(ctx context.Context) error {
	x, err := newExecNFT()
	if err != nil {
		return nil
	}
	return cleanupNFTables(ctx, x)
}

func cleanupNFTables(ctx context.Context, x nftRunner) error {
	var errs []error
	for _, fam := range []Family{IPv4, IPv6} {
		// Adding first makes the deletion succeed whether or not the table
		// exists, in one transaction.
		s := newNFTScript(fam)
		s.cmd("add", "table", "", "")
		s.cmd("delete", "table", "", "")
		if err := x.Run(ctx, s.b.Bytes()); err != nil {
			errs = append(errs, fmt.Errorf("cleanup nftables %s: %w", fam, err))
		}
	}
	return errors.Join(errs...)
}

// lastNFTTimes describes the times of the last nft run, for the debug log.
func (p *NFTables) lastNFTTimes() string {
	x, ok := p.nft.(*execNFT)
	if !ok {
		return ""
	}
	t := x.lastTimes.Load()
	if t == nil {
		return ""
	}
	return fmt.Sprintf("start=%v wall=%v user=%v sys=%v", t.start, t.wall, t.user, t.sys)
}
