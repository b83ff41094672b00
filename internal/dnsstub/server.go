package dnsstub

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Limits of the TCP side and of a query's work.
const (
	maxTCPConns    = 256
	maxTCPQueries  = 128 // per connection
	tcpIdleTimeout = 8 * time.Second
	ioTimeout      = 2 * time.Second
	maxChase       = 8 // CNAME hops followed for ExternalName answers
	maxClientSize  = 4096
	lastErrorsKept = 10
)

// Server is the DNS stub. It is safe for concurrent use.
type Server struct {
	opts      Options
	log       *slog.Logger
	domain    string          // "cluster.local."
	nsDomains map[string]bool // "default."
	ttl       uint32
	nonce     [8]byte
	metrics   *metrics
	cache     *cache
	now       func() time.Time // the clock of the cache

	zone      atomic.Pointer[zone]
	lastSnap  atomic.Pointer[cluster.Snapshot]
	upstreams atomic.Pointer[[]netip.AddrPort]
	addr      atomic.Pointer[netip.AddrPort] // bound address, once started
	panics    atomic.Int64                   // handler panics recovered

	mu        sync.Mutex // guards the servers and the fields below
	udp, tcp  *dns.Server
	also      []*dns.Server // the servers on Options.AlsoListen
	loopsSeen map[string]bool
	lastErrs  []ForwardError

	forwards *forwardLimiter // upstream questions in flight, per client
	flights  *flights        // identical questions share one upstream query
	loops    *loopGuard      // questions that looped, per upstream
	slow     slowGate        // UDP queries served outside the fast path

	cmu      sync.Mutex // guards the map below
	inflight map[inflightKey]string
}

// inflightKey is an upstream query in flight, to recognise it should it
// come back to us.
type inflightKey struct {
	id    uint16
	name  string
	qtype uint16
}

// New validates o and returns a Server; it opens no socket.
func New(o Options) (*Server, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	s := &Server{
		opts:      o,
		log:       o.Logger,
		domain:    o.ClusterDomain + ".",
		nsDomains: map[string]bool{},
		ttl:       uint32(o.TTL / time.Second),
		metrics:   newMetrics(),
		cache:     newCache(o.CacheSize, o.ServeStale),
		now:       time.Now,
		loopsSeen: map[string]bool{},
		forwards:  newForwardLimiter(o.MaxForwards, o.MaxPerClient),
		flights:   newFlights(),
		loops:     newLoopGuard(),
		slow:      make(slowGate, o.MaxForwards),
		inflight:  map[inflightKey]string{},
	}
	for _, n := range o.NamespaceDomains {
		s.nsDomains[n+"."] = true
	}
	if _, err := rand.Read(s.nonce[:]); err != nil {
		return nil, fmt.Errorf("new dns stub: %w", err)
	}
	ups := slices.Clone(o.Upstreams)
	s.upstreams.Store(&ups)
	return s, nil
}

// Name implements daemon.Consumer.
func (s *Server) Name() string { return "dns" }

// Addr returns the address the stub listens on (with the port chosen when
// Options.Listen had port 0), or the configured one before Start.
func (s *Server) Addr() netip.AddrPort {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return s.opts.Listen
}

// Start binds UDP and TCP on Options.Listen and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		return errors.New("start dns stub: already started")
	}
	pc, err := net.ListenPacket("udp", s.opts.Listen.String())
	if err != nil {
		return fmt.Errorf("start dns stub: listen udp %s: %w", s.opts.Listen, err)
	}
	if !growReadBuffer(pc.(*net.UDPConn)) {
		s.log.Debug("dns stub udp receive buffer capped by net.core.rmem_max (no CAP_NET_ADMIN)")
	}
	bound := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	bound = netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
	ln, err := net.Listen("tcp", bound.String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("start dns stub: listen tcp %s: %w", bound, err)
	}
	for _, u := range *s.upstreams.Load() {
		if sameAddrPort(u, bound) {
			pc.Close()
			ln.Close()
			return fmt.Errorf("start dns stub: upstream %s is the stub's own listen address: a forwarding loop", u)
		}
	}
	s.addr.Store(&bound)
	srvs, err := s.serve(pc, ln, bound)
	if err != nil {
		return fmt.Errorf("start dns stub: %w", err)
	}
	s.udp, s.tcp = srvs[0], srvs[1]
	for _, a := range s.opts.AlsoListen {
		ap := netip.AddrPortFrom(a.Unmap(), bound.Port())
		srvs, err := s.serveFreebind(ap)
		if err != nil {
			s.closeServers()
			return fmt.Errorf("start dns stub: %w", err)
		}
		s.also = append(s.also, srvs...)
		s.log.Info("dns stub listening", "addr", ap.String())
	}
	s.log.Info("dns stub listening", "addr", bound.String())
	return nil
}

