package proxy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// legacyTraceChild names the run of the agent's code that
// TestNoLegacyTablesLeft starts inside a fresh network namespace.
const legacyTraceChild = "BRIDGE_AGENT_TEST_LEGACY_TRACE"

// legacyTraceState is the state directory of that run.
const legacyTraceState = "BRIDGE_AGENT_TEST_LEGACY_TRACE_STATE"

// TestNoLegacyTablesLeft: on a host without iptables-legacy tables, the
// agent's mode detection, a sync, the removal of the other backend's rules
// after it, and cleanup leave no legacy table behind, in either family:
// iptables-legacy-save and ip6tables-legacy-save print nothing. In
// iptables-nft mode the nftables tables its writes created go as well,
// except one that someone else's rule went into. Legacy
// tables, like /proc/net/ip_tables_names that lists them, belong to a
// network namespace, so a fresh one is a host that has none; the agent's
// code runs in it as this test binary started with "ip netns exec". Where
// the legacy module is not loaded at all (no /proc/net/ip_tables_names),
// it must stay so.
func TestNoLegacyTablesLeft(t *testing.T) {
	if mode := os.Getenv(legacyTraceChild); mode != "" {
		legacyTraceRun(t, mode)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: requires root to create network namespaces")
	}
	for _, tool := range []string{"ip", "nft", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s is not installed: %v", tool, err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	for _, mode := range []string{"auto", "iptables", "iptables-foreign"} {
		t.Run(mode, func(t *testing.T) {
			ns := testNetns(t)
			cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run", "^TestNoLegacyTablesLeft$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), legacyTraceChild+"="+mode, "XTABLES_LOCKFILE="+t.TempDir()+"/xtables.lock",
				legacyTraceState+"="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("agent run in %s: %v\n%s", ns, err, out)
			}
			t.Logf("agent run in %s:\n%s", ns, out)
			for _, fam := range []Family{IPv4, IPv6} {
				names, loaded := procTables(t, ns, procTablesNames(fam))
				if !loaded {
					// Running the save tool would load the module.
					t.Logf("%s: %s is missing: the legacy module is not loaded, no legacy table exists", fam, procTablesNames(fam))
					continue
				}
				if names != "" {
					t.Errorf("%s lists %q after a %s run and cleanup", procTablesNames(fam), names, mode)
				}
				save := toolName(fam, VariantLegacy, "-save")
				if got := nsRun(t, ns, save); got != "" {
					t.Errorf("%s after a %s run and cleanup prints:\n%s", save, mode, got)
				}
			}
			// The iptables-nft tables the agent created go too, unless
			// someone else put something in them.
			want := ""
			if mode == "iptables-foreign" {
				want = "table ip filter"
			}
			if got := nsRun(t, ns, "nft", "list", "tables"); got != want {
				t.Errorf("nft tables after a %s run and cleanup:\n%s\nwant %q", mode, got, want)
			}
			if mode == "iptables-foreign" {
				if got := nsRun(t, ns, "iptables-nft-save", "-t", "filter"); !strings.Contains(got, "-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT") {
					t.Errorf("the foreign rule is gone:\n%s", got)
				}
			}
		})
	}

	// The facts this stands on: legacy tables and their list are per
	// network namespace, and naming a legacy table creates it (loading
	// the module if needed).
	a, b := testNetns(t), testNetns(t)
	if got, _ := procTables(t, a, "/proc/net/ip_tables_names"); got != "" {
		t.Fatalf("fresh netns lists legacy tables %q", got)
	}
	nsRun(t, a, "iptables-legacy-save", "-t", "nat")
	if got, _ := procTables(t, a, "/proc/net/ip_tables_names"); got != "nat" {
		t.Fatalf("after iptables-legacy-save -t nat the netns lists %q, want nat (the tool creates the table it names)", got)
	}
	if got, _ := procTables(t, b, "/proc/net/ip_tables_names"); got != "" {
		t.Fatalf("another netns lists %q: the list is not per network namespace", got)
	}
}

// procTables returns the legacy tables a /proc/net/*_tables_names file
// lists in a network namespace, and whether the file exists (it does once
// the legacy module is loaded).
func procTables(t *testing.T, ns, file string) (names string, loaded bool) {
	t.Helper()
	out := nsRun(t, ns, "sh", "-c", "if [ -e "+file+" ]; then echo loaded; cat "+file+"; fi")
	rest, loaded := strings.CutPrefix(out, "loaded")
	return strings.Join(strings.Fields(rest), " "), loaded
}

// legacyTraceRun is the agent's side, run inside the namespace: what
// "bridge-agent run" does with proxy.mode auto (nftables where supported)
// or iptables, with iptablesVariant auto, up to the first sync and the
// removal of the other backend's rules, then what "bridge-agent cleanup"
// does.
func legacyTraceRun(t *testing.T, mode string) {
	ctx := context.Background()
	snap := snapshot(testServices()...)
	stateDir := os.Getenv(legacyTraceState)
	var p interface {
		Sync(context.Context, *cluster.Snapshot) error
	}
	var other func(context.Context) error
	if mode == "auto" {
		// nftables where the kernel and nft support the agent's layout,
		// else iptables: both must leave no legacy table.
		backend, reason := ChooseBackend(ctx)
		t.Logf("mode auto: %s (%s)", backend, reason)
		mode = backend
	}
	switch mode {
	case BackendNFTables:
		n, err := NewNFTables(ctx, NFTablesOptions{Masquerade: true})
		if err != nil {
			t.Fatal(err)
		}
		p, other = n, func(ctx context.Context) error {
			if err := CleanupIPTables(ctx); err != nil {
				return err
			}
			return RemoveCreatedTables(ctx, stateDir)
		}
	case "iptables", "iptables-foreign":
		v, err := DetectVariant(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iptablesVariant auto: %s", v)
		if v != VariantNFT {
			t.Fatalf("iptablesVariant auto chose %s in a namespace without rules", v)
		}
		ipt, err := NewIPTables(ctx, IPTablesOptions{Variant: v, Masquerade: true, CreatedTables: CreatedTablesFile(stateDir)})
		if err != nil {
			t.Fatal(err)
		}
		p, other = ipt, CleanupNFTables
	default:
		t.Fatalf("unknown mode %q", mode)
	}
	if err := p.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := other(ctx); err != nil {
		t.Fatal(err)
	}
	if mode == "iptables-foreign" {
		// Someone else's rule in a table the agent created.
		if out, err := exec.Command("iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT").CombinedOutput(); err != nil {
			t.Fatalf("foreign rule: %v: %s", err, out)
		}
	}
	if err := CleanupIPTables(ctx); err != nil {
		t.Fatal(err)
	}
	if err := RemoveCreatedTables(ctx, stateDir); err != nil {
		t.Fatal(err)
	}
	if err := CleanupNFTables(ctx); err != nil {
		t.Fatal(err)
	}
}

// testNetns creates a network namespace that the test deletes when it ends.
func testNetns(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("bapx-%d-%d", os.Getpid(), iptNetnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("create netns %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	return name
}

// nsRun runs a command in a network namespace and returns its output,
// trimmed.
func nsRun(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).Output()
	if err != nil {
		t.Fatalf("%s in %s: %v", strings.Join(argv, " "), ns, err)
	}
	return strings.TrimSpace(string(out))
}
