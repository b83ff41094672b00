package hostguard

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// benchSnapshot is n dual-stack Services in 10.96.0.0/16 and fd00:96::/108,
// every hundredth with a ClusterIP in the host's network.
func benchSnapshot(n int) *cluster.Snapshot {
	s := &cluster.Snapshot{Version: 1, Services: map[cluster.ServiceKey]*cluster.Service{},
		ServiceCIDRs: prefixes("10.96.0.0/16", "fd00:96::/108", "10.250.0.0/24")}
	for i := range n {
		v4 := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		if i%100 == 0 {
			v4 = fmt.Sprintf("10.250.0.%d", i/100%250+1)
		}
		v := svc(fmt.Sprintf("s%05d", i), v4, fmt.Sprintf("fd00:96::%x", i+1))
		s.Services[v.ServiceKey] = v
		s.Changed = append(s.Changed, v.ServiceKey)
	}
	return s
}

// BenchmarkFilterOneChange: a snapshot that changes one Service of 10k,
// with the same facts (the common case: an endpoint moved). Only Apply is
// timed; the tracker's own copy of the Services is not.
func BenchmarkFilterOneChange(b *testing.B) {
	f := NewFilter(nil, nil)
	cur := benchSnapshot(10000)
	f.Apply(cur, host)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("s%05d", i%10000)
		cur = next(cur, map[string]*cluster.Service{name: svc(name, fmt.Sprintf("10.96.%d.%d", i%250, i%200+1))})
		b.StartTimer()
		f.Apply(cur, host)
	}
}

// BenchmarkFilterFacts: the host's facts change, so every one of 10k
// Services is checked again.
func BenchmarkFilterFacts(b *testing.B) {
	f := NewFilter(nil, nil)
	s := benchSnapshot(10000)
	other := *host
	other.Gateways = []netip.Addr{netip.MustParseAddr("10.250.0.2")}
	facts := []*Facts{host, &other}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		f.Apply(s, facts[i%2])
	}
}
