package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
	"github.com/bridge-agent/bridge-agent/internal/member"
	"github.com/bridge-agent/bridge-agent/internal/ownfiles"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
	"github.com/bridge-agent/bridge-agent/internal/version"
)

// exitConfig (EX_CONFIG, sysexits.h) is run's exit status for a
// configuration a restart cannot fix: a bad config file, credentials that
// do not exist yet. The unit's RestartPreventExitStatus=78 keeps systemd
// from restarting the agent every RestartSec until the admin acts.
const exitConfig = 78

func runCmd(args []string, stderr io.Writer) int {
	f := newConfigFlags("run", stderr)
	cfg, code, ok := f.loadOrReport(args, stderr, true)
	if !ok {
		if code != 0 {
			return exitConfig
		}
		return code
	}
	rc, err := cluster.RESTConfig(cluster.ClientOptions{
		Kubeconfig: cfg.Kubeconfig,
		URL:        cfg.APIServer.URL,
		TokenFile:  cfg.APIServer.TokenFile,
		CAFile:     cfg.APIServer.CAFile,
		UserAgent:  "bridge-agent/" + version.Version,
	})
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "bridge-agent: no credentials for the cluster yet: %v; join this host with `bridge-agent join BUNDLE` (the bundle of `bridge-agent host add NAME` on the cluster) or make them with `bridge-agent kubeconfig` (man bridge-agent), then `systemctl start bridge-agent`\n", err)
		return exitConfig
	}
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return exitConfig
	}
	client, err := cluster.NewClient(rc)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return exitConfig
	}
	// A host with an identity of its own renews its token and its Lease;
	// one whose token expired while it was off cannot, and says what to run.
	host, err := hostIdentity(rc)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return exitConfig
	}
	// One agent per host: a second one would fight the first over the
	// same rules, routes and resolver. The lock is held until exit.
	lock, err := ownfiles.Acquire(cfg.HostRoot)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	defer lock.Release()
	own := ownOptions(cfg)
	own.Created = lock.Created
	if err := ownfiles.Prepare(own); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	journal := cfg.Logging.Journal == "always" || cfg.Logging.Journal == "auto" && daemon.StderrIsJournal(stderr)
	log := daemon.NewLogger(stderr, cfg.Logging.Format, cfg.Logging.Verbosity, journal)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	guard, err := newGuard(cfg, log.With("consumer", "guard"))
	if err != nil {
		log.Error("cannot run", "err", err)
		return 1
	}
	consumers, stopConsumers, err := newConsumers(ctx, cfg, log, guard)
	if err != nil {
		log.Error("cannot run", "err", err)
		return 1
	}
	defer stopConsumers()
	var d *daemon.Daemon
	var mem *member.Agent
	var memberReporter daemon.MemberReporter
	if host != "" {
		mem, err = newMember(cfg, rc, host, log.With("component", "member"), func() member.Facts { return d.HostFacts() })
		if err != nil {
			log.Error("cannot run", "err", err)
			return 1
		}
		memberReporter = mem
		log.Info("host identity", "host", host, "serviceAccount", member.Namespace+"/"+member.ObjectName(host))
	}
	d, err = daemon.New(daemon.Options{
		Config:    cfg,
		Client:    client,
		APIHost:   rc.Host,
		Logger:    log,
		Version:   version.Version,
		Consumers: consumers,
		Guard:     guard,
		Member:    memberReporter,
	})
	if err == nil {
		if mem != nil {
			mctx, mcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); mem.Run(mctx) }()
			defer func() { mcancel(); <-done }()
		}
		err = d.Run(ctx)
	}
	if err != nil {
		log.Error("cannot run", "err", err)
		return 1
	}
	return 0
}

// newConsumers builds the host-side consumers the configuration asks for,
// and a function that stops those that hold resources (the DNS stub).
func newConsumers(ctx context.Context, cfg *config.Config, log *slog.Logger, guard *hostguard.Watcher) (_ []daemon.Consumer, stop func(), err error) {
	var out []daemon.Consumer
	stop = func() {}
	rt, err := routes.New(cfg, log.With("consumer", "routes"), func() []netip.Addr { return guard.Facts().Resolvers })
	if err != nil {
		return nil, nil, err
	}
	log.Info("routes", "mode", cfg.Routes.Mode, "protocol", cfg.Routes.Protocol, "table", cfg.Routes.Table)
	out = append(out, rt)
	if cfg.Proxy.Mode != "none" {
		p, err := newProxy(ctx, cfg, log.With("consumer", "proxy"))
		if err != nil {
			return nil, nil, err
		}
		out = append(out, p)
	}
	if cfg.DNS.Mode == config.DNSStub {
		dlog := log.With("consumer", "dns")
		d, err := startDNS(ctx, cfg, dlog)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, d)
		stop = func() { d.stop(dlog) }
	}
	return out, stop, nil
}

