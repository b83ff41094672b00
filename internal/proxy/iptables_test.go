package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

// chainOf returns the chain name the renderer gives a Service port (endpoint
// empty) or one of its endpoints.
func chainOf(prefix, portName, proto, endpoint string) string {
	var ep netip.AddrPort
	if endpoint != "" {
		ep = netip.MustParseAddrPort(endpoint)
	}
	h := (&iptRenderer{}).hash(portName, proto, ep)
	return prefix + string(h[:])
}

// goldenInput renders testServices with existing chains that include ours,
// stale ones of ours, and other people's.
func goldenInput(f Family) RenderInput {
	return RenderInput{
		Snapshot:   snapshot(testServices()...),
		Family:     f,
		Masquerade: true,
		ExistingNATChains: []string{
			"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING",
			"DOCKER", "KUBE-SERVICES", "KUBE-SVC-ABCDEFGHIJKLMNOP", "KUBE-SEP-ABCDEFGHIJKLMNOP",
			ServicesChain, PostroutingChain, MarkMasqChain,
			// Current in IPv4; stale in IPv6, where ns1/web has no cluster IP.
			chainOf(svcChainPrefix, "ns1/web:http", "tcp", ""),
			"BRIDGE-SVC-STALESTALESTALE1", "BRIDGE-SEP-STALESTALESTALE2",
			// Ours, but not per Service: left for cleanup.
			"BRIDGE-LEGACY",
		},
		ExistingFilterChains: []string{"INPUT", "FORWARD", "OUTPUT", "DOCKER-USER", ServicesChain},
	}
}

func render(t testing.TB, in RenderInput) (nat, filter []byte, stats RenderStats) {
	t.Helper()
	nat, filter, stats, err := RenderIPTables(in)
	if err != nil {
		t.Fatalf("RenderIPTables: %v", err)
	}
	return nat, filter, stats
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}

func TestRenderIPTablesGolden(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		t.Run(f.String(), func(t *testing.T) {
			nat, filter, _ := render(t, goldenInput(f))
			checkGolden(t, "iptables-"+strings.ToLower(f.String())+".golden", slices.Concat(nat, filter))
			checkConsistency(t, nat, filter)
		})
	}
}

