// Package daemon is the agent's run loop: it watches the cluster, builds a
// snapshot on every coalesced change, publishes it to each consumer (proxy,
// routes, DNS), each synced in a loop of its own, and serves health, metrics
// and status. It never exits on a sync or API
// error: it logs, counts, reports not-ready and retries.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// Consumer turns a snapshot into host state. Sync is called with the whole
// snapshot every time (level-triggered) and must be idempotent; it is also
// called periodically with an unchanged snapshot so a consumer can verify and
// repair what it owns.
type Consumer interface {
	Name() string
	Sync(ctx context.Context, snap *cluster.Snapshot) error
}

// MetricsProvider is implemented by consumers with metrics of their own;
// the daemon registers them beside its own on /metrics.
type MetricsProvider interface {
	Collectors() []prometheus.Collector
}

// Options are what Run needs.
type Options struct {
	Config    *config.Config
	Client    kubernetes.Interface
	APIHost   string
	Logger    *slog.Logger
	Version   string
	Consumers []Consumer
	// RestoreAfter is how long the agent waits for the API server before it
	// serves the last snapshot known good from the state directory (default
	// 2s; negative never restores).
	RestoreAfter time.Duration
	// ReadyTimeout bounds how long a start waits for the first full sync
	// before it tells systemd READY=1 anyway, with STATUS= saying what the
	// agent waits for (default DefaultReadyTimeout; negative: no bound).
	ReadyTimeout time.Duration
	// Guard keeps this host's facts for the host guard; Run runs it. nil:
	// only the special ranges and the Service ranges are checked.
	Guard *hostguard.Watcher
	// Member is the host's membership when it has an identity of its own
	// (nil: the shared read-only ServiceAccount).
	Member MemberReporter
}

// DefaultReadyTimeout is how long a start under systemd waits for the
// first full sync before it reports READY=1 anyway: a healthy API server
// lists a large cluster in a few seconds; one that cannot be reached (a
// wrong CA, a network down at boot) must not hold `systemctl start` and the
// boot for minutes, saying nothing.
const DefaultReadyTimeout = 15 * time.Second

// SnapshotFile is the name of the last snapshot known good, in the state
// directory.
const SnapshotFile = "snapshot.json"

// saveEvery bounds how often a changing cluster is written to disk; the
// periodic resync writes what a burst left unsaved.
const saveEvery = 5 * time.Second

// saveCostShare bounds the time spent saving snapshots to a share of the
// time between saves: a save that took 150 ms (10k Services) is followed by
// at least 15 s without one (the periodic resync catches up), so a busy
// cluster does not cost a core's worth of encoding.
const saveCostShare = 100

// Daemon is one running agent.
type Daemon struct {
	cfg       *config.Config
	client    kubernetes.Interface
	log       *slog.Logger
	version   string
	apiHost   string
	consumers []Consumer
	tracker   *cluster.Tracker
	watcher   *cluster.Watcher
	runner    *Runner // publishes snapshots to the workers
	workers   []*worker
	saver     *Runner // saves the snapshot known good
	metrics   *metrics
	notify    *notifier
	start     time.Time
	guard     *hostguard.Watcher
	filter    *hostguard.Filter // between the cluster view and the consumers
	member    MemberReporter

	restoreAfter time.Duration
	readyTimeout time.Duration
	statePath    string

	mu          sync.Mutex
	restored    *cluster.Snapshot // the saved snapshot served until the informers sync
	restoreErr  string
	saved       *cluster.Snapshot // the snapshot last written to disk
	savedAt     time.Time
	saveTook    time.Duration     // how long the last save took
	snap        *cluster.Snapshot // the newest published snapshot
	queued      *cluster.Snapshot // the newest cluster-view snapshot whose changes were queued
	seq         uint64            // publication number of snap
	publishedAt time.Time
	doneSnap    *cluster.Snapshot // the newest snapshot every consumer synced
	doneSeq     uint64
	ready       bool
	lastSync    SyncInfo
	lastSuccess time.Time
	consumerSt  map[string]*ConsumerState
}

