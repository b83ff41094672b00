package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Traffic by Service: each backend counts the connections this host opens
// to every Service port in the kernel, where the NAT chains see the first
// packet of each connection (nftables_counters.go, iptables_counters.go),
// and reads the counters only when asked: by a metrics scrape and by the
// status. Nothing of it runs per packet beyond one counter increment per
// new connection.

// counterReadTimeout bounds one reading of the kernel's counters.
const counterReadTimeout = 5 * time.Second

// serviceConnectionsDesc describes bridge_agent_service_connections_total.
var serviceConnectionsDesc = prometheus.NewDesc("bridge_agent_service_connections_total",
	"Connections this host opened to a Service port through the proxy (refused ones too), counted by the kernel; reset when the Service port or its cluster IP is removed, or the proxy's rules are written anew (agent start).",
	[]string{"namespace", "service", "port", "protocol"}, nil)

// counterCollector exports the connection counters, read at each scrape.
type counterCollector struct {
	read func(context.Context) ([]ServicePortCounter, error)
	log  *slog.Logger
}

func newCounterCollector(read func(context.Context) ([]ServicePortCounter, error), log *slog.Logger) prometheus.Collector {
	return &counterCollector{read: read, log: log}
}

// Describe implements prometheus.Collector.
func (c *counterCollector) Describe(ch chan<- *prometheus.Desc) { ch <- serviceConnectionsDesc }

// Collect implements prometheus.Collector.
func (c *counterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), counterReadTimeout)
	defer cancel()
	counters, err := c.read(ctx)
	if err != nil {
		c.log.Warn("reading the Service connection counters failed", "err", err)
		return
	}
	for _, s := range counters {
		ch <- prometheus.MustNewConstMetric(serviceConnectionsDesc, prometheus.CounterValue, float64(s.Connections),
			s.Namespace, s.Service, s.Port, s.Protocol)
	}
}

// connections fills st's connections from read.
func (st *ProxyStatus) connections(read func(context.Context) ([]ServicePortCounter, error)) {
	ctx, cancel := context.WithTimeout(context.Background(), counterReadTimeout)
	defer cancel()
	c, err := read(ctx)
	if err != nil {
		st.ConnectionsError = err.Error()
		return
	}
	st.Connections = c
}
