package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
	"github.com/bridge-agent/bridge-agent/packaging"
	"github.com/bridge-agent/bridge-agent/systemd"
)

// The packages the tests build: an installed version and a newer one to
// upgrade to.
const (
	pkgVersion    = "0.1.0"
	pkgNewVersion = "0.1.1"
)

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// buildPackages runs hack/package.sh, as `make package` does, for this
// machine's architecture and returns the packages' paths.
func buildPackages(ctx context.Context, t *testing.T, dir, version, formats string) []string {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "hack", "package.sh"), "-o", dir)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "VERSION="+version, "ARCHS="+runtime.GOARCH, "FORMATS="+formats)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/package.sh (VERSION=%s): %v\n%s", version, err, stderr.String())
	}
	paths := strings.Fields(string(out))
	t.Logf("built %s in %s: %v", version, time.Since(start).Round(time.Millisecond), paths)
	return paths
}

// pick returns the one path with the given suffix.
func pick(t *testing.T, paths []string, suffix string) string {
	t.Helper()
	for _, p := range paths {
		if strings.HasSuffix(p, suffix) {
			return p
		}
	}
	t.Fatalf("no *%s among %v", suffix, paths)
	return ""
}

// debianRoot returns the cached Debian root file system, building it on
// first use (hack/debian-root.sh).
func debianRoot(ctx context.Context, t *testing.T) string {
	t.Helper()
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "hack", "debian-root.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/debian-root.sh: %v\n%s", err, stderr.String())
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		t.Fatalf("hack/debian-root.sh printed no directory\n%s", stderr.String())
	}
	t.Logf("Debian root %s ready in %s", lines[len(lines)-1], time.Since(start).Round(time.Millisecond))
	return lines[len(lines)-1]
}

// copyRoot copies the cached root to dst, so every run starts pristine, and
// gives the copy its own machine id.
func copyRoot(ctx context.Context, t *testing.T, src, dst string) {
	t.Helper()
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", src, err, out)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	if err := os.WriteFile(filepath.Join(dst, "etc", "machine-id"), []byte(hex.EncodeToString(id)+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	t.Logf("copied the root in %s", time.Since(start).Round(time.Millisecond))
}

// container is a Debian booted with systemd-nspawn in the sandbox's VM
// network namespace: a legacy VM with a real systemd.
type container struct {
	root   string
	log    string
	cmd    *exec.Cmd
	done   chan struct{}
	leader int // the container's init, as this machine sees it
}

// bootContainer boots root with systemd as init, sharing the VM's network
// namespace, and waits until systemd reports the system up.
func bootContainer(ctx context.Context, t *testing.T, root, logPath string) *container {
	t.Helper()
	start := time.Now()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	c := &container{root: root, log: logPath, done: make(chan struct{})}
	// nsenter, not `ip netns exec`: that remounts /sys for the namespace,
	// without the cgroup file system systemd-nspawn needs.
	c.cmd = exec.Command("nsenter", "--net=/run/netns/"+tb.VMNetns, "systemd-nspawn",
		"--boot", "--register=no", "--keep-unit",
		"--directory="+root, "--machine=bridge-agent-vm",
		// The VM's /etc/resolv.conf is its own file, for the agent to manage.
		"--resolv-conf=off", "--timezone=off", "--link-journal=no",
		"--console=pipe",
		// Not granted by default when the container shares a network
		// namespace: the agent needs it, as on any host.
		"--capability=CAP_NET_ADMIN")
	c.cmd.Stdin = nil
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() {
		_ = c.cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	t.Cleanup(c.kill)

	// The init is the nspawn process's child.
	deadline := time.Now().Add(30 * time.Second)
	for c.leader == 0 {
		if c.exited() || time.Now().After(deadline) {
			t.Fatalf("systemd-nspawn: no container init:\n%s", c.consoleTail())
		}
		c.leader = childOf(c.cmd.Process.Pid)
		time.Sleep(50 * time.Millisecond)
	}
	var state string
	deadline = time.Now().Add(2 * time.Minute)
	for {
		out, _ := c.exec(ctx, "systemctl", "is-system-running")
		state = strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			break
		}
		if c.exited() || time.Now().After(deadline) {
			t.Fatalf("container did not boot (systemctl is-system-running: %q):\n%s", state, c.consoleTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("container booted (%s) in %s", state, time.Since(start).Round(time.Millisecond))
	if state == "degraded" {
		out, _ := c.exec(ctx, "systemctl", "--failed", "--no-legend")
		t.Logf("failed units in the container (not ours):\n%s", out)
	}
	return c
}

// childOf returns a child process of pid, or 0.
func childOf(pid int) int {
	matches, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				return n
			}
		}
	}
	return 0
}

func (c *container) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *container) consoleTail() string {
	b, _ := os.ReadFile(c.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// exec runs argv inside the container (all its namespaces, its root) with a
// clean environment, as an admin's shell would.
func (c *container) exec(ctx context.Context, argv ...string) ([]byte, error) {
	args := append([]string{"-t", strconv.Itoa(c.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
		"env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"HOME=/root", "TERM=dumb", "SYSTEMD_PAGER=", "DEBIAN_FRONTEND=noninteractive"}, argv...)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
}

// run is exec failing the test on error.
func (c *container) run(ctx context.Context, t *testing.T, argv ...string) string {
	t.Helper()
	out, err := c.exec(ctx, argv...)
	if err != nil {
		t.Fatalf("in the VM: %v: %v\n%s", argv, err, out)
	}
	return string(out)
}

// sh runs a shell script inside the container.
func (c *container) sh(ctx context.Context, t *testing.T, script string) string {
	t.Helper()
	return c.run(ctx, t, "sh", "-ec", script)
}

// poweroff shuts the container down the way systemd-nspawn does on SIGTERM
// (an orderly poweroff) and waits for it.
func (c *container) poweroff(t *testing.T) {
	t.Helper()
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(time.Minute):
		t.Errorf("container did not power off within a minute:\n%s", c.consoleTail())
		c.kill()
	}
}

// kill ends the container at once.
func (c *container) kill() {
	if c.exited() {
		return
	}
	if c.leader > 0 {
		_ = syscall.Kill(c.leader, syscall.SIGKILL)
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
	}
}

// agentRules lists the agent's nftables tables and iptables chains in the
// VM namespace, whichever backend and variant holds them, as seen from
// outside the container.
func agentRules(ctx context.Context) (string, error) {
	var found []string
	out, err := tb.Exec(ctx, tb.VMNetns, "nft", "list", "tables")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "bridge-agent") {
			found = append(found, "nft: "+line)
		}
	}
	for _, tool := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		out, err := tb.Exec(ctx, tb.VMNetns, tool)
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "BRIDGE-") {
				found = append(found, tool+": "+line)
			}
		}
	}
	return strings.Join(found, "\n"), nil
}

