package dnsstub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ourUDPSize is the EDNS0 buffer size we advertise, upstream and to
// clients (the DNS flag day 2020 value: no IP fragmentation).
const ourUDPSize = 1232

// markerCode is the EDNS0 local option that tags our upstream queries, so
// that one coming back to us is recognised as a forwarding loop (RFC 6891
// reserves 65001-65534 for local use).
const markerCode = 65301

// Errors of an upstream exchange.
var (
	// ErrMismatch is returned when an upstream's TCP reply does not answer
	// the question asked (wrong ID or question).
	ErrMismatch = errors.New("reply does not match the query")
	// ErrUpstreamRcode is returned when an upstream answers SERVFAIL,
	// REFUSED or another failure rcode.
	ErrUpstreamRcode = errors.New("upstream failed the query")
	// ErrNoUpstream is returned when there is nowhere to forward a name.
	ErrNoUpstream = errors.New("no upstream to forward to")
)

// target is one server to forward to.
type target struct {
	udp, tcp netip.AddrPort
}

func hostTargets(ups []netip.AddrPort) []target {
	out := make([]target, len(ups))
	for i, u := range ups {
		out[i] = target{udp: u, tcp: u}
	}
	return out
}

func kubeTargets(ks []kubeDNSTarget) []target {
	out := make([]target, len(ks))
	for i, k := range ks {
		out[i] = target{udp: k.UDP, tcp: k.TCP}
	}
	return out
}

// matches tells whether r answers q: same ID, a response, and the same
// question (name compared case-insensitively).
func matches(q, r *dns.Msg) bool {
	if r == nil || r.Id != q.Id || !r.Response || len(r.Question) != 1 || len(q.Question) != 1 {
		return false
	}
	a, b := q.Question[0], r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// upstreamQuery builds the query sent to upstream u for question q, with a
// fresh random ID and our marker.
func (s *Server) upstreamQuery(q dns.Question, rd, do, cd bool, u netip.AddrPort) *dns.Msg {
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Opcode = dns.OpcodeQuery
	m.RecursionDesired = rd
	m.CheckingDisabled = cd
	m.Question = []dns.Question{q}
	m.SetEdns0(ourUDPSize, do)
	opt := m.IsEdns0()
	data := append(s.nonce[:len(s.nonce):len(s.nonce)], u.String()...)
	opt.Option = append(opt.Option, &dns.EDNS0_LOCAL{Code: markerCode, Data: data})
	return m
}

// loopMarker returns the upstream named by our marker in req, if req
// carries one.
func (s *Server) loopMarker(req *dns.Msg) (string, bool) {
	opt := req.IsEdns0()
	if opt == nil {
		return "", false
	}
	for _, o := range opt.Option {
		if l, ok := o.(*dns.EDNS0_LOCAL); ok && l.Code == markerCode && bytes.HasPrefix(l.Data, s.nonce[:]) {
			return string(l.Data[len(s.nonce):]), true
		}
	}
	return "", false
}

// exchange asks one upstream: over UDP first, then over TCP when the UDP
// reply is truncated. Replies that do not match are dropped.
func (s *Server) exchange(ctx context.Context, t target, q *dns.Msg) (*dns.Msg, error) {
	deadline := time.Now().Add(s.opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	key := inflightKey{id: q.Id, name: strings.ToLower(q.Question[0].Name), qtype: q.Question[0].Qtype}
	s.trackInflight(key, t.udp.String(), true)
	defer s.trackInflight(key, "", false)

	r, err := exchangeUDP(t.udp, q, deadline)
	switch {
	case errors.Is(err, errReplyTooBig):
	case err != nil:
		return nil, fmt.Errorf("udp: %w", err)
	case !r.Truncated:
		return r, nil
	}
	r, err = exchangeTCP(t.tcp, q, deadline)
	if err != nil {
		return nil, fmt.Errorf("tcp after truncated udp reply: %w", err)
	}
	return r, nil
}

// udpReplyBuffer is the most of a UDP reply an exchange reads. We
// advertise ourUDPSize; a reply that fills the buffer is taken as
// truncated (errReplyTooBig) and the question asked again over TCP. The
// buffers are pooled: each upstream question in flight (up to
// Options.MaxForwards) holds one, and 64 KiB each would be 64 MiB.
const udpReplyBuffer = 2048

var udpReplyBuffers = sync.Pool{New: func() any { b := make([]byte, udpReplyBuffer); return &b }}

// errReplyTooBig is a UDP reply larger than udpReplyBuffer.
var errReplyTooBig = errors.New("udp reply larger than the buffer")

func exchangeUDP(addr netip.AddrPort, q *dns.Msg, deadline time.Time) (*dns.Msg, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(wire); err != nil {
		return nil, err
	}
	bp := udpReplyBuffers.Get().(*[]byte)
	defer udpReplyBuffers.Put(bp)
	buf := *bp
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n == len(buf) {
			return nil, errReplyTooBig
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) != nil {
			// Garbage on our socket: not an answer, keep waiting.
			continue
		}
		if !matches(q, r) {
			// Spoofed, stale or broken: drop it and wait for the real
			// reply until the deadline.
			continue
		}
		return r, nil
	}
}

func exchangeTCP(addr netip.AddrPort, q *dns.Msg, deadline time.Time) (*dns.Msg, error) {
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	r, err := co.ReadMsg()
	if err != nil {
		return nil, err
	}
	if !matches(q, r) {
		return nil, ErrMismatch
	}
	return r, nil
}

// forward asks the targets in order until one answers, and returns its
// reply. Failure rcodes (SERVFAIL, REFUSED, NOTIMP, FORMERR) count as
// failures and move on to the next target.
func (s *Server) forward(ctx context.Context, kind string, targets []target, q dns.Question, rd, do, cd bool) (*dns.Msg, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("forward %s to %s: %w", q.Name, kind, ErrNoUpstream)
	}
	start := time.Now()
	var errs []error
	for _, t := range targets {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		if s.isLooping(t.udp, q) {
			continue
		}
		m := s.upstreamQuery(q, rd, do, cd, t.udp)
		r, err := s.exchange(ctx, t, m)
		if err == nil {
			switch r.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				s.metrics.forward.WithLabelValues(kind).Observe(time.Since(start).Seconds())
				return r, nil
			default:
				err = fmt.Errorf("%w: %s", ErrUpstreamRcode, dns.RcodeToString[r.Rcode])
			}
		}
		err = fmt.Errorf("%s %s: %w", kind, t.udp, err)
		s.upstreamFailed(t.udp.String(), q, err)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		errs = append(errs, ErrNoUpstream)
	}
	return nil, fmt.Errorf("forward %s %s: %w", q.Name, dns.TypeToString[q.Qtype], errors.Join(errs...))
}

