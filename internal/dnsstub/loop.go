package dnsstub

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Loop handling. A query of ours that comes back to the stub is answered
// SERVFAIL at once (which ends that round of the loop), and the name and
// type that looped are not sent to that upstream again for loopHold. The
// upstream keeps serving every other name: an upstream that forwards one
// domain back to us (a conditional forwarder, a search-list mistake) is
// not lost for the rest, and a loop through an upstream that sends
// everything back costs one round trip per name and type per loopHold.
const (
	loopHold     = time.Minute
	maxLoopsHeld = 1024 // beyond, the oldest entries go first
)

// loopKey is one name and type found looping through one upstream.
type loopKey struct {
	upstream netip.AddrPort
	name     string // lower case
	qtype    uint16
}

// loopGuard remembers the questions that looped, each for loopHold.
type loopGuard struct {
	mu    sync.Mutex
	until map[loopKey]time.Time
}

func newLoopGuard() *loopGuard { return &loopGuard{until: map[loopKey]time.Time{}} }

// mark holds k until now+loopHold.
func (g *loopGuard) mark(k loopKey, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.until[k]; !ok && len(g.until) >= maxLoopsHeld {
		g.pruneLocked(now)
		for len(g.until) >= maxLoopsHeld {
			var oldest loopKey
			first := true
			for k, t := range g.until {
				if first || t.Before(g.until[oldest]) {
					oldest, first = k, false
				}
			}
			delete(g.until, oldest)
		}
	}
	g.until[k] = now.Add(loopHold)
}

// held tells whether k looped less than loopHold ago.
func (g *loopGuard) held(k loopKey, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.until[k]
	if ok && !now.Before(t) {
		delete(g.until, k)
		return false
	}
	return ok
}

func (g *loopGuard) pruneLocked(now time.Time) {
	for k, t := range g.until {
		if !now.Before(t) {
			delete(g.until, k)
		}
	}
}

// reset forgets every loop: the upstreams changed.
func (g *loopGuard) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(g.until)
}

// list returns the questions held, as "upstream name type", sorted.
func (g *loopGuard) list(now time.Time) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(now)
	out := make([]string, 0, len(g.until))
	for k := range g.until {
		out = append(out, k.upstream.String()+" "+k.name+" "+dns.TypeToString[k.qtype])
	}
	slices.Sort(out)
	return out
}

// isLooping tells whether q looped through upstream u lately.
func (s *Server) isLooping(u netip.AddrPort, q dns.Question) bool {
	return s.loops.held(loopKey{upstream: u, name: strings.ToLower(q.Name), qtype: q.Qtype}, s.now())
}

// loopDetected records a query that came back from our own forwarding
// through upstream: its name and type are not sent there for loopHold.
// The first loop through each upstream is logged.
func (s *Server) loopDetected(upstream string, q dns.Question) {
	s.metrics.loops.Inc()
	if u, err := netip.ParseAddrPort(upstream); err == nil {
		s.loops.mark(loopKey{upstream: u, name: strings.ToLower(q.Name), qtype: q.Qtype}, s.now())
	}
	s.mu.Lock()
	first := !s.loopsSeen[upstream]
	s.loopsSeen[upstream] = true
	s.mu.Unlock()
	if first {
		s.log.Error("forwarding loop detected: upstream "+upstream+" points back at the stub",
			"upstream", upstream, "name", q.Name, "type", dns.TypeToString[q.Qtype])
	}
}