// New wires a Daemon; Run starts it.
func New(o Options) (*Daemon, error) {
	d := &Daemon{
		cfg:        o.Config,
		client:     o.Client,
		log:        o.Logger,
		version:    o.Version,
		apiHost:    o.APIHost,
		consumers:  o.Consumers,
		notify:     newNotifier(),
		start:      time.Now(),
		consumerSt: map[string]*ConsumerState{},
		guard:      o.Guard,
		member:     o.Member,
		filter:     hostguard.NewFilter(o.Config.ParsedServiceCIDRs(), o.Logger),

		restoreAfter: o.RestoreAfter,
		readyTimeout: o.ReadyTimeout,
		statePath:    filepath.Join(o.Config.HostPath(o.Config.StateDir), SnapshotFile),
	}
	if d.restoreAfter == 0 {
		d.restoreAfter = 2 * time.Second
	}
	if d.readyTimeout == 0 {
		d.readyTimeout = DefaultReadyTimeout
	}
	for _, c := range d.consumers {
		d.consumerSt[c.Name()] = &ConsumerState{Name: c.Name()}
	}
	d.runner = NewRunner(d.publish, o.Config.Proxy.MinSyncPeriod.Duration, o.Config.Proxy.SyncPeriod.Duration)
	d.newWorkers()
	d.saver = NewRunner(func(context.Context) error { d.saveSnapshot(false); return nil }, saveEvery, o.Config.Proxy.SyncPeriod.Duration)
	d.tracker = cluster.NewTracker(cluster.TrackerOptions{
		Namespaces:       o.Config.Scope.Namespaces,
		ServiceProxyName: o.Config.Scope.ServiceProxyName,
		OnChange:         d.runner.Poke,
	})
	w, err := cluster.NewWatcher(o.Client, d.tracker, watchOptions(o.Config, o.Logger))
	if err != nil {
		return nil, err
	}
	d.watcher = w
	d.metrics = newMetrics(o.Version, d.tracker.Counts, d.tracker.Events, w.Shared())
	if err := registerAll(d.metrics.registry, d.filter.Collectors()); err != nil {
		return nil, fmt.Errorf("metrics of the host guard: %w", err)
	}
	if d.member != nil {
		if err := registerAll(d.metrics.registry, d.member.Collectors()); err != nil {
			return nil, fmt.Errorf("metrics of the host's membership: %w", err)
		}
	}
	for _, c := range d.consumers {
		if mp, ok := c.(MetricsProvider); ok {
			if err := registerAll(d.metrics.registry, mp.Collectors()); err != nil {
				return nil, fmt.Errorf("metrics of %s: %w", c.Name(), err)
			}
		}
	}
	return d, nil
}

// watchOptions scopes the watch: Nodes only for routes.mode nodes, from
// the shared node route table unless routes.nodeRoutes.source is watch.
func watchOptions(cfg *config.Config, log *slog.Logger) cluster.WatchOptions {
	o := cluster.WatchOptions{
		Namespaces:    cfg.Scope.Namespaces,
		LabelSelector: cfg.Scope.LabelSelector,
		Nodes:         cluster.NodesNone,
	}
	if cfg.Routes.Mode != config.RoutesNodes {
		return o
	}
	nr := cfg.Routes.NodeRoutes.WithDefaults()
	if nr.Source == config.NodeRoutesWatch {
		o.Nodes = cluster.NodesWatch
		return o
	}
	o.Nodes = cluster.NodesShared
	o.Shared = cluster.SharedNodesOptions{
		Namespace: nr.Namespace,
		Name:      nr.Name,
		Publish:   nr.Publish,
		Logger:    log.With("consumer", "nodes"),

		LeaseDuration: nr.LeaseDuration.Duration,
	}
	return o
}