// Close stops serving and releases the sockets.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.closeServers(); err != nil {
		return fmt.Errorf("close dns stub: %w", err)
	}
	return nil
}

// closeServers shuts every server down; s.mu is held.
func (s *Server) closeServers() error {
	var errs []error
	for _, srv := range append([]*dns.Server{s.udp, s.tcp}, s.also...) {
		if srv == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	s.udp, s.tcp, s.also = nil, nil, nil
	return errors.Join(errs...)
}

// serve serves DNS on pc and ln, and returns the UDP and the TCP server
// once both run. On failure both sockets are closed.
func (s *Server) serve(pc net.PacketConn, ln net.Listener, addr netip.AddrPort) ([]*dns.Server, error) {
	udp := &dns.Server{
		// Not a *net.UDPConn: the server reads through fastReader
		// (ReadPacketConn), which answers what it can at once and hands
		// the rest on.
		PacketConn:     fastConn{pc.(*net.UDPConn)},
		DecorateReader: s.fastReader,
		Handler:        s,
		MsgAcceptFunc:  acceptMsg,
		UDPSize:        dns.MaxMsgSize,
		ReadTimeout:    ioTimeout,
		WriteTimeout:   ioTimeout,
	}
	tcp := &dns.Server{
		Listener:      &limitListener{Listener: ln, sem: make(chan struct{}, maxTCPConns)},
		Handler:       s,
		MsgAcceptFunc: acceptMsg,
		ReadTimeout:   ioTimeout,
		WriteTimeout:  ioTimeout,
		IdleTimeout:   func() time.Duration { return tcpIdleTimeout },
		MaxTCPQueries: maxTCPQueries,
	}
	srvs := []*dns.Server{udp, tcp}
	for i, srv := range srvs {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Error("dns stub server stopped", "err", err)
				failed <- err
			}
		}()
		select {
		case <-started:
		case err := <-failed:
			for _, up := range srvs[:i] {
				up.Shutdown()
			}
			pc.Close()
			ln.Close()
			return nil, fmt.Errorf("serve %s: %w", addr, err)
		}
	}
	return srvs, nil
}

// serveFreebind listens on ap with IP_FREEBIND (IPV6_FREEBIND), so the
// address need not exist yet: it lives on a link that hostdns creates after
// the stub starts and may create again while it runs. Packets reach the
// socket only while the address is one of this host's.
func (s *Server) serveFreebind(ap netip.AddrPort) ([]*dns.Server, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if ap.Addr().Is4() {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_FREEBIND, 1)
			} else {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, ipv6Freebind, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ctx := context.Background()
	pc, err := lc.ListenPacket(ctx, "udp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", ap, err)
	}
	ln, err := lc.Listen(ctx, "tcp", ap.String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("listen tcp %s: %w", ap, err)
	}
	return s.serve(pc, ln, ap)
}

// ipv6Freebind is IPV6_FREEBIND from linux/in6.h (Linux 4.15), which the
// syscall package does not name.
const ipv6Freebind = 78

