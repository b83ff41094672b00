// Command bench measures bridge-agent side by side with its peers in the
// sandbox (internal/testbed), in one run, and writes a Markdown report with
// PNG plots: kube-proxy (iptables and nftables modes, built from the same
// Kubernetes release as the sandbox) in a second VM, and CoreDNS with the
// kubernetes and cache plugins (what NodeLocal DNSCache runs) in a third.
//
// Sections:
//
//	gobench   go test -bench of the renderers and the DNS zone (no sandbox)
//	proxy     per load size: time from load start to the kernel, a full
//	          sync from empty, idle CPU, single EndpointSlice changes and a
//	          burst of changes (event to rule in kernel), CPU, peak RSS, rules
//	datapath  per load size and peer: connects to a ClusterIP vs the pod IP
//	dns       dnsperf against the agent's stub and CoreDNS, server on CPU 0,
//	          dnsperf on CPU 1
//
// Timings never decide the exit status: it is non-zero only when the
// harness itself fails. `make bench` and `make bench-quick` run it through
// hack/bench.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// size is one load: Services with Eps endpoints each.
type size struct{ Services, Eps int }

func (s size) String() string { return fmt.Sprintf("%dx%d", s.Services, s.Eps) }

func parseSizes(s string) ([]size, error) {
	var out []size
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, e, ok := strings.Cut(f, "x")
		if !ok {
			e = "10"
		}
		sv, err1 := strconv.Atoi(n)
		ep, err2 := strconv.Atoi(e)
		if err1 != nil || err2 != nil || sv < 2 || ep < 1 || ep > maxEndpoints {
			return nil, fmt.Errorf("size %q: want SERVICES[xENDPOINTS], at least 2 Services, 1..%d endpoints", f, maxEndpoints)
		}
		out = append(out, size{sv, ep})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sizes")
	}
	return out, nil
}

// bench holds the run's sandbox, options and results.
type bench struct {
	log          *slog.Logger
	env          *env
	profile      bool
	load         *loader
	watch        map[string]*kernelWatch
	opts         proxyOpts
	dnsOpts      dnsOpts
	dp           *dpTarget
	connects     int
	baseServices int

	quick   bool
	started time.Time
	facts   facts
	gobench []goBench
	gbErr   string
	// gobenchPattern is the -bench pattern of the Go benchmarks.
	gobenchPattern string
	loads          []*loadRun
	runs           []*peerRun
	dns            []*dnsRun
	sizes          []size
	peers          []peerSpec
	secs           map[string]bool
	fleetOpts      fleetOpts
	fleet          *fleetRun
}

// loadRun is one load step, observed by the peers running meanwhile.
type loadRun struct {
	Size     size
	Objects  int
	Write    time.Duration
	ToKernel map[string]time.Duration // peer id -> from load start
	Err      string
}

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	os.Exit(code)
}

