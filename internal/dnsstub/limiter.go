package dnsstub

import (
	"encoding/binary"
	"net/netip"
	"sync"
)

// limiterShards spreads the clients over independently locked maps, so
// that concurrent queries from different clients rarely share a lock.
const limiterShards = 16

// limiter bounds the queries in flight per client address.
type limiter struct {
	max    int
	shards [limiterShards]limiterShard
}

type limiterShard struct {
	mu sync.Mutex
	n  map[netip.Addr]int
	_  [40]byte // one shard per cache line
}

func newLimiter(max int) *limiter {
	l := &limiter{max: max}
	for i := range l.shards {
		l.shards[i].n = map[netip.Addr]int{}
	}
	return l
}

func (l *limiter) shard(a netip.Addr) *limiterShard {
	b := a.As16()
	h := binary.LittleEndian.Uint64(b[:8]) ^ binary.LittleEndian.Uint64(b[8:])
	h *= 0x9e3779b97f4a7c15
	return &l.shards[h>>60%limiterShards]
}

// acquire counts a query of a in flight, unless a is at the limit.
func (l *limiter) acquire(a netip.Addr) bool {
	sh := l.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.n[a] >= l.max {
		return false
	}
	sh.n[a]++
	return true
}

// release ends a query acquire let through.
func (l *limiter) release(a netip.Addr) {
	sh := l.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.n[a]--; sh.n[a] <= 0 {
		delete(sh.n, a)
	}
}
