package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/ownfiles"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/routes"
)

// cleanupCmd removes what the agent leaves on the host. It never needs the
// API server, so it works on a host cut off from the cluster. It refuses
// to run beside a running agent, and it removes only the files and
// directories the agent made (ownfiles), saying what it left and why.
func cleanupCmd(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("cleanup", stderr)
	cfg, code, ok := f.loadOrReport(args, stderr, false)
	if !ok {
		return code
	}
	// Only the paths are checked: a configuration that a newer version
	// finds wrong elsewhere must still let the host be cleaned up.
	if err := cfg.ValidatePaths(); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: %v; nothing was removed, fix the configuration and run cleanup again\n", err)
		return 1
	}
	lock, err := ownfiles.Acquire(cfg.HostRoot)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: refused, nothing was removed: %v\n", err)
		return 1
	}
	defer lock.Release()

	failed := false
	keep := map[string]string{} // files of ours to leave, with why
	fail := func(err error) {
		fmt.Fprintf(stderr, "bridge-agent: cleanup: %v\n", err)
		failed = true
	}
	if err := proxy.CleanupIPTables(context.Background()); err != nil {
		fail(err)
	} else {
		fmt.Fprintln(stdout, "removed iptables chains and jumps of ours (legacy and nft, IPv4 and IPv6)")
		if err := proxy.RemoveCreatedTables(context.Background(), cfg.HostPath(cfg.StateDir)); err != nil {
			fail(err)
			keep[proxy.CreatedTablesFile(cfg.StateDir)] = "needed to remove the iptables-nft tables the agent created, which failed (see above)"
		} else {
			fmt.Fprintln(stdout, "removed the iptables-nft tables the agent created, where nothing else is in them")
		}
	}
	if err := proxy.CleanupNFTables(context.Background()); err != nil {
		fail(err)
	} else {
		fmt.Fprintln(stdout, "removed nftables tables of ours (ip and ip6 bridge-agent)")
	}
	if removed, err := routes.Cleanup(cfg.Routes.Protocol); err != nil {
		fail(err)
	} else {
		fmt.Fprintf(stdout, "removed %d routes of ours (protocol %d, every table, IPv4 and IPv6)\n", len(removed), cfg.Routes.Protocol)
		for _, r := range removed {
			fmt.Fprintf(stdout, "  %s\n", r)
		}
	}

	// The resolver first: the state directory holds the original
	// resolv.conf. A state directory that fails the use-time checks (a
	// symbolic link, say) is not read or written at all.
	own := ownOptions(cfg)
	own.Created = lock.Created
	stateDir, _, err := ownfiles.Dir(cfg.HostRoot, cfg.StateDir, false)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintln(stdout, "no state directory: the host resolver was not changed by the agent")
	case err != nil:
		fail(fmt.Errorf("the host resolver and the agent's files are left as they are: %w", err))
		return 1
	default:
		if err := hostdns.Cleanup(context.Background(), cfg.HostRoot, stateDir, nil); err != nil {
			fail(err)
			for _, name := range hostdns.StateFiles() {
				keep[cfg.StateDir+"/"+name] = "needed to restore the host resolver, which failed (see above)"
			}
		} else {
			fmt.Fprintln(stdout, "restored the host resolver (systemd-resolved link bagent-dns, resolv.conf, an older version's resolved drop-in) where the agent had changed it")
		}
	}
	rep, err := ownfiles.Cleanup(ownfiles.CleanupOptions{Options: own, Keep: keep})
	for _, p := range rep.Removed {
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	for _, l := range rep.Left {
		fmt.Fprintf(stdout, "left %s: %s\n", l.Path, l.Why)
	}
	if err != nil {
		fail(err)
	}
	if failed {
		return 1
	}
	return 0
}
