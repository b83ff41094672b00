// Package config holds bridge-agent's configuration: one versioned YAML
// document (apiVersion + kind, like KubeProxyConfiguration), its defaults, and
// validation that reports every bad field at once, each by its YAML path.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// APIVersion and Kind identify the configuration document.
const (
	APIVersion = "bridge-agent.io/v1alpha1"
	Kind       = "AgentConfiguration"
)

// DefaultPath is where packages install the configuration file.
const DefaultPath = "/etc/bridge-agent/config.yaml"

// Config is the whole agent configuration. Field comments are the user-facing
// documentation; the YAML names are the json tags.
type Config struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	// Kubeconfig is the path of a kubeconfig file for the cluster. Either it or
	// APIServer.URL must be set.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// APIServer connects with a bearer token instead of a kubeconfig.
	APIServer APIServer `json:"apiServer,omitempty"`

	// ClusterDomain is the cluster's DNS domain (default cluster.local).
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// ServiceCIDRs are the cluster's Service IP ranges, used to scope rules and
	// routes. Empty means "learn them from the cluster where it says".
	ServiceCIDRs []string `json:"serviceCIDRs,omitempty"`

	// HostRoot prefixes every host file the agent reads or writes (resolver
	// configuration, state, the status socket). Default "/".
	HostRoot string `json:"hostRoot,omitempty"`
	// StateDir keeps the agent's state, relative to HostRoot.
	StateDir string `json:"stateDir,omitempty"`
	// StatusSocket is the local-only unix socket that `bridge-agent status`
	// reads, relative to HostRoot.
	StatusSocket string `json:"statusSocket,omitempty"`

	// HealthzBindAddress serves /healthz and /readyz ("" disables).
	HealthzBindAddress string `json:"healthzBindAddress,omitempty"`
	// MetricsBindAddress serves Prometheus /metrics ("" disables).
	MetricsBindAddress string `json:"metricsBindAddress,omitempty"`
	// EnableProfiling serves Go's /debug/pprof/ handlers on the status
	// socket (local, root only), never on a TCP address (default false).
	EnableProfiling bool `json:"enableProfiling,omitempty"`

	// Scope limits which Services the agent handles.
	Scope Scope `json:"scope,omitempty"`

	Proxy   Proxy   `json:"proxy,omitempty"`
	Routes  Routes  `json:"routes,omitempty"`
	DNS     DNS     `json:"dns,omitempty"`
	Logging Logging `json:"logging,omitempty"`
}

// APIServer is a token-based connection to the cluster.
type APIServer struct {
	// URL of the API server, e.g. https://10.0.0.1:6443.
	URL string `json:"url,omitempty"`
	// TokenFile holds a bearer token (re-read when it changes).
	TokenFile string `json:"tokenFile,omitempty"`
	// CAFile is the PEM bundle that signs the API server's certificate.
	CAFile string `json:"caFile,omitempty"`
}

// Scope selects the Services the agent handles.
type Scope struct {
	// Namespaces, when not empty, limits the agent to these namespaces.
	Namespaces []string `json:"namespaces,omitempty"`
	// LabelSelector, when set, limits the agent to matching Services.
	LabelSelector string `json:"labelSelector,omitempty"`
	// ServiceProxyName is this agent's name for the well-known label
	// service.kubernetes.io/service-proxy-name: Services carrying that label
	// are proxied only when it equals this name (empty: never).
	ServiceProxyName string `json:"serviceProxyName,omitempty"`
}

// Proxy configures the ClusterIP proxy.
type Proxy struct {
	// Mode is auto (default), nftables, iptables or none (no NAT rules; DNS
	// and routes only). auto picks nftables where this host's nft and kernel
	// support the agent's layout and the host keeps no rules in
	// iptables-legacy, iptables otherwise.
	Mode string `json:"mode,omitempty"`
	// IPTablesVariant is legacy, nft or auto (default): the variant that
	// already holds this host's rules, so the agent's sit beside them.
	IPTablesVariant string `json:"iptablesVariant,omitempty"`
	// Masquerade is always, never or auto (default). auto masquerades
	// unless routes.mode is nodes (this host shares a link with the nodes,
	// so pods can answer it directly). Traffic this host originates already
	// leaves with its own address; masquerading matters most for traffic it
	// forwards for others, whose source the pod network could not route back to.
	Masquerade string `json:"masquerade,omitempty"`
	// MinSyncPeriod is the least time between two syncs; changes arriving
	// faster are batched (default 1s).
	MinSyncPeriod metav1.Duration `json:"minSyncPeriod,omitempty"`
	// SyncPeriod is how often every consumer is synced even without a change,
	// to check and repair what it owns (default 30s). The proxy checks its
	// rules then and rewrites them whole only hourly or when they were
	// tampered with.
	SyncPeriod metav1.Duration `json:"syncPeriod,omitempty"`
}

