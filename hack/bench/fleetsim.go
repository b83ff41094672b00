package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// fleetSim is many simulated agents in this process, on one host of the
// sandbox: each runs the agent's own watch (cluster.Watcher: Services,
// EndpointSlices, and the shared node route table with its fallback, as
// in routes.mode nodes) on a connection of its own, without consumers.
// What the host receives, divided by their number, is what one agent host
// of a large fleet receives.
type fleetSim struct {
	n        int
	cancel   context.CancelFunc
	watchers []*cluster.Watcher
}

// startFleetSim starts n simulated agents whose connections come from
// netns, and waits until all have listed.
func startFleetSim(ctx context.Context, tb *testbed.Testbed, netns string, n int, log *slog.Logger) (*fleetSim, error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &fleetSim{n: n, cancel: cancel}
	nr := config.Default().Routes.NodeRoutes
	quiet := slog.New(slog.DiscardHandler)
	for i := range n {
		cfg := rest.CopyConfig(tb.AdminConfig)
		// A dialer of its own: client-go then shares no connection
		// between the simulated agents, as between hosts.
		cfg.Dial = tb.DialContext(netns)
		cfg.UserAgent = "bridge-agent-fleet-sim"
		cluster.UseProtobuf(cfg) // as the agent's client (cluster.RESTConfig)
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			s.stop()
			return nil, err
		}
		tr := cluster.NewTracker(cluster.TrackerOptions{})
		w, err := cluster.NewWatcher(client, tr, cluster.WatchOptions{
			Nodes: cluster.NodesShared,
			Shared: cluster.SharedNodesOptions{Namespace: nr.Namespace, Name: nr.Name, Identity: fmt.Sprintf("fleet-sim-%d", i),
				LeaseDuration: nr.LeaseDuration.Duration, Logger: quiet},
		})
		if err != nil {
			s.stop()
			return nil, err
		}
		w.Start(ctx)
		s.watchers = append(s.watchers, w)
	}
	start := time.Now()
	for {
		synced := 0
		for _, w := range s.watchers {
			if w.HasSynced() {
				synced++
			}
		}
		if synced == n {
			log.Info("fleet: simulated agents listed", "agents", n, "took", time.Since(start).Round(time.Millisecond))
			return s, nil
		}
		if time.Since(start) > 5*time.Minute || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("fleet simulation: %d of %d agents listed within %s", synced, n, time.Since(start).Round(time.Second))
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// tableSources counts the simulated agents reading the node route table.
func (s *fleetSim) tableSources() int {
	n := 0
	for _, w := range s.watchers {
		if sn := w.Shared(); sn != nil && sn.Status().Source == cluster.SourceTable {
			n++
		}
	}
	return n
}

func (s *fleetSim) stop() {
	s.cancel()
	for _, w := range s.watchers {
		w.Shutdown()
	}
}
