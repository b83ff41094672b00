package proxy

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// IPTablesSupported reports whether this host can run the iptables backend
// in variant v (empty: the variant DetectVariant picks, as at start): the
// tools the backend starts with are installed, for both families, and
// iptables-restore runs. The reason names the variant and the version, or
// what is missing. It creates no table (no legacy table in particular).
func IPTablesSupported(ctx context.Context, v Variant) (bool, string) {
	if v == "" {
		d, err := DetectVariant(ctx)
		if err != nil {
			return false, err.Error()
		}
		v = d
	}
	if _, err := newExecXtables(v, []Family{IPv4, IPv6}); err != nil {
		return false, err.Error()
	}
	var missing []string
	for _, fam := range []Family{IPv4, IPv6} {
		for _, suffix := range []string{"-save", "-restore"} {
			if _, err := exec.LookPath(toolName(fam, v, suffix)); err != nil {
				missing = append(missing, toolName(fam, v, suffix))
			}
		}
	}
	if len(missing) > 0 {
		return false, fmt.Sprintf("iptables %s: %s not installed", v, strings.Join(missing, ", "))
	}
	out, err := exec.CommandContext(ctx, toolName(IPv4, v, ""), "--version").Output()
	if err != nil {
		return false, fmt.Sprintf("%s --version: %v", toolName(IPv4, v, ""), err)
	}
	return true, fmt.Sprintf("variant %s, %s", v, strings.TrimSpace(string(out)))
}
