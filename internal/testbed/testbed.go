// Package testbed runs a real, small Kubernetes cluster in network
// namespaces of the local host, for end-to-end tests, demos and benchmarks
// of bridge-agent.
//
// The cluster is made of real parts: etcd, kube-apiserver,
// kube-controller-manager (only the EndpointSlice controller) and CoreDNS
// as kube-dns. The testbed itself plays kubelet and the CNI plugin: nodes
// and pods are network namespaces, pods run in-process test servers.
//
// Topology (dual-stack; every namespace name starts with the testbed's
// prefix):
//
//	<prefix>-lan  bridge joining the LAN 10.250.0.0/24, fd00:250::/64
//	<prefix>-cp   control plane, 10.250.0.2 / fd00:250::2 (API server :6443)
//	<prefix>-vm   the host bridge-agent joins, 10.250.0.10 / fd00:250::10,
//	              with no route to pods or services
//	<prefix>-nN   node-N, 10.250.0.(20+N), pods in 10.244.N.0/24, fd00:244:N::/64
//	<prefix>-up   upstream DNS server, 10.250.0.53 / fd00:250::53
//	<prefix>-pK   one namespace per pod
//
// Services get cluster IPs from 10.96.0.0/16 and fd00:96::/112; kube-dns
// is 10.96.0.10 / fd00:96::10.
//
// Nothing is changed in the host's root network namespace. The test
// process reaches the cluster through sockets created inside the
// namespaces (see DialContext). Start and Stop need root.
package testbed

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Options configure Start. The zero value is usable.
type Options struct {
	// Nodes is the number of cluster nodes (default 2, at most 30).
	Nodes int
	// Prefix starts every namespace name: 1 to 8 lower-case letters or
	// digits. Default "ba" and 4 random hex digits.
	Prefix string
	// WorkDir holds certificates, kubeconfigs, etcd data and the
	// components' logs (logs/*.log). Default: a new temporary directory,
	// removed by Stop. A given WorkDir is kept; its etcd data is wiped on
	// Start.
	WorkDir string
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and
	// coredns. Default: $BRIDGE_AGENT_BIN_DIR, else the directory printed
	// by hack/build-tools.sh, which builds them once into a cache.
	BinDir string
	// Log receives progress messages; nil discards them.
	Log *slog.Logger
}

// Testbed is a running sandbox cluster. Its fields are read-only.
type Testbed struct {
	// Client is an admin client of the cluster; AdminConfig its
	// configuration, which dials from inside the control plane namespace.
	Client      kubernetes.Interface
	AdminConfig *rest.Config

	Prefix        string // namespace name prefix
	LANNetns      string // namespace of the LAN bridge
	CPNetns       string // control plane namespace
	VMNetns       string // namespace of the host that bridge-agent joins
	UpstreamNetns string // namespace of the upstream DNS server
	VMIPv4        string // LAN addresses of the VM namespace (interface eth0)
	VMIPv6        string
	// Nodes are the cluster's nodes (see AddNode and DeleteNode).
	Nodes []Node

	// APIServerURL is https://10.250.0.2:6443, reachable from the LAN and
	// from pods.
	APIServerURL string
	// AdminKubeconfig is a kubeconfig file with an admin token;
	// AgentKubeconfig one with a token of ServiceAccount
	// bridge-agent/bridge-agent bound by deploy/rbac.yaml;
	// KubeProxyKubeconfig one for user system:kube-proxy, which the
	// API server's bootstrap policy gives ClusterRole system:node-proxier
	// (what kube-proxy runs with on a kubeadm cluster).
	AdminKubeconfig     string
	AgentKubeconfig     string
	KubeProxyKubeconfig string
	WorkDir             string
	BinDir              string

	ServiceCIDRs  []string // IPv4 then IPv6 service CIDR
	ClusterDomain string   // cluster.local
	KubeDNSIP     string   // kube-dns cluster IPs
	KubeDNSIPv6   string
	UpstreamDNSIP string // upstream DNS server, which CoreDNS forwards to
	// UpstreamDNSIPv6 is the upstream server's IPv6 address.
	UpstreamDNSIPv6 string

	log         *slog.Logger
	stateDir    string
	ownsWorkDir bool
	pki         *pki
	upstream    *upstreamDNS

	cpMu      sync.Mutex // guards the control plane processes
	etcd      *proc
	apiserver *proc
	kcm       *proc

	mu      sync.Mutex // guards Nodes, pods, nextPod
	pods    map[string]*podState
	nextPod int
	// nextHost is, per node number, the last pod address host part handed out.
	nextHost map[int]int
	// lastNode is the highest node number AddNode handed out.
	lastNode int

	stopOnce sync.Once
	stopErr  error
}

var prefixRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// binaries are the programs the testbed runs.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "coredns"}

// Start cleans up stale testbeds of dead processes, then builds the
// network, starts the control plane, registers the nodes, applies
// deploy/rbac.yaml with a token kubeconfig for the agent, and starts
// kube-dns. On error everything started is torn down.
func Start(ctx context.Context, o Options) (_ *Testbed, err error) {
	begin := time.Now()
	if os.Geteuid() != 0 {
		return nil, errors.New("start testbed: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces)")
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := CleanupStale(); err != nil {
		log.Warn("cleaning up stale testbeds", "err", err)
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return nil, fmt.Errorf("start testbed: nodes must be 1..%d", maxNodes)
	}
	if o.Prefix == "" {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		o.Prefix = "ba" + hex.EncodeToString(b)
	}
	if !prefixRE.MatchString(o.Prefix) {
		return nil, fmt.Errorf("start testbed: prefix %q: want 1 to 8 lower-case letters or digits", o.Prefix)
	}
	binDir, err := resolveBinDir(ctx, o.BinDir, log)
	if err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}

	t := &Testbed{
		Prefix:          o.Prefix,
		VMIPv4:          vmIPv4,
		VMIPv6:          vmIPv6,
		APIServerURL:    fmt.Sprintf("https://%s:%d", cpIPv4, apiServerPort),
		BinDir:          binDir,
		ServiceCIDRs:    []string{serviceCIDRv4, serviceCIDRv6},
		ClusterDomain:   clusterDomain,
		KubeDNSIP:       kubeDNSIPv4,
		KubeDNSIPv6:     kubeDNSIPv6,
		UpstreamDNSIP:   upstreamIPv4,
		UpstreamDNSIPv6: upstreamIPv6,
		log:             log.With("testbed", o.Prefix),
		pods:            map[string]*podState{},
	}
	t.LANNetns, t.CPNetns, t.VMNetns, t.UpstreamNetns = t.nsName("lan"), t.nsName("cp"), t.nsName("vm"), t.nsName("up")

	t.WorkDir = o.WorkDir
	if t.WorkDir == "" {
		if t.WorkDir, err = os.MkdirTemp("", "bridge-agent-testbed-"+o.Prefix+"-"); err != nil {
			return nil, fmt.Errorf("start testbed: %w", err)
		}
		t.ownsWorkDir = true
	} else if err := os.MkdirAll(t.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	owned := ""
	if t.ownsWorkDir {
		owned = t.WorkDir
	}
	if t.stateDir, err = recordRun(o.Prefix, owned); err != nil {
		if t.ownsWorkDir {
			_ = os.RemoveAll(t.WorkDir)
		}
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	defer func() {
		if err != nil {
			if stopErr := t.Stop(); stopErr != nil {
				t.log.Warn("tearing down after failed start", "err", stopErr)
			}
		}
	}()

	step := func(what string, start time.Time) {
		t.log.Info(what, "took", time.Since(start).Round(time.Millisecond))
	}
	s := time.Now()
	if err := t.setupNetwork(ctx, o.Nodes); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	step("network ready", s)

	s = time.Now()
	if t.pki, err = writePKI(filepath.Join(t.WorkDir, "pki")); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	t.AdminKubeconfig = filepath.Join(t.WorkDir, "admin.kubeconfig")
	t.AgentKubeconfig = filepath.Join(t.WorkDir, "agent.kubeconfig")
	if err := writeKubeconfig(t.AdminKubeconfig, t.APIServerURL, t.pki.caPEM, adminUser, t.pki.adminToken); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	t.KubeProxyKubeconfig = filepath.Join(t.WorkDir, "kube-proxy.kubeconfig")
	if err := writeKubeconfig(t.KubeProxyKubeconfig, t.APIServerURL, t.pki.caPEM, kubeProxyUser, t.pki.kubeProxyToken); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	if t.AdminConfig, t.Client, err = t.newAdminConfig(); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	if err := t.startUpstreamDNS(); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	t.cpMu.Lock()
	err = t.startEtcd()
	if err == nil {
		err = t.startAPIServer(ctx)
	}
	t.cpMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	step("kube-apiserver ready", s)

	s = time.Now()
	t.cpMu.Lock()
	err = t.startControllerManager()
	t.cpMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(t.Nodes)+1)
	for i, nd := range t.Nodes {
		wg.Go(func() { errs[i] = t.registerNode(ctx, nd) })
	}
	wg.Go(func() { errs[len(t.Nodes)] = t.applyRBAC(ctx) })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	if err := t.startKubeDNS(ctx); err != nil {
		return nil, fmt.Errorf("start testbed: %w", err)
	}
	step("nodes, rbac and kube-dns ready", s)
	t.log.Info("testbed started", "took", time.Since(begin).Round(time.Millisecond), "workdir", t.WorkDir)
	return t, nil
}

// Stop stops every process and server of the testbed, deletes its
// namespaces and its work directory (unless given in Options). It is safe
// to call more than once.
func (t *Testbed) Stop() error {
	t.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		t.mu.Lock()
		pods := t.pods
		t.pods = map[string]*podState{}
		t.mu.Unlock()
		for _, ps := range pods {
			for _, p := range ps.procs {
				p.stop(5 * time.Second)
			}
			for _, c := range ps.closers {
				_ = c.Close()
			}
		}
		t.cpMu.Lock()
		t.kcm.stop(5 * time.Second)
		// Everything goes: no need to wait for the API server's graceful
		// shutdown, which takes a second or more.
		t.apiserver.stop(0)
		t.etcd.stop(5 * time.Second)
		t.cpMu.Unlock()
		t.upstream.stop()
		if t.stateDir != "" {
			t.stopErr = cleanupRun(ctx, t.Prefix, t.stateDir)
		}
		if t.stopErr != nil {
			t.stopErr = fmt.Errorf("stop testbed: %w", t.stopErr)
		}
		t.log.Info("testbed stopped")
	})
	return t.stopErr
}