// agentRoutes lists the routes with the agent's protocol in the VM
// namespace, every table, both families.
func agentRoutes(ctx context.Context) (string, error) {
	var out []byte
	for _, fam := range []string{"-4", "-6"} {
		b, err := tb.Exec(ctx, tb.VMNetns, "ip", fam, "route", "show", "table", "all", "proto", strconv.Itoa(config.DefaultRouteProtocol))
		if err != nil {
			return "", err
		}
		out = append(out, b...)
	}
	return strings.TrimSpace(string(out)), nil
}

// hasServiceRules reports whether agentRules shows the agent's Service
// rules: the nftables table or the iptables chain.
func hasServiceRules(rules string) bool {
	return strings.Contains(rules, "nft: table ip bridge-agent") || strings.Contains(rules, ":BRIDGE-SERVICES")
}

// ruleWatch samples a condition in the background (the agent's NAT rules,
// its readiness) and records every moment it did not hold.
type ruleWatch struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples int
	gaps    []string
}

// watchRules samples the agent's NAT rules every 100 ms.
func watchRules(ctx context.Context) *ruleWatch {
	return watchSamples(100*time.Millisecond, func() error {
		rules, err := agentRules(ctx)
		if err == nil && !hasServiceRules(rules) {
			err = errors.New("no Service rules")
		}
		return err
	})
}

