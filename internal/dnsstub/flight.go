package dnsstub

import (
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Coalescing. Questions that would be sent upstream while the same one is
// already on its way wait for that one's reply instead: one upstream query
// however many clients ask, and each gets its own copy, answered with its
// own ID and spelling (relay). The same question means the same upstream
// query: name (case-insensitive), type, class, and the DO, CD and RD bits,
// which change what an upstream answers; and the same kind of upstream.
// Waiting takes no forwarding slot (limiter.go) and ends with the
// waiter's own query budget. A query of ours that loops back to the stub
// never waits for itself: it is caught before (loopedBack).

// flightKey is one upstream question.
type flightKey struct {
	cacheKey
	rd   bool
	kind string
}

// maxFlightWaiters bounds the queries waiting for one flight: past it, an
// identical question is refused at once (stale from the cache when there
// is an answer), as over a forwarding limit. Each waiter holds a place of
// the slow path (slowpath.go), and a process asking one question in a
// loop while its upstream is slow would otherwise take them all.
const maxFlightWaiters = 64

// flight is one upstream question in progress; msg and err are set before
// done is closed.
type flight struct {
	done    chan struct{}
	msg     *dns.Msg // never modified once done: waiters copy it
	err     error
	waiters atomic.Int32
}

// wait counts one more waiter, reporting false (and counting none) when
// maxFlightWaiters already wait; leave must follow a true.
func (f *flight) wait() bool {
	if f.waiters.Add(1) > maxFlightWaiters {
		f.waiters.Add(-1)
		return false
	}
	return true
}

// leave counts a waiter out.
func (f *flight) leave() { f.waiters.Add(-1) }

// flights are the upstream questions in progress.
type flights struct {
	mu sync.Mutex
	m  map[flightKey]*flight
}

func newFlights() *flights { return &flights{m: map[flightKey]*flight{}} }

// join returns the flight of k, and whether the caller leads it: a
// leader asks upstream and must call finish; the others wait for done.
func (fs *flights) join(k flightKey) (*flight, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f, ok := fs.m[k]; ok {
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	fs.m[k] = f
	return f, true
}

// finish ends the flight of k with its outcome and wakes its waiters. A
// question asked after this starts a new flight (or finds the cache).
func (fs *flights) finish(k flightKey, f *flight, msg *dns.Msg, err error) {
	fs.mu.Lock()
	delete(fs.m, k)
	fs.mu.Unlock()
	f.msg, f.err = msg, err
	close(f.done)
}

// len returns the upstream questions in progress.
func (fs *flights) len() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.m)
}
