package main

import (
	"log/slog"
	"net/netip"
	"sync"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// newGuard reads this host's facts for the host guard: its addresses and
// routes (netlink, watched), and its resolvers: the host's own upstream
// resolvers as hostdns finds them (never the stub) and dns.upstreams.
func newGuard(cfg *config.Config, log *slog.Logger) (*hostguard.Watcher, error) {
	return hostguard.NewWatcher(hostguard.WatcherOptions{
		Resolvers: hostResolvers(cfg, log),
		Every:     cfg.Proxy.SyncPeriod.Duration,
		Logger:    log,
	})
}

// hostResolvers returns a function listing the host's resolvers; when they
// cannot be read it keeps the last ones and logs once per distinct error.
func hostResolvers(cfg *config.Config, log *slog.Logger) func() []netip.Addr {
	var configured []netip.Addr
	for _, u := range cfg.DNS.Upstreams {
		if ap, err := config.ParseUpstream(u); err == nil {
			configured = append(configured, ap.Addr())
		}
	}
	mode := hostdns.Mode(cfg.DNS.HostResolver)
	if cfg.DNS.Mode != config.DNSStub {
		mode = hostdns.ModeNone // the host's resolv.conf as it is
	}
	var mu sync.Mutex
	var last []netip.Addr
	var lastErr string
	return func() []netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		ups, err := hostdns.Upstreams(cfg.HostRoot, mode, cfg.HostPath(cfg.StateDir))
		if err != nil {
			if err.Error() != lastErr {
				lastErr = err.Error()
				log.Warn("host guard: cannot read this host's resolvers; keeping the last ones", "err", err)
			}
			return last
		}
		lastErr = ""
		out := append([]netip.Addr(nil), configured...)
		for _, u := range ups {
			out = append(out, u.Addr())
		}
		last = out
		return out
	}
}