// Run runs until ctx ends. It returns an error only when it cannot start
// (a listener cannot be opened); everything after that is retried.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	servers, err := d.listen()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("server stopped", "addr", s.ln.Addr().String(), "err", err)
			}
		})
	}

	d.log.Info("starting", "version", d.version, "apiServer", d.apiHost)
	d.updateStatus()
	if d.readyTimeout > 0 {
		t := time.AfterFunc(d.readyTimeout, func() {
			if !d.notify.isReady() && ctx.Err() == nil {
				d.log.Warn("no full sync yet: telling systemd the start is done; the agent keeps trying", "after", d.readyTimeout, "status", d.statusLine())
				d.updateStatus()
			}
		})
		defer t.Stop()
	}
	d.watcher.Start(ctx)
	wg.Go(func() { d.waitForSync(ctx) })
	wg.Go(func() { d.runner.Run(ctx) })
	for _, w := range d.workers {
		wg.Go(func() { w.runner.Run(ctx) })
	}
	wg.Go(func() { d.saver.Run(ctx) })
	wg.Go(func() { d.followAPIServer(ctx) })
	if d.guard != nil {
		wg.Go(func() { d.guard.Run(ctx, d.runner.Poke) })
	}
	if iv := watchdogInterval(); iv > 0 {
		wg.Go(func() { d.watchdog(ctx, iv) })
	}

	<-ctx.Done()
	d.log.Info("shutting down")
	_ = d.notify.send("STOPPING=1")
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	for _, s := range servers {
		_ = s.srv.Shutdown(shutdownCtx)
	}
	wg.Wait()
	d.saveSnapshot(true)
	d.watcher.Shutdown()
	if sock := d.cfg.HostPath(d.cfg.StatusSocket); sock != "" {
		_ = os.Remove(sock)
	}
	return nil
}

// waitForSync pokes the first sync once every informer has listed. Until
// then no consumer runs: programming a half-listed cluster would drop
// traffic to the Services not listed yet. While it waits it probes the API
// server, so status and logs say why the agent is not ready.
func (d *Daemon) waitForSync(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var lastProbe, lastWarn time.Time
	restoreAt := time.Now().Add(d.restoreAfter)
	for !d.watcher.HasSynced() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if d.restoreAfter > 0 && !restoreAt.IsZero() && time.Now().After(restoreAt) {
			restoreAt = time.Time{}
			d.restoreSnapshot()
		}
		if time.Since(lastProbe) < 2*time.Second {
			continue
		}
		lastProbe = time.Now()
		if err := d.probeAPI(ctx); err != nil {
			d.watcher.RecordError(err)
			if time.Since(lastWarn) > 30*time.Second {
				lastWarn = time.Now()
				d.log.Warn("cannot reach the API server; retrying", "apiServer", d.apiHost, "err", err)
			}
		}
		d.updateStatus()
	}
	d.log.Info("informers synced")
	d.runner.Poke()
}

// probeAPI asks the API server for its version: the cheapest request every
// identity may make.
func (d *Daemon) probeAPI(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	disc := d.client.Discovery()
	rc := disc.RESTClient()
	if rc == nil { // clients without a REST transport (in-memory fakes)
		_, err := disc.ServerVersion()
		return err
	}
	return rc.Get().AbsPath("/version").Do(ctx).Error()
}

// restoreSnapshot loads the last snapshot known good, for the consumers to
// serve while the API server cannot be reached: the DNS stub keeps
// answering the cluster's names and a host that lost its rules (a reboot)
// gets them back. The informers' first list replaces it.
func (d *Daemon) restoreSnapshot() {
	snap, err := cluster.LoadSnapshot(d.statePath)
	if errors.Is(err, cluster.ErrNoSavedSnapshot) {
		d.log.Info("no saved snapshot to serve while the API server is unreachable", "path", d.statePath)
		return
	}
	if err != nil {
		d.mu.Lock()
		d.restoreErr = err.Error()
		d.mu.Unlock()
		d.log.Error("cannot use the saved snapshot", "err", err)
		return
	}
	d.mu.Lock()
	if d.watcher.HasSynced() {
		d.mu.Unlock()
		return
	}
	d.restored = snap
	d.mu.Unlock()
	d.metrics.restored.Set(1)
	d.log.Warn("API server unreachable: serving the last snapshot known good", "path", d.statePath,
		"saved", snap.Restored, "age", time.Since(snap.Restored).Round(time.Second), "services", len(snap.Services))
	d.runner.Poke()
}

