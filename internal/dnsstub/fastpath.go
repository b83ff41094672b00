package dnsstub

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// The UDP fast path. Most queries are for names of the zone, and the
// zone's answer to a question depends only on the zone and on how the
// question was asked: the name as written (the answer echoes its case),
// the type, and the client's EDNS0 (present or not, buffer size, DO).
// The first such query is answered by the ordinary handler, and its reply,
// packed, is kept with the zone; the next ones with the same question get
// a copy with their ID and RD/CD bits, straight from the socket's reader,
// without unpacking the query nor packing the reply. A Sync swaps the zone
// and with it the replies.
//
// Anything unusual goes the ordinary way (ServeDNS, through the bounded
// slow path of slowpath.go): more than
// one question or record, an opcode other than QUERY, a response, EDNS0
// options or another version, compressed question names, classes other
// than IN, names the zone does not answer alone (forwarded, reverse,
// ExternalName CNAMEs), before the first Sync, clients not allowed. Zone
// answers take no forwarding slot (limiter.go): slow upstreams never make
// the stub refuse them.

// Bounds of the replies kept per zone: two generations of at most this
// many questions and this many bytes (keys and replies, plus
// replyOverhead each), whichever comes first. A reply may be 4 KiB (the
// largest client buffer we fill) and a key 260 bytes, so a count alone
// would let 32k of them hold 140 MiB; the bytes keep it to 6 MiB, which holds
// the answers to some 40,000 questions of Services.
const (
	replyCacheGeneration      = 1 << 14
	replyCacheGenerationBytes = 3 << 20
	replyOverhead             = 96 // the map entry, the fastReply and the slices' headers
)

// fastConn is the stub's UDP socket as dns.Server sees it: a
// net.PacketConn that is not a *net.UDPConn, so that the server reads
// through fastReader's ReadPacketConn and writes with WriteTo. The stub
// listens on one address, never a wildcard, so replies leave from the
// address queries came to without per-packet control messages.
type fastConn struct {
	*net.UDPConn
}

// fastReader reads the UDP socket for dns.Server. It answers what the
// fast path can at once, and returns everything else to the server.
type fastReader struct {
	dns.Reader // the server's own, for TCP
	s          *Server
	buf        []byte // the packet read
	out        []byte // the reply sent
	refused    []byte // the last REFUSED reply sent by serveSlow
	key        []byte
}

func (s *Server) fastReader(r dns.Reader) dns.Reader {
	return &fastReader{Reader: r, s: s, buf: make([]byte, dns.MaxMsgSize)}
}

// ReadUDP is not used: the server's PacketConn is not a *net.UDPConn.
func (r *fastReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	return r.Reader.ReadUDP(conn, timeout)
}

// ReadPacketConn serves the socket until it fails: it answers what the
// fast path can and hands the rest to serveSlow, so dns.Server only ever
// sees its error. It sets no read deadline: dns.Server's shutdown sets one
// in the past to end the read.
func (r *fastReader) ReadPacketConn(conn net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	fc, ok := conn.(fastConn)
	if !ok {
		return r.Reader.(dns.PacketConnReader).ReadPacketConn(conn, timeout)
	}
	for {
		n, from, err := fc.ReadFromUDPAddrPort(r.buf)
		if err != nil {
			return nil, nil, err
		}
		pkt := r.buf[:n]
		if out := r.s.answerFast(r, pkt, from.Addr()); out != nil {
			if _, err := fc.WriteToUDPAddrPort(out, from); err != nil {
				r.s.log.Debug("dns stub write failed", "err", err)
			}
			continue
		}
		// Served in a goroutine of its own, bounded (slowpath.go). The
		// reader does not yield to it: that would queue it behind every
		// runnable goroutine, and a burst of forwarded queries would hold
		// up the zone answers behind it.
		r.refused = r.s.serveSlow(fc, pkt, from, r.refused)
	}
}

// fastQuery is what the fast path reads of a query.
type fastQuery struct {
	qtype uint16
	qend  int  // end of the question
	edns  bool // an OPT record
	do    bool
	size  int // the reply size the client takes
}

