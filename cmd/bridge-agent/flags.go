package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/config"
)

// configFlags are the flags that override the configuration file. Only flags
// given on the command line override; the others leave the file's values.
type configFlags struct {
	fs         *flag.FlagSet
	path       string
	kubeconfig string
	hostRoot   string
	domain     string
	healthz    string
	metrics    string
	dnsListen  string
	minSync    time.Duration
	sync       time.Duration
	logFormat  string
	verbosity  int
}

func newConfigFlags(name string, out io.Writer) *configFlags {
	f := &configFlags{fs: flag.NewFlagSet("bridge-agent "+name, flag.ContinueOnError)}
	f.fs.SetOutput(out)
	f.fs.StringVar(&f.path, "config", "", "configuration file (default "+config.DefaultPath+" when it exists)")
	f.fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (overrides kubeconfig:)")
	f.fs.StringVar(&f.hostRoot, "host-root", "", "prefix for every host file the agent touches (overrides hostRoot:)")
	f.fs.StringVar(&f.domain, "cluster-domain", "", "cluster DNS domain (overrides clusterDomain:)")
	f.fs.StringVar(&f.healthz, "healthz-bind-address", "", "ip:port for /healthz and /readyz (overrides healthzBindAddress:)")
	f.fs.StringVar(&f.metrics, "metrics-bind-address", "", "ip:port for /metrics (overrides metricsBindAddress:)")
	f.fs.StringVar(&f.dnsListen, "dns-listen-address", "", "ip:port of the DNS stub (overrides dns.listenAddress:)")
	f.fs.DurationVar(&f.minSync, "min-sync-period", 0, "least time between syncs (overrides proxy.minSyncPeriod:)")
	f.fs.DurationVar(&f.sync, "sync-period", 0, "period of the periodic checks and repairs (overrides proxy.syncPeriod:)")
	f.fs.StringVar(&f.logFormat, "log-format", "", "text or json (overrides logging.format:)")
	f.fs.IntVar(&f.verbosity, "v", 0, "log verbosity (overrides logging.verbosity:)")
	return f
}

// load parses args, reads the configuration file and applies the flags that
// were set. It does not validate.
func (f *configFlags) load(args []string) (*config.Config, error) {
	if err := f.fs.Parse(args); err != nil {
		return nil, err
	}
	if f.fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", f.fs.Arg(0))
	}
	var cfg *config.Config
	switch {
	case f.path != "":
		c, err := config.Load(f.path)
		if err != nil {
			return nil, err
		}
		cfg = c
	default:
		c, err := config.Load(config.DefaultPath)
		switch {
		case err == nil:
			cfg = c
		case errors.Is(err, os.ErrNotExist):
			cfg = config.Default()
		default:
			return nil, err
		}
	}
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "kubeconfig":
			cfg.Kubeconfig = f.kubeconfig
		case "host-root":
			cfg.HostRoot = f.hostRoot
		case "cluster-domain":
			cfg.ClusterDomain = f.domain
		case "healthz-bind-address":
			cfg.HealthzBindAddress = f.healthz
		case "metrics-bind-address":
			cfg.MetricsBindAddress = f.metrics
		case "dns-listen-address":
			cfg.DNS.ListenAddress = f.dnsListen
		case "min-sync-period":
			cfg.Proxy.MinSyncPeriod.Duration = f.minSync
		case "sync-period":
			cfg.Proxy.SyncPeriod.Duration = f.sync
		case "log-format":
			cfg.Logging.Format = f.logFormat
		case "v":
			cfg.Logging.Verbosity = f.verbosity
		}
	})
	return cfg, nil
}

// loadOrReport is load for a subcommand's entry point: with validate the
// configuration is also validated. When ok is false the caller returns code:
// 0 after --help, 1 after one line on stderr naming what is wrong.
func (f *configFlags) loadOrReport(args []string, stderr io.Writer, validate bool) (cfg *config.Config, code int, ok bool) {
	cfg, err := f.load(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil, 0, false
	}
	if err == nil && validate {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return nil, 1, false
	}
	return cfg, 0, true
}
