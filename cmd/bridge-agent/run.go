package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/version"
)

func runCmd(args []string, stderr io.Writer) int {
	f := newConfigFlags("run", stderr)
	cfg, err := f.load(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	rc, err := cluster.RESTConfig(cluster.ClientOptions{
		Kubeconfig: cfg.Kubeconfig,
		URL:        cfg.APIServer.URL,
		TokenFile:  cfg.APIServer.TokenFile,
		CAFile:     cfg.APIServer.CAFile,
		UserAgent:  "bridge-agent/" + version.Version,
	})
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	client, err := cluster.NewClient(rc)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	log := daemon.NewLogger(stderr, cfg.Logging.Format, cfg.Logging.Verbosity)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	d, err := daemon.New(daemon.Options{
		Config:  cfg,
		Client:  client,
		APIHost: rc.Host,
		Logger:  log,
		Version: version.Version,
	})
	if err == nil {
		err = d.Run(ctx)
	}
	if err != nil {
		log.Error("cannot run", "err", err)
		return 1
	}
	return 0
}