func run() (int, error) {
	quick := flag.Bool("quick", false, "small scale for CI: a minute or two; sets the defaults below to small values")
	sizesF := flag.String("sizes", "", "load sizes, SERVICES[xENDPOINTS] (default endpoints 10), in order (default 10,1000,1000x100,5000,10000; quick 10,200)")
	sectionsF := flag.String("sections", "gobench,proxy,datapath,dns,fleet", "sections to run")
	peersF := flag.String("peers", "agent-nft,agent-ipt,kp-ipt,kp-nft", "proxies to compare")
	changes := flag.Int("changes", 0, "sequential single EndpointSlice changes per peer and size (default 200; quick 20)")
	burst := flag.Int("burst", 0, "changes in the burst (default 200; quick 20)")
	rate := flag.Float64("rate", 200, "burst changes per second")
	connects := flag.Int("connects", 0, "connects per target and peer in the data path (default 2000; quick 100)")
	dnsDur := flag.Duration("dns-duration", 0, "length of each dnsperf run (default 20s; quick 5s)")
	idle := flag.Duration("idle", 0, "idle period for idle CPU (default: the sync period plus 2s, so one periodic sync falls in it; quick 3s)")
	budget := flag.Duration("change-budget", 0, "time limit of the sequential changes per peer (default 2m; quick 30s)")
	syncTimeout := flag.Duration("sync-timeout", 0, "time limit for a peer's full sync (default 5m; quick 2m)")
	minSync := flag.Duration("min-sync-period", 100*time.Millisecond, "minimum sync interval of every peer")
	syncEvery := flag.Duration("sync-period", 30*time.Second, "full resync period of every peer")
	out := flag.String("out", "bench/results", "directory of the report and plots")
	agentBin := flag.String("agent", "bin/bridge-agent", "bridge-agent binary")
	kpBin := flag.String("kube-proxy", "", "kube-proxy binary (default: kube-proxy in the sandbox's binary directory)")
	gobenchPattern := flag.String("gobench", "Render|Zone|ServeDNS", "go test -bench pattern for ./internal/proxy/ and ./internal/dnsstub/ (\".\" adds the kernel benchmarks, which take many minutes)")
	profile := flag.Bool("profile", false, "save the agent's heap profiles (after the full sync and at the end of each run) beside its log, in the work directory")
	workDir := flag.String("workdir", "", "keep the sandbox's files and the peers' logs here (default: a temporary directory)")
	fleetNodes := flag.Int("fleet-nodes", 0, "simulated Nodes with status heartbeats in the fleet section (default 200; quick 50)")
	fleetPhase := flag.Duration("fleet-phase", 0, "length of each measured phase of the fleet section (default 60s; quick 15s)")
	fleetBeat := flag.Duration("fleet-heartbeat", 10*time.Second, "each simulated Node's status heartbeat period")
	fleetSliceRate := flag.Float64("fleet-slice-rate", 5, "EndpointSlice changes per second in the fleet section")
	fleetHosts := flag.Int("fleet-hosts", 1000, "hosts the fleet section extrapolates to")
	fleetSim := flag.Int("fleet-sim", 0, "simulated agents (the agent's informers only) on one more host in the fleet section (default 1000; quick 100; -1: none)")
	flag.Parse()

	def := func(v *int, full, q int) {
		if *v == 0 {
			*v = full
			if *quick {
				*v = q
			}
		}
	}
	defD := func(v *time.Duration, full, q time.Duration) {
		if *v == 0 {
			*v = full
			if *quick {
				*v = q
			}
		}
	}
	def(changes, 200, 20)
	def(burst, 200, 20)
	def(connects, 2000, 100)
	def(fleetNodes, 200, 50)
	def(fleetSim, 1000, 100)
	defD(fleetPhase, time.Minute, 15*time.Second)
	defD(dnsDur, 20*time.Second, 5*time.Second)
	defD(idle, *syncEvery+2*time.Second, 3*time.Second)
	defD(budget, 2*time.Minute, 30*time.Second)
	defD(syncTimeout, 5*time.Minute, 2*time.Minute)
	if *sizesF == "" {
		*sizesF = "10,1000,1000x100,5000,10000"
		if *quick {
			*sizesF = "10,200"
		}
	}
	sizes, err := parseSizes(*sizesF)
	if err != nil {
		return 2, err
	}
	secs := map[string]bool{}
	for _, s := range strings.Split(*sectionsF, ",") {
		switch s = strings.TrimSpace(s); s {
		case "gobench", "proxy", "datapath", "dns", "fleet":
			secs[s] = true
		case "":
		default:
			return 2, fmt.Errorf("unknown section %q", s)
		}
	}
	var peers []peerSpec
	for _, id := range strings.Split(*peersF, ",") {
		p, ok := peerByID(strings.TrimSpace(id))
		if !ok {
			return 2, fmt.Errorf("unknown peer %q", id)
		}
		peers = append(peers, p)
	}
	sandboxed := secs["proxy"] || secs["datapath"] || secs["dns"] || secs["fleet"]
	if os.Geteuid() != 0 && sandboxed {
		return 1, fmt.Errorf("needs root: the sandbox is made of network namespaces")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b := &bench{
		log: log, quick: *quick, started: time.Now(), sizes: sizes, peers: peers, secs: secs, connects: *connects,
		opts:    proxyOpts{changes: *changes, burst: *burst, rate: *rate, phaseBudget: *budget, syncTimeout: *syncTimeout, idle: *idle},
		dnsOpts: dnsOpts{duration: *dnsDur, outstanding: 64},
		watch:   map[string]*kernelWatch{},
		fleetOpts: fleetOpts{nodes: *fleetNodes, beatEvery: *fleetBeat, phase: *fleetPhase,
			sliceRate: *fleetSliceRate, fleetHosts: *fleetHosts, sim: max(*fleetSim, 0)},
	}
	if !secs["proxy"] {
		b.opts.changes, b.opts.burst, b.opts.idle = 0, 0, 0
	}
	b.facts = gatherFacts(ctx)

	if secs["gobench"] {
		log.Info("go benchmarks")
		b.gobenchPattern = *gobenchPattern
		b.gobench, err = runGoBench(ctx, *gobenchPattern, *quick)
		if err != nil {
			b.gbErr = err.Error()
			log.Error("go benchmarks", "err", err)
		}
	}
	if sandboxed {
		b.profile = *profile
		if err := b.sandbox(ctx, *agentBin, *kpBin, *workDir, *minSync, *syncEvery); err != nil {
			if ctx.Err() != nil {
				return 1, ctx.Err()
			}
			return 1, err
		}
	}
	b.facts.LoadEnd = loadAvg()
	b.facts.Took = time.Since(b.started)
	path, err := b.writeReport(*out)
	if err != nil {
		return 1, err
	}
	fmt.Println(path)
	if b.fleet != nil {
		path, err := b.writeFleetReport(*out, b.fleet)
		if err != nil {
			return 1, err
		}
		fmt.Println(path)
	}
	return 0, nil
}

// sandbox starts the testbed and the peers' hosts, then runs the proxy,
// data path and DNS sections; a failing measurement is recorded in the
// report, a failing sandbox is an error.
func (b *bench) sandbox(ctx context.Context, agentBin, kpBin, workDir string, minSync, syncEvery time.Duration) error {
	var err error
	if agentBin, err = filepath.Abs(agentBin); err != nil {
		return err
	}
	if _, err := os.Stat(agentBin); err != nil {
		return fmt.Errorf("agent binary: %w (make build)", err)
	}
	tb, err := testbed.Start(ctx, testbed.Options{Nodes: 2, Log: b.log, WorkDir: workDir})
	if err != nil {
		return err
	}
	defer func() {
		for _, w := range b.watch {
			w.stop()
		}
		if err := tb.Stop(); err != nil {
			b.log.Error("stop sandbox", "err", err)
		}
	}()
	if kpBin == "" {
		kpBin = filepath.Join(tb.BinDir, "kube-proxy")
	}
	if _, err := os.Stat(kpBin); err != nil {
		return fmt.Errorf("kube-proxy binary: %w (hack/build-tools.sh kube-proxy)", err)
	}
	work := filepath.Join(tb.WorkDir, "bench")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	b.env = &env{tb: tb, agentBin: agentBin, kpBin: kpBin, work: work, minSync: minSync, syncEvery: syncEvery, profile: b.profile}
	if b.env.kpHost, err = tb.AddHost(ctx, "kp", testbed.HostOptions{PodRoutes: true, ServiceRoutes: true}); err != nil {
		return err
	}
	if err := tb.RegisterHostNode(ctx, b.env.kpHost); err != nil {
		return err
	}
	if b.env.dnsHost, err = tb.AddHost(ctx, "dns", testbed.HostOptions{}); err != nil {
		return err
	}
	if err := tb.AddServiceRoutes(ctx, tb.VMNetns); err != nil {
		return err
	}
	for _, ns := range []string{tb.VMNetns, b.env.kpHost.Netns} {
		w, err := startWatch(tb, ns, b.log)
		if err != nil {
			return err
		}
		b.watch[ns] = w
	}
	cfg := *tb.AdminConfig
	cfg.QPS, cfg.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		return err
	}
	b.load = newLoader(client, 16)
	if b.secs["datapath"] {
		if b.dp, err = setupDatapath(ctx, tb); err != nil {
			return err
		}
	}
	svcs, err := tb.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	b.baseServices = len(svcs.Items)

	if b.secs["proxy"] || b.secs["datapath"] {
		for _, sz := range b.sizes {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.loadStep(ctx, sz)
			if b.load.Count() != sz.Services || b.load.Endpoints() != sz.Services*sz.Eps {
				b.log.Error("load not in place; skipping this size", "size", sz.String(), "loaded", b.load.Count())
				continue
			}
			for _, p := range b.peers {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.runs = append(b.runs, b.runPeer(ctx, p, sz, b.secs["datapath"]))
			}
		}
	} else if b.secs["dns"] {
		last := b.sizes[len(b.sizes)-1]
		if _, err := b.load.Ensure(ctx, last.Services, last.Eps); err != nil {
			return err
		}
	}
	if b.secs["dns"] && ctx.Err() == nil {
		b.log.Info("dns section", "services", b.load.Count())
		b.dns = b.dnsSection(ctx)
	}
	if b.secs["fleet"] && ctx.Err() == nil {
		b.log.Info("fleet section", "nodes", b.fleetOpts.nodes)
		b.fleet = b.fleetSection(ctx, b.fleetOpts)
	}
	return ctx.Err()
}