// Route modes.
const (
	// RoutesNodes routes each Node's pod CIDRs via that Node's InternalIP.
	RoutesNodes = "nodes"
	// RoutesGateway routes configured CIDRs via configured gateways or a
	// device.
	RoutesGateway = "gateway"
	// RoutesNone installs no routes (and removes those of an earlier run).
	RoutesNone = "none"
)

// DefaultRouteProtocol marks the agent's routes (0x62). It is listed
// neither in iproute2's rt_protos nor among the kernel's RTPROT_* values,
// so no routing daemon claims it. `ip route show proto 98` shows the
// agent's routes.
const DefaultRouteProtocol = 98

// DefaultRouteTable is the main routing table.
const DefaultRouteTable = 254

// Routes configures the routes to the cluster's pod networks.
type Routes struct {
	// Mode is nodes (default), gateway or none. nodes: every Node's pod
	// CIDRs via its InternalIP of the same family, for Nodes on a subnet
	// this host is directly connected to. gateway: cidrs via gateways or
	// device. none: no routes.
	Mode string `json:"mode,omitempty"`
	// Protocol is the route protocol number that marks the agent's routes
	// (default 98, 0x62). The agent changes and removes only routes with
	// this protocol; cleanup removes all of them. Values the kernel or
	// well-known routing daemons use are refused.
	Protocol int `json:"protocol,omitempty"`
	// Table is the routing table for the routes (default 254, main). With
	// another table, a policy rule that consults it is the admin's to add.
	Table int `json:"table,omitempty"`
	// CIDRs are the destinations of gateway mode, e.g. the cluster's pod
	// range 10.244.0.0/16.
	CIDRs []string `json:"cidrs,omitempty"`
	// Gateways are the next hops of gateway mode; several of one family
	// make an equal-cost multipath route.
	Gateways []string `json:"gateways,omitempty"`
	// Device, in gateway mode, is the interface for the routes: the
	// gateways' interface, or, for a family without gateways, a route
	// straight onto this link.
	Device string `json:"device,omitempty"`
}

// DNS modes.
const (
	// DNSStub runs the local DNS stub.
	DNSStub = "stub"
	// DNSNone runs no stub and leaves the host resolver alone.
	DNSNone = "none"
)

// DNS configures the local DNS stub and how the host's resolver reaches it.
type DNS struct {
	// Mode is stub (default) or none.
	Mode string `json:"mode,omitempty"`
	// ListenAddress is ip:port of the stub, UDP and TCP. It must be a
	// loopback address; the default 127.0.0.77:53 stays clear of
	// systemd-resolved's 127.0.0.53/54.
	ListenAddress string `json:"listenAddress,omitempty"`
	// TTL of the answers the stub makes from the cluster's Services
	// (default 5s, as CoreDNS's kubernetes plugin).
	TTL metav1.Duration `json:"ttl,omitempty"`
	// Upstreams are the resolvers for every name outside the cluster, as ip
	// or ip:port. Empty (the default) means the host's own resolvers, as
	// they were before the agent wired the host to the stub.
	Upstreams []string `json:"upstreams,omitempty"`
	// NamespaceDomains lists namespaces whose Services also answer to
	// "name.namespace" (with the host resolver routing those domains to
	// the stub). Empty by default: only name.namespace.svc and the full
	// name.namespace.svc.<clusterDomain>.
	NamespaceDomains []string `json:"namespaceDomains,omitempty"`
	// HostResolver is how the host's resolver is pointed at the stub: auto
	// (default: systemd-resolved when it runs, else resolv.conf),
	// systemd-resolved (a drop-in with routing domains for the cluster's
	// names only), resolv.conf (a managed /etc/resolv.conf; the original is
	// kept and restored by cleanup) or none.
	HostResolver string `json:"hostResolver,omitempty"`
	// Timeout of one query to one upstream (default 2s).
	Timeout metav1.Duration `json:"timeout,omitempty"`
	// CacheSize bounds the cache of forwarded answers, in entries (default
	// 10000).
	CacheSize int `json:"cacheSize,omitempty"`
	// ServeStale is how long an expired forwarded answer may still be
	// served while every upstream fails (RFC 8767; default 1h, 0 disables).
	ServeStale metav1.Duration `json:"serveStale,omitempty"`
	// MaxConcurrentPerClient bounds the questions one client may have
	// waiting on an upstream (default 100). All local processes reach the
	// stub from 127.0.0.1, so a client is a source address and the domain
	// asked (its last two labels). Cluster names answered locally are never
	// limited.
	MaxConcurrentPerClient int `json:"maxConcurrentPerClient,omitempty"`
	// MaxConcurrentForwards bounds the questions waiting on upstreams in
	// all (default 1000), shared fairly among clients; over it a question
	// gets a stale cached answer or REFUSED at once. Identical questions in
	// flight are sent once and count once.
	MaxConcurrentForwards int `json:"maxConcurrentForwards,omitempty"`
}

