package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// dnsRun is one DNS server under dnsperf.
type dnsRun struct {
	Server string // "bridge-agent stub" or "CoreDNS"
	Error  string
	// Max is the unthrottled run (or the first rate with < 1% loss); Half
	// the run at half that rate, for latency.
	Max, Half dnsperfResult
	CPU       time.Duration // server CPU over both runs
	HWM       int64
	// IdleRSS is the server's peak resident set over an idle window of
	// one sync period (a periodic resync falls in it), LoadRSS its peak
	// over the dnsperf runs; both are VmHWM after a reset of the peak
	// (/proc/<pid>/clear_refs), so neither includes the start-up's.
	IdleRSS, LoadRSS int64
}

type dnsperfResult struct {
	Sent, Completed, Lost int
	QPS                   float64
	LossPct               float64
	AvgLatency            time.Duration
	P50, P99              time.Duration
	Samples               int
	Limit                 float64 // -Q, 0 for none
	Rcodes                map[string]int
}

// dnsOpts tune the DNS section.
type dnsOpts struct {
	duration    time.Duration
	outstanding int // dnsperf -q; below the stub's per-client in-flight limit (100)
}

// queryMix writes dnsperf input: the same mix for both servers (Service A,
// SRV, NXDOMAIN in the cluster zone, forwarded names), plus short names
// (<svc>.<ns>.svc) for the agent's stub, which answers them; CoreDNS gets
// the full name instead.
func queryMix(path string, services int, short bool, domain string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	rng := rand.New(rand.NewPCG(1, 2))
	n := min(services, 5000)
	for range 20000 {
		i := rng.IntN(max(n-1, 1))
		svc, ns := svcName(i), loadNS(i)
		switch r := rng.IntN(100); {
		case r < 40:
			fmt.Fprintf(w, "%s.%s.svc.%s A\n", svc, ns, domain)
		case r < 60:
			if short {
				fmt.Fprintf(w, "%s.%s.svc A\n", svc, ns)
			} else {
				fmt.Fprintf(w, "%s.%s.svc.%s A\n", svc, ns, domain)
			}
		case r < 75:
			fmt.Fprintf(w, "_http._tcp.%s.%s.svc.%s SRV\n", svc, ns, domain)
		case r < 90:
			fmt.Fprintf(w, "nx-%d.%s.svc.%s A\n", i, ns, domain)
		case r < 95:
			fmt.Fprintf(w, "%s A\n", strings.TrimSuffix(testbed.UpstreamTestName, "."))
		default:
			fmt.Fprintf(w, "fwd-%d.example.test A\n", rng.IntN(50))
		}
	}
	return w.Flush()
}

var (
	reSent      = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	reCompleted = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	reLost      = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	reQPS       = regexp.MustCompile(`Queries per second:\s+([\d.]+)`)
	reAvg       = regexp.MustCompile(`Average Latency \(s\):\s+([\d.]+)`)
	reRcode     = regexp.MustCompile(`Response codes:\s+(.*)`)
)