func TestRenderIPTablesStats(t *testing.T) {
	local := []cluster.ServiceKey{{Namespace: "ns4", Name: "local"}}
	for _, tt := range []struct {
		family Family
		want   RenderStats
	}{{
		family: IPv4,
		want: RenderStats{
			Services: 11, ServicePorts: 14, Endpoints: 19, NoEndpoints: 3, Terminating: 1,
			NATChains: 35 + 14, NATRules: 85 + 14 + 11, FilterRules: 3, StaleChains: 2, LocalPolicyIgnored: local, // + a counter chain and rule per port, a jump to it per port with endpoints
		},
	}, {
		family: IPv6,
		want: RenderStats{
			Services: 4, ServicePorts: 5, Endpoints: 5, NoEndpoints: 2,
			NATChains: 14 + 5, NATRules: 27 + 5 + 3, FilterRules: 2, StaleChains: 3,
		},
	}} {
		t.Run(tt.family.String(), func(t *testing.T) {
			_, _, got := render(t, goldenInput(tt.family))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRenderIPTablesFixedChains(t *testing.T) {
	nat, filter, stats := render(t, RenderInput{Family: IPv6, MasqueradeMark: 0x200})
	want := dedent(`
		*nat
		:BRIDGE-SERVICES - [0:0]
		:BRIDGE-POSTROUTING - [0:0]
		:BRIDGE-MARK-MASQ - [0:0]
		-A BRIDGE-POSTROUTING -m mark ! --mark 0x200/0x200 -j RETURN
		-A BRIDGE-POSTROUTING -j MARK --xor-mark 0x200
		-A BRIDGE-POSTROUTING -m comment --comment "bridge-agent service traffic requiring SNAT" -j MASQUERADE --random-fully
		-A BRIDGE-MARK-MASQ -j MARK --or-mark 0x200
		COMMIT
		*filter
		:BRIDGE-SERVICES - [0:0]
		COMMIT
		`)
	if diff := cmp.Diff(want, string(nat)+string(filter)); diff != "" {
		t.Errorf("empty ruleset (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(RenderStats{NATChains: 3, NATRules: 4}, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	checkConsistency(t, nat, filter)
}

func TestRenderIPTablesBadFamily(t *testing.T) {
	if _, _, _, err := RenderIPTables(RenderInput{Snapshot: snapshot(), Family: 5}); err == nil {
		t.Errorf("RenderIPTables with family 5: no error")
	}
}

// TestRenderIPTablesSkipsServices checks that Services the agent must not
// proxy get no rule at all, not even a REJECT.
func TestRenderIPTablesSkipsServices(t *testing.T) {
	var skipped []*cluster.Service
	for _, svc := range testServices() {
		switch svc.Name {
		case "headless", "extname", "other-proxy":
			skipped = append(skipped, svc)
		}
	}
	// An ExternalName Service that still carries a cluster IP and endpoints
	// (never produced by the snapshot builder, but cheap to rule out).
	ext := service("ns5", "ext", []string{"172.30.0.99"}, svcPort("http", 80, "TCP", ready("10.244.1.99", 80)))
	ext.Type = cluster.TypeExternalName
	skipped = append(skipped, ext)

	for _, f := range []Family{IPv4, IPv6} {
		nat, filter, stats := render(t, RenderInput{Snapshot: snapshot(skipped...), Family: f, Masquerade: true})
		empty, emptyFilter, _ := render(t, RenderInput{Family: f, Masquerade: true})
		if !bytes.Equal(nat, empty) || !bytes.Equal(filter, emptyFilter) {
			t.Errorf("%v: Services that are not proxied got rules:\n%s%s", f, nat, filter)
		}
		if stats.Services != 0 {
			t.Errorf("%v: stats.Services = %d, want 0", f, stats.Services)
		}
	}
}

func TestRenderIPTablesStaleChains(t *testing.T) {
	before := snapshot(testServices()...)
	nat, _, _ := render(t, RenderInput{Snapshot: before, Family: IPv4})
	rs, err := parseRestore(nat)
	if err != nil {
		t.Fatal(err)
	}
	var existing []string
	for c := range rs.tables["nat"] {
		existing = append(existing, c)
	}
	// Someone else's chains and our non-per-Service chains stay.
	existing = append(existing, "KUBE-SVC-ABCDEFGHIJKLMNOP", "DOCKER", "BRIDGE-LEGACY")

	// Remove ns1/sctp, and one endpoint of ns1/web:http.
	var after []*cluster.Service
	for _, svc := range testServices() {
		switch svc.Name {
		case "sctp":
			continue
		case "web":
			svc.Ports[0].Endpoints = svc.Ports[0].Endpoints[1:]
		}
		after = append(after, svc)
	}
	nat, filter, stats := render(t, RenderInput{
		Snapshot:             snapshot(after...),
		Family:               IPv4,
		ExistingNATChains:    existing,
		ExistingFilterChains: []string{"BRIDGE-SERVICES", "BRIDGE-SVC-FROMFILTERTABLE1"},
	})
	wantNAT := []string{
		chainOf(cntChainPrefix, "ns1/sctp", "sctp", ""),
		chainOf(svcChainPrefix, "ns1/sctp", "sctp", ""),
		chainOf(sepChainPrefix, "ns1/sctp", "sctp", "10.244.1.20:9999"),
		chainOf(sepChainPrefix, "ns1/web:http", "tcp", "10.244.1.5:8080"),
	}
	slices.Sort(wantNAT)
	if diff := cmp.Diff(wantNAT, deletedChains(nat)); diff != "" {
		t.Errorf("nat -X lines (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"BRIDGE-SVC-FROMFILTERTABLE1"}, deletedChains(filter)); diff != "" {
		t.Errorf("filter -X lines (-want +got):\n%s", diff)
	}
	if stats.StaleChains != 5 {
		t.Errorf("stats.StaleChains = %d, want 5", stats.StaleChains)
	}
	// The counters of the Service ports that stay are not declared: they
	// keep their counts.
	if strings.Contains(string(nat), ":"+chainOf(cntChainPrefix, "ns1/web:http", "tcp", "")) {
		t.Error("an existing counter chain is declared (emptied) again")
	}
	checkConsistencyWith(t, nat, filter, existing)
}

func deletedChains(payload []byte) []string {
	var out []string
	for line := range strings.Lines(string(payload)) {
		if c, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "-X "); ok {
			out = append(out, c)
		}
	}
	return out
}

// TestRenderIPTablesDeterministic renders the same cluster built in different
// orders: maps filled differently, endpoints and existing chains shuffled.
func TestRenderIPTablesDeterministic(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		in := goldenInput(f)
		nat0, filter0, stats0 := render(t, in)
		nat1, filter1, stats1 := render(t, in)
		if !bytes.Equal(nat0, nat1) || !bytes.Equal(filter0, filter1) || !cmp.Equal(stats0, stats1) {
			t.Fatalf("%v: two renders of the same input differ", f)
		}
		rng := rand.New(rand.NewPCG(1, uint64(f)))
		for i := range 20 {
			svcs := testServices()
			rng.Shuffle(len(svcs), func(i, j int) { svcs[i], svcs[j] = svcs[j], svcs[i] })
			for _, svc := range svcs {
				for _, p := range svc.Ports {
					rng.Shuffle(len(p.Endpoints), func(i, j int) { p.Endpoints[i], p.Endpoints[j] = p.Endpoints[j], p.Endpoints[i] })
				}
			}
			in := goldenInput(f)
			in.Snapshot = snapshot(svcs...)
			in.ExistingNATChains = slices.Clone(in.ExistingNATChains)
			rng.Shuffle(len(in.ExistingNATChains), func(i, j int) {
				in.ExistingNATChains[i], in.ExistingNATChains[j] = in.ExistingNATChains[j], in.ExistingNATChains[i]
			})
			in.ExistingNATChains = append(in.ExistingNATChains, in.ExistingNATChains...) // duplicates too
			nat, filter, stats := render(t, in)
			if diff := cmp.Diff(string(nat0)+string(filter0), string(nat)+string(filter)); diff != "" {
				t.Fatalf("%v: shuffle %d changed the output (-first +shuffled):\n%s", f, i, diff)
			}
			if diff := cmp.Diff(stats0, stats); diff != "" {
				t.Fatalf("%v: shuffle %d changed the stats (-first +shuffled):\n%s", f, i, diff)
			}
		}
	}
}

func TestRenderIPTablesConsistencyAtScale(t *testing.T) {
	snap := syntheticSnapshot(1000, 10)
	nat, filter, _ := render(t, RenderInput{Snapshot: snap, Family: IPv4, Masquerade: true})
	checkConsistency(t, nat, filter)
}

// TestNATSizeEstimate checks that the nat payload fits the buffer sized for
// it up front, so that rendering never copies it to grow it.
func TestNATSizeEstimate(t *testing.T) {
	long := strings.Repeat("n", 63)
	var worst []*cluster.Service
	for i := range 20 {
		p := svcPort("port-name-15chr", 65535, "SCTP")
		for j := range 10 {
			p.Endpoints = append(p.Endpoints, ready(fmt.Sprintf("fd00:ffff:ffff:ffff:ffff:ffff:%x:ffff", 0xf000+i*16+j), 65535))
		}
		svc := service(long, fmt.Sprintf("%s-%02d", long[:60], i), []string{fmt.Sprintf("fd00:ffff:ffff:ffff:ffff:ffff:ffff:%x", 0xf000+i)}, p)
		svc.SessionAffinityTimeout = 86400 * time.Second
		worst = append(worst, svc)
	}
	inputs := map[string]RenderInput{
		"golden IPv4": goldenInput(IPv4),
		"golden IPv6": goldenInput(IPv6),
		"long names":  {Snapshot: snapshot(worst...), Family: IPv6, Masquerade: true, MasqueradeMark: 0xffffffff},
		"synthetic":   {Snapshot: syntheticSnapshot(100, 10), Family: IPv4, Masquerade: true},
	}
	for name, in := range inputs {
		if in.MasqueradeMark == 0 {
			in.MasqueradeMark = DefaultMasqueradeMark
		}
		r := &iptRenderer{in: in, mark: fmt.Sprintf("%#x", in.MasqueradeMark)}
		r.plan()
		nat := r.writeNAT()
		if len(nat) > r.natSize {
			t.Errorf("%s: nat payload is %d bytes, estimated at most %d", name, len(nat), r.natSize)
		}
		if len(nat) > 1<<16 && len(nat) < r.natSize*3/4 {
			t.Errorf("%s: nat payload is %d bytes, estimated %d: the estimate wastes memory", name, len(nat), r.natSize)
		}
	}
}

// TestChainName checks that chain names are the first 16 base32 characters
// of the SHA-256 of port name, protocol and endpoint, like kube-proxy's.
func TestChainName(t *testing.T) {
	for _, in := range [][3]string{
		{"ns1/web:http", "tcp", ""},
		{"ns1/web:http", "tcp", "10.244.1.5:8080"},
		{"ns2/dual", "sctp", "[fd00:244:1::40]:8080"},
	} {
		sum := sha256.Sum256([]byte(in[0] + in[1] + in[2]))
		want := "BRIDGE-SEP-" + base32.StdEncoding.EncodeToString(sum[:])[:16]
		if got := chainOf(sepChainPrefix, in[0], in[1], in[2]); got != want {
			t.Errorf("chain name of %q = %s, want %s", in, got, want)
		}
		if len(want) > 28 {
			t.Errorf("chain name %s longer than iptables allows", want)
		}
	}
}

var builtinTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true,
	"DNAT": true, "MARK": true, "MASQUERADE": true,
}

// checkConsistency checks a pair of payloads for what iptables-restore would
// reject or what would be dead weight: rules for undeclared chains, jumps to
// missing chains, chains declared twice, chains nobody jumps to, foreign or
// overlong chain names, and deletions of chains still in use.
func checkConsistency(t *testing.T, nat, filter []byte) {
	t.Helper()
	checkConsistencyWith(t, nat, filter, nil)
}

// checkConsistencyWith is checkConsistency for payloads restored over nat
// chains that exist (RenderInput.ExistingNATChains): jumps to those are
// fine.
func checkConsistencyWith(t *testing.T, nat, filter []byte, existingNAT []string) {
	t.Helper()
	rs, err := parseRestore(nat, filter)
	if err != nil {
		t.Fatalf("payloads do not restore: %v", err)
	}
	fixed := map[string]bool{ServicesChain: true, PostroutingChain: true, MarkMasqChain: true}
	for table, chains := range rs.declared {
		for c, n := range chains {
			if n > 1 {
				t.Errorf("%s: chain %s declared %d times", table, c, n)
			}
			if !strings.HasPrefix(c, ChainPrefix) {
				t.Errorf("%s: chain %s lacks our prefix", table, c)
			}
			if len(c) > 28 {
				t.Errorf("%s: chain name %s is longer than 28 characters", table, c)
			}
		}
	}
	for table, chains := range rs.tables {
		used := map[string]bool{}
		for _, rules := range chains {
			for _, r := range rules {
				target := r.target()
				if target == "" {
					t.Errorf("%s: rule without target in %s: %q", table, r.chain, r.args)
					continue
				}
				if builtinTargets[target] {
					continue
				}
				if _, ok := chains[target]; !ok && !(table == "nat" && slices.Contains(existingNAT, target)) {
					t.Errorf("%s: %s jumps to missing chain %s", table, r.chain, target)
				}
				used[target] = true
			}
		}
		for c := range chains {
			// A counter chain stays while its Service port has no
			// endpoints (and so no chain jumping to it), keeping its count.
			if !builtinChains[c] && !fixed[c] && !used[c] && !strings.HasPrefix(c, cntChainPrefix) {
				t.Errorf("%s: chain %s is declared but nothing jumps to it", table, c)
			}
		}
	}
}

// dedent removes the leading newline and the indentation of the first line
// from every line of s.
func dedent(s string) string {
	s = strings.TrimPrefix(s, "\n")
	indent := s[:len(s)-len(strings.TrimLeft(s, "\t"))]
	var b strings.Builder
	for line := range strings.Lines(s) {
		b.WriteString(strings.TrimPrefix(line, indent))
	}
	return strings.TrimRight(b.String(), "\t")
}

// flowTest is one packet and what should become of it.
type flowTest struct {
	name   string
	src    string // default: the host's own address of the family
	dst    string
	proto  string // default tcp
	dport  int
	output string // "REJECT", "" (untouched) or the DNAT destinations, sorted
	masq   bool
}

// runFlows renders both families of in with every backend and traces each
// packet through the result.
func runFlows(t *testing.T, in RenderInput, tests []flowTest) {
	t.Helper()
	for _, b := range flowBackends {
		t.Run(b.name, func(t *testing.T) {
			tracers := map[Family]traceFunc{}
			for _, f := range []Family{IPv4, IPv6} {
				tracers[f] = b.build(t, in, f)
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					p := mustPacket(tt)
					f := IPv4
					if p.dst.Is6() {
						f = IPv6
					}
					paths, err := tracers[f](p, nil)
					if err != nil {
						t.Fatalf("trace: %v", err)
					}
					output, masq, err := flow(paths)
					if err != nil {
						t.Fatalf("flow: %v", err)
					}
					if output != tt.output {
						t.Errorf("output = %q, want %q", output, tt.output)
					}
					if masq != tt.masq {
						t.Errorf("masquerade = %v, want %v", masq, tt.masq)
					}
				})
			}
		})
	}
}

// traceFunc follows a packet through one backend's rendered rules, given
// the session affinity records that exist already (recent).
type traceFunc func(p packet, recent map[string]bool) ([]path, error)

// flowBackends are the backends the packet-flow tests run against: the
// iptables payloads through the iptables tracer, and the nftables ruleset
// loaded into a fake table through the nftables interpreter.
var flowBackends = []struct {
	name  string
	build func(t *testing.T, in RenderInput, f Family) traceFunc
}{{
	name: "iptables",
	build: func(t *testing.T, in RenderInput, f Family) traceFunc {
		in.Family = f
		nat, filter, _ := render(t, in)
		rs, err := parseRestore(nat, filter)
		if err != nil {
			t.Fatalf("%v: %v", f, err)
		}
		return func(p packet, recent map[string]bool) ([]path, error) {
			return (&tracer{rs: rs, recent: recent}).trace(p)
		}
	},
}, {
	name: "nftables",
	build: func(t *testing.T, in RenderInput, f Family) traceFunc {
		fake, _, _, err := loadNFT(NFTRenderInput{
			Snapshot: in.Snapshot, Family: f, Masquerade: in.Masquerade, MasqueradeMark: in.MasqueradeMark, Zone: in.Zone,
		})
		if err != nil {
			t.Fatalf("%v: %v", f, err)
		}
		tbl := fake.tables[nftTableName(f)]
		return func(p packet, recent map[string]bool) ([]path, error) {
			return (&nftTracer{t: tbl, recent: recent}).trace(p)
		}
	},
}}

func mustPacket(tt flowTest) packet {
	p := packet{proto: tt.proto, dport: tt.dport}
	p.dst = mustAddr(tt.dst)
	switch {
	case tt.src != "":
		p.src = mustAddr(tt.src)
	case p.dst.Is4():
		p.src = mustAddr("192.168.0.2")
	default:
		p.src = mustAddr("fd00:1::2")
	}
	if p.proto == "" {
		p.proto = "tcp"
	}
	return p
}

func TestPacketFlows(t *testing.T) {
	in := RenderInput{Snapshot: snapshot(testServices()...), Masquerade: true}
	runFlows(t, in, []flowTest{
		{name: "cluster IP to three endpoints, named port resolved per slice", dst: "172.30.0.10", dport: 80, output: "10.244.1.5:8080, 10.244.2.7:8081, 10.244.3.9:8080", masq: true},
		{name: "second port of the same Service", dst: "172.30.0.10", dport: 443, output: "10.244.1.5:8443", masq: true},
		{name: "cluster IP, port not in the Service", dst: "172.30.0.10", dport: 8080},
		{name: "cluster IP, other protocol", dst: "172.30.0.10", proto: "udp", dport: 80},
		{name: "UDP", dst: "172.30.0.53", proto: "udp", dport: 53, output: "10.244.1.10:53, 10.244.2.10:53", masq: true},
		{name: "TCP on the same port number", dst: "172.30.0.53", dport: 53, output: "10.244.1.10:53, 10.244.2.10:53", masq: true},
		{name: "SCTP, unnamed port", dst: "172.30.0.60", proto: "sctp", dport: 9999, output: "10.244.1.20:9999", masq: true},
		{name: "dual-stack over IPv4 gets IPv4 endpoints", dst: "172.30.0.40", dport: 80, output: "10.244.1.40:8080, 10.244.2.40:8080", masq: true},
		{name: "dual-stack over IPv6 gets IPv6 endpoints", dst: "fd00:30::40", dport: 80, output: "[fd00:244:1::40]:8080", masq: true},
		{name: "IPv6 only", dst: "fd00:30::50", dport: 80, output: "[fd00:244:1::50]:80, [fd00:244:2::50]:80", masq: true},
		{name: "session affinity, new client", dst: "172.30.0.70", dport: 80, output: "10.244.1.70:80, 10.244.2.70:80", masq: true},
		{name: "session affinity over IPv6, new client", dst: "fd00:30::70", dport: 80, output: "[fd00:244:1::70]:80, [fd00:244:2::70]:80", masq: true},
		{name: "no endpoints: rejected", dst: "172.30.0.80", dport: 80, output: "REJECT"},
		{name: "no endpoints, UDP: rejected", dst: "172.30.0.80", proto: "udp", dport: 514, output: "REJECT"},
		{name: "no endpoints over IPv6: rejected", dst: "fd00:30::80", dport: 80, output: "REJECT"},
		{name: "no endpoints, port not in the Service", dst: "172.30.0.80", dport: 81},
		{name: "not-ready endpoints only: rejected", dst: "172.30.0.81", dport: 80, output: "REJECT"},
		{name: "no ready endpoint: serving terminating one", dst: "172.30.0.82", dport: 80, output: "10.244.1.82:80", masq: true},
		{name: "ready endpoint only, terminating and not ready ignored", dst: "172.30.0.83", dport: 80, output: "10.244.1.83:80", masq: true},
		{name: "Service of another proxy", dst: "172.30.0.90", dport: 80},
		{name: "internalTrafficPolicy Local proxied as Cluster", dst: "172.30.0.91", dport: 80, output: "10.244.1.91:80", masq: true},
		{name: "hints ignored without a zone", dst: "172.30.0.92", dport: 80, output: "10.244.1.92:80, 10.244.2.92:80, 10.244.3.92:80", masq: true},
		{name: "Pod IP directly", dst: "10.244.1.5", dport: 8080},
		{name: "outside the cluster", dst: "8.8.8.8", proto: "udp", dport: 53},
		{name: "outside the cluster over IPv6", dst: "2001:db8::1", dport: 443},
	})
}

func TestPacketFlowsNoMasquerade(t *testing.T) {
	in := RenderInput{Snapshot: snapshot(testServices()...), Masquerade: false}
	runFlows(t, in, []flowTest{
		{name: "not masqueraded", dst: "172.30.0.10", dport: 80, output: "10.244.1.5:8080, 10.244.2.7:8081, 10.244.3.9:8080"},
		{name: "not masqueraded over IPv6", dst: "fd00:30::50", dport: 80, output: "[fd00:244:1::50]:80, [fd00:244:2::50]:80"},
		{name: "hairpin is masqueraded", src: "10.244.1.5", dst: "172.30.0.10", dport: 443, output: "10.244.1.5:8443", masq: true},
		{name: "hairpin over IPv6 is masqueraded", src: "fd00:244:1::40", dst: "fd00:30::40", dport: 80, output: "[fd00:244:1::40]:8080", masq: true},
		{name: "no endpoints: rejected", dst: "172.30.0.80", dport: 80, output: "REJECT"},
	})
}

func TestPacketFlowsZone(t *testing.T) {
	in := RenderInput{Snapshot: snapshot(testServices()...), Masquerade: true, Zone: "zone-a"}
	runFlows(t, in, []flowTest{
		{name: "hints for the zone narrow the endpoints", dst: "172.30.0.92", dport: 80, output: "10.244.1.92:80, 10.244.3.92:80", masq: true},
		{name: "Service without hints uses all endpoints", dst: "172.30.0.10", dport: 80, output: "10.244.1.5:8080, 10.244.2.7:8081, 10.244.3.9:8080", masq: true},
	})
	in.Zone = "zone-c"
	runFlows(t, in, []flowTest{
		{name: "no hint for the zone: all endpoints", dst: "172.30.0.92", dport: 80, output: "10.244.1.92:80, 10.244.2.92:80, 10.244.3.92:80", masq: true},
	})
}

// TestSessionAffinity follows a first packet down each of its paths, then
// checks that a second one from the same client sticks to that path's
// endpoint, and that another client is not affected.
func TestSessionAffinity(t *testing.T) {
	in := RenderInput{Snapshot: snapshot(testServices()...), Masquerade: true}
	for _, b := range flowBackends {
		for _, tt := range []struct {
			family Family
			dst    string
		}{{IPv4, "172.30.0.70"}, {IPv6, "fd00:30::70"}} {
			t.Run(b.name+"/"+tt.family.String(), func(t *testing.T) {
				trace := b.build(t, in, tt.family)
				first := mustPacket(flowTest{dst: tt.dst, dport: 80})
				paths, err := trace(first, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(paths) != 2 {
					t.Fatalf("first packet has %d paths, want 2", len(paths))
				}
				for _, p := range paths {
					if len(p.recent) != 1 {
						t.Errorf("path to %s records the client %d times: %q", p.dnat, len(p.recent), p.recent)
						continue
					}
					if b.name == "iptables" {
						want := []string{chainOf(sepChainPrefix, "ns2/sticky:http", "tcp", p.dnat)}
						if diff := cmp.Diff(want, p.recent); diff != "" {
							t.Errorf("path to %s records the client in (-want +got):\n%s", p.dnat, diff)
						}
					}
					remembered := map[string]bool{p.recent[0]: true}
					again, err := trace(first, remembered)
					if err != nil {
						t.Fatal(err)
					}
					if out, _, err := flow(again); err != nil || out != p.dnat {
						t.Errorf("second packet after %s went to %q (%v), want %s", p.dnat, out, err, p.dnat)
					}
					if b.name == "iptables" {
						continue // the iptables tracer's recent lists do not track clients
					}
					// The record is the client's own: another client spreads.
					other := first
					other.src = mustAddr(strings.Replace(first.src.String(), "2", "3", 1))
					if again, err := trace(other, remembered); err != nil || len(again) != 2 {
						t.Errorf("another client after %s: %d paths (%v), want 2", p.dnat, len(again), err)
					}
				}

				// Without affinity, nothing is recorded.
				plain := mustPacket(flowTest{dst: strings.Replace(tt.dst, "70", "40", 1), dport: 80})
				paths, err = trace(plain, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range paths {
					if len(p.recent) != 0 {
						t.Errorf("Service without affinity records the client in %q", p.recent)
					}
				}
			})
		}
	}
}

// TestEvenSpread checks that the statistic matches give every endpoint the
// same share of new connections, for 1 to 12 endpoints.
func TestEvenSpread(t *testing.T) {
	var svcs []*cluster.Service
	for n := 1; n <= 12; n++ {
		p := svcPort("http", 80, "TCP")
		for i := range n {
			p.Endpoints = append(p.Endpoints, ready(fmt.Sprintf("10.244.%d.%d", n, i+1), 8080))
		}
		svcs = append(svcs, service("spread", fmt.Sprintf("n%d", n), []string{fmt.Sprintf("172.30.1.%d", n)}, p))
	}
	for _, b := range flowBackends {
		t.Run(b.name, func(t *testing.T) {
			trace := b.build(t, RenderInput{Snapshot: snapshot(svcs...)}, IPv4)
			for n := 1; n <= 12; n++ {
				paths, err := trace(mustPacket(flowTest{dst: fmt.Sprintf("172.30.1.%d", n), dport: 80}), nil)
				if err != nil {
					t.Fatal(err)
				}
				got := shares(paths)
				if len(got) != n {
					t.Errorf("%d endpoints: %d reachable", n, len(got))
				}
				for dest, share := range got {
					if math.Abs(share-1/float64(n)) > 1e-9 {
						t.Errorf("%d endpoints: %s gets %.12f of connections, want %.12f", n, dest, share, 1/float64(n))
					}
				}
			}
		})
	}
}

func BenchmarkRenderIPTables(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d/endpoints=10", n), func(b *testing.B) {
			in := RenderInput{Snapshot: syntheticSnapshot(n, 10), Family: IPv4, Masquerade: true}
			// A steady-state sync: every chain already exists.
			nat, _, _ := render(b, in)
			for line := range strings.Lines(string(nat)) {
				if c, ok := strings.CutPrefix(line, ":"); ok {
					in.ExistingNATChains = append(in.ExistingNATChains, strings.Fields(c)[0])
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				nat, _, _ = render(b, in)
			}
			b.ReportMetric(float64(len(nat)), "nat-bytes")
		})
	}
}