// errLimited is the outcome of a question refused by a forwarding limit.
var errLimited = errors.New("forwarding limit reached")

// resolveForwarded answers q from the cache, from an identical question
// already in flight, or from the targets, serving stale when every target
// fails or a forwarding limit refuses the question. It returns nil when
// there is no answer at all, with resultRefused for a limit and
// resultServfail otherwise. The client is read from ctx (withClient).
func (s *Server) resolveForwarded(ctx context.Context, kind string, targets []target, q dns.Question, rd, do, cd bool) (*dns.Msg, string) {
	key := keyOf(q, do, cd)
	if m, _, ok := s.cache.get(key, s.now(), false); ok {
		s.metrics.cacheHits.Inc()
		return m, resultCached
	}
	s.metrics.cacheMisses.Inc()
	fk := flightKey{cacheKey: key, rd: rd, kind: kind}
	f, leader := s.flights.join(fk)
	var r *dns.Msg
	var err error
	if leader {
		r, err = s.lead(ctx, fk, f, kind, targets, q, rd, do, cd)
	} else if !f.wait() {
		err = fmt.Errorf("forward %s %s: %w (%s)", q.Name, dns.TypeToString[q.Qtype], errLimited, limitWaiters)
		s.metrics.rejections.WithLabelValues(limitWaiters).Inc()
	} else {
		defer f.leave()
		s.metrics.coalesced.Inc()
		select {
		case <-f.done:
			if r, err = f.msg, f.err; r != nil {
				r = r.Copy()
			}
		case <-ctx.Done():
			err = fmt.Errorf("waiting for the same question in flight: %w", ctx.Err())
		}
	}
	if err == nil {
		return r, resultForwarded
	}
	if m, stale, ok := s.cache.get(key, s.now(), true); ok {
		s.metrics.cacheHits.Inc()
		if stale {
			return m, resultStale
		}
		return m, resultCached
	}
	if errors.Is(err, errLimited) {
		return nil, resultRefused
	}
	s.log.Debug("forward failed", "name", q.Name, "type", dns.TypeToString[q.Qtype], "err", err)
	return nil, resultServfail
}

// lead asks the targets for the flight f, within the forwarding limits,
// caches the reply and hands it to the flight's waiters.
func (s *Server) lead(ctx context.Context, fk flightKey, f *flight, kind string, targets []target, q dns.Question, rd, do, cd bool) (r *dns.Msg, err error) {
	defer func() { s.flights.finish(fk, f, r, err) }()
	client := fairKey{addr: clientOf(ctx), domain: domainOf(fk.name)}
	if limit := s.forwards.acquire(client); limit != "" {
		s.metrics.rejections.WithLabelValues(limit).Inc()
		return nil, fmt.Errorf("forward %s %s: %w (%s)", q.Name, dns.TypeToString[q.Qtype], errLimited, limit)
	}
	s.metrics.inflight.Inc()
	defer func() {
		s.metrics.inflight.Dec()
		s.forwards.release(client)
	}()
	r, err = s.forward(ctx, kind, targets, q, rd, do, cd)
	if err == nil {
		s.cache.put(fk.cacheKey, r, s.now())
	}
	return r, err
}

// forwardFailure is the reply when resolveForwarded has no answer:
// REFUSED when a forwarding limit refused the question, else SERVFAIL.
func forwardFailure(req *dns.Msg, result string) *dns.Msg {
	if result == resultRefused {
		return rcodeReply(req, dns.RcodeRefused)
	}
	return rcodeReply(req, dns.RcodeServerFailure)
}
