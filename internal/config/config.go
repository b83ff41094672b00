// Package config holds bridge-agent's configuration: one versioned YAML
// document (apiVersion + kind, like KubeProxyConfiguration), its defaults, and
// validation that reports every bad field at once, each by its YAML path.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/internal/hostguard"
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
	// Member configures the heartbeat and token renewal of a host with
	// its own identity (see `bridge-agent join`).
	Member Member `json:"member,omitempty"`
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
	// MinPrefixLength is the shortest prefix a Node's pod CIDR may have,
	// per family (default ipv4: 16, ipv6: 48; 0 is the default): a Node
	// claiming a broader range, such as 0.0.0.0/1 or 10.0.0.0/8, gets no
	// route (nodes mode).
	MinPrefixLength PrefixLengths `json:"minPrefixLength,omitzero"`
	// AllowedCIDRs are the ranges every Node's pod CIDR must lie in, e.g.
	// the cluster's pod range [10.244.0.0/16] (nodes mode); empty: the
	// private ranges (10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12,
	// 192.168.0.0/16, fc00::/7). A public pod range must be listed here.
	AllowedCIDRs []string `json:"allowedCIDRs,omitempty"`
	// NodeRoutes says where nodes mode learns the Nodes' pod CIDRs and
	// InternalIPs. gateway and none modes watch no Node at all.
	NodeRoutes NodeRoutes `json:"nodeRoutes,omitzero"`
}

// Node route sources (routes.nodeRoutes.source).
const (
	// NodeRoutesShared reads the shared node route table (a ConfigMap one
	// elected agent writes) and watches Nodes only while it is absent or
	// stale.
	NodeRoutesShared = "shared"
	// NodeRoutesWatch always watches every Node.
	NodeRoutesWatch = "watch"
)

// WithDefaults returns n with its empty fields set to their defaults.
func (n NodeRoutes) WithDefaults() NodeRoutes {
	d := Default().Routes.NodeRoutes
	if n.Source == "" {
		n.Source = d.Source
	}
	if n.Namespace == "" {
		n.Namespace = d.Namespace
	}
	if n.Name == "" {
		n.Name = d.Name
	}
	if n.LeaseDuration.Duration == 0 {
		n.LeaseDuration = d.LeaseDuration
	}
	return n
}

// NodeRoutes configures the shared node route table of nodes mode: one
// ConfigMap with every Node's name, pod CIDRs, InternalIPs and zone,
// written by one agent elected on a Lease of the same name and rewritten
// only when a route changes, so that the other agents need not receive
// every Node heartbeat.
type NodeRoutes struct {
	// Source is shared (default) or watch. shared reads the table, and
	// watches Nodes while the table is absent, invalid or stale (no
	// publisher renews its Lease), which is also what happens when no
	// agent publishes. watch always watches every Node.
	Source string `json:"source,omitempty"`
	// Namespace of the ConfigMap and the Lease (default bridge-agent).
	Namespace string `json:"namespace,omitempty"`
	// Name of the ConfigMap and the Lease (default
	// bridge-agent-node-routes).
	Name string `json:"name,omitempty"`
	// Publish makes this agent a candidate to publish the table: while it
	// holds the Lease it watches Nodes and writes the ConfigMap. It needs
	// the write access of deploy/node-routes-writer.yaml; a few agents
	// (two or three, for failover) are enough.
	Publish bool `json:"publish,omitempty"`
	// LeaseDuration is how long the publisher's Lease lasts without a
	// renewal (default 60s; it renews every quarter of that). Readers read
	// the Lease as often and fall back to watching Nodes some three to
	// four periods after the last renewal they saw (a random part each, so
	// that a fleet does not list the Nodes all at once); a publisher that
	// restarts or hands over within that time causes no fallback.
	LeaseDuration metav1.Duration `json:"leaseDuration,omitzero"`
}

