package doctor

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/bridge-agent/bridge-agent/deploy"
	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
)

func jwt(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(claims)) + "." + enc([]byte("sig"))
}

func TestTokenExpiry(t *testing.T) {
	for _, tc := range []struct {
		token string
		want  time.Time
		ok    bool
	}{
		{jwt(`{"exp":1700000000,"sub":"x"}`), time.Unix(1700000000, 0), true},
		{jwt(`{"exp":1.7e9}`), time.Unix(1700000000, 0), true},
		{jwt(`{"sub":"no exp"}`), time.Time{}, false},
		{"abcdef.0123456789abcdef", time.Time{}, false}, // a bootstrap token
		{"garbage", time.Time{}, false},
		{"a.!!!.c", time.Time{}, false},
	} {
		got, ok := TokenExpiry(tc.token)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("TokenExpiry(%q) = %v, %v; want %v, %v", tc.token, got, ok, tc.want, tc.ok)
		}
	}
}

func TestExpiryCheck(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		c    Credential
		want Verdict
		text string
	}{
		{Credential{Kind: "token", Expiry: now.Add(-time.Hour)}, Fail, "expired at 2026-01-02T02:04:05Z"},
		{Credential{Kind: "token", Expiry: now}, Fail, "expired"},
		{Credential{Kind: "token", Expiry: now.Add(48 * time.Hour)}, Warn, "in 48h0m0s"},
		{Credential{Kind: "token", Expiry: now.Add(365 * 24 * time.Hour)}, OK, "expires at 2027"},
		{Credential{Kind: "token"}, OK, "no expiry"},
		{Credential{Kind: "token", Problem: "read token file: no such file"}, Fail, "no such file"},
		// A host's own token: short lifetimes are normal, the last fifth
		// means the agent did not renew it.
		{Credential{Kind: "token", Host: "vm1", IssuedAt: now.Add(-time.Hour), Expiry: now.Add(23 * time.Hour)}, OK, "the agent renews it"},
		{Credential{Kind: "token", Host: "vm1", IssuedAt: now.Add(-23 * time.Hour), Expiry: now.Add(time.Hour)}, Warn, "has not been renewed"},
		{Credential{Kind: "token", Host: "vm1", IssuedAt: now.Add(-25 * time.Hour), Expiry: now.Add(-time.Hour)}, Fail, "cannot renew itself"},
	} {
		c := expiryCheck(tc.c, now)
		if c.Verdict != tc.want || !strings.Contains(c.Detail, tc.text) || (c.Verdict != OK) != (c.Fix != "") {
			t.Errorf("expiryCheck(%+v) = %+v; want %s with %q, a fix exactly when not ok", tc.c, c, tc.want, tc.text)
		}
		if tc.c.Host != "" && c.Verdict == Fail && !strings.Contains(c.Fix, "bridge-agent host add vm1") {
			t.Errorf("expired host token: fix %q does not name host add", c.Fix)
		}
	}
}

func TestSkewCheck(t *testing.T) {
	server := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		skew time.Duration
		want Verdict
		text string
	}{
		{0, OK, "within 1s"},
		{1500 * time.Millisecond, OK, "within 2s"},
		{10 * time.Second, Warn, "10s ahead of"},
		{-10 * time.Second, Warn, "10s behind"},
		{-2 * time.Hour, Fail, "2h0m0s behind"},
	} {
		c := skewCheck(server.Add(tc.skew), server)
		if c.Verdict != tc.want || !strings.Contains(c.Detail, tc.text) {
			t.Errorf("skew %s: %+v; want %s with %q", tc.skew, c, tc.want, tc.text)
		}
	}
}

func TestClassifyAPIError(t *testing.T) {
	gr := schema.GroupResource{Group: "authentication.k8s.io", Resource: "selfsubjectreviews"}
	for name, tc := range map[string]struct {
		err     error
		expired bool
		detail  string
		fix     string
	}{
		"wrong CA": {fmt.Errorf("Post: %w", fmt.Errorf("tls: %w", errors.New("x509: certificate signed by unknown authority"))), false,
			"wrong CA", "--ca-file"},
		"refused":       {fmt.Errorf("dial: %w", syscall.ECONNREFUSED), false, "connection refused", "server:"},
		"no route":      {fmt.Errorf("dial: %w", syscall.ENETUNREACH), false, "no route to the API server", "route"},
		"garbage token": {apierrors.NewUnauthorized("Unauthorized"), false, "malformed, revoked", "create token"},
		"expired token": {apierrors.NewUnauthorized("Unauthorized"), true, "it has expired", "create token"},
		"forbidden":     {apierrors.NewForbidden(gr, "", errors.New("no")), false, "refused the request", "rbac.yaml"},
		"plain HTTP":    {errors.New("http: server gave HTTP response to HTTPS client"), false, "plain HTTP", "https://"},
	} {
		c := ClassifyAPIError("10.0.0.1:6443", tc.err, tc.expired)
		if c.Verdict != Fail || !strings.Contains(c.Detail, tc.detail) || !strings.Contains(c.Fix, tc.fix) {
			t.Errorf("%s: %+v; want detail %q, fix %q", name, c, tc.detail, tc.fix)
		}
	}
}

