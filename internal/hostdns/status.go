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
	if len(r.Files) > 0 {
		fmt.Fprintf(w, "  managing %s\n", strings.Join(r.Files, ", "))
	}
	fmt.Fprintf(w, "  upstreams: %s\n", joinAddrPorts(r.Upstreams))
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
