package routes

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"
)

// Status is the routes consumer's part of `bridge-agent status`.
type Status struct {
	Mode     string `json:"mode"`
	Protocol int    `json:"protocol"`
	Table    int    `json:"table"`
	// Routes are the desired routes in place after the last sync.
	Routes []Route `json:"routes"`
	// Problems are the routes that could not be had, and why.
	Problems []Problem `json:"problems,omitempty"`
	// LastChanges counts what the last sync changed.
	LastChanges Changes   `json:"lastChanges"`
	LastSync    time.Time `json:"lastSync,omitzero"`
	// PodCIDRs are the cluster's pod ranges: every Node's spec.podCIDRs.
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// ServiceCIDRs are the cluster's Service ranges, from its ServiceCIDR
	// objects ("cluster") or, when it publishes none, from the
	// configuration ("config").
	ServiceCIDRs     []netip.Prefix `json:"serviceCIDRs"`
	ServiceCIDRsFrom string         `json:"serviceCIDRsFrom,omitempty"`
}

// Changes counts route changes.
type Changes struct {
	Added    int `json:"added"`
	Replaced int `json:"replaced"`
	Deleted  int `json:"deleted"`
}

// Conflicts counts the problems of reason conflict.
func (s *Status) Conflicts() int {
	n := 0
	for _, p := range s.Problems {
		if p.Reason == ReasonConflict {
			n++
		}
	}
	return n
}

// WriteText writes the status for humans, indented by two spaces.
func (s *Status) WriteText(w io.Writer) {
	fmt.Fprintf(w, "  mode %s, protocol %d, table %s: %d routes installed", s.Mode, s.Protocol, tableName(s.Table), len(s.Routes))
	if len(s.Problems) > 0 {
		fmt.Fprintf(w, ", %d not installed (%d conflicts)", len(s.Problems), s.Conflicts())
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range s.Routes {
		var hops []string
		for _, n := range r.Nexthops {
			hops = append(hops, n.String())
		}
		table := ""
		if r.Table != mainTable {
			table = "table " + tableName(r.Table)
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\n", r.Dst, strings.Join(hops, ", "), strings.TrimSpace(r.Node+" "+table))
	}
	tw.Flush()
	for _, p := range s.Problems {
		fmt.Fprintf(w, "    ! %s\n", p)
	}
	services := joinPrefixes(s.ServiceCIDRs)
	if s.ServiceCIDRsFrom != "" {
		services += " (from the " + s.ServiceCIDRsFrom + ")"
	}
	if s.Mode != ModeNodes && len(s.PodCIDRs) == 0 {
		// Only nodes mode watches the Nodes that carry them.
		fmt.Fprintf(w, "  cluster pod ranges: not known in %s mode (Nodes are not watched)\n", s.Mode)
	} else {
		fmt.Fprintf(w, "  cluster pod ranges: %s\n", joinPrefixes(s.PodCIDRs))
	}
	fmt.Fprintf(w, "  cluster service ranges: %s\n", services)
}

func joinPrefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "-"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