// TestRequiredAccessMatchesRBAC: the doctor asks for exactly what
// deploy/rbac.yaml grants.
func TestRequiredAccessMatchesRBAC(t *testing.T) {
	var granted []string
	for _, doc := range strings.Split(string(deploy.RBAC), "\n---\n") {
		var cr rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &cr); err != nil {
			t.Fatal(err)
		}
		if cr.Kind != "ClusterRole" {
			continue
		}
		for _, r := range cr.Rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						granted = append(granted, Access{Group: g, Resource: res, Verb: v}.String())
					}
				}
			}
		}
	}
	var need []string
	for _, a := range RequiredAccess {
		need = append(need, a.String())
	}
	slices.Sort(granted)
	slices.Sort(need)
	if !slices.Equal(granted, need) {
		t.Errorf("deploy/rbac.yaml grants %v\ndoctor checks %v", granted, need)
	}
}

func TestRangeCheck(t *testing.T) {
	svc := Range{Prefix: netip.MustParsePrefix("10.96.0.0/16"), Kind: KindService, Probe: netip.MustParseAddr("10.96.0.1")}
	c := rangeCheck(svc, Route{}, syscall.ENETUNREACH)
	if c.Verdict != Fail || !strings.Contains(c.Fix, "ip route add 10.96.0.0/16") || !strings.Contains(c.Detail, "before NAT") {
		t.Errorf("no route to the Service range: %+v", c)
	}
	pod := Range{Prefix: netip.MustParsePrefix("10.244.0.0/16"), Kind: KindPod, Probe: netip.MustParseAddr("10.244.0.1")}
	c = rangeCheck(pod, Route{}, syscall.ENETUNREACH)
	if c.Verdict != Fail || !strings.Contains(c.Fix, "routes.mode gateway") || !strings.Contains(c.Fix, "overlay") {
		t.Errorf("no route to the pod range: %+v", c)
	}
	c = rangeCheck(svc, Route{Gw: netip.MustParseAddr("10.0.0.1"), Dev: "eth0", Table: 254}, nil)
	if c.Verdict != OK || c.Detail != "10.96.0.1 via 10.0.0.1 dev eth0 table main" {
		t.Errorf("routed: %+v", c)
	}
}

func TestEndpointsCheck(t *testing.T) {
	ours := []Route{{Dst: netip.MustParsePrefix("10.244.1.0/24"), Gw: netip.MustParseAddr("10.0.0.21"), Protocol: 98}}
	a := netip.MustParseAddr
	viaOurs := EndpointRoute{Service: "d/web", Addr: a("10.244.1.5"), Route: Route{Gw: a("10.0.0.21")}}
	onLink := EndpointRoute{Service: "d/web", Addr: a("10.0.0.50"), Route: Route{Dev: "eth0"}}
	foreign := EndpointRoute{Service: "d/web", Addr: a("10.245.0.5"), Route: Route{Gw: a("10.0.0.1")}}
	none := EndpointRoute{Service: "d/lost", Addr: a("10.99.0.5"), Err: syscall.ENETUNREACH}
	for _, tc := range []struct {
		eps  []EndpointRoute
		want Verdict
		text string
	}{
		{[]EndpointRoute{viaOurs, onLink}, OK, "all 2 endpoints routed"},
		{[]EndpointRoute{viaOurs, foreign}, Warn, "10.245.0.5 via 10.0.0.1"},
		{[]EndpointRoute{viaOurs, foreign, none}, Fail, "1 of 3 endpoints are outside every routed pod range and not on a connected network (connections get \"network is unreachable\"): 10.99.0.5 (d/lost)"},
		{nil, Skip, "no endpoints"},
	} {
		c := endpointsCheck(tc.eps, ours)
		if c.Verdict != tc.want || !strings.Contains(c.Detail, tc.text) {
			t.Errorf("%v: %+v; want %s with %q", tc.eps, c, tc.want, tc.text)
		}
	}
}