// proxyBackend is what the daemon uses of a proxy backend.
type proxyBackend interface {
	daemon.Consumer
	daemon.ProgrammingObserver
	Status() any
	Collectors() []prometheus.Collector
}

// newProxy builds the backend proxy.mode names (auto: see
// proxy.ChooseBackend). The other backend's rules, left by an earlier run in
// the other mode, are removed after the first successful sync, not before:
// until then they keep the Services working.
func newProxy(ctx context.Context, cfg *config.Config, log *slog.Logger) (proxyBackend, error) {
	mode := cfg.Proxy.Mode
	var reason string
	if mode == "auto" {
		mode, reason = proxy.ChooseBackend(ctx)
		if mode == proxy.BackendNFTables {
			log.Info("proxy: mode auto", "backend", mode, "reason", reason)
		} else {
			log.Warn("proxy: mode auto falls back from nftables", "backend", mode, "reason", reason)
		}
	}
	switch mode {
	case proxy.BackendNFTables:
		p, err := proxy.NewNFTables(ctx, proxy.NFTablesOptions{
			Masquerade:     masquerade(cfg),
			FullSyncPeriod: max(time.Hour, cfg.Proxy.SyncPeriod.Duration),
			CheckPeriod:    cfg.Proxy.SyncPeriod.Duration,
			Logger:         log,
		})
		if err != nil {
			return nil, err
		}
		log.Info("proxy: nftables")
		stateDir := cfg.HostPath(cfg.StateDir)
		cleanup := func(ctx context.Context) error {
			if err := proxy.CleanupIPTables(ctx); err != nil {
				return err
			}
			return proxy.RemoveCreatedTables(ctx, stateDir)
		}
		return &cleaningProxy{proxyBackend: p, backend: mode, other: "iptables", cleanup: cleanup, log: log, modeReason: reason}, nil
	default:
		variant := proxy.Variant(cfg.Proxy.IPTablesVariant)
		if variant == "auto" {
			variant = ""
		}
		p, err := proxy.NewIPTables(ctx, proxy.IPTablesOptions{
			Variant:        variant,
			CreatedTables:  proxy.CreatedTablesFile(cfg.HostPath(cfg.StateDir)),
			Masquerade:     masquerade(cfg),
			FullSyncPeriod: max(time.Hour, cfg.Proxy.SyncPeriod.Duration),
			CheckPeriod:    cfg.Proxy.SyncPeriod.Duration,
			Logger:         log,
		})
		if err != nil {
			return nil, err
		}
		log.Info("proxy: iptables", "variant", p.Variant())
		return &cleaningProxy{proxyBackend: p, backend: "iptables", other: "nftables", cleanup: proxy.CleanupNFTables, log: log, modeReason: reason}, nil
	}
}

// cleaningProxy removes the other backend's rules once its own backend has
// synced successfully.
type cleaningProxy struct {
	proxyBackend
	backend string
	other   string
	cleanup func(context.Context) error
	cleaned bool
	log     *slog.Logger
	// modeReason is why proxy.mode auto chose this backend.
	modeReason string
}

// Status adds to the backend's status why proxy.mode auto chose it.
func (c *cleaningProxy) Status() any {
	st := c.proxyBackend.Status()
	if ps, ok := st.(proxy.ProxyStatus); ok && c.modeReason != "" {
		ps.ModeReason = c.modeReason
		return ps
	}
	return st
}

// Summary names the backend for the agent's STATUS= line.
func (c *cleaningProxy) Summary() string {
	return "proxy " + c.backend
}

// Sync syncs the backend, then, once, removes the other backend's rules.
func (c *cleaningProxy) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	if err := c.proxyBackend.Sync(ctx, snap); err != nil {
		return err
	}
	if !c.cleaned {
		if err := c.cleanup(ctx); err != nil {
			c.log.Warn("proxy: cannot remove the rules of the other backend; retrying at the next sync", "backend", c.other, "err", err)
			return nil
		}
		c.cleaned = true
	}
	return nil
}

// masquerade resolves proxy.masquerade. auto masquerades unless the agent
// routes straight to the nodes (routes.mode: nodes): then this host shares a
// link with them and pods answer its address directly; behind a gateway or
// a network the agent does not manage, the way back is unknown.
func masquerade(cfg *config.Config) bool {
	switch cfg.Proxy.Masquerade {
	case "always":
		return true
	case "never":
		return false
	}
	return cfg.Routes.Mode != "nodes"
}
