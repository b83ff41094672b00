package dnsstub

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// gatedUpstream answers A questions with ip once open is closed; until
// then it holds them. It counts the questions it got per name.
type gatedUpstream struct {
	*upstream
	open    chan struct{}
	holding atomic.Int64
	mu      sync.Mutex
	asked   map[string]int
}

func startGated(t *testing.T, ipAddr string) *gatedUpstream {
	g := &gatedUpstream{open: make(chan struct{}), asked: map[string]int{}}
	g.upstream = startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		g.mu.Lock()
		g.asked[strings.ToLower(r.Question[0].Name)]++
		g.mu.Unlock()
		g.holding.Add(1)
		<-g.open
		answerA(ipAddr, 30)(w, r, tcp)
	})
	t.Cleanup(g.release)
	return g
}

var releaseOnce sync.Map

func (g *gatedUpstream) release() {
	if _, done := releaseOnce.LoadOrStore(g, true); !done {
		close(g.open)
	}
}

func (g *gatedUpstream) askedFor(name string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.asked[strings.ToLower(name)]
}

// waitHolding waits until the upstream holds n questions.
func (g *gatedUpstream) waitHolding(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for g.holding.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("upstream holds %d questions, want %d", g.holding.Load(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// askAsync sends req through the handler in the background; the reply
// comes on the channel.
func askAsync(s *Server, req *dns.Msg) <-chan *dns.Msg {
	ch := make(chan *dns.Msg, 1)
	go func() { ch <- ask(s, req) }()
	return ch
}

func rcodeOf(m *dns.Msg) string {
	if m == nil {
		return "no reply"
	}
	return dns.RcodeToString[m.Rcode]
}

// TestForwardLimits: slow upstream questions are bounded per client
// (source address and domain) and in all; the question over a limit is
// refused at once; zone names and other domains are not affected.
func TestForwardLimits(t *testing.T) {
	g := startGated(t, "192.0.2.90")
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{g.addr}, MaxPerClient: 3, MaxForwards: 8, Timeout: 5 * time.Second}, testSnapshot())
	var pending []<-chan *dns.Msg
	// flood sends n questions for names of domain and waits until the
	// upstream holds want questions in all; the next name of domain gets
	// rcode, because of limit.
	flood := func(domain string, n int, want int64, limit string) {
		t.Helper()
		for i := range n {
			pending = append(pending, askAsync(s, query("n"+itoa(i)+"."+domain, dns.TypeA, 1232)))
		}
		g.waitHolding(t, want)
		before := val(s.metrics.rejections.WithLabelValues(limit))
		start := time.Now()
		if r := ask(s, query("over."+domain, dns.TypeA, 1232)); r == nil || r.Rcode != dns.RcodeRefused {
			t.Errorf("name of %s over the %s limit: %s, want REFUSED", domain, limit, rcodeOf(r))
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("refusal took %s, want at once", took)
		}
		if n := val(s.metrics.rejections.WithLabelValues(limit)) - before; n != 1 {
			t.Errorf("%s limit rejections +%v, want +1", limit, n)
		}
	}
	zoneAnswered := func() {
		t.Helper()
		qcase{Qname: webFQDN, Qtype: dns.TypeA, Answer: []string{A(webFQDN, "10.96.0.10")}}.check(t, ask(s, query(webFQDN, dns.TypeA, 1232)))
		raw, _ := query(webFQDN, dns.TypeAAAA, 1232).Pack()
		if s.answerFast(&fastReader{s: s}, raw, localClient) == nil {
			t.Error("fast path did not answer a zone name")
		}
	}
	// One slow domain alone: its client limit, 3 (its share would be 8/2).
	flood("slow.test.", 3, 3, limitClient)
	zoneAnswered()
	// Another domain is another client: its fair share is 8/(2+1) = 2.
	flood("other.test.", 2, 5, limitShare)
	// A third: 8/(3+1) = 2; a fourth: 8/(4+1) = 1, the last slot.
	flood("third.test.", 2, 7, limitShare)
	flood("fourth.test.", 1, 8, limitGlobal)
	if st := s.Status().(*Status); st.ForwardsInFlight != 8 || st.MaxForwards != 8 {
		t.Errorf("status: %d of %d in flight, want 8 of 8", st.ForwardsInFlight, st.MaxForwards)
	}
	// Still, zone names are answered.
	zoneAnswered()

	g.release()
	for _, ch := range pending {
		aAnswer(t, <-ch, "192.0.2.90")
	}
	if n := s.forwards.inFlight(); n != 0 {
		t.Errorf("%d slots still taken after every answer", n)
	}
	// The refused names are served once the slots are free.
	aAnswer(t, ask(s, query("over.slow.test.", dns.TypeA, 1232)), "192.0.2.90")
}

// TestForwardLimitServesStale: a question refused by a limit gets the
// cached answer, stale, rather than REFUSED.
func TestForwardLimitServesStale(t *testing.T) {
	g := startGated(t, "192.0.2.91")
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{g.addr}, MaxPerClient: 1, Timeout: 5 * time.Second}, testSnapshot())
	now := time.Now()
	s.now = func() time.Time { return now }
	cached := new(dns.Msg)
	cached.SetQuestion("old.slow.test.", dns.TypeA)
	cached.Response = true
	cached.Answer = []dns.RR{rr(t, "old.slow.test. 10 IN A 192.0.2.1")}
	s.cache.put(keyOf(cached.Question[0], false, false), cached, now.Add(-time.Minute)) // expired 50 s ago

	pending := askAsync(s, query("new.slow.test.", dns.TypeA, 0))
	g.waitHolding(t, 1)
	r := ask(s, query("old.slow.test.", dns.TypeA, 0))
	aAnswer(t, r, "192.0.2.1")
	if ttl := r.Answer[0].Header().Ttl; ttl != staleTTL {
		t.Errorf("stale answer TTL %d, want %d", ttl, staleTTL)
	}
	if n := val(s.metrics.rejections.WithLabelValues(limitClient)); n != 1 {
		t.Errorf("client limit rejections %v, want 1", n)
	}
	if g.askedFor("old.slow.test.") != 0 {
		t.Error("the refused question went upstream")
	}
	g.release()
	aAnswer(t, <-pending, "192.0.2.91")
}

