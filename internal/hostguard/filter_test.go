package hostguard

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

func svc(name string, ips ...string) *cluster.Service {
	return &cluster.Service{ServiceKey: cluster.ServiceKey{Namespace: "ns", Name: name}, Type: cluster.TypeClusterIP,
		ClusterIPs: addrs(ips...), Proxied: true}
}

func snapOf(version uint64, cidrs []netip.Prefix, svcs ...*cluster.Service) *cluster.Snapshot {
	s := &cluster.Snapshot{Version: version, Services: map[cluster.ServiceKey]*cluster.Service{}, ServiceCIDRs: cidrs}
	for _, v := range svcs {
		s.Services[v.ServiceKey] = v
		s.Changed = append(s.Changed, v.ServiceKey)
	}
	return s
}

// next returns the successor of prev with the given Services replaced
// (nil: removed), as the tracker makes it.
func next(prev *cluster.Snapshot, set map[string]*cluster.Service) *cluster.Snapshot {
	s := &cluster.Snapshot{Version: prev.Version + 1, Services: map[cluster.ServiceKey]*cluster.Service{}, ServiceCIDRs: prev.ServiceCIDRs}
	for k, v := range prev.Services {
		s.Services[k] = v
	}
	for name, v := range set {
		k := cluster.ServiceKey{Namespace: "ns", Name: name}
		if v == nil {
			delete(s.Services, k)
		} else {
			s.Services[k] = v
		}
		s.Changed = append(s.Changed, k)
	}
	return s
}

func dump(s *cluster.Snapshot) string {
	var lines []string
	for _, v := range s.SortedServices() {
		lines = append(lines, v.ServiceKey.String()+" "+fmt.Sprint(v.ClusterIPs))
	}
	return strings.Join(lines, "\n")
}

func key(name string) cluster.ServiceKey { return cluster.ServiceKey{Namespace: "ns", Name: name} }

// TestFilterRefuses: ClusterIPs outside the Service ranges, in the host's
// networks or special ranges are refused; a Service keeps its other IPs;
// a ServiceCIDR over the host's network is refused with every ClusterIP in
// it; unrefused Services keep their pointers.
func TestFilterRefuses(t *testing.T) {
	cidrs := prefixes("10.96.0.0/16", "10.250.0.0/24", "fd00:96::/108")
	ok := svc("ok", "10.96.0.10", "fd00:96::10")
	gw := svc("gw", "10.250.0.1")
	dual := svc("dual", "10.250.0.7", "fd00:96::7")
	outside := svc("outside", "10.97.0.1")
	meta := svc("meta", "169.254.169.254")
	headless := &cluster.Service{ServiceKey: key("headless"), Headless: true}
	in := snapOf(1, cidrs, ok, gw, dual, outside, meta, headless)
	f := NewFilter(nil, nil)
	out := f.Apply(in, host)
	want := strings.Join([]string{
		"ns/dual [fd00:96::7]",
		"ns/headless []",
		"ns/ok [10.96.0.10 fd00:96::10]",
	}, "\n")
	if got := dump(out); got != want {
		t.Errorf("filtered:\n%s\nwant:\n%s", got, want)
	}
	if out.Services[key("ok")] != ok || out.Services[key("headless")] != headless {
		t.Error("an unrefused Service lost its pointer")
	}
	if !slices.Equal(out.ServiceCIDRs, prefixes("10.96.0.0/16", "fd00:96::/108")) {
		t.Errorf("allowed ranges %v", out.ServiceCIDRs)
	}
	st := f.Status()
	var got []string
	for _, c := range st.RefusedServiceCIDRs {
		got = append(got, c.CIDR.String()+" "+string(c.Reason))
	}
	for _, r := range st.RefusedClusterIPs {
		got = append(got, r.Service.String()+" "+r.IP.String()+" "+string(r.Reason))
	}
	wantRefused := []string{
		"10.250.0.0/24 hostAddress",
		"ns/dual 10.250.0.7 specialRange",
		"ns/gw 10.250.0.1 specialRange",
		"ns/meta 169.254.169.254 specialRange",
		"ns/outside 10.97.0.1 outsideServiceCIDRs",
	}
	// The host's own checks come first: 10.250.0.1 is its gateway, 10.250.0.7
	// is in its network.
	wantRefused[1], wantRefused[2] = "ns/dual 10.250.0.7 hostNetwork", "ns/gw 10.250.0.1 hostGateway"
	if !slices.Equal(got, wantRefused) {
		t.Errorf("refused:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantRefused, "\n"))
	}
	if st.ServiceCIDRsFrom != "cluster" || st.Note != "" {
		t.Errorf("from %q note %q", st.ServiceCIDRsFrom, st.Note)
	}
	var text bytes.Buffer
	st.WriteText(&text)
	for _, s := range []string{"! service range 10.250.0.0/24: hostAddress", "! ns/gw 10.250.0.1: hostGateway", "service ranges: 10.96.0.0/16, fd00:96::/108 (from the cluster)"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("status text lacks %q:\n%s", s, text.String())
		}
	}

	// The same input gives the same output; a successor changing only ok
	// keeps the refused Services' filtered copies.
	if f.Apply(in, host) != out {
		t.Error("same input, new output")
	}
	ok2 := svc("ok", "10.96.0.11")
	in2 := next(in, map[string]*cluster.Service{"ok": ok2})
	out2 := f.Apply(in2, host)
	if out2.Services[key("dual")] != out.Services[key("dual")] {
		t.Error("an unchanged refused Service got a new copy")
	}
	if !slices.Equal(out2.Changed, []cluster.ServiceKey{key("ok")}) {
		t.Errorf("changed %v", out2.Changed)
	}
	// New facts (the gateway moved): same verdicts, same copies; the
	// filtered ClusterIPs follow.
	moved := *host
	moved.Gateways = addrs("10.250.0.2")
	out3 := f.Apply(in2, &moved)
	if out3.Services[key("dual")] != out.Services[key("dual")] || len(out3.Changed) != 0 {
		t.Errorf("facts change with the same verdicts: dual copied or changed %v", out3.Changed)
	}
}