// Logging configures the log stream.
type Logging struct {
	// Format is "text" or "json" (default text).
	Format string `json:"format,omitempty"`
	// Verbosity: 0 sync summaries, 2 per object, 4 dumps (default 0).
	Verbosity int `json:"verbosity,omitempty"`
}

// Default returns the configuration used for every field a file leaves out.
func Default() *Config {
	return &Config{
		APIVersion:         APIVersion,
		Kind:               Kind,
		ClusterDomain:      "cluster.local",
		HostRoot:           "/",
		StateDir:           "/var/lib/bridge-agent",
		StatusSocket:       "/run/bridge-agent/status.sock",
		HealthzBindAddress: "127.0.0.1:10356",
		MetricsBindAddress: "127.0.0.1:10357",
		Proxy: Proxy{
			Mode:            "auto",
			IPTablesVariant: "auto",
			Masquerade:      "auto",
			MinSyncPeriod:   metav1.Duration{Duration: time.Second},
			SyncPeriod:      metav1.Duration{Duration: 30 * time.Second},
		},
		Routes: Routes{
			Mode:     RoutesNodes,
			Protocol: DefaultRouteProtocol,
			Table:    DefaultRouteTable,
		},
		DNS: DNS{
			Mode:                   DNSStub,
			ListenAddress:          "127.0.0.77:53",
			TTL:                    metav1.Duration{Duration: 5 * time.Second},
			HostResolver:           "auto",
			Timeout:                metav1.Duration{Duration: 2 * time.Second},
			CacheSize:              10000,
			ServeStale:             metav1.Duration{Duration: time.Hour},
			MaxConcurrentPerClient: 100,
			MaxConcurrentForwards:  1000,
		},
		Logging: Logging{Format: "text"},
	}
}

// Parse reads a configuration document over the defaults. Unknown fields are
// errors, so a typo never silently falls back to a default.
func Parse(data []byte) (*Config, error) {
	c := Default()
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	return c, nil
}

// Load reads and parses the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// FieldError is one invalid field, named by its YAML path.
type FieldError struct {
	Field  string
	Value  any
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: invalid value %v: %s", e.Field, e.Value, e.Reason)
}

// ValidationError lists every invalid field of a configuration.
type ValidationError []*FieldError

func (v ValidationError) Error() string {
	parts := make([]string, len(v))
	for i, e := range v {
		parts[i] = e.Error()
	}
	return "invalid config: " + strings.Join(parts, "; ")
}

// Fields returns the paths of the invalid fields, in the order found.
func (v ValidationError) Fields() []string {
	out := make([]string, len(v))
	for i, e := range v {
		out[i] = e.Field
	}
	return out
}