// TestCoalescing: identical questions in flight are one upstream query;
// every asker gets the answer with its own ID and spelling. Questions that
// differ in type or DO bit are not merged.
func TestCoalescing(t *testing.T) {
	g := startGated(t, "192.0.2.92")
	// The client limit is 1: waiting for a question in flight takes no slot.
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{g.addr}, MaxPerClient: 1, MaxForwards: 10, Timeout: 5 * time.Second}, testSnapshot())

	const n = 50
	type asked struct {
		req *dns.Msg
		ch  <-chan *dns.Msg
	}
	first := query("same.example.test.", dns.TypeA, 1232)
	all := []asked{{first, askAsync(s, first)}}
	g.waitHolding(t, 1)
	for i := range n - 1 {
		name := "same.example.test."
		if i%2 == 0 {
			name = "SAME.Example.TEST."
		}
		req := query(name, dns.TypeA, 1232)
		all = append(all, asked{req, askAsync(s, req)})
	}
	// Wait for every one of them to be waiting on the flight.
	deadline := time.Now().Add(5 * time.Second)
	for val(s.metrics.coalesced) < n-1 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if c := val(s.metrics.coalesced); c != n-1 {
		t.Fatalf("coalesced %v, want %d", c, n-1)
	}
	// The same name with DO set is another upstream question, and over the
	// client limit (the first holds the one slot of example.test).
	do := query("same.example.test.", dns.TypeA, 1232)
	do.IsEdns0().SetDo()
	if r := ask(s, do); r == nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("same name with DO: %s, want REFUSED (a question of its own, over the client limit)", rcodeOf(r))
	}
	g.release()
	for _, a := range all {
		r := <-a.ch
		aAnswer(t, r, "192.0.2.92")
		if r.Id != a.req.Id {
			t.Errorf("reply ID %d, want the asker's %d", r.Id, a.req.Id)
		}
		if r.Question[0].Name != a.req.Question[0].Name || r.Answer[0].Header().Name != a.req.Question[0].Name {
			t.Errorf("reply for %s spelled %s / %s", a.req.Question[0].Name, r.Question[0].Name, r.Answer[0].Header().Name)
		}
	}
	if got := g.askedFor("same.example.test."); got != 1 {
		t.Errorf("upstream asked %d times, want once", got)
	}
	if n := s.flights.len(); n != 0 {
		t.Errorf("%d flights left", n)
	}
	// Each reply is the asker's own: changing one changes no other.
	r1, r2 := ask(s, query("same.example.test.", dns.TypeA, 0)), ask(s, query("same.example.test.", dns.TypeA, 0))
	r1.Answer[0].(*dns.A).A[3] = 1
	aAnswer(t, r2, "192.0.2.92")
}