// Sync swaps in the zone of snap: derived from the current zone, only the
// Services that changed rendered again, or built in full the first time.
// Queries never wait for it: they use the previous zone, unchanged, until
// the swap.
func (s *Server) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	if snap == nil {
		return errors.New("sync dns zone: nil snapshot")
	}
	prev := s.zone.Load()
	if s.lastSnap.Load() == snap && prev != nil {
		return nil // periodic call with the same snapshot: nothing to do
	}
	start := time.Now()
	var z *zone
	if prev != nil && prev.domain == s.domain && prev.ttl == s.ttl {
		z = prev.update(snap)
	} else {
		z = buildZone(snap, s.domain, s.ttl)
	}
	s.zone.Store(z)
	s.lastSnap.Store(snap)
	s.metrics.zoneRecords.Set(float64(z.records))
	s.log.Debug("dns zone built", "version", snap.Version, "records", z.records, "names", z.names,
		"rendered", z.rendered, "kubeDNS", len(z.kubeDNS), "took", time.Since(start))
	return nil
}

// SetUpstreams replaces the host's upstream resolvers. An upstream that is
// the stub's own address is left out, and logged: it would be a loop.
func (s *Server) SetUpstreams(ups []netip.AddrPort) {
	self := s.Addr()
	out := make([]netip.AddrPort, 0, len(ups))
	for _, u := range ups {
		if !u.IsValid() || u.Port() == 0 {
			s.log.Error("ignoring invalid dns upstream", "upstream", u.String())
			continue
		}
		if self.Port() != 0 && sameAddrPort(u, self) {
			s.log.Error("ignoring dns upstream: it is the stub's own listen address (forwarding loop)", "upstream", u.String())
			continue
		}
		out = append(out, u)
	}
	s.upstreams.Store(&out)
	s.loops.reset()
	s.mu.Lock()
	s.loopsSeen = map[string]bool{}
	s.mu.Unlock()
}

// acceptMsg lets through queries with zero or one question (the handler
// answers zero with SERVFAIL); responses are ignored, other opcodes get
// NOTIMP and odd section counts FORMERR.
func acceptMsg(dh dns.Header) dns.MsgAcceptAction {
	const qrBit = 1 << 15
	if dh.Bits&qrBit != 0 {
		return dns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	if dh.Qdcount > 1 || dh.Ancount > 0 || dh.Nscount > 0 || dh.Arcount > 2 {
		return dns.MsgReject
	}
	return dns.MsgAccept
}

func remoteAddr(w dns.ResponseWriter) (netip.Addr, bool) {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap().WithZone(""), false
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}

// allowed tells whether a client may use the stub: loopback, or one of the
// stub's own listen addresses (this host talking to itself, such as
// systemd-resolved querying the address on bridge-agent's link, from a
// socket bound to that link). The kernel drops packets arriving from
// outside with one of this host's addresses as their source (a martian),
// so a remote client cannot pass for one.
func (s *Server) allowed(src netip.Addr) bool {
	if src.IsLoopback() || (src.IsValid() && src == s.Addr().Addr().Unmap()) {
		return true
	}
	return src.IsValid() && slices.Contains(s.opts.AlsoListen, src)
}

func (s *Server) trackInflight(k inflightKey, upstream string, add bool) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if add {
		s.inflight[k] = upstream
	} else {
		delete(s.inflight, k)
	}
}

// loopedBack tells whether req is one of our own upstream queries come
// back, and through which upstream.
func (s *Server) loopedBack(req *dns.Msg) (string, bool) {
	if u, ok := s.loopMarker(req); ok {
		return u, true
	}
	q := req.Question[0]
	s.cmu.Lock()
	defer s.cmu.Unlock()
	u, ok := s.inflight[inflightKey{id: req.Id, name: strings.ToLower(q.Name), qtype: q.Qtype}]
	return u, ok
}

// ServeDNS answers one query; it is the handler of both servers.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	qtype := uint16(0)
	if len(req.Question) > 0 {
		qtype = req.Question[0].Qtype
	}
	defer func() {
		if r := recover(); r != nil {
			s.panics.Add(1)
			s.log.Error("dns stub handler panic", "panic", r, "stack", string(debug.Stack()))
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeServerFailure)
			_ = w.WriteMsg(m)
			s.metrics.countQuery(qtype, resultServfail)
		}
	}()
	src, tcp := remoteAddr(w)
	m, result := s.handle(src, tcp, req)
	s.metrics.countQuery(qtype, result)
	if m == nil {
		return
	}
	s.writeReply(w, req, m, tcp)
}

