package hostdns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// linkSettings are the per-link settings of systemd-resolved that the
// resolved backend owns on its link.
type linkSettings struct {
	// Servers are the link's DNS servers.
	Servers []netip.AddrPort
	// Domains are routing-only domains, without the "~" and the trailing
	// dot; a search domain (which we never set) reads as "+name".
	Domains []string
	// DefaultRoute is whether names outside every routing domain may be
	// sent to the link's servers; nil where resolved has no such setting
	// (before v240).
	DefaultRoute *bool
	// LLMNR, MulticastDNS, DNSSEC and DNSOverTLS are the link's modes as
	// resolved reports them ("yes", "no", "resolve", "allow-downgrade",
	// "opportunistic", ...).
	LLMNR, MulticastDNS, DNSSEC, DNSOverTLS string
}

// wantSettings are the link's settings the agent wants: the stub as the
// only server; the cluster's domains routing-only, so that only names
// under them reach the stub and none is added to a search list; never the
// default route, so that other names never go to the stub; no LLMNR or
// mDNS on a link that leads nowhere; no DNSSEC validation (the cluster's
// zone is not signed, and a host with DNSSEC=yes would otherwise reject its
// answers) and no DNS-over-TLS (the stub speaks plain DNS).
func wantSettings(server netip.AddrPort, domains []string) linkSettings {
	f := false
	return linkSettings{
		Servers:      []netip.AddrPort{server},
		Domains:      slices.Clone(domains),
		DefaultRoute: &f,
		LLMNR:        "no",
		MulticastDNS: "no",
		DNSSEC:       "no",
		DNSOverTLS:   "no",
	}
}

// stepKind names a resolve1 SetLink* method, without the prefix.
type stepKind string

const (
	stepDNS          stepKind = "DNS"
	stepDomains      stepKind = "Domains"
	stepDefaultRoute stepKind = "DefaultRoute"
	stepLLMNR        stepKind = "LLMNR"
	stepMulticastDNS stepKind = "MulticastDNS"
	stepDNSSEC       stepKind = "DNSSEC"
	stepDNSOverTLS   stepKind = "DNSOverTLS"
)

// step is one SetLink* call.
type step struct {
	Kind    stepKind
	Servers []netip.AddrPort // stepDNS
	Domains []string         // stepDomains
	Value   string           // the modes; DefaultRoute is always false
}

func (s step) String() string {
	switch s.Kind {
	case stepDNS:
		return fmt.Sprintf("SetLinkDNS %v", s.Servers)
	case stepDomains:
		return "SetLinkDomains ~" + strings.Join(s.Domains, " ~")
	case stepDefaultRoute:
		return "SetLinkDefaultRoute false"
	}
	return "SetLink" + string(s.Kind) + " " + s.Value
}

// planSettings lists the calls that turn the link's settings cur into
// want, in resolved's order of importance: servers and domains first. It
// returns nothing when they match, so a periodic check changes nothing
// (resolved logs every SetLinkDNS it is sent).
func planSettings(cur, want linkSettings) []step {
	var steps []step
	if !slices.Equal(cur.Servers, want.Servers) {
		steps = append(steps, step{Kind: stepDNS, Servers: want.Servers})
	}
	if !slices.Equal(cur.Domains, want.Domains) {
		steps = append(steps, step{Kind: stepDomains, Domains: want.Domains})
	}
	if want.DefaultRoute != nil && (cur.DefaultRoute == nil || *cur.DefaultRoute != *want.DefaultRoute) {
		steps = append(steps, step{Kind: stepDefaultRoute})
	}
	for _, m := range []struct {
		kind      stepKind
		cur, want string
	}{
		{stepLLMNR, cur.LLMNR, want.LLMNR},
		{stepMulticastDNS, cur.MulticastDNS, want.MulticastDNS},
		{stepDNSSEC, cur.DNSSEC, want.DNSSEC},
		{stepDNSOverTLS, cur.DNSOverTLS, want.DNSOverTLS},
	} {
		if m.want != "" && m.cur != m.want {
			steps = append(steps, step{Kind: m.kind, Value: m.want})
		}
	}
	return steps
}

// String renders the settings as `resolvectl status <link>` would, one
// setting a line, for tests and logs.
func (s linkSettings) String() string {
	var b strings.Builder
	servers := make([]string, len(s.Servers))
	for i, a := range s.Servers {
		servers[i] = a.String()
	}
	fmt.Fprintf(&b, "dns: %s\n", strings.Join(servers, " "))
	fmt.Fprintf(&b, "domains: %s\n", strings.Join(s.Domains, " "))
	dr := "-"
	if s.DefaultRoute != nil {
		dr = fmt.Sprint(*s.DefaultRoute)
	}
	fmt.Fprintf(&b, "default-route: %s\n", dr)
	fmt.Fprintf(&b, "llmnr: %s mdns: %s dnssec: %s dot: %s\n", s.LLMNR, s.MulticastDNS, s.DNSSEC, s.DNSOverTLS)
	return b.String()
}
