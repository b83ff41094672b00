package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// worker runs one consumer in a loop of its own. The daemon publishes each
// snapshot to every worker; a worker syncs its consumer with the newest one
// as soon as the previous sync of that consumer is done, so a slow consumer
// (the DNS zone of a large cluster) never delays another (the proxy's
// rules). Every worker retries its own failures with backoff and is called
// every syncPeriod with an unchanged snapshot, so its consumer can verify
// and repair what it owns. What the snapshots it skipped carried is not
// lost: each worker accumulates it (changes) until a sync succeeds, for the
// programming-latency metric and the per-sync debug line.
type worker struct {
	c      Consumer
	runner *Runner
	// Guarded by Daemon.mu: the snapshot of the consumer's last successful
	// sync and its publication number, and the last sync's error.
	good    *cluster.Snapshot
	goodSeq uint64
	goodAt  time.Time // when good was published
	err     error
	// pending is what the snapshots published since the consumer's last
	// sync carry, whichever of them it skips (guarded by Daemon.mu).
	pending changes
}

// ProgrammingObserver is implemented by consumers that measure how long
// an EndpointSlice change took to reach the host (the proxy's
// network-programming latency). After each successful Sync the daemon
// hands it the trigger times of the changes that sync was the first to
// program, by Service: each exactly once, even when the consumer's worker
// skipped the snapshots that brought them; a failed sync hands them to the
// next one.
type ProgrammingObserver interface {
	ObserveProgramming(triggers map[cluster.ServiceKey][]time.Time, programmed time.Time)
}

// maxPendingTriggers bounds the trigger times a worker keeps for a
// consumer whose syncs keep failing; those beyond are not measured.
const maxPendingTriggers = 100000

// changes accumulates, for one worker, what the snapshots published since
// its last successful sync carry: how many there were, the oldest change
// and when it arrived, the oldest trigger time, and, for a
// ProgrammingObserver, every trigger time of their EndpointSlice changes.
type changes struct {
	snapshots     int
	received      time.Time
	receivedWhat  string
	oldestTrigger time.Time
	triggers      map[cluster.ServiceKey][]time.Time
	ntriggers     int
}

// add merges what o carries into c, keeping trigger times only when
// keepTriggers is set.
func (c *changes) add(o changes, keepTriggers bool) {
	c.snapshots += o.snapshots
	if !o.received.IsZero() && (c.received.IsZero() || o.received.Before(c.received)) {
		c.received, c.receivedWhat = o.received, o.receivedWhat
	}
	if !o.oldestTrigger.IsZero() && (c.oldestTrigger.IsZero() || o.oldestTrigger.Before(c.oldestTrigger)) {
		c.oldestTrigger = o.oldestTrigger
	}
	if !keepTriggers {
		return
	}
	for k, ts := range o.triggers {
		if c.ntriggers+len(ts) > maxPendingTriggers {
			continue
		}
		if c.triggers == nil {
			c.triggers = map[cluster.ServiceKey][]time.Time{}
		}
		c.triggers[k] = append(c.triggers[k], ts...)
		c.ntriggers += len(ts)
	}
}

// queueChanges records a newly published snapshot in every worker's
// pending changes; called with d.mu held.
func (d *Daemon) queueChanges(snap *cluster.Snapshot) {
	c := changes{snapshots: 1, received: snap.Received, receivedWhat: snap.ReceivedWhat, triggers: snap.Triggers}
	for _, ts := range snap.Triggers {
		c.ntriggers += len(ts)
		for _, t := range ts {
			if c.oldestTrigger.IsZero() || t.Before(c.oldestTrigger) {
				c.oldestTrigger = t
			}
		}
	}
	for _, w := range d.workers {
		_, observes := w.c.(ProgrammingObserver)
		w.pending.add(c, observes)
	}
}

func (d *Daemon) newWorkers() {
	for _, c := range d.consumers {
		w := &worker{c: c}
		// No minimum interval of its own: the publishing runner already
		// spaces snapshots by proxy.minSyncPeriod.
		w.runner = NewRunner(func(ctx context.Context) error { return d.runWorker(ctx, w) }, 0, d.cfg.Proxy.SyncPeriod.Duration)
		d.workers = append(d.workers, w)
	}
}

