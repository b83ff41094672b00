package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
)

// ExplainOptions say what Explain explains.
type ExplainOptions struct {
	Config *config.Config
	// Status is the running agent's status (required: the path is the
	// agent's view of the cluster).
	Status *daemon.Status
	// Target is NAME, IP, NAME:PORT or IP:PORT ([IPv6]:PORT).
	Target string
	// Metrics is the agent's /metrics text, for the per-Service traffic
	// counters; empty when it could not be read.
	Metrics string
	// Kernel answers the route questions (nil: netlink).
	Kernel Kernel
	// ProbeTimeout bounds each live probe (default 2s).
	ProbeTimeout time.Duration
}

// splitTarget splits NAME|IP[:PORT].
func splitTarget(t string) (host string, port int, err error) {
	if a, err := netip.ParseAddr(t); err == nil {
		return a.String(), 0, nil
	}
	if h, p, err := net.SplitHostPort(t); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", 0, fmt.Errorf("explain %q: port %q: want 1 to 65535", t, p)
		}
		return h, n, nil
	}
	if t == "" || strings.ContainsAny(t, " /") {
		return "", 0, fmt.Errorf("explain %q: want NAME, IP, NAME:PORT or IP:PORT", t)
	}
	return t, 0, nil
}

// Explain writes the whole path from this host to one destination: the DNS
// answer and who gave it, the Service and port, the rule in the kernel and
// the endpoints (which get traffic, which not and why), the route to each
// endpoint, and a live probe of each. It returns an error when the target
// matches no Service the agent proxies.
func Explain(ctx context.Context, w io.Writer, o ExplainOptions) error {
	if o.Kernel == nil {
		o.Kernel = NetlinkKernel{}
	}
	if o.ProbeTimeout == 0 {
		o.ProbeTimeout = 2 * time.Second
	}
	host, port, err := splitTarget(o.Target)
	if err != nil {
		return err
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a.Unmap()}
		fmt.Fprintf(w, "Destination %s\n", o.Target)
	} else {
		addrs = explainDNS(ctx, w, o.Config, host)
	}
	var svc *cluster.Service
	for _, s := range o.Status.Snapshot.Services {
		if slices.ContainsFunc(s.ClusterIPs, func(a netip.Addr) bool { return slices.Contains(addrs, a) }) {
			svc = s
			break
		}
	}
	if svc == nil {
		return fmt.Errorf("explain %s: %v is no ClusterIP of a Service the agent knows (bridge-agent status lists them); outside the cluster the host's own routes apply (ip route get)", o.Target, addrs)
	}
	kind := svc.Type
	if !svc.Proxied {
		kind += ", not proxied by this agent (service-proxy-name or scope)"
	}
	fmt.Fprintf(w, "\nService %s (%s), ClusterIPs %s\n", svc.ServiceKey, kind, joinAddrs(svc.ClusterIPs))
	ps := ProxyDetails(o.Status)
	var ports []*cluster.Port
	for _, p := range svc.Ports {
		if port == 0 || int(p.Port) == port {
			ports = append(ports, p)
		}
	}
	if len(ports) == 0 {
		return fmt.Errorf("explain %s: Service %s has no port %d (it has %s)", o.Target, svc.ServiceKey, port, portList(svc.Ports))
	}
	for _, a := range addrs {
		if !slices.Contains(svc.ClusterIPs, a) {
			continue
		}
		fam := proxy.IPv4
		if a.Is6() {
			fam = proxy.IPv6
		}
		for _, p := range ports {
			explainPort(ctx, w, o, svc, p, a, fam, ps)
		}
	}
	return nil
}

