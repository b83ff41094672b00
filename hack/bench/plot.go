package main

import (
	"fmt"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// cdf turns sorted durations into (milliseconds, fraction) points.
func cdf(s []time.Duration) plotter.XYs {
	pts := make(plotter.XYs, len(s))
	for i, d := range s {
		pts[i].X = float64(d) / float64(time.Millisecond)
		pts[i].Y = float64(i+1) / float64(len(s))
	}
	return pts
}

// writePlots writes the run's PNGs next to the report and returns their
// titles and file names; a plot that cannot be drawn is left out.
func (b *bench) writePlots(dir, name string) [][2]string {
	var out [][2]string
	save := func(p *plot.Plot, file, title string) {
		path := filepath.Join(dir, name+"-"+file+".png")
		if err := p.Save(9*vg.Inch, 4.5*vg.Inch, path); err != nil {
			b.log.Warn("plot", "file", path, "err", err)
			return
		}
		out = append(out, [2]string{title, filepath.Base(path)})
	}
	big, ok := b.largest(10)
	if ok && b.secs["proxy"] {
		for _, kind := range []string{"single", "burst"} {
			title := fmt.Sprintf("Event to kernel, %s changes, %s", kind, big)
			if kind == "burst" {
				title = fmt.Sprintf("Event to kernel, changes at %.0f/s, %s", b.opts.rate, big)
			}
			p := newCDFPlot(title, "latency (ms, log scale)", "fraction of changes")
			var args []any
			for _, pe := range b.peers {
				r := b.find(pe.ID, big)
				if r == nil {
					continue
				}
				s := r.Single.Samples
				if kind == "burst" {
					s = r.Burst.Samples
				}
				if len(s) == 0 {
					continue
				}
				args = append(args, pe.Label, cdf(s))
			}
			if len(args) == 0 {
				continue
			}
			if err := plotutil.AddLines(p, args...); err == nil {
				save(p, "latency-"+kind, title)
			}
		}
		// Sync to kernel vs Services.
		p := plot.New()
		p.Title.Text = "Full sync: informers synced to all rules in the kernel"
		p.X.Label.Text = "Services (×10 endpoints)"
		p.Y.Label.Text = "seconds"
		p.Legend.Top, p.Legend.Left = true, true
		var args []any
		for _, pe := range b.peers {
			var pts plotter.XYs
			for _, s := range b.sizes {
				if s.Eps != 10 {
					continue
				}
				if r := b.find(pe.ID, s); r != nil && r.Complete && r.SyncToKernel > 0 {
					pts = append(pts, plotter.XY{X: float64(s.Services), Y: r.SyncToKernel.Seconds()})
				}
			}
			if len(pts) > 0 {
				args = append(args, pe.Label, pts)
			}
		}
		if len(args) > 0 {
			if err := plotutil.AddLinePoints(p, args...); err == nil {
				save(p, "full-sync", p.Title.Text)
			}
		}
	}
	if ok && b.secs["datapath"] {
		title := fmt.Sprintf("Connect latency, ClusterIP vs pod IP, %s", big)
		p := newCDFPlot(title, "connect (ms, log scale)", "fraction of connects")
		var args []any
		for _, pe := range b.peers {
			if r := b.find(pe.ID, big); r != nil && r.Datapath != nil && len(r.Datapath.ClusterIP.Samples) > 0 {
				args = append(args, pe.Label+" ClusterIP", cdf(r.Datapath.ClusterIP.Samples))
				if pe.ID == "agent-nft" {
					args = append(args, "pod IP (from the agent's VM)", cdf(r.Datapath.Direct.Samples))
				}
			}
		}
		if len(args) > 0 {
			if err := plotutil.AddLines(p, args...); err == nil {
				save(p, "connect", title)
			}
		}
	}
	if len(b.dns) > 0 {
		p := plot.New()
		p.Title.Text = "DNS: queries per second (< 1% lost), server on one core"
		p.Y.Label.Text = "QPS"
		var vals plotter.Values
		var names []string
		for _, d := range b.dns {
			vals = append(vals, d.Max.QPS)
			names = append(names, d.Server)
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(60))
		if err == nil {
			bars.Color = plotutil.Color(0)
			p.Add(bars)
			p.NominalX(names...)
			save(p, "dns", p.Title.Text)
		}
	}
	return out
}

// newCDFPlot returns an empty plot of cumulative distributions of
// latencies, on a logarithmic x axis, legend at the bottom.
func newCDFPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = false
	return p
}
