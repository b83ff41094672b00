package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// latency is a set of event-to-kernel measurements.
type latency struct {
	Samples  []time.Duration // sorted
	Timeouts int
	// Metric is the peer's own programming-latency histogram over the same
	// changes (quantiles in seconds; NaN when it has none).
	MetricP50, MetricP99 float64
	MetricCount          float64
}

func (l *latency) add(d time.Duration) { l.Samples = append(l.Samples, d) }
func (l *latency) finish()             { slices.Sort(l.Samples) }

// pct returns the q-quantile (nearest rank) of the samples; 0 when none.
func pct(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// peerRun is everything measured of one peer at one load size.
type peerRun struct {
	Peer  peerSpec
	Size  size
	Error string
	// StartToKernel is from process start to the whole load in the kernel;
	// SyncToKernel from its log saying the informers synced to the same.
	StartToKernel, SyncToKernel time.Duration
	Complete                    bool
	ViaDump                     bool // the monitor missed it; seen by a dump
	OwnSync                     float64
	OwnSyncCount                float64
	SyncCPU                     time.Duration // CPU from start to programmed
	IdleCPU                     float64       // fraction of one core while idle
	IdleFor                     time.Duration
	HWM                         int64
	NFTPeakRSS                  int64
	Rules                       ruleCounts
	Single, Burst               latency
	BurstRate                   float64
	TotalCPU                    time.Duration
	Datapath                    *dpRun
}

// proxyOpts tune the proxy section.
type proxyOpts struct {
	changes     int           // sequential single changes
	burst       int           // changes in the burst
	rate        float64       // burst changes per second
	phaseBudget time.Duration // time limit of the sequential changes
	syncTimeout time.Duration // time limit of a full sync
	idle        time.Duration
}

// runPeer measures peer p on the loaded cluster: a full sync from empty,
// idle CPU, single changes, a burst of changes, resources; then, if dp is
// set, the data path; then it stops the peer.
func (b *bench) runPeer(ctx context.Context, p peerSpec, sz size, dp bool) *peerRun {
	r := &peerRun{Peer: p, Size: sz}
	log := b.log.With("peer", p.ID, "size", sz.String())
	if err := b.measurePeer(ctx, r, log, dp); err != nil {
		r.Error = err.Error()
		log.Error("peer run failed", "err", err)
	}
	return r
}

func (b *bench) measurePeer(ctx context.Context, r *peerRun, log *slog.Logger, dp bool) error {
	e := b.env
	netns := e.netnsOf(r.Peer)
	w := b.watch[netns]
	if err := e.flushRules(ctx, netns); err != nil {
		return err
	}
	sentinel := b.load.Sentinel()
	seen := w.Expect(sentinel)
	pr, err := e.startPeer(r.Peer, "")
	if err != nil {
		return err
	}
	defer pr.stop()
	var cpuProf sync.WaitGroup
	defer cpuProf.Wait()
	if e.profile && pr.agent != nil {
		cpuProf.Go(func() {
			if path, err := e.saveStartCPU(ctx, pr); err != nil {
				log.Warn("cpu profile", "err", err)
			} else {
				log.Info("cpu profile of the start", "path", path)
			}
		})
	}
	log.Info("started; waiting for the full sync", "sentinel", sentinel)
	at, ok, viaDump := b.waitSeen(ctx, pr, w, netns, sentinel, seen, b.opts.syncTimeout)
	if !ok {
		if pr.exited() {
			return fmt.Errorf("%s exited:\n%s", r.Peer.ID, pr.logTail(20))
		}
		return fmt.Errorf("full sync not in the kernel within %s", b.opts.syncTimeout)
	}
	r.Complete, r.ViaDump = true, viaDump
	r.StartToKernel = at.Sub(pr.started)
	if t, ok := pr.informersSynced(); ok {
		r.SyncToKernel = at.Sub(t)
	}
	s, err := sampleProc(pr.pid)
	if err != nil {
		return err
	}
	r.SyncCPU = s.CPU
	log.Info("programmed", "startToKernel", r.StartToKernel.Round(time.Millisecond), "syncToKernel", r.SyncToKernel.Round(time.Millisecond), "cpu", s.CPU)
	// The peer records a sync's duration after its last kernel write.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); sleepCtx(ctx, 100*time.Millisecond) {
		mt, err := metricsText(ctx, e.tb, netns, pr.metricsURL)
		if err != nil {
			continue
		}
		if h, ok := parseHistogram(mt, pr.syncMetric, pr.syncMatch...); ok && h.Count > 0 {
			r.OwnSync, r.OwnSyncCount = h.Sum/h.Count, h.Count
			break
		}
	}
	if r.Rules, err = countRules(ctx, e.tb, netns, pr.nftTable); err != nil {
		log.Warn("counting rules", "err", err)
	}

	if path, err := e.saveHeap(ctx, pr, "synced"); err != nil {
		log.Warn("heap profile", "err", err)
	} else if path != "" {
		log.Info("heap profile", "path", path)
	}

	// Idle: nothing changes; periodic resyncs are part of the cost.
	time.Sleep(time.Second)
	s0, _ := sampleProc(pr.pid)
	sleepCtx(ctx, b.opts.idle)
	s1, _ := sampleProc(pr.pid)
	r.IdleFor = s1.At.Sub(s0.At)
	if r.IdleFor > 0 {
		r.IdleCPU = float64(s1.CPU-s0.CPU) / float64(r.IdleFor)
	}

	before, _ := metricsText(ctx, e.tb, netns, pr.metricsURL)
	b.singleChanges(ctx, pr, w, &r.Single, log)
	mid, _ := metricsText(ctx, e.tb, netns, pr.metricsURL)
	r.BurstRate = b.opts.rate
	b.burstChanges(ctx, pr, w, &r.Burst, log)
	after, _ := metricsText(ctx, e.tb, netns, pr.metricsURL)
	fillMetric(&r.Single, before, mid, pr.progMetric)
	fillMetric(&r.Burst, mid, after, pr.progMetric)
	// The largest nft process of any kind of transaction: the full write's.
	for _, kind := range []string{"recreate", "full", "incremental"} {
		if v, ok := parseGauge(after, "bridge_agent_proxy_nft_peak_rss_bytes", `kind="`+kind+`"`); ok {
			r.NFTPeakRSS = max(r.NFTPeakRSS, int64(v))
		}
	}

	if dp {
		d, err := b.datapath(ctx, pr)
		if err != nil {
			log.Warn("data path", "err", err)
		}
		r.Datapath = d
	}
	if path, err := e.saveHeap(ctx, pr, "end"); err != nil {
		log.Warn("heap profile", "err", err)
	} else if path != "" {
		log.Info("heap profile", "path", path)
	}
	s2, err := sampleProc(pr.pid)
	if err == nil {
		r.HWM, r.TotalCPU = s2.HWM, s2.CPU
	}
	if pr.exited() {
		return fmt.Errorf("%s exited during the run:\n%s", r.Peer.ID, pr.logTail(20))
	}
	return nil
}