// watchSamples calls check every interval until finish.
func watchSamples(every time.Duration, check func() error) *ruleWatch {
	w := &ruleWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(every):
			}
			err := check()
			w.mu.Lock()
			w.samples++
			if err != nil {
				w.gaps = append(w.gaps, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *ruleWatch) finish() (samples int, gaps []string) {
	close(w.stop)
	<-w.done
	return w.samples, w.gaps
}

// TestPackage installs the .deb on a booted Debian in the sandbox's VM
// network namespace and runs it with systemd, following README's "Install
// on a VM": install (not started without credentials), join with
// the bundle of `bridge-agent host add`, start, reach a Service by name, restart,
// upgrade (rules and the edited conffile kept), purge (nothing of ours
// left). The VM runs systemd-resolved with a networkd-managed uplink and
// mDNS on, as Ubuntu does: names resolve through resolved (getent, curl,
// also under the .local cluster domain), resolved is never restarted (same
// PID throughout), and after the purge its configuration is as before.
// TestPackageBareBinary covers a legacy VM with a plain resolv.conf.
func TestPackage(t *testing.T) {
	requireTestbed(t)
	testStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()

	pkgs := buildPackages(ctx, t, filepath.Join(dir, "dist"), pkgVersion, "deb")
	newPkgs := buildPackages(ctx, t, filepath.Join(dir, "dist-new"), pkgNewVersion, "deb")
	deb, newDeb := pick(t, pkgs, ".deb"), pick(t, newPkgs, ".deb")

	vm, pod := startVM(ctx, t, dir, resolvedNetworkd, deb, newDeb)
	resolvedBefore := vm.resolvedConfig(ctx, t)
	resolvedPID := vm.resolvedPID(ctx, t)
	sameResolved := func(what string) {
		t.Helper()
		if got := vm.resolvedPID(ctx, t); got != resolvedPID {
			t.Errorf("%s: systemd-resolved's PID is %s, was %s: it was restarted", what, got, resolvedPID)
		}
	}
	t.Logf("systemd-resolved (PID %s) before install:\n%s", resolvedPID, resolvedBefore)

	// 1. Install. No credentials yet: enabled, not started, says what next.
	start := time.Now()
	out := vm.run(ctx, t, "apt-get", "install", "-y", "/root/"+filepath.Base(deb))
	t.Logf("apt-get install took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	if !strings.Contains(out, "Next:") || !strings.Contains(out, "bridge-agent kubeconfig --server") {
		t.Errorf("install without credentials did not say what to do next:\n%s", out)
	}
	if got := unitState(ctx, vm, "is-enabled"); got != "enabled" {
		t.Errorf("after install: is-enabled %q, want enabled", got)
	}
	if got := unitState(ctx, vm, "is-active"); got != "inactive" {
		t.Errorf("after install without credentials: is-active %q, want inactive (not crash-looping)", got)
	}
	for _, f := range []string{"/usr/bin/bridge-agent", "/etc/bridge-agent/config.yaml", "/lib/systemd/system/bridge-agent.service",
		"/usr/share/man/man8/bridge-agent.8.gz", "/usr/share/doc/bridge-agent/copyright", "/usr/share/doc/bridge-agent/changelog.gz"} {
		vm.run(ctx, t, "test", "-f", f)
	}
	if out := vm.run(ctx, t, "dpkg-query", "-W", "-f=${Conffiles}", "bridge-agent"); !strings.Contains(out, "/etc/bridge-agent/config.yaml") {
		t.Errorf("config.yaml is not a conffile: %q", out)
	}

	// The unit, as systemd sees it on this host.
	if out, err := vm.exec(ctx, "systemd-analyze", "verify", "--man=no", "bridge-agent.service"); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	sec := vm.run(ctx, t, "systemd-analyze", "security", "--no-pager", "bridge-agent.service")
	m := regexp.MustCompile(`Overall exposure level for bridge-agent.service: ([0-9.]+) (\S+)`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatalf("systemd-analyze security: no score:\n%s", sec)
	}
	t.Logf("systemd-analyze security: %s %s", m[1], m[2])
	if score, _ := strconv.ParseFloat(m[1], 64); score > 3.0 {
		t.Errorf("exposure %s, want at most 3.0:\n%s", m[1], sec)
	}

	// Started without credentials (a boot before the admin joined the
	// host): one failed start, status 78 (EX_CONFIG) and why, no restart
	// loop.
	if out, err := vm.exec(ctx, "systemctl", "start", "bridge-agent"); err == nil {
		t.Errorf("start without credentials succeeded:\n%s", out)
	}
	time.Sleep(7 * time.Second) // longer than RestartSec
	if got := unitProp(ctx, t, vm, "ExecMainStatus"); got != "78" {
		t.Errorf("without credentials: ExecMainStatus %s, want 78", got)
	}
	if got := unitProp(ctx, t, vm, "NRestarts"); got != "0" {
		t.Errorf("without credentials: NRestarts %s, want 0 (no restart loop)", got)
	}
	if out, _ := vm.exec(ctx, "systemctl", "status", "--no-pager", "-n", "30", "bridge-agent"); !strings.Contains(string(out), "no credentials for the cluster yet") {
		t.Errorf("systemctl status without credentials does not say why:\n%s", out)
	}
	vm.run(ctx, t, "systemctl", "reset-failed", "bridge-agent")

	// An API server that cannot be reached (nothing listens on its port):
	// `systemctl start` returns within the ready bound, systemctl status
	// says why, and the warning is a journal warning.
	vm.sh(ctx, t, "umask 077; bridge-agent kubeconfig --server https://127.0.0.1:1 --token-file /root/token --ca-file /root/ca.crt > /etc/bridge-agent/kubeconfig")
	start = time.Now()
	vm.run(ctx, t, "systemctl", "start", "bridge-agent")
	took := time.Since(start)
	t.Logf("systemctl start with the API server unreachable took %s", took.Round(time.Millisecond))
	if took > 30*time.Second {
		t.Errorf("systemctl start with the API server unreachable took %s, want about 15 s", took)
	}
	if got := unitState(ctx, vm, "is-active"); got != "active" {
		t.Errorf("with the API server unreachable: is-active %q, want active", got)
	}
	st := vm.run(ctx, t, "systemctl", "status", "--no-pager", "bridge-agent")
	t.Logf("systemctl status, API server unreachable:\n%s", st)
	if !strings.Contains(st, `Status: "waiting for the API server: `) || !strings.Contains(st, "connection refused") {
		t.Errorf("systemctl status does not say what the agent waits for:\n%s", st)
	}
	warn := vm.run(ctx, t, "journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u", "bridge-agent")
	t.Logf("journalctl -p warning:\n%s", warn)
	if !strings.Contains(warn, "cannot reach the API server") || strings.Contains(warn, "time=") || strings.Contains(warn, "level=INFO") {
		t.Errorf("journalctl -p warning: want the agent's warning without time= and no info lines:\n%s", warn)
	}
	vm.run(ctx, t, "systemctl", "stop", "bridge-agent")
	// That start wired the DNS link once: the count below is from here.
	countSets := func() int {
		out := vm.run(ctx, t, "sh", "-c", "journalctl -u bridge-agent --no-pager | grep -c \"set systemd-resolved's settings of the link\"; true")
		n, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("counting the link settings in the journal: %v (%q)", err, out)
		}
		return n
	}
	setsBefore := countSets()

	// 2a. The shared ServiceAccount's flow: the kubeconfig from the token and CA.
	// As the install's "Next:" text says: -o writes it mode 0600 whatever
	// the umask, and --check asks the API server.
	vm.sh(ctx, t, fmt.Sprintf("rm /etc/bridge-agent/kubeconfig; umask 022; bridge-agent kubeconfig --server %s --token-file /root/token --ca-file /root/ca.crt -o /etc/bridge-agent/kubeconfig", tb.APIServerURL))
	if mode := strings.TrimSpace(vm.run(ctx, t, "stat", "-c", "%a", "/etc/bridge-agent/kubeconfig")); mode != "600" {
		t.Errorf("kubeconfig -o wrote mode %s, want 600", mode)
	}
	if out := vm.run(ctx, t, "bridge-agent", "kubeconfig", "--check"); !strings.Contains(out, "[ok] RBAC") {
		t.Errorf("kubeconfig --check did not check RBAC against the API server:\n%s", out)
	}
	// 2b. Join with an identity of its own, which replaces that kubeconfig: `host add` on the cluster, the one bundle file copied over,
	// `join` (checked against the API server; kubeconfig and token 0600),
	// then start.
	if err := tb.ApplyMemberPolicy(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := admin(ctx, "host", "add", "pkgvm", "-o", filepath.Join(vm.root, "root", "pkgvm.join.yaml")); err != nil {
		t.Fatalf("host add: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = admin(context.Background(), "host", "remove", "pkgvm") })
	t.Logf("join:\n%s", vm.run(ctx, t, "bridge-agent", "join", "/root/pkgvm.join.yaml"))
	if got := vm.run(ctx, t, "stat", "-c", "%a %U", "/etc/bridge-agent/kubeconfig", "/etc/bridge-agent/token"); got != "600 root\n600 root\n" {
		t.Errorf("joined credentials: modes %q, want 600 root", got)
	}
	if out := vm.run(ctx, t, "bridge-agent", "kubeconfig", "--check"); !strings.Contains(out, "[ok] RBAC") {
		t.Errorf("kubeconfig --check of the joined host did not check RBAC against the API server:\n%s", out)
	}
	start = time.Now()
	vm.run(ctx, t, "systemctl", "start", "bridge-agent") // returns once READY=1
	t.Logf("systemctl start (to READY=1) took %s", time.Since(start).Round(time.Millisecond))
	if got := unitState(ctx, vm, "is-active"); got != "active" {
		t.Fatalf("after start: is-active %q", got)
	}
	ready := func(what string) { t.Helper(); vm.waitReady(ctx, t, what) }
	ready("after start")
	// The agent runs on the host's own identity and heartbeats under the
	// hardened unit.
	waitFor(t, 30*time.Second, "hosts showing pkgvm alive", func() error {
		out, err := admin(ctx, "hosts")
		if err == nil && !hostLine(out, "pkgvm", "alive", "true", "nftables") {
			err = fmt.Errorf("hosts:\n%s", out)
		}
		return err
	})
	if st := vm.run(ctx, t, "bridge-agent", "status"); !strings.Contains(st, "Host:        pkgvm (ServiceAccount bridge-agent/bridge-agent-pkgvm)") {
		t.Errorf("status does not name the host's identity:\n%s", st)
	}
	if st := vm.run(ctx, t, "systemctl", "status", "--no-pager", "bridge-agent"); !regexp.MustCompile(`Status: "ready: \d+ services, \d+ endpoints; proxy nftables"`).MatchString(st) {
		t.Errorf("systemctl status after start does not say ready:\n%s", st)
	}

	// 3. From inside the VM, by name, through the host's resolver.
	byName := func(what string) { t.Helper(); vm.waitByName(ctx, t, what, pod.Name) }
	byName("after start")
	sameResolved("after start")
	vm.checkResolved(ctx, t, "after start")
	t.Logf("resolv.conf in the VM while the agent runs:\n%s", vm.run(ctx, t, "cat", "/etc/resolv.conf"))
	// The doctor on a booted host with systemd-resolved: every check
	// passes, the resolver ones through getent and resolvectl.
	if out, err := vm.exec(ctx, "bridge-agent", "doctor"); err != nil || !strings.Contains(string(out), "[ok  ] systemd-resolved (resolvectl query kubernetes.default.svc.cluster.local)") ||
		!strings.Contains(string(out), "[ok  ] host resolver (getent ahosts kubernetes.default.svc.cluster.local)") {
		t.Errorf("bridge-agent doctor in the VM: %v\n%s", err, out)
	} else {
		t.Logf("bridge-agent doctor in the VM:\n%s", out)
	}

	// 4. Restart, and a stop: the rules stay while the agent is down.
	mainPID := unitProp(ctx, t, vm, "MainPID")
	vm.run(ctx, t, "systemctl", "restart", "bridge-agent")
	if got := unitProp(ctx, t, vm, "MainPID"); got == mainPID || got == "0" {
		t.Errorf("restart: MainPID %s, was %s", got, mainPID)
	}
	ready("after restart")
	byName("after restart")
	sameResolved("after restart")
	vm.run(ctx, t, "systemctl", "stop", "bridge-agent")
	sameResolved("after stop")
	// A stop takes the agent's names away from the host: link gone, and
	// resolved's configuration as it was before the agent came.
	if out, err := vm.exec(ctx, "ip", "link", "show", "dev", hostdns.LinkName); err == nil {
		t.Errorf("after stop: the link is still there:\n%s", out)
	}
	if diff := cmp.Diff(resolvedBefore, vm.resolvedConfig(ctx, t)); diff != "" {
		t.Errorf("after stop: resolvectl status (-before +after):\n%s", diff)
	}
	if rules, err := agentRules(ctx); err != nil || !hasServiceRules(rules) {
		t.Errorf("after stop the rules are gone (%v):\n%s", err, rules)
	}
	vm.run(ctx, t, "systemctl", "start", "bridge-agent")
	ready("after stop and start")
	byName("after stop and start")
	sameResolved("after stop and start")

	// One agent per host under systemd: a second agent and a cleanup beside
	// the unit's agent are refused, naming its PID; it keeps serving. The
	// record names the directories systemd made for the unit.
	mainPID = unitProp(ctx, t, vm, "MainPID")
	for _, argv := range [][]string{{"bridge-agent", "run"}, {"bridge-agent", "cleanup"}} {
		out, err := vm.exec(ctx, argv...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "(pid "+mainPID+") is running on this host") {
			t.Errorf("%v beside the unit's agent: %v\n%s\nwant exit status 1 naming pid %s", argv, err, out, mainPID)
		}
	}
	if got := unitProp(ctx, t, vm, "MainPID"); got != mainPID {
		t.Errorf("the unit's agent changed: MainPID %s, was %s", got, mainPID)
	}
	byName("beside a refused second agent")
	if rec := vm.run(ctx, t, "cat", "/var/lib/bridge-agent/owned.json"); !strings.Contains(rec, `"/var/lib/bridge-agent"`) || !strings.Contains(rec, `"/run/bridge-agent"`) {
		t.Errorf("record of what the agent made:\n%s\nwant the unit's state and runtime directories", rec)
	}

	// 5. Upgrade with an edited conffile: the edit stays, the agent restarts
	// on the new binary, the rules never go away.
	vm.sh(ctx, t, "echo '# edited on this VM' >> /etc/bridge-agent/config.yaml")
	mainPID = unitProp(ctx, t, vm, "MainPID")
	w := watchRules(ctx)
	start = time.Now()
	out = vm.run(ctx, t, "apt-get", "install", "-y", "/root/"+filepath.Base(newDeb))
	t.Logf("upgrade took %s", time.Since(start).Round(time.Millisecond))
	ready("after upgrade")
	samples, gaps := w.finish()
	if len(gaps) > 0 {
		t.Errorf("during the upgrade the agent's rules were missing in %d of %d samples: %v", len(gaps), samples, gaps)
	} else {
		t.Logf("rules present in all %d samples during the upgrade", samples)
	}
	if v := vm.run(ctx, t, "dpkg-query", "-W", "-f=${Version}", "bridge-agent"); !strings.HasPrefix(v, pkgNewVersion) {
		t.Errorf("after upgrade: version %q\n%s", v, out)
	}
	if v := vm.run(ctx, t, "bridge-agent", "version"); !strings.Contains(v, pkgNewVersion) {
		t.Errorf("after upgrade: bridge-agent version %q", v)
	}
	if got := unitProp(ctx, t, vm, "MainPID"); got == mainPID || got == "0" {
		t.Errorf("upgrade did not restart the agent: MainPID %s, was %s", got, mainPID)
	}
	if !strings.Contains(vm.run(ctx, t, "cat", "/etc/bridge-agent/config.yaml"), "# edited on this VM") {
		t.Errorf("upgrade replaced the edited /etc/bridge-agent/config.yaml")
	}
	vm.run(ctx, t, "test", "-f", "/etc/bridge-agent/kubeconfig")
	if out, _ := vm.exec(ctx, "sh", "-c", "ls /etc/bridge-agent/*.dpkg-* 2>/dev/null"); strings.TrimSpace(string(out)) != "" {
		t.Errorf("upgrade left %s", out)
	}
	byName("after upgrade")
	sameResolved("after upgrade")

	// Someone deletes the agent's link (resolved forgets its settings with
	// it): the periodic check makes it again and sets them again, without
	// touching resolved.
	oldLink := vm.run(ctx, t, "ip", "-o", "link", "show", "dev", hostdns.LinkName)
	vm.run(ctx, t, "ip", "link", "del", "dev", hostdns.LinkName)
	start = time.Now()
	waitFor(t, 90*time.Second, "the deleted link made and wired again", func() error {
		link, err := vm.exec(ctx, "ip", "-o", "link", "show", "dev", hostdns.LinkName)
		if err != nil || string(link) == oldLink {
			return fmt.Errorf("link: %v %s", err, link)
		}
		st, err := vm.exec(ctx, "resolvectl", "status", "--no-pager", hostdns.LinkName)
		if err != nil || !strings.Contains(string(st), "169.254.255.77") || !strings.Contains(string(st), "~cluster.local") {
			return fmt.Errorf("resolved: %v %s", err, st)
		}
		if out, err := vm.exec(ctx, "getent", "ahosts", "web.demo.svc"); err != nil {
			return fmt.Errorf("getent: %v %s", err, out)
		}
		return nil
	})
	t.Logf("the deleted link was made and wired again within %s", time.Since(start).Round(time.Second))
	byName("after the link was deleted")
	sameResolved("after the link was deleted")
	// The periodic checks in between found the settings as wanted and set
	// nothing: one wiring per start (start, restart, stop and start,
	// upgrade) and one for the deleted link.
	if got := countSets() - setsBefore; got != 5 {
		t.Errorf("the agent set resolved's link settings %d times, want 5 (4 starts and the deleted link): a periodic check rewrote settings that were as wanted", got)
	}

	// 6. Purge: nothing of ours stays.
	start = time.Now()
	vm.run(ctx, t, "apt-get", "purge", "-y", "bridge-agent")
	t.Logf("apt-get purge took %s", time.Since(start).Round(time.Millisecond))
	if rules, err := agentRules(ctx); err != nil || rules != "" {
		t.Errorf("after purge: rules of ours (%v):\n%s", err, rules)
	}
	if routes, err := agentRoutes(ctx); err != nil || routes != "" {
		t.Errorf("after purge: routes of ours (%v):\n%s", err, routes)
	}
	if got := strings.TrimSpace(vm.run(ctx, t, "readlink", "/etc/resolv.conf")); got != "../run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("after purge: /etc/resolv.conf links to %q, want resolved's stub-resolv.conf as before", got)
	}
	sameResolved("after purge")
	if diff := cmp.Diff(resolvedBefore, vm.resolvedConfig(ctx, t)); diff != "" {
		t.Errorf("after purge: resolvectl status (-before +after):\n%s", diff)
	}
	if out, err := vm.exec(ctx, "ip", "link", "show", "dev", hostdns.LinkName); err == nil {
		t.Errorf("after purge: the link is still there:\n%s", out)
	}
	if out, _ := vm.exec(ctx, "sh", "-c", "find / -xdev \\( -path /proc -o -path /sys -o -path /root \\) -prune -o -name '*bridge-agent*' -print; "+
		"ls -d /run/bridge-agent /run/bridge-agent.pkg-upgrade /etc/bridge-agent /var/lib/bridge-agent 2>/dev/null; true"); strings.TrimSpace(string(out)) != "" {
		t.Errorf("after purge, files of ours remain:\n%s", out)
	}
	if got := unitState(ctx, vm, "is-active"); got == "active" || got == "activating" {
		t.Errorf("after purge: unit %s", got)
	}
	if out, _ := vm.exec(ctx, "pgrep", "-a", "bridge-agent"); strings.TrimSpace(string(out)) != "" {
		t.Errorf("after purge, still running: %s", out)
	}
	vm.poweroff(t)
	t.Logf("TestPackage took %s", time.Since(testStart).Round(time.Millisecond))
}

// guestResolver is how the VM resolves names before the agent comes.
type guestResolver int

const (
	// legacyResolvConf: a plain /etc/resolv.conf naming the LAN's server;
	// systemd-resolved and systemd-networkd masked.
	legacyResolvConf guestResolver = iota
	// resolvedNetworkd: systemd-resolved, with the uplink managed by
	// systemd-networkd (its DNS server and search domain from the .network
	// file, handed to resolved per link), /etc/resolv.conf the symlink to
	// resolved's stub, as Ubuntu has it; and mDNS on (resolved.conf and the
	// link), so that names under cluster.local are routed to the stub only
	// if routing domains beat mDNS's claim on .local.
	resolvedNetworkd
)

// networkdUplink is the .network file for the VM's uplink in the
// resolvedNetworkd VM. It describes what the testbed configured (the VM
// shares the testbed's VM namespace) and keeps it: KeepConfiguration=yes
// and, in networkd.conf, no management of foreign routes, so networkd
// removes neither the testbed's routes nor the agent's.
const networkdUplink = `[Match]
Name=eth0

[Link]
RequiredForOnline=no

[Network]
Address=10.250.0.10/24
DNS=10.250.0.53
Domains=example.test
MulticastDNS=yes
LLMNR=no
IPv6AcceptRA=no
KeepConfiguration=yes
`

// startVM prepares a pristine copy of the Debian root with what an admin
// copies to a VM (files, the ServiceAccount token and the cluster CA, in
// /root) and the given resolver setup, creates Service demo/web with a
// ready pod and a route for the Service ranges (the VM has no default
// route), and boots it. Cleanups power it off and remove, from outside,
// anything an agent left.
func startVM(ctx context.Context, t *testing.T, dir string, resolver guestResolver, files ...string) (*container, testbed.Pod) {
	t.Helper()
	root := filepath.Join(dir, "vm")
	copyRoot(ctx, t, debianRoot(ctx, t), root)
	// Safety net, run after the container is gone (cleanups run last
	// first): remove whatever the agent left in the VM namespace, as the
	// package's removal should have done already.
	t.Cleanup(func() { hostSideCleanup(t, dir, root) })

	units := filepath.Join(root, "etc", "systemd", "system")
	link := func(target, name string) {
		t.Helper()
		p := filepath.Join(units, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	switch resolver {
	case legacyResolvConf:
		// The VM's own resolver configuration, as a legacy VM has it.
		writeFile(t, filepath.Join(root, "etc", "resolv.conf"), []byte(testbed.HostResolvConf), 0o644)
		for _, u := range []string{"systemd-resolved.service", "systemd-networkd.service", "systemd-networkd.socket"} {
			link("/dev/null", u)
		}
	case resolvedNetworkd:
		writeFile(t, filepath.Join(root, "etc", "systemd", "network", "10-uplink.network"), []byte(networkdUplink), 0o644)
		writeFile(t, filepath.Join(root, "etc", "systemd", "networkd.conf.d", "keep-foreign.conf"),
			[]byte("[Network]\nManageForeignRoutes=no\nManageForeignRoutingPolicyRules=no\n"), 0o644)
		writeFile(t, filepath.Join(root, "etc", "systemd", "resolved.conf.d", "mdns.conf"), []byte("[Resolve]\nMulticastDNS=yes\nLLMNR=no\n"), 0o644)
		link("/lib/systemd/system/systemd-networkd.service", "multi-user.target.wants/systemd-networkd.service")
		link("/lib/systemd/system/systemd-networkd.socket", "sockets.target.wants/systemd-networkd.socket")
		link("/lib/systemd/system/systemd-resolved.service", "multi-user.target.wants/systemd-resolved.service")
		link("/lib/systemd/system/systemd-resolved.service", "dbus-org.freedesktop.resolve1.service")
		os.Remove(filepath.Join(root, "etc", "resolv.conf"))
		if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc", "resolv.conf")); err != nil {
			t.Fatal(err)
		}
	}
	incoming := filepath.Join(root, "root")
	for _, p := range files {
		copyFile(t, p, filepath.Join(incoming, filepath.Base(p)), 0o755)
	}
	token, ca := agentCredentials(t)
	writeFile(t, filepath.Join(incoming, "token"), []byte(token+"\n"), 0o600)
	writeFile(t, filepath.Join(incoming, "ca.crt"), ca, 0o644)

	createService(ctx, t, "demo", "web", v1.ProtocolTCP, 80, "http", map[string]string{"app": "pkg-web"})
	pod := createPod(ctx, t, testbed.PodSpec{Namespace: "demo", Name: "web-1", Labels: map[string]string{"app": "pkg-web"},
		Ports: []testbed.Port{{Name: "http", Port: 8080}}, Ready: true})
	serviceRoutes(ctx, t)

	vm := bootContainer(ctx, t, root, filepath.Join(dir, "console.log"))
	t.Cleanup(func() {
		if t.Failed() && !vm.exited() {
			out, _ := vm.exec(context.Background(), "sh", "-c", "journalctl -u bridge-agent --no-pager -n 80; bridge-agent status; "+
				"cat /etc/resolv.conf; getent ahosts web.demo.svc; ip route; iptables-save | grep -c BRIDGE; nft list ruleset | head -40; "+
				"resolvectl status --no-pager; journalctl -u systemd-resolved -u systemd-networkd --no-pager -n 40")
			t.Logf("in the VM at the failure:\n%s", out)
		}
	})
	if resolver == resolvedNetworkd {
		// networkd has handed the uplink's server to resolved.
		waitFor(t, 60*time.Second, "systemd-resolved knows the uplink's DNS server", func() error {
			out, err := vm.exec(ctx, "resolvectl", "status", "--no-pager", "eth0")
			if err != nil || !strings.Contains(string(out), "10.250.0.53") || !strings.Contains(string(out), "mDNS/IPv4") {
				return fmt.Errorf("%v:\n%s", err, out)
			}
			return nil
		})
	}
	return vm, pod
}

// checkResolved checks the wiring through systemd-resolved: the agent's
// link with the stub and routing-only domains, names resolving through the
// C library (getent, as every program on the host) under svc and under the
// .local cluster domain while mDNS is on, and the agent's own check in its
// status.
func (c *container) checkResolved(ctx context.Context, t *testing.T, what string) {
	t.Helper()
	link := c.run(ctx, t, "resolvectl", "status", "--no-pager", hostdns.LinkName)
	t.Logf("%s: resolvectl status %s:\n%s", what, hostdns.LinkName, link)
	for _, want := range []string{"169.254.255.77", "~cluster.local", "~svc", "-DefaultRoute"} {
		if !strings.Contains(link, want) {
			t.Errorf("%s: resolvectl status %s lacks %q:\n%s", what, hostdns.LinkName, want, link)
		}
	}
	if out := c.run(ctx, t, "resolvectl", "status", "--no-pager", "eth0"); !strings.Contains(out, "mDNS/IPv4") {
		t.Errorf("%s: mDNS is not on for the uplink, so .local routing is not proven:\n%s", what, out)
	}
	svcIP := ""
	for _, name := range []string{"web.demo.svc", "web.demo.svc.cluster.local"} {
		out, err := c.exec(ctx, "getent", "ahosts", name)
		f := strings.Fields(string(out))
		if err != nil || len(f) == 0 {
			t.Errorf("%s: getent ahosts %s: %v\n%s", what, name, err, out)
			continue
		}
		if svcIP == "" {
			svcIP = f[0]
		} else if f[0] != svcIP {
			t.Errorf("%s: getent ahosts %s: %s, but web.demo.svc is %s", what, name, f[0], svcIP)
		}
		t.Logf("%s: getent ahosts %s: %s", what, name, f[0])
	}
	if out := c.run(ctx, t, "resolvectl", "query", "web.demo.svc.cluster.local"); !strings.Contains(out, "link: "+hostdns.LinkName) {
		t.Errorf("%s: resolvectl query of a .local cluster name did not go through the agent's link:\n%s", what, out)
	}
	waitFor(t, 30*time.Second, what+": the agent's check of the host resolver", func() error {
		hr := c.hostResolver(ctx, t)
		if hr.Mode != hostdns.ModeResolved || hr.Check == nil || !hr.Check.OK {
			return fmt.Errorf("host resolver %+v, check %+v", hr, hr.Check)
		}
		return nil
	})
	text := c.run(ctx, t, "bridge-agent", "status")
	if !strings.Contains(text, "resolves through the host's resolver") {
		t.Errorf("%s: bridge-agent status does not show the check:\n%s", what, text)
	}
	t.Logf("%s: bridge-agent status:\n%s", what, text)
}

// resolvedPID is systemd-resolved's main PID in the VM.
func (c *container) resolvedPID(ctx context.Context, t *testing.T) string {
	t.Helper()
	pid := strings.TrimSpace(c.run(ctx, t, "systemctl", "show", "-P", "MainPID", "systemd-resolved"))
	if pid == "" || pid == "0" {
		t.Fatalf("systemd-resolved is not running in the VM")
	}
	return pid
}

// resolvedConfig is `resolvectl status` in the VM (global section and
// every link's), without the lines that change on their own (the server
// resolved happens to be using) and without the alignment that depends on
// them.
func (c *container) resolvedConfig(ctx context.Context, t *testing.T) string {
	t.Helper()
	var keep []string
	for _, l := range strings.Split(c.run(ctx, t, "resolvectl", "status", "--no-pager"), "\n") {
		if !strings.Contains(l, "Current DNS Server:") {
			keep = append(keep, strings.TrimSpace(l))
		}
	}
	return strings.Join(keep, "\n")
}

// resolvedStatus reads the agent's host resolver part of `bridge-agent
// status -o json`.
func (c *container) hostResolver(ctx context.Context, t *testing.T) *hostdns.Result {
	t.Helper()
	out := c.run(ctx, t, "bridge-agent", "status", "-o", "json")
	var s daemon.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("bridge-agent status -o json: %v\n%s", err, out)
	}
	for _, cs := range s.Consumers {
		if cs.Name != "dns" {
			continue
		}
		var d struct {
			HostResolver *hostdns.Result `json:"hostResolver"`
		}
		if err := json.Unmarshal(cs.Details, &d); err != nil || d.HostResolver == nil {
			t.Fatalf("dns status: %v\n%s", err, cs.Details)
		}
		return d.HostResolver
	}
	t.Fatalf("no dns consumer in the status:\n%s", out)
	return nil
}

// waitReady waits until `bridge-agent status` in the VM says ready, and
// checks /readyz.
func (c *container) waitReady(ctx context.Context, t *testing.T, what string) {
	t.Helper()
	waitFor(t, 30*time.Second, what+": bridge-agent status ready", func() error {
		out, err := c.exec(ctx, "bridge-agent", "status", "-o", "json")
		var s daemon.Status
		if err == nil {
			err = json.Unmarshal(out, &s)
		}
		if err != nil || !s.Ready {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if out, err := c.exec(ctx, "curl", "-sSf", "--max-time", "5", "http://127.0.0.1:10356/readyz"); err != nil {
		t.Errorf("%s: /readyz: %v: %s", what, err, out)
	}
}

// waitByName calls the Service by name from inside the VM, through the
// host's resolver, until the pod answers.
func (c *container) waitByName(ctx context.Context, t *testing.T, what, podName string) {
	t.Helper()
	waitFor(t, 60*time.Second, what+": curl http://web.demo.svc", func() error {
		out, err := c.exec(ctx, "curl", "-sS", "--http0.9", "--max-time", "3", "http://web.demo.svc/")
		if got := strings.TrimSpace(string(out)); err != nil || got != podName {
			return fmt.Errorf("%v: %q", err, got)
		}
		return nil
	})
}

// unitState runs `systemctl <verb> bridge-agent` (is-active, is-enabled)
// and returns what it printed.
func unitState(ctx context.Context, vm *container, verb string) string {
	out, _ := vm.exec(ctx, "systemctl", verb, "bridge-agent")
	return strings.TrimSpace(string(out))
}

// unitProp returns one property of the unit.
func unitProp(ctx context.Context, t *testing.T, vm *container, prop string) string {
	t.Helper()
	return strings.TrimSpace(vm.run(ctx, t, "systemctl", "show", "-P", prop, "bridge-agent"))
}

// agentCredentials returns the token and CA of the testbed's least-privilege
// kubeconfig, as a cluster admin would hand them out.
func agentCredentials(t *testing.T) (token string, ca []byte) {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(tb.AgentKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx := kc.Contexts[kc.CurrentContext]
	if ctx == nil {
		t.Fatalf("%s: no current context", tb.AgentKubeconfig)
	}
	return kc.AuthInfos[ctx.AuthInfo].Token, kc.Clusters[ctx.Cluster].CertificateAuthorityData
}

// hostSideCleanup removes, from outside, whatever an agent in the container
// may have left in the VM namespace (rules, routes; files under root), so a
// failed run does not disturb the tests after it.
func hostSideCleanup(t *testing.T, dir, root string) {
	cfg := config.Default()
	cfg.HostRoot = root
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Error(err)
		return
	}
	path := filepath.Join(dir, "cleanup.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Error(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := tb.Exec(ctx, tb.VMNetns, agentBin, "cleanup", "--config", path); err != nil {
		t.Errorf("host-side cleanup: %v\n%s", err, out)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b, mode)
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// rpmScriptlets are the scriptlets `rpm -qp --scripts` prints, by the name
// it gives them, and the maintainer script each must be.
var rpmScriptlets = map[string]string{
	"preinstall":    "preinstall.sh",
	"postinstall":   "postinstall.sh",
	"preuninstall":  "preremove.sh",
	"postuninstall": "postremove.sh",
}

// TestPackageRPM checks the .rpm: its files, config files, metadata and
// scriptlets (the same scripts as the .deb's maintainer scripts), then
// installs and erases it with rpm into a copy of the Debian root, inside a
// network namespace of its own.
func TestPackageRPM(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Fatalf("rpm is not installed (apt-get install rpm): %v", err)
	}
	dir := t.TempDir()
	pkg := pick(t, buildPackages(ctx, t, filepath.Join(dir, "dist"), pkgVersion, "rpm"), ".rpm")
	rpm := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "rpm", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("rpm %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	files := rpm("-qpl", pkg)
	for _, f := range []string{"/usr/bin/bridge-agent", "/etc/bridge-agent/config.yaml", "/usr/lib/systemd/system/bridge-agent.service",
		"/usr/lib/tmpfiles.d/bridge-agent.conf", "/usr/share/man/man8/bridge-agent.8.gz", "/usr/share/bridge-agent/rbac.yaml"} {
		if !strings.Contains(files, f+"\n") {
			t.Errorf("rpm -qpl: %s missing:\n%s", f, files)
		}
	}
	if got := strings.TrimSpace(rpm("-qpc", pkg)); got != "/etc/bridge-agent/config.yaml" {
		t.Errorf("rpm -qpc: %q, want /etc/bridge-agent/config.yaml", got)
	}
	// %config(noreplace): file flags include config (1) and noreplace (16).
	flags := rpm("-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", pkg)
	if !strings.Contains(flags, "/etc/bridge-agent/config.yaml cn\n") {
		t.Errorf("config.yaml is not %%config(noreplace):\n%s", flags)
	}
	// %doc (flag d): README, changelog, copyright; %license (l): the
	// license text.
	for _, f := range []string{"README.md", "changelog.gz", "copyright"} {
		if !strings.Contains(flags, "/usr/share/doc/bridge-agent/"+f+" d\n") {
			t.Errorf("%s is not %%doc:\n%s", f, flags)
		}
	}
	if !strings.Contains(flags, "/usr/share/licenses/bridge-agent/LICENSE l\n") {
		t.Errorf("LICENSE is not %%license:\n%s", flags)
	}
	if !strings.Contains(files, "/usr/lib/systemd/system-preset/80-bridge-agent.preset\n") {
		t.Errorf("rpm -qpl: no preset:\n%s", files)
	}
	info := rpm("-qpi", pkg)
	for _, want := range []string{"Name        : bridge-agent", "Version     : " + pkgVersion, "License     : Apache-2.0", "Architecture: "} {
		if !strings.Contains(info, want) {
			t.Errorf("rpm -qpi: no %q:\n%s", want, info)
		}
	}
	t.Logf("rpm -qpi:\n%s", info)
	req := rpm("-qpR", pkg)
	for _, want := range []string{"(nftables or iptables-nft)", "iproute"} {
		if !strings.Contains(req, want) {
			t.Errorf("rpm -qpR: no %q:\n%s", want, req)
		}
	}

	// Scriptlets: exactly the maintainer scripts of the .deb.
	scripts := rpm("-qp", "--scripts", pkg)
	got := map[string]string{}
	var name string
	for _, line := range strings.SplitAfter(scripts, "\n") {
		if m := regexp.MustCompile(`^(\w+) scriptlet \(using (\S+)\):\n$`).FindStringSubmatch(line); m != nil {
			name = m[1]
			continue
		}
		got[name] += line
	}
	for scriptlet, file := range rpmScriptlets {
		want, err := os.ReadFile(filepath.Join(repoRoot(t), "packaging", "scripts", file))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(got[scriptlet]) != strings.TrimSpace(string(want)) {
			t.Errorf("%s scriptlet is not packaging/scripts/%s:\n%s", scriptlet, file, got[scriptlet])
		}
	}

	// Install into a copy of the Debian root, scriptlets and all. No
	// systemd runs there, so the unit is enabled but not started. The
	// erase runs `bridge-agent cleanup`, which must touch no real network
	// namespace: rpm runs in an empty one of its own.
	root := filepath.Join(dir, "root")
	copyRoot(ctx, t, debianRoot(ctx, t), root)
	inOwnNetns := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "unshare", append([]string{"--net", "rpm", "--root", root}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := inOwnNetns("-i", "--nodeps", pkg)
	if err != nil {
		t.Fatalf("rpm -i --root: %v\n%s", err, out)
	}
	t.Logf("rpm -i --root --nodeps:\n%s", out)
	for _, f := range []string{"usr/bin/bridge-agent", "etc/bridge-agent/config.yaml", "usr/lib/systemd/system/bridge-agent.service",
		"etc/systemd/system/multi-user.target.wants/bridge-agent.service"} {
		if _, err := os.Lstat(filepath.Join(root, f)); err != nil {
			t.Errorf("after rpm -i: %v", err)
		}
	}
	if !strings.Contains(out, "systemd is not running here") {
		t.Errorf("rpm -i: %%post did not report the missing systemd:\n%s", out)
	}
	writeFile(t, filepath.Join(root, "etc", "bridge-agent", "config.yaml"), append(mustRead(t, filepath.Join(root, "etc", "bridge-agent", "config.yaml")), "# edited\n"...), 0o644)
	out, err = inOwnNetns("-e", "bridge-agent")
	if err != nil {
		t.Fatalf("rpm -e --root: %v\n%s", err, out)
	}
	t.Logf("rpm -e --root:\n%s", out)
	for _, f := range []string{"usr/bin/bridge-agent", "usr/lib/systemd/system/bridge-agent.service",
		"etc/systemd/system/multi-user.target.wants/bridge-agent.service", "var/lib/bridge-agent", "etc/bridge-agent/config.yaml"} {
		if _, err := os.Lstat(filepath.Join(root, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after rpm -e: %s: %v", f, err)
		}
	}
	// An edited %config(noreplace) file is kept as .rpmsave, RPM's way.
	if _, err := os.Stat(filepath.Join(root, "etc", "bridge-agent", "config.yaml.rpmsave")); err != nil {
		t.Errorf("after rpm -e: the edited config was not saved: %v", err)
	}

	// %post applies presets rather than enabling: a host whose presets
	// disable the unit (here, an admin's file sorting before the
	// package's) gets it installed and not enabled.
	writeFile(t, filepath.Join(root, "etc", "systemd", "system-preset", "10-local.preset"), []byte("disable bridge-agent.service\n"), 0o644)
	out, err = inOwnNetns("-i", "--nodeps", pkg)
	if err != nil {
		t.Fatalf("rpm -i --root, presets disabling the unit: %v\n%s", err, out)
	}
	t.Logf("rpm -i --root --nodeps, presets disabling the unit:\n%s", out)
	if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/bridge-agent.service")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the host's preset disables the unit, yet rpm -i enabled it: %v", err)
	}
	if out, err := inOwnNetns("-e", "bridge-agent"); err != nil {
		t.Fatalf("rpm -e --root: %v\n%s", err, out)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPackageBareBinary installs the bare binary as a tarball user would:
// `bridge-agent install` writes the packaged unit (ExecStart naming this
// binary) and the default configuration, `start` and `stop` control it,
// `uninstall` removes the unit and everything the agent made.
func TestPackageBareBinary(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	vm, pod := startVM(ctx, t, dir, legacyResolvConf, agentBin)
	vm.run(ctx, t, "install", "-m", "0755", "/root/bridge-agent", "/usr/local/bin/bridge-agent")

	out := vm.run(ctx, t, "bridge-agent", "install")
	t.Logf("bridge-agent install:\n%s", out)
	unit := vm.run(ctx, t, "cat", "/etc/systemd/system/bridge-agent.service")
	want := strings.Replace(systemd.Unit, "ExecStart="+systemd.ExecStart, "ExecStart=/usr/local/bin/bridge-agent run --config /etc/bridge-agent/config.yaml", 1)
	if unit != want {
		t.Errorf("installed unit:\n%s\nwant the packaged one with this binary:\n%s", unit, want)
	}
	if got := vm.run(ctx, t, "cat", "/etc/bridge-agent/config.yaml"); got != string(packaging.Config) {
		t.Errorf("install did not write the default configuration:\n%s", got)
	}
	if got := unitState(ctx, vm, "is-enabled"); got != "enabled" {
		t.Errorf("after install: is-enabled %q", got)
	}
	if out, err := vm.exec(ctx, "systemd-analyze", "verify", "--man=no", "bridge-agent.service"); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	vm.run(ctx, t, "bridge-agent", "kubeconfig", "--server", tb.APIServerURL, "--token-file", "/root/token", "--ca-file", "/root/ca.crt",
		"-o", "/etc/bridge-agent/kubeconfig")
	vm.run(ctx, t, "bridge-agent", "start")
	waitFor(t, 60*time.Second, "bridge-agent start: active", func() error {
		if got := unitState(ctx, vm, "is-active"); got != "active" {
			return fmt.Errorf("is-active %q", got)
		}
		return nil
	})
	vm.waitReady(ctx, t, "after bridge-agent start")
	vm.waitByName(ctx, t, "after bridge-agent start", pod.Name)

	vm.run(ctx, t, "bridge-agent", "stop")
	if got := unitState(ctx, vm, "is-active"); got != "inactive" {
		t.Errorf("after bridge-agent stop: is-active %q", got)
	}
	if rules, err := agentRules(ctx); err != nil || !hasServiceRules(rules) {
		t.Errorf("after stop the rules are gone (%v):\n%s", err, rules)
	}

	out = vm.run(ctx, t, "bridge-agent", "uninstall")
	t.Logf("bridge-agent uninstall:\n%s", out)
	if out, _ := vm.exec(ctx, "sh", "-c", "ls -d /etc/systemd/system/bridge-agent.service /etc/systemd/system/*/bridge-agent.service /etc/tmpfiles.d/bridge-agent.conf /var/lib/bridge-agent /run/bridge-agent 2>/dev/null; true"); strings.TrimSpace(string(out)) != "" {
		t.Errorf("after uninstall, files remain:\n%s", out)
	}
	if rules, err := agentRules(ctx); err != nil || rules != "" {
		t.Errorf("after uninstall: rules of ours (%v):\n%s", err, rules)
	}
	if routes, err := agentRoutes(ctx); err != nil || routes != "" {
		t.Errorf("after uninstall: routes of ours (%v):\n%s", err, routes)
	}
	if got := vm.run(ctx, t, "cat", "/etc/resolv.conf"); got != testbed.HostResolvConf {
		t.Errorf("after uninstall: /etc/resolv.conf is\n%s", got)
	}
	vm.poweroff(t)
}
