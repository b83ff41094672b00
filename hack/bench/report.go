package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

var nan = math.NaN()

// Formatting helpers: "—" for what was not measured.
func fd(d time.Duration) string {
	switch {
	case d <= 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
}

func fsec(s float64) string {
	if math.IsNaN(s) || s <= 0 {
		return "—"
	}
	return fd(time.Duration(s * float64(time.Second)))
}

// fbound formats a histogram bucket bound: "≤ x".
func fbound(s float64) string {
	switch {
	case math.IsNaN(s) || s <= 0:
		return "—"
	case math.IsInf(s, 1):
		return "> last bucket"
	}
	return "≤ " + fsec(s)
}

func fmib(b int64) string {
	if b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// ratio is peer / agent for costs (how many times better the agent is);
// the caller says which way round.
func ratio(a, b float64) string {
	if a <= 0 || b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", b/a)
}

func rd(a, b time.Duration) string { return ratio(float64(a), float64(b)) }

// targetRow is one of the targets.
type targetRow struct {
	What, Goal, Got, Verdict string
}

func verdict(ok bool, margin string) string {
	if ok {
		return "met (" + margin + ")"
	}
	return "not met (" + margin + ")"
}

// find returns the run of peer id at size sz, or nil.
func (b *bench) find(id string, sz size) *peerRun {
	for _, r := range b.runs {
		if r.Peer.ID == id && r.Size == sz {
			return r
		}
	}
	return nil
}

// largest returns the largest size with eps endpoints that was run.
func (b *bench) largest(eps int) (size, bool) {
	var best size
	ok := false
	for _, s := range b.sizes {
		if s.Eps == eps && s.Services > best.Services {
			best, ok = s, true
		}
	}
	return best, ok
}

func (b *bench) sizeNear(n, eps int) (size, bool) {
	var best size
	ok := false
	for _, s := range b.sizes {
		if s.Eps != eps {
			continue
		}
		if !ok || absInt(s.Services-n) < absInt(best.Services-n) {
			best, ok = s, true
		}
	}
	return best, ok
}

func absInt(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func (b *bench) targets() []targetRow {
	var rows []targetRow
	big, ok := b.largest(10)
	if !ok {
		return nil
	}
	note := ""
	if big.Services != 10000 {
		note = fmt.Sprintf(" (measured at %d Services, not 10k)", big.Services)
	}
	an := b.find("agent-nft", big)
	if an != nil && an.Complete {
		d := an.SyncToKernel
		rows = append(rows, targetRow{"full sync 10k×10, informer sync → kernel, nftables" + note, "≤ 2 s (stretch 1 s)", fd(d),
			verdict(d <= 2*time.Second, fmt.Sprintf("%.2f× the 2 s budget; stretch %s", d.Seconds()/2, map[bool]string{true: "met", false: "not met"}[d <= time.Second]))})
		p99 := pct(an.Single.Samples, 0.99)
		rows = append(rows, targetRow{"one EndpointSlice change, p99 to kernel" + note, "≤ 50 ms", fd(p99),
			verdict(p99 > 0 && p99 <= 50*time.Millisecond, fmt.Sprintf("%.2f× the budget", p99.Seconds()/0.05))})
		if small, ok := b.sizeNear(1000, 10); ok && small != big {
			if as := b.find("agent-nft", small); as != nil && as.Complete {
				p99s := pct(as.Single.Samples, 0.99)
				if p99s > 0 && p99 > 0 {
					f := p99.Seconds() / p99s.Seconds()
					rows = append(rows, targetRow{fmt.Sprintf("change p99 at %d vs at %d Services", big.Services, small.Services), "≤ 1.5×", fmt.Sprintf("%.2f×", f),
						verdict(f <= 1.5, fmt.Sprintf("%s vs %s", fd(p99), fd(p99s)))})
				}
			}
		}
		bp50, bp99 := pct(an.Burst.Samples, 0.5), pct(an.Burst.Samples, 0.99)
		rows = append(rows, targetRow{fmt.Sprintf("event → kernel at %.0f changes/s, p50 / p99", an.BurstRate) + note, "≤ 100 ms / ≤ 500 ms", fd(bp50) + " / " + fd(bp99),
			verdict(bp50 > 0 && bp50 <= 100*time.Millisecond && bp99 <= 500*time.Millisecond && an.Burst.Timeouts == 0,
				fmt.Sprintf("p50 %.2f×, p99 %.2f× the budget; %d not seen", bp50.Seconds()/0.1, bp99.Seconds()/0.5, an.Burst.Timeouts))})
		rows = append(rows, targetRow{"peak RSS at 10k×10" + note, "≤ 100 MiB (stretch 64 MiB)", fmib(an.HWM),
			verdict(an.HWM > 0 && an.HWM <= 100<<20, fmt.Sprintf("%.0f%% of 100 MiB; stretch %s", 100*float64(an.HWM)/(100<<20), map[bool]string{true: "met", false: "not met"}[an.HWM <= 64<<20]))})
		rows = append(rows, targetRow{"idle CPU" + note, "< 1% of a core", fmt.Sprintf("%.2f%%", 100*an.IdleCPU),
			verdict(an.IdleCPU < 0.01, fmt.Sprintf("over %s, periodic resyncs included", fd(an.IdleFor)))})
	}
	if len(b.dns) == 2 && b.dns[0].Error == "" && b.dns[1].Error == "" {
		a, c := b.dns[0], b.dns[1]
		f := a.Max.QPS / c.Max.QPS
		rows = append(rows, targetRow{"DNS QPS vs CoreDNS, same run", "≥ 2×", fmt.Sprintf("%.2f×", f), verdict(f >= 2, fmt.Sprintf("%.0f vs %.0f QPS", a.Max.QPS, c.Max.QPS))})
		rows = append(rows, targetRow{"DNS QPS, dnsperf on the other core", "≥ 80k", fmt.Sprintf("%.0f", a.Max.QPS), verdict(a.Max.QPS >= 80000, fmt.Sprintf("%.2f× the goal, %.2f%% lost", a.Max.QPS/80000, a.Max.LossPct))})
		rows = append(rows, targetRow{"DNS p99 at half that load", "≤ 1 ms", fd(a.Half.P99), verdict(a.Half.P99 > 0 && a.Half.P99 <= time.Millisecond, fmt.Sprintf("at %.0f QPS", a.Half.Limit))})
	}
	if len(b.dns) > 0 && b.dns[0].Error == "" && b.dns[0].IdleRSS > 0 {
		a := b.dns[0]
		g := a.LoadRSS - a.IdleRSS
		rows = append(rows, targetRow{"stub RSS under dnsperf vs idle", "≤ idle + 32 MiB", fmib(a.LoadRSS),
			verdict(a.LoadRSS > 0 && g <= 32<<20, fmt.Sprintf("idle %s, %+.1f MiB", fmib(a.IdleRSS), float64(g)/(1<<20)))})
	}
	// Data path on nftables: flat in the number of Services; small overhead.
	var first, last *peerRun
	for _, s := range b.sizes {
		if r := b.find("agent-nft", s); r != nil && r.Datapath != nil && r.Datapath.ClusterIP.P99 > 0 {
			if first == nil || s.Services < first.Size.Services {
				first = r
			}
			if last == nil || s.Services > last.Size.Services {
				last = r
			}
		}
	}
	if first != nil && last != nil && first != last {
		d := last.Datapath.ClusterIP.P99 - first.Datapath.ClusterIP.P99
		rows = append(rows, targetRow{fmt.Sprintf("connect p99 at %d vs %d Services (nftables)", last.Datapath.Services, first.Datapath.Services), "within a few µs",
			fmt.Sprintf("%+.1f µs", float64(d)/1e3), verdict(d <= 5*time.Microsecond, fmt.Sprintf("%s vs %s; goal read as ≤ 5 µs", fd(last.Datapath.ClusterIP.P99), fd(first.Datapath.ClusterIP.P99)))})
	}
	if last != nil {
		dp := last.Datapath
		o := float64(dp.ClusterIP.P50)/float64(dp.Direct.P50) - 1
		rows = append(rows, targetRow{fmt.Sprintf("ClusterIP connect overhead vs pod IP, p50, %d Services (nftables)", dp.Services), "< 10%",
			fmt.Sprintf("%+.1f%%", 100*o), verdict(o < 0.10, fmt.Sprintf("%s vs %s", fd(dp.ClusterIP.P50), fd(dp.Direct.P50)))})
	}
	return rows
}

func (b *bench) writeReport(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	name := b.started.Format("2006-01-02")
	if b.quick {
		name += "-quick"
	}
	plots := b.writePlots(dir, name)
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	kind := "full"
	if b.quick {
		kind = "quick (CI scale: timings are not judged)"
	}
	p("# bridge-agent benchmarks, %s\n\n", b.started.Format("2006-01-02 15:04 MST"))
	p("Run: %s; took %s. Every figure comes from this one run, beside its peer's; ratios are peer ÷ bridge-agent for costs (above 1× means bridge-agent is cheaper or faster). Latencies are medians (p50) and p99 over many samples: this machine is shared and noisy.\n\n", kind, b.facts.Took.Round(time.Second))
	f := b.facts
	p("## Machine\n\n| | |\n|---|---|\n")
	p("| CPU | %s × %d |\n| kernel | %s |\n| load average (start → end) | %s → %s |\n", f.CPU, f.CPUs, f.Kernel, f.LoadStart, f.LoadEnd)
	p("| nft | %s |\n| iptables | %s |\n| dnsperf | %s |\n| Go | %s |\n| bridge-agent | %s |\n| kube-proxy, kube-apiserver | %s |\n| CoreDNS | %s |\n\n", f.Nft, f.IPTables, f.Dnsperf, f.Go, f.Agent, f.Kubernetes, f.CoreDNS)
	p("Sandbox: etcd, kube-apiserver, kube-controller-manager and CoreDNS in network namespaces on this machine (internal/testbed). bridge-agent runs in the VM namespace; kube-proxy in a second VM namespace with its own Node object; CoreDNS as a DNS cache in a third. Every peer uses minSyncPeriod %s and syncPeriod %s. Load: Services without selectors and EndpointSlices written by the bench (labelled managed by %s), over %d namespaces; %d other Services exist (kubernetes, kube-dns, the data-path target).\n\n",
		b.envMinSync(), b.envSyncEvery(), managedBy, loadNamespaces, b.baseServices)

	if rows := b.targets(); len(rows) > 0 {
		p("## Targets\n\n| target | goal | measured | verdict |\n|---|---|---|---|\n")
		for _, r := range rows {
			p("| %s | %s | %s | %s |\n", r.What, r.Goal, r.Got, r.Verdict)
		}
		p("\n")
	}

	if len(b.loads) > 0 {
		p("## Load: from the start of writing the objects to all rules in the kernel\n\n")
		p("bridge-agent (nftables) and kube-proxy (iptables) run together while the bench writes the objects, so both see the same load on the same 2 cores.\n\n")
		p("| size | objects written | write time | bridge-agent nftables | kube-proxy iptables | ratio |\n|---|---|---|---|---|---|\n")
		var notes []string
		for _, l := range b.loads {
			a, k := l.ToKernel["agent-nft"], l.ToKernel["kp-ipt"]
			p("| %s | %d | %s | %s | %s | %s |\n", l.Size, l.Objects, fd(l.Write), fd(a), fd(k), rd(a, k))
			if l.Err != "" {
				notes = append(notes, fmt.Sprintf("> load %s: %s\n", l.Size, oneLine(l.Err)))
			}
		}
		p("\n")
		// Below the table: a line between rows would end it.
		for _, n := range notes {
			p("%s>\n", n)
		}
		if len(notes) > 0 {
			p("\n")
		}
	}

	if len(b.runs) > 0 && b.secs["proxy"] {
		p("## Control plane: full sync, changes, resources\n\n")
		p("Each peer alone, against the loaded cluster, starting from an empty ruleset. *Sync → kernel*: from the peer's log saying its informers synced to the last endpoint's rule in the kernel (seen in the nf_tables netlink notifications of its namespace, what `nft monitor` reads). *Single change*: one EndpointSlice update (fresh address, trigger-time annotation) to that address in the kernel, one at a time. *Burst*: changes at the given rate to different Services. The peers' own programming-latency histograms (`bridge_agent_network_programming_duration_seconds`, `kubeproxy_network_programming_duration_seconds`) are shown as a second source, as the bound of the bucket holding the p99 (kube-proxy's buckets are 250 ms, 500 ms, 1 s, 2 s, ...). CPU includes waited-for children (nft, iptables-restore).\n\n")
		for _, sz := range b.sizes {
			p("### %s (%d Services × %d endpoints)\n\n", sz, sz.Services, sz.Eps)
			p("| peer | start → kernel | sync → kernel | own sync metric | CPU to programmed | idle CPU | peak RSS | rules / elements | single p50 | single p99 | single p99 (metric) | burst p50 | burst p99 | burst p99 (metric) | lost |\n")
			p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
			for _, r := range b.runs {
				if r.Size != sz {
					continue
				}
				if r.Error != "" && !r.Complete {
					p("| %s | failed: %s |||||||||||||| |\n", r.Peer.Label, oneLine(r.Error))
					continue
				}
				rss := fmib(r.HWM)
				if r.NFTPeakRSS > 0 {
					rss += " (nft " + fmib(r.NFTPeakRSS) + ")"
				}
				rules := fmt.Sprintf("%d / %d", r.Rules.Rules, r.Rules.Elements)
				dump := ""
				if r.ViaDump {
					dump = " (dump)"
				}
				p("| %s | %s | %s%s | %s (n=%.0f) | %s | %.2f%% | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n",
					r.Peer.Label, fd(r.StartToKernel), fd(r.SyncToKernel), dump, fsec(r.OwnSync), r.OwnSyncCount, fd(r.SyncCPU), 100*r.IdleCPU, rss, rules,
					fd(pct(r.Single.Samples, .5)), fd(pct(r.Single.Samples, .99)), fbound(r.Single.MetricP99),
					fd(pct(r.Burst.Samples, .5)), fd(pct(r.Burst.Samples, .99)), fbound(r.Burst.MetricP99), r.Single.Timeouts+r.Burst.Timeouts)
			}
			p("\n")
			p("Ratios (kube-proxy ÷ bridge-agent, same backend):\n\n| backend | sync → kernel | CPU to programmed | idle CPU | peak RSS | single p99 | burst p99 |\n|---|---|---|---|---|---|---|\n")
			for _, id := range []string{"agent-nft", "agent-ipt"} {
				a, k := b.find(id, sz), b.find(rival(id), sz)
				if a == nil || k == nil {
					continue
				}
				p("| %s | %s | %s | %s | %s | %s | %s |\n", a.Peer.Mode, rd(a.SyncToKernel, k.SyncToKernel), rd(a.SyncCPU, k.SyncCPU), ratio(a.IdleCPU, k.IdleCPU),
					ratio(float64(a.HWM), float64(k.HWM)), rd(pct(a.Single.Samples, .99), pct(k.Single.Samples, .99)), rd(pct(a.Burst.Samples, .99), pct(k.Burst.Samples, .99)))
			}
			p("\n")
			for _, r := range b.runs {
				if r.Size == sz && r.Error != "" && r.Complete {
					p("> %s: %s\n\n", r.Peer.Label, oneLine(r.Error))
				}
			}
		}
	}

	if b.secs["datapath"] && len(b.runs) > 0 {
		p("## Data path: connects to a ClusterIP vs straight to the pod IP\n\n")
		p("From each peer's namespace to one pod behind a one-endpoint Service: %d connects to each, alternating, one at a time (connect = TCP handshake time), then %d workers in parallel for connections per second. Overhead = ClusterIP ÷ pod IP − 1.\n\n", b.connects, dpWorkers)
		p("| Services | peer | ClusterIP p50 | ClusterIP p99 | pod IP p50 | pod IP p99 | overhead p50 | ClusterIP conn/s | pod IP conn/s | errors |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for _, sz := range b.sizes {
			for _, r := range b.runs {
				if r.Size != sz || r.Datapath == nil {
					continue
				}
				d := r.Datapath
				o := "—"
				if d.Direct.P50 > 0 {
					o = fmt.Sprintf("%+.1f%%", 100*(float64(d.ClusterIP.P50)/float64(d.Direct.P50)-1))
				}
				p("| %d | %s | %s | %s | %s | %s | %s | %.0f | %.0f | %d |\n", d.Services, r.Peer.Label, fd(d.ClusterIP.P50), fd(d.ClusterIP.P99), fd(d.Direct.P50), fd(d.Direct.P99), o,
					d.ClusterIP.PerSec, d.Direct.PerSec, d.ClusterIP.Errors+d.Direct.Errors)
			}
		}
		p("\n")
	}

	if len(b.dns) > 0 {
		p("## DNS: dnsperf against the agent's stub and CoreDNS\n\n")
		p("Each server alone, pinned to CPU 0 from its start; dnsperf (%d outstanding, 4 clients) pinned to CPU 1, over loopback in the server's namespace, %s per run, the same generated query mix from the loaded Services: 40%% Service A (FQDN), 20%% Service A by short name `<svc>.<ns>.svc` (the full name for CoreDNS, which does not answer short names), 15%% SRV, 15%% NXDOMAIN in the cluster zone, 10%% forwarded to the sandbox's upstream server (cached by both). *Max*: unthrottled, lowered until loss < 1%%; latency at half that rate. *RSS idle*: the server's peak resident set over one sync period before the load (a periodic resync falls in it); *RSS load*: its peak over the dnsperf runs; *peak RSS*: since its start, the first sync included.\n\n", b.dnsOpts.outstanding, b.dnsOpts.duration)
		p("| server | QPS (max) | lost | avg latency | QPS (half) | p50 @ half | p99 @ half | CPU | RSS idle | RSS load | peak RSS | rcodes |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, d := range b.dns {
			if d.Error != "" {
				p("| %s | failed: %s |||||||||| |\n", d.Server, oneLine(d.Error))
				continue
			}
			p("| %s | %.0f | %.2f%% | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", d.Server, d.Max.QPS, d.Max.LossPct, fd(d.Max.AvgLatency), d.Half.QPS, fd(d.Half.P50), fd(d.Half.P99), fd(d.CPU), fmib(d.IdleRSS), fmib(d.LoadRSS), fmib(d.HWM), rcodes(d.Max.Rcodes))
		}
		if len(b.dns) == 2 && b.dns[0].Error == "" && b.dns[1].Error == "" {
			a, c := b.dns[0], b.dns[1]
			p("| ratio (stub ÷ CoreDNS QPS; CoreDNS ÷ stub latency) | %.2f× | | | | %s | %s | | %s | %s | %s | |\n", a.Max.QPS/c.Max.QPS, rd(a.Half.P50, c.Half.P50), rd(a.Half.P99, c.Half.P99), ratio(float64(a.IdleRSS), float64(c.IdleRSS)), ratio(float64(a.LoadRSS), float64(c.LoadRSS)), ratio(float64(a.HWM), float64(c.HWM)))
		}
		p("\n")
	}

	if len(b.gobench) > 0 || b.gbErr != "" {
		p("## Go benchmarks (no sandbox)\n\n`go test -run '^$' -bench '%s' -benchmem ./internal/proxy/ ./internal/dnsstub/`\n\n", b.gobenchPattern)
		p("| package | benchmark | ns/op | B/op | allocs/op | other |\n|---|---|---|---|---|---|\n")
		for _, g := range b.gobench {
			p("| %s | %s | %.0f | %.0f | %.0f | %s |\n", g.Pkg, g.Name, g.NsOp, g.BOp, g.AllocsOp, g.Extra)
		}
		if b.gbErr != "" {
			p("\n> %s\n", oneLine(b.gbErr))
		}
		p("\n")
	}
	if len(plots) > 0 {
		p("## Plots\n\n")
		for _, pl := range plots {
			p("![%s](%s)\n\n", pl[0], pl[1])
		}
	}
	p("## How to reproduce\n\n`make bench` (this report's scale) or `make bench-quick` (CI scale); `go run ./hack/bench -h` lists the knobs (sizes, sections, peers, changes, rates, durations).\n")
	path := filepath.Join(dir, name+".md")
	return path, os.WriteFile(path, []byte(w.String()), 0o644)
}

func (b *bench) envMinSync() time.Duration {
	if b.env == nil {
		return 0
	}
	return b.env.minSync
}

func (b *bench) envSyncEvery() time.Duration {
	if b.env == nil {
		return 0
	}
	return b.env.syncEvery
}

func rcodes(m map[string]int) string {
	var parts []string
	for _, k := range []string{"NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "FORMERR"} {
		if v, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	return strings.Join(parts, ", ")
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ⏎ ")
	s = strings.ReplaceAll(s, "|", "\\|")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
