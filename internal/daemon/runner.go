package daemon

import (
	"context"
	"sync"
	"time"
)

// Runner runs one sync function with coalescing: any number of Pokes between
// two runs cost one run, runs are at least minInterval apart, a run happens at
// least every maxInterval (the periodic full resync), and a failed run is
// retried with exponential backoff bounded by maxInterval.
type Runner struct {
	fn          func(ctx context.Context) error
	minInterval time.Duration
	maxInterval time.Duration
	retryBase   time.Duration
	poke        chan struct{}

	mu           sync.Mutex
	pendingSince time.Time // zero when no run is pending
}

// NewRunner returns a Runner; call Run to start it.
func NewRunner(fn func(ctx context.Context) error, minInterval, maxInterval time.Duration) *Runner {
	base := minInterval
	if base < 100*time.Millisecond {
		base = 100 * time.Millisecond
	}
	return &Runner{fn: fn, minInterval: minInterval, maxInterval: maxInterval, retryBase: base, poke: make(chan struct{}, 1)}
}

// Poke asks for a run soon. It never blocks.
func (r *Runner) Poke() {
	r.mu.Lock()
	if r.pendingSince.IsZero() {
		r.pendingSince = time.Now()
	}
	r.mu.Unlock()
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// PendingSince returns when the oldest unserved Poke arrived (zero if none).
func (r *Runner) PendingSince() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pendingSince
}

// Run loops until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	var last time.Time
	failures := 0
	timer := time.NewTimer(r.maxInterval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.poke:
		case <-timer.C:
		}
		if wait := r.minInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		// Everything poked until now is covered by this run.
		select {
		case <-r.poke:
		default:
		}
		r.mu.Lock()
		started := r.pendingSince
		r.pendingSince = time.Time{}
		r.mu.Unlock()

		last = time.Now()
		err := r.fn(ctx)
		next := r.maxInterval
		if err != nil && ctx.Err() == nil {
			failures++
			next = min(r.retryBase<<min(failures-1, 16), r.maxInterval)
			// The failed work is still pending.
			r.mu.Lock()
			if r.pendingSince.IsZero() {
				if started.IsZero() {
					started = last
				}
				r.pendingSince = started
			}
			r.mu.Unlock()
		} else {
			failures = 0
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}