// handle computes the reply to req from src; a nil reply sends nothing.
func (s *Server) handle(src netip.Addr, tcp bool, req *dns.Msg) (*dns.Msg, string) {
	if !s.allowed(src) {
		return rcodeReply(req, dns.RcodeRefused), resultRefused
	}
	if req.Response {
		return nil, resultFormErr
	}
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return rcodeReply(req, dns.RcodeNotImplemented), resultNotImp
	case len(req.Question) == 0:
		return rcodeReply(req, dns.RcodeServerFailure), resultServfail
	case len(req.Question) > 1:
		return rcodeReply(req, dns.RcodeFormatError), resultFormErr
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		m := rcodeReply(req, dns.RcodeBadVers)
		m.SetEdns0(ourUDPSize, opt.Do())
		return m, resultBadVers
	}
	q := req.Question[0]
	switch {
	case q.Qclass != dns.ClassINET:
		return rcodeReply(req, dns.RcodeRefused), resultRefused
	case q.Qtype == dns.TypeOPT:
		return rcodeReply(req, dns.RcodeFormatError), resultFormErr
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		return rcodeReply(req, dns.RcodeRefused), resultRefused
	}
	if _, ok := dns.IsDomainName(q.Name); !ok || !dns.IsFqdn(q.Name) {
		return rcodeReply(req, dns.RcodeFormatError), resultFormErr
	}
	if u, ok := s.loopedBack(req); ok {
		s.loopDetected(u, q)
		return rcodeReply(req, dns.RcodeServerFailure), resultLoop
	}
	ctx, cancel := context.WithTimeout(withClient(context.Background(), src), s.queryBudget())
	defer cancel()
	return s.resolve(ctx, req, q)
}

// queryBudget bounds the work of one query: every upstream once, plus a
// chase.
func (s *Server) queryBudget() time.Duration {
	n := max(len(*s.upstreams.Load()), 1) + 2
	return time.Duration(n) * s.opts.Timeout
}

func rcodeReply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	return m
}

func ednsBits(req *dns.Msg) (do bool) {
	if opt := req.IsEdns0(); opt != nil {
		return opt.Do()
	}
	return false
}

// resolve answers the one question q of req.
func (s *Server) resolve(ctx context.Context, req *dns.Msg, q dns.Question) (*dns.Msg, string) {
	name := strings.ToLower(q.Name)
	class, canonical, apex := s.classify(name)
	z := s.zone.Load()
	do := ednsBits(req)
	switch class {
	case classZone:
		if z == nil {
			return rcodeReply(req, dns.RcodeServerFailure), resultServfail
		}
		return s.answerZone(ctx, z, req, q, name, canonical, apex, do)
	case classReverse:
		if z != nil && q.Qtype == dns.TypePTR {
			if rrs, ok := z.lookupPTR(q.Name, name); ok {
				m := rcodeReply(req, dns.RcodeSuccess)
				m.Authoritative = true
				m.Answer = rrs
				return m, resultAnswered
			}
		}
		return s.relay(ctx, req, q, kindHost, hostTargets(*s.upstreams.Load()))
	case classKubeDNS:
		if z == nil {
			return rcodeReply(req, dns.RcodeServerFailure), resultServfail
		}
		return s.relay(ctx, req, q, kindKubeDNS, kubeTargets(z.kubeDNS))
	default:
		return s.relay(ctx, req, q, kindHost, hostTargets(*s.upstreams.Load()))
	}
}