// Validate checks every field and returns a ValidationError naming all bad
// ones, or nil.
func (c *Config) Validate() error {
	var errs ValidationError
	bad := func(field string, value any, reason string) {
		errs = append(errs, &FieldError{Field: field, Value: value, Reason: reason})
	}
	if c.APIVersion != APIVersion {
		bad("apiVersion", quote(c.APIVersion), "must be "+APIVersion)
	}
	if c.Kind != Kind {
		bad("kind", quote(c.Kind), "must be "+Kind)
	}
	switch {
	case c.Kubeconfig == "" && c.APIServer.URL == "":
		bad("kubeconfig", quote(""), "one of kubeconfig or apiServer.url is required")
	case c.Kubeconfig != "" && c.APIServer.URL != "":
		bad("apiServer.url", quote(c.APIServer.URL), "kubeconfig and apiServer.url are mutually exclusive")
	case c.APIServer.URL != "":
		if !strings.HasPrefix(c.APIServer.URL, "https://") {
			bad("apiServer.url", quote(c.APIServer.URL), "must be an https:// URL")
		}
		if c.APIServer.TokenFile == "" {
			bad("apiServer.tokenFile", quote(""), "required with apiServer.url")
		}
	}
	if !isDomain(c.ClusterDomain) {
		bad("clusterDomain", quote(c.ClusterDomain), "must be a DNS domain such as cluster.local")
	}
	for i, s := range c.ServiceCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			bad(fmt.Sprintf("serviceCIDRs[%d]", i), quote(s), "must be a CIDR such as 10.96.0.0/12 with no host bits")
		}
	}
	if !filepath.IsAbs(c.HostRoot) {
		bad("hostRoot", quote(c.HostRoot), "must be an absolute path")
	}
	if !filepath.IsAbs(c.StateDir) {
		bad("stateDir", quote(c.StateDir), "must be an absolute path (it is taken inside hostRoot)")
	}
	if !filepath.IsAbs(c.StatusSocket) {
		bad("statusSocket", quote(c.StatusSocket), "must be an absolute path (it is taken inside hostRoot)")
	}
	for _, f := range []struct{ name, value string }{
		{"healthzBindAddress", c.HealthzBindAddress},
		{"metricsBindAddress", c.MetricsBindAddress},
	} {
		if f.value == "" {
			continue
		}
		if err := checkLocalAddrPort(f.value, false); err != nil {
			bad(f.name, quote(f.value), err.Error())
		}
	}
	c.validateDNS(bad)
	for i, ns := range c.Scope.Namespaces {
		if !isLabel(ns) {
			bad(fmt.Sprintf("scope.namespaces[%d]", i), quote(ns), "must be a namespace name")
		}
	}
	if c.Scope.LabelSelector != "" {
		if _, err := labels.Parse(c.Scope.LabelSelector); err != nil {
			bad("scope.labelSelector", quote(c.Scope.LabelSelector), err.Error())
		}
	}
	if c.Proxy.MinSyncPeriod.Duration < 0 {
		bad("proxy.minSyncPeriod", c.Proxy.MinSyncPeriod.Duration, "must not be negative")
	}
	if c.Proxy.SyncPeriod.Duration <= 0 {
		bad("proxy.syncPeriod", c.Proxy.SyncPeriod.Duration, "must be greater than zero")
	} else if c.Proxy.SyncPeriod.Duration < c.Proxy.MinSyncPeriod.Duration {
		bad("proxy.syncPeriod", c.Proxy.SyncPeriod.Duration, "must not be less than proxy.minSyncPeriod")
	}
	for _, f := range []struct {
		name, value string
		allowed     []string
	}{
		{"proxy.mode", c.Proxy.Mode, []string{"iptables", "nftables", "auto", "none"}},
		{"proxy.iptablesVariant", c.Proxy.IPTablesVariant, []string{"auto", "legacy", "nft"}},
		{"proxy.masquerade", c.Proxy.Masquerade, []string{"auto", "always", "never"}},
	} {
		if !slices.Contains(f.allowed, f.value) {
			bad(f.name, quote(f.value), "must be one of "+strings.Join(f.allowed, ", "))
		}
	}
	c.validateRoutes(bad)
	if c.Logging.Format != "text" && c.Logging.Format != "json" {
		bad("logging.format", quote(c.Logging.Format), `must be "text" or "json"`)
	}
	if c.Logging.Verbosity < 0 || c.Logging.Verbosity > 10 {
		bad("logging.verbosity", c.Logging.Verbosity, "must be between 0 and 10")
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

func (c *Config) validateDNS(bad func(field string, value any, reason string)) {
	d := &c.DNS
	if d.Mode != DNSStub && d.Mode != DNSNone {
		bad("dns.mode", quote(d.Mode), "must be one of stub, none")
	}
	if err := checkLocalAddrPort(d.ListenAddress, true); err != nil {
		bad("dns.listenAddress", quote(d.ListenAddress), err.Error())
	}
	if d.TTL.Duration < time.Second || d.TTL.Duration > time.Hour || d.TTL.Duration%time.Second != 0 {
		bad("dns.ttl", d.TTL.Duration, "must be whole seconds between 1s and 1h")
	}
	listen, _ := netip.ParseAddrPort(d.ListenAddress)
	for i, u := range d.Upstreams {
		ap, err := ParseUpstream(u)
		switch {
		case err != nil:
			bad(fmt.Sprintf("dns.upstreams[%d]", i), quote(u), err.Error())
		case ap == listen:
			bad(fmt.Sprintf("dns.upstreams[%d]", i), quote(u), "is the stub's own address: a forwarding loop")
		}
	}
	for i, ns := range d.NamespaceDomains {
		if !isLabel(ns) {
			bad(fmt.Sprintf("dns.namespaceDomains[%d]", i), quote(ns), "must be a namespace name")
		}
	}
	if !slices.Contains([]string{"auto", "systemd-resolved", "resolv.conf", "none"}, d.HostResolver) {
		bad("dns.hostResolver", quote(d.HostResolver), "must be one of auto, systemd-resolved, resolv.conf, none")
	}
	if d.HostResolver == "resolv.conf" && listen.IsValid() && listen.Port() != 53 {
		bad("dns.listenAddress", quote(d.ListenAddress), "must use port 53 with dns.hostResolver resolv.conf (resolv.conf cannot name a port)")
	}
	if d.Timeout.Duration < 100*time.Millisecond || d.Timeout.Duration > time.Minute {
		bad("dns.timeout", d.Timeout.Duration, "must be between 100ms and 1m")
	}
	if d.CacheSize < 0 || d.CacheSize > 10_000_000 {
		bad("dns.cacheSize", d.CacheSize, "must be between 0 and 10000000")
	}
	if d.ServeStale.Duration < 0 {
		bad("dns.serveStale", d.ServeStale.Duration, "must not be negative")
	}
	if d.MaxConcurrentPerClient < 1 {
		bad("dns.maxConcurrentPerClient", d.MaxConcurrentPerClient, "must be at least 1")
	}
	// Each forwarded question holds a socket (a file descriptor) and a
	// goroutine until it is answered or times out.
	if d.MaxConcurrentForwards < 1 || d.MaxConcurrentForwards > 100_000 {
		bad("dns.maxConcurrentForwards", d.MaxConcurrentForwards, "must be between 1 and 100000")
	}
}

// ParseUpstream parses a resolver address, ip or ip:port (port 53 when
// left out; IPv6 with a port in brackets).
func ParseUpstream(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, errors.New("must not carry an IPv6 zone")
		}
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("must be ip or ip:port, e.g. 192.0.2.53 or [2001:db8::53]:5353")
	}
	if ap.Port() == 0 || ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, errors.New("must name a resolver's address and a non-zero port")
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("must not carry an IPv6 zone")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// HostPath returns p inside HostRoot.
func (c *Config) HostPath(p string) string {
	return filepath.Join(c.HostRoot, p)
}

