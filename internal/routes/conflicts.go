package routes

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Foreign is a route someone else owns (another protocol number).
type Foreign struct {
	Dst   netip.Prefix
	Table int
	// Desc describes the route for messages, e.g.
	// "10.244.3.0/24 via 10.0.0.2 proto static".
	Desc string
}

// Refuse splits the desired routes into those that may be installed and a
// conflict Problem for each one that a foreign route in the same table
// equals or lies inside. Broader foreign routes and default routes are no
// conflict: a more specific route of ours takes precedence for its range
// without changing them.
func Refuse(routes []Route, foreign []Foreign) ([]Route, []Problem) {
	type tableFamily struct {
		table int
		is4   bool
	}
	index := map[tableFamily][]Foreign{}
	for _, f := range foreign {
		if f.Dst.Bits() <= 0 {
			continue
		}
		k := tableFamily{f.Table, f.Dst.Addr().Is4()}
		index[k] = append(index[k], f)
	}
	for _, fs := range index {
		slices.SortFunc(fs, func(a, b Foreign) int { return comparePrefix(a.Dst, b.Dst) })
	}
	var ok []Route
	var problems []Problem
	for _, r := range routes {
		fs := index[tableFamily{r.Table, r.Dst.Addr().Is4()}]
		// Foreign prefixes inside r start at r's first address and are
		// contiguous in address order.
		i, _ := slices.BinarySearchFunc(fs, r.Dst.Addr(), func(f Foreign, a netip.Addr) int { return f.Dst.Addr().Compare(a) })
		var hits []string
		for ; i < len(fs) && r.Dst.Contains(fs[i].Dst.Addr()); i++ {
			if fs[i].Dst.Bits() >= r.Dst.Bits() {
				hits = append(hits, fs[i].Desc)
			}
		}
		if len(hits) == 0 {
			ok = append(ok, r)
			continue
		}
		problems = append(problems, Problem{Reason: ReasonConflict, Node: r.Node, CIDR: r.Dst, Detail: conflictDetail(r, hits)})
	}
	return ok, problems
}

func conflictDetail(r Route, hits []string) string {
	const show = 3
	list := strings.Join(hits[:min(len(hits), show)], "; ")
	if len(hits) > show {
		list += fmt.Sprintf("; and %d more", len(hits)-show)
	}
	what := "someone else's route in table " + tableName(r.Table) + " covers it"
	if len(hits) > 1 {
		what = strconv.Itoa(len(hits)) + " routes of someone else in table " + tableName(r.Table) + " cover it"
	}
	return fmt.Sprintf("%s (%s); not installing %s", what, list, r)
}