// TestFilterNoRanges: without any Service range the guard alone decides,
// and status says so; configured ranges apply while the cluster serves
// none.
func TestFilterNoRanges(t *testing.T) {
	in := snapOf(1, nil, svc("a", "10.200.0.1"), svc("b", "10.250.0.1"))
	f := NewFilter(nil, nil)
	if got, want := dump(f.Apply(in, host)), "ns/a [10.200.0.1]"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if st := f.Status(); st.Note != NoRangesNote || st.ServiceCIDRsFrom != "" {
		t.Errorf("status %+v", st)
	}
	f = NewFilter(prefixes("10.96.0.0/12"), nil)
	if got := dump(f.Apply(in, host)); got != "" {
		t.Errorf("configured ranges: got %s", got)
	}
	if st := f.Status(); st.ServiceCIDRsFrom != "config" || len(st.RefusedClusterIPs) != 2 {
		t.Errorf("status %+v", st)
	}
}

// TestFilterIncrementalEqualsFull replays random changes of Services,
// Service ranges and host facts: each result equals a fresh filter's, an
// unchanged Service keeps its output pointer, and Changed names every key
// whose pointer changed.
func TestFilterIncrementalEqualsFull(t *testing.T) {
	pool := []string{"10.96.0.1", "10.96.0.2", "10.250.0.1", "10.250.0.9", "10.97.0.5", "169.254.169.254",
		"fd00:96::1", "fd00:250::5", "::ffff:10.96.0.3", "10.250.1.1"}
	facts := []*Facts{host, {Local: addrs("10.250.1.10"), Connected: prefixes("10.250.1.0/24"), Gateways: addrs("10.250.1.1")}}
	ranges := [][]netip.Prefix{nil, prefixes("10.96.0.0/16", "fd00:96::/108"), prefixes("10.96.0.0/16", "10.250.0.0/23")}
	rng := rand.New(rand.NewPCG(1, 2))
	randSvc := func(name string) *cluster.Service {
		var ips []string
		for range 1 + rng.IntN(2) {
			ips = append(ips, pool[rng.IntN(len(pool))])
		}
		return svc(name, ips...)
	}
	f := NewFilter(prefixes("10.96.0.0/12"), nil)
	cur := snapOf(1, nil)
	fc := facts[0]
	var prevOut, prevIn *cluster.Snapshot
	var prevFacts *Facts
	for step := range 400 {
		switch rng.IntN(10) {
		case 0:
			fc = facts[rng.IntN(len(facts))]
		case 1:
			cur = next(cur, nil)
			cur.ServiceCIDRs = ranges[rng.IntN(len(ranges))]
		default:
			set := map[string]*cluster.Service{}
			for range 1 + rng.IntN(3) {
				name := fmt.Sprintf("s%d", rng.IntN(12))
				if rng.IntN(4) == 0 {
					set[name] = nil
				} else {
					set[name] = randSvc(name)
				}
			}
			cur = next(cur, set)
		}
		out := f.Apply(cur, fc)
		fresh := NewFilter(prefixes("10.96.0.0/12"), nil).Apply(cur, fc)
		if dump(out) != dump(fresh) {
			t.Fatalf("step %d: incremental\n%s\nfull\n%s", step, dump(out), dump(fresh))
		}
		if !slices.Equal(out.ServiceCIDRs, fresh.ServiceCIDRs) {
			t.Fatalf("step %d: ranges %v, fresh %v", step, out.ServiceCIDRs, fresh.ServiceCIDRs)
		}
		if prevOut != nil {
			for _, k := range diffServices(prevOut, out) {
				if !slices.Contains(out.Changed, k) {
					t.Fatalf("step %d: %s changed pointer but is not in Changed %v", step, k, out.Changed)
				}
			}
			same := fc == prevFacts && slices.Equal(cur.ServiceCIDRs, prevIn.ServiceCIDRs)
			for k, v := range out.Services {
				if same && cur.Services[k] == prevIn.Services[k] && prevOut.Services[k] != v {
					t.Fatalf("step %d: unchanged %s got a new pointer", step, k)
				}
			}
		}
		prevOut, prevIn, prevFacts = out, cur, fc
	}
	if f.full > 150 {
		t.Errorf("%d of 400 steps evaluated every Service", f.full)
	}
}

