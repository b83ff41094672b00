package hostguard

import (
	"net/netip"
	"testing"
)

// host is a VM on 10.250.0.0/24 and fd00:250::/64 with gateway 10.250.0.1
// (and fd00:250::1), resolvers 10.250.0.53 and 8.8.8.8.
var host = &Facts{
	Local:     addrs("10.250.0.10", "127.0.0.1", "::1", "fd00:250::10", "fe80::10"),
	Connected: prefixes("10.250.0.0/24", "fd00:250::/64"),
	Gateways:  addrs("10.250.0.1", "fd00:250::1"),
	Resolvers: addrs("10.250.0.53", "8.8.8.8"),
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func reasonOf(r *Refusal) Reason {
	if r == nil {
		return ""
	}
	return r.Reason
}

// TestSpecialAddr: each special range refuses its addresses, their edges
// included, and lets the addresses just outside through.
func TestSpecialAddr(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		special bool
	}{
		{"0.0.0.0", true}, {"0.255.255.255", true}, {"1.0.0.0", false},
		{"127.0.0.1", true}, {"127.255.255.255", true}, {"126.255.255.255", false}, {"128.0.0.0", false},
		{"169.254.169.254", true}, {"169.254.0.1", true}, {"169.253.255.255", false}, {"169.255.0.0", false},
		{"100.100.100.200", true}, {"100.100.100.201", false},
		{"168.63.129.16", true},
		{"224.0.0.1", true}, {"239.255.255.255", true}, {"223.255.255.255", false},
		{"255.255.255.255", true}, {"255.255.255.254", false},
		{"10.96.0.1", false}, {"8.8.8.8", false},
		{"::", true}, {"::1", true}, {"::2", true}, {"::a00:1", true}, // ::/96 IPv4-compatible
		{"::ffff:10.96.0.1", true}, {"::ffff:127.0.0.1", true}, // mapped: never the IPv4 address it maps
		{"64:ff9b::808:808", true}, {"64:ff9b:1::1", true},
		{"fd00:ec2::254", true}, {"fd00:ec2::253", false},
		{"fe80::1", true}, {"febf::1", true}, {"fec0::1", false},
		{"fe80::1%eth0", true},
		{"ff02::1", true}, {"ff00::", true}, {"feff::1", false},
		{"fd00:96::1", false}, {"2001:db8::1", false},
	} {
		got := SpecialAddr(netip.MustParseAddr(tc.addr))
		if (got != nil) != tc.special {
			t.Errorf("SpecialAddr(%s) = %v, want special %v", tc.addr, got, tc.special)
		}
		if got != nil && got.Reason != ReasonSpecial {
			t.Errorf("SpecialAddr(%s) reason %s", tc.addr, got.Reason)
		}
	}
	if SpecialAddr(netip.Addr{}) == nil {
		t.Error("the zero Addr passes")
	}
}

