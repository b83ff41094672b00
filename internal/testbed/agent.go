package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
)

// BuildAgent builds cmd/bridge-agent into dir and returns the binary's path.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	root := findRepoFile("go.mod")
	if root == "" {
		return "", errors.New("build agent: repository root not found")
	}
	out := filepath.Join(dir, "bridge-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/bridge-agent")
	cmd.Dir = filepath.Dir(root)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %w\n%s", err, b)
	}
	return out, nil
}

// Agent is a bridge-agent process running in the testbed's VM namespace,
// with its own temporary host root.
type Agent struct {
	Binary     string
	Dir        string // holds config.yaml, agent.log and root/
	ConfigPath string
	HostRoot   string
	Config     *config.Config
	// Env is added to the agent's environment (e.g. XTABLES_LOCKFILE).
	Env []string
	// Netns is where the agent runs (default: the VM, VMNetns); another
	// host's namespace (AddHost) makes a second joined host.
	Netns   string
	tb      *Testbed
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
}

// AgentConfig returns the configuration the testbed gives an agent: the
// least-privilege kubeconfig, a host root inside dir, fast syncs.
func (t *Testbed) AgentConfig(dir string) *config.Config {
	c := config.Default()
	c.Kubeconfig = t.AgentKubeconfig
	c.HostRoot = filepath.Join(dir, "root")
	c.ServiceCIDRs = t.ServiceCIDRs
	c.Proxy.MinSyncPeriod = metav1.Duration{Duration: 100 * time.Millisecond}
	c.Proxy.SyncPeriod = metav1.Duration{Duration: 10 * time.Second}
	return c
}

// HostResolvConf is the resolv.conf the VM's host root starts with: the
// sandbox's upstream resolver, as a legacy VM would list its site's DNS.
const HostResolvConf = "# the VM's resolvers\nsearch example.test\nnameserver " + upstreamIPv4 + "\nnameserver " + upstreamIPv6 + "\noptions edns0 timeout:2\n"

// writeHostResolvConf gives a host root an /etc/resolv.conf naming the
// sandbox's upstream resolver, unless it has one.
func writeHostResolvConf(root string) error {
	path := filepath.Join(root, "etc", "resolv.conf")
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(HostResolvConf), 0o644)
}

// NewAgent writes cfg (nil: AgentConfig) into dir and returns an Agent that
// is not started yet.
func (t *Testbed) NewAgent(binary, dir string, cfg *config.Config) (*Agent, error) {
	if cfg == nil {
		cfg = t.AgentConfig(dir)
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if err := os.MkdirAll(cfg.HostRoot, 0o755); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if err := writeHostResolvConf(cfg.HostRoot); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	return &Agent{Binary: binary, Dir: dir, ConfigPath: path, HostRoot: cfg.HostRoot, Config: cfg, tb: t}, nil
}

func (a *Agent) netns() string {
	if a.Netns != "" {
		return a.Netns
	}
	return a.tb.VMNetns
}

// Start runs the agent in its namespace (the VM's unless Netns says
// otherwise), logging to Dir/agent.log.
func (a *Agent) Start(extraArgs ...string) error {
	if a.cmd != nil && !a.Exited() {
		return errors.New("agent: already running")
	}
	logf, err := os.OpenFile(a.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	argv := append([]string{a.Binary, "run", "--config", a.ConfigPath}, extraArgs...)
	cmd := netnsCommand(a.netns(), argv...)
	cmd.Env = append(os.Environ(), a.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("agent: start: %w", err)
	}
	a.cmd, a.done = cmd, make(chan struct{})
	go func() {
		a.exitErr = cmd.Wait()
		logf.Close()
		close(a.done)
	}()
	return nil
}

// LogPath is the agent's log file.
func (a *Agent) LogPath() string { return filepath.Join(a.Dir, "agent.log") }

// Log returns the end of the agent's log.
func (a *Agent) Log() string { return tail(a.LogPath(), 40) }

// PID returns the agent's process id (0 when never started).
func (a *Agent) PID() int {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Exited reports whether the agent process has ended.
func (a *Agent) Exited() bool {
	if a.done == nil {
		return true
	}
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits up to 10 s for the agent to exit; it returns
// the process's exit error.
func (a *Agent) Stop() error { return a.signal(syscall.SIGTERM, 10*time.Second) }

// Kill sends SIGKILL and waits for the process to go.
func (a *Agent) Kill() error {
	_ = a.signal(syscall.SIGKILL, 10*time.Second)
	return nil
}

func (a *Agent) signal(sig syscall.Signal, wait time.Duration) error {
	if a.cmd == nil || a.Exited() {
		return a.exitErr
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case <-a.done:
		return a.exitErr
	case <-time.After(wait):
		_ = a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("agent: did not exit within %s after %s", wait, sig)
	}
}

// Run runs one bridge-agent subcommand (status, cleanup, ...) with the
// agent's configuration inside the VM namespace and returns its output.
func (a *Agent) Run(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{a.Binary}, args...)
	argv = append(argv, "--config", a.ConfigPath)
	cmd := netnsCommand(a.netns(), argv...)
	cmd.Env = append(os.Environ(), a.Env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("bridge-agent %v: %w: %s", args, err, out)
	}
	return out, nil
}

// Status runs `bridge-agent status -o json` and decodes it.
func (a *Agent) Status(ctx context.Context) (*daemon.Status, error) {
	out, err := a.Run(ctx, "status", "-o", "json")
	if err != nil {
		return nil, err
	}
	var st daemon.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("status: decode: %w", err)
	}
	return &st, nil
}

// WaitStatus polls Status until cond holds or timeout passes; it returns
// the last status seen. It fails fast when the agent process exits.
func (a *Agent) WaitStatus(ctx context.Context, timeout time.Duration, cond func(*daemon.Status) bool) (*daemon.Status, error) {
	deadline := time.Now().Add(timeout)
	var last *daemon.Status
	var lastErr error
	for {
		if a.Exited() {
			return last, fmt.Errorf("agent exited (%v); log:\n%s", a.exitErr, a.Log())
		}
		st, err := a.Status(ctx)
		if err == nil {
			last = st
			if cond(st) {
				return st, nil
			}
		}
		lastErr = err
		if time.Now().After(deadline) {
			return last, fmt.Errorf("agent status: condition not met within %s (last error: %v); log:\n%s", timeout, lastErr, a.Log())
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitReady waits until the agent reports ready.
func (a *Agent) WaitReady(ctx context.Context, timeout time.Duration) (*daemon.Status, error) {
	return a.WaitStatus(ctx, timeout, func(s *daemon.Status) bool { return s.Ready })
}
