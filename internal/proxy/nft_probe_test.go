package proxy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestNFTProbeScript checks that the start-up probe is the real layout in
// its own table: it applies to the fake (which rejects maps used as plain
// sets, as kernels before 6.4 do), names only the probe table, and holds
// what the layout has: numgen picks, affinity records, a DNAT map and set
// deletions.
func TestNFTProbeScript(t *testing.T) {
	script := nftProbeScript()
	x := newFakeNFT()
	if err := x.Run(context.Background(), script); err != nil {
		t.Fatalf("probe script: %v\n%s", err, script)
	}
	tables := make([]string, 0, len(x.tables))
	for name := range x.tables {
		tables = append(tables, name)
	}
	slices.Sort(tables)
	if want := []string{"ip " + nftProbeTable, "ip6 " + nftProbeTable}; !slices.Equal(tables, want) {
		t.Errorf("probe tables: %v, want %v", tables, want)
	}
	for line := range strings.Lines(string(script)) {
		if f := strings.Fields(line); len(f) < 4 || f[3] != nftProbeTable {
			t.Errorf("probe line outside the probe table: %q", line)
		}
	}
	for _, want := range []string{
		"numgen random mod 3 vmap", "update @affinity-clients-0-tcp", "dnat ip6 addr . port to",
		"@affinity-held-2-tcp", "delete map ip " + nftProbeTable + " endpoints-2-sctp",
		"delete set ip " + nftProbeTable + " affinity-clients-2-tcp", "jump mark-for-masquerade",
		"@no-endpoints reject",
	} {
		if !strings.Contains(string(script), want) {
			t.Errorf("probe lacks %q", want)
		}
	}
}

// TestNFTablesProbeKernel runs the probe against this kernel and nft in a
// fresh namespace: it passes and leaves no table behind.
func TestNFTablesProbeKernel(t *testing.T) {
	ns := nftNetns(t)
	ok, reason := nftSupported(context.Background(), netnsNFT(ns))
	if !ok {
		t.Fatalf("probe failed: %s", reason)
	}
	t.Logf("probe passed: %s", reason)
	if got := strings.TrimSpace(inNetns(t, ns, "nft", "list", "tables")); got != "" {
		t.Errorf("the probe left tables: %s", got)
	}
}

// TestNFTSupportedReportsWhy checks that a probe the kernel rejects says
// so with nft's own error, which ChooseBackend logs and the status shows.
func TestNFTSupportedReportsWhy(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skipf("skipping: no sh: %v", err)
	}
	// What nft 0.9.8 printed on Linux 5.10 for the old layout's "@map jump".
	fake := filepath.Join(t.TempDir(), "nft")
	script := `#!` + sh + `
if [ "$1" = --version ]; then echo "nftables v0.9.8 (E.D.S.)"; exit 0; fi
cat >/dev/null
echo "/dev/stdin:41:1-80: Error: Could not process rule: Invalid argument" >&2
exit 1
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ok, why := nftSupported(context.Background(), &execNFT{argv: []string{fake}})
	if ok {
		t.Fatal("a rejected probe was reported as supported")
	}
	for _, want := range []string{"nftables v0.9.8 (E.D.S.)", "Could not process rule: Invalid argument"} {
		if !strings.Contains(why, want) {
			t.Errorf("reason %q lacks %q", why, want)
		}
	}
}

// TestChooseBackendKernel runs proxy.mode auto's choice in a fresh
// namespace (no rules of anyone): on every supported kernel it must pick
// nftables. The reason is logged, for the record of each kernel.
func TestChooseBackendKernel(t *testing.T) {
	ns := nftNetns(t)
	var backend, reason string
	if err := inNetnsThread(ns, func() error {
		backend, reason = ChooseBackend(context.Background())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("auto picks %s: %s", backend, reason)
	if backend != BackendNFTables {
		t.Errorf("auto picked %s: %s", backend, reason)
	}
}