func fillMetric(l *latency, before, after, name string) {
	l.MetricP50, l.MetricP99 = nan, nan
	hb, ok1 := parseHistogram(before, name)
	ha, ok2 := parseHistogram(after, name)
	if !ok2 {
		return
	}
	if !ok1 {
		hb = histogram{}
	}
	d := ha.sub(hb)
	l.MetricCount = d.Count
	l.MetricP50, l.MetricP99 = d.quantile(0.5), d.quantile(0.99)
}

// waitSeen waits for ch; when the monitor did not report the address in
// time (it may lose events in a flood), one dump of the ruleset decides.
func (b *bench) waitSeen(ctx context.Context, pr *peer, w *kernelWatch, netns string, a netip.Addr, ch <-chan time.Time, timeout time.Duration) (time.Time, bool, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	check := time.NewTicker(10 * time.Second)
	defer check.Stop()
	for {
		select {
		case t := <-ch:
			return t, true, false
		case <-ctx.Done():
			w.Forget(a)
			return time.Time{}, false, false
		case <-deadline.C:
			w.Forget(a)
			if hasAddr(ctx, b.env.tb, netns, a) {
				return time.Now(), true, true
			}
			return time.Time{}, false, false
		case <-check.C:
			if pr != nil && pr.exited() {
				w.Forget(a)
				return time.Time{}, false, false
			}
			if w.lost.Load() > 0 && hasAddr(ctx, b.env.tb, netns, a) {
				w.Forget(a)
				return time.Now(), true, true
			}
		}
	}
}

