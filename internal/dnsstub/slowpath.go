package dnsstub

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// The UDP slow path, bounded. A UDP query the fast path does not answer
// (fastpath.go) is served in a goroutine of its own, as dns.Server would,
// but at most Options.MaxForwards at once: each one waiting on an upstream holds
// a goroutine, its query and its reply until its budget ends, and a
// process firing questions faster than upstreams answer (the same question
// again and again joins one flight and takes no forwarding slot) would
// otherwise grow the stub's memory without bound. Over the bound, the
// reader answers REFUSED itself, at once and without allocating, as for a
// forwarding limit (limiter.go): the client's resolver moves on to its
// next server. Zone answers from the fast path never count against it.

// The bound is the forwarding limit (Options.MaxForwards, default 256):
// the forwarded questions in flight over UDP are slow-path queries, so one
// number bounds both. One waiting on an upstream holds some 16 KiB (its
// goroutine's stack, the query and reply, the upstream socket's buffer and
// the bookkeeping of the flight), twice that counting the garbage
// collector's headroom: 256 of them stay within 8 MiB, and at 10 ms an
// upstream question they forward 25,000 cache misses a second. Every other
// slow-path query (a reverse name, an ExternalName of the zone) is answered
// in microseconds, and identical questions waiting for one flight are
// capped (maxFlightWaiters), so that one question asked in a loop cannot
// take every place.

// slowGate counts the slow-path queries in progress.
type slowGate chan struct{}

// tryEnter takes a place, reporting false when all are taken.
func (g slowGate) tryEnter() bool {
	select {
	case g <- struct{}{}:
		return true
	default:
		return false
	}
}

// leave gives a place back.
func (g slowGate) leave() { <-g }

// serveSlow serves pkt, a UDP query from src that the fast path did not
// answer, in a goroutine of its own when there is a place, else answers it
// REFUSED. It owns pkt.
func (s *Server) serveSlow(conn fastConn, pkt []byte, src netip.AddrPort, refused []byte) []byte {
	if !s.slow.tryEnter() {
		s.metrics.rejections.WithLabelValues(limitBusy).Inc()
		if out := refuseWire(refused[:0], pkt); out != nil {
			if _, err := conn.WriteToUDPAddrPort(out, src); err != nil {
				s.log.Debug("dns stub write failed", "err", err)
			}
			return out
		}
		return refused
	}
	pkt = append([]byte(nil), pkt...)
	go func() {
		defer s.slow.leave()
		s.serveUDPPacket(conn, pkt, src)
	}()
	return refused
}

// serveUDPPacket is dns.Server's handling of one UDP packet: a header
// that does not parse gets no reply (any reply could be used to amplify),
// acceptMsg decides what to unpack, a query that does not unpack gets
// FORMERR, the rest goes to ServeDNS.
func (s *Server) serveUDPPacket(conn fastConn, pkt []byte, src netip.AddrPort) {
	if len(pkt) < 12 {
		return
	}
	dh := dns.Header{
		Id:      binary.BigEndian.Uint16(pkt[0:]),
		Bits:    binary.BigEndian.Uint16(pkt[2:]),
		Qdcount: binary.BigEndian.Uint16(pkt[4:]),
		Ancount: binary.BigEndian.Uint16(pkt[6:]),
		Nscount: binary.BigEndian.Uint16(pkt[8:]),
		Arcount: binary.BigEndian.Uint16(pkt[10:]),
	}
	w := &udpWriter{conn: conn, src: src}
	req := new(dns.Msg)
	switch action := acceptMsg(dh); action {
	case dns.MsgIgnore:
		return
	case dns.MsgAccept:
		if req.Unpack(pkt) == nil {
			s.ServeDNS(w, req)
			return
		}
		fallthrough
	default:
		// As dns.Server: FORMERR (NOTIMP for another opcode) with the
		// header's ID and opcode, no records.
		opcode := int(dh.Bits>>11) & 0xF
		m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: dh.Id, Response: true, Opcode: opcode, Rcode: dns.RcodeFormatError}}
		if action == dns.MsgRejectNotImplemented {
			m.Rcode = dns.RcodeNotImplemented
		}
		_ = w.WriteMsg(m)
	}
}

// refuseWire appends to b a REFUSED reply to pkt, a UDP query: its header
// with QR and RA set, RCODE REFUSED and no record, and its question when
// parseFast reads one. It returns nil when pkt is no query to answer.
func refuseWire(b, pkt []byte) []byte {
	if len(pkt) < 12 || pkt[2]&0x80 != 0 {
		return nil
	}
	qd := 0
	end := 12
	if q, ok := parseFast(pkt); ok {
		qd, end = 1, q.qend
	}
	b = append(b, pkt[:end]...)
	b[2] = b[2]&^0x06 | 0x80 // QR; AA and TC clear
	b[3] = 0x80 | dns.RcodeRefused
	binary.BigEndian.PutUint16(b[4:], uint16(qd))
	clear(b[6:12])
	return b
}

// udpWriter is the dns.ResponseWriter of a slow-path query: replies go
// from the stub's socket to the query's source.
type udpWriter struct {
	conn fastConn
	src  netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.src) }

func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (w *udpWriter) Write(b []byte) (int, error) { return w.conn.WriteToUDPAddrPort(b, w.src) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
