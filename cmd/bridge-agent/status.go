package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/dnsstub"
	"github.com/bridge-agent/bridge-agent/internal/doctor"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
)

func statusCmd(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("status", stderr)
	output := f.fs.String("o", "text", "output format: text or json")
	socket := f.fs.String("socket", "", "status socket (default: statusSocket inside hostRoot from the configuration)")
	cfg, code, ok := f.loadOrReport(args, stderr, false)
	if !ok {
		return code
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "bridge-agent: -o: want text or json, got %q\n", *output)
		return 2
	}
	path := *socket
	if path == "" {
		path = cfg.HostPath(cfg.StatusSocket)
	}
	body, err := fetchStatus(path)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: status: %v (is the agent running?)\n", err)
		return 1
	}
	if *output == "json" {
		stdout.Write(body)
		return 0
	}
	var st daemon.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: status: decode: %v\n", err)
		return 1
	}
	printStatus(stdout, &st, time.Now())
	printProblems(stdout, doctor.LocalProblems(cfg, &st, nil, time.Now()))
	return 0
}

// printProblems shows what this host's kernel and credentials say beside
// the agent's own view: a missing route to a Service range, endpoints no
// route reaches, routes shadowed by others, credentials about to expire.
func printProblems(w io.Writer, problems []doctor.Check) {
	if len(problems) == 0 {
		fmt.Fprintln(w, "\nProblems: none found in this host's routes and credentials (bridge-agent doctor checks everything)")
		return
	}
	fmt.Fprintf(w, "\nProblems (%d; bridge-agent doctor checks everything):\n", len(problems))
	for _, c := range problems {
		fmt.Fprintf(w, "  ! %s: %s\n    fix: %s\n", c.Name, c.Detail, c.Fix)
	}
}

