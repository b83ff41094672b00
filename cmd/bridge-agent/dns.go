package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/dnsstub"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
)

// dnsConsumer is the DNS stub as the daemon sees it, with what the agent
// did to the host's resolver for its status.
type dnsConsumer struct {
	*dnsstub.Server
	opts hostdns.Options
	log  *slog.Logger
	// every is how often Sync checks the host resolver's wiring again.
	every time.Duration
	// ownUpstreams is true when dns.upstreams names the upstreams;
	// otherwise they follow the host's resolver configuration.
	ownUpstreams bool

	mu        sync.Mutex
	host      *hostdns.Result
	upstreams []netip.AddrPort
	applied   time.Time
	applyErr  string
	check     *hostdns.Check // the last check of the wiring
	checking  bool
	checkName string // the cluster name checked
}

// dnsStatus is the "dns" consumer's status details.
type dnsStatus struct {
	Stub         any             `json:"stub"`
	HostResolver *hostdns.Result `json:"hostResolver,omitempty"`
	// HostResolverError is why the last check of the wiring failed.
	HostResolverError string `json:"hostResolverError,omitempty"`
}

// Status reports the stub and the host resolver's wiring.
func (c *dnsConsumer) Status() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	host := c.host
	if host != nil && c.check != nil {
		h := *host
		h.Check = c.check
		host = &h
	}
	return dnsStatus{Stub: c.Server.Status(), HostResolver: host, HostResolverError: c.applyErr}
}