// runWorker syncs w's consumer with the newest published snapshot.
func (d *Daemon) runWorker(ctx context.Context, w *worker) error {
	d.mu.Lock()
	snap, seq, published := d.snap, d.seq, d.publishedAt
	carried := w.pending
	w.pending = changes{}
	d.mu.Unlock()
	if snap == nil {
		return nil
	}
	start := time.Now()
	err := w.c.Sync(ctx, snap)
	end := time.Now()
	took := end.Sub(start)
	if err != nil {
		d.mu.Lock()
		_, observes := w.c.(ProgrammingObserver)
		carried.add(w.pending, observes) // not programmed: the next sync carries them
		w.pending = carried
		d.mu.Unlock()
	} else {
		if po, ok := w.c.(ProgrammingObserver); ok && len(carried.triggers) > 0 {
			po.ObserveProgramming(carried.triggers, end)
		}
		// The oldest change a sync carries and when it arrived: a change
		// that waited shows here, whatever delayed it.
		args := []any{"consumer", w.c.Name(), "snapshot", snap.Version, "snapshots", carried.snapshots, "took", took}
		if !carried.received.IsZero() {
			args = append(args, "oldestChange", carried.receivedWhat, "received", carried.received, "lag", end.Sub(carried.received))
		}
		// The oldest trigger time tells a late event (received long after
		// it) from a late sync (lag).
		if !carried.oldestTrigger.IsZero() {
			args = append(args, "oldestTrigger", carried.oldestTrigger)
		}
		d.log.Debug("consumer synced", args...)
	}
	d.metrics.syncDuration.WithLabelValues(w.c.Name()).Observe(took.Seconds())
	if err != nil {
		d.metrics.syncs.WithLabelValues(w.c.Name(), "error").Inc()
	} else {
		d.metrics.syncs.WithLabelValues(w.c.Name(), "success").Inc()
	}
	d.workerDone(w, snap, seq, published, err, start)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("sync failed; will retry", "consumer", w.c.Name(), "snapshot", snap.Version, "err", err)
		}
		return fmt.Errorf("%s: %w", w.c.Name(), err)
	}
	return nil
}

// workerDone records a consumer's sync. A published snapshot is done once
// every consumer's last sync succeeded with it or a newer one: it is then
// logged and counted once, the agent is ready after the first, and it may
// be saved as the snapshot known good. Under constant change a slow
// consumer lags, and the done snapshot is the newest one it has synced.
func (d *Daemon) workerDone(w *worker, snap *cluster.Snapshot, seq uint64, published time.Time, err error, start time.Time) {
	d.mu.Lock()
	st := d.consumerSt[w.c.Name()]
	if err != nil {
		st.LastError = err.Error()
	} else {
		st.LastError, st.LastSync = "", time.Now()
		w.good, w.goodSeq, w.goodAt = snap, seq, published
	}
	w.err = err
	var errs []error
	var done *cluster.Snapshot
	var doneSeq uint64
	var doneAt time.Time
	all := true
	for _, o := range d.workers {
		if o.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.c.Name(), o.err))
			all = false
		}
		if o.good == nil {
			all = false
		} else if done == nil || o.goodSeq < doneSeq {
			done, doneSeq, doneAt = o.good, o.goodSeq, o.goodAt
		}
	}
	joined := errors.Join(errs...)
	d.lastSync = SyncInfo{Time: start, Duration: time.Since(start), SnapshotVersion: snap.Version, Error: errString(joined), Count: d.lastSync.Count + 1}
	first, advanced := false, false
	var elapsed time.Duration
	if all && doneSeq > d.doneSeq {
		advanced = true
		d.doneSnap, d.doneSeq = done, doneSeq
		elapsed = time.Since(doneAt)
		first = !d.ready
		d.ready = true
		d.lastSuccess = time.Now()
	}
	d.mu.Unlock()
	if err != nil {
		d.metrics.syncs.WithLabelValues("all", "error").Inc()
	}
	if advanced {
		d.snapshotDone(done, elapsed, first)
	}
	d.updateStatus()
}