// TestCoalescedFailure: the waiters of a question that fails get SERVFAIL
// with it, after one upstream attempt.
func TestCoalescedFailure(t *testing.T) {
	var asked atomic.Int64
	u := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		asked.Add(1)
		time.Sleep(200 * time.Millisecond)
		rcodeOnly(dns.RcodeServerFailure)(w, r, tcp)
	})
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{u.addr}, Timeout: 2 * time.Second}, testSnapshot())
	var chs []<-chan *dns.Msg
	for range 10 {
		chs = append(chs, askAsync(s, query("fail.example.test.", dns.TypeA, 0)))
	}
	for _, ch := range chs {
		if r := <-ch; r == nil || r.Rcode != dns.RcodeServerFailure {
			t.Errorf("waiter of a failed question: %s, want SERVFAIL", rcodeOf(r))
		}
	}
	// The first may have finished before the last arrived: then a second
	// flight. Never one per asker.
	if n := asked.Load(); n < 1 || n > 2 {
		t.Errorf("upstream asked %d times, want once (twice at most)", n)
	}
}

// TestLoopPerName: an upstream that sends one name back to the stub keeps
// answering every other name; the looping name and type skip it for
// loopHold, then are tried again.
func TestLoopPerName(t *testing.T) {
	var stubAddr atomic.Pointer[netip.AddrPort]
	const loopName = "loop.example.test."
	var loops atomic.Int64
	back := relayTo(func() netip.AddrPort { return *stubAddr.Load() }, false)
	u := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg, tcp bool) {
		if strings.EqualFold(r.Question[0].Name, loopName) {
			// A conditional forwarder pointing this domain back at us.
			loops.Add(1)
			back(w, r, tcp)
			return
		}
		answerA("192.0.2.93", 30)(w, r, tcp)
	})
	var logs logBuffer
	s := newTestServer(t, Options{Upstreams: []netip.AddrPort{u.addr}, Timeout: time.Second, CacheSize: -1, Logger: testLogger(&logs)}, testSnapshot())
	now := time.Now()
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	s.now = func() time.Time { return *clock.Load() }
	stub := startStub(t, s, &stubAddr)

	c := &dns.Client{Timeout: 3 * time.Second}
	exchange := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		r, _, err := c.Exchange(query(name, qtype, 1232), stub.String())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	if r := exchange(loopName, dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("looping name: %s, want SERVFAIL", rcodeOf(r))
	}
	if n := loops.Load(); n != 1 {
		t.Fatalf("loop went round %d times, want once", n)
	}
	// The loop is held: the name is not sent there again.
	if r := exchange(loopName, dns.TypeA); r.Rcode != dns.RcodeServerFailure || loops.Load() != 1 {
		t.Errorf("looping name again: %s after %d rounds, want SERVFAIL without asking the upstream", rcodeOf(r), loops.Load())
	}
	// Every other name, and another type of the same name, still go to
	// that upstream.
	aAnswer(t, exchange("fine.example.test.", dns.TypeA), "192.0.2.93")
	if r := exchange(loopName, dns.TypeAAAA); r.Rcode != dns.RcodeServerFailure || loops.Load() != 2 {
		t.Errorf("other type of the looping name: %s after %d rounds, want one more round", rcodeOf(r), loops.Load())
	}
	if st := s.Status().(*Status); len(st.Looping) != 2 || st.Looping[0] != u.addr.String()+" "+loopName+" A" {
		t.Errorf("status looping %v", st.Looping)
	}
	// After loopHold the name is tried again.
	later := now.Add(loopHold + time.Second)
	clock.Store(&later)
	if r := exchange(loopName, dns.TypeA); r.Rcode != dns.RcodeServerFailure || loops.Load() != 3 {
		t.Errorf("after loopHold: %s after %d rounds, want the upstream asked again", rcodeOf(r), loops.Load())
	}
	if got := strings.Count(logs.String(), "forwarding loop detected"); got != 1 {
		t.Errorf("loop logged %d times, want once per upstream", got)
	}
}

