package dnsstub

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestAlsoListen: the stub also serves on Options.AlsoListen, on the same
// port, even on an address the host does not have yet (IP_FREEBIND), and
// takes queries whose source is such an address, as systemd-resolved's
// are when it queries the address on the agent's link; other sources are
// refused.
func TestAlsoListen(t *testing.T) {
	absent := netip.MustParseAddr("192.0.2.77") // on no interface of a test machine
	second := netip.MustParseAddr("127.0.0.79")
	s := newTestServer(t, Options{AlsoListen: []netip.Addr{absent, second}}, testSnapshot())
	if err := s.Start(); err != nil {
		t.Fatalf("start with an address the host does not have: %v", err)
	}
	t.Cleanup(func() { s.Close() })

	c := &dns.Client{Timeout: 3 * time.Second}
	for _, proto := range []string{"udp", "tcp"} {
		c.Net = proto
		r, _, err := c.Exchange(query("web.default.svc.cluster.local.", dns.TypeA, 0), netip.AddrPortFrom(second, s.Addr().Port()).String())
		if err != nil {
			t.Fatalf("%s query on the second address: %v", proto, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("%s query on the second address: %v", proto, r)
		}
	}

	for _, tc := range []struct {
		src  string
		want int
	}{
		{"192.0.2.77:40000", dns.RcodeSuccess},
		{"127.0.0.1:40000", dns.RcodeSuccess},
		{"192.0.2.78:40000", dns.RcodeRefused},
		{"10.0.0.1:40000", dns.RcodeRefused},
	} {
		w := newRecorder(tc.src, false)
		s.ServeDNS(w, query("web.default.svc.cluster.local.", dns.TypeA, 0))
		if w.msg == nil || w.msg.Rcode != tc.want {
			t.Errorf("query from %s: %v, want rcode %s", tc.src, w.msg, dns.RcodeToString[tc.want])
		}
	}
}

func TestAlsoListenValidate(t *testing.T) {
	o := Options{Listen: netip.MustParseAddrPort("127.0.0.77:53"), ClusterDomain: "cluster.local",
		AlsoListen: []netip.Addr{netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("::"), netip.MustParseAddr("224.0.0.1"), netip.MustParseAddr("127.0.0.77"), {}}}
	err := o.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"alsoListen[0]: 0.0.0.0 listens on every", "alsoListen[1]: :: listens on every", "alsoListen[2]: 224.0.0.1 is a multicast",
		"alsoListen[3]: 127.0.0.77 is the listen address", "alsoListen[4]: an address is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