// verify checks in the background that a cluster name resolves through
// the host's resolver to what the stub answers, up to tries times a
// second apart until it does, and logs a warning with the fix when it
// does not (once per distinct problem).
func (c *dnsConsumer) verify(ctx context.Context, tries int) {
	c.mu.Lock()
	if c.checking || c.host == nil {
		c.mu.Unlock()
		return
	}
	c.checking = true
	// Not bound to one sync's context: the check outlives it.
	ctx = context.WithoutCancel(ctx)
	o := hostdns.VerifyOptions{HostRoot: c.opts.HostRoot, Mode: c.host.Mode, Stub: c.Server.Addr(), Name: c.checkName}
	c.mu.Unlock()
	go func() {
		var chk *hostdns.Check
		for i := range tries {
			if chk = hostdns.Verify(ctx, o); chk.OK || chk.Skipped != "" || i == tries-1 {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.checking = false
		prev := c.check
		c.check = chk
		switch {
		case chk.Problem != "" && (prev == nil || prev.Problem != chk.Problem):
			c.log.Warn("dns: the host's resolver does not reach the stub", "problem", chk.Problem)
		case chk.OK && (prev == nil || !prev.OK):
			c.log.Info("dns: checked: a cluster name resolves through the host's resolver", "name", chk.Name, "addrs", chk.Host)
		}
	}()
}

// Sync gives the stub the new snapshot and, every so often, checks the host
// resolver's wiring again: a DHCP client or an admin may have rewritten
// resolv.conf (it is wired again, the new file taken as the original) or
// changed the host's resolvers (the stub follows them).
func (c *dnsConsumer) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	if err := c.Server.Sync(ctx, snap); err != nil {
		return err
	}
	c.mu.Lock()
	due := time.Since(c.applied) >= c.every
	first := c.check == nil
	c.mu.Unlock()
	if due {
		c.rewire(ctx)
		c.verify(ctx, 1)
	} else if first {
		// The first check, once the stub has the cluster's names; resolved
		// may take a moment to use a link it has just been told about.
		c.verify(ctx, 5)
	}
	return nil
}

// rewire applies the host resolver's wiring again. A failure is logged and
// shown in status; the stub keeps answering either way.
func (c *dnsConsumer) rewire(ctx context.Context) {
	res, err := hostdns.Apply(ctx, c.opts)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied = time.Now()
	if err != nil {
		if c.applyErr != err.Error() {
			c.log.Error("dns: cannot wire the host resolver; will retry", "err", err)
		}
		c.applyErr = err.Error()
		return
	}
	c.applyErr = ""
	for _, n := range res.Notes {
		if c.host == nil || !slices.Contains(c.host.Notes, n) {
			c.log.Warn("dns: host resolver", "note", n)
		}
	}
	c.host = res
	if !c.ownUpstreams && len(res.Upstreams) > 0 && !slices.Equal(res.Upstreams, c.upstreams) {
		c.log.Info("dns: the host's resolvers changed", "from", c.upstreams, "to", res.Upstreams)
		c.upstreams = res.Upstreams
		c.Server.SetUpstreams(res.Upstreams)
	}
}

// startDNS starts the stub, then points the host's resolver at it: in that
// order, so the host never names a resolver that is not there yet.
func startDNS(ctx context.Context, cfg *config.Config, log *slog.Logger) (*dnsConsumer, error) {
	listen, err := netip.ParseAddrPort(cfg.DNS.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	hopts := hostdns.Options{
		Mode:     hostdns.Mode(cfg.DNS.HostResolver),
		HostRoot: cfg.HostRoot,
		StateDir: cfg.HostPath(cfg.StateDir),
		Stub:     listen,
		Domains:  append([]string{cfg.ClusterDomain, "svc"}, cfg.DNS.NamespaceDomains...),
		Logger:   log,
	}
	var upstreams []netip.AddrPort
	for _, u := range cfg.DNS.Upstreams {
		ap, err := config.ParseUpstream(u)
		if err != nil {
			return nil, fmt.Errorf("dns: upstream %q: %w", u, err)
		}
		upstreams = append(upstreams, ap)
	}

	also, err := hostdns.StubAddrs(hopts)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	o := dnsstub.Options{
		Listen:           listen,
		AlsoListen:       also,
		ClusterDomain:    cfg.ClusterDomain,
		TTL:              cfg.DNS.TTL.Duration,
		Upstreams:        upstreams,
		NamespaceDomains: cfg.DNS.NamespaceDomains,
		Timeout:          cfg.DNS.Timeout.Duration,
		CacheSize:        cfg.DNS.CacheSize,
		ServeStale:       cfg.DNS.ServeStale.Duration,
		MaxPerClient:     cfg.DNS.MaxConcurrentPerClient,
		MaxForwards:      cfg.DNS.MaxConcurrentForwards,
		Logger:           log,
	}
	// In the configuration 0 turns these off; the stub reads 0 as "default".
	if o.CacheSize == 0 {
		o.CacheSize = -1
	}
	if o.ServeStale == 0 {
		o.ServeStale = -1
	}
	stub, err := dnsstub.New(o)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	if err := stub.Start(); err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	res, err := hostdns.Apply(ctx, hopts)
	if err != nil {
		// Undo what the failed Apply did get done (the link, a file), so
		// the host never names a resolver that is not there.
		if cerr := hostdns.Cleanup(ctx, hopts.HostRoot, hopts.StateDir, nil); cerr != nil {
			log.Error("dns: undo the host resolver's partial wiring", "err", cerr)
		}
		stub.Close()
		return nil, fmt.Errorf("dns: host resolver: %w", err)
	}
	for _, n := range res.Notes {
		log.Warn("dns: host resolver", "note", n)
	}
	own := len(upstreams) > 0
	if !own {
		// The host's own resolvers, as they were before the agent wired
		// the host to the stub.
		upstreams = res.Upstreams
		stub.SetUpstreams(upstreams)
	}
	if len(upstreams) == 0 {
		log.Warn("dns: no upstream resolver found; names outside the cluster will fail (set dns.upstreams)")
	}
	log.Info("dns: stub listening, host resolver wired", "addr", listen, "upstreams", upstreams,
		"mode", res.Mode, "reason", res.Reason, "files", res.Files)
	c := &dnsConsumer{
		Server: stub, opts: hopts, log: log, every: cfg.Proxy.SyncPeriod.Duration, ownUpstreams: own,
		host: res, upstreams: upstreams, applied: time.Now(), checkName: "kubernetes.default.svc." + cfg.ClusterDomain,
	}
	return c, nil
}

// stop undoes the host resolver's wiring, then stops the stub: a host left
// pointing at a stopped stub would lose its cluster names, and with a
// managed resolv.conf every name.
func (c *dnsConsumer) stop(log *slog.Logger) {
	if err := hostdns.Cleanup(context.Background(), c.opts.HostRoot, c.opts.StateDir, c.opts.Reloader); err != nil {
		log.Error("dns: cannot restore the host resolver", "err", err)
	}
	if err := c.Server.Close(); err != nil {
		log.Error("dns: stop stub", "err", err)
	}
}
