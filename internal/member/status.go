package member

import (
	"fmt"
	"io"
	"time"
)

// WriteText writes the membership for `bridge-agent status`: who the host
// is, when its token expires and is renewed, its last heartbeat, and what
// to do when the API server refuses it.
func (s *Status) WriteText(w io.Writer, now time.Time) {
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		if d := t.Sub(now); d >= 0 {
			return t.UTC().Format(time.RFC3339) + " (in " + d.Round(time.Second).String() + ")"
		}
		return t.UTC().Format(time.RFC3339) + " (" + now.Sub(t).Round(time.Second).String() + " ago)"
	}
	fmt.Fprintf(w, "Host:        %s (ServiceAccount %s)\n", s.Host, s.ServiceAccount)
	tok := "expires " + when(s.TokenExpiry)
	if s.Expired {
		tok = "EXPIRED " + when(s.TokenExpiry)
	}
	fmt.Fprintf(w, "Token:       %s, renewal %s, %d renewals, file %s\n", tok, when(s.NextRenewal), s.Renewals, s.TokenFile)
	if s.RenewError != "" {
		fmt.Fprintf(w, "  renewal error: %s\n", s.RenewError)
	}
	fmt.Fprintf(w, "Heartbeat:   Lease %s renewed %s\n", s.Lease, when(s.LeaseRenewed))
	if s.LeaseError != "" {
		fmt.Fprintf(w, "  heartbeat error: %s\n", s.LeaseError)
	}
	if s.Unauthorized {
		fmt.Fprintf(w, "UNAUTHORIZED: the API server refuses this host's token; the rules, routes and DNS stay as last synced. "+
			"On the cluster run `bridge-agent host add %s`, then `bridge-agent join BUNDLE` here.\n", s.Host)
	}
}
