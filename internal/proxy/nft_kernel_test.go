package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

var nftNetnsSeq atomic.Int32

// nftNetns creates a network namespace that the test removes when it ends,
// and returns its name. Every nft command of these tests runs inside it.
func nftNetns(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: requires root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a private network namespace")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed for the nftables kernel tests: %v", tool, err)
		}
	}
	name := fmt.Sprintf("banft-%d-%d", os.Getpid(), nftNetnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("create netns %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	inNetns(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// inNetns runs a command inside the namespace.
func inNetns(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// netnsNFT is the real runner, pointed into the namespace.
func netnsNFT(ns string) *execNFT {
	return &execNFT{argv: []string{"ip", "netns", "exec", ns, "nft"}}
}

// recordingRunner remembers the scripts it ran.
type recordingRunner struct {
	nftRunner
	scripts [][]byte
}

func (r *recordingRunner) Run(ctx context.Context, script []byte) error {
	r.scripts = append(r.scripts, script)
	return r.nftRunner.Run(ctx, script)
}

// listSkeleton lists with the wrapped runner, which must be an nftLister.
func (r *recordingRunner) listSkeleton(ctx context.Context) ([]byte, error) {
	return r.nftRunner.(nftLister).listSkeleton(ctx)
}

// newKernelNFTables returns a backend writing into a fresh test namespace
// through a recordingRunner, with a controlled clock; no conntrack cleaner,
// which would act on this process's namespace.
func newKernelNFTables(t *testing.T, o NFTablesOptions) (p *NFTables, ns string, x *execNFT, rec *recordingRunner, clock *time.Time) {
	t.Helper()
	ns = nftNetns(t)
	x = netnsNFT(ns)
	ok, reason := nftSupported(context.Background(), x)
	if !ok {
		t.Fatalf("nftables not supported: %s", reason)
	}
	t.Logf("probe passed: %s", reason)
	rec = &recordingRunner{nftRunner: x}
	p = newNFTables(o, rec, nil)
	clock = new(time.Time)
	*clock = time.Unix(1000, 0)
	p.now = func() time.Time { return *clock }
	return p, ns, x, rec, clock
}

func TestNFTablesKernel(t *testing.T) {
	ctx := context.Background()
	p, ns, x, rec, clockp := newKernelNFTables(t, NFTablesOptions{Masquerade: true, FullSyncPeriod: time.Hour})
	clock := *clockp
	p.now = func() time.Time { return clock }
	list := func(fam string) string { return inNetns(t, ns, "nft", "list", "table", fam, NFTablesTable) }

	// Full load of both families.
	snap := snapshot(testServices()...)
	if err := p.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	// nft 0.9.8 lists protocols by number ("172.30.0.80 . 6 . 80").
	for _, want := range []string{`172\.30\.0\.10 \. 80 : 10\.244\.3\.9 \. 8080`, "goto affinity-2-2-10800-tcp", `172\.30\.0\.80 \. (tcp|6) \. 80 comment "ns3/empty:http"`} {
		if !regexp.MustCompile(want).MatchString(list("ip")) {
			t.Errorf("ip table lacks %q:\n%s", want, list("ip"))
		}
	}
	if !strings.Contains(list("ip6"), "fd00:30::40 . 80 : fd00:244:1::40 . 8080") {
		t.Errorf("ip6 table lacks the dual-stack endpoint:\n%s", list("ip6"))
	}

	// Incremental: one endpoint of one Service changes; only its elements
	// are sent.
	svcs := testServices()
	svcs[0].Ports[1] = svcPort("https", 443, "TCP", ready("10.244.1.5", 8443), ready("10.244.1.6", 8443))
	snap2 := snapshot(svcs...)
	snap2.Version = 2
	n := len(rec.scripts)
	if err := p.Sync(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	if got := len(rec.scripts) - n; got != 1 {
		t.Fatalf("incremental sync ran %d transactions, want 1 (IPv6 unchanged)", got)
	}
	want := dedent(`
		delete element ip bridge-agent service-ips { 172.30.0.10 . tcp . 443 }
		add element ip bridge-agent service-ips { 172.30.0.10 . tcp . 443 comment "ns1/web:https" : goto pick-2-tcp }
		add element ip bridge-agent hairpin { 10.244.1.6 . 10.244.1.6 }
		add element ip bridge-agent endpoints-1-tcp { 172.30.0.10 . 443 : 10.244.1.6 . 8443 }
		`)
	if got := string(rec.scripts[len(rec.scripts)-1]); got != want {
		t.Errorf("incremental transaction:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(list("ip"), "172.30.0.10 . 443 : 10.244.1.6 . 8443") {
		t.Errorf("incremental change not in the kernel:\n%s", list("ip"))
	}

	// Someone deletes an element: the periodic full resync puts it back.
	inNetns(t, ns, "nft", "delete", "element", "ip", NFTablesTable, "endpoints-1-tcp", "{ 172.30.0.10 . 80 }")
	clock = clock.Add(2 * time.Hour)
	if err := p.Sync(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list("ip"), "172.30.0.10 . 80 : 10.244.2.7 . 8081") {
		t.Errorf("deleted element not repaired:\n%s", list("ip"))
	}
	// Someone flushes the whole table: repaired too.
	inNetns(t, ns, "nft", "flush", "table", "ip6", NFTablesTable)
	clock = clock.Add(2 * time.Hour)
	if err := p.Sync(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	if got := list("ip6"); !strings.Contains(got, "jump services") || !strings.Contains(got, "fd00:30::40 . 80 : fd00:244:1::40 . 8080") {
		t.Errorf("flushed table not repaired:\n%s", got)
	}
	// Someone deletes the table: the incremental sync fails, the next one
	// recreates it.
	inNetns(t, ns, "nft", "delete", "table", "ip", NFTablesTable)
	snap3 := snapshot(testServices()...)
	snap3.Version = 3
	if err := p.Sync(ctx, snap3); err == nil {
		t.Errorf("sync into a deleted table succeeded")
	}
	if err := p.Sync(ctx, snap3); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list("ip"), "172.30.0.10 . 80 : 10.244.3.9 . 8080") {
		t.Errorf("table not recreated:\n%s", list("ip"))
	}

	t.Run("connect", func(t *testing.T) { testNFTConnect(t, ns) })

	if err := cleanupNFTables(ctx, x); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(inNetns(t, ns, "nft", "list", "tables")); got != "" {
		t.Errorf("tables left after cleanup: %s", got)
	}
	if err := cleanupNFTables(ctx, x); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

// testNFTConnect opens a real TCP connection to a cluster IP inside the
// namespace: 172.30.0.10:443 is DNATed to the listener at 10.244.1.5:8443,
// an address of a veth interface there.
func testNFTConnect(t *testing.T, ns string) {
	inNetns(t, ns, "ip", "link", "add", "pods", "type", "veth", "peer", "name", "podsp")
	inNetns(t, ns, "ip", "link", "set", "podsp", "up")
	inNetns(t, ns, "ip", "link", "set", "pods", "up")
	inNetns(t, ns, "ip", "addr", "add", "10.244.1.5/32", "dev", "pods")
	inNetns(t, ns, "ip", "route", "add", "172.30.0.0/16", "dev", "pods")

	errc := make(chan error, 1)
	go func() {
		// The goroutine's thread enters the namespace and dies with it.
		runtime.LockOSThread()
		errc <- func() error {
			h, err := netns.GetFromName(ns)
			if err != nil {
				return err
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", "10.244.1.5:8443")
			if err != nil {
				return err
			}
			defer ln.Close()
			go func() {
				if c, err := ln.Accept(); err == nil {
					c.Write([]byte("endpoint\n"))
					c.Close()
				}
			}()
			c, err := net.DialTimeout("tcp", "172.30.0.10:443", 5*time.Second)
			if err != nil {
				return fmt.Errorf("connect to the cluster IP: %w", err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			m, err := c.Read(buf)
			if err != nil || string(buf[:m]) != "endpoint\n" {
				return fmt.Errorf("read %q: %v", buf[:m], err)
			}
			// No endpoints: refused by the reject rule, not timed out.
			_, err = net.DialTimeout("tcp", "172.30.0.80:80", 5*time.Second)
			if err == nil || !strings.Contains(err.Error(), "refused") {
				return fmt.Errorf("connect to a Service without endpoints: %v, want connection refused", err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// BenchmarkNFTablesApply measures the real transactions in a namespace, at
// several sizes (Services × 10 endpoints), with the peak resident memory of
// the nft process:
//
//   - full: the first sync into a namespace without the table;
//   - restart: the first sync of a new backend while the table is there,
//     full, as after an agent restart;
//   - refill: the periodic full rewrite (flush and refill in place);
//   - one-change: one endpoint of one Service changes, synced incrementally;
//     reports the median and 99th percentile over at least 200 syncs.
func BenchmarkNFTablesApply(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{1000, 10000, 50000} {
		snap := syntheticSnapshot(n, 10)
		opts := NFTablesOptions{Families: []Family{IPv4}, Masquerade: true, FullSyncPeriod: time.Hour}
		b.Run(fmt.Sprintf("full/services=%d/endpoints=10", n), func(b *testing.B) {
			ns := nftNetns(b)
			x := netnsNFT(ns)
			var lat []time.Duration
			for b.Loop() {
				b.StopTimer()
				if err := cleanupNFTables(ctx, x); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				if err := newNFTables(opts, x, nil).Sync(ctx, snap); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat, x)
		})
		b.Run(fmt.Sprintf("restart/services=%d/endpoints=10", n), func(b *testing.B) {
			ns := nftNetns(b)
			x := netnsNFT(ns)
			if err := newNFTables(opts, x, nil).Sync(ctx, snap); err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if err := newNFTables(opts, x, nil).Sync(ctx, snap); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat, x)
		})
		b.Run(fmt.Sprintf("refill/services=%d/endpoints=10", n), func(b *testing.B) {
			ns := nftNetns(b)
			x := netnsNFT(ns)
			p := newNFTables(opts, x, nil)
			clock := time.Unix(1000, 0)
			p.now = func() time.Time { return clock }
			if err := p.Sync(ctx, snap); err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				clock = clock.Add(2 * time.Hour)
				start := time.Now()
				if err := p.Sync(ctx, snap); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat, x)
		})
		b.Run(fmt.Sprintf("one-change/services=%d/endpoints=10", n), func(b *testing.B) {
			ns := nftNetns(b)
			x := netnsNFT(ns)
			p := newNFTables(opts, x, nil)
			if err := p.Sync(ctx, snap); err != nil {
				b.Fatal(err)
			}
			cur := snap
			var lat []time.Duration
			for range max(b.N, 200) {
				cur = changeOne(cur, int(cur.Version)%n)
				start := time.Now()
				if err := p.Sync(ctx, cur); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat, x)
		})
	}
}

// reportLatency reports the median and 99th percentile of lat and the peak
// resident memory of x's last nft process.
func reportLatency(b *testing.B, lat []time.Duration, x *execNFT) {
	b.Helper()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
	b.ReportMetric(float64(x.lastPeakRSS())/(1<<20), "nft-rss-MiB")
}
