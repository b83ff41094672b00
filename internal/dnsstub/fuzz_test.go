package dnsstub

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// serveRaw feeds one packet through the path the UDP server takes: the
// header, the accept function, unpacking (FORMERR on failure, as
// dns.Server does), then the handler.
func serveRaw(s *Server, w *recorder, raw []byte) {
	if len(raw) < 12 {
		return // dns.Server drops packets shorter than a header
	}
	dh := dns.Header{
		Id:      binary.BigEndian.Uint16(raw[0:]),
		Bits:    binary.BigEndian.Uint16(raw[2:]),
		Qdcount: binary.BigEndian.Uint16(raw[4:]),
		Ancount: binary.BigEndian.Uint16(raw[6:]),
		Nscount: binary.BigEndian.Uint16(raw[8:]),
		Arcount: binary.BigEndian.Uint16(raw[10:]),
	}
	req := new(dns.Msg)
	action := acceptMsg(dh)
	if action == dns.MsgAccept {
		if err := req.Unpack(raw); err == nil {
			s.ServeDNS(w, req)
			return
		}
		action = dns.MsgReject
	}
	if action == dns.MsgIgnore {
		return
	}
	m := new(dns.Msg)
	m.Id = dh.Id
	m.Response = true
	m.Rcode = dns.RcodeFormatError
	if action == dns.MsgRejectNotImplemented {
		m.Opcode = int(dh.Bits>>11) & 0xF
		m.Rcode = dns.RcodeNotImplemented
	}
	_ = w.WriteMsg(m)
}

func FuzzQuery(f *testing.F) {
	up := startUpstream(f, answerA("192.0.2.90", 30))
	// kube-dns is the in-process upstream too: no packet leaves the host.
	snap := testSnapshot()
	port := int32(up.addr.Port())
	snap.Services[kubeDNSKey] = &cluster.Service{ServiceKey: kubeDNSKey, Type: cluster.TypeClusterIP, Ports: []*cluster.Port{
		{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("127.0.0.1", port, true, "")}},
		{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("127.0.0.1", port, true, "")}},
	}}
	s := newTestServer(f, Options{
		Upstreams:        []netip.AddrPort{up.addr},
		NamespaceDomains: []string{"default"},
		Timeout:          200 * time.Millisecond,
		CacheSize:        1000,
	}, snap)
	for _, tg := range s.zone.Load().kubeDNS {
		if !tg.UDP.Addr().IsLoopback() || !tg.TCP.Addr().IsLoopback() {
			f.Fatalf("kube-dns target %v is not on loopback", tg)
		}
	}

	seed := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{webFQDN, dns.TypeA}, {"_http._tcp." + webFQDN, dns.TypeSRV}, {dbFQDN, dns.TypeA},
		{"ext.default.svc.cluster.local.", dns.TypeA}, {"loop1.default.svc.cluster.local.", dns.TypeAAAA},
		{"web.default.svc.", dns.TypeA}, {"web.default.", dns.TypeANY}, {"10.0.96.10.in-addr.arpa.", dns.TypePTR},
		{"cluster.local.", dns.TypeSOA}, {"dns-version.cluster.local.", dns.TypeTXT}, {extName, dns.TypeA},
		{"nope.default.svc.cluster.local.", dns.TypeA},
	} {
		seed(query(q.name, q.qtype, 0))
		seed(query(q.name, q.qtype, 1232))
	}
	badvers := query(webFQDN, dns.TypeA, 1232)
	badvers.IsEdns0().SetVersion(1)
	seed(badvers)
	chaos := query("version.bind.", dns.TypeTXT, 0)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	seed(chaos)
	empty := new(dns.Msg)
	seed(empty)
	two := query(webFQDN, dns.TypeA, 0)
	two.Question = append(two.Question, two.Question[0])
	seed(two)
	good, _ := query(webFQDN, dns.TypeA, 0).Pack()
	f.Add(good[:len(good)-3])
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}) // compression pointer loop
	f.Add([]byte{})
	f.Add([]byte("\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"))

	f.Fuzz(func(t *testing.T, raw []byte) {
		w := newRecorder("127.0.0.1:40000", false)
		serveRaw(s, w, raw)
		if n := s.panics.Load(); n != 0 {
			t.Fatalf("the handler panicked (%d) on %x", n, raw)
		}
		// The UDP fast path, when it answers, answers as the handler did.
		if fast := s.answerFast(&fastReader{s: s}, raw, netip.MustParseAddr("127.0.0.1")); fast != nil && !bytes.Equal(fast, w.wire) {
			t.Fatalf("fast path reply to %x differs from the handler's:\nfast: %x\nslow: %x", raw, fast, w.wire)
		}
		if w.msg == nil {
			return
		}
		if len(raw) >= 2 && w.msg.Id != binary.BigEndian.Uint16(raw) {
			t.Fatalf("reply ID %d does not echo the query's", w.msg.Id)
		}
		if !w.msg.Response {
			t.Fatalf("reply without QR")
		}
		limit := dns.MinMsgSize
		req := new(dns.Msg)
		if req.Unpack(raw) == nil {
			if opt := req.IsEdns0(); opt != nil {
				limit = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxClientSize)
			}
		}
		if len(w.wire) > limit {
			t.Fatalf("UDP reply of %d bytes over the client's %d", len(w.wire), limit)
		}
	})
}
