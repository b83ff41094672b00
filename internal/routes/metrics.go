package routes

import "github.com/prometheus/client_golang/prometheus"

// metrics are the routes consumer's own metrics (the daemon counts syncs
// and their durations per consumer).
type metrics struct {
	installed  *prometheus.GaugeVec
	conflicts  prometheus.Gauge
	problems   *prometheus.GaugeVec
	changes    *prometheus.CounterVec
	syncErrors prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		installed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_routes_installed",
			Help: "Routes of ours in place after the last sync, by family.",
		}, []string{"family"}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_routes_conflicts",
			Help: "Destinations not routed because someone else's route equals or lies inside them.",
		}),
		problems: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_routes_problems",
			Help: "Routes the cluster or the configuration asks for that are not installed, by reason (conflict, notOnLink, noPodCIDR, noInternalIP, localNode, overlap, noDevice, tooBroad, notAllowed, and the host guard's specialRange, hostAddress, hostGateway, hostResolver, hostNetwork).",
		}, []string{"reason"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_routes_changes_total",
			Help: "Route changes by operation (add, replace, delete); a sync with nothing to change makes none.",
		}, []string{"op"}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_routes_sync_errors_total",
			Help: "Syncs in which the kernel refused a route change or could not be read.",
		}),
	}
	for _, f := range []string{"ipv4", "ipv6"} {
		m.installed.WithLabelValues(f)
	}
	for _, r := range reasons {
		m.problems.WithLabelValues(string(r))
	}
	for _, op := range []string{"add", "replace", "delete"} {
		m.changes.WithLabelValues(op)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.installed, m.conflicts, m.problems, m.changes, m.syncErrors}
}

// observe records the outcome of a sync.
func (m *metrics) observe(res result) {
	v4, v6 := 0, 0
	for _, r := range res.installed {
		if r.Dst.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	m.installed.WithLabelValues("ipv4").Set(float64(v4))
	m.installed.WithLabelValues("ipv6").Set(float64(v6))
	counts := map[Reason]int{}
	for _, p := range res.problems {
		counts[p.Reason]++
	}
	for _, r := range reasons {
		m.problems.WithLabelValues(string(r)).Set(float64(counts[r]))
	}
	m.conflicts.Set(float64(counts[ReasonConflict]))
	m.changes.WithLabelValues("add").Add(float64(res.changes.Added))
	m.changes.WithLabelValues("replace").Add(float64(res.changes.Replaced))
	m.changes.WithLabelValues("delete").Add(float64(res.changes.Deleted))
}