// checkLocalAddrPort accepts ip:port with a literal IP. With loopbackOnly the
// IP must be a loopback address; otherwise the unspecified address is refused
// too, so the agent never opens a listener on all addresses by default.
func checkLocalAddrPort(s string, loopbackOnly bool) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		host, _, splitErr := net.SplitHostPort(s)
		if splitErr == nil && host != "" && net.ParseIP(host) == nil {
			return errors.New("must use a literal IP address, not a host name")
		}
		return errors.New("must be ip:port, e.g. 127.0.0.1:10356")
	}
	if ap.Port() == 0 {
		return errors.New("port must not be 0")
	}
	if ap.Addr().IsUnspecified() {
		return errors.New("must not listen on all addresses; name one local address")
	}
	if loopbackOnly && !ap.Addr().IsLoopback() {
		return errors.New("must be a loopback address")
	}
	return nil
}

func isDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

// isLabel reports whether s is an RFC 1123 label.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// reservedRouteProtocols are route protocol numbers the kernel defines
// (include/uapi/linux/rtnetlink.h) or iproute2 names in rt_protos: routes
// carrying them belong to the kernel, the admin or a routing daemon, so the
// agent must never claim them as its own.
var reservedRouteProtocols = map[int]string{
	0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static",
	8: "gated", 9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted",
	14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived",
	42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip",
	192: "eigrp",
}

