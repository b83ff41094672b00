package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const minimal = `
apiVersion: bridge-agent.io/v1alpha1
kind: AgentConfiguration
kubeconfig: /etc/bridge-agent/kubeconfig
`

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	want := Default()
	want.Kubeconfig = "/etc/bridge-agent/kubeconfig"
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("defaults not applied (-want +got):\n%s", diff)
	}
	if c.Proxy.MinSyncPeriod.Duration != time.Second || c.ClusterDomain != "cluster.local" || c.HostRoot != "/" {
		t.Errorf("unexpected defaults: %+v", c)
	}
}

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(minimal + `
clusterDomain: corp.example
serviceCIDRs: [10.96.0.0/16, "fd00:96::/112"]
hostRoot: /tmp/root
healthzBindAddress: 127.0.0.1:9000
metricsBindAddress: "[::1]:9001"
scope:
  namespaces: [shop, billing]
  labelSelector: "tier in (web,api)"
  serviceProxyName: bridge
proxy:
  minSyncPeriod: 250ms
  syncPeriod: 1m
routes:
  mode: gateway
  protocol: 0x61
  table: 100
  cidrs: [10.244.0.0/16]
  gateways: [10.0.0.1, 10.0.0.2]
dns:
  listenAddress: 127.0.0.78:5353
logging:
  format: json
  verbosity: 4
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Proxy.MinSyncPeriod.Duration != 250*time.Millisecond || c.Proxy.SyncPeriod.Duration != time.Minute {
		t.Errorf("durations: %v %v", c.Proxy.MinSyncPeriod, c.Proxy.SyncPeriod)
	}
	if !slices.Equal(c.Scope.Namespaces, []string{"shop", "billing"}) || c.DNS.ListenAddress != "127.0.0.78:5353" {
		t.Errorf("fields: %+v", c)
	}
	if r := c.Routes; r.Mode != RoutesGateway || r.Protocol != 0x61 || r.Table != 100 || len(r.Gateways) != 2 {
		t.Errorf("routes: %+v", r)
	}
	if got := c.HostPath(c.StateDir); got != "/tmp/root/var/lib/bridge-agent" {
		t.Errorf("HostPath = %q", got)
	}
}

func TestParseErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":  minimal + "kubeconfg: /x\n",
		"wrong type":     minimal + "proxy: {syncPeriod: [1]}\n",
		"bad duration":   minimal + "proxy: {syncPeriod: soon}\n",
		"not yaml":       "apiVersion: [\n",
		"nested unknown": minimal + "dns: {listen: 127.0.0.1:53}\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(doc)); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

// TestValidateEachField breaks one field at a time and checks the error names
// exactly that field.
func TestValidateEachField(t *testing.T) {
	for _, tc := range []struct {
		field  string
		mutate func(*Config)
	}{
		{"apiVersion", func(c *Config) { c.APIVersion = "v1" }},
		{"kind", func(c *Config) { c.Kind = "KubeProxyConfiguration" }},
		{"kubeconfig", func(c *Config) { c.Kubeconfig = "" }},
		{"apiServer.url", func(c *Config) { c.APIServer = APIServer{URL: "https://x", TokenFile: "/t"} }},
		{"apiServer.url", func(c *Config) { c.Kubeconfig = ""; c.APIServer = APIServer{URL: "http://x", TokenFile: "/t"} }},
		{"apiServer.tokenFile", func(c *Config) { c.Kubeconfig = ""; c.APIServer = APIServer{URL: "https://x"} }},
		{"clusterDomain", func(c *Config) { c.ClusterDomain = "Bad_Domain" }},
		{"clusterDomain", func(c *Config) { c.ClusterDomain = "" }},
		{"serviceCIDRs[1]", func(c *Config) { c.ServiceCIDRs = []string{"10.96.0.0/12", "10.96.0.1/12"} }},
		{"serviceCIDRs[0]", func(c *Config) { c.ServiceCIDRs = []string{"nope"} }},
		{"hostRoot", func(c *Config) { c.HostRoot = "relative" }},
		{"stateDir", func(c *Config) { c.StateDir = "state" }},
		{"statusSocket", func(c *Config) { c.StatusSocket = "s.sock" }},
		{"healthzBindAddress", func(c *Config) { c.HealthzBindAddress = "0.0.0.0:10356" }},
		{"healthzBindAddress", func(c *Config) { c.HealthzBindAddress = "localhost:10356" }},
		{"metricsBindAddress", func(c *Config) { c.MetricsBindAddress = "127.0.0.1" }},
		{"metricsBindAddress", func(c *Config) { c.MetricsBindAddress = "127.0.0.1:0" }},
		{"dns.listenAddress", func(c *Config) { c.DNS.ListenAddress = "10.0.0.1:53" }},
		{"dns.listenAddress", func(c *Config) { c.DNS.ListenAddress = "[::]:53" }},
		{"dns.mode", func(c *Config) { c.DNS.Mode = "coredns" }},
		{"dns.ttl", func(c *Config) { c.DNS.TTL.Duration = 0 }},
		{"dns.ttl", func(c *Config) { c.DNS.TTL.Duration = 1500 * time.Millisecond }},
		{"dns.upstreams[1]", func(c *Config) { c.DNS.Upstreams = []string{"192.0.2.53", "dns.example"} }},
		{"dns.upstreams[0]", func(c *Config) { c.DNS.Upstreams = []string{"127.0.0.77:53"} }},
		{"dns.upstreams[0]", func(c *Config) { c.DNS.Upstreams = []string{"127.0.0.77"} }},
		{"dns.upstreams[0]", func(c *Config) { c.DNS.Upstreams = []string{"192.0.2.1:0"} }},
		{"dns.namespaceDomains[0]", func(c *Config) { c.DNS.NamespaceDomains = []string{"a.b"} }},
		{"dns.hostResolver", func(c *Config) { c.DNS.HostResolver = "networkmanager" }},
		{"routes.nodeRoutes.source", func(c *Config) { c.Routes.NodeRoutes.Source = "table" }},
		{"routes.nodeRoutes.namespace", func(c *Config) { c.Routes.NodeRoutes.Namespace = "Bridge_Agent" }},
		{"routes.nodeRoutes.name", func(c *Config) { c.Routes.NodeRoutes.Name = "a/b" }},
		{"routes.nodeRoutes.leaseDuration", func(c *Config) { c.Routes.NodeRoutes.LeaseDuration.Duration = time.Second }},
		{"routes.nodeRoutes.publish", func(c *Config) {
			c.Routes.NodeRoutes.Publish, c.Routes.NodeRoutes.Source = true, NodeRoutesWatch
		}},
		{"routes.nodeRoutes.publish", func(c *Config) { c.Routes.Mode = RoutesNone; c.Routes.NodeRoutes.Publish = true }},
		{"dns.listenAddress", func(c *Config) { c.DNS.HostResolver = "resolv.conf"; c.DNS.ListenAddress = "127.0.0.77:5353" }},
		{"dns.timeout", func(c *Config) { c.DNS.Timeout.Duration = time.Millisecond }},
		{"dns.cacheSize", func(c *Config) { c.DNS.CacheSize = -1 }},
		{"dns.serveStale", func(c *Config) { c.DNS.ServeStale.Duration = -time.Second }},
		{"dns.maxConcurrentPerClient", func(c *Config) { c.DNS.MaxConcurrentPerClient = 0 }},
		{"dns.maxConcurrentForwards", func(c *Config) { c.DNS.MaxConcurrentForwards = 0 }},
		{"dns.maxConcurrentForwards", func(c *Config) { c.DNS.MaxConcurrentForwards = 100_001 }},
		{"scope.namespaces[0]", func(c *Config) { c.Scope.Namespaces = []string{"Shop"} }},
		{"scope.labelSelector", func(c *Config) { c.Scope.LabelSelector = "a in (" }},
		{"proxy.minSyncPeriod", func(c *Config) { c.Proxy.MinSyncPeriod.Duration = -time.Second }},
		{"proxy.syncPeriod", func(c *Config) { c.Proxy.SyncPeriod.Duration = 0 }},
		{"proxy.syncPeriod", func(c *Config) { c.Proxy.SyncPeriod.Duration = 100 * time.Millisecond }},
		{"proxy.mode", func(c *Config) { c.Proxy.Mode = "ipvs" }},
		{"proxy.iptablesVariant", func(c *Config) { c.Proxy.IPTablesVariant = "xtables" }},
		{"proxy.masquerade", func(c *Config) { c.Proxy.Masquerade = "sometimes" }},
		{"routes.mode", func(c *Config) { c.Routes.Mode = "bgp" }},
		{"routes.protocol", func(c *Config) { c.Routes.Protocol = 0 }},
		{"routes.protocol", func(c *Config) { c.Routes.Protocol = 4 }},
		{"routes.protocol", func(c *Config) { c.Routes.Protocol = 12 }},
		{"routes.protocol", func(c *Config) { c.Routes.Protocol = 256 }},
		{"routes.table", func(c *Config) { c.Routes.Table = 0 }},
		{"routes.table", func(c *Config) { c.Routes.Table = 255 }},
		{"routes.table", func(c *Config) { c.Routes.Table = 1 << 32 }},
		{"routes.cidrs", func(c *Config) { c.Routes.CIDRs = []string{"10.244.0.0/16"} }},
		{"routes.gateways", func(c *Config) { c.Routes.Gateways = []string{"10.0.0.1"} }},
		{"routes.device", func(c *Config) { c.Routes.Device = "eth0" }},
		{"routes.cidrs", func(c *Config) { c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = nil }) }},
		{"routes.cidrs[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "10.244.0.1/16") })
		}},
		{"routes.cidrs[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "10.244.0.0/16") })
		}},
		{"routes.cidrs[1]", func(c *Config) { c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "0.0.0.0/0") }) }},
		{"routes.cidrs[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "fd00:244::/56") })
		}},
		{"routes.gateways", func(c *Config) { c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = nil }) }},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "gw.example") })
		}},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "10.0.0.1") })
		}},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "224.0.0.1") })
		}},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "fe80::1") })
		}},
		{"routes.device", func(c *Config) { c.Routes = gatewayRoutes(func(r *Routes) { r.Device = "a/b" }) }},
		{"routes.device", func(c *Config) { c.Routes = gatewayRoutes(func(r *Routes) { r.Device = "averyveryverylongname" }) }},
		{"logging.format", func(c *Config) { c.Logging.Format = "xml" }},
		{"logging.verbosity", func(c *Config) { c.Logging.Verbosity = 11 }},
		{"logging.journal", func(c *Config) { c.Logging.Journal = "yes" }},
		// Paths: escapes and directories that are not the agent's own.
		{"stateDir", func(c *Config) { c.StateDir = "/../../tmp/x" }},
		{"stateDir", func(c *Config) { c.StateDir = "/" }},
		{"stateDir", func(c *Config) { c.StateDir = "/etc" }},
		{"stateDir", func(c *Config) { c.StateDir = "/var/lib" }},
		{"stateDir", func(c *Config) { c.StateDir = "/var/lib/dpkg" }},
		{"stateDir", func(c *Config) { c.StateDir = "/var/lib/bridge-agent/../dpkg" }},
		{"stateDir", func(c *Config) { c.StateDir = "/var/lib/bridge-agent/" }},
		{"stateDir", func(c *Config) { c.StateDir = "/tmp/bridge-agent" }},
		{"statusSocket", func(c *Config) { c.StatusSocket = "/run" }},
		{"statusSocket", func(c *Config) { c.StatusSocket = "/run/bridge-agent" }},
		{"statusSocket", func(c *Config) { c.StatusSocket = "/run/status.sock" }},
		{"statusSocket", func(c *Config) { c.StatusSocket = "/etc/bridge-agent/status.sock" }},
		{"statusSocket", func(c *Config) { c.StatusSocket = "/run/bridge-agent/../systemd/notify" }},
		{"hostRoot", func(c *Config) { c.HostRoot = "/srv/root/../x" }},
		{"hostRoot", func(c *Config) { c.HostRoot = "/srv/root/" }},
		// Listeners: every spelling of "all addresses".
		{"metricsBindAddress", func(c *Config) { c.MetricsBindAddress = "[::ffff:0.0.0.0]:10357" }},
		{"metricsBindAddress", func(c *Config) { c.MetricsBindAddress = "[::%eth0]:10357" }},
		{"metricsBindAddress", func(c *Config) { c.MetricsBindAddress = ":10357" }},
		{"healthzBindAddress", func(c *Config) { c.HealthzBindAddress = "[::]:10356" }},
		{"dns.listenAddress", func(c *Config) { c.DNS.ListenAddress = "[::ffff:0.0.0.0]:53" }},
		{"dns.listenAddress", func(c *Config) { c.DNS.ListenAddress = ":53" }},
		{"dns.upstreams[0]", func(c *Config) { c.DNS.Upstreams = []string{"0.0.0.0"} }},
		{"dns.upstreams[0]", func(c *Config) { c.DNS.Upstreams = []string{"[::ffff:0.0.0.0]:53"} }},
		{"dns.upstreams[0]", func(c *Config) { c.DNS.Upstreams = []string{"[::ffff:127.0.0.77]:53"} }},
		// Bounds.
		{"proxy.syncPeriod", func(c *Config) { c.Proxy.MinSyncPeriod.Duration = 0; c.Proxy.SyncPeriod.Duration = time.Nanosecond }},
		{"proxy.syncPeriod", func(c *Config) { c.Proxy.SyncPeriod.Duration = 25 * time.Hour }},
		{"proxy.minSyncPeriod", func(c *Config) { c.Proxy.MinSyncPeriod.Duration = 2 * time.Minute }},
		{"dns.timeout", func(c *Config) { c.DNS.Timeout.Duration = time.Hour }},
		{"dns.cacheSize", func(c *Config) { c.DNS.CacheSize = 1 << 40 }},
		{"dns.serveStale", func(c *Config) { c.DNS.ServeStale.Duration = 1000 * time.Hour }},
		{"dns.maxConcurrentPerClient", func(c *Config) { c.DNS.MaxConcurrentPerClient = 1 << 30 }},
		{"dns.upstreams", func(c *Config) {
			for i := range 17 {
				c.DNS.Upstreams = append(c.DNS.Upstreams, fmt.Sprintf("192.0.2.%d", i+1))
			}
		}},
		{"dns.namespaceDomains", func(c *Config) {
			for i := range 257 {
				c.DNS.NamespaceDomains = append(c.DNS.NamespaceDomains, fmt.Sprintf("ns%d", i))
			}
		}},
	} {
		t.Run(tc.field, func(t *testing.T) { checkValidation(t, tc.mutate, tc.field) })
	}
}

// checkValidation validates the default configuration (with a kubeconfig)
// changed by mutate: it must pass when field is "", else fail naming
// exactly field.
func checkValidation(t *testing.T, mutate func(*Config), field string) {
	t.Helper()
	c := Default()
	c.Kubeconfig = "/k"
	mutate(c)
	err := c.Validate()
	if field == "" {
		if err != nil {
			t.Fatalf("valid configuration refused: %v", err)
		}
		return
	}
	var verr ValidationError
	if !asValidation(err, &verr) {
		t.Fatalf("want a ValidationError, got %v", err)
	}
	if got := verr.Fields(); !slices.Equal(got, []string{field}) {
		t.Errorf("fields = %v, want [%s] (%v)", got, field, err)
	}
	if !strings.Contains(err.Error(), field+":") {
		t.Errorf("message does not name the field: %v", err)
	}
}

// gatewayRoutes returns a valid gateway-mode routes section, changed by
// mutate.
func gatewayRoutes(mutate func(*Routes)) Routes {
	r := Routes{
		Mode: RoutesGateway, Protocol: DefaultRouteProtocol, Table: DefaultRouteTable,
		CIDRs: []string{"10.244.0.0/16"}, Gateways: []string{"10.0.0.1"},
	}
	mutate(&r)
	return r
}

func TestValidateRoutesGateway(t *testing.T) {
	for name, r := range map[string]Routes{
		"ecmp": gatewayRoutes(func(r *Routes) { r.Gateways = []string{"10.0.0.1", "10.0.0.2"} }),
		"dual-stack": gatewayRoutes(func(r *Routes) {
			r.CIDRs = []string{"10.244.0.0/16", "fd00:244::/56"}
			r.Gateways = []string{"10.0.0.1", "fd00::1"}
		}),
		"device only":   gatewayRoutes(func(r *Routes) { r.Gateways = nil; r.Device = "wg0" }),
		"v6 via device": gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "fd00:244::/56"); r.Device = "eth1" }),
		"link-local and device": gatewayRoutes(func(r *Routes) {
			r.CIDRs = []string{"fd00:244::/56"}
			r.Gateways = []string{"fe80::1"}
			r.Device = "eth1"
		}),
		"other table": gatewayRoutes(func(r *Routes) { r.Table = 100; r.Protocol = 0x61 }),
	} {
		t.Run(name, func(t *testing.T) {
			c := Default()
			c.Kubeconfig = "/k"
			c.Routes = r
			if err := c.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestValidateReportsAllAtOnce(t *testing.T) {
	c := Default()
	c.ClusterDomain = "-"
	c.Logging.Format = "yaml"
	c.DNS.ListenAddress = "x"
	c.StateDir = "/etc"
	c.MetricsBindAddress = "[::ffff:0.0.0.0]:10357"
	c.Proxy.SyncPeriod.Duration = time.Nanosecond
	c.DNS.CacheSize = -1
	c.DNS.ServeStale.Duration = -time.Second
	err := c.Validate()
	var verr ValidationError
	if !asValidation(err, &verr) {
		t.Fatalf("got %v", err)
	}
	want := []string{"kubeconfig", "clusterDomain", "stateDir", "metricsBindAddress", "dns.listenAddress",
		"dns.cacheSize", "dns.serveStale", "proxy.syncPeriod", "logging.format"}
	if diff := cmp.Diff(want, verr.Fields()); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

func TestLoadNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte("kind: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("error should name the file: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing file: %v", err)
	}
}

func asValidation(err error, out *ValidationError) bool {
	v, ok := err.(ValidationError)
	if ok {
		*out = v
	}
	return ok
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.53":            "192.0.2.53:53",
		"192.0.2.53:5353":       "192.0.2.53:5353",
		"2001:db8::53":          "[2001:db8::53]:53",
		"[2001:db8::53]:5353":   "[2001:db8::53]:5353",
		"::ffff:192.0.2.1":      "192.0.2.1:53",
		"dns.example":           "error",
		"0.0.0.0:53":            "error",
		"[fe80::1%eth0]:53":     "error",
		"fe80::1%eth0":          "error",
		"192.0.2.53:99999":      "error",
		"":                      "error",
		"[2001:db8::53]":        "error",
		"192.0.2.53:53:53":      "error",
		"2001:db8::53:5353:1:2": "[2001:db8::53:5353:1:2]:53",
	} {
		ap, err := ParseUpstream(in)
		got := "error"
		if err == nil {
			got = ap.String()
		}
		if got != want {
			t.Errorf("ParseUpstream(%q) = %s (err %v), want %s", in, got, err, want)
		}
	}
}

// TestCheckListenAddress: every spelling of "all addresses" is refused,
// whatever the mapping or zone; one named local address is accepted.
func TestCheckListenAddress(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		loopback bool
		want     string // "" accepted, else a part of the error
	}{
		{"127.0.0.1:10356", false, ""},
		{"[::1]:10357", false, ""},
		{"192.0.2.10:10357", false, ""},
		{"[fe80::1%eth0]:10357", false, ""},
		{"[::ffff:127.0.0.1]:53", true, ""},
		{"[::1%lo]:53", true, ""},
		{"0.0.0.0:10357", false, "all addresses"},
		{"[::]:10357", false, "all addresses"},
		{"[::ffff:0.0.0.0]:10357", false, "::ffff:0.0.0.0 is 0.0.0.0"},
		{"[::%eth0]:10357", false, "all addresses"},
		{"[::ffff:0.0.0.0%eth0]:10357", false, "all addresses"},
		{":10357", false, "all addresses"},
		{"[]:10357", false, "all addresses"},
		{"localhost:10357", false, "literal IP"},
		{"127.0.0.1", false, "ip:port"},
		{"127.0.0.1:0", false, "port must not be 0"},
		{"[ff02::1]:10357", false, "unicast"},
		{"10.0.0.1:53", true, "loopback"},
		{"[::ffff:10.0.0.1]:53", true, "loopback"},
		{"[::]:53", true, "all addresses"},
	} {
		err := CheckListenAddress(tc.addr, tc.loopback)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckListenAddress(%q, %v) = %v, want accepted", tc.addr, tc.loopback, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckListenAddress(%q, %v) = %v, want an error with %q", tc.addr, tc.loopback, err, tc.want)
		}
	}
}

// TestCheckOwnPath: only canonical paths inside a directory of the
// agent's own under /var/lib or /run.
func TestCheckOwnPath(t *testing.T) {
	for _, tc := range []struct {
		path  string
		dirOK bool
		own   string // "" refused
	}{
		{"/var/lib/bridge-agent", true, "/var/lib/bridge-agent"},
		{"/var/lib/bridge-agent/state", true, "/var/lib/bridge-agent"},
		{"/var/lib/bridge-agent-test", true, "/var/lib/bridge-agent-test"},
		{"/run/bridge-agent", true, "/run/bridge-agent"},
		{"/run/bridge-agent/status.sock", false, "/run/bridge-agent"},
		{"/var/lib/bridge-agent/status.sock", false, "/var/lib/bridge-agent"},
		{"/run/bridge-agent", false, ""},
		{"/run/status.sock", false, ""},
		{"/", true, ""},
		{"/etc", true, ""},
		{"/etc/bridge-agent", true, ""},
		{"/var/lib", true, ""},
		{"/var/lib/", true, ""},
		{"/run", true, ""},
		{"/var/lib/dpkg", true, ""},
		{"/var/lib/bridge-agentx", true, ""},
		{"/var/lib/bridge-agent/..", true, ""},
		{"/../../tmp/x", true, ""},
		{"/var/lib/../lib/bridge-agent", true, ""},
		{"/var/lib//bridge-agent", true, ""},
		{"/var/lib/./bridge-agent", true, ""},
		{"var/lib/bridge-agent", true, ""},
		{"/tmp/bridge-agent", true, ""},
		{"/var/run/bridge-agent", true, ""},
	} {
		own, err := CheckOwnPath(tc.path, tc.dirOK)
		if own != tc.own || (tc.own == "") != (err != nil) {
			t.Errorf("CheckOwnPath(%q, %v) = %q, %v; want %q", tc.path, tc.dirOK, own, err, tc.own)
		}
	}
}

func TestParseOneDocument(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		ok        bool
	}{
		{"one", minimal, true},
		{"leading separator", "---\n" + minimal, true},
		{"trailing separator", minimal + "---\n", true},
		{"trailing comment document", minimal + "---\n# nothing here\n", true},
		{"second document", minimal + "---\n" + minimal, false},
		{"second document overriding", minimal + "---\nstateDir: /\n", false},
		{"second document after empty", "---\n" + minimal + "---\n---\nkind: X\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if tc.ok && err != nil {
				t.Errorf("Parse: %v", err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "more than one YAML document")) {
				t.Errorf("Parse = %v, want the second document refused", err)
			}
		})
	}
}

func TestValidatePaths(t *testing.T) {
	c := Default()
	c.Proxy.SyncPeriod.Duration = time.Nanosecond // not a path: ignored
	if err := c.ValidatePaths(); err != nil {
		t.Errorf("default paths: %v", err)
	}
	c.StateDir, c.StatusSocket, c.HostRoot = "/", "/etc/x.sock", "rel"
	var verr ValidationError
	if !asValidation(c.ValidatePaths(), &verr) {
		t.Fatalf("want a ValidationError")
	}
	if diff := cmp.Diff([]string{"hostRoot", "stateDir", "statusSocket"}, verr.Fields()); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}
