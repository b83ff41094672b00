package daemon

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type runLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *runLog) add() {
	l.mu.Lock()
	l.times = append(l.times, time.Now())
	l.mu.Unlock()
}

func (l *runLog) snapshot() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times...)
}

func startRunner(t *testing.T, fn func(context.Context) error, minI, maxI time.Duration) *Runner {
	t.Helper()
	r := NewRunner(fn, minI, maxI)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A burst of pokes costs at most two runs, and runs respect minInterval.
func TestRunnerCoalesces(t *testing.T) {
	var log runLog
	r := startRunner(t, func(context.Context) error { log.add(); return nil }, 200*time.Millisecond, time.Hour)
	for range 1000 {
		r.Poke()
	}
	waitUntil(t, 2*time.Second, func() bool { return len(log.snapshot()) >= 1 })
	time.Sleep(300 * time.Millisecond)
	for range 1000 {
		r.Poke()
	}
	waitUntil(t, 2*time.Second, func() bool { return len(log.snapshot()) >= 2 })
	time.Sleep(400 * time.Millisecond)
	runs := log.snapshot()
	if len(runs) > 3 {
		t.Errorf("2000 pokes in two bursts cost %d runs", len(runs))
	}
	for i := 1; i < len(runs); i++ {
		if gap := runs[i].Sub(runs[i-1]); gap < 190*time.Millisecond {
			t.Errorf("runs %d and %d only %v apart (min 200ms)", i-1, i, gap)
		}
	}
	if !r.PendingSince().IsZero() {
		t.Errorf("nothing should be pending after the runs")
	}
}

// Without pokes the runner still runs every maxInterval (periodic resync).
func TestRunnerPeriodic(t *testing.T) {
	var n atomic.Int32
	startRunner(t, func(context.Context) error { n.Add(1); return nil }, 0, 50*time.Millisecond)
	waitUntil(t, 2*time.Second, func() bool { return n.Load() >= 3 })
}

// A failing run is retried with backoff and stays pending until it succeeds.
func TestRunnerRetriesFailures(t *testing.T) {
	var n atomic.Int32
	r := startRunner(t, func(context.Context) error {
		if n.Add(1) < 4 {
			return errors.New("boom")
		}
		return nil
	}, 10*time.Millisecond, time.Hour)
	r.Poke()
	waitUntil(t, 3*time.Second, func() bool { return n.Load() >= 2 })
	if r.PendingSince().IsZero() && n.Load() < 4 {
		t.Errorf("failed work must stay pending")
	}
	waitUntil(t, 5*time.Second, func() bool { return n.Load() >= 4 })
	time.Sleep(50 * time.Millisecond)
	if !r.PendingSince().IsZero() {
		t.Errorf("still pending after success")
	}
	if got := n.Load(); got != 4 {
		t.Errorf("runs = %d, want exactly 4 (3 failures + 1 success, then idle)", got)
	}
}
