package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// facts describe the machine and the software versions of a run.
type facts struct {
	CPU, Kernel, Go, Nft, IPTables, Dnsperf, Agent, Kubernetes, CoreDNS string
	CPUs                                                                int
	LoadStart, LoadEnd                                                  string
	Took                                                                time.Duration
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

func cmdLine(ctx context.Context, name string, args ...string) string {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown (" + err.Error() + ")"
	}
	return firstLine(out)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// toolVersion reads the version a tool module pins, from hack/tools/<dir>/go.mod.
func toolVersion(dir, module string) string {
	b, err := os.ReadFile(filepath.Join("hack", "tools", dir, "go.mod"))
	if err != nil {
		return "unknown"
	}
	re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(module) + `\s+(v\S+)`)
	if m := re.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return "unknown"
}

func gatherFacts(ctx context.Context) facts {
	f := facts{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				f.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	f.Kernel = cmdLine(ctx, "uname", "-r")
	f.Nft = cmdLine(ctx, "nft", "--version")
	f.IPTables = cmdLine(ctx, "iptables", "--version")
	f.Dnsperf = strings.TrimSpace(lastN(cmdLine2(ctx, "dnsperf", "-h"), 1))
	f.Agent = cmdLine(ctx, "git", "describe", "--tags", "--always", "--dirty")
	f.Kubernetes = "k8s.io/kubernetes " + toolVersion("kubernetes", "k8s.io/kubernetes")
	f.CoreDNS = "github.com/coredns/coredns " + toolVersion("coredns", "github.com/coredns/coredns")
	return f
}

func cmdLine2(ctx context.Context, name string, args ...string) string {
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// goBench is one line of `go test -bench` output.
type goBench struct {
	Pkg, Name           string
	N                   int
	NsOp, BOp, AllocsOp float64
	Extra               string
	HasMem              bool
}

var benchLineRE = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+([\d.]+) ns/op(.*)$`)

// runGoBench runs the benchmarks matching pattern in internal/proxy and
// internal/dnsstub, with allocations.
func runGoBench(ctx context.Context, pattern string, quick bool) ([]goBench, error) {
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchmem", "-timeout", "30m"}
	if quick {
		args = append(args, "-benchtime", "1x")
	}
	args = append(args, "./internal/proxy/", "./internal/dnsstub/")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	var res []goBench
	pkg := ""
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "pkg: ") {
			pkg = strings.TrimPrefix(l, "pkg: ")
			pkg = strings.TrimPrefix(pkg, "github.com/bridge-agent/bridge-agent/")
			continue
		}
		m := benchLineRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		g := goBench{Pkg: pkg, Name: m[1]}
		g.N, _ = strconv.Atoi(m[2])
		g.NsOp, _ = strconv.ParseFloat(m[3], 64)
		rest := strings.Fields(m[4])
		var extra []string
		for i := 0; i+1 < len(rest); i += 2 {
			v, _ := strconv.ParseFloat(rest[i], 64)
			switch rest[i+1] {
			case "B/op":
				g.BOp, g.HasMem = v, true
			case "allocs/op":
				g.AllocsOp = v
			default:
				extra = append(extra, rest[i]+" "+rest[i+1])
			}
		}
		g.Extra = strings.Join(extra, ", ")
		res = append(res, g)
	}
	if err != nil {
		return res, fmt.Errorf("go test -bench: %w\n%s", err, lastN(string(out), 30))
	}
	return res, nil
}
