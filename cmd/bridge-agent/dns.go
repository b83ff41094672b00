package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/dnsstub"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
)

// dnsConsumer is the DNS stub as the daemon sees it, with what the agent
// did to the host's resolver for its status.
type dnsConsumer struct {
	*dnsstub.Server
	host *hostdns.Result
	opts hostdns.Options
}

// dnsStatus is the "dns" consumer's status details.
type dnsStatus struct {
	Stub         any             `json:"stub"`
	HostResolver *hostdns.Result `json:"hostResolver,omitempty"`
}

// Status reports the stub and the host resolver's wiring.
func (c *dnsConsumer) Status() any {
	return dnsStatus{Stub: c.Server.Status(), HostResolver: c.host}
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

	o := dnsstub.Options{
		Listen:           listen,
		ClusterDomain:    cfg.ClusterDomain,
		TTL:              cfg.DNS.TTL.Duration,
		Upstreams:        upstreams,
		NamespaceDomains: cfg.DNS.NamespaceDomains,
		Timeout:          cfg.DNS.Timeout.Duration,
		CacheSize:        cfg.DNS.CacheSize,
		ServeStale:       cfg.DNS.ServeStale.Duration,
		MaxPerClient:     cfg.DNS.MaxConcurrentPerClient,
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
		stub.Close()
		return nil, fmt.Errorf("dns: host resolver: %w", err)
	}
	for _, n := range res.Notes {
		log.Warn("dns: host resolver", "note", n)
	}
	if len(upstreams) == 0 {
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
	return &dnsConsumer{Server: stub, host: res, opts: hopts}, nil
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