// TestSpecialPrefix: every overlap shape with a special range (equal,
// inside, containing) refuses; disjoint and adjacent prefixes pass.
func TestSpecialPrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix  string
		special bool
		shape   string
	}{
		{"127.0.0.0/8", true, "equal"},
		{"127.1.0.0/16", true, "inside"},
		{"126.0.0.0/7", true, "containing"},
		{"0.0.0.0/1", true, "containing 0/8 and 127/8"},
		{"128.0.0.0/1", true, "containing 169.254/16, multicast, broadcast"},
		{"169.254.169.254/32", true, "equal (metadata)"},
		{"169.254.0.0/16", true, "equal"},
		{"169.0.0.0/8", true, "containing"},
		{"224.0.0.0/4", true, "equal"},
		{"225.1.0.0/16", true, "inside"},
		{"255.255.255.255/32", true, "equal"},
		{"255.255.255.0/24", true, "containing broadcast"},
		{"1.0.0.0/8", false, "adjacent above 0/8"},
		{"126.0.0.0/8", false, "adjacent below 127/8"},
		{"128.0.0.0/8", false, "adjacent above 127/8"},
		{"169.253.0.0/16", false, "adjacent below 169.254/16"},
		{"169.255.0.0/16", false, "adjacent above 169.254/16"},
		{"208.0.0.0/4", false, "adjacent below multicast"},
		{"240.0.0.0/5", false, "adjacent above multicast"},
		{"10.244.0.0/16", false, "disjoint"},
		{"::/0", true, "containing all of IPv6"},
		{"::/128", true, "equal"},
		{"::1/128", true, "equal"},
		{"::ffff:0:0/96", true, "equal (mapped)"},
		{"::ffff:10.0.0.0/104", true, "inside (mapped)"},
		{"64:ff9b::/96", true, "equal (NAT64)"},
		{"fe80::/64", true, "inside"},
		{"fe00::/7", true, "containing link-local"},
		{"ff02::/16", true, "inside"},
		{"fec0::/10", false, "adjacent above link-local"},
		{"fd00:244::/48", false, "disjoint"},
		{"fd00:ec2::/64", true, "containing AWS metadata"},
		{"fd00:ec3::/64", false, "disjoint"},
	} {
		got := SpecialPrefix(netip.MustParsePrefix(tc.prefix))
		if (got != nil) != tc.special {
			t.Errorf("SpecialPrefix(%s) [%s] = %v, want special %v", tc.prefix, tc.shape, got, tc.special)
		}
	}
}

// TestCheckAddr: a ClusterIP may not be the host's address, gateway or
// resolver, lie in its networks or in a special range.
func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want Reason
	}{
		{"10.96.0.10", ""},
		{"fd00:96::10", ""},
		{"10.250.0.10", ReasonHostAddress},
		{"fd00:250::10", ReasonHostAddress},
		{"10.250.0.1", ReasonHostGateway},
		{"fd00:250::1", ReasonHostGateway},
		{"10.250.0.53", ReasonHostResolver},
		{"8.8.8.8", ReasonHostResolver},
		{"10.250.0.99", ReasonHostNetwork},
		{"10.250.0.255", ReasonHostNetwork},
		{"10.250.1.0", ""}, // adjacent to the host's network
		{"10.249.255.255", ""},
		{"fd00:250::99", ReasonHostNetwork},
		{"fd00:251::1", ""},
		{"169.254.169.254", ReasonSpecial},
		{"127.0.0.1", ReasonSpecial},
		{"::ffff:10.96.0.10", ReasonSpecial}, // mapped, even of an allowed address
		{"::ffff:10.250.0.1", ReasonSpecial},
	} {
		if got := reasonOf(host.CheckAddr(netip.MustParseAddr(tc.addr))); got != tc.want {
			t.Errorf("CheckAddr(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	// Without facts only the special ranges apply.
	var none *Facts
	if r := none.CheckAddr(netip.MustParseAddr("10.250.0.1")); r != nil {
		t.Errorf("nil facts refuse %v", r)
	}
	if r := none.CheckAddr(netip.MustParseAddr("127.0.0.1")); reasonOf(r) != ReasonSpecial {
		t.Errorf("nil facts: loopback gives %v", r)
	}
}

// TestCheckPrefix: each overlap shape with the host's networks and
// addresses, IPv4 and IPv6.
func TestCheckPrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   Reason
		shape  string
	}{
		{"10.244.1.0/24", "", "disjoint"},
		{"10.250.0.0/24", ReasonHostAddress, "equal to the host's network (contains its address)"},
		{"10.250.0.0/16", ReasonHostAddress, "containing the host's network"},
		{"10.250.0.0/26", ReasonHostAddress, "inside the host's network, holding its address"},
		{"10.250.0.32/27", ReasonHostResolver, "inside the host's network, holding a resolver"},
		{"10.250.0.192/26", ReasonHostNetwork, "inside the host's network"},
		{"10.250.0.1/32", ReasonHostGateway, "the gateway"},
		{"10.250.0.53/32", ReasonHostResolver, "the resolver"},
		{"10.250.0.10/32", ReasonHostAddress, "the host's address"},
		{"8.8.8.8/32", ReasonHostResolver, "a remote resolver"},
		{"8.0.0.0/8", ReasonHostResolver, "containing a remote resolver"},
		{"10.250.1.0/24", "", "adjacent above"},
		{"10.249.255.0/24", "", "adjacent below"},
		{"0.0.0.0/1", ReasonSpecial, "containing everything below 128/1"},
		{"169.254.169.254/32", ReasonSpecial, "metadata"},
		{"127.0.0.0/8", ReasonSpecial, "loopback"},
		{"224.0.0.0/4", ReasonSpecial, "multicast"},
		{"fd00:244::/64", "", "disjoint"},
		{"fd00:250::/64", ReasonHostAddress, "equal"},
		{"fd00:250::/48", ReasonHostAddress, "containing"},
		{"fd00:250::8000:0:0:0/65", ReasonHostNetwork, "inside"},
		{"fd00:250:0:1::/64", "", "adjacent"},
		{"fd00:250::1/128", ReasonHostGateway, "the IPv6 gateway"},
		{"::ffff:10.244.0.0/120", ReasonSpecial, "mapped"},
	} {
		p := netip.MustParsePrefix(tc.prefix)
		if got := reasonOf(host.CheckPrefix(p)); got != tc.want {
			t.Errorf("CheckPrefix(%s) [%s] = %q (%v), want %q", tc.prefix, tc.shape, got, host.CheckPrefix(p), tc.want)
		}
	}
}

