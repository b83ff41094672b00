package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// proxyMetrics are the proxy's own metrics (the daemon counts syncs, errors
// and their durations per consumer).
type proxyMetrics struct {
	rules       *prometheus.GaugeVec
	noEndpoints *prometheus.GaugeVec
	writes      *prometheus.CounterVec
	repairs     prometheus.Counter
	programming prometheus.Histogram
}

func newProxyMetrics() *proxyMetrics {
	return &proxyMetrics{
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_proxy_rules",
			Help: "Rules of ours written by the last restore, by family and table.",
		}, []string{"family", "table"}),
		noEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_agent_proxy_service_ports_without_endpoints",
			Help: "Service ports whose traffic is rejected because no endpoint is usable, by family.",
		}, []string{"family"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_proxy_restores_total",
			Help: "iptables-restore runs by family and result (unchanged syncs write nothing).",
		}, []string{"family", "result"}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_proxy_repairs_total",
			Help: "Restores forced because rules of ours had been removed by someone else.",
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bridge_agent_network_programming_duration_seconds",
			Help:    "Time from an EndpointSlice change (endpoints.kubernetes.io/last-change-trigger-time) to its rules being in the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
	}
}

// Collectors implements daemon.MetricsProvider.
func (p *IPTables) Collectors() []prometheus.Collector {
	return append(p.metrics.collectors(), newCounterCollector(p.ServiceCounters, p.log))
}

func (m *proxyMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.rules, m.noEndpoints, m.writes, m.repairs, m.programming}
}

// ObserveProgramming implements daemon.ProgrammingObserver.
func (p *IPTables) ObserveProgramming(triggers map[cluster.ServiceKey][]time.Time, programmed time.Time) {
	p.metrics.observeProgramming(triggers, programmed)
}

// ObserveProgramming implements daemon.ProgrammingObserver.
func (p *NFTables) ObserveProgramming(triggers map[cluster.ServiceKey][]time.Time, programmed time.Time) {
	p.metrics.observeProgramming(triggers, programmed)
}

// observeProgramming records how long each change took from its trigger
// time to the kernel. The daemon hands each trigger time to one call
// only, after the sync that programmed it, even when that sync skipped the
// snapshot that first carried it (as kube-proxy accumulates trigger times
// per Service until a sync consumes them).
func (m *proxyMetrics) observeProgramming(triggers map[cluster.ServiceKey][]time.Time, programmed time.Time) {
	for _, ts := range triggers {
		for _, t := range ts {
			m.programming.Observe(programmed.Sub(t).Seconds())
		}
	}
}
