package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// stateRoot records every running testbed so that the next Start can clean
// up after a test process that died without calling Stop.
const stateRoot = "/run/bridge-agent-testbed"

// runIP runs `ip args...` and returns its stdout.
func runIP(ctx context.Context, args ...string) ([]byte, error) {
	return runCmd(ctx, nil, "ip", args...)
}

// ipBatch runs the ip commands cmds (one per line, without the leading "ip")
// inside network namespace ns, in a single process.
func ipBatch(ctx context.Context, ns string, cmds []string) error {
	if len(cmds) == 0 {
		return nil
	}
	in := strings.NewReader(strings.Join(cmds, "\n") + "\n")
	_, err := runCmd(ctx, in, "ip", "-n", ns, "-batch", "-")
	return err
}

// nsExec runs argv inside network namespace ns and returns its stdout.
func nsExec(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	return runCmd(ctx, nil, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// sysctl sets network kernel parameters ("net.ipv4.ip_forward=1") inside
// network namespace ns, never in the root namespace: /proc/sys/net shows
// the namespace of the thread that opens it.
func sysctl(ns string, kv ...string) error {
	return inNetns(ns, func() error {
		for _, s := range kv {
			k, v, ok := strings.Cut(s, "=")
			if !ok || !strings.HasPrefix(k, "net.") {
				return fmt.Errorf("sysctl %q: want net.<key>=<value>", s)
			}
			path := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
			if err := os.WriteFile(path, []byte(v), 0); err != nil {
				return fmt.Errorf("sysctl %s: %w", s, err)
			}
		}
		return nil
	})
}

func runCmd(ctx context.Context, stdin *strings.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// addNetns creates network namespace name with its loopback up and IPv6
// duplicate address detection off. Without DAD a new interface's
// link-local address is usable at once; otherwise a router cannot solicit
// neighbors for forwarded packets until it is, which stalls the first
// packets for a second or two.
func addNetns(ctx context.Context, name string) error {
	if _, err := runIP(ctx, "netns", "add", name); err != nil {
		return fmt.Errorf("add netns: %w", err)
	}
	if err := sysctl(name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
		return fmt.Errorf("add netns: %w", err)
	}
	if err := ipBatch(ctx, name, []string{"link set lo up"}); err != nil {
		return fmt.Errorf("add netns: %w", err)
	}
	return nil
}

// listNetns returns the names of the namespaces in `ip netns list` that
// belong to the testbed with the given prefix.
func listNetns(ctx context.Context, prefix string) ([]string, error) {
	out, err := runIP(ctx, "netns", "list")
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// netnsPids returns the processes that live in network namespace ns,
// except this one.
func netnsPids(ctx context.Context, ns string) []int {
	out, err := runIP(ctx, "netns", "pids", ns)
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killNetnsPids SIGKILLs every process that lives in network namespace ns
// and waits briefly for them to be gone.
func killNetnsPids(ctx context.Context, ns string) {
	pids := netnsPids(ctx, ns)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(3 * time.Second); len(pids) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		pids = netnsPids(ctx, ns)
	}
}

// deleteNetns kills the processes inside ns and deletes it.
func deleteNetns(ctx context.Context, ns string) error {
	killNetnsPids(ctx, ns)
	if _, err := runIP(ctx, "netns", "del", ns); err != nil {
		if _, statErr := os.Stat(filepath.Join("/run/netns", ns)); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete netns: %w", err)
	}
	return nil
}

// inNetns runs fn on a dedicated OS thread switched into network namespace
// ns. Sockets created by fn stay in ns after the thread switches back.
func inNetns(ns string, fn func() error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime then discards it when
			// this goroutine exits instead of reusing a thread in ns.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// dialIn returns a dial function whose sockets are created inside ns.
func dialIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial %s %s in %s: %w", network, addr, ns, err)
		}
		return c, nil
	}
}

// listenIn opens a stream listener inside ns.
func listenIn(ns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(ns, func() error {
		var err error
		l, err = (&net.ListenConfig{}).Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, ns, err)
	}
	return l, nil
}

// listenPacketIn opens a packet listener inside ns.
func listenPacketIn(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(ns, func() error {
		var err error
		pc, err = (&net.ListenConfig{}).ListenPacket(context.Background(), network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, ns, err)
	}
	return pc, nil
}

// owner identifies a process across pid reuse.
type owner struct {
	pid   int
	start string // start time in clock ticks since boot, from /proc/<pid>/stat
}

// processStat returns the state (field 3) and start time (field 22) of a
// process from /proc/<pid>/stat.
func processStat(pid int) (state, start string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", "", err
	}
	// The command name (field 2) may contain spaces; the fields after it
	// are space separated.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return f[0], f[19], nil
}

// alive reports whether the owner still runs (a zombie does not).
func (o owner) alive() bool {
	state, start, err := processStat(o.pid)
	return err == nil && start == o.start && state != "Z" && state != "X"
}

// recordRun writes the state directory of a run owned by this process.
// ownedWorkDir, if set, is removed by whoever cleans up the run.
func recordRun(prefix, ownedWorkDir string) (string, error) {
	dir := filepath.Join(stateRoot, prefix)
	if err := os.MkdirAll(stateRoot, 0o755); err != nil {
		return "", fmt.Errorf("record run: %w", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("record run: prefix %q is in use by another testbed", prefix)
		}
		return "", fmt.Errorf("record run: %w", err)
	}
	pid := os.Getpid()
	_, start, err := processStat(pid)
	if err != nil {
		return "", fmt.Errorf("record run: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(fmt.Sprintf("%d %s\n", pid, start)), 0o644); err != nil {
		return "", fmt.Errorf("record run: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "workdir"), []byte(ownedWorkDir), 0o644); err != nil {
		return "", fmt.Errorf("record run: %w", err)
	}
	return dir, nil
}

func readOwner(dir string) (owner, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		return owner{}, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return owner{}, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return owner{}, false
	}
	return owner{pid: pid, start: f[1]}, true
}

// CleanupStale removes what testbeds of dead processes left behind: for each
// run recorded under /run/bridge-agent-testbed whose owning process is gone,
// it kills the processes in the run's namespaces, deletes the namespaces and
// its work directory (when the run created it) and forgets the run. Start
// calls it; it is exported for tools that only want to clean up.
func CleanupStale() error {
	entries, err := os.ReadDir(stateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleanup stale: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(stateRoot, e.Name())
		o, ok := readOwner(dir)
		if ok && o.alive() {
			continue
		}
		if !ok {
			// A run being recorded right now has no owner file yet for a
			// moment; only treat it as stale once it is not fresh.
			if fi, err := os.Stat(dir); err == nil && time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		}
		if err := cleanupRun(context.Background(), e.Name(), dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup stale: %w", err)
	}
	return nil
}

// cleanupRun deletes every namespace of the run with the given prefix, its
// owned work directory and its state directory.
// netnsEtc is where `ip netns exec NAME` finds files to bind over /etc
// inside NAME (ip-netns(8)): /etc/netns/NAME/resolv.conf becomes that
// namespace's /etc/resolv.conf, and nothing else's.
const netnsEtc = "/etc/netns"

// SetVMResolvConf makes programs started in the VM namespace with `ip netns
// exec` (Exec, Command) read path as their /etc/resolv.conf, the way a
// program on a real VM reads the host's: point it at an agent's host root
// and the VM's libc resolves through that agent's DNS stub. Only the VM
// namespace is affected; an empty path or Stop undoes it.
func (t *Testbed) SetVMResolvConf(path string) error {
	dir := filepath.Join(netnsEtc, t.VMNetns)
	if path == "" {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("vm resolv.conf: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("vm resolv.conf: %w", err)
	}
	link := filepath.Join(dir, "resolv.conf")
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vm resolv.conf: %w", err)
	}
	if err := os.Symlink(path, link); err != nil {
		return fmt.Errorf("vm resolv.conf: %w", err)
	}
	return nil
}

func cleanupRun(ctx context.Context, prefix, stateDir string) error {
	var errs []error
	names, err := listNetns(ctx, prefix)
	if err != nil {
		errs = append(errs, err)
	}
	// Kill first everywhere, then delete, so that no process is moved
	// around between namespaces being deleted.
	for _, ns := range names {
		killNetnsPids(ctx, ns)
	}
	for _, ns := range names {
		if err := deleteNetns(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(netnsEtc, prefix+"-vm")); err != nil {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(filepath.Join(stateDir, "workdir")); err == nil {
		if wd := strings.TrimSpace(string(b)); wd != "" {
			if err := os.RemoveAll(wd); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(stateDir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up run %s: %w", prefix, err)
	}
	return nil
}