// dnsperf runs dnsperf pinned to CPU 1 in netns against server; verbose
// (-v) gives each response's latency.
func (b *bench) dnsperf(ctx context.Context, netns, server, file string, limit float64, verbose bool) (dnsperfResult, error) {
	res := dnsperfResult{Limit: limit, Rcodes: map[string]int{}}
	host, port, _ := strings.Cut(server, ":")
	argv := []string{"taskset", "-c", "1", "dnsperf", "-s", host, "-p", port, "-d", file,
		"-l", strconv.Itoa(int(b.dnsOpts.duration.Seconds())), "-q", strconv.Itoa(b.dnsOpts.outstanding),
		"-c", "4", "-T", "1", "-t", "2"}
	if verbose {
		// Each response with its latency; costs dnsperf time, so only
		// for the latency run.
		argv = append(argv, "-v")
	}
	if limit > 0 {
		argv = append(argv, "-Q", strconv.Itoa(int(limit)))
	}
	out, err := b.env.tb.Exec(ctx, netns, argv...)
	if err != nil {
		return res, fmt.Errorf("dnsperf: %w", err)
	}
	var lat []time.Duration
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var summary strings.Builder
	for sc.Scan() {
		l := sc.Text()
		// -v: "> NOERROR name A 0.000123" per response.
		if strings.HasPrefix(l, "> ") {
			f := strings.Fields(l)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				lat = append(lat, time.Duration(v*float64(time.Second)))
			}
			continue
		}
		summary.WriteString(l + "\n")
	}
	s := summary.String()
	atoi := func(re *regexp.Regexp) int {
		if m := re.FindStringSubmatch(s); m != nil {
			v, _ := strconv.Atoi(m[1])
			return v
		}
		return 0
	}
	res.Sent, res.Completed, res.Lost = atoi(reSent), atoi(reCompleted), atoi(reLost)
	if m := reQPS.FindStringSubmatch(s); m != nil {
		res.QPS, _ = strconv.ParseFloat(m[1], 64)
	} else {
		return res, fmt.Errorf("dnsperf: no result in output:\n%s", lastN(s, 20))
	}
	if m := reAvg.FindStringSubmatch(s); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		res.AvgLatency = time.Duration(v * float64(time.Second))
	}
	if m := reRcode.FindStringSubmatch(s); m != nil {
		for _, part := range strings.Split(m[1], ",") {
			f := strings.Fields(strings.TrimSpace(part))
			if len(f) >= 2 {
				v, _ := strconv.Atoi(f[1])
				res.Rcodes[f[0]] = v
			}
		}
	}
	if res.Sent > 0 {
		res.LossPct = 100 * float64(res.Lost) / float64(res.Sent)
	}
	slices.Sort(lat)
	res.Samples = len(lat)
	res.P50, res.P99 = pct(lat, 0.5), pct(lat, 0.99)
	return res, nil
}

