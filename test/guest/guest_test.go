// Package guest proves the agent on the kernels and userlands users run:
// it boots Debian guests with their own kernel under qemu (hack/guest.sh:
// Debian 12 with 6.1, Debian 11 with 5.10 and nft 0.9.8), runs the
// real-kernel tests of internal/proxy, routes, dnsstub, hostdns and
// hostguard there, and checks with real packets that the built agent, started with
// no reachable API server but a saved snapshot, proxies a ClusterIP to a
// pod with the backend proxy.mode auto picks. One boot per guest runs
// everything; each guest's tests are reported as subtests.
//
// BRIDGE_AGENT_GUESTS selects the guests (default "bookworm,bullseye";
// "none" skips). The tests skip, saying why, without qemu or without a
// built guest when not root (building needs debootstrap).
package guest

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
	"sync"
	"testing"
	"time"
)

// defaultGuests are the suites hack/guest.sh builds.
var defaultGuests = []string{"bookworm", "bullseye"}

// repoRoot is the repository's top directory (two levels above this
// package).
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the test's source file")
	}
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "hack", "guest.sh")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

// selectedGuests reads BRIDGE_AGENT_GUESTS.
func selectedGuests(t *testing.T) []string {
	v := strings.TrimSpace(os.Getenv("BRIDGE_AGENT_GUESTS"))
	if v == "" {
		return defaultGuests
	}
	if v == "none" {
		t.Skip("skipping: BRIDGE_AGENT_GUESTS=none")
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// payload is what every guest gets: the test binaries with their
// testdata, the agent and its state, the scripts.
type payload struct {
	dir   string
	token string // what the pod answers
}

// payloadBuilder builds the payload into dir on first use and returns the
// same result after.
func payloadBuilder(root, dir string) func(ctx context.Context) (*payload, error) {
	var (
		once sync.Once
		p    *payload
		err  error
	)
	return func(ctx context.Context) (*payload, error) {
		once.Do(func() { p, err = makePayload(ctx, root, dir) })
		return p, err
	}
}

// makePayload builds the test binaries and the agent (CGO_ENABLED=0, so
// they run on any guest's libc) into dir, with the scripts and the agent
// check's files.
func makePayload(ctx context.Context, root, dir string) (*payload, error) {
	var tests bytes.Buffer
	for _, p := range kernelPackages {
		names, err := kernelTests(root, p)
		if err != nil {
			return nil, err
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("no kernel tests found in %s: were its helpers (%s) renamed? update kernelPackages",
				p.Dir, strings.Join(p.Markers, ", "))
		}
		pkgDir := filepath.Join(dir, p.Name)
		if err := goCmd(ctx, root, "test", "-c", "-o", filepath.Join(pkgDir, p.Name+".test"), "./"+p.Dir); err != nil {
			return nil, err
		}
		if td := filepath.Join(root, p.Dir, "testdata"); isDir(td) {
			if out, err := exec.CommandContext(ctx, "cp", "-a", td, pkgDir+"/").CombinedOutput(); err != nil {
				return nil, fmt.Errorf("copy %s: %w: %s", td, err, out)
			}
		}
		fmt.Fprintf(&tests, "%s %s\n", p.Name, runPattern(names))
	}
	if err := os.WriteFile(filepath.Join(dir, "tests.txt"), tests.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if err := goCmd(ctx, root, "build", "-o", filepath.Join(dir, "bridge-agent"), "./cmd/bridge-agent"); err != nil {
		return nil, err
	}
	for _, s := range []string{"run.sh", "agent.sh"} {
		b, err := os.ReadFile(filepath.Join(root, "test", "guest", "testdata", s))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, s), b, 0o755); err != nil {
			return nil, err
		}
	}
	p := &payload{dir: dir}
	if err := writeAgentFiles(p); err != nil {
		return nil, err
	}
	return p, nil
}

// goCmd runs the go tool in the repository root, for a static binary.
func goCmd(ctx context.Context, root string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// TestGuestKernels boots each selected guest once and reports, per guest,
// each kernel test of each package and the agent check.
func TestGuestKernels(t *testing.T) {
	guests := selectedGuests(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipping: qemu-system-x86_64 not found (hack/test.sh installs qemu-system-x86; as root hack/guest.sh does too)")
	}
	root := repoRoot(t)
	script := filepath.Join(root, "hack", "guest.sh")
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
		defer cancel()
	}
	// Built once, when the first guest is there to run it.
	buildPayload := payloadBuilder(root, t.TempDir())
	ran := 0
	for _, suite := range guests {
		t.Run(suite, func(t *testing.T) {
			if err := ensureGuest(ctx, t, script, suite); err != nil {
				t.Fatal(err)
			}
			ran++
			p, err := buildPayload(ctx)
			if err != nil {
				t.Fatalf("build the guest payload: %v", err)
			}
			res := boot(ctx, t, script, suite, p)
			reportGuest(t, suite, res, p)
		})
	}
	if ran == 0 {
		// Every guest skipped (the reasons are above): so does the test.
		t.Skip("skipping: no guest could run")
	}
}

// ensureGuest finds the guest's cache or builds it (root only), or skips.
func ensureGuest(ctx context.Context, t *testing.T, script, suite string) error {
	cmd := exec.CommandContext(ctx, script, "dir", suite)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("hack/guest.sh dir %s (BRIDGE_AGENT_GUESTS names the guests): %w: %s", suite, err, strings.TrimSpace(stderr.String()))
	}
	dir := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		t.Skipf("skipping: guest %s is not built (%s) and building it needs root: sudo hack/guest.sh build %s", suite, dir, suite)
	}
	t.Logf("building guest %s (cold builds take minutes; cached in %s)", suite, dir)
	start := time.Now()
	if b, err := exec.CommandContext(ctx, script, "build", suite).CombinedOutput(); err != nil {
		return fmt.Errorf("hack/guest.sh build %s: %w\n%s", suite, err, b)
	}
	t.Logf("built guest %s in %s", suite, time.Since(start).Round(time.Second))
	return nil
}

