package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/dnsstub"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
)

// Options are what a doctor run starts from.
type Options struct {
	// ConfigPath names the configuration file in messages.
	ConfigPath string
	// Config is the loaded configuration; ConfigErr why it could not be
	// loaded (then most checks are skipped).
	Config    *config.Config
	ConfigErr error
	// Status is the running agent's status; StatusErr why it could not be
	// read (the agent does not run): the checks of its live view are
	// skipped then, saying so.
	Status    *daemon.Status
	StatusErr error
	// Kernel answers the routing questions (nil: this network namespace's
	// kernel over netlink).
	Kernel Kernel
	// Now is the time the expiry is judged at (zero: time.Now()).
	Now time.Time
}

// Run runs every check and returns the report.
func Run(ctx context.Context, o Options) *Report {
	if o.Kernel == nil {
		o.Kernel = NetlinkKernel{}
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	r := &Report{}
	cfg := o.Config
	if cfg == nil && o.ConfigErr == nil {
		o.ConfigErr = fmt.Errorf("no configuration")
	}
	if o.ConfigErr == nil {
		o.ConfigErr = cfg.Validate()
	}
	if o.ConfigErr != nil {
		r.Agent = "unknown"
		fix := "correct the configuration as the messages say (every problem is listed, with its path)"
		if errors.Is(o.ConfigErr, os.ErrNotExist) {
			fix = "name the agent's configuration with --config (the package installs " + config.DefaultPath + ")"
		}
		r.add(Check{Name: "configuration " + o.ConfigPath, Verdict: Fail, Detail: o.ConfigErr.Error(), Fix: fix})
		r.add(Check{Name: "everything else", Verdict: Skip, Detail: "needs a valid configuration"})
		return r
	}
	r.add(Check{Name: "configuration " + o.ConfigPath, Verdict: OK, Detail: "loads and validates"})

	st := o.Status
	if st != nil {
		r.Agent = fmt.Sprintf("running (pid %d, version %s)", st.PID, st.Version)
		r.add(agentCheck(st, o.Now))
		r.add(refusalsCheck(st))
	} else {
		r.Agent = fmt.Sprintf("not running (%v): the checks of its live view (pod ranges, endpoints, the stub) are skipped", o.StatusErr)
	}

	rc, err := cluster.RESTConfig(cluster.ClientOptions{
		Kubeconfig: cfg.Kubeconfig, URL: cfg.APIServer.URL, TokenFile: cfg.APIServer.TokenFile, CAFile: cfg.APIServer.CAFile,
		UserAgent: "bridge-agent-doctor",
	})
	switch {
	case err != nil:
		r.add(Check{Name: "credentials", Verdict: Fail, Detail: err.Error(),
			Fix: "write the kubeconfig: bridge-agent kubeconfig --server URL --token-file token --ca-file ca.crt -o /etc/bridge-agent/kubeconfig"})
	case rc.Host == "":
		r.add(Check{Name: "credentials", Verdict: Fail, Detail: "the kubeconfig names no API server", Fix: "write the kubeconfig with bridge-agent kubeconfig --server URL ..."})
	default:
		for _, c := range CredentialChecks(ctx, rc, o.Now) {
			r.add(c)
		}
	}

	r.add(backendCheck(ctx, cfg, st))
	routeChecks(r, o.Kernel, cfg, st)
	dnsChecks(ctx, r, cfg, st)
	return r
}

// agentCheck judges what the running agent says of itself.
func agentCheck(st *daemon.Status, now time.Time) Check {
	ch := Check{Name: "agent"}
	switch {
	case st.LastSync.Error != "":
		ch.Verdict, ch.Detail = Fail, "the last sync failed: "+st.LastSync.Error
		ch.Fix = "see journalctl -u bridge-agent -p warning and bridge-agent status"
	case st.Degraded:
		ch.Verdict, ch.Detail = Warn, "serving the saved snapshot: the API server cannot be reached ("+st.APIServer.LastError+")"
		ch.Fix = "see the API server check below"
	case !st.Ready:
		ch.Verdict, ch.Detail = Fail, "not ready: "+orNone(st.APIServer.LastError)
		ch.Fix = "see the API server check below"
	case st.APIServer.LastError != "":
		ch.Verdict = Warn
		ch.Detail = fmt.Sprintf("ready, but the API server is unreachable since %s (%s): serving the last rules", st.APIServer.LastErrorTime.Format(time.TimeOnly), st.APIServer.LastError)
		ch.Fix = "see the API server check below"
	default:
		ch.Verdict = OK
		ch.Detail = fmt.Sprintf("ready; last sync %s ago", now.Sub(st.LastSync.Time).Round(time.Second))
	}
	return ch
}

// refusalsCheck reports what the agent refused of the cluster: routes it
// cannot install (conflicts, Nodes off-link, ranges the host guard
// refuses) and Service ranges and ClusterIPs that collide with this host.
func refusalsCheck(st *daemon.Status) Check {
	ch := Check{Name: "refused routes and ClusterIPs"}
	var items []string
	if rs := RoutesDetails(st); rs != nil {
		for _, p := range rs.Problems {
			items = append(items, "route "+p.String())
		}
	}
	if g := st.Guard; g != nil {
		for _, c := range g.RefusedServiceCIDRs {
			items = append(items, fmt.Sprintf("Service range %s (%s: %s)", c.CIDR, c.Reason, c.Detail))
		}
		for _, c := range g.RefusedClusterIPs {
			items = append(items, fmt.Sprintf("ClusterIP %s of %s (%s: %s)", c.IP, c.Service, c.Reason, c.Detail))
		}
	}
	if len(items) == 0 {
		ch.Verdict, ch.Detail = OK, "the agent refused nothing the cluster asks for"
		return ch
	}
	ch.Verdict = Warn
	ch.Detail = fmt.Sprintf("%d refused: %s", len(items), firstN(items, 5))
	ch.Fix = "each is refused to protect this host or because it cannot work here; bridge-agent status lists them all with the reason (a conflicting route of another program, a Node not on this host's network, a range holding this host's own addresses)"
	return ch
}

// ProxyDetails, RoutesDetails and DNSDetails decode the consumers' parts
// of a status; nil when absent.
func ProxyDetails(st *daemon.Status) *proxy.ProxyStatus {
	var ps proxy.ProxyStatus
	if consumerDetails(st, "proxy", &ps) {
		return &ps
	}
	return nil
}

// RoutesDetails decodes the routes consumer's status.
func RoutesDetails(st *daemon.Status) *routes.Status {
	var rs routes.Status
	if consumerDetails(st, "routes", &rs) {
		return &rs
	}
	return nil
}

// DNSStatus is the DNS consumer's part of the status.
type DNSStatus struct {
	Stub              dnsstub.Status  `json:"stub"`
	HostResolver      *hostdns.Result `json:"hostResolver"`
	HostResolverError string          `json:"hostResolverError"`
}

// DNSDetails decodes the DNS consumer's status.
func DNSDetails(st *daemon.Status) *DNSStatus {
	var ds DNSStatus
	if consumerDetails(st, "dns", &ds) {
		return &ds
	}
	return nil
}

func consumerDetails(st *daemon.Status, name string, v any) bool {
	if st == nil {
		return false
	}
	for _, c := range st.Consumers {
		if c.Name == name && len(c.Details) > 0 {
			return json.Unmarshal(c.Details, v) == nil
		}
	}
	return false
}

// backendCheck runs the proxy's own start-up probe for the backend the
// configuration (or the running agent) uses.
func backendCheck(ctx context.Context, cfg *config.Config, st *daemon.Status) Check {
	ch := Check{Name: "proxy backend"}
	mode, why := cfg.Proxy.Mode, "configured"
	variant := proxy.Variant("")
	if cfg.Proxy.IPTablesVariant != "" && cfg.Proxy.IPTablesVariant != "auto" {
		variant = proxy.Variant(cfg.Proxy.IPTablesVariant)
	}
	if ps := ProxyDetails(st); ps != nil && ps.Backend != "" {
		mode, why = ps.Backend, "in use by the agent"
		if ps.Variant != "" {
			variant = ps.Variant
		}
	}
	switch mode {
	case "none":
		ch.Verdict, ch.Detail = OK, "proxy.mode none: no NAT rules (DNS and routes only)"
		return ch
	case "auto", "":
		mode, why = proxy.ChooseBackend(ctx)
		why = "proxy.mode auto picks it: " + why
	}
	ch.Name += " " + mode
	var ok bool
	var found string
	if mode == proxy.BackendNFTables {
		ok, found = proxy.NFTablesSupported(ctx)
		ch.Fix = "install nftables (apt-get install nftables / dnf install nftables) on a kernel with nf_tables, or set proxy.mode iptables"
	} else {
		ok, found = proxy.IPTablesSupported(ctx, variant)
		ch.Fix = "install iptables (apt-get install iptables / dnf install iptables-nft), or set proxy.mode nftables"
	}
	if !ok {
		ch.Verdict, ch.Detail = Fail, fmt.Sprintf("%s; %s", why, found)
		return ch
	}
	ch.Verdict, ch.Detail, ch.Fix = OK, fmt.Sprintf("%s; %s", why, found), ""
	return ch
}

// routeChecks adds the checks of the routes to the cluster's ranges, to
// the endpoints, and of what shadows the agent's routes.
func routeChecks(r *Report, k Kernel, cfg *config.Config, st *daemon.Status) {
	rs := RoutesDetails(st)
	var ranges []Range
	seen := map[netip.Prefix]bool{}
	addRange := func(p netip.Prefix, kind string, probe netip.Addr) {
		p = p.Masked()
		if !p.IsValid() || seen[p] {
			return
		}
		seen[p] = true
		if !probe.IsValid() || !p.Contains(probe) {
			probe = probeAddr(p)
		}
		ranges = append(ranges, Range{Prefix: p, Kind: kind, Probe: probe})
	}
	// A ClusterIP in a Service range is the best address to ask about.
	var clusterIPs []netip.Addr
	if st != nil {
		for _, s := range st.Snapshot.Services {
			if s.Proxied {
				clusterIPs = append(clusterIPs, s.ClusterIPs...)
			}
		}
	}
	pick := func(p netip.Prefix, from []netip.Addr) netip.Addr {
		for _, a := range from {
			if p.Contains(a) {
				return a
			}
		}
		return netip.Addr{}
	}
	var svcRanges []netip.Prefix
	if rs != nil {
		svcRanges = rs.ServiceCIDRs
	}
	if len(svcRanges) == 0 {
		for _, s := range cfg.ServiceCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				svcRanges = append(svcRanges, p)
			}
		}
	}
	for _, p := range svcRanges {
		addRange(p, KindService, pick(p, clusterIPs))
	}
	var podRanges []netip.Prefix
	if rs != nil {
		podRanges = rs.PodCIDRs
	}
	if cfg.Routes.Mode == config.RoutesGateway {
		for _, s := range cfg.Routes.CIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				podRanges = append(podRanges, p)
			}
		}
	}
	for _, p := range podRanges {
		addRange(p, KindPod, netip.Addr{})
	}
	if len(ranges) == 0 {
		detail := "no Service or pod range known"
		if st == nil {
			detail += ": the agent does not run (it learns them from the cluster) and the configuration lists none (serviceCIDRs, routes.cidrs)"
		}
		r.add(Check{Name: "routes to the cluster's ranges", Verdict: Skip, Detail: detail})
	}
	for _, rg := range ranges {
		got, err := k.RouteGet(rg.Probe)
		r.add(rangeCheck(rg, got, err))
	}

	table := cfg.Routes.Table
	if table == 0 {
		table = config.DefaultRouteTable
	}
	all, err := k.Routes(table)
	if err != nil {
		r.add(Check{Name: "foreign routes and rules", Verdict: Skip, Detail: err.Error()})
		return
	}
	var ours []Route
	for _, rt := range all {
		if rt.Protocol == cfg.Routes.Protocol {
			ours = append(ours, rt)
		}
	}

	if st == nil {
		r.add(Check{Name: "routes to endpoints", Verdict: Skip, Detail: "the agent does not run: its endpoints are not known"})
	} else {
		var eps []EndpointRoute
		done := map[netip.Addr]bool{}
		for _, s := range st.Snapshot.Services {
			if !s.Proxied {
				continue
			}
			for _, p := range s.Ports {
				for _, e := range p.Endpoints {
					if done[e.Addr] || !(e.Ready || e.Serving) {
						continue
					}
					done[e.Addr] = true
					got, err := k.RouteGet(e.Addr)
					eps = append(eps, EndpointRoute{Service: s.ServiceKey.String(), Addr: e.Addr, Route: got, Err: err})
				}
			}
		}
		r.add(endpointsCheck(eps, ours))
	}

	rules, err := k.Rules()
	if err != nil {
		r.add(Check{Name: "foreign routes and rules", Verdict: Skip, Detail: err.Error()})
		return
	}
	got := map[netip.Prefix]Route{}
	for _, o := range ours {
		if g, err := k.RouteGet(probeAddr(o.Dst)); err == nil {
			got[o.Dst] = g
		}
	}
	// Rules before the table's own lookup, where they could answer first.
	mainPrio := 32766
	for _, ru := range rules {
		if ru.Table == table {
			mainPrio = ru.Priority
			break
		}
	}
	before := slices.DeleteFunc(slices.Clone(rules), func(ru Rule) bool { return ru.Priority >= mainPrio || ru.Table == 255 })
	r.add(shadowCheck(ours, all, before, got, cfg.Routes.Protocol, table))
}