// TestCheckNexthop: a next hop may not be special (link-local only with a
// device) nor the host itself.
func TestCheckNexthop(t *testing.T) {
	for _, tc := range []struct {
		addr      string
		linkLocal bool
		want      Reason
	}{
		{"10.250.0.20", false, ""},
		{"10.250.0.10", false, ReasonHostAddress},
		{"127.0.0.1", false, ReasonSpecial},
		{"169.254.1.1", false, ReasonSpecial},
		{"169.254.1.1", true, ""},
		{"169.254.169.254", true, ReasonSpecial},
		{"fe80::1", true, ""},
		{"fe80::1", false, ReasonSpecial},
		{"fe80::10", true, ReasonHostAddress},
		{"ff02::2", true, ReasonSpecial},
		{"0.0.0.0", false, ReasonSpecial},
		{"255.255.255.255", false, ReasonSpecial},
		{"::ffff:10.250.0.20", false, ReasonSpecial},
	} {
		if got := reasonOf(host.CheckNexthop(netip.MustParseAddr(tc.addr), tc.linkLocal)); got != tc.want {
			t.Errorf("CheckNexthop(%s, %v) = %q, want %q", tc.addr, tc.linkLocal, got, tc.want)
		}
	}
}

func TestNormalizeEqual(t *testing.T) {
	a := &Facts{
		Local:     addrs("10.0.0.2", "::ffff:10.0.0.1", "10.0.0.2"),
		Connected: prefixes("10.0.0.7/24", "::ffff:10.1.0.0/112"),
		Gateways:  addrs("fe80::1%eth0"),
	}
	a.Normalize()
	b := &Facts{Local: addrs("10.0.0.1", "10.0.0.2"), Connected: prefixes("10.0.0.0/24", "10.1.0.0/16"), Gateways: addrs("fe80::1")}
	b.Normalize()
	if !a.Equal(b) {
		t.Errorf("normalized facts differ:\n%+v\n%+v", a, b)
	}
	if !host.OnLink(netip.MustParseAddr("10.250.0.200")) || host.OnLink(netip.MustParseAddr("10.251.0.1")) {
		t.Error("OnLink wrong")
	}
}