// answerZone answers q, a name of the zone z (name in lower case),
// chasing an ExternalName's CNAME.
func (s *Server) answerZone(ctx context.Context, z *zone, req *dns.Msg, q dns.Question, name, canonical, apex string, do bool) (*dns.Msg, string) {
	a := z.lookup(q.Name, canonical, apex, q.Qtype)
	m := rcodeReply(req, a.rcode)
	m.Authoritative = true
	m.Answer, m.Ns, m.Extra = a.answer, a.ns, a.extra
	if a.chase != "" {
		s.chase(ctx, z, m, a.chase, q.Qtype, req.RecursionDesired, do, req.CheckingDisabled, name)
	}
	switch {
	case m.Rcode == dns.RcodeNameError:
		return m, resultNXDomain
	case len(m.Answer) == 0:
		return m, resultNoData
	}
	return m, resultAnswered
}

// relay forwards q and turns the upstream's reply into ours.
func (s *Server) relay(ctx context.Context, req *dns.Msg, q dns.Question, kind string, targets []target) (*dns.Msg, string) {
	r, result := s.resolveForwarded(ctx, kind, targets, q, req.RecursionDesired, ednsBits(req), req.CheckingDisabled)
	if r == nil {
		return forwardFailure(req, result), result
	}
	m := r // already a private copy (cache) or a fresh reply
	if result == resultForwarded {
		m = r.Copy()
	}
	m.Id = req.Id
	m.Response = true
	m.Opcode = dns.OpcodeQuery
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.Question = []dns.Question{q}
	m.Extra = stripOPT(m.Extra)
	for _, rr := range m.Answer {
		if h := rr.Header(); strings.EqualFold(h.Name, q.Name) {
			h.Name = q.Name
		}
	}
	return m, result
}

func stripOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// chase follows an ExternalName's CNAME: through the zone, or by
// forwarding, at most maxChase hops and never twice to the same name. The
// target's records are appended to m; its rcode becomes m's.
func (s *Server) chase(ctx context.Context, z *zone, m *dns.Msg, next string, qtype uint16, rd, do, cd bool, asked string) {
	seen := map[string]bool{asked: true}
	for range maxChase {
		name := strings.ToLower(next)
		if seen[name] {
			return // a CNAME loop: leave the chain as it is
		}
		seen[name] = true
		class, canonical, apex := s.classify(name)
		switch class {
		case classZone:
			a := z.lookup(next, canonical, apex, qtype)
			m.Answer = append(m.Answer, a.answer...)
			m.Extra = append(m.Extra, a.extra...)
			if a.chase == "" {
				m.Rcode = a.rcode
				if len(a.answer) == 0 {
					m.Ns = a.ns
				}
				return
			}
			next = a.chase
		default:
			var targets []target
			kind := kindHost
			if class == classKubeDNS {
				kind, targets = kindKubeDNS, kubeTargets(z.kubeDNS)
			} else {
				targets = hostTargets(*s.upstreams.Load())
			}
			q := dns.Question{Name: next, Qtype: qtype, Qclass: dns.ClassINET}
			r, _ := s.resolveForwarded(ctx, kind, targets, q, rd, do, cd)
			if r == nil {
				// The client's resolver may chase the CNAME itself.
				return
			}
			m.Answer = append(m.Answer, r.Answer...)
			m.Rcode = r.Rcode
			if len(r.Answer) == 0 {
				m.Ns = r.Ns
			}
			return
		}
	}
}

// writeReply fits m to the client's buffer (512 bytes without EDNS0, its
// advertised size with, the protocol maximum over TCP), adds our OPT when
// the client sent one, and sends it.
func (s *Server) writeReply(w dns.ResponseWriter, req, m *dns.Msg, tcp bool) {
	fitReply(req, m, tcp)
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("dns stub write failed", "err", err)
	}
}

// fitReply is writeReply's work before packing.
func fitReply(req, m *dns.Msg, tcp bool) {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = clientSize(opt.UDPSize())
		if m.IsEdns0() == nil {
			m.SetEdns0(ourUDPSize, opt.Do())
		}
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	m.Truncate(size)
}

// clientSize is the UDP reply size a client advertising size (EDNS0)
// gets: at least 512 bytes, at most maxClientSize.
func clientSize(size uint16) int {
	return min(max(int(size), dns.MinMsgSize), maxClientSize)
}

// limitListener bounds the TCP connections served at once; over the
// bound, new connections are closed at once.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