func fetchStatus(socket string) ([]byte, error) {
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	resp, err := c.Get("http://agent/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func printStatus(w io.Writer, st *daemon.Status, now time.Time) {
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(time.Millisecond).String() + " ago"
	}
	state := "not ready"
	switch {
	case st.Degraded:
		state = "degraded: serving the last snapshot known good, saved " + ago(st.Snapshot.Restored)
	case st.Ready:
		state = "ready"
	}
	fmt.Fprintf(w, "bridge-agent %s (pid %d, up %s): %s\n", st.Version, st.PID, now.Sub(st.StartTime).Round(time.Second), state)
	fmt.Fprintf(w, "API server:  %s", st.APIServer.Host)
	if st.APIServer.LastError != "" {
		fmt.Fprintf(w, " (last error %s: %s)", ago(st.APIServer.LastErrorTime), st.APIServer.LastError)
	}
	fmt.Fprintln(w)
	if st.Member != nil {
		st.Member.WriteText(w, now)
	}
	if st.Snapshot.RestoreError != "" {
		fmt.Fprintf(w, "Saved snapshot unusable: %s\n", st.Snapshot.RestoreError)
	}
	fmt.Fprintf(w, "Last sync:   %s, took %s, snapshot %d, %d syncs", ago(st.LastSync.Time), st.LastSync.Duration.Round(time.Microsecond), st.LastSync.SnapshotVersion, st.LastSync.Count)
	if st.LastSync.Error != "" {
		fmt.Fprintf(w, ", error: %s", st.LastSync.Error)
	}
	fmt.Fprintln(w)
	for _, c := range st.Consumers {
		fmt.Fprintf(w, "  %-8s last success %s", c.Name, ago(c.LastSync))
		if c.LastError != "" {
			fmt.Fprintf(w, ", error: %s", c.LastError)
		}
		fmt.Fprintln(w)
	}
	printProxy(w, st)
	printRoutes(w, st)
	if st.Guard != nil {
		fmt.Fprintln(w, "\nHost guard (Service ranges and ClusterIPs; refused routes are under Routes):")
		st.Guard.WriteText(w)
	}
	printDNS(w, st)

	fmt.Fprintf(w, "\nServices (%d, %d endpoints):\n", len(st.Snapshot.Services), st.Snapshot.Endpoints)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAMESPACE/NAME\tTYPE\tCLUSTER-IP\tPORT\tENDPOINTS")
	for _, s := range st.Snapshot.Services {
		typ := s.Type
		switch {
		case s.Headless:
			typ += " (headless)"
		case !s.Proxied:
			typ += " (other proxy)"
		}
		ips := joinAddrs(s.ClusterIPs)
		if s.Type == cluster.TypeExternalName {
			ips = s.ExternalName
		}
		if len(s.Ports) == 0 {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t-\t-\n", s.ServiceKey, typ, ips)
		}
		for i, p := range s.Ports {
			name := s.ServiceKey.String()
			if i > 0 {
				name, typ, ips = "", "", ""
			}
			port := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
			if p.Name != "" {
				port = p.Name + ":" + port
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", name, typ, ips, port, describeEndpoints(p.Endpoints))
		}
	}
	tw.Flush()

	fmt.Fprintf(w, "\nNodes (%d):\n", len(st.Snapshot.Nodes))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tINTERNAL-IP\tPOD-CIDR\tZONE")
	for _, n := range st.Snapshot.Nodes {
		cidrs := make([]string, len(n.PodCIDRs))
		for i, c := range n.PodCIDRs {
			cidrs[i] = c.String()
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", n.Name, joinAddrs(n.InternalIPs), strings.Join(cidrs, ","), n.Zone)
	}
	tw.Flush()
}

// describeEndpoints lists up to four endpoints with their state.
func describeEndpoints(eps []cluster.Endpoint) string {
	if len(eps) == 0 {
		return "<none>"
	}
	var parts []string
	for i, e := range eps {
		if i == 4 {
			parts = append(parts, fmt.Sprintf("+%d more", len(eps)-4))
			break
		}
		s := e.AddrPort().String()
		switch {
		case e.Ready:
		case e.Serving && e.Terminating:
			s += "(terminating)"
		default:
			s += "(not ready)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func joinAddrs[T fmt.Stringer](addrs []T) string {
	if len(addrs) == 0 {
		return "-"
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// printRoutes shows the routes consumer's details: the routes it keeps,
// those it cannot have and why, and the cluster's pod and Service ranges.
func printRoutes(w io.Writer, st *daemon.Status) {
	for _, c := range st.Consumers {
		if c.Name != "routes" || len(c.Details) == 0 {
			continue
		}
		var rs routes.Status
		if err := json.Unmarshal(c.Details, &rs); err != nil {
			fmt.Fprintf(w, "\nRoutes: cannot decode: %v\n", err)
			return
		}
		fmt.Fprintln(w, "\nRoutes:")
		rs.WriteText(w)
		printNodeSource(w, st.NodeRoutes)
	}
}

// printNodeSource says where nodes mode takes the Nodes from: the shared
// node route table, or a Node watch and why.
func printNodeSource(w io.Writer, ns *cluster.SharedNodesStatus) {
	switch {
	case ns == nil:
	case ns.Source == cluster.SourceTable:
		fmt.Fprintf(w, "  nodes from the shared node route table (generation %d, published by %s)\n", ns.Generation, ns.Publisher)
	case ns.Source == cluster.SourceNodes:
		fmt.Fprintf(w, "  nodes from a Node watch: %s\n", ns.Reason)
	}
	if ns != nil && ns.WriteError != "" {
		fmt.Fprintf(w, "  cannot publish the node route table: %s\n", ns.WriteError)
	}
}

// printProxy shows the proxy consumer's details: the backend and, per
// family, what its last write holds.
func printProxy(w io.Writer, st *daemon.Status) {
	for _, c := range st.Consumers {
		if c.Name != "proxy" || len(c.Details) == 0 {
			continue
		}
		var ps proxy.ProxyStatus
		if err := json.Unmarshal(c.Details, &ps); err != nil {
			fmt.Fprintf(w, "\nProxy: cannot decode: %v\n", err)
			return
		}
		if ps.Variant != "" {
			fmt.Fprintf(w, "\nProxy: %s (%s)\n", ps.Mode, ps.Variant)
		} else {
			fmt.Fprintf(w, "\nProxy: %s\n", ps.Mode)
		}
		if ps.ModeReason != "" {
			fmt.Fprintf(w, "  chosen by proxy.mode auto: %s\n", ps.ModeReason)
		}
		fams := slices.Sorted(maps.Keys(ps.Families))
		for _, f := range fams {
			fs := ps.Families[f]
			fmt.Fprintf(w, "  %s: %d services, %d ports (%d without endpoints), %d endpoints; ",
				f, fs.Services, fs.ServicePorts, fs.NoEndpoints, fs.Endpoints)
			if ps.Backend == "nftables" {
				fmt.Fprintf(w, "%d rules and %d map and set elements", fs.NATRules+fs.FilterRules, fs.Elements)
				if fs.NFTPeakRSS > 0 {
					fmt.Fprintf(w, " (nft peak RSS %.1f MiB)", float64(fs.NFTPeakRSS)/(1<<20))
				}
			} else {
				fmt.Fprintf(w, "%d nat and %d filter rules", fs.NATRules, fs.FilterRules)
			}
			fmt.Fprintf(w, ", written %s\n", fs.LastWrite.Format(time.RFC3339))
		}
		printConnections(w, ps)
	}
}

// maxConnectionLines bounds the Service ports the text status lists by
// connections; the JSON has them all.
const maxConnectionLines = 20

// printConnections lists the Service ports this host opened connections
// to, most used first.
func printConnections(w io.Writer, ps proxy.ProxyStatus) {
	if ps.ConnectionsError != "" {
		fmt.Fprintf(w, "  connections by Service: cannot read: %s\n", ps.ConnectionsError)
		return
	}
	used := slices.DeleteFunc(slices.Clone(ps.Connections), func(c proxy.ServicePortCounter) bool { return c.Connections == 0 })
	if len(used) == 0 {
		fmt.Fprintf(w, "  connections by Service: none since the rules were written\n")
		return
	}
	slices.SortStableFunc(used, func(a, b proxy.ServicePortCounter) int { return cmp.Compare(b.Connections, a.Connections) })
	fmt.Fprintf(w, "  connections by Service (%d of %d ports used):\n", len(used), len(ps.Connections))
	for i, c := range used {
		if i == maxConnectionLines {
			fmt.Fprintf(w, "    ... and %d more\n", len(used)-i)
			break
		}
		name := c.Namespace + "/" + c.Service
		if c.Port != "" {
			name += ":" + c.Port
		}
		fmt.Fprintf(w, "    %-50s %-4s %d\n", name, c.Protocol, c.Connections)
	}
}

// printDNS shows the DNS consumer's details: the stub and the host
// resolver's wiring.
func printDNS(w io.Writer, st *daemon.Status) {
	for _, c := range st.Consumers {
		if c.Name != "dns" || len(c.Details) == 0 {
			continue
		}
		var ds struct {
			Stub              dnsstub.Status  `json:"stub"`
			HostResolver      *hostdns.Result `json:"hostResolver"`
			HostResolverError string          `json:"hostResolverError"`
		}
		if err := json.Unmarshal(c.Details, &ds); err != nil {
			fmt.Fprintf(w, "\nDNS: cannot decode: %v\n", err)
			return
		}
		s := ds.Stub
		fmt.Fprintf(w, "\nDNS stub on %s (%s): ", s.Listen, s.ClusterDomain)
		if s.Synced {
			fmt.Fprintf(w, "%d records for %d names from snapshot %d\n", s.ZoneRecords, s.ZoneNames, s.SnapshotVersion)
		} else {
			fmt.Fprintln(w, "no snapshot yet: cluster names get SERVFAIL")
		}
		var kd []string
		for _, k := range s.KubeDNS {
			if k.UDP == k.TCP {
				kd = append(kd, k.UDP.String())
			} else {
				kd = append(kd, "udp "+k.UDP.String()+" tcp "+k.TCP.String())
			}
		}
		fmt.Fprintf(w, "  kube-dns:  %s\n", orNone(strings.Join(kd, " ")))
		fmt.Fprintf(w, "  upstreams: %s; %d/%d questions in flight\n", orNone(strings.Join(s.Upstreams, " ")), s.ForwardsInFlight, s.MaxForwards)
		for _, l := range s.Looping {
			fmt.Fprintf(w, "  loop:      %s (came back to the stub; that name skips that upstream for a minute)\n", l)
		}
		fmt.Fprintf(w, "  cache:     %d/%d entries, %d hits, %d misses\n", s.CacheSize, s.CacheMax, s.CacheHits, s.CacheMisses)
		for _, e := range s.LastErrors {
			fmt.Fprintf(w, "  error %s: %s %s via %s: %s\n", e.Time.Format(time.TimeOnly), e.Name, e.Type, e.Upstream, e.Error)
		}
		if ds.HostResolver != nil {
			fmt.Fprintln(w, "Host resolver:")
			ds.HostResolver.WriteText(w)
		}
		if ds.HostResolverError != "" {
			fmt.Fprintf(w, "  error: %s\n", ds.HostResolverError)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