// loadStep brings the load to sz while the default-backend peers (agent
// nftables, kube-proxy iptables) run, and records when each had it all in
// the kernel.
func (b *bench) loadStep(ctx context.Context, sz size) {
	lr := &loadRun{Size: sz, ToKernel: map[string]time.Duration{}}
	b.loads = append(b.loads, lr)
	log := b.log.With("size", sz.String())
	type watching struct {
		p  *peer
		ch <-chan time.Time
	}
	var ws []watching
	defer func() {
		for _, w := range ws {
			w.p.stop()
		}
	}()
	sentinel := endpointAddr(sz.Services-1, sz.Eps-1)
	for _, id := range []string{"agent-nft", "kp-ipt"} {
		spec, ok := peerByID(id)
		if !ok || !slices.ContainsFunc(b.peers, func(p peerSpec) bool { return p.ID == id }) {
			continue
		}
		ns := b.env.netnsOf(spec)
		if err := b.env.flushRules(ctx, ns); err != nil {
			lr.Err = err.Error()
			return
		}
		// Start and let it program what is loaded already; a peer that
		// cannot within a minute sits this load out.
		var ch0 <-chan time.Time
		cur := b.load.Sentinel()
		if cur.IsValid() {
			ch0 = b.watch[ns].Expect(cur)
		}
		p, err := b.env.startPeer(spec, "")
		if err != nil {
			lr.Err = err.Error()
			return
		}
		if ch0 != nil {
			if _, ok, _ := b.waitSeen(ctx, p, b.watch[ns], ns, cur, ch0, min(b.opts.syncTimeout, time.Minute)); !ok {
				lr.Err = fmt.Sprintf("%s could not program the previous load (%d Services) within a minute, so it sat this load out", id, b.load.Count())
				p.stop()
				continue
			}
		} else {
			sleepCtx(ctx, 3*time.Second)
		}
		ws = append(ws, watching{p: p})
	}
	for i := range ws {
		ws[i].ch = b.watch[ws[i].p.netns].Expect(sentinel)
	}
	log.Info("loading", "peers", len(ws))
	start := time.Now()
	n, err := b.load.Ensure(ctx, sz.Services, sz.Eps)
	lr.Objects, lr.Write = n, time.Since(start)
	if err != nil {
		lr.Err = err.Error()
		return
	}
	log.Info("loaded", "objects", n, "took", lr.Write.Round(time.Millisecond))
	for _, w := range ws {
		t, ok, _ := b.waitSeen(ctx, w.p, b.watch[w.p.netns], w.p.netns, sentinel, w.ch, b.opts.syncTimeout)
		if ok {
			lr.ToKernel[w.p.spec.ID] = t.Sub(start)
			log.Info("load in the kernel", "peer", w.p.spec.ID, "fromLoadStart", t.Sub(start).Round(time.Millisecond))
		}
	}
}