// CheckRouteProtocol reports whether p may mark the agent's routes: a
// route protocol number (1-255) that neither the kernel nor a well-known
// routing daemon uses.
func CheckRouteProtocol(p int) error {
	if p < 1 || p > 255 {
		return errors.New("must be a route protocol number from 5 to 255")
	}
	if name, ok := reservedRouteProtocols[p]; ok {
		return fmt.Errorf("is the route protocol of %s; pick an unused one such as %d", name, DefaultRouteProtocol)
	}
	return nil
}

// validateRoutes checks the routes section.
func (c *Config) validateRoutes(bad func(field string, value any, reason string)) {
	r := &c.Routes
	switch r.Mode {
	case RoutesNodes, RoutesGateway, RoutesNone:
	default:
		bad("routes.mode", quote(r.Mode), "must be one of nodes, gateway, none")
	}
	if err := CheckRouteProtocol(r.Protocol); err != nil {
		bad("routes.protocol", r.Protocol, err.Error())
	}
	switch {
	case r.Table < 1 || r.Table > 1<<32-1:
		bad("routes.table", r.Table, "must be a routing table number from 1 to 4294967295 (254 is main)")
	case r.Table == 255:
		bad("routes.table", r.Table, "is the kernel's local table")
	}
	if r.Mode != RoutesGateway {
		for _, f := range []struct {
			name string
			set  bool
		}{{"routes.cidrs", len(r.CIDRs) > 0}, {"routes.gateways", len(r.Gateways) > 0}, {"routes.device", r.Device != ""}} {
			if f.set {
				bad(f.name, "(set)", "only used with routes.mode: gateway")
			}
		}
		return
	}
	if len(r.CIDRs) == 0 {
		bad("routes.cidrs", "[]", "routes.mode: gateway needs at least one CIDR")
	}
	if len(r.Gateways) == 0 && r.Device == "" {
		bad("routes.gateways", "[]", "routes.mode: gateway needs gateways, a device or both")
	}
	if r.Device != "" && !isIfName(r.Device) {
		bad("routes.device", quote(r.Device), "must be an interface name (1 to 15 characters, no '/', ':' or spaces)")
	}
	families := map[bool]bool{} // is4 -> a gateway of that family exists
	seenGw := map[netip.Addr]bool{}
	for i, s := range r.Gateways {
		a, err := netip.ParseAddr(s)
		field := fmt.Sprintf("routes.gateways[%d]", i)
		switch {
		case err != nil || a.Zone() != "":
			bad(field, quote(s), "must be an IP address")
			continue
		case !a.IsGlobalUnicast() && !a.IsLinkLocalUnicast():
			bad(field, quote(s), "must be a unicast address")
			continue
		case a.Is6() && a.IsLinkLocalUnicast() && r.Device == "":
			bad(field, quote(s), "a link-local gateway needs routes.device")
			continue
		case seenGw[a.Unmap()]:
			bad(field, quote(s), "duplicate gateway")
			continue
		}
		seenGw[a.Unmap()] = true
		families[a.Unmap().Is4()] = true
	}
	seen := map[netip.Prefix]bool{}
	for i, s := range r.CIDRs {
		p, err := netip.ParsePrefix(s)
		field := fmt.Sprintf("routes.cidrs[%d]", i)
		switch {
		case err != nil || p.Masked() != p:
			bad(field, quote(s), "must be a CIDR such as 10.244.0.0/16 with no host bits")
		case p.Bits() == 0:
			bad(field, quote(s), "a default route is not the agent's to install")
		case seen[p]:
			bad(field, quote(s), "duplicate CIDR")
		case !families[p.Addr().Is4()] && r.Device == "" && len(r.Gateways) > 0:
			bad(field, quote(s), "no gateway of its family and no routes.device")
		}
		if err == nil {
			seen[p] = true
		}
	}
}

// isIfName reports whether s is a valid Linux interface name.
func isIfName(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n")
}