func portList(ps []*cluster.Port) string {
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
	}
	return strings.Join(s, ", ")
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// explainDNS resolves name through the stub (saying that the stub gave the
// answer) and through the host's resolver, and returns the stub's answer.
func explainDNS(ctx context.Context, w io.Writer, cfg *config.Config, name string) []netip.Addr {
	fmt.Fprintf(w, "DNS %s\n", name)
	stub, err := netip.ParseAddrPort(cfg.DNS.ListenAddress)
	if err != nil {
		fmt.Fprintf(w, "  stub: dns.listenAddress: %v\n", err)
	}
	var addrs []netip.Addr
	for _, q := range []string{dns.Fqdn(name), dns.Fqdn(name + "." + cfg.ClusterDomain)} {
		if err != nil {
			break
		}
		got, qerr := hostdns.AskStub(ctx, stub, q)
		if qerr != nil {
			fmt.Fprintf(w, "  stub %s: %s: %v\n", stub, q, qerr)
			continue
		}
		if len(got) > 0 {
			addrs = got
			fmt.Fprintf(w, "  stub %s (bridge-agent, from the cluster's Services): %s -> %s\n", stub, q, joinAddrs(got))
			break
		}
		fmt.Fprintf(w, "  stub %s: %s -> no address\n", stub, q)
		if strings.HasSuffix(strings.TrimSuffix(name, "."), cfg.ClusterDomain) {
			break
		}
	}
	out, err := exec.CommandContext(ctx, "getent", "ahosts", strings.TrimSuffix(name, ".")).Output()
	switch {
	case err != nil:
		fmt.Fprintf(w, "  host resolver (getent ahosts %s): no answer (%v)\n", name, err)
	default:
		var host []netip.Addr
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) > 0 {
				if a, err := netip.ParseAddr(f[0]); err == nil && !slices.Contains(host, a.Unmap()) {
					host = append(host, a.Unmap())
				}
			}
		}
		same := len(host) > 0 && !slices.ContainsFunc(host, func(a netip.Addr) bool { return !slices.Contains(addrs, a) })
		note := "the same as the stub: the host's programs get the stub's answer"
		if !same {
			note = "NOT what the stub answers: the host's programs do not ask the stub (bridge-agent doctor checks the wiring)"
		}
		fmt.Fprintf(w, "  host resolver (getent ahosts %s): %s, %s\n", name, joinAddrs(host), note)
	}
	return addrs
}

// endpointVerdict says whether an endpoint gets traffic and, if not, why;
// pure.
func endpointVerdict(e cluster.Endpoint, sel proxy.Selection) string {
	used := slices.ContainsFunc(sel.Endpoints, func(x cluster.Endpoint) bool { return x.Addr == e.Addr && x.Port == e.Port })
	switch {
	case used && sel.Terminating:
		return "gets traffic (serving but terminating: no endpoint is ready)"
	case used && sel.Zonal:
		return "gets traffic (ready, hinted for this host's zone)"
	case used:
		return "gets traffic (ready)"
	case !e.Serving && !e.Ready:
		return "excluded: not ready"
	case e.Terminating && e.Serving:
		return "excluded: terminating (used only while no endpoint is ready)"
	case e.Ready && sel.Zonal:
		return "excluded: topology hints send this zone's traffic to other endpoints"
	}
	return "excluded"
}

