package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// proc is a child process of the testbed running inside a namespace, with
// its output in a log file under the work directory.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // valid once done is closed
}

// netnsCommand returns a command that runs argv inside network namespace ns
// and is killed when this process dies.
func netnsCommand(ns string, argv ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// startProc starts argv inside ns, logging to logs/<name>.log.
func (t *Testbed) startProc(name, ns string, argv ...string) (*proc, error) {
	logPath := filepath.Join(t.WorkDir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := netnsCommand(ns, argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.log.Debug("started", "proc", name, "pid", cmd.Process.Pid, "netns", ns)
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop terminates the process: SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // a paused process (PauseKubeDNS) must see the SIGTERM
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// exitError describes an unexpected exit with the end of the process's log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s exited (%v); end of %s:\n%s", p.name, p.err, p.logPath, tail(p.logPath, 25))
}

// tail returns the last lines of file path.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), lines)
}

// lastLines returns the last lines of s.
func lastLines(s string, lines int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// waitFor polls cond until it succeeds, ctx ends, timeout passes or one of
// procs exits.
func waitFor(ctx context.Context, what string, timeout time.Duration, procs []*proc, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		err := cond(cctx)
		ccancel()
		if err == nil {
			return nil
		}
		for _, p := range procs {
			if p.exited() {
				return fmt.Errorf("wait for %s: %w", what, p.exitError())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// startEtcd starts etcd on 127.0.0.1 of the control plane namespace.
func (t *Testbed) startEtcd() error {
	dataDir := filepath.Join(t.WorkDir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	p, err := t.startProc("etcd", t.CPNetns, filepath.Join(t.BinDir, "etcd"),
		"--name=testbed",
		"--data-dir="+dataDir,
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=testbed=http://127.0.0.1:2380",
		"--listen-metrics-urls=",
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	t.etcd = p
	return nil
}

// apiServerArgs returns the kube-apiserver command line.
func (t *Testbed) apiServerArgs() []string {
	return []string{
		filepath.Join(t.BinDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--advertise-address=" + cpIPv4,
		fmt.Sprintf("--secure-port=%d", apiServerPort),
		"--tls-cert-file=" + t.pki.servingCert,
		"--tls-private-key-file=" + t.pki.servingKey,
		"--cert-dir=" + filepath.Join(t.WorkDir, "apiserver-certs"),
		"--token-auth-file=" + t.pki.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc." + clusterDomain,
		"--service-account-key-file=" + t.pki.saPub,
		"--service-account-signing-key-file=" + t.pki.saKey,
		// A token requested with the TokenRequest API lives as long as asked
		// (down to the API's 10 minutes), never extended: the tests of host
		// token renewal need short tokens to be really short.
		"--service-account-extend-token-expiration=false",
		"--service-cluster-ip-range=" + serviceCIDRv4 + "," + serviceCIDRv6,
		// There is no serviceaccount controller to create default
		// ServiceAccounts, so pods must not require one.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--allow-privileged=true",
		"--event-ttl=10m",
		"--v=0",
	}
}

// startAPIServer starts kube-apiserver and waits until /readyz succeeds.
func (t *Testbed) startAPIServer(ctx context.Context) error {
	p, err := t.startProc("kube-apiserver", t.CPNetns, t.apiServerArgs()...)
	if err != nil {
		return err
	}
	t.apiserver = p
	rc := t.Client.Discovery().RESTClient()
	return waitFor(ctx, "kube-apiserver ready", 90*time.Second, []*proc{t.etcd, p}, func(ctx context.Context) error {
		body, err := rc.Get().AbsPath("/readyz").Do(ctx).Raw()
		if err != nil {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(body))
		}
		return nil
	})
}

// apiServerGrace bounds kube-apiserver's graceful shutdown: it stops
// listening at once but then waits up to a minute for open watches, which
// the testbed does not need.
const apiServerGrace = 2 * time.Second

// StopAPIServer stops kube-apiserver (etcd and its data stay), for tests
// of API server outages.
func (t *Testbed) StopAPIServer() error {
	t.cpMu.Lock()
	defer t.cpMu.Unlock()
	if t.apiserver == nil {
		return errors.New("stop kube-apiserver: not running")
	}
	t.apiserver.stop(apiServerGrace)
	t.apiserver = nil
	t.log.Info("kube-apiserver stopped")
	return nil
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, with the
// same data, and waits until it is ready.
func (t *Testbed) StartAPIServer(ctx context.Context) error {
	t.cpMu.Lock()
	defer t.cpMu.Unlock()
	if t.apiserver != nil && !t.apiserver.exited() {
		return errors.New("start kube-apiserver: already running")
	}
	start := time.Now()
	if err := t.startAPIServer(ctx); err != nil {
		return err
	}
	// kube-controller-manager's watches come back with client-go's backoff
	// and its EndpointSlice controller then waits out "informer cache is
	// out of date" retries: on this machine a minute without EndpointSlice
	// updates. Tests of the agent need a cluster that keeps up, so the
	// controller manager is restarted with the API server.
	if t.kcm != nil {
		t.kcm.stop(2 * time.Second)
	}
	if err := t.startControllerManager(); err != nil {
		return err
	}
	t.log.Info("kube-apiserver started", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// startControllerManager starts kube-controller-manager with only the
// EndpointSlice controller.
func (t *Testbed) startControllerManager() error {
	p, err := t.startProc("kube-controller-manager", t.CPNetns,
		filepath.Join(t.BinDir, "kube-controller-manager"),
		"--kubeconfig="+t.AdminKubeconfig,
		"--controllers="+controllers,
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--secure-port=0",
		"--v=0",
	)
	if err != nil {
		return err
	}
	t.kcm = p
	return nil
}

// controllers is the kube-controller-manager controller set: the real
// EndpointSlice controller, and the garbage collector that removes a
// deleted Service's EndpointSlices through their owner references (without
// it they outlive the Service, which no real cluster does).
const controllers = "endpointslice-controller,garbage-collector-controller"

// newAdminConfig returns the admin rest.Config whose connections are
// dialled from inside the control plane namespace.
func (t *Testbed) newAdminConfig() (*rest.Config, kubernetes.Interface, error) {
	cfg := &rest.Config{
		Host:            t.APIServerURL,
		BearerToken:     t.pki.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: t.pki.caPEM},
		Dial:            dialIn(t.CPNetns),
		QPS:             200,
		Burst:           400,
		UserAgent:       "bridge-agent-testbed",
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("admin client: %w", err)
	}
	return cfg, cs, nil
}
