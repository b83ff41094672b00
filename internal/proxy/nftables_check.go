package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// nftLister is implemented by nftRunners that can list the ruleset's
// skeleton: every table, chain, rule and set, without set elements
// ("nft -j -t list ruleset"). Listing the elements of a table at 10k
// Services takes nft seconds and hundreds of MB; the skeleton takes
// milliseconds whatever the number of Services.
type nftLister interface {
	listSkeleton(ctx context.Context) ([]byte, error)
}

func (x *execNFT) listSkeleton(ctx context.Context) ([]byte, error) {
	return x.run(ctx, nil, "-j", "-t", "list", "ruleset")
}

// nftSkeleton is what the skeleton listing says of one family's table.
type nftSkeleton struct {
	present bool
	chains  map[string]bool
	rules   map[string]int // chain → number of rules
	sets    map[string]bool
}

// parseNFTSkeleton reads a "nft -j -t list ruleset" document and returns the
// skeleton of the agent's table in each family.
func parseNFTSkeleton(doc []byte) (map[Family]*nftSkeleton, error) {
	var d struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("nftables listing: %w", err)
	}
	out := map[Family]*nftSkeleton{}
	get := func(family, table string) *nftSkeleton {
		if table != NFTablesTable {
			return nil
		}
		var fam Family
		switch family {
		case "ip":
			fam = IPv4
		case "ip6":
			fam = IPv6
		default:
			return nil
		}
		s := out[fam]
		if s == nil {
			s = &nftSkeleton{chains: map[string]bool{}, rules: map[string]int{}, sets: map[string]bool{}}
			out[fam] = s
		}
		return s
	}
	type object struct {
		Family string `json:"family"`
		Table  string `json:"table"`
		Name   string `json:"name"`
		Chain  string `json:"chain"`
	}
	for _, item := range d.Nftables {
		for kind, raw := range item {
			var o object
			if kind == "metainfo" || json.Unmarshal(raw, &o) != nil {
				continue
			}
			switch kind {
			case "table":
				if s := get(o.Family, o.Name); s != nil {
					s.present = true
				}
			case "chain":
				if s := get(o.Family, o.Table); s != nil {
					s.chains[o.Name] = true
				}
			case "rule":
				if s := get(o.Family, o.Table); s != nil {
					s.rules[o.Chain]++
				}
			case "set", "map":
				if s := get(o.Family, o.Table); s != nil {
					s.sets[o.Name] = true
				}
			}
		}
	}
	return out, nil
}

// skeletonDiff returns why the listed table differs from what the agent
// wrote (chains with their rule counts, and sets), or "" when it does not.
// Chains and sets the table has beyond those are not a difference: a full
// write deletes them.
func skeletonDiff(got *nftSkeleton, chains []NFTChain, sets []NFTSet) string {
	if got == nil || !got.present {
		return "the table is gone"
	}
	for _, c := range chains {
		if !got.chains[c.Name] {
			return "chain " + c.Name + " is gone"
		}
		if n := got.rules[c.Name]; n != len(c.Rules) {
			return fmt.Sprintf("chain %s has %d rules, not %d", c.Name, n, len(c.Rules))
		}
	}
	for _, s := range sets {
		if !got.sets[s.Name] {
			kind := "set"
			if s.Map {
				kind = "map"
			}
			return kind + " " + s.Name + " is gone"
		}
	}
	return ""
}

// checkTables compares the skeleton of every family's table with what the
// last transaction wrote, and marks a family whose table someone else
// changed for a full write in this sync. Element-level changes are left
// to the periodic full write.
func (p *NFTables) checkTables(ctx context.Context) {
	lister, ok := p.nft.(nftLister)
	if !ok {
		return
	}
	doc, err := lister.listSkeleton(ctx)
	if err != nil {
		p.log.Warn("nftables check: listing the ruleset failed; the next full write repairs what is missing", "err", err)
		return
	}
	got, err := parseNFTSkeleton(doc)
	if err != nil {
		p.log.Warn("nftables check", "err", err)
		return
	}
	fams := make([]Family, 0, len(p.applied))
	for fam := range p.applied {
		fams = append(fams, fam)
	}
	slices.Sort(fams)
	for _, fam := range fams {
		st := p.applied[fam]
		if why := skeletonDiff(got[fam], st.chains, st.sets); why != "" {
			p.log.Warn("nftables table changed by someone else; rewriting it", "family", fam.String(), "reason", why)
			p.metrics.repairs.Inc()
			st.full = time.Time{}
		}
	}
}
