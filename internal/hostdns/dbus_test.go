package hostdns

import (
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

// TestParseLinkProps: the org.freedesktop.resolve1.Link properties, as
// godbus decodes them from the wire (structs arrive as []any), read back
// as the settings the backend compares; both DNSEx (v246+) and DNS.
func TestParseLinkProps(t *testing.T) {
	f := false
	props := map[string]dbus.Variant{
		"DNSEx": dbus.MakeVariant([][]any{
			{int32(2), []byte{169, 254, 255, 77}, uint16(0), ""},
			{int32(10), []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x77}, uint16(5353), ""},
		}),
		"Domains":      dbus.MakeVariant([][]any{{"cluster.local", true}, {"svc.", true}, {"corp", false}}),
		"DefaultRoute": dbus.MakeVariant(false),
		"LLMNR":        dbus.MakeVariant("no"),
		"MulticastDNS": dbus.MakeVariant("no"),
		"DNSSEC":       dbus.MakeVariant("allow-downgrade"),
		"DNSOverTLS":   dbus.MakeVariant("no"),
	}
	want := linkSettings{
		Servers:      addrPorts("169.254.255.77:53", "[fd00::77]:5353"),
		Domains:      []string{"cluster.local", "svc", "+corp"},
		DefaultRoute: &f,
		LLMNR:        "no", MulticastDNS: "no", DNSSEC: "allow-downgrade", DNSOverTLS: "no",
	}
	if diff := cmp.Diff(want.String(), parseLinkProps(props).String()); diff != "" {
		t.Errorf("DNSEx (-want +got):\n%s", diff)
	}

	old := map[string]dbus.Variant{"DNS": dbus.MakeVariant([][]any{{int32(2), []byte{169, 254, 255, 77}}})}
	got := parseLinkProps(old)
	if len(got.Servers) != 1 || got.Servers[0].String() != "169.254.255.77:53" || got.DefaultRoute != nil {
		t.Errorf("DNS of an older resolved: %+v", got)
	}
}
