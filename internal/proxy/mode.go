package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
)

// Backend names, as in proxy.mode.
const (
	BackendIPTables = "iptables"
	BackendNFTables = "nftables"
)

// ChooseBackend resolves proxy.mode auto: nftables where this host's nft
// and kernel support the agent's layout and the host keeps no rules of its
// own in iptables-legacy, iptables otherwise. Legacy tables hook the same
// netfilter points as the agent's nftables chains, at the same priorities
// (nat at -100), and between equal priorities the kernel runs hooks in the
// order they were registered: a host's legacy NAT or firewall rules could
// run before or after the agent's depending on what loaded first. In
// iptables the agent's chains are reached by jumps placed in the host's
// built-in chains, so the order is explicit. The reason says which facts
// decided.
func ChooseBackend(ctx context.Context) (backend, reason string) {
	ok, why := NFTablesSupported(ctx)
	if !ok {
		return BackendIPTables, "nftables unavailable: " + why
	}
	if n := legacyRules(ctx); n > 0 {
		return BackendIPTables, fmt.Sprintf("the host keeps %d rules in iptables-legacy; the agent's rules go beside them", n)
	}
	return BackendNFTables, "nftables supported (" + why + ") and no iptables-legacy rules of the host's"
}

// legacyRules counts the rules of others in iptables-legacy, both
// families, every table; 0 when the legacy tools are not installed or no
// legacy table exists. It creates no legacy table (see saveExisting).
func legacyRules(ctx context.Context) int {
	n := 0
	for _, fam := range []Family{IPv4, IPv6} {
		n += countForeignRules(saveExisting(ctx, fam, VariantLegacy))
	}
	return n
}

// countForeignRules counts the "-A" lines of an iptables-save dump that
// are not the agent's own (chains and jumps marked with ChainPrefix).
func countForeignRules(save []byte) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-A ") && !strings.Contains(line, ChainPrefix) {
			n++
		}
	}
	return n
}