// parseFast reads a query the fast path may answer: one question with an
// uncompressed name, class IN, and at most an OPT record of version 0 with
// no option, nothing else. ok is false for anything else.
func parseFast(pkt []byte) (q fastQuery, ok bool) {
	const hdr = 12
	if len(pkt) < hdr+5 {
		return q, false
	}
	if pkt[2]&0x80 != 0 || pkt[2]>>3&0xF != dns.OpcodeQuery {
		return q, false // a response, or not a QUERY
	}
	ar := binary.BigEndian.Uint16(pkt[10:])
	if binary.BigEndian.Uint16(pkt[4:]) != 1 || binary.BigEndian.Uint16(pkt[6:]) != 0 ||
		binary.BigEndian.Uint16(pkt[8:]) != 0 || ar > 1 {
		return q, false
	}
	off := hdr
	for {
		if off >= len(pkt) {
			return q, false
		}
		l := int(pkt[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 {
			return q, false // a compression pointer or a reserved label type
		}
		off += 1 + l
		if off-hdr > 254 {
			return q, false // over 255 bytes with the root
		}
	}
	if off+4 > len(pkt) {
		return q, false
	}
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	if binary.BigEndian.Uint16(pkt[off+2:]) != dns.ClassINET {
		return q, false
	}
	switch q.qtype {
	case dns.TypeOPT, dns.TypeAXFR, dns.TypeIXFR:
		return q, false
	}
	q.qend = off + 4
	q.size = dns.MinMsgSize
	if ar == 0 {
		return q, q.qend == len(pkt)
	}
	// The OPT record: root owner, type, UDP size, extended rcode 0,
	// version 0, no flag but DO, no option.
	opt := pkt[q.qend:]
	if len(opt) != 11 || opt[0] != 0 || binary.BigEndian.Uint16(opt[1:]) != dns.TypeOPT ||
		opt[5] != 0 || opt[6] != 0 || opt[7]&0x7F != 0 || opt[8] != 0 || binary.BigEndian.Uint16(opt[9:]) != 0 {
		return q, false
	}
	q.edns = true
	q.do = opt[7]&0x80 != 0
	q.size = clientSize(binary.BigEndian.Uint16(opt[3:]))
	return q, true
}

// appendKey appends the cache key of q in pkt to b: the question as
// asked, then EDNS0 presence and DO, and the reply size.
func (q fastQuery) appendKey(b, pkt []byte) []byte {
	b = append(b, pkt[12:q.qend]...)
	var flags byte
	if q.edns {
		flags |= 1
	}
	if q.do {
		flags |= 2
	}
	return append(b, flags, byte(q.size>>8), byte(q.size))
}

// fastReply is a packed reply to one question of the zone.
type fastReply struct {
	wire            []byte
	typeIdx, resIdx int // its queries_total labels
}

// answerFast returns the reply to pkt, a UDP packet from src, if the fast
// path can answer it, else nil. The reply is in r's buffer, valid until
// the next call.
func (s *Server) answerFast(r *fastReader, pkt []byte, src netip.Addr) []byte {
	q, ok := parseFast(pkt)
	if !ok {
		return nil
	}
	z := s.zone.Load()
	if z == nil {
		return nil
	}
	src = src.Unmap().WithZone("")
	if !s.allowed(src) {
		return nil
	}
	r.key = q.appendKey(r.key[:0], pkt)
	e := z.replies.get(r.key)
	if e == nil {
		if e = s.packFast(z, pkt); e == nil {
			return nil
		}
		z.replies.put(string(r.key), e)
	}
	out := append(r.out[:0], e.wire...)
	r.out = out
	out[0], out[1] = pkt[0], pkt[1]     // ID
	out[2] = out[2]&^0x01 | pkt[2]&0x01 // RD
	out[3] = out[3]&^0x10 | pkt[3]&0x10 // CD
	s.metrics.countQueryIndex(e.typeIdx, e.resIdx)
	return out
}

// packFast returns the packed reply to pkt, a query parseFast accepted,
// when the zone z answers it alone: the handler's reply, to be kept for
// the same question. It returns nil for a question that must go through
// the handler each time.
func (s *Server) packFast(z *zone, pkt []byte) (e *fastReply) {
	defer func() {
		if recover() != nil {
			e = nil // the handler will answer, and report the panic
		}
	}()
	req := new(dns.Msg)
	if req.Unpack(pkt) != nil || len(req.Question) != 1 {
		return nil
	}
	q := req.Question[0]
	if _, ok := dns.IsDomainName(q.Name); !ok || !dns.IsFqdn(q.Name) {
		return nil
	}
	name := strings.ToLower(q.Name)
	class, canonical, apex := s.classify(name)
	if class != classZone {
		return nil
	}
	if n := z.find(canonical); n != nil && n.cname != "" && q.Qtype != dns.TypeCNAME && q.Qtype != dns.TypeANY {
		return nil // an ExternalName's CNAME to chase: that may forward
	}
	// What handle checks before resolving holds: parseFast took only an
	// EDNS0 version 0 query of class IN and no zone transfer, the name is
	// valid, and the client is allowed. A zone name is never one of our
	// upstream queries come back (those are forwarded names and carry an
	// option).
	m, result := s.answerZone(context.Background(), z, req, q, name, canonical, apex, ednsBits(req))
	fitReply(req, m, false)
	wire, err := m.Pack()
	ri := resultIndex(result)
	if err != nil || ri < 0 {
		return nil
	}
	return &fastReply{wire: wire, typeIdx: typeIndex(q.Qtype), resIdx: ri}
}

// replyCache keeps the packed replies of one zone, bounded: when the
// current generation is full (in entries or bytes) it becomes the
// previous one, and the previous one goes.
type replyCache struct {
	max, maxBytes int
	mu            sync.RWMutex
	cur, prev     map[string]*fastReply
	curBytes      int
}

func newReplyCache(max, maxBytes int) *replyCache {
	return &replyCache{max: max, maxBytes: maxBytes, cur: map[string]*fastReply{}}
}

func (c *replyCache) get(key []byte) *fastReply {
	c.mu.RLock()
	e := c.cur[string(key)]
	if e != nil {
		c.mu.RUnlock()
		return e
	}
	e = c.prev[string(key)]
	c.mu.RUnlock()
	if e != nil {
		c.put(string(key), e) // still asked: keep it
	}
	return e
}

func (c *replyCache) put(key string, e *fastReply) {
	size := len(key) + len(e.wire) + replyOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cur) >= c.max || c.curBytes+size > c.maxBytes {
		c.prev, c.cur, c.curBytes = c.cur, make(map[string]*fastReply, c.max/4), 0
	}
	if _, ok := c.cur[key]; !ok {
		c.curBytes += size
	}
	c.cur[key] = e
}

func (c *replyCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.cur) + len(c.prev)
}
