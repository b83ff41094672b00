package dnsstub

import (
	"encoding/binary"
	"hash/maphash"
	"maps"
	"net/netip"
)

// mapShards is how many shards a shardedMap has: a new zone copies only
// the shards it changes, each about 1/256 of the map.
const mapShards = 256

// shardedMap is a map cut into shards by a hash of the key, so that a new
// version can share the shards it does not change with the previous one.
// The shards of a zone are never modified: a new zone starts from a copy
// of the shardedMap (the shards shared) and changes it through a mapEdit,
// which copies each shard before its first change.
type shardedMap[K comparable, V any] struct {
	shards [mapShards]map[K]V
	hash   func(K) uint64
}

// newShardedMap returns an empty shardedMap whose keys are sharded by
// the top byte of hash.
func newShardedMap[K comparable, V any](hash func(K) uint64) shardedMap[K, V] {
	return shardedMap[K, V]{hash: hash}
}

// index returns the shard of k.
func (m *shardedMap[K, V]) index(k K) int {
	return int(m.hash(k) >> 56) // the top byte: mapShards is 256
}

// get returns the value of k, and whether there is one.
func (m *shardedMap[K, V]) get(k K) (V, bool) {
	v, ok := m.shards[m.index(k)][k]
	return v, ok
}

// edit returns an editor of m, which must be a zone's own copy, not yet
// published.
func (m *shardedMap[K, V]) edit() *mapEdit[K, V] {
	return &mapEdit[K, V]{shardedMap: m}
}

// mapEdit changes a shardedMap of a zone being made, copying each shard it
// shares with another zone before changing it.
type mapEdit[K comparable, V any] struct {
	*shardedMap[K, V]
	owned [mapShards]bool // shards copied (or made) by this edit
}

// shard returns the shard of k, ready to change.
func (e *mapEdit[K, V]) shard(k K) map[K]V {
	i := e.index(k)
	if !e.owned[i] {
		if e.shards[i] == nil {
			e.shards[i] = map[K]V{}
		} else {
			e.shards[i] = maps.Clone(e.shards[i])
		}
		e.owned[i] = true
	}
	return e.shards[i]
}

// reserve makes every shard of an empty map, sized for n entries in all.
func (e *mapEdit[K, V]) reserve(n int) {
	for i := range e.shards {
		if e.shards[i] == nil {
			e.shards[i] = make(map[K]V, n/mapShards)
			e.owned[i] = true
		}
	}
}

// set sets the value of k.
func (e *mapEdit[K, V]) set(k K, v V) { e.shard(k)[k] = v }

// delete removes k, copying its shard only if k is there.
func (e *mapEdit[K, V]) delete(k K) {
	if _, ok := e.get(k); ok {
		delete(e.shard(k), k)
	}
}

// shardSeed seeds the hash of Service names, for the life of the process.
var shardSeed = maphash.MakeSeed()

// hashSvcName hashes a Service's lower-case key.
func hashSvcName(k svcName) uint64 {
	return maphash.String(shardSeed, k.ns)*31 ^ maphash.String(shardSeed, k.name)
}

// hashAddr mixes all of an address's bits into the top ones.
func hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	h := binary.LittleEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(b[8:])
	return h * 0xbf58476d1ce4e5b9
}
