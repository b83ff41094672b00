package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
)

// cleanupCmd removes what the agent leaves on the host. It never needs the
// API server, so it works on a host cut off from the cluster.
func cleanupCmd(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("cleanup", stderr)
	cfg, code, ok := f.loadOrReport(args, stderr, false)
	if !ok {
		return code
	}
	failed := false
	if err := proxy.CleanupIPTables(context.Background()); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: %v\n", err)
		failed = true
	} else {
		fmt.Fprintln(stdout, "removed iptables chains and jumps of ours (legacy and nft, IPv4 and IPv6)")
		if err := proxy.RemoveCreatedTables(context.Background(), cfg.HostPath(cfg.StateDir)); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: cleanup: %v\n", err)
			failed = true
		} else {
			fmt.Fprintln(stdout, "removed the iptables-nft tables the agent created, where nothing else is in them")
		}
	}
	if err := proxy.CleanupNFTables(context.Background()); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: %v\n", err)
		failed = true
	} else {
		fmt.Fprintln(stdout, "removed nftables tables of ours (ip and ip6 bridge-agent)")
	}
	if removed, err := routes.Cleanup(cfg.Routes.Protocol); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: %v\n", err)
		failed = true
	} else {
		fmt.Fprintf(stdout, "removed %d routes of ours (protocol %d, every table, IPv4 and IPv6)\n", len(removed), cfg.Routes.Protocol)
		for _, r := range removed {
			fmt.Fprintf(stdout, "  %s\n", r)
		}
	}
	// Before the state directory goes: it holds the original resolv.conf.
	remove := []string{cfg.HostPath(cfg.StatusSocket), cfg.HostPath(cfg.StateDir)}
	if err := hostdns.Cleanup(context.Background(), cfg.HostRoot, cfg.HostPath(cfg.StateDir), nil); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: %v (keeping %s, which holds the original)\n", err, cfg.HostPath(cfg.StateDir))
		failed = true
		remove = remove[:1]
	} else {
		fmt.Fprintln(stdout, "restored the host resolver (resolved drop-in or resolv.conf) where the agent had changed it")
	}
	for _, p := range remove {
		if err := os.RemoveAll(p); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: cleanup: %v\n", err)
			failed = true
			continue
		}
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	if failed {
		return 1
	}
	return 0
}
