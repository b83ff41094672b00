package proxy

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// countingXtables counts the listings and restores of an xtables.
type countingXtables struct {
	*netnsXtables
	listings, restores int
	partial            int // restores that did not declare BRIDGE-POSTROUTING
}

func (c *countingXtables) Chains(ctx context.Context, fam Family, table string) ([]string, error) {
	c.listings++
	return c.netnsXtables.Chains(ctx, fam, table)
}

func (c *countingXtables) Restore(ctx context.Context, fam Family, payload []byte) error {
	c.restores++
	if !strings.Contains(string(payload), ":"+PostroutingChain+" ") {
		c.partial++
	}
	return c.netnsXtables.Restore(ctx, fam, payload)
}

// TestIPTablesPartialKernel applies a full restore and then partial ones to
// real tables, in a private network namespace, and compares what
// iptables-save lists with a full restore of the same snapshot into another
// namespace, for both variants and families.
func TestIPTablesPartialKernel(t *testing.T) {
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			ctx := context.Background()
			x := &countingXtables{netnsXtables: iptNetns(t, v)}
			opts := IPTablesOptions{Variant: v, Families: []Family{IPv4, IPv6}, Masquerade: true, FullSyncPeriod: time.Hour}
			p := newIPTables(opts, x, nil)
			rng := rand.New(rand.NewPCG(1, 2))
			services := map[cluster.ServiceKey]*cluster.Service{}
			for i := range 20 {
				key := cluster.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%3), Name: fmt.Sprintf("svc%d", i)}
				services[key] = randomService(rng, key, i)
			}
			for step := range 12 {
				if step > 0 {
					for range 1 + rng.IntN(4) {
						i := rng.IntN(25)
						key := cluster.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%3), Name: fmt.Sprintf("svc%d", i)}
						if rng.IntN(4) == 0 {
							delete(services, key)
						} else {
							services[key] = randomService(rng, key, i)
						}
					}
				}
				snap := &cluster.Snapshot{Version: uint64(step + 1), Services: maps.Clone(services)}
				if err := p.Sync(ctx, snap); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if step%4 != 3 && step != 11 {
					continue
				}
				fresh := iptNetns(t, v)
				q := newIPTables(opts, fresh, nil)
				if err := q.Sync(ctx, snap); err != nil {
					t.Fatalf("step %d: full restore: %v", step, err)
				}
				for _, fam := range opts.Families {
					want, got := fresh.save(t, fam), x.save(t, fam)
					if !strings.Contains(want, "-A "+ServicesChain+" ") {
						t.Fatalf("%v: the full restore wrote no Service rule:\n%s", fam, want)
					}
					if diff := cmpText(want, got); diff != "" {
						t.Fatalf("step %d %v: iptables-save after partial restores differs from a full restore (-full +partial):\n%s", step, fam, diff)
					}
				}
			}
			// 2 listings per family for the first (full) sync, none after.
			if x.listings != 4 || x.partial != x.restores-2 || x.partial < 20 {
				t.Errorf("listings=%d restores=%d partial=%d: want only the first sync full", x.listings, x.restores, x.partial)
			}
		})
	}
}
