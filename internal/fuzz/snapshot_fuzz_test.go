package fuzz

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/dnsstub"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
)

// reseal returns the saved-snapshot file raw with its checksum made to
// match its data, so that a mutation of the data reaches the loader's
// decoder instead of failing the checksum. A file whose envelope does not
// parse is returned as it is.
func reseal(raw []byte) []byte {
	var env struct {
		Format  json.RawMessage `json:"format"`
		SavedAt json.RawMessage `json:"savedAt"`
		Data    json.RawMessage `json:"data"`
	}
	if json.Unmarshal(raw, &env) != nil || len(env.Data) == 0 {
		return raw
	}
	sum := sha256.Sum256(env.Data)
	out := []byte(`{"format":`)
	out = append(out, orNull(env.Format)...)
	out = append(out, `,"savedAt":`...)
	out = append(out, orNull(env.SavedAt)...)
	out = append(out, `,"data":`...)
	out = append(out, env.Data...)
	out = append(out, `,"sha256":"`...)
	out = append(out, hex.EncodeToString(sum[:])...)
	return append(out, "\"}\n"...)
}

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func ep(addr string, port int32, ready bool, hostname, node string) cluster.Endpoint {
	return cluster.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, Ready: ready, Serving: ready, Hostname: hostname, NodeName: node, Zone: "z1"}
}

