package daemon

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// metrics are the agent's Prometheus metrics, in a private registry.
type metrics struct {
	registry     *prometheus.Registry
	syncs        *prometheus.CounterVec
	syncDuration *prometheus.HistogramVec
	lastSuccess  prometheus.Gauge
	ready        prometheus.Gauge
	services     prometheus.Gauge
	endpoints    prometheus.Gauge
	restored     prometheus.Gauge
	saveErrors   prometheus.Counter
}

// newMetrics makes the metrics; objects and events read the Tracker, shared
// is the node route table's reader (nil when the Nodes do not come from it).
func newMetrics(version string, objects func() (services, slices, nodes int), events func() map[cluster.EventCount]uint64, shared *cluster.SharedNodes) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_syncs_total",
			Help: "Syncs by consumer (proxy, routes, dns, ...) and result (success or error).",
		}, []string{"consumer", "result"}),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bridge_agent_sync_duration_seconds",
			Help:    "Duration of one sync by consumer; consumer=\"all\" is the whole sync including the snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"consumer"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_last_successful_sync_timestamp_seconds",
			Help: "Unix time of the last sync in which every consumer succeeded.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_ready",
			Help: "1 once the first full sync has completed.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_snapshot_services",
			Help: "Services in the current snapshot.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_snapshot_endpoints",
			Help: "Endpoints (per Service port) in the current snapshot.",
		}),
		restored: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_serving_saved_snapshot",
			Help: "1 while the agent serves the last snapshot known good from its state directory because the API server cannot be reached.",
		}),
		saveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_snapshot_save_errors_total",
			Help: "Failed writes of the last snapshot known good to the state directory.",
		}),
	}
	watched := prometheus.NewDesc("bridge_agent_watched_objects", "API objects held by the agent's informers, by kind.", []string{"kind"}, nil)
	eventsDesc := prometheus.NewDesc("bridge_agent_cluster_events_total",
		"Changes delivered by the API server, by kind and by whether they changed what the agent uses (changed=\"false\": a Node heartbeat, an annotation; such a change wakes no consumer).",
		[]string{"kind", "changed"}, nil)
	sourceDesc := prometheus.NewDesc("bridge_agent_node_source",
		"1 for where routes.mode nodes takes the Nodes from now: source=\"table\" (the shared node route table) or \"nodes\" (a Node watch).",
		[]string{"source"}, nil)
	writesDesc := prometheus.NewDesc("bridge_agent_node_table_writes_total", "Writes of the shared node route table by this agent (its elected publisher).", nil, nil)
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.syncs, m.syncDuration, m.lastSuccess, m.ready, m.services, m.endpoints, m.restored, m.saveErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "bridge_agent_build_info",
			Help:        "Always 1; the version label says which build runs.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
		collectorFunc{desc: watched, collect: func(ch chan<- prometheus.Metric) {
			s, e, n := objects()
			ch <- prometheus.MustNewConstMetric(watched, prometheus.GaugeValue, float64(s), "Service")
			ch <- prometheus.MustNewConstMetric(watched, prometheus.GaugeValue, float64(e), "EndpointSlice")
			ch <- prometheus.MustNewConstMetric(watched, prometheus.GaugeValue, float64(n), "Node")
		}},
		collectorFunc{desc: eventsDesc, collect: func(ch chan<- prometheus.Metric) {
			got := events()
			for _, kind := range []string{"Service", "EndpointSlice", "Node", "ServiceCIDR"} {
				for _, changed := range []bool{true, false} {
					ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue,
						float64(got[cluster.EventCount{Kind: kind, Changed: changed}]), kind, strconv.FormatBool(changed))
				}
			}
		}},
	)
	if shared != nil {
		m.registry.MustRegister(
			collectorFunc{desc: sourceDesc, collect: func(ch chan<- prometheus.Metric) {
				src := shared.Status().Source
				for _, s := range []string{cluster.SourceTable, cluster.SourceNodes} {
					v := 0.0
					if s == src {
						v = 1
					}
					ch <- prometheus.MustNewConstMetric(sourceDesc, prometheus.GaugeValue, v, s)
				}
			}},
			collectorFunc{desc: writesDesc, collect: func(ch chan<- prometheus.Metric) {
				ch <- prometheus.MustNewConstMetric(writesDesc, prometheus.CounterValue, float64(shared.Status().Writes))
			}},
		)
	}
	return m
}

// collectorFunc is a collector of metrics computed at scrape time.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
