package dnsstub

import (
	"slices"
	"time"

	"github.com/miekg/dns"
)

// Status is the DNS stub's part of `bridge-agent status`.
type Status struct {
	Listen        string `json:"listen"`
	ClusterDomain string `json:"clusterDomain"`
	// Synced is false until the first snapshot: cluster names get SERVFAIL.
	Synced          bool   `json:"synced"`
	SnapshotVersion uint64 `json:"snapshotVersion"`
	ZoneRecords     int    `json:"zoneRecords"`
	ZoneNames       int    `json:"zoneNames"`
	// Upstreams are the host's resolvers. Looping are the questions found
	// to come back to the stub through one of them, "upstream name type":
	// that name and type skip that upstream for a minute.
	Upstreams []string `json:"upstreams"`
	Looping   []string `json:"looping,omitempty"`
	// ForwardsInFlight are the questions sent upstream and not yet
	// answered; MaxForwards bounds them.
	ForwardsInFlight int `json:"forwardsInFlight"`
	MaxForwards      int `json:"maxForwards"`
	// KubeDNS are the servers of cluster names the stub forwards.
	KubeDNS     []kubeDNSTarget `json:"kubeDNS"`
	CacheSize   int             `json:"cacheSize"`
	CacheMax    int             `json:"cacheMax"`
	CacheHits   uint64          `json:"cacheHits"`
	CacheMisses uint64          `json:"cacheMisses"`
	// LastErrors are the most recent failed upstream attempts.
	LastErrors []ForwardError `json:"lastErrors,omitempty"`
}

// ForwardError is one failed upstream attempt.
type ForwardError struct {
	Time     time.Time `json:"time"`
	Upstream string    `json:"upstream"`
	Name     string    `json:"name"`
	Type     string    `json:"type"`
	Error    string    `json:"error"`
}

// upstreamFailed counts and remembers a failed attempt.
func (s *Server) upstreamFailed(upstream string, q dns.Question, err error) {
	s.metrics.upstreamErrs.WithLabelValues(upstream).Inc()
	fe := ForwardError{Time: time.Now(), Upstream: upstream, Name: q.Name, Type: dns.TypeToString[q.Qtype], Error: err.Error()}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErrs = append(s.lastErrs, fe)
	if len(s.lastErrs) > lastErrorsKept {
		s.lastErrs = slices.Delete(s.lastErrs, 0, len(s.lastErrs)-lastErrorsKept)
	}
}

// Status returns what the stub reports about itself; safe to call
// concurrently with queries and Sync.
func (s *Server) Status() any {
	st := &Status{
		Listen:        s.Addr().String(),
		ClusterDomain: s.opts.ClusterDomain,
		CacheSize:     s.cache.len(),
		CacheMax:      s.opts.CacheSize,
		CacheHits:     counterValue(s.metrics.cacheHits),
		CacheMisses:   counterValue(s.metrics.cacheMisses),
		Upstreams:     []string{},
		KubeDNS:       []kubeDNSTarget{},
	}
	if z := s.zone.Load(); z != nil {
		st.Synced = true
		st.SnapshotVersion = z.version
		st.ZoneRecords = z.records
		st.ZoneNames = z.names
		st.KubeDNS = append(st.KubeDNS, z.kubeDNS...)
	}
	for _, u := range *s.upstreams.Load() {
		st.Upstreams = append(st.Upstreams, u.String())
	}
	st.Looping = s.loops.list(s.now())
	st.ForwardsInFlight = s.forwards.inFlight()
	st.MaxForwards = s.opts.MaxForwards
	s.mu.Lock()
	st.LastErrors = slices.Clone(s.lastErrs)
	s.mu.Unlock()
	return st
}
