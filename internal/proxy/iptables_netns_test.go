package proxy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

var iptNetnsSeq atomic.Int32

// iptNetns creates a network namespace that the test removes when it ends
// and returns the xtables of variant v running every command inside it,
// with its own xtables lock file.
func iptNetns(tb testing.TB, v Variant) *netnsXtables {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: requires root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a private network namespace")
	}
	for _, tool := range []string{"ip", "nsenter", toolName(IPv4, v, "-restore")} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("%s is needed for the iptables kernel tests: %v", tool, err)
		}
	}
	name := testNetns(tb)
	return &netnsXtables{
		variant: v,
		prefix:  []string{"nsenter", "--net=/run/netns/" + name, "--"},
		env:     append(os.Environ(), "XTABLES_LOCKFILE="+filepath.Join(tb.TempDir(), "xtables.lock")),
	}
}

// netnsXtables is an xtables running the variant's tools inside a network
// namespace: the same commands as execXtables, one process each.
type netnsXtables struct {
	variant Variant
	prefix  []string
	env     []string
}

var _ xtables = (*netnsXtables)(nil)

func (x *netnsXtables) run(ctx context.Context, stdin []byte, tool string, args ...string) ([]byte, error) {
	argv := append(slices.Clone(x.prefix), tool)
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], args...)...)
	cmd.Env = x.env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (x *netnsXtables) Tables(ctx context.Context, fam Family) ([]string, error) {
	readFile := func(path string) ([]byte, error) { return x.run(ctx, nil, "cat", path) }
	save := func(ctx context.Context, tool string) ([]byte, error) { return x.run(ctx, nil, tool) }
	return existingTables(ctx, fam, x.variant, readFile, save)
}

func (x *netnsXtables) Chains(ctx context.Context, fam Family, table string) ([]string, error) {
	out, err := x.run(ctx, nil, toolName(fam, x.variant, "-save"), "-t", table)
	if err != nil {
		return nil, err
	}
	return parseChains(out), nil
}

func (x *netnsXtables) Restore(ctx context.Context, fam Family, payload []byte) error {
	_, err := x.run(ctx, payload, toolName(fam, x.variant, "-restore"), "--noflush", "--wait=15")
	return err
}

func (x *netnsXtables) jump(op string, fam Family, j Jump) error {
	args := append([]string{"--wait", "15", "-t", j.Table, op, j.Chain}, j.Rule...)
	if op == "-I" {
		args = append([]string{"--wait", "15", "-t", j.Table, op, j.Chain, "1"}, j.Rule...)
	}
	_, err := x.run(context.Background(), nil, toolName(fam, x.variant, ""), args...)
	return err
}

func (x *netnsXtables) JumpExists(fam Family, j Jump) (bool, error) {
	err := x.jump("-C", fam, j)
	if err == nil {
		return true, nil
	}
	if strings.Contains(err.Error(), "exit status 1") && !isMissingChain(err) {
		return false, nil // rule not found
	}
	return false, err
}

func (x *netnsXtables) InsertJump(fam Family, j Jump) error { return x.jump("-I", fam, j) }

func (x *netnsXtables) DeleteJump(fam Family, j Jump) error {
	if ok, _ := x.JumpExists(fam, j); !ok {
		return nil
	}
	return x.jump("-D", fam, j)
}

// save returns both tables of a family as iptables-save prints them,
// without comments and counters, chain declarations sorted and rules
// grouped by chain in order.
func (x *netnsXtables) save(tb testing.TB, fam Family) string {
	tb.Helper()
	var b strings.Builder
	for _, table := range []string{"nat", "filter"} {
		out, err := x.run(context.Background(), nil, toolName(fam, x.variant, "-save"), "-t", table)
		if err != nil {
			tb.Fatal(err)
		}
		var decls []string
		rules := map[string][]string{}
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(line, ":"):
				name, rest, _ := strings.Cut(line[1:], " ")
				policy, _, _ := strings.Cut(rest, " ")
				decls = append(decls, name+" "+policy)
			case strings.HasPrefix(line, "-A "):
				name, _, _ := strings.Cut(line[3:], " ")
				rules[name] = append(rules[name], line)
			}
		}
		sort.Strings(decls)
		for _, d := range decls {
			fmt.Fprintf(&b, "%s :%s\n", table, d)
			name, _, _ := strings.Cut(d, " ")
			for _, r := range rules[name] {
				fmt.Fprintf(&b, "%s %s\n", table, r)
			}
		}
	}
	return b.String()
}

// benchSnapshot is syntheticSnapshot with Service i changed: its last
// endpoint replaced by another address.
func benchChange(snap *cluster.Snapshot, i, round int) *cluster.Snapshot {
	next := &cluster.Snapshot{Version: snap.Version + 1, Services: make(map[cluster.ServiceKey]*cluster.Service, len(snap.Services))}
	for k, s := range snap.Services {
		next.Services[k] = s
	}
	key := cluster.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc-%d", i)}
	old := next.Services[key]
	svc := *old
	p := *old.Ports[0]
	p.Endpoints = slices.Clone(p.Endpoints)
	p.Endpoints[len(p.Endpoints)-1] = ready(fmt.Sprintf("10.250.%d.%d", (round>>8)&255, round&255), 8080)
	svc.Ports = []*cluster.Port{&p}
	next.Services[key] = &svc
	return next
}

// BenchmarkIPTablesSync measures one sync after a change of one Service's
// endpoints, with N Services of 10 endpoints in place, against iptables-nft
// in a private network namespace. p50 and p99 are of single syncs.
func BenchmarkIPTablesSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			x := iptNetns(b, VariantNFT)
			ctx := context.Background()
			p := newIPTables(IPTablesOptions{Variant: VariantNFT, Families: []Family{IPv4}, Masquerade: true, FullSyncPeriod: time.Hour}, x, nil)
			snap := syntheticSnapshot(n, 10)
			if err := p.Sync(ctx, snap); err != nil {
				b.Fatal(err)
			}
			var times []time.Duration
			round := 0
			for b.Loop() {
				round++
				snap = benchChange(snap, round%n, round)
				start := time.Now()
				if err := p.Sync(ctx, snap); err != nil {
					b.Fatal(err)
				}
				times = append(times, time.Since(start))
			}
			slices.Sort(times)
			pct := func(q float64) float64 {
				return float64(times[min(len(times)-1, int(q*float64(len(times))))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.5), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
		})
	}
}