func TestShadowCheck(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	ours := []Route{{Dst: p("10.244.1.0/24"), Gw: a("10.0.0.21"), Dev: "eth0", Table: 254, Protocol: 98}}
	table := append(slices.Clone(ours), Route{Dst: p("10.0.0.0/24"), Dev: "eth0", Table: 254, Protocol: 2})
	ok := map[netip.Prefix]Route{p("10.244.1.0/24"): ours[0]}
	if c := shadowCheck(ours, table, nil, ok, 98, 254); c.Verdict != OK {
		t.Errorf("nothing foreign: %+v", c)
	}
	specific := append(slices.Clone(table), Route{Dst: p("10.244.1.128/25"), Gw: a("10.0.0.99"), Dev: "eth0", Table: 254, Protocol: 4})
	if c := shadowCheck(ours, specific, nil, ok, 98, 254); c.Verdict != Fail || !strings.Contains(c.Detail, "10.244.1.128/25 via 10.0.0.99") || !strings.Contains(c.Fix, "ip route del 10.244.1.128/25 table main") {
		t.Errorf("a more specific foreign route: %+v", c)
	}
	rules := []Rule{{Priority: 100, Table: 100}}
	elsewhere := map[netip.Prefix]Route{p("10.244.1.0/24"): {Gw: a("192.168.9.1"), Dev: "wg0", Table: 100}}
	if c := shadowCheck(ours, table, rules, elsewhere, 98, 254); c.Verdict != Fail || !strings.Contains(c.Detail, "policy rule 100: from all lookup 100 answers first") {
		t.Errorf("a rule before main: %+v", c)
	}
	if c := shadowCheck(nil, table, nil, nil, 98, 254); c.Verdict != Skip {
		t.Errorf("no routes of ours: %+v", c)
	}
}

func TestLocalTrapCheck(t *testing.T) {
	for _, tc := range []struct {
		domain, hosts string
		want          Verdict
	}{
		{"cluster.local", "files mdns4_minimal [NOTFOUND=return] dns myhostname", Fail},
		{"cluster.local", "files mdns4_minimal [notfound=return] resolve [!UNAVAIL=return] dns", Fail},
		{"cluster.local", "files mdns4 dns", Warn},
		{"cluster.local", "files dns mdns4_minimal [NOTFOUND=return]", OK},
		{"cluster.local", "files resolve [!UNAVAIL=return] dns", OK},
		{"cluster.local", "", OK},
		{"k8s.example", "files mdns4_minimal [NOTFOUND=return] dns", OK},
	} {
		c := localTrapCheck(tc.domain, tc.hosts, hostdns.ModeResolvConf)
		if c.Verdict != tc.want || (c.Verdict != OK) != (c.Fix != "") {
			t.Errorf("%s with %q: %+v; want %s", tc.domain, tc.hosts, c, tc.want)
		}
	}
	if got := hostsLine([]byte("# comment\npasswd: files\nhosts:  files mdns4_minimal [NOTFOUND=return] dns # x\n")); got != "files mdns4_minimal [NOTFOUND=return] dns" {
		t.Errorf("hostsLine: %q", got)
	}
}

func TestParseResolvectl(t *testing.T) {
	out := "kubernetes.default.svc.cluster.local: 10.96.0.1                   -- link: bagent-dns\n                                      fd00:96::1                  -- link: bagent-dns\n"
	got := parseResolvectl([]byte(out))
	want := []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00:96::1")}
	if !slices.Equal(got, want) {
		t.Errorf("parseResolvectl = %v, want %v", got, want)
	}
	ch := judgeResolvectl(Check{}, "k.default.svc.cluster.local", want[:1], []byte("k.default.svc.cluster.local: 192.0.2.1 -- link: eth0\n"), nil)
	if ch.Verdict != Fail || !strings.Contains(ch.Detail, "another DNS server") {
		t.Errorf("a foreign answer: %+v", ch)
	}
}

func TestEndpointVerdict(t *testing.T) {
	a := netip.MustParseAddr
	ready := cluster.Endpoint{Addr: a("10.244.1.5"), Port: 80, Ready: true, Serving: true}
	term := cluster.Endpoint{Addr: a("10.244.1.6"), Port: 80, Serving: true, Terminating: true}
	down := cluster.Endpoint{Addr: a("10.244.1.7"), Port: 80}
	svc := &cluster.Service{}
	port := &cluster.Port{Port: 80, Protocol: "TCP", Endpoints: []cluster.Endpoint{ready, term, down}}
	sel := proxy.SelectEndpoints(svc, port, proxy.IPv4, "")
	for _, tc := range []struct {
		e    cluster.Endpoint
		want string
	}{
		{ready, "gets traffic (ready)"},
		{term, "excluded: terminating (used only while no endpoint is ready)"},
		{down, "excluded: not ready"},
	} {
		if got := endpointVerdict(tc.e, sel); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.e.Addr, got, tc.want)
		}
	}
	port.Endpoints = []cluster.Endpoint{term, down}
	sel = proxy.SelectEndpoints(svc, port, proxy.IPv4, "")
	if got := endpointVerdict(term, sel); got != "gets traffic (serving but terminating: no endpoint is ready)" {
		t.Errorf("only terminating: %q", got)
	}
}

