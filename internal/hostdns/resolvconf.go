package hostdns

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
)

// resolvConf is what bridge-agent reads from a resolv.conf(5) file.
type resolvConf struct {
	// Nameservers in file order; entries that are not IP addresses are
	// skipped, as the C library skips them.
	Nameservers []netip.Addr
	// Keep are the domain, search, options and sortlist lines, verbatim and
	// in file order: everything but the nameservers that a managed file
	// carries over from the original.
	Keep []string
	// Comments are the comment lines, where generators sign their files.
	Comments []string
}

func parseResolvConf(content []byte) resolvConf {
	var rc resolvConf
	sc := bufio.NewScanner(bytes.NewReader(content))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if line[0] == '#' || line[0] == ';' {
			rc.Comments = append(rc.Comments, line)
			continue
		}
		f := strings.Fields(line)
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				continue
			}
			if a, err := netip.ParseAddr(f[1]); err == nil {
				rc.Nameservers = append(rc.Nameservers, a)
			}
		case "domain", "search", "options", "sortlist":
			rc.Keep = append(rc.Keep, line)
		}
	}
	return rc
}

// renderResolvConf is the managed /etc/resolv.conf: the stub as the only
// nameserver, with the original's search, domain, options and sortlist
// lines.
func renderResolvConf(stub netip.Addr, keep []string, backup string) []byte {
	var b strings.Builder
	b.WriteString(Marker + "\n")
	b.WriteString("# The host's original file is kept in " + backup + " and restored by cleanup.\n")
	b.WriteString("nameserver " + stub.String() + "\n")
	for _, l := range keep {
		b.WriteString(l + "\n")
	}
	return []byte(b.String())
}

// isResolvedStub reports whether a is one of systemd-resolved's own
// listeners: 127.0.0.53 (the stub) or 127.0.0.54 (the proxy-only stub).
func isResolvedStub(a netip.Addr) bool {
	return a == resolvedStub || a == resolvedProxyStub
}

var (
	resolvedStub      = netip.AddrFrom4([4]byte{127, 0, 0, 53})
	resolvedProxyStub = netip.AddrFrom4([4]byte{127, 0, 0, 54})
)

// onlyResolvedStubs reports whether addrs is not empty and names nothing
// but systemd-resolved's listeners.
func onlyResolvedStubs(addrs []netip.Addr) bool {
	for _, a := range addrs {
		if !isResolvedStub(a) {
			return false
		}
	}
	return len(addrs) > 0
}