// pickService returns a random loaded Service index other than the last
// (whose address is the sentinel).
func (b *bench) pickService() int {
	n := b.load.Count()
	if n < 2 {
		return 0
	}
	return rand.IntN(n - 1)
}

// singleChanges writes one change at a time and waits for it to be in the
// kernel, leaving more than the peers' minimum sync interval between
// changes so that each is programmed by a sync of its own.
func (b *bench) singleChanges(ctx context.Context, pr *peer, w *kernelWatch, l *latency, log *slog.Logger) {
	defer l.finish()
	budget := time.Now().Add(b.opts.phaseBudget)
	for i := 0; i < b.opts.changes && ctx.Err() == nil; i++ {
		if time.Now().After(budget) {
			log.Warn("single changes: time budget spent", "done", i, "of", b.opts.changes)
			break
		}
		sleepCtx(ctx, b.env.minSync+20*time.Millisecond)
		addr, start, ch, err := b.changeExpect(ctx, w, b.pickService())
		if err != nil {
			log.Warn("change", "err", err)
			l.Timeouts++
			continue
		}
		t, ok, _ := b.waitSeen(ctx, pr, w, pr.netns, addr, ch, 30*time.Second)
		if !ok {
			l.Timeouts++
			if pr.exited() {
				return
			}
			continue
		}
		l.add(t.Sub(start))
	}
}

// burstChanges writes opts.burst changes at opts.rate per second, each to a
// different Service, and measures each one's way to the kernel.
func (b *bench) burstChanges(ctx context.Context, pr *peer, w *kernelWatch, l *latency, log *slog.Logger) {
	defer l.finish()
	n := b.opts.burst
	if n == 0 || b.load.Count() < 2 {
		return
	}
	sleepCtx(ctx, time.Second)
	interval := time.Duration(float64(time.Second) / b.opts.rate)
	type pending struct {
		addr  netip.Addr
		start time.Time
		ch    <-chan time.Time
	}
	var mu sync.Mutex
	var ps []pending
	var wg sync.WaitGroup
	// The writes go out from a few goroutines so that API latency does not
	// throttle the rate; each takes its own fresh address.
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sem := make(chan struct{}, 16)
	// Distinct Services: two changes to one slice within a sync would
	// leave the first address never programmed.
	order := rand.Perm(max(b.load.Count()-1, 1))
	n = min(n, len(order))
	for i := 0; i < n && ctx.Err() == nil; i++ {
		<-tick.C
		svc := order[i]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			// Register before writing: Change picks the next address, and
			// concurrent writers race for it, so register a range.
			addr, start, ch, err := b.changeExpect(ctx, w, svc)
			if err != nil {
				log.Warn("burst change", "err", err)
				return
			}
			mu.Lock()
			ps = append(ps, pending{addr, start, ch})
			mu.Unlock()
		})
	}
	wg.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for _, p := range ps {
		t, ok, _ := b.waitSeen(ctx, pr, w, pr.netns, p.addr, p.ch, max(time.Until(deadline), time.Millisecond))
		if !ok {
			l.Timeouts++
			continue
		}
		l.add(t.Sub(p.start))
	}
	l.Timeouts += n - len(ps)
}

// changeExpect changes Service svc to a fresh address registered with the
// watch before the write.
func (b *bench) changeExpect(ctx context.Context, w *kernelWatch, svc int) (netip.Addr, time.Time, <-chan time.Time, error) {
	off := b.load.nextAddr.Add(1)
	addr := addAt(changeBase, off)
	ch := w.Expect(addr)
	start, err := b.load.ChangeTo(ctx, svc, addr)
	if err != nil {
		w.Forget(addr)
		return addr, start, nil, err
	}
	return addr, start, ch, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
