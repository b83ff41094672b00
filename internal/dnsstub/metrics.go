package dnsstub

import (
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Query results, the result label of queries_total.
const (
	resultAnswered  = "answered"  // from the zone, with data
	resultNXDomain  = "nxdomain"  // from the zone
	resultNoData    = "nodata"    // from the zone
	resultForwarded = "forwarded" // relayed from an upstream
	resultCached    = "cached"    // a fresh forwarded answer from the cache
	resultStale     = "stale"     // an expired forwarded answer, upstreams failing
	resultServfail  = "servfail"
	resultRefused   = "refused"
	resultFormErr   = "formerr"
	resultBadVers   = "badvers"
	resultNotImp    = "notimp"
	resultLoop      = "loop" // answered SERVFAIL: the query came back from our own forwarding
)

// Upstream kinds, the upstream label of forward_duration_seconds.
const (
	kindKubeDNS = "kube-dns"
	kindHost    = "host"
)

type metrics struct {
	queries      *prometheus.CounterVec
	cacheHits    prometheus.Counter
	cacheMisses  prometheus.Counter
	forward      *prometheus.HistogramVec
	upstreamErrs *prometheus.CounterVec
	zoneRecords  prometheus.Gauge
	clientLimit  prometheus.Counter
	loops        prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_dns_queries_total",
			Help: "DNS queries answered by the stub, by query type and result.",
		}, []string{"type", "result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_dns_cache_hits_total",
			Help: "Forwarded questions answered from the cache (fresh or stale).",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_dns_cache_misses_total",
			Help: "Forwarded questions not in the cache.",
		}),
		forward: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bridge_agent_dns_forward_duration_seconds",
			Help:    "Time to get an answer from an upstream (all attempts), by upstream kind (kube-dns, host).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"upstream"}),
		upstreamErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_dns_upstream_errors_total",
			Help: "Failed attempts to an upstream (timeout, network error, bad or failing reply), by upstream address.",
		}, []string{"upstream"}),
		zoneRecords: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_dns_zone_records",
			Help: "Records in the zone built from the last snapshot.",
		}),
		clientLimit: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_dns_client_limit_rejections_total",
			Help: "Queries refused because their client had too many queries in flight.",
		}),
		loops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_dns_forwarding_loops_total",
			Help: "Queries that came back to the stub from its own forwarding, answered SERVFAIL.",
		}),
	}
}

// Collectors returns the stub's metrics, for the daemon to register.
func (s *Server) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.queries, m.cacheHits, m.cacheMisses, m.forward, m.upstreamErrs, m.zoneRecords, m.clientLimit, m.loops}
}

// countedTypes bounds the type label: other types are counted as "other".
var countedTypes = map[uint16]bool{
	dns.TypeA: true, dns.TypeAAAA: true, dns.TypeSRV: true, dns.TypePTR: true, dns.TypeCNAME: true,
	dns.TypeTXT: true, dns.TypeMX: true, dns.TypeNS: true, dns.TypeSOA: true, dns.TypeANY: true,
	dns.TypeHTTPS: true, dns.TypeSVCB: true, dns.TypeDS: true, dns.TypeDNSKEY: true, dns.TypeCAA: true,
}

func typeLabel(t uint16) string {
	if countedTypes[t] {
		return dns.TypeToString[t]
	}
	return "other"
}

func counterValue(c prometheus.Counter) uint64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}
