package testbed

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Extra hosts on the LAN (AddHost) take 10.250.0.11 to .19, between the VM
// (.10) and the nodes (.21 and up).
const (
	firstHost = 11
	lastHost  = 19
)

var hostNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)

// extraHosts are the hosts AddHost made, per testbed. (Kept outside
// Testbed so that this file stays self-contained.)
var (
	hostsMu    sync.Mutex
	extraHosts = map[*Testbed]map[string]Host{}
)

// Host is an extra machine on the sandbox LAN besides the VM: for example a
// second VM that runs a peer of bridge-agent (kube-proxy, a DNS cache) in
// a benchmark.
type Host struct {
	// Name is the host's short name; its namespace is <prefix>-<Name>.
	Name  string
	Netns string
	IPv4  string // LAN address (interface eth0)
	IPv6  string
}

// HostOptions configure AddHost.
type HostOptions struct {
	// PodRoutes routes every current node's pod CIDRs via that node, as
	// the control plane namespace has; a Kubernetes node's CNI would.
	PodRoutes bool
	// ServiceRoutes routes the Service CIDRs via node 1, so that a local
	// process can connect to a cluster IP (the kernel routes a packet
	// before NAT rewrites it; a real host has a default route for that).
	ServiceRoutes bool
}

// AddHost plugs a new namespace <prefix>-<name> into the LAN with the next
// free address from 10.250.0.11 to .19 (and fd00:250::11 ...). name is 1 to
// 6 lower-case letters or digits, starting with a letter. Stop removes the
// host with the rest of the testbed.
func (t *Testbed) AddHost(ctx context.Context, name string, o HostOptions) (Host, error) {
	if !hostNameRE.MatchString(name) {
		return Host{}, fmt.Errorf("add host %q: want 1 to 6 lower-case letters or digits, starting with a letter", name)
	}
	hostsMu.Lock()
	hosts := extraHosts[t]
	if hosts == nil {
		hosts = map[string]Host{}
		extraHosts[t] = hosts
	}
	if _, ok := hosts[name]; ok {
		hostsMu.Unlock()
		return Host{}, fmt.Errorf("add host %q: exists", name)
	}
	n := firstHost + len(hosts)
	// Reserve the address now; a failed host keeps it.
	hosts[name] = Host{Name: name}
	hostsMu.Unlock()
	t.mu.Lock()
	nodes := append([]Node(nil), t.Nodes...)
	t.mu.Unlock()
	if n > lastHost {
		return Host{}, fmt.Errorf("add host %q: at most %d hosts", name, lastHost-firstHost+1)
	}
	h := Host{
		Name:  name,
		Netns: t.nsName(name),
		IPv4:  lanIPv4Prefix + strconv.Itoa(n),
		IPv6:  lanIPv6Prefix + strconv.Itoa(n),
	}
	var extra []string
	if o.PodRoutes {
		for _, nd := range nodes {
			extra = append(extra, podRoutes("add", nd)...)
		}
	}
	if o.ServiceRoutes && len(nodes) > 0 {
		extra = append(extra, t.serviceRoutes(nodes[0])...)
	}
	if err := t.lanMember(ctx, h.Netns, "v-"+name, h.IPv4, h.IPv6, extra); err != nil {
		_ = deleteNetns(ctx, h.Netns)
		return Host{}, fmt.Errorf("add host %q: %w", name, err)
	}
	hostsMu.Lock()
	hosts[name] = h
	hostsMu.Unlock()
	return h, nil
}

// serviceRoutes returns the ip commands (without the leading "ip") that
// route the Service CIDRs via node nd.
func (t *Testbed) serviceRoutes(nd Node) []string {
	var cmds []string
	for _, c := range t.ServiceCIDRs {
		via := nd.IPv4
		if strings.Contains(c, ":") {
			via = nd.IPv6
		}
		cmds = append(cmds, fmt.Sprintf("route replace %s via %s dev %s", c, via, lanIf))
	}
	return cmds
}

// AddServiceRoutes routes the Service CIDRs via node 1 inside network
// namespace netnsName (for example the VM's, which has no default route).
func (t *Testbed) AddServiceRoutes(ctx context.Context, netnsName string) error {
	if len(t.Nodes) == 0 {
		return errors.New("service routes: no nodes")
	}
	if err := ipBatch(ctx, netnsName, t.serviceRoutes(t.Nodes[0])); err != nil {
		return fmt.Errorf("service routes in %s: %w", netnsName, err)
	}
	return nil
}

// RegisterHostNode creates a Node object named h.Name for a host that runs
// a node agent such as kube-proxy (which needs the Node named like its host)
// and reports it Ready. The Node has no pod CIDR, so nothing routes pods to
// it, and it is tainted so that nothing would be scheduled on it.
func (t *Testbed) RegisterHostNode(ctx context.Context, h Host) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: h.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname": h.Name,
				"kubernetes.io/os":       "linux",
			},
		},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{
			Key: "bridge-agent.io/peer-host", Effect: corev1.TaintEffectNoSchedule,
		}}},
	}
	if err := t.createReadyNode(ctx, obj, h.IPv4, h.IPv6, "0"); err != nil {
		return fmt.Errorf("register host node %s: %w", h.Name, err)
	}
	return nil
}

// InNetns runs fn on an OS thread switched into network namespace
// netnsName: sockets fn creates live in that namespace. fn must not start
// goroutines that create sockets (they run on other threads).
func (t *Testbed) InNetns(netnsName string, fn func() error) error {
	return inNetns(netnsName, fn)
}

// Process is a long-running program started by StartProcess inside one of
// the testbed's namespaces, with its output in a log file.
type Process struct{ p *proc }

// StartProcess starts argv inside network namespace netnsName, logging its
// output to <WorkDir>/logs/<name>.log. The process is killed if this one
// dies; Stop kills whatever still runs in the testbed's namespaces.
func (t *Testbed) StartProcess(name, netnsName string, argv ...string) (*Process, error) {
	p, err := t.startProc(name, netnsName, argv...)
	if err != nil {
		return nil, err
	}
	return &Process{p: p}, nil
}

// PID is the process id: `ip netns exec` execs argv, so this is the
// program's own pid.
func (p *Process) PID() int { return p.p.cmd.Process.Pid }

// LogPath is the process's log file.
func (p *Process) LogPath() string { return p.p.logPath }

// Log returns the last lines of the process's log.
func (p *Process) Log(lines int) string { return tail(p.p.logPath, lines) }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool { return p.p.exited() }

// Err describes how the process ended, with the end of its log.
func (p *Process) Err() error {
	if !p.p.exited() {
		return nil
	}
	return p.p.exitError()
}

// Stop sends SIGTERM, then SIGKILL after grace, and waits for the process.
func (p *Process) Stop(grace time.Duration) { p.p.stop(grace) }

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return p.p.cmd.Process.Signal(sig) }
