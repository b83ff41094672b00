package daemon

import (
	"encoding/json"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/member"
)

// MemberReporter is a host's membership (its own identity, token renewal
// and heartbeat Lease): shown in status and on /metrics.
type MemberReporter interface {
	MemberStatus() *member.Status
	Collectors() []prometheus.Collector
}

// HostFacts returns what the host's Lease says of it: readiness, counts of
// Services, proxy rules and routes, the proxy backend and the newest error.
// It reads the consumers' status details, as `bridge-agent status` does,
// and is safe to call from any goroutine.
func (d *Daemon) HostFacts() member.Facts {
	f := member.Facts{Version: d.version, Backend: "none"}
	d.mu.Lock()
	f.Ready = d.ready
	if d.snap != nil {
		f.Services = len(d.snap.Services)
	}
	f.LastError = d.lastSync.Error
	for _, c := range d.consumers {
		if st := d.consumerSt[c.Name()]; f.LastError == "" && st.LastError != "" {
			f.LastError = c.Name() + ": " + st.LastError
		}
	}
	d.mu.Unlock()
	if err, _ := d.watcher.LastError(); f.LastError == "" && err != nil {
		f.LastError = err.Error()
	}
	for _, c := range d.consumers {
		raw := details(c)
		if raw == nil {
			continue
		}
		var s struct {
			Backend  string `json:"backend"`
			Families map[string]struct {
				NATRules    int `json:"natRules"`
				FilterRules int `json:"filterRules"`
			} `json:"families"`
			Routes []json.RawMessage `json:"routes"`
		}
		if json.Unmarshal(raw, &s) != nil {
			continue
		}
		switch c.Name() {
		case "proxy":
			if s.Backend != "" {
				f.Backend = s.Backend
			}
			for _, fam := range s.Families {
				f.Rules += fam.NATRules + fam.FilterRules
			}
		case "routes":
			f.Routes = len(s.Routes)
		}
	}
	return f
}