func TestMatchRules(t *testing.T) {
	nft := []byte(`table ip bridge-agent {
	map service-ips {
		elements = { 10.96.0.10 . tcp . 80 : goto service-ABC-demo/web/tcp/http,
			     10.96.0.100 . tcp . 80 : goto service-DEF-demo/other/tcp/http,
			     10.96.0.10 . tcp . 8080 : goto service-GHI }
	}
}`)
	got := matchRules(nft, netip.MustParseAddr("10.96.0.10"), 80)
	if len(got) != 1 || !strings.Contains(got[0], "service-ABC") {
		t.Errorf("nft: %q", got)
	}
	ipt := []byte("-A BAGENT-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"demo/web:http\" -m tcp --dport 80 -j BAGENT-SVC-X\n-A BAGENT-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j BAGENT-SVC-Y\n")
	got = matchRules(ipt, netip.MustParseAddr("10.96.0.10"), 80)
	if len(got) != 1 || !strings.Contains(got[0], "BAGENT-SVC-X") {
		t.Errorf("iptables: %q", got)
	}
}

func TestServiceTraffic(t *testing.T) {
	metrics := `# HELP bridge_agent_service_connections_total x
# TYPE bridge_agent_service_connections_total counter
bridge_agent_service_connections_total{namespace="demo",port="http",protocol="TCP",service="web"} 42
bridge_agent_service_connections_total{namespace="demo",port="http",protocol="TCP",service="other"} 7
bridge_agent_syncs_total{consumer="all",result="success"} 3
`
	p := &cluster.Port{Name: "http", Port: 80, Protocol: "TCP"}
	got := ServiceTraffic(metrics, "demo", "web", p)
	if want := []string{"bridge_agent_service_connections_total protocol=TCP 42"}; !slices.Equal(got, want) {
		t.Errorf("ServiceTraffic = %q, want %q", got, want)
	}
	if got := ServiceTraffic("bridge_agent_syncs_total 3\n", "demo", "web", p); got != nil {
		t.Errorf("without counters: %q, want nothing", got)
	}
}

func TestSplitTarget(t *testing.T) {
	for in, want := range map[string]string{
		"web.demo.svc":      "web.demo.svc 0",
		"web.demo.svc:80":   "web.demo.svc 80",
		"10.96.0.10":        "10.96.0.10 0",
		"10.96.0.10:53":     "10.96.0.10 53",
		"fd00::10":          "fd00::10 0",
		"[fd00::10]:443":    "fd00::10 443",
		"web.demo.svc:http": "error",
		"a b":               "error",
	} {
		h, p, err := splitTarget(in)
		got := fmt.Sprintf("%s %d", h, p)
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("splitTarget(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestRefusalsCheck(t *testing.T) {
	rs, err := json.Marshal(routes.Status{Problems: []routes.Problem{{Reason: routes.ReasonConflict, Node: "node-2", CIDR: netip.MustParsePrefix("10.244.2.0/24"), Detail: "route 10.244.2.0/24 proto static"}}})
	if err != nil {
		t.Fatal(err)
	}
	st := &daemon.Status{Consumers: []daemon.ConsumerState{{Name: "routes", Details: rs}}}
	c := refusalsCheck(st)
	if c.Verdict != Warn || !strings.Contains(c.Detail, "1 refused: route ") || !strings.Contains(c.Detail, "10.244.2.0/24") || c.Fix == "" {
		t.Errorf("a refused route: %+v", c)
	}
	if c := refusalsCheck(&daemon.Status{}); c.Verdict != OK {
		t.Errorf("nothing refused: %+v", c)
	}
}

func TestRunBadConfig(t *testing.T) {
	rep := Run(t.Context(), Options{ConfigPath: "/etc/x.yaml", ConfigErr: errors.New("dns.listenAddress: must be a loopback address")})
	if rep.OK() || len(rep.Checks) != 2 || rep.Checks[0].Verdict != Fail || !strings.Contains(rep.Checks[0].Detail, "dns.listenAddress") || rep.Checks[1].Verdict != Skip {
		t.Errorf("bad config: %+v", rep)
	}
}