func lastN(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// dnsBench measures one server: unthrottled, then lower rates until loss
// is under 1%, then at half the rate found, for latency.
func (b *bench) dnsBench(ctx context.Context, r *dnsRun, netns, server, file string, pid int) {
	s0, _ := sampleProc(pid)
	r.IdleRSS = b.peakRSSOver(ctx, pid, b.env.syncEvery+2*time.Second)
	resetPeakRSS(pid)
	top, err := b.dnsperf(ctx, netns, server, file, 0, false)
	for tries := 0; err == nil && top.LossPct >= 1 && tries < 4; tries++ {
		b.log.Info("dnsperf: loss at this rate; lowering", "server", r.Server, "qps", int(top.QPS), "loss%", top.LossPct)
		top, err = b.dnsperf(ctx, netns, server, file, top.QPS*0.85, false)
	}
	if err != nil {
		r.Error = err.Error()
		return
	}
	r.Max = top
	half, err := b.dnsperf(ctx, netns, server, file, top.QPS/2, true)
	if err != nil {
		r.Error = err.Error()
		return
	}
	r.Half = half
	s1, _ := sampleProc(pid)
	r.CPU, r.LoadRSS = s1.CPU-s0.CPU, s1.HWM
	r.HWM = max(r.IdleRSS, r.LoadRSS, s0.HWM)
	b.log.Info("dnsperf", "server", r.Server, "qps", int(top.QPS), "loss%", top.LossPct, "p50@half", half.P50, "p99@half", half.P99,
		"idleRSS", fmib(r.IdleRSS), "loadRSS", fmib(r.LoadRSS))
}

// peakRSSOver returns pid's peak resident set over d from now: VmHWM,
// reset at the start.
func (b *bench) peakRSSOver(ctx context.Context, pid int, d time.Duration) int64 {
	resetPeakRSS(pid)
	sleepCtx(ctx, d)
	s, _ := sampleProc(pid)
	return s.HWM
}

// resetPeakRSS sets pid's VmHWM to its current resident set (writing 5 to
// /proc/<pid>/clear_refs, Linux 4.0), so that the next VmHWM read is the
// peak since now.
func resetPeakRSS(pid int) {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// corefile is NodeLocal DNSCache's kind of CoreDNS: the kubernetes plugin
// for the cluster zone, a cache, and forwarding for the rest.
const benchCorefile = `.:53 {
    bind %[4]s
    kubernetes %[1]s in-addr.arpa ip6.arpa {
        kubeconfig %[2]s
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    forward . %[3]s
}
`

// dnsSection runs dnsperf against the agent's stub (in the VM) and against
// CoreDNS (in its own host), one at a time, each server pinned to CPU 0
// and dnsperf to CPU 1.
func (b *bench) dnsSection(ctx context.Context) []*dnsRun {
	e := b.env
	dir, err := e.dir("dns")
	if err != nil {
		return []*dnsRun{{Server: "setup", Error: err.Error()}}
	}
	domain := e.tb.ClusterDomain
	agentFile, cdFile := filepath.Join(dir, "queries-agent.txt"), filepath.Join(dir, "queries-coredns.txt")
	if err := queryMix(agentFile, b.load.Count(), true, domain); err != nil {
		return []*dnsRun{{Server: "setup", Error: err.Error()}}
	}
	if err := queryMix(cdFile, b.load.Count(), false, domain); err != nil {
		return []*dnsRun{{Server: "setup", Error: err.Error()}}
	}
	var runs []*dnsRun

	// The agent, pinned, with the nftables backend as it normally runs.
	ar := &dnsRun{Server: "bridge-agent stub"}
	runs = append(runs, ar)
	spec, _ := peerByID("agent-nft")
	pr, err := e.startPeer(spec, "0")
	if err != nil {
		ar.Error = err.Error()
	} else {
		if _, err := pr.agent.WaitReady(ctx, b.opts.syncTimeout); err != nil {
			ar.Error = err.Error()
		} else {
			addr := pr.agent.Config.DNS.ListenAddress
			if err := waitDNS(ctx, e.tb, pr.netns, addr, svcName(0)+"."+loadNS(0)+".svc."+domain); err != nil {
				ar.Error = err.Error()
			} else {
				b.dnsBench(ctx, ar, pr.netns, addr, agentFile, pr.pid)
			}
		}
		pr.stop()
	}

	// CoreDNS, pinned, in the DNS host.
	cr := &dnsRun{Server: "CoreDNS (kubernetes + cache)"}
	runs = append(runs, cr)
	conf := filepath.Join(dir, "Corefile")
	bind := "127.0.0.1"
	data := fmt.Sprintf(benchCorefile, domain, e.tb.AdminKubeconfig, e.tb.UpstreamDNSIP, bind)
	if err := os.WriteFile(conf, []byte(data), 0o644); err != nil {
		cr.Error = err.Error()
		return runs
	}
	proc, err := e.tb.StartProcess("coredns-bench", e.dnsHost.Netns, "taskset", "-c", "0", filepath.Join(e.tb.BinDir, "coredns"), "-conf", conf)
	if err != nil {
		cr.Error = err.Error()
		return runs
	}
	defer proc.Stop(5 * time.Second)
	addr := bind + ":53"
	if err := waitDNS(ctx, e.tb, e.dnsHost.Netns, addr, svcName(0)+"."+loadNS(0)+".svc."+domain); err != nil {
		cr.Error = fmt.Sprintf("%v\n%s", err, proc.Log(20))
		return runs
	}
	b.dnsBench(ctx, cr, e.dnsHost.Netns, addr, cdFile, proc.PID())
	return runs
}

// waitDNS waits until server answers name with an address.
func waitDNS(ctx context.Context, tb *testbed.Testbed, netns, server, name string) error {
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		r, err := tb.DNSQuery(ctx, netns, server, name, dns.TypeA)
		if err == nil && len(testbed.Answers(r)) > 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
		}
		last = err
		sleepCtx(ctx, 200*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("dns server %s not answering: %w", server, last)
}