func TestForwardLimiterShares(t *testing.T) {
	l := newForwardLimiter(8, 3)
	k := func(d string) fairKey { return fairKey{addr: localClient, domain: d} }
	// A lone client: bounded by perClient (3), not the share (8/2 = 4).
	for range 3 {
		if lim := l.acquire(k("a.")); lim != "" {
			t.Fatalf("a: %s", lim)
		}
	}
	if lim := l.acquire(k("a.")); lim != limitClient {
		t.Errorf("a's 4th: %q, want client", lim)
	}
	// b: share 8/3 = 2.
	for range 2 {
		if lim := l.acquire(k("b.")); lim != "" {
			t.Fatalf("b: %s", lim)
		}
	}
	if lim := l.acquire(k("b.")); lim != limitShare {
		t.Errorf("b's 3rd: %q, want share", lim)
	}
	// c, d: share 8/4 = 2 then 8/5 = 1; 3+2+2+1 = 8, the cap.
	for _, d := range []string{"c.", "c.", "d."} {
		if lim := l.acquire(k(d)); lim != "" {
			t.Fatalf("%s: %s", d, lim)
		}
	}
	if lim := l.acquire(k("e.")); lim != limitGlobal {
		t.Errorf("e at the cap: %q, want global", lim)
	}
	// The same domain from another address is another client.
	l.release(k("d."))
	if lim := l.acquire(fairKey{addr: netip.MustParseAddr("127.0.0.77"), domain: "a."}); lim != "" {
		t.Errorf("a. from another address: %q", lim)
	}
	if l.inFlight() != 8 {
		t.Errorf("in flight %d, want 8", l.inFlight())
	}
}

func TestDomainOf(t *testing.T) {
	for name, want := range map[string]string{
		".":                        ".",
		"com.":                     "com.",
		"example.com.":             "example.com.",
		"a.b.example.com.":         "example.com.",
		"www.bbc.co.uk.":           "bbc.co.uk.",
		"x.y.example.com.au.":      "example.com.au.",
		"a.b.example.de.":          "example.de.",
		"5.1.244.10.in-addr.arpa.": "244.10.in-addr.arpa.",
		"1.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.": "8.b.d.0.1.0.0.2.ip6.arpa.",
		"10-244-1-5.default.pod.cluster.local.":     "cluster.local.",
	} {
		if got := domainOf(name); got != want {
			t.Errorf("domainOf(%q) = %q, want %q", name, got, want)
		}
	}
}