func explainPort(ctx context.Context, w io.Writer, o ExplainOptions, svc *cluster.Service, p *cluster.Port, ip netip.Addr, fam proxy.Family, ps *proxy.ProxyStatus) {
	front := netip.AddrPortFrom(ip, uint16(p.Port))
	name := ""
	if p.Name != "" {
		name = " (" + p.Name + ")"
	}
	fmt.Fprintf(w, "\nPort %s/%s%s\n", front, p.Protocol, name)
	switch {
	case !svc.Proxied:
		fmt.Fprintln(w, "  rule: none (this agent does not proxy the Service)")
	case ps == nil:
		fmt.Fprintln(w, "  rule: unknown (the proxy reports no status; proxy.mode none?)")
	default:
		backend := ps.Backend
		if ps.Variant != "" {
			backend += " (" + string(ps.Variant) + ")"
		}
		lines := kernelRules(ctx, ps, fam, ip, int(p.Port))
		fmt.Fprintf(w, "  rule: %s, %d kernel rule lines name %s:\n", backend, len(lines), front)
		for _, l := range firstLines(lines, 8) {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
	sel := proxy.SelectEndpoints(svc, p, fam, "")
	if len(sel.Endpoints) == 0 {
		fmt.Fprintln(w, "  no endpoint gets traffic: connections are rejected (ICMP unreachable / RST)")
	}
	n := 0
	for _, e := range p.Endpoints {
		if fam.Contains(e.Addr) {
			n++
		}
	}
	fmt.Fprintf(w, "  endpoints (%d):\n", n)
	for _, e := range p.Endpoints {
		if !fam.Contains(e.Addr) {
			continue
		}
		state := endpointState(e)
		fmt.Fprintf(w, "    %s %s on %s: %s\n", e.AddrPort(), state, orDash(e.NodeName), endpointVerdict(e, sel))
		rt, err := o.Kernel.RouteGet(e.Addr)
		if err != nil {
			fmt.Fprintf(w, "      route: NONE (%v): the kernel cannot send to it; bridge-agent doctor says how to route its pod range\n", err)
		} else {
			hop := "directly on " + rt.Dev
			if rt.Gw.IsValid() {
				hop = "next hop " + rt.Gw.String() + " on " + rt.Dev
			}
			fmt.Fprintf(w, "      route: %s (%s)\n", rt, hop)
		}
		fmt.Fprintf(w, "      probe: %s\n", probe(ctx, p.Protocol, e.AddrPort(), o.ProbeTimeout))
	}
	if svc.Proxied && len(sel.Endpoints) > 0 {
		fmt.Fprintf(w, "  through the ClusterIP: %s\n", probe(ctx, p.Protocol, front, o.ProbeTimeout))
	}
	if t := ServiceTraffic(o.Metrics, svc.Namespace, svc.Name, p); len(t) > 0 {
		fmt.Fprintln(w, "  traffic from this host:")
		for _, l := range t {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func endpointState(e cluster.Endpoint) string {
	var s []string
	for _, c := range []struct {
		on   bool
		name string
	}{{e.Ready, "ready"}, {e.Serving, "serving"}, {e.Terminating, "terminating"}} {
		if c.on {
			s = append(s, c.name)
		}
	}
	if len(s) == 0 {
		return "[not ready]"
	}
	return "[" + strings.Join(s, ",") + "]"
}

func firstLines(l []string, n int) []string {
	if len(l) <= n {
		return l
	}
	return append(slices.Clone(l[:n]), fmt.Sprintf("... %d more", len(l)-n))
}

// kernelRules returns the lines of the backend's rules, as the kernel holds
// them, that name the Service's address and port.
func kernelRules(ctx context.Context, ps *proxy.ProxyStatus, fam proxy.Family, ip netip.Addr, port int) []string {
	var argv []string
	if ps.Backend == proxy.BackendNFTables {
		argv = []string{"nft", "list", "ruleset"}
	} else {
		tool := "iptables"
		if fam == proxy.IPv6 {
			tool = "ip6tables"
		}
		argv = []string{tool + "-" + string(ps.Variant) + "-save", "-t", "nat"}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return []string{fmt.Sprintf("(%s: %v)", strings.Join(argv, " "), err)}
	}
	return matchRules(out, ip, port)
}

// matchRules picks the lines naming ip and port: an iptables rule with -d
// ip/32 and --dport port, or an nftables map element or rule "ip . proto .
// port"; pure.
func matchRules(out []byte, ip netip.Addr, port int) []string {
	var lines []string
	a, ps := ip.String(), strconv.Itoa(port)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if !containsWord(l, a) || !containsWord(l, ps) {
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

// containsWord reports whether s holds w not glued to other address or
// number characters.
func containsWord(s, w string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], w)
		if j < 0 {
			return false
		}
		j += i
		before := j == 0 || !isAddrChar(s[j-1])
		end := j + len(w)
		after := end == len(s) || !isAddrChar(s[end])
		if before && after {
			return true
		}
		i = j + 1
	}
}

func isAddrChar(c byte) bool {
	return c >= '0' && c <= '9' || c == '.' || c == ':' || c >= 'a' && c <= 'f'
}

// probe connects to addr once (TCP) or sends one datagram and waits for an
// answer (UDP), and says what happened.
func probe(ctx context.Context, protocol string, addr netip.AddrPort, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var d net.Dialer
	switch strings.ToUpper(protocol) {
	case "TCP":
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return "TCP connect failed: " + dialError(err)
		}
		defer c.Close()
		took := time.Since(start)
		// Many servers speak first; show what they say, briefly.
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		line, _ := bufio.NewReader(c).ReadString('\n')
		if line = strings.TrimSpace(line); line != "" {
			return fmt.Sprintf("TCP connected in %s, said %q", took.Round(time.Microsecond), trim(line, 60))
		}
		return fmt.Sprintf("TCP connected in %s", took.Round(time.Microsecond))
	case "UDP":
		c, err := d.DialContext(ctx, "udp", addr.String())
		if err != nil {
			return "UDP send failed: " + dialError(err)
		}
		defer c.Close()
		dl, _ := ctx.Deadline()
		_ = c.SetDeadline(dl)
		if _, err := c.Write([]byte("bridge-agent explain\n")); err != nil {
			return "UDP send failed: " + dialError(err)
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		switch {
		case err == nil:
			return fmt.Sprintf("UDP answered in %s: %q", time.Since(start).Round(time.Microsecond), trim(strings.TrimSpace(string(buf[:n])), 60))
		case errors.Is(err, syscall.ECONNREFUSED):
			return "UDP port closed (ICMP port unreachable)"
		case isTimeout(err):
			return fmt.Sprintf("UDP no answer in %s (open but silent, or filtered)", timeout)
		}
		return "UDP failed: " + dialError(err)
	}
	return "no probe for protocol " + protocol
}

func dialError(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused (nothing listens, or a reject rule)"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network is unreachable (no route)"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case isTimeout(err) || errors.Is(err, context.DeadlineExceeded):
		return "timed out (dropped on the way, or the host is down)"
	}
	return err.Error()
}

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ServiceTrafficMetrics are the per-Service-port counters ServiceTraffic
// shows, when the agent exports them.
var ServiceTrafficMetrics = []string{
	"bridge_agent_service_connections_total",
	"bridge_agent_service_bytes_total",
}

// ServiceTraffic returns the per-Service-port traffic counters of the
// agent's /metrics text (metrics) for one Service port, one line each, e.g.
// `bridge_agent_service_connections_total 42`; nothing when the agent
// exports none.
func ServiceTraffic(metrics, namespace, service string, p *cluster.Port) []string {
	if metrics == "" {
		return nil
	}
	var out []string
	port := strconv.Itoa(int(p.Port))
	sc := bufio.NewScanner(strings.NewReader(metrics))
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, labels, value, ok := parseSample(line)
		if !ok || !slices.Contains(ServiceTrafficMetrics, name) {
			continue
		}
		if labels["namespace"] != namespace || labels["service"] != service {
			continue
		}
		if lp := labels["port"]; lp != "" && lp != port && lp != p.Name {
			continue
		}
		extra := ""
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range labels {
				if !yield(k) {
					return
				}
			}
		}) {
			if k != "namespace" && k != "service" && k != "port" {
				extra += fmt.Sprintf(" %s=%s", k, labels[k])
			}
		}
		out = append(out, fmt.Sprintf("%s%s %s", name, extra, value))
	}
	return out
}

// parseSample reads one line of the Prometheus text format:
// name{k="v",...} value.
func parseSample(line string) (name string, labels map[string]string, value string, ok bool) {
	labels = map[string]string{}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return "", nil, "", false
	}
	name, rest := line[:i], line[i:]
	if strings.HasPrefix(rest, "{") {
		end := strings.LastIndex(rest, "}")
		if end < 0 {
			return "", nil, "", false
		}
		body := rest[1:end]
		rest = rest[end+1:]
		for body != "" {
			k, after, found := strings.Cut(body, "=\"")
			if !found {
				break
			}
			var v strings.Builder
			j := 0
			for ; j < len(after); j++ {
				if after[j] == '\\' && j+1 < len(after) {
					j++
					v.WriteByte(after[j])
					continue
				}
				if after[j] == '"' {
					break
				}
				v.WriteByte(after[j])
			}
			labels[strings.TrimSpace(strings.TrimPrefix(k, ","))] = v.String()
			if j+1 > len(after) {
				break
			}
			body = strings.TrimPrefix(after[j+1:], ",")
		}
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", nil, "", false
	}
	return name, labels, f[0], true
}