// saveSnapshot writes the newest live snapshot every consumer has synced
// (the snapshot known good) to the state directory when it changed since
// the last write. The saver runner calls it at most every saveEvery, off
// the consumers' loops, and it skips a save due sooner than saveCostShare
// times the last one's duration; shutdown calls it with force.
func (d *Daemon) saveSnapshot(force bool) {
	d.mu.Lock()
	snap := d.doneSnap
	due := snap != nil && snap.Restored.IsZero() && snap != d.saved &&
		(force || time.Since(d.savedAt) >= saveCostShare*d.saveTook)
	d.mu.Unlock()
	if !due {
		return
	}
	start := time.Now()
	if err := cluster.SaveSnapshot(d.statePath, snap, start); err != nil {
		d.metrics.saveErrors.Inc()
		d.log.Error("cannot save the snapshot", "err", err)
		return
	}
	d.mu.Lock()
	d.saved, d.savedAt, d.saveTook = snap, time.Now(), time.Since(start)
	d.mu.Unlock()
	d.log.Debug("snapshot saved", "version", snap.Version, "path", d.statePath)
}

// publish takes the newest snapshot (the live one, or the saved one while
// the API server cannot be reached) and hands it to every consumer's
// worker.
func (d *Daemon) publish(context.Context) error {
	var snap *cluster.Snapshot
	if d.watcher.HasSynced() {
		snap = d.tracker.Snapshot()
		d.mu.Lock()
		if d.restored != nil {
			d.restored = nil
			d.metrics.restored.Set(0)
			d.log.Info("API server back: replacing the saved snapshot with the live one")
		}
		d.mu.Unlock()
	} else {
		d.mu.Lock()
		snap = d.restored
		d.mu.Unlock()
		if snap == nil {
			return nil
		}
	}
	// Every consumer gets the guarded snapshot: without the ClusterIPs the
	// host guard refuses (see internal/hostguard).
	raw := snap
	snap = d.filter.Apply(raw, d.guardFacts())
	d.mu.Lock()
	if d.snap != snap {
		d.seq++
		d.snap, d.publishedAt = snap, time.Now()
		// The changes a snapshot carries are queued once per snapshot of
		// the cluster view: a new guarded copy of the same one (the host's
		// facts changed) carries no new change.
		if raw != d.queued {
			d.queued = raw
			d.queueChanges(raw)
		}
	}
	d.mu.Unlock()
	d.metrics.services.Set(float64(len(snap.Services)))
	d.metrics.endpoints.Set(float64(snap.EndpointCount()))
	for _, w := range d.workers {
		w.runner.Poke()
	}
	if len(d.workers) == 0 {
		d.mu.Lock()
		fresh, first := d.doneSnap != snap, !d.ready
		if fresh {
			d.doneSnap, d.doneSeq, d.ready, d.lastSuccess = snap, d.seq, true, time.Now()
		}
		d.mu.Unlock()
		if fresh {
			d.snapshotDone(snap, 0, first)
		}
	}
	return nil
}

// guardFacts returns this host's facts for the host guard, nil without a
// watcher.
func (d *Daemon) guardFacts() *hostguard.Facts {
	if d.guard == nil {
		return nil
	}
	return d.guard.Facts()
}

// healthy reports whether the sync loop keeps up: no change has waited for
// longer than two resync periods (plus the minimum interval).
func (d *Daemon) healthy() (bool, string) {
	pending := d.oldestPending()
	limit := 2*d.cfg.Proxy.SyncPeriod.Duration + d.cfg.Proxy.MinSyncPeriod.Duration
	if !pending.IsZero() && time.Since(pending) > limit && d.watcher.HasSynced() {
		return false, fmt.Sprintf("a change has waited %s for a sync (limit %s)", time.Since(pending).Round(time.Second), limit)
	}
	return true, "ok"
}

func (d *Daemon) watchdog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ok, _ := d.healthy(); ok {
				_ = d.notify.send("WATCHDOG=1")
			}
		}
	}
}