// Exec runs argv inside network namespace netnsName (`ip netns exec`) and
// returns its standard output; the error includes its standard error.
func (t *Testbed) Exec(ctx context.Context, netnsName string, argv ...string) ([]byte, error) {
	out, err := nsExec(ctx, netnsName, argv...)
	if err != nil {
		return out, fmt.Errorf("exec in %s: %w", netnsName, err)
	}
	return out, nil
}

// Command returns a command running argv inside network namespace
// netnsName, for long-running children such as the agent. The child is
// killed if this process dies; Stop kills whatever still runs in the
// testbed's namespaces.
func (t *Testbed) Command(netnsName string, argv ...string) *exec.Cmd {
	return netnsCommand(netnsName, argv...)
}

// DialContext returns a dial function whose sockets are created inside
// network namespace netnsName, e.g. for rest.Config.Dial or an
// http.Transport.
func (t *Testbed) DialContext(netnsName string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialIn(netnsName)
}

// Listen opens a stream listener (network "tcp", "tcp4", "tcp6", "unix")
// inside network namespace netnsName.
func (t *Testbed) Listen(netnsName, network, addr string) (net.Listener, error) {
	return listenIn(netnsName, network, addr)
}

// ListenPacket opens a packet listener (network "udp", "udp4", "udp6")
// inside network namespace netnsName.
func (t *Testbed) ListenPacket(netnsName, network, addr string) (net.PacketConn, error) {
	return listenPacketIn(netnsName, network, addr)
}

// resolveBinDir finds the directory holding the testbed's binaries.
func resolveBinDir(ctx context.Context, dir string, log *slog.Logger) (string, error) {
	if dir == "" {
		dir = os.Getenv("BRIDGE_AGENT_BIN_DIR")
	}
	if dir == "" {
		script := findRepoFile("hack/build-tools.sh")
		if script == "" {
			return "", errors.New("find binaries: no BinDir, $BRIDGE_AGENT_BIN_DIR or hack/build-tools.sh")
		}
		log.Info("resolving binaries", "script", script)
		cmd := exec.CommandContext(ctx, "bash", script)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("find binaries: %s: %w: %s", script, err, lastLines(stderr.String(), 20))
		}
		for sc := bufio.NewScanner(&stdout); sc.Scan(); {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				dir = line
			}
		}
	}
	for _, b := range binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("find binaries: %s is missing in %s (run hack/build-tools.sh)", b, dir)
		}
	}
	return dir, nil
}

// findRepoFile locates rel in the repository: next to this package's
// source when built from a checkout, else in the first parent of the
// working directory that has it.
func findRepoFile(rel string) string {
	var dirs []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dirs = append(dirs, filepath.Join(filepath.Dir(file), "..", ".."))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, d)
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, rel)
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p)
		}
	}
	return ""
}