// PrefixLengths is a prefix length per family.
type PrefixLengths struct {
	IPv4 int `json:"ipv4,omitempty"`
	IPv6 int `json:"ipv6,omitempty"`
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
	// systemd-resolved (per-link settings over D-Bus on the agent's link,
	// routing the cluster's names only), resolv.conf (a managed /etc/resolv.conf; the original is
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
	// all (default 256), shared fairly among clients; over it a question
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
	// Journal is "auto", "always" or "never" (default auto): whether each
	// line starts with its syslog priority (<3> error ... <7> debug) and
	// leaves out the time, for the systemd journal. auto does so when
	// stderr is the journal (systemd's JOURNAL_STREAM names it).
	Journal string `json:"journal,omitempty"`
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
			// Nothing broader than a /16 or a /48 from a Node.
			MinPrefixLength: PrefixLengths{IPv4: 16, IPv6: 48},
			NodeRoutes: NodeRoutes{
				Source:    NodeRoutesShared,
				Namespace: "bridge-agent",
				Name:      "bridge-agent-node-routes",

				LeaseDuration: metav1.Duration{Duration: time.Minute},
			},
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
			MaxConcurrentForwards:  256,
		},
		Logging: Logging{Format: "text", Journal: "auto"},
		Member:  defaultMember(),
	}
}

// Parse reads a configuration document over the defaults. Unknown fields are
// errors, so a typo never silently falls back to a default; every unknown
// field and every value of the wrong type is reported at once, by path and
// line (a ParseError).
func Parse(data []byte) (*Config, error) {
	if err := checkOneDocument(data); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if err := checkFields(data); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	c := Default()
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	return c, nil
}

