package dnsstub

import (
	"sync/atomic"

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
	queries *prometheus.CounterVec
	// queryCounters are the series of queries, resolved once on first
	// use: counting a query is then an atomic add, with no label lookup.
	queryCounters [len(countedTypeList) + 1][len(resultList)]atomic.Pointer[prometheus.Counter]
	cacheHits     prometheus.Counter
	cacheMisses   prometheus.Counter
	forward       *prometheus.HistogramVec
	upstreamErrs  *prometheus.CounterVec
	zoneRecords   prometheus.Gauge
	rejections    *prometheus.CounterVec
	coalesced     prometheus.Counter
	inflight      prometheus.Gauge
	loops         prometheus.Counter
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
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_dns_forward_rejections_total",
			Help: "Questions not sent upstream because a forwarding limit was reached (answered stale when cached, else REFUSED), by limit: global, client (a source address and domain), share (the client's fair share), waiters (as many identical questions already wait for one upstream query); busy counts UDP queries refused because as many as the stub serves at once outside its fast path were in progress.",
		}, []string{"limit"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_agent_dns_forward_coalesced_total",
			Help: "Forwarded questions that waited for the same question already sent upstream instead of sending their own.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_dns_forwards_in_flight",
			Help: "Questions sent upstream and not yet answered.",
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
	return []prometheus.Collector{m.queries, m.cacheHits, m.cacheMisses, m.forward, m.upstreamErrs, m.zoneRecords, m.rejections, m.coalesced, m.inflight, m.loops}
}

// countedTypeList bounds the type label: other types are counted as
// "other".
var countedTypeList = [...]uint16{
	dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypePTR, dns.TypeCNAME,
	dns.TypeTXT, dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeANY,
	dns.TypeHTTPS, dns.TypeSVCB, dns.TypeDS, dns.TypeDNSKEY, dns.TypeCAA,
}

// resultList are the values of the result label.
var resultList = [...]string{
	resultAnswered, resultNXDomain, resultNoData, resultForwarded, resultCached, resultStale,
	resultServfail, resultRefused, resultFormErr, resultBadVers, resultNotImp, resultLoop,
}

// typeIndex is t's place in countedTypeList, len(countedTypeList) for
// "other".
func typeIndex(t uint16) int {
	switch t {
	case dns.TypeA:
		return 0
	case dns.TypeAAAA:
		return 1
	case dns.TypeSRV:
		return 2
	case dns.TypePTR:
		return 3
	case dns.TypeCNAME:
		return 4
	case dns.TypeTXT:
		return 5
	case dns.TypeMX:
		return 6
	case dns.TypeNS:
		return 7
	case dns.TypeSOA:
		return 8
	case dns.TypeANY:
		return 9
	case dns.TypeHTTPS:
		return 10
	case dns.TypeSVCB:
		return 11
	case dns.TypeDS:
		return 12
	case dns.TypeDNSKEY:
		return 13
	case dns.TypeCAA:
		return 14
	}
	return len(countedTypeList)
}

func typeLabel(t uint16) string {
	if i := typeIndex(t); i < len(countedTypeList) {
		return dns.TypeToString[countedTypeList[i]]
	}
	return "other"
}

// resultIndex is r's place in resultList, -1 for a result not listed.
func resultIndex(r string) int {
	for i, v := range resultList {
		if v == r {
			return i
		}
	}
	return -1
}

// countQuery counts one query in queries_total{type,result}.
func (m *metrics) countQuery(qtype uint16, result string) {
	ri := resultIndex(result)
	if ri < 0 {
		m.queries.WithLabelValues(typeLabel(qtype), result).Inc()
		return
	}
	m.countQueryIndex(typeIndex(qtype), ri)
}

// countQueryIndex counts one query by the indexes of its labels.
func (m *metrics) countQueryIndex(ti, ri int) {
	slot := &m.queryCounters[ti][ri]
	c := slot.Load()
	if c == nil {
		label := "other"
		if ti < len(countedTypeList) {
			label = dns.TypeToString[countedTypeList[ti]]
		}
		cc := m.queries.WithLabelValues(label, resultList[ri])
		c = &cc
		slot.Store(c)
	}
	(*c).Inc()
}

func counterValue(c prometheus.Counter) uint64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}