// Status returns the agent's current status.
func (d *Daemon) Status() *Status {
	d.mu.Lock()
	st := &Status{
		Version:     d.version,
		PID:         os.Getpid(),
		StartTime:   d.start,
		Ready:       d.ready,
		LastSync:    d.lastSync,
		LastSuccess: d.lastSuccess,
	}
	for _, c := range d.consumers {
		st.Consumers = append(st.Consumers, *d.consumerSt[c.Name()])
	}
	snap := d.snap
	d.mu.Unlock()
	for i, c := range d.consumers {
		st.Consumers[i].Details = details(c)
	}
	st.Synced = d.watcher.HasSynced()
	gs := d.filter.Status()
	if d.guard != nil {
		gs.Version, gs.Facts = d.guard.Version(), d.guard.Facts()
	}
	st.Guard = &gs
	if d.member != nil {
		st.Member = d.member.MemberStatus()
	}
	if sn := d.watcher.Shared(); sn != nil {
		ns := sn.Status()
		st.NodeRoutes = &ns
	}
	st.APIServer.Host = d.apiHost
	if err, at := d.watcher.LastError(); err != nil {
		st.APIServer.LastError, st.APIServer.LastErrorTime = err.Error(), at
	}
	st.Snapshot.Services = []*cluster.Service{}
	st.Snapshot.Nodes = []*cluster.Node{}
	st.Snapshot.Path = d.statePath
	d.mu.Lock()
	st.Snapshot.RestoreError, st.Snapshot.SavedAt = d.restoreErr, d.savedAt
	if d.saved != nil {
		st.Snapshot.SavedVersion = d.saved.Version
	}
	d.mu.Unlock()
	if snap != nil {
		st.Snapshot.Version, st.Snapshot.Time = snap.Version, snap.Time
		if !snap.Restored.IsZero() {
			st.Degraded = true
			st.Snapshot.Restored = snap.Restored
			st.Snapshot.Age = time.Since(snap.Restored).Round(time.Second).String()
		}
		st.Snapshot.Services = snap.SortedServices()
		st.Snapshot.Nodes = snap.SortedNodes()
		st.Snapshot.Endpoints = snap.EndpointCount()
	}
	return st
}

type server struct {
	srv *http.Server
	ln  net.Listener
}

// listen opens the health, metrics and status listeners; the health and
// metrics ones may share an address.
func (d *Daemon) listen() ([]server, error) {
	muxes := map[string]*http.ServeMux{}
	mux := func(addr string) *http.ServeMux {
		if muxes[addr] == nil {
			muxes[addr] = http.NewServeMux()
		}
		return muxes[addr]
	}
	if a := d.cfg.HealthzBindAddress; a != "" {
		mux(a).HandleFunc("/healthz", d.serveHealthz)
		mux(a).HandleFunc("/readyz", d.serveReadyz)
	}
	if a := d.cfg.MetricsBindAddress; a != "" {
		mux(a).Handle("/metrics", promhttp.HandlerFor(d.metrics.registry, promhttp.HandlerOpts{}))
	}
	var out []server
	closeAll := func() {
		for _, s := range out {
			s.ln.Close()
		}
	}
	for addr, m := range muxes {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		out = append(out, server{srv: &http.Server{Handler: m, ReadHeaderTimeout: 5 * time.Second}, ln: ln})
	}
	ln, err := listenUnix(d.cfg.HostPath(d.cfg.StatusSocket))
	if err != nil {
		closeAll()
		return nil, err
	}
	sm := http.NewServeMux()
	sm.HandleFunc("/status", d.serveStatus)
	sm.HandleFunc("/healthz", d.serveHealthz)
	sm.HandleFunc("/readyz", d.serveReadyz)
	if d.cfg.EnableProfiling {
		sm.HandleFunc("/debug/pprof/", pprof.Index)
		sm.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		sm.HandleFunc("/debug/pprof/profile", pprof.Profile)
		sm.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		sm.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	out = append(out, server{srv: &http.Server{Handler: sm, ReadHeaderTimeout: 5 * time.Second}, ln: ln})
	return out, nil
}

// listenUnix opens the status socket, replacing a stale one left by a
// previous run. Only root may connect.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	return ln, nil
}

func registerAll(r *prometheus.Registry, cs []prometheus.Collector) error {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
