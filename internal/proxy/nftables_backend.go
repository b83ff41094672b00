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
	// anything someone else removed (default 1 minute).
	FullSyncPeriod time.Duration
	Logger         *slog.Logger
}

// NFTables is the nftables backend: a consumer of cluster snapshots that
// keeps the agent's private table of each family in the kernel. After a full
// write it sends only the changes since the last sync, computed from the
// desired state it keeps in memory, in one transaction per family.
type NFTables struct {
	opts      NFTablesOptions
	nft       nftRunner
	conntrack conntrackCleaner
	log       *slog.Logger
	now       func() time.Time
	metrics   *proxyMetrics

	applied map[Family]*nftApplied

	mu      sync.Mutex // guards stats and written, read by Status concurrently with Sync
	stats   map[Family]NFTRenderStats
	written map[Family]time.Time
	warned  map[cluster.ServiceKey]bool
}

// nftApplied is what the kernel holds for a family after the last
// successful transaction.
type nftApplied struct {
	snap *cluster.Snapshot
	rs   *NFTRuleset
	// full is when the table was last written whole.
	full time.Time
	udp  map[netip.AddrPort][]netip.AddrPort
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
		o.FullSyncPeriod = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &NFTables{
		opts: o, nft: x, conntrack: ct, log: o.Logger, now: time.Now, metrics: newProxyMetrics(),
		applied: map[Family]*nftApplied{},
		stats:   map[Family]NFTRenderStats{},
		written: map[Family]time.Time{},
		warned:  map[cluster.ServiceKey]bool{},
	}
}

// Name implements daemon.Consumer.
func (p *NFTables) Name() string { return "proxy" }

// Collectors implements daemon.MetricsProvider, with the iptables backend's
// metric names.
func (p *NFTables) Collectors() []prometheus.Collector { return p.metrics.collectors() }

// Sync implements daemon.Consumer. The first sync of a family (and the first
// after a failure) recreates the table in one transaction; later ones send
// only the element and chain changes; every FullSyncPeriod the table is
// flushed and refilled to repair it. On error the kernel keeps its previous
// state and the next sync is a full one.
func (p *NFTables) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	var errs []error
	for _, fam := range p.opts.Families {
		if err := p.syncFamily(ctx, snap, fam); err != nil {
			delete(p.applied, fam) // force a full write next time
			errs = append(errs, fmt.Errorf("%s: %w", fam, err))
		}
	}
	if len(errs) == 0 {
		p.metrics.observeProgramming(snap, p.now())
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
	rs, stats, err := RenderNFTables(NFTRenderInput{
		Snapshot: snap, Family: fam, Masquerade: p.opts.Masquerade,
		MasqueradeMark: p.opts.MasqueradeMark, Zone: p.opts.Zone,
	})
	if err != nil {
		return err
	}
	for _, key := range stats.LocalPolicyIgnored {
		if !p.warned[key] {
			p.warned[key] = true
			p.log.Warn("internalTrafficPolicy: Local has no local endpoints on this host; proxying as Cluster", "service", key.String())
		}
	}

	var script []byte
	var commands int
	kind := "incremental"
	switch {
	case last == nil:
		kind = "recreate"
		script, commands = nftFullScript(rs, nil, true)
	case due:
		kind = "full"
		script, commands = nftFullScript(rs, last.rs, false)
	default:
		script, commands = nftDiffScript(last.rs, rs)
	}
	st := &nftApplied{snap: snap, rs: rs, full: now, udp: udpServicePorts(snap, fam, p.opts.Zone)}
	if kind == "incremental" {
		st.full = last.full
	}
	if script != nil {
		if err := p.nft.Run(ctx, script); err != nil {
			p.metrics.writes.WithLabelValues(fam.String(), "error").Inc()
			return fmt.Errorf("%s nftables transaction: %w", kind, err)
		}
		p.metrics.writes.WithLabelValues(fam.String(), "success").Inc()
	}
	p.metrics.rules.WithLabelValues(fam.String(), "nat").Set(float64(stats.NATRules))
	p.metrics.rules.WithLabelValues(fam.String(), "filter").Set(float64(stats.FilterRules))
	p.metrics.noEndpoints.WithLabelValues(fam.String()).Set(float64(stats.NoEndpoints))
	if last != nil {
		clearStaleUDP(p.conntrack, p.log, last.udp, st.udp)
	}
	p.applied[fam] = st
	p.mu.Lock()
	p.stats[fam] = stats
	if script != nil {
		p.written[fam] = now
	}
	p.mu.Unlock()
	p.log.Debug("nftables transaction", "family", fam.String(), "kind", kind, "commands", commands,
		"bytes", len(script), "services", stats.Services, "endpoints", stats.Endpoints, "noEndpoints", stats.NoEndpoints)
	return nil
}

// Status implements daemon.StatusReporter.
func (p *NFTables) Status() any {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := ProxyStatus{Mode: "nftables", Backend: "nftables", Families: map[string]FamilyStatus{}}
	for fam, s := range p.stats {
		st.Families[fam.String()] = FamilyStatus{
			Services: s.Services, ServicePorts: s.ServicePorts, Endpoints: s.Endpoints, NoEndpoints: s.NoEndpoints,
			NATRules: s.NATRules, FilterRules: s.FilterRules, Elements: s.Elements, LastWrite: p.written[fam],
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