// guestResult is one boot's console output cut into its parts.
type guestResult struct {
	wall     time.Duration
	exitErr  error
	console  string            // the command's output
	stderr   string            // hack/guest.sh's own messages
	boot     float64           // guest uptime when the command started
	end      float64           // guest uptime when it ended
	parts    map[string]string // part -> output
	partRC   map[string]int
	partTime map[string]float64 // part -> seconds
}

var (
	beginRE = regexp.MustCompile(`^=== GUEST-BEGIN (\S+) uptime=([\d.]+)$`)
	endRE   = regexp.MustCompile(`^=== GUEST-END (\S+) rc=(\d+) uptime=([\d.]+)$`)
	// hack/guest.sh's last words on stderr.
	summaryRE = regexp.MustCompile(`(?m)^guest: \S+: user space after ([\d.]+)s, command ran ([\d.]+)s, exit \d+$`)
)

// boot runs the payload in the guest, one boot for everything.
func boot(ctx context.Context, t *testing.T, script, suite string, p *payload) *guestResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	const dst = "/opt/bridge-agent-test"
	cmd := exec.CommandContext(ctx, script, "run", suite, "--timeout", "840",
		"--file", p.dir+":"+dst, "--", "bash", dst+"/run.sh")
	var out, stderr bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	r := &guestResult{wall: time.Since(start), exitErr: err, console: out.String(), stderr: stderr.String(),
		parts: map[string]string{}, partRC: map[string]int{}, partTime: map[string]float64{}}
	if m := summaryRE.FindStringSubmatch(r.stderr); m != nil {
		r.boot, _ = strconv.ParseFloat(m[1], 64)
		ran, _ := strconv.ParseFloat(m[2], 64)
		r.end = r.boot + ran
	}
	var cur string
	var buf strings.Builder
	begin := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(r.console))
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case beginRE.MatchString(line):
			m := beginRE.FindStringSubmatch(line)
			cur = m[1]
			begin[cur], _ = strconv.ParseFloat(m[2], 64)
			buf.Reset()
		case endRE.MatchString(line) && cur != "":
			m := endRE.FindStringSubmatch(line)
			rc, _ := strconv.Atoi(m[2])
			up, _ := strconv.ParseFloat(m[3], 64)
			r.parts[cur], r.partRC[cur], r.partTime[cur] = buf.String(), rc, up-begin[cur]
			cur = ""
		case cur != "":
			buf.WriteString(line)
			buf.WriteByte('\n')
		}
	}
	return r
}