// snapshotDone reports a snapshot every consumer has synced.
func (d *Daemon) snapshotDone(snap *cluster.Snapshot, elapsed time.Duration, first bool) {
	d.metrics.syncs.WithLabelValues("all", "success").Inc()
	d.metrics.syncDuration.WithLabelValues("all").Observe(elapsed.Seconds())
	d.metrics.lastSuccess.SetToCurrentTime()
	if snap.Restored.IsZero() {
		d.watcher.ClearError()
		d.saver.Poke()
	}
	d.log.Info("synced", "snapshot", snap.Version, "services", len(snap.Services),
		"changed", len(snap.Changed), "endpoints", snap.EndpointCount(), "nodes", len(snap.Nodes), "took", elapsed)
	if first {
		d.metrics.ready.Set(1)
		d.log.Info("ready: first full sync done", "services", len(snap.Services), "took", time.Since(d.start).Round(time.Millisecond))
	}
	d.updateStatus()
}

// statusLine says in one line what the agent does, for systemd's STATUS=
// (`systemctl status bridge-agent`).
func (d *Daemon) statusLine() string {
	d.mu.Lock()
	syncErr, snap := d.lastSync.Error, d.doneSnap
	d.mu.Unlock()
	var apiErr string
	var apiErrAt time.Time
	if err, at := d.watcher.LastError(); err != nil {
		apiErr, apiErrAt = err.Error(), at
	}
	var parts []string
	for _, c := range d.consumers {
		if s, ok := c.(Summarizer); ok {
			parts = append(parts, s.Summary())
		}
	}
	return statusLine(syncErr, apiErr, apiErrAt, snap, parts)
}

// statusLine is the STATUS= text: a sync error first, else whether the
// consumers serve the saved snapshot or the live one (and since when the
// API server cannot be reached, after a later outage), else what the first
// sync waits for.
func statusLine(syncErr, apiErr string, apiErrAt time.Time, done *cluster.Snapshot, consumers []string) string {
	switch {
	case syncErr != "":
		return "sync error: " + syncErr
	case done != nil && !done.Restored.IsZero():
		if apiErr == "" {
			apiErr = "not listed yet"
		}
		return fmt.Sprintf("serving the saved snapshot of %s (API server unreachable: %s)", done.Restored.Format(time.RFC3339), apiErr)
	case done != nil && apiErr != "":
		return fmt.Sprintf("API server unreachable since %s: %s; serving the last rules (%d services, %d endpoints)",
			apiErrAt.Format(time.TimeOnly), apiErr, len(done.Services), done.EndpointCount())
	case done != nil:
		s := fmt.Sprintf("ready: %d services, %d endpoints", len(done.Services), done.EndpointCount())
		if len(consumers) > 0 {
			s += "; " + strings.Join(consumers, ", ")
		}
		return s
	case apiErr != "":
		return "waiting for the API server: " + apiErr
	}
	return "waiting for the API server: listing Services and EndpointSlices (and Nodes, for routes.mode nodes)"
}

// updateStatus sends systemd the current STATUS= line when it changed, and
// READY=1 once the consumers serve a snapshot or the start has waited
// readyTimeout.
func (d *Daemon) updateStatus() {
	d.mu.Lock()
	ready := d.ready
	d.mu.Unlock()
	ready = ready || d.readyTimeout > 0 && time.Since(d.start) >= d.readyTimeout
	if err := d.notify.setStatus(d.statusLine(), ready); err != nil {
		d.log.Warn("sd_notify failed", "err", err)
	}
}

// oldestPending returns when the oldest change still waiting for a sync
// arrived, over the publishing runner and every worker (zero if none).
func (d *Daemon) oldestPending() time.Time {
	oldest := d.runner.PendingSince()
	for _, w := range d.workers {
		if p := w.runner.PendingSince(); !p.IsZero() && (oldest.IsZero() || p.Before(oldest)) {
			oldest = p
		}
	}
	return oldest
}
