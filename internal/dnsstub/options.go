package dnsstub

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the zero values of Options.
const (
	DefaultTTL          = 5 * time.Second
	DefaultTimeout      = 2 * time.Second
	DefaultCacheSize    = 10000
	DefaultServeStale   = time.Hour
	DefaultMaxPerClient = 100
	DefaultMaxForwards  = 256
)

// Options configure a Server. Zero values take the defaults above.
type Options struct {
	// Listen is where the stub serves, over UDP and TCP. It must be a
	// loopback address or an address of this host; never 0.0.0.0 or ::.
	Listen netip.AddrPort
	// AlsoListen are further addresses the stub serves on, on Listen's
	// port: the address on bridge-agent's own link that systemd-resolved
	// sends the cluster's names to (see internal/hostdns). They are bound
	// with IP_FREEBIND, because that link may be created after the stub
	// starts, or removed and created again while it runs. Never 0.0.0.0
	// or ::; the same clients as on Listen are served.
	AlsoListen []netip.Addr
	// ClusterDomain is the cluster's DNS domain, e.g. "cluster.local".
	ClusterDomain string
	// TTL is the TTL of answers from the zone.
	TTL time.Duration
	// Upstreams are the host's own resolvers, for names outside the
	// cluster, tried in order with failover.
	Upstreams []netip.AddrPort
	// NamespaceDomains are namespaces whose "<svc>.<ns>." short form the
	// stub answers.
	NamespaceDomains []string
	// Timeout bounds each upstream attempt.
	Timeout time.Duration
	// CacheSize bounds the entries of the forward cache; negative turns
	// the cache off.
	CacheSize int
	// ServeStale is how long an expired forwarded answer may still be
	// served when every upstream fails (RFC 8767); negative turns serving
	// stale off.
	ServeStale time.Duration
	// MaxPerClient bounds the upstream questions in flight per client: a
	// source address and the domain asked (limiter.go).
	MaxPerClient int
	// MaxForwards bounds the upstream questions in flight in all, shared
	// fairly among clients; zone answers are never limited.
	MaxForwards int
	// Logger receives the stub's logs; nil discards them.
	Logger *slog.Logger
}

// withDefaults returns o with its zero values replaced by the defaults and
// its names normalised.
func (o Options) withDefaults() Options {
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	switch {
	case o.CacheSize == 0:
		o.CacheSize = DefaultCacheSize
	case o.CacheSize < 0:
		o.CacheSize = 0 // off
	}
	switch {
	case o.ServeStale == 0:
		o.ServeStale = DefaultServeStale
	case o.ServeStale < 0:
		o.ServeStale = 0 // off
	}
	if o.MaxPerClient == 0 {
		o.MaxPerClient = DefaultMaxPerClient
	}
	if o.MaxForwards == 0 {
		o.MaxForwards = DefaultMaxForwards
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.ClusterDomain = strings.ToLower(strings.Trim(o.ClusterDomain, "."))
	ns := make([]string, 0, len(o.NamespaceDomains))
	for _, n := range o.NamespaceDomains {
		ns = append(ns, strings.ToLower(strings.Trim(n, ".")))
	}
	also := make([]netip.Addr, len(o.AlsoListen))
	for i, a := range o.AlsoListen {
		also[i] = a.Unmap()
	}
	o.AlsoListen = also
	o.NamespaceDomains = ns
	return o
}

// Validate reports every bad field of o at once. Zero values are valid
// (they take the defaults), except Listen and ClusterDomain; a negative
// CacheSize or ServeStale turns that feature off.
func (o Options) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch a := o.Listen.Addr().Unmap(); {
	case !o.Listen.IsValid():
		bad("listen", "an address is required")
	case a.IsUnspecified():
		bad("listen", "%s listens on every interface; use a loopback or local address", o.Listen)
	case a.IsMulticast():
		bad("listen", "%s is a multicast address", o.Listen)
	case !a.IsLoopback() && !isLocalAddr(a):
		bad("listen", "%s is neither a loopback address nor one of this host's addresses", o.Listen)
	}
	for i, a := range o.AlsoListen {
		switch a = a.Unmap(); {
		case !a.IsValid():
			bad(fmt.Sprintf("alsoListen[%d]", i), "an address is required")
		case a.IsUnspecified():
			bad(fmt.Sprintf("alsoListen[%d]", i), "%s listens on every interface; use a loopback or local address", a)
		case a.IsMulticast():
			bad(fmt.Sprintf("alsoListen[%d]", i), "%s is a multicast address", a)
		case a == o.Listen.Addr().Unmap():
			bad(fmt.Sprintf("alsoListen[%d]", i), "%s is the listen address already", a)
		}
	}
	domain := strings.Trim(o.ClusterDomain, ".")
	if domain == "" {
		bad("clusterDomain", "a domain is required")
	} else if _, ok := dns.IsDomainName(domain); !ok || strings.ContainsAny(domain, " \\") {
		bad("clusterDomain", "%q is not a domain name", o.ClusterDomain)
	}
	if o.TTL < 0 || o.TTL > 24*time.Hour {
		bad("ttl", "%s is out of range (0 to 24h)", o.TTL)
	}
	if o.Timeout < 0 {
		bad("timeout", "%s is negative", o.Timeout)
	}
	if o.MaxPerClient < 0 {
		bad("maxPerClient", "%d is negative", o.MaxPerClient)
	}
	if o.MaxForwards < 0 {
		bad("maxForwards", "%d is negative", o.MaxForwards)
	}
	for i, u := range o.Upstreams {
		if !u.IsValid() || u.Port() == 0 || u.Addr().Unmap().IsUnspecified() {
			bad(fmt.Sprintf("upstreams[%d]", i), "%s is not a usable address", u)
			continue
		}
		if o.Listen.IsValid() && o.Listen.Port() != 0 && sameAddrPort(u, o.Listen) {
			bad(fmt.Sprintf("upstreams[%d]", i), "%s is the stub's own listen address: a forwarding loop", u)
		}
	}
	for i, n := range o.NamespaceDomains {
		n = strings.Trim(n, ".")
		if n == "" || strings.Contains(n, ".") {
			bad(fmt.Sprintf("namespaceDomains[%d]", i), "%q is not a namespace name", o.NamespaceDomains[i])
		} else if strings.EqualFold(n, "svc") {
			bad(fmt.Sprintf("namespaceDomains[%d]", i), "%q clashes with the svc. short form", n)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("dns stub options: %w", errors.Join(errs...))
	}
	return nil
}

func sameAddrPort(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// isLocalAddr tells whether a is configured on one of this host's
// interfaces.
func isLocalAddr(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.WithZone("") {
				return true
			}
		}
	}
	return false
}