// countingHandler counts log records by level and message.
type countingHandler struct {
	mu     sync.Mutex
	counts map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[r.Level.String()+" "+r.Message]++
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// TestFilterLogsOncePerChange: a refusal is logged when it appears and
// when it goes, not on every snapshot; a burst of refusals is logged as ten
// lines and a count.
func TestFilterLogsOncePerChange(t *testing.T) {
	h := &countingHandler{counts: map[string]int{}}
	f := NewFilter(nil, slog.New(h))
	const refusedMsg = "WARN host guard: ClusterIP refused: no rules, no DNS answer"
	cur := snapOf(1, prefixes("10.96.0.0/16"), svc("gw", "10.250.0.1"), svc("ok", "10.96.0.1"))
	f.Apply(cur, host)
	for i := range 20 { // the cluster keeps changing other Services
		name := fmt.Sprintf("other%d", i)
		cur = next(cur, map[string]*cluster.Service{name: svc(name, "10.96.1.1")})
		f.Apply(cur, host)
	}
	moved := *host // new facts, same verdict
	f.Apply(cur, &moved)
	if n := h.counts[refusedMsg]; n != 1 {
		t.Errorf("one refusal logged %d times over 22 snapshots", n)
	}
	set := map[string]*cluster.Service{"gw": nil}
	for i := range 50 {
		name := fmt.Sprintf("bad%d", i)
		set[name] = svc(name, "10.97.0.1")
	}
	f.Apply(next(cur, set), &moved)
	if n, more := h.counts[refusedMsg], h.counts["WARN host guard: more ClusterIPs refused (bridge-agent status lists them)"]; n != 1+maxLogged || more != 1 {
		t.Errorf("50 new refusals: %d lines and %d summaries, want %d and 1", n-1, more, maxLogged)
	}
	if n := h.counts["INFO host guard: no longer refused"]; n != 1 {
		t.Errorf("the refusal that went was logged %d times", n)
	}
}