// dnsChecks adds the checks of the stub, the host's resolver wiring and
// the .local trap.
func dnsChecks(ctx context.Context, r *Report, cfg *config.Config, st *daemon.Status) {
	nss, _ := os.ReadFile(cfg.HostPath("/etc/nsswitch.conf"))
	ds := DNSDetails(st)
	mode := hostdns.Mode(cfg.DNS.HostResolver)
	if ds != nil && ds.HostResolver != nil {
		mode = ds.HostResolver.Mode
	}
	if cfg.DNS.Mode == config.DNSNone {
		r.add(Check{Name: "DNS", Verdict: OK, Detail: "dns.mode none: no stub, the host's resolver is left alone"})
		return
	}
	r.add(localTrapCheck(cfg.ClusterDomain, hostsLine(nss), mode))
	if st == nil || ds == nil {
		r.add(Check{Name: "host resolver", Verdict: Skip, Detail: "the agent does not run: no stub to compare with"})
		return
	}
	if ds.HostResolverError != "" {
		r.add(Check{Name: "host resolver wiring", Verdict: Fail, Detail: ds.HostResolverError,
			Fix: "see journalctl -u bridge-agent; dns.hostResolver selects the wiring (auto, systemd-resolved, resolv.conf, none)"})
	}
	if mode == hostdns.ModeNone || mode == hostdns.ModeAuto || mode == "" {
		r.add(Check{Name: "host resolver", Verdict: Warn,
			Detail: "dns.hostResolver none: the host's programs do not ask the stub, so cluster names resolve only for programs pointed at " + cfg.DNS.ListenAddress,
			Fix:    "set dns.hostResolver auto (or point the host's resolver at the stub yourself)"})
		return
	}
	stub, err := netip.ParseAddrPort(cfg.DNS.ListenAddress)
	if err != nil {
		r.add(Check{Name: "host resolver", Verdict: Skip, Detail: "dns.listenAddress: " + err.Error()})
		return
	}
	name := "kubernetes.default.svc." + cfg.ClusterDomain
	// HostRoot "/": the doctor runs on the host, so getent asks the
	// resolver every program here uses, whatever the agent's host root.
	chk := hostdns.Verify(ctx, hostdns.VerifyOptions{HostRoot: "/", Mode: mode, Stub: stub, Name: name})
	c := resolverCheck(chk)
	if ds.HostResolver != nil && ds.HostResolver.Check != nil && !ds.HostResolver.Check.At.IsZero() {
		c.Detail += fmt.Sprintf(" (the agent's own last check, at %s: %s)", ds.HostResolver.Check.At.Format(time.TimeOnly), verdictOf(ds.HostResolver.Check))
	}
	r.add(c)
	if mode == hostdns.ModeResolved && len(chk.Stub) > 0 {
		r.add(resolvectlCheck(ctx, name, chk.Stub))
	}
}

func verdictOf(c *hostdns.Check) string {
	switch {
	case c.OK:
		return "ok"
	case c.Skipped != "":
		return "skipped"
	}
	return "failed"
}

// LocalProblems runs the checks that need neither the API server nor a
// resolver query: the routes to the cluster's ranges and to the endpoints,
// what shadows the agent's routes, and the credentials' expiry. It returns
// those that do not pass, for `bridge-agent status` to show beside what the
// agent says of itself.
func LocalProblems(cfg *config.Config, st *daemon.Status, k Kernel, now time.Time) []Check {
	if k == nil {
		k = NetlinkKernel{}
	}
	r := &Report{}
	routeChecks(r, k, cfg, st)
	if rc, err := cluster.RESTConfig(cluster.ClientOptions{
		Kubeconfig: cfg.Kubeconfig, URL: cfg.APIServer.URL, TokenFile: cfg.APIServer.TokenFile, CAFile: cfg.APIServer.CAFile,
	}); err == nil {
		r.add(expiryCheck(ReadCredential(rc), now))
	}
	var out []Check
	for _, c := range r.Checks {
		if c.Verdict == Warn || c.Verdict == Fail {
			out = append(out, c)
		}
	}
	return out
}
