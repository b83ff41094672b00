package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// clockTick is USER_HZ, the unit of the times in /proc/<pid>/stat; 100 on
// every Linux architecture Go supports.
const clockTick = 100

// procSample is what /proc says of one process at one moment.
type procSample struct {
	At time.Time
	// CPU is user+system time of the process and of its children it has
	// waited for (nft, iptables-restore).
	CPU time.Duration
	// HWM is the peak resident set (VmHWM); RSS the current one.
	HWM, RSS int64
}

func sampleProc(pid int) (procSample, error) {
	s := procSample{At: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	str := string(b)
	i := strings.LastIndexByte(str, ')')
	if i < 0 {
		return s, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(str[i+1:])
	if len(f) < 15 {
		return s, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	// Fields 14-17 (utime, stime, cutime, cstime) are f[11..14].
	var ticks int64
	for _, x := range f[11:15] {
		v, _ := strconv.ParseInt(x, 10, 64)
		ticks += v
	}
	s.CPU = time.Duration(ticks) * time.Second / clockTick
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			s.HWM = kb << 10
		case "VmRSS":
			s.RSS = kb << 10
		}
	}
	return s, nil
}

// histogram is one Prometheus histogram (cumulative buckets).
type histogram struct {
	Bounds []float64 // upper bounds, ascending, +Inf last
	Counts []float64 // cumulative
	Sum    float64
	Count  float64
}

// sub returns h minus an earlier reading of the same histogram.
func (h histogram) sub(o histogram) histogram {
	if len(o.Counts) != len(h.Counts) {
		return h
	}
	d := histogram{Bounds: h.Bounds, Sum: h.Sum - o.Sum, Count: h.Count - o.Count}
	for i := range h.Counts {
		d.Counts = append(d.Counts, h.Counts[i]-o.Counts[i])
	}
	return d
}

// quantile returns the upper bound of the bucket that holds quantile q:
// the most a histogram can tell without guessing within a bucket (the
// peers' buckets differ: kube-proxy's start at 250 ms).
func (h histogram) quantile(q float64) float64 {
	if h.Count <= 0 || len(h.Counts) == 0 {
		return math.NaN()
	}
	rank := q * h.Count
	for i, c := range h.Counts {
		if c >= rank {
			return h.Bounds[i]
		}
	}
	return math.Inf(1)
}

// metricsText fetches a /metrics page from inside netns.
func metricsText(ctx context.Context, tb *testbed.Testbed, netns, url string) (string, error) {
	client := &http.Client{
		Transport: &http.Transport{DialContext: tb.DialContext(netns), DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("get %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// parseHistogram extracts histogram name from a Prometheus text page,
// restricted to series whose labels contain every string in match.
func parseHistogram(text, name string, match ...string) (histogram, bool) {
	type bucket struct{ le, n float64 }
	var bs []bucket
	var h histogram
	found := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name) || strings.HasPrefix(l, "#") {
			continue
		}
		rest := l[len(name):]
		series, value, ok := strings.Cut(rest, " ")
		if !ok {
			continue
		}
		okLabels := true
		for _, m := range match {
			if !strings.Contains(series, m) {
				okLabels = false
			}
		}
		if !okLabels {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(series, "_bucket{"):
			i := strings.Index(series, `le="`)
			if i < 0 {
				continue
			}
			leS := series[i+4:]
			leS = leS[:strings.IndexByte(leS, '"')]
			le, err := strconv.ParseFloat(leS, 64)
			if err != nil {
				continue
			}
			bs = append(bs, bucket{le, v})
			found = true
		case strings.HasPrefix(series, "_sum"):
			h.Sum = v
		case strings.HasPrefix(series, "_count"):
			h.Count = v
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	for _, b := range bs {
		h.Bounds = append(h.Bounds, b.le)
		h.Counts = append(h.Counts, b.n)
	}
	return h, found
}

// parseGauge returns the first sample of a gauge or counter named name
// whose labels contain every string in match.
func parseGauge(text, name string, match ...string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name) {
			continue
		}
		series, value, ok := strings.Cut(l[len(name):], " ")
		if !ok || (series != "" && series[0] != '{') {
			continue
		}
		good := true
		for _, m := range match {
			if !strings.Contains(series, m) {
				good = false
			}
		}
		if !good {
			continue
		}
		if v, err := strconv.ParseFloat(strings.Fields(value)[0], 64); err == nil {
			return v, true
		}
	}
	return 0, false
}
