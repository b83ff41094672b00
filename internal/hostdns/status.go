package hostdns

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// WriteText writes the result for humans, indented by two spaces, in the
// manner of the other consumers' parts of `bridge-agent status`.
func (r *Result) WriteText(w io.Writer) {
	fmt.Fprintf(w, "  mode %s (%s)\n", r.Mode, r.Reason)
	if r.Link != "" {
		fmt.Fprintf(w, "  systemd-resolved link %s\n", r.Link)
	}
	if len(r.Files) > 0 {
		fmt.Fprintf(w, "  managing %s\n", strings.Join(r.Files, ", "))
	}
	fmt.Fprintf(w, "  upstreams: %s\n", joinAddrPorts(r.Upstreams))
	if c := r.Check; c != nil {
		switch {
		case c.OK:
			fmt.Fprintf(w, "  check: %s resolves through the host's resolver to %s, as the stub answers (%s)\n", c.Name, joinAddrs(c.Host), c.At.Format("15:04:05"))
		case c.Skipped != "":
			fmt.Fprintf(w, "  check: not made: %s\n", c.Skipped)
		default:
			fmt.Fprintf(w, "    ! check failed: %s\n", c.Problem)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "    ! %s\n", n)
	}
}

func joinAddrPorts(as []netip.AddrPort) string {
	if len(as) == 0 {
		return "-"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