// checkOneDocument refuses a file with more than one YAML document that
// holds something: the decoder reads only the first, so a second one would
// be silently ignored. Empty documents (a trailing "---", comments) are fine.
func checkOneDocument(data []byte) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	seen := 0
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var v any
		if err := yaml.Unmarshal(doc, &v); err != nil {
			return err
		}
		if v == nil {
			continue
		}
		seen++
		if seen > 1 {
			return errors.New("the file holds more than one YAML document (a second \"---\"); the configuration is one document")
		}
	}
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
	c.validatePaths(bad)
	for _, f := range []struct{ name, value string }{
		{"healthzBindAddress", c.HealthzBindAddress},
		{"metricsBindAddress", c.MetricsBindAddress},
	} {
		if f.value == "" {
			continue
		}
		if err := CheckListenAddress(f.value, false); err != nil {
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
	minSyncOK := checkDuration(bad, "proxy.minSyncPeriod", c.Proxy.MinSyncPeriod.Duration, minMinSyncPeriod, maxMinSyncPeriod)
	if checkDuration(bad, "proxy.syncPeriod", c.Proxy.SyncPeriod.Duration, minSyncPeriod, maxSyncPeriod) &&
		minSyncOK && c.Proxy.SyncPeriod.Duration < c.Proxy.MinSyncPeriod.Duration {
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
	c.validateGuard(bad)
	c.validateMember(bad)
	if c.Logging.Format != "text" && c.Logging.Format != "json" {
		bad("logging.format", quote(c.Logging.Format), `must be "text" or "json"`)
	}
	switch c.Logging.Journal {
	case "auto", "always", "never":
	default:
		bad("logging.journal", quote(c.Logging.Journal), `must be "auto", "always" or "never"`)
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
	if err := CheckListenAddress(d.ListenAddress, true); err != nil {
		bad("dns.listenAddress", quote(d.ListenAddress), err.Error())
	}
	if d.TTL.Duration < time.Second || d.TTL.Duration > time.Hour || d.TTL.Duration%time.Second != 0 {
		bad("dns.ttl", d.TTL.Duration, "must be whole seconds between 1s and 1h")
	}
	listen, _ := netip.ParseAddrPort(d.ListenAddress)
	listen = netip.AddrPortFrom(listen.Addr().Unmap().WithZone(""), listen.Port())
	if len(d.Upstreams) > maxUpstreams {
		bad("dns.upstreams", len(d.Upstreams), fmt.Sprintf("at most %d upstream resolvers", maxUpstreams))
	}
	for i, u := range d.Upstreams {
		ap, err := ParseUpstream(u)
		switch {
		case err != nil:
			bad(fmt.Sprintf("dns.upstreams[%d]", i), quote(u), err.Error())
		case ap == listen:
			bad(fmt.Sprintf("dns.upstreams[%d]", i), quote(u), "is the stub's own address: a forwarding loop")
		}
	}
	if len(d.NamespaceDomains) > maxNamespaceDomains {
		bad("dns.namespaceDomains", len(d.NamespaceDomains), fmt.Sprintf("at most %d namespaces", maxNamespaceDomains))
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
	checkDuration(bad, "dns.timeout", d.Timeout.Duration, minDNSTimeout, maxDNSTimeout)
	checkInt(bad, "dns.cacheSize", d.CacheSize, 0, maxCacheSize)
	checkDuration(bad, "dns.serveStale", d.ServeStale.Duration, 0, maxServeStale)
	checkInt(bad, "dns.maxConcurrentPerClient", d.MaxConcurrentPerClient, 1, maxConcurrentPerClient)
	// Each forwarded question holds a socket (a file descriptor) and a
	// goroutine until it is answered or times out.
	checkInt(bad, "dns.maxConcurrentForwards", d.MaxConcurrentForwards, 1, maxConcurrentForwards)
}

// Bounds of the durations and limits. Below the minima the agent would
// spend its host's CPU on itself (a 1ns sync period is a busy loop); above
// the maxima it would hold memory or stale state no host needs.
const (
	// minMinSyncPeriod 0 batches nothing, as kube-proxy allows; a minute
	// is the most a change should wait.
	minMinSyncPeriod = 0
	maxMinSyncPeriod = time.Minute
	// Every sync period each consumer checks what it owns: at least a
	// second apart, and at least hourly so tampering is repaired.
	minSyncPeriod = time.Second
	maxSyncPeriod = time.Hour
	minDNSTimeout = 100 * time.Millisecond
	maxDNSTimeout = 30 * time.Second
	// maxCacheSize entries of forwarded answers are a few hundred MiB.
	maxCacheSize = 1_000_000
	// maxServeStale is RFC 8767's upper suggestion for the stale timer
	// (1 to 3 days).
	maxServeStale          = 72 * time.Hour
	maxConcurrentPerClient = 10_000
	maxConcurrentForwards  = 100_000
	maxUpstreams           = 16
	maxNamespaceDomains    = 256
)

// checkDuration reports field unless lo <= d <= hi, and whether it was in
// range.
func checkDuration(bad func(field string, value any, reason string), field string, d, lo, hi time.Duration) bool {
	if d < lo || d > hi {
		bad(field, d, fmt.Sprintf("must be between %v and %v", lo, hi))
		return false
	}
	return true
}

// checkInt reports field unless lo <= n <= hi.
func checkInt(bad func(field string, value any, reason string), field string, n, lo, hi int) {
	if n < lo || n > hi {
		bad(field, n, fmt.Sprintf("must be between %d and %d", lo, hi))
	}
}

// ParseUpstream parses a resolver address, ip or ip:port (port 53 when
// left out; IPv6 with a port in brackets).
func ParseUpstream(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if a, aerr := netip.ParseAddr(s); aerr == nil {
		ap, err = netip.AddrPortFrom(a, 53), nil
	}
	if err != nil {
		return netip.AddrPort{}, errors.New("must be ip or ip:port, e.g. 192.0.2.53 or [2001:db8::53]:5353")
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("must not carry an IPv6 zone")
	}
	a := ap.Addr().Unmap()
	if ap.Port() == 0 || a.IsUnspecified() || a.IsMulticast() {
		return netip.AddrPort{}, errors.New("must name a resolver's address and a non-zero port")
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// HostPath returns p inside HostRoot.
func (c *Config) HostPath(p string) string {
	return filepath.Join(c.HostRoot, p)
}

// CheckListenAddress checks a listen address: ip:port with a literal IP and
// a port. The IP is unmapped (::ffff:0.0.0.0 is 0.0.0.0) and stripped of its
// zone before the checks, so no spelling of "all addresses" (0.0.0.0, [::],
// [::ffff:0.0.0.0], [::%eth0], an empty host) gets through: the agent never
// listens on every address of its host. With loopbackOnly the IP must be a
// loopback address.
func CheckListenAddress(s string, loopbackOnly bool) error {
	host, _, splitErr := net.SplitHostPort(s)
	if splitErr == nil && host == "" {
		return errors.New("must not listen on all addresses (no host given); name one local address, e.g. 127.0.0.1:10356")
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if splitErr == nil {
			if _, aerr := netip.ParseAddr(host); aerr != nil {
				return errors.New("must use a literal IP address, not a host name")
			}
		}
		return errors.New("must be ip:port, e.g. 127.0.0.1:10356")
	}
	if ap.Port() == 0 {
		return errors.New("port must not be 0")
	}
	a := ap.Addr().Unmap().WithZone("")
	if a.IsUnspecified() {
		if a != ap.Addr() {
			return fmt.Errorf("must not listen on all addresses (%s is %s); name one local address", ap.Addr(), a)
		}
		return errors.New("must not listen on all addresses; name one local address")
	}
	if a.IsMulticast() {
		return errors.New("must be a unicast address of this host")
	}
	if loopbackOnly && !a.IsLoopback() {
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
	nr := &r.NodeRoutes
	switch nr.Source {
	case "", NodeRoutesShared, NodeRoutesWatch:
	default:
		bad("routes.nodeRoutes.source", quote(nr.Source), "must be shared or watch")
	}
	if errs := validation.IsDNS1123Label(nr.Namespace); nr.Namespace != "" && len(errs) > 0 {
		bad("routes.nodeRoutes.namespace", quote(nr.Namespace), "must be a namespace name: "+strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(nr.Name); nr.Name != "" && len(errs) > 0 {
		bad("routes.nodeRoutes.name", quote(nr.Name), "must be a ConfigMap and Lease name: "+strings.Join(errs, "; "))
	}
	if d := nr.LeaseDuration.Duration; d != 0 && (d < 4*time.Second || d > time.Hour) {
		bad("routes.nodeRoutes.leaseDuration", nr.LeaseDuration.Duration.String(), "must be from 4s to 1h (default 1m)")
	}
	if nr.Publish && (r.Mode != RoutesNodes || nr.Source == NodeRoutesWatch) {
		bad("routes.nodeRoutes.publish", true, "only used with routes.mode: nodes and routes.nodeRoutes.source: shared")
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

// validateGuard checks what the host guard takes from the configuration:
// the pod CIDR limits, and that no configured range or next hop lies in a
// special range (loopback, link-local and cloud metadata, multicast, ...;
// see hostguard.Special). What depends on the host (its own networks,
// gateways and resolvers) is the guard's to check at run time.
func (c *Config) validateGuard(bad func(field string, value any, reason string)) {
	r := &c.Routes
	if l := r.MinPrefixLength.IPv4; l < 0 || l > 32 {
		bad("routes.minPrefixLength.ipv4", l, "must be a prefix length from 1 to 32 (0: the default, 16)")
	}
	if l := r.MinPrefixLength.IPv6; l < 0 || l > 128 {
		bad("routes.minPrefixLength.ipv6", l, "must be a prefix length from 1 to 128 (0: the default, 48)")
	}
	special := func(field, s string) {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p || p.Bits() == 0 {
			return // reported where the field is parsed
		}
		if ref := hostguard.SpecialPrefix(p); ref != nil {
			bad(field, quote(s), "must not overlap a special range: "+ref.Detail)
		}
	}
	for i, s := range r.AllowedCIDRs {
		field := fmt.Sprintf("routes.allowedCIDRs[%d]", i)
		if p, err := netip.ParsePrefix(s); err != nil || p.Masked() != p {
			bad(field, quote(s), "must be a CIDR such as 10.244.0.0/16 with no host bits")
			continue
		}
		special(field, s)
	}
	if len(r.AllowedCIDRs) > 0 && r.Mode != RoutesNodes {
		bad("routes.allowedCIDRs", "(set)", "only used with routes.mode: nodes")
	}
	for i, s := range c.ServiceCIDRs {
		special(fmt.Sprintf("serviceCIDRs[%d]", i), s)
	}
	if r.Mode != RoutesGateway {
		return
	}
	for i, s := range r.CIDRs {
		special(fmt.Sprintf("routes.cidrs[%d]", i), s)
	}
	for i, s := range r.Gateways {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || !(a.IsGlobalUnicast() || a.IsLinkLocalUnicast()) ||
			(a.Is6() && a.IsLinkLocalUnicast() && r.Device == "") {
			continue // reported by validateRoutes
		}
		if ref := hostguard.SpecialNexthop(a, r.Device != ""); ref != nil {
			bad(fmt.Sprintf("routes.gateways[%d]", i), quote(s), "must not be in a special range: "+ref.Detail)
		}
	}
}

// ParsedServiceCIDRs returns serviceCIDRs as prefixes, skipping what does
// not parse (Validate reports it).
func (c *Config) ParsedServiceCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.ServiceCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// isIfName reports whether s is a valid Linux interface name.
func isIfName(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n")
}