var testLineRE = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)$`)

// reportGuest turns one boot's output into subtests: one per kernel test
// of each package, and the agent check.
func reportGuest(t *testing.T, suite string, r *guestResult, p *payload) {
	if r.boot > 0 {
		t.Logf("%s: boot %.1fs to user space, %.1fs running, %s wall (qemu TCG)", suite, r.boot, r.end-r.boot, r.wall.Round(time.Second))
	} else {
		t.Errorf("%s: the command did not run to its end (hack/guest.sh: %v):\n%s\n%s", suite, r.exitErr, tail(r.console, 60), tail(r.stderr, 40))
	}
	for _, kp := range kernelPackages {
		out, ok := r.parts[kp.Name]
		if !ok {
			t.Errorf("%s: the %s tests did not finish (hack/guest.sh: %v); console:\n%s", suite, kp.Name, r.exitErr, tail(r.console, 60))
			continue
		}
		t.Logf("%s: %s kernel tests: exit %d in %.1fs", suite, kp.Name, r.partRC[kp.Name], r.partTime[kp.Name])
		reportPackage(t, kp, out, r.partRC[kp.Name])
	}
	t.Run("agent", func(t *testing.T) {
		out, ok := r.parts["agent"]
		if !ok {
			t.Fatalf("the agent check did not finish (hack/guest.sh: %v); console:\n%s", r.exitErr, tail(r.console, 60))
		}
		checkAgent(t, suite, out, p, r.partTime["agent"])
	})
}

// reportPackage reports each top-level test of one package's verbose
// output as a subtest: failed, skipped or passed as it did in the guest.
func reportPackage(t *testing.T, kp kernelPackage, out string, rc int) {
	t.Helper()
	type result struct {
		status string
		secs   string
		log    strings.Builder
	}
	results := map[string]*result{}
	var order []string
	var cur *result
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "=== RUN   "); ok && !strings.Contains(name, "/") {
			if results[name] == nil {
				results[name] = &result{}
				order = append(order, name)
			}
			cur = results[name]
		}
		if m := testLineRE.FindStringSubmatch(line); m != nil {
			if res := results[m[2]]; res != nil {
				res.status, res.secs = m[1], m[3]
				res.log.WriteString(line + "\n")
				cur = nil
				continue
			}
		}
		if cur != nil {
			cur.log.WriteString(line + "\n")
		}
	}
	failed := false
	for _, name := range order {
		res := results[name]
		t.Run(kp.Name+"/"+name, func(t *testing.T) {
			switch res.status {
			case "PASS":
				t.Logf("passed in the guest in %ss", res.secs)
			case "SKIP":
				t.Skipf("skipped in the guest:\n%s", tail(res.log.String(), 20))
			case "FAIL":
				failed = true
				t.Errorf("failed in the guest after %ss:\n%s", res.secs, tail(res.log.String(), 80))
			default:
				failed = true
				t.Errorf("did not finish in the guest (test binary exit %d):\n%s", rc, tail(res.log.String(), 80))
			}
		})
	}
	if len(order) == 0 {
		t.Errorf("%s: no test ran in the guest (exit %d):\n%s", kp.Name, rc, tail(out, 40))
	} else if rc != 0 && !failed {
		t.Errorf("%s: the test binary exited %d with no failed test:\n%s", kp.Name, rc, tail(out, 40))
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
