package dnsstub

import (
	"container/list"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Cache bounds, in seconds.
const (
	maxCacheTTL    = 3600 // longest a forwarded answer is considered fresh
	maxNegativeTTL = 1800 // RFC 2308 suggests at most 3 hours; we keep less
	negativeNoSOA  = 5    // a negative answer without an SOA, briefly
	staleTTL       = 30   // the TTL of a stale answer (RFC 8767)
)

// cacheMaxBytes bounds the memory of the forward cache besides its
// entry count (Options.CacheSize): a forwarded answer may be 64 KiB (over
// TCP), so 10,000 of them could hold 640 MiB. An entry weighs four times
// its packed size (the unpacked records, their strings and headers, as
// heap profiles show for answers of A records) plus cacheEntryOverhead;
// the least recently used go first.
const (
	cacheMaxBytes      = 3 << 20
	cacheEntryOverhead = 256
)

// cacheKey identifies a forwarded question.
type cacheKey struct {
	name  string // lower case
	qtype uint16
	class uint16
	do    bool
	cd    bool
}

func keyOf(q dns.Question, do, cd bool) cacheKey {
	return cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, class: q.Qclass, do: do, cd: cd}
}

type cacheEntry struct {
	key     cacheKey
	msg     *dns.Msg // the upstream reply, with TTLs as received
	stored  time.Time
	expires time.Time
	weight  int // what it counts against cacheMaxBytes
}

// cache is a bounded LRU of forwarded answers. Entries stay past their
// expiry for the serve-stale window, then go.
type cache struct {
	mu       sync.Mutex
	max      int
	maxBytes int
	bytes    int // the weight of the entries
	stale    time.Duration
	ll       *list.List
	items    map[cacheKey]*list.Element
}

func newCache(max int, stale time.Duration) *cache {
	return &cache{max: max, maxBytes: cacheMaxBytes, stale: stale, ll: list.New(), items: map[cacheKey]*list.Element{}}
}

// ttlOf returns how long a reply may be cached, or 0 when it must not be.
func ttlOf(m *dns.Msg) uint32 {
	switch m.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return 0
	}
	if m.Truncated {
		return 0
	}
	if len(m.Answer) == 0 || m.Rcode == dns.RcodeNameError {
		// Negative (NXDOMAIN or NODATA): the SOA's TTL bounded by its
		// minimum (RFC 2308 section 5).
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				return min(rr.Header().Ttl, soa.Minttl, maxNegativeTTL)
			}
		}
		return negativeNoSOA
	}
	ttl := uint32(maxCacheTTL)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			ttl = min(ttl, rr.Header().Ttl)
		}
	}
	return ttl
}

// put stores a reply; replies that may not be cached are ignored.
func (c *cache) put(k cacheKey, m *dns.Msg, now time.Time) {
	if c.max <= 0 {
		return
	}
	ttl := ttlOf(m)
	if ttl == 0 {
		return
	}
	e := &cacheEntry{key: k, msg: m.Copy(), stored: now, expires: now.Add(time.Duration(ttl) * time.Second),
		weight: 4*m.Len() + cacheEntryOverhead}
	if e.weight > c.maxBytes/16 {
		return // one answer never takes a sixteenth of the cache
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.bytes -= el.Value.(*cacheEntry).weight
		el.Value = e
		c.ll.MoveToFront(el)
	} else {
		c.items[k] = c.ll.PushFront(e)
	}
	c.bytes += e.weight
	for c.ll.Len() > c.max || c.bytes > c.maxBytes {
		c.removeLocked(c.ll.Back())
	}
}

// removeLocked drops the entry of el; c.mu is held.
func (c *cache) removeLocked(el *list.Element) {
	e := el.Value.(*cacheEntry)
	c.ll.Remove(el)
	delete(c.items, e.key)
	c.bytes -= e.weight
}

// get returns a copy of the cached reply with its TTLs aged. A fresh entry
// comes back with stale false; an expired one within the serve-stale
// window only when allowStale, with stale true and TTLs of 30 s.
func (c *cache) get(k cacheKey, now time.Time, allowStale bool) (m *dns.Msg, stale, ok bool) {
	c.mu.Lock()
	el, found := c.items[k]
	if !found {
		c.mu.Unlock()
		return nil, false, false
	}
	e := el.Value.(*cacheEntry)
	if now.After(e.expires.Add(c.stale)) {
		c.removeLocked(el)
		c.mu.Unlock()
		return nil, false, false
	}
	fresh := now.Before(e.expires)
	if !fresh && !allowStale {
		c.mu.Unlock()
		return nil, false, false
	}
	c.ll.MoveToFront(el)
	c.mu.Unlock()

	m = e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			switch {
			case !fresh:
				h.Ttl = staleTTL
			case h.Ttl > age:
				h.Ttl -= age
			default:
				h.Ttl = 0
			}
		}
	}
	return m, !fresh, true
}

// weight returns what the entries count against cacheMaxBytes.
func (c *cache) weight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