// seedSnapshots are snapshots of the kinds the agent saves: ClusterIP
// (dual-stack, several protocols, session affinity, topology hints),
// headless with hostnames, ExternalName, a Service with no endpoints, a
// Service of another proxy; Nodes with pod CIDRs; Service CIDRs.
func seedSnapshots() []*cluster.Snapshot {
	web := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "shop", Name: "web"}, Type: cluster.TypeClusterIP, Proxied: true,
		ClusterIPs: addrs("10.96.0.10", "fd00:96::10"),
		Ports: []*cluster.Port{
			{Name: "http", Port: 80, Protocol: "TCP", Endpoints: []cluster.Endpoint{
				ep("10.244.1.5", 8080, true, "", "n1"), ep("10.244.2.6", 8080, true, "", "n2"), ep("fd00:244::5", 8080, true, "", "n1"),
			}},
			{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("10.244.1.5", 5353, false, "", "n1")}},
			{Name: "sctp", Port: 9999, Protocol: "SCTP", Endpoints: []cluster.Endpoint{ep("10.244.1.7", 9999, true, "", "n1")}},
		},
	}
	sticky := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "shop", Name: "sticky"}, Type: cluster.TypeNodePort, Proxied: true,
		ClusterIPs: addrs("10.96.0.11"), SessionAffinityTimeout: 3 * time.Hour, InternalTrafficLocal: true,
		Ports: []*cluster.Port{{Port: 443, Protocol: "TCP", Endpoints: []cluster.Endpoint{
			ep("10.244.1.8", 8443, true, "", "n1"), ep("10.244.2.8", 8443, true, "", "n2"),
			{Addr: netip.MustParseAddr("10.244.2.9"), Port: 8443, Serving: true, Terminating: true, HintZones: []string{"z1"}},
		}}},
	}
	db := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "shop", Name: "db"}, Type: cluster.TypeClusterIP, Headless: true, Proxied: true,
		PublishNotReadyAddresses: true,
		Endpoints:                []cluster.Endpoint{ep("10.244.1.10", 0, true, "db-0", "n1"), ep("fd00:244::11", 0, false, "db-1", "n2")},
		Ports: []*cluster.Port{{Name: "pg", Port: 5432, Protocol: "TCP", Endpoints: []cluster.Endpoint{
			ep("10.244.1.10", 5432, true, "db-0", "n1"), ep("fd00:244::11", 5432, false, "db-1", "n2"),
		}}},
	}
	ext := &cluster.Service{ServiceKey: cluster.ServiceKey{Namespace: "shop", Name: "ext"}, Type: cluster.TypeExternalName, ExternalName: "www.example.test", Proxied: true}
	empty := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "other", Name: "empty"}, Type: cluster.TypeClusterIP, Proxied: true,
		ClusterIPs: addrs("10.96.1.1"), Ports: []*cluster.Port{{Name: "http", Port: 80, Protocol: "TCP"}},
	}
	foreign := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "other", Name: "foreign"}, Type: cluster.TypeClusterIP,
		ClusterIPs: addrs("10.96.1.2"), Ports: []*cluster.Port{{Port: 80, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.3.1", 80, true, "", "n3")}}},
	}
	kubeDNS := &cluster.Service{
		ServiceKey: cluster.ServiceKey{Namespace: "kube-system", Name: "kube-dns"}, Type: cluster.TypeClusterIP, Proxied: true,
		ClusterIPs: addrs("10.96.0.53"),
		Ports: []*cluster.Port{
			{Name: "dns", Port: 53, Protocol: "UDP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 53, true, "", "n1")}},
			{Name: "dns-tcp", Port: 53, Protocol: "TCP", Endpoints: []cluster.Endpoint{ep("10.244.0.2", 53, true, "", "n1")}},
		},
	}
	nodes := map[string]*cluster.Node{
		"n1": {Name: "n1", InternalIPs: addrs("10.0.0.21", "fd00::21"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}, Zone: "z1"},
		"n2": {Name: "n2", InternalIPs: addrs("10.0.0.22"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
		"n3": {Name: "n3", InternalIPs: addrs("192.0.2.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
		"me": {Name: "me", InternalIPs: addrs("10.0.0.1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}},
	}
	snap := func(v uint64, svcs ...*cluster.Service) *cluster.Snapshot {
		s := &cluster.Snapshot{Version: v, Time: time.Unix(1700000000, 0).UTC(), Services: map[cluster.ServiceKey]*cluster.Service{}, Nodes: nodes}
		for _, svc := range svcs {
			s.Services[svc.ServiceKey] = svc
		}
		return s
	}
	all := snap(3, web, sticky, db, ext, empty, foreign, kubeDNS)
	all.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/108")}
	out := []*cluster.Snapshot{all, snap(2, db, ext), {Version: 4, Services: map[cluster.ServiceKey]*cluster.Service{}, Nodes: map[string]*cluster.Node{}}}
	// Small ones too, one Service each: most byte mutations break the
	// JSON, and in a small file more of them land in a value.
	for i, svc := range all.SortedServices() {
		one := snap(uint64(10+i), svc)
		one.Nodes = map[string]*cluster.Node{"n1": nodes["n1"]}
		out = append(out, one)
	}
	return out
}

// FuzzSnapshot reads a saved snapshot file, re-sealed after mutation, and
// feeds whatever loads to the DNS zone, both proxy renderers (both
// families) and the routes. None may panic; rendered rules reference only
// chains and sets they define; the zone's answers pack and parse.
func FuzzSnapshot(f *testing.F) {
	dir := f.TempDir()
	for i, s := range seedSnapshots() {
		path := filepath.Join(dir, fmt.Sprintf("seed-%d.json", i))
		if err := cluster.SaveSnapshot(path, s, time.Unix(1700000100, 0)); err != nil {
			f.Fatal(err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		path := filepath.Join(t.TempDir(), "snapshot.json")
		if err := os.WriteFile(path, reseal(raw), 0o600); err != nil {
			t.Fatal(err)
		}
		snap, err := cluster.LoadSnapshot(path)
		if err != nil {
			return // refused with an error: nothing reaches the consumers
		}
		checkDNS(t, snap)
		for _, fam := range []proxy.Family{proxy.IPv4, proxy.IPv6} {
			checkIPTables(t, snap, fam)
			checkNFTables(t, snap, fam)
		}
		checkRoutes(t, snap)
	})
}

// recorder is a dns.ResponseWriter for a loopback UDP client that packs
// what is written, as the server would.
type recorder struct {
	wire []byte
}

func (r *recorder) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (r *recorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	r.wire = b
	return nil
}
func (r *recorder) Write(b []byte) (int, error) {
	r.wire = append([]byte(nil), b...)
	return len(b), nil
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

// maxAsked bounds the Services whose names are asked, per input.
const maxAsked = 8

// checkDNS syncs a stub (not listening, no upstream) to snap and asks it
// the names snap's Services and endpoints have.
func checkDNS(t *testing.T, snap *cluster.Snapshot) {
	s, err := dnsstub.New(dnsstub.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0"), ClusterDomain: "cluster.local", Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Without kube-dns (and with no upstream) nothing is forwarded: no
	// packet leaves the test, whatever the input names.
	local := *snap
	local.Services = maps.Clone(snap.Services)
	delete(local.Services, cluster.ServiceKey{Namespace: "kube-system", Name: "kube-dns"})
	if err := s.Sync(t.Context(), &local); err != nil {
		t.Fatalf("sync: %v", err)
	}
	type q struct {
		name  string
		qtype uint16
	}
	qs := []q{{"cluster.local.", dns.TypeSOA}, {"dns-version.cluster.local.", dns.TypeTXT}}
	for i, svc := range snap.SortedServices() {
		if i == maxAsked {
			break
		}
		base := svc.Name + "." + svc.Namespace + ".svc.cluster.local."
		qs = append(qs, q{base, dns.TypeA}, q{base, dns.TypeAAAA}, q{base, dns.TypeSRV}, q{base, dns.TypeANY}, q{svc.Name + "." + svc.Namespace + ".svc.", dns.TypeA})
		for _, p := range svc.Ports {
			qs = append(qs, q{"_" + p.Name + "._" + strings.ToLower(p.Protocol) + "." + base, dns.TypeSRV})
		}
		for _, e := range svc.Endpoints {
			if e.Hostname != "" {
				qs = append(qs, q{e.Hostname + "." + base, dns.TypeA})
			}
			if e.Addr.IsValid() {
				if rev, err := dns.ReverseAddr(e.Addr.String()); err == nil {
					qs = append(qs, q{rev, dns.TypePTR})
				}
			}
		}
		for _, a := range svc.ClusterIPs {
			if rev, err := dns.ReverseAddr(a.String()); err == nil {
				qs = append(qs, q{rev, dns.TypePTR})
			}
		}
	}
	for _, q := range qs {
		if _, ok := dns.IsDomainName(q.name); !ok {
			continue // not a name a client can ask
		}
		req := new(dns.Msg)
		req.SetQuestion(q.name, q.qtype)
		req.SetEdns0(1232, false)
		w := &recorder{}
		s.ServeDNS(w, req)
		if w.wire == nil {
			t.Errorf("%s %s: no reply", q.name, dns.TypeToString[q.qtype])
			continue
		}
		m := new(dns.Msg)
		if err := m.Unpack(w.wire); err != nil {
			t.Errorf("%s %s: reply does not parse: %v", q.name, dns.TypeToString[q.qtype], err)
			continue
		}
		if m.Id != req.Id || !m.Response || len(m.Question) != 1 {
			t.Errorf("%s %s: reply header %v", q.name, dns.TypeToString[q.qtype], m.MsgHdr)
		}
		for _, rr := range append(append(m.Answer, m.Ns...), m.Extra...) {
			if _, err := dns.NewRR(rr.String()); err != nil {
				t.Errorf("%s %s: record %q does not parse back: %v", q.name, dns.TypeToString[q.qtype], rr.String(), err)
			}
		}
	}
}

// Targets and chains of iptables that are not ours to declare.
var iptBuiltin = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "DNAT": true, "SNAT": true, "MASQUERADE": true,
	"MARK": true, "PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
}

// splitArgs splits an iptables-restore rule line as the restore parser
// does: blanks separate words, double quotes group (with \" inside).
func splitArgs(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line) && line[i+1] == '"':
			cur.WriteByte('"')
			i++
		case c == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unbalanced quote in %q", line)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// checkIPTablesPayload checks one iptables-restore payload: one table,
// each chain declared once, rules only in declared (or built-in) chains,
// jumps only to declared chains or built-in targets, deleted chains not
// declared, and a COMMIT at the end.
func checkIPTablesPayload(t *testing.T, what string, payload []byte) {
	lines := strings.Split(strings.TrimSuffix(string(payload), "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "*") || lines[len(lines)-1] != "COMMIT" {
		t.Errorf("%s: not one table ending in COMMIT:\n%s", what, payload)
		return
	}
	declared := map[string]bool{}
	deleted := map[string]bool{}
	type ref struct {
		line         int
		chain, jumps string
	}
	var refs []ref
	for i, l := range lines[1 : len(lines)-1] {
		switch {
		case strings.HasPrefix(l, ":"):
			f := strings.Fields(l[1:])
			if len(f) != 3 || declared[f[0]] {
				t.Errorf("%s line %d: bad or repeated declaration %q", what, i+2, l)
				continue
			}
			declared[f[0]] = true
		case strings.HasPrefix(l, "-X "):
			deleted[strings.TrimPrefix(l, "-X ")] = true
		case strings.HasPrefix(l, "-A "):
			args, err := splitArgs(l)
			if err != nil {
				t.Errorf("%s line %d: %v", what, i+2, err)
				continue
			}
			r := ref{line: i + 2, chain: args[1]}
			for j := 2; j+1 < len(args); j++ {
				if args[j] == "-j" || args[j] == "-g" {
					r.jumps = args[j+1]
				}
			}
			if r.jumps == "" {
				t.Errorf("%s line %d: rule without a target: %q", what, i+2, l)
			}
			refs = append(refs, r)
		default:
			t.Errorf("%s line %d: not a declaration, rule or deletion: %q", what, i+2, l)
		}
	}
	for _, r := range refs {
		if !declared[r.chain] && !iptBuiltin[r.chain] {
			t.Errorf("%s line %d: rule in undeclared chain %s", what, r.line, r.chain)
		}
		if !declared[r.jumps] && !iptBuiltin[r.jumps] {
			t.Errorf("%s line %d: jump to undeclared chain %s", what, r.line, r.jumps)
		}
	}
	for c := range deleted {
		if declared[c] {
			t.Errorf("%s: chain %s both declared and deleted", what, c)
		}
	}
}

func checkIPTables(t *testing.T, snap *cluster.Snapshot, fam proxy.Family) {
	for _, masq := range []bool{false, true} {
		nat, filter, _, err := proxy.RenderIPTables(proxy.RenderInput{Snapshot: snap, Family: fam, Masquerade: masq, Zone: "z1"})
		if err != nil {
			t.Errorf("render iptables %s: %v", fam, err)
			continue
		}
		checkIPTablesPayload(t, "iptables "+fam.String()+" nat", nat)
		checkIPTablesPayload(t, "iptables "+fam.String()+" filter", filter)
	}
}

// checkNFTables checks that a ruleset's rules and map verdicts jump only to
// its own chains and read only its own sets, and that its text renders.
func checkNFTables(t *testing.T, snap *cluster.Snapshot, fam proxy.Family) {
	rs, _, err := proxy.RenderNFTables(proxy.NFTRenderInput{Snapshot: snap, Family: fam, Masquerade: true, Zone: "z1"})
	if err != nil {
		t.Errorf("render nftables %s: %v", fam, err)
		return
	}
	chains, sets := map[string]bool{}, map[string]bool{}
	for _, c := range rs.Chains {
		if chains[c.Name] {
			t.Errorf("nftables %s: chain %s twice", fam, c.Name)
		}
		chains[c.Name] = true
	}
	for _, s := range rs.Sets {
		if sets[s.Name] {
			t.Errorf("nftables %s: set %s twice", fam, s.Name)
		}
		sets[s.Name] = true
	}
	verdicts := func(where, text string) {
		f := strings.Fields(text)
		for i, w := range f {
			if (w == "jump" || w == "goto") && i+1 < len(f) {
				// An inline verdict map's element ends with "," or " }".
				if c := strings.TrimRight(f[i+1], ","); !chains[c] {
					t.Errorf("nftables %s %s: %s to undefined chain %s", fam, where, w, c)
				}
			}
			if strings.HasPrefix(w, "@") && !sets[w[1:]] {
				t.Errorf("nftables %s %s: undefined set %s", fam, where, w)
			}
		}
	}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			verdicts("chain "+c.Name, r)
		}
	}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			if s.Map {
				verdicts("map "+s.Name, e.Value)
			}
			if strings.ContainsAny(e.Comment, "\"\n\\") {
				t.Errorf("nftables %s map %s: comment %q would break out of its quotes", fam, s.Name, e.Comment)
			}
		}
	}
	if len(rs.Text()) == 0 {
		t.Errorf("nftables %s: empty text", fam)
	}
}

// checkRoutes runs the routes' Desired on snap's Nodes for a host on
// 10.0.0.0/24 and fd00::/64 (address 10.0.0.1): every route is a masked
// prefix, via an on-link gateway that is not the host, and no two routes
// of a table overlap.
func checkRoutes(t *testing.T, snap *cluster.Snapshot) {
	host := routes.Host{
		Connected: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64")},
		Local:     addrs("10.0.0.1", "fd00::1"),
	}
	rs, _ := routes.Desired(routes.Spec{Mode: routes.ModeNodes, Table: 254}, snap.SortedNodes(), host)
	for i, r := range rs {
		if !r.Dst.IsValid() || r.Dst != r.Dst.Masked() || len(r.Nexthops) == 0 {
			t.Errorf("route %s: bad destination or no next hop", r)
		}
		for _, n := range r.Nexthops {
			onLink := false
			for _, p := range host.Connected {
				onLink = onLink || p.Contains(n.Gw)
			}
			if !onLink || n.Gw == host.Local[0] || n.Gw == host.Local[1] {
				t.Errorf("route %s: next hop %s not a gateway on a link of the host", r, n)
			}
			if n.Gw.Is4() != r.Dst.Addr().Is4() {
				t.Errorf("route %s: next hop of another family", r)
			}
		}
		for _, o := range rs[i+1:] {
			if o.Table == r.Table && o.Dst.Overlaps(r.Dst) {
				t.Errorf("routes %s and %s overlap", r, o)
			}
		}
	}
}

// TestResealReachesLoader: a change to the data fails the checksum as
// saved, and loads once re-sealed; every seed loads and passes the checks.
func TestResealReachesLoader(t *testing.T) {
	dir := t.TempDir()
	for i, s := range seedSnapshots() {
		path := filepath.Join(dir, fmt.Sprintf("seed-%d.json", i))
		if err := cluster.SaveSnapshot(path, s, time.Unix(1700000100, 0)); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`"version":%d,`, s.Version)
		if !strings.Contains(string(raw), want) {
			t.Fatalf("seed %d: no %s in %s", i, want, raw)
		}
		changed := []byte(strings.Replace(string(raw), want, `"version":77,`, 1))
		if err := os.WriteFile(path, changed, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := cluster.LoadSnapshot(path); err == nil || !strings.Contains(err.Error(), "checksum") {
			t.Errorf("seed %d changed, not re-sealed: %v, want a checksum mismatch", i, err)
		}
		if err := os.WriteFile(path, reseal(changed), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := cluster.LoadSnapshot(path)
		if err != nil || got.Version != 77 || len(got.Services) != len(s.Services) || len(got.Nodes) != len(s.Nodes) {
			t.Fatalf("seed %d re-sealed: %v, %v", i, got, err)
		}
		checkDNS(t, got)
		for _, fam := range []proxy.Family{proxy.IPv4, proxy.IPv6} {
			checkIPTables(t, got, fam)
			checkNFTables(t, got, fam)
		}
		checkRoutes(t, got)
	}
}
