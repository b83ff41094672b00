package dnsstub

import (
	"context"
	"net/netip"
	"strings"
	"sync"
)

// Forwarding admission. Only questions that must go upstream pass here:
// zone answers, cache hits and queries that join an identical question in
// flight (flight.go) never take a slot, so slow upstreams cannot make the
// stub refuse cluster names.
//
// Who is asking: every process on the host reaches the stub from
// 127.0.0.1 (or the stub's own address), each query from a fresh source
// port, so neither the address nor the port tells processes apart. The
// stub shares the forwarding slots among "clients" that are a source
// address and the domain asked (its last two labels, see domainOf): a
// process hammering names of one slow or dead domain uses up its own share
// and no one else's, as BIND's fetches-per-zone does for a recursive
// server. Queries for one and the same name and type are one upstream query
// anyway (coalescing), so a storm of identical questions costs one slot.
//
// Limits, checked in this order when a question would go upstream:
//   - global: at most Options.MaxForwards upstream questions in flight in
//     all (CoreDNS forward's max_concurrent);
//   - client: at most Options.MaxPerClient of them for one client;
//   - share: a client may not grow past its fair share, MaxForwards divided
//     by one more than the number of clients with questions in flight, so
//     that a newcomer always finds a free slot. Shares shrink as clients
//     arrive; a client above its new share keeps what it holds (those
//     questions end within the query budget) but gets no more until it is
//     below.
//
// A question over a limit is not queued: it gets a stale answer from the
// cache when there is one (RFC 8767 allows serving stale when resolution
// cannot proceed), else REFUSED at once, as CoreDNS does: REFUSED is not
// cached negatively and sends the client's resolver on to its next server,
// where a SERVFAIL would read as "that name is broken".

// Limits a forwarded question can hit, the limit label of
// forward_rejections_total.
const (
	limitGlobal = "global"
	limitClient = "client"
	limitShare  = "share"
	// limitBusy is not a forwarding limit: the UDP queries served outside
	// the fast path at once are bounded (slowpath.go), and one over the
	// bound is answered REFUSED by the reader.
	limitBusy = "busy"
	// limitWaiters: maxFlightWaiters identical questions already wait
	// for one upstream query (flight.go).
	limitWaiters = "waiters"
)

// fairKey is one client of the forwarder: a source address and the domain
// asked.
type fairKey struct {
	addr   netip.Addr
	domain string
}

// forwardLimiter admits forwarded questions: a global cap shared fairly
// among clients.
type forwardLimiter struct {
	global, perClient int

	mu    sync.Mutex
	total int
	n     map[fairKey]int
}

func newForwardLimiter(global, perClient int) *forwardLimiter {
	return &forwardLimiter{global: global, perClient: perClient, n: map[fairKey]int{}}
}

// share is the most a client may hold while active clients (itself
// included) have questions in flight.
func (l *forwardLimiter) share(active int) int {
	return max(1, l.global/(active+1))
}

// acquire takes a slot for k; it returns the limit that refused it, or ""
// when admitted (then release must follow).
func (l *forwardLimiter) acquire(k fairKey) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.n[k]
	active := len(l.n)
	if n == 0 {
		active++
	}
	switch {
	case l.total >= l.global:
		return limitGlobal
	case n >= l.perClient:
		return limitClient
	case n >= l.share(active):
		return limitShare
	}
	l.n[k] = n + 1
	l.total++
	return ""
}

// release returns the slot of a question acquire admitted.
func (l *forwardLimiter) release(k fairKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.n[k]--; l.n[k] <= 0 {
		delete(l.n, k)
	}
}

// inFlight returns the questions admitted and not yet released.
func (l *forwardLimiter) inFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// domainOf returns the part of name (lower case, absolute) that stands for
// who is asking: its last two labels ("example.com." for
// "a.b.example.com."), three under a country's second level such as
// "co.uk." or "com.au." (a two-letter top-level label under a label of at
// most three letters), a /16 of in-addr.arpa and a /32 of ip6.arpa. Names
// with fewer labels are themselves.
func domainOf(name string) string {
	n := 2
	switch {
	case strings.HasSuffix(name, ".in-addr.arpa."):
		n = 4
	case strings.HasSuffix(name, ".ip6.arpa."):
		n = 10
	default:
		if tld, sld := lastLabel(name, 1), lastLabel(name, 2); len(tld) == 2 && len(sld) > 0 && len(sld) <= 3 {
			n = 3
		}
	}
	return lastLabels(name, n)
}

// lastLabels returns the last n labels of the absolute name, with the
// root's dot; all of name when it has fewer. Escaped dots are taken as
// separators: the key only has to be stable, not exact.
func lastLabels(name string, n int) string {
	end := len(name) - 1 // the root's dot
	i := end
	for range n {
		j := strings.LastIndexByte(name[:i], '.')
		if j < 0 {
			return name
		}
		i = j
	}
	return name[i+1:]
}

// lastLabel returns the n-th label from the end of the absolute name (1
// is the top-level label), "" when there is none.
func lastLabel(name string, n int) string {
	s := lastLabels(name, n)
	if l := lastLabels(name, n-1); len(s) > len(l) {
		return strings.TrimSuffix(s[:len(s)-len(l)], ".")
	}
	return ""
}

// clientKey is the context key of the querying client's address.
type clientKey struct{}

// withClient returns ctx carrying the address a query came from.
func withClient(ctx context.Context, src netip.Addr) context.Context {
	return context.WithValue(ctx, clientKey{}, src)
}

// clientOf returns the address withClient put in ctx.
func clientOf(ctx context.Context) netip.Addr {
	a, _ := ctx.Value(clientKey{}).(netip.Addr)
	return a
}
