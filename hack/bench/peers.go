package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// peerSpec is one proxy under test: bridge-agent or kube-proxy, with one
// rule backend.
type peerSpec struct {
	ID    string // flag value: agent-nft, agent-ipt, kp-ipt, kp-nft
	Label string
	Agent bool
	Mode  string // nftables or iptables
}

var allPeers = []peerSpec{
	{"agent-nft", "bridge-agent nftables", true, "nftables"},
	{"agent-ipt", "bridge-agent iptables", true, "iptables"},
	{"kp-ipt", "kube-proxy iptables", false, "iptables"},
	{"kp-nft", "kube-proxy nftables", false, "nftables"},
}

func peerByID(id string) (peerSpec, bool) {
	for _, p := range allPeers {
		if p.ID == id {
			return p, true
		}
	}
	return peerSpec{}, false
}

// rival is the peer an agent peer is compared with: same backend.
func rival(id string) string {
	switch id {
	case "agent-nft":
		return "kp-nft"
	case "agent-ipt":
		return "kp-ipt"
	}
	return ""
}

// peer is a running proxy.
type peer struct {
	spec       peerSpec
	netns      string
	pid        int
	started    time.Time
	logPath    string
	metricsURL string
	// progMetric is the event-to-kernel histogram; syncMetric (with
	// syncMatch labels) the duration of the proxy's syncs.
	progMetric string
	syncMetric string
	syncMatch  []string
	nftTable   string // the peer's nftables table, "" for iptables peers
	stop       func()
	exited     func() bool
	agent      *testbed.Agent
	// statusSocket serves the agent's status and, with -profile, pprof.
	statusSocket string
	dir          string
}

// env is what the harness keeps of the sandbox.
type env struct {
	tb        *testbed.Testbed
	agentBin  string
	kpBin     string
	work      string
	kpHost    testbed.Host
	dnsHost   testbed.Host
	minSync   time.Duration
	syncEvery time.Duration
	runs      int
	profile   bool // agents serve pprof; heap profiles are saved
}

func (e *env) dir(name string) (string, error) {
	e.runs++
	d := filepath.Join(e.work, fmt.Sprintf("%02d-%s", e.runs, name))
	return d, os.MkdirAll(d, 0o755)
}

// netnsOf is where a peer runs: the agent in the VM, kube-proxy in the
// second VM.
func (e *env) netnsOf(p peerSpec) string {
	if p.Agent {
		return e.tb.VMNetns
	}
	return e.kpHost.Netns
}

// flushRules empties the netfilter ruleset of the namespace, so that a peer
// starts from nothing (these namespaces are the sandbox's own).
func (e *env) flushRules(ctx context.Context, netns string) error {
	if _, err := e.tb.Exec(ctx, netns, "nft", "flush", "ruleset"); err != nil {
		return fmt.Errorf("flush ruleset in %s: %w", netns, err)
	}
	return nil
}

// reap kills what a stopped peer left running in its namespace (an
// iptables-restore or nft child still writing), so that it cannot eat
// into the next peer's core. Only the peers run in these namespaces.
func (e *env) reap(netns string) {
	out, err := exec.Command("ip", "netns", "pids", netns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// startPeer starts p in its namespace. pinCPU, if not empty, pins the
// process to those CPUs from its start (taskset), so the Go runtime sizes
// itself for them.
func (e *env) startPeer(p peerSpec, pinCPU string) (*peer, error) {
	if p.Agent {
		return e.startAgent(p, pinCPU)
	}
	return e.startKubeProxy(p, pinCPU)
}

func (e *env) startAgent(p peerSpec, pinCPU string) (*peer, error) {
	dir, err := e.dir(p.ID)
	if err != nil {
		return nil, err
	}
	cfg := e.tb.AgentConfig(dir)
	cfg.Proxy.Mode = p.Mode
	cfg.Proxy.MinSyncPeriod = metav1.Duration{Duration: e.minSync}
	cfg.Proxy.SyncPeriod = metav1.Duration{Duration: e.syncEvery}
	cfg.EnableProfiling = e.profile
	if e.profile {
		cfg.Logging.Verbosity = 2 // the consumers' debug lines, with their timings
	}
	bin := e.agentBin
	if pinCPU != "" {
		bin = filepath.Join(dir, "bridge-agent-pinned")
		script := fmt.Sprintf("#!/bin/sh\nexec taskset -c %s %s \"$@\"\n", pinCPU, e.agentBin)
		if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
			return nil, err
		}
	}
	a, err := e.tb.NewAgent(bin, dir, cfg)
	if err != nil {
		return nil, err
	}
	a.Env = []string{"XTABLES_LOCKFILE=" + filepath.Join(dir, "xtables.lock")}
	start := time.Now()
	if err := a.Start(); err != nil {
		return nil, err
	}
	return &peer{
		spec: p, netns: e.tb.VMNetns, pid: a.PID(), started: start, logPath: a.LogPath(),
		metricsURL: "http://" + cfg.MetricsBindAddress + "/metrics",
		progMetric: "bridge_agent_network_programming_duration_seconds",
		syncMetric: "bridge_agent_sync_duration_seconds", syncMatch: []string{`consumer="proxy"`},
		nftTable:     map[string]string{"nftables": "bridge-agent"}[p.Mode],
		stop:         func() { _ = a.Stop(); e.reap(e.tb.VMNetns) },
		exited:       a.Exited,
		agent:        a,
		statusSocket: cfg.HostPath(cfg.StatusSocket), dir: dir,
	}, nil
}

// kubeProxyConfig is kube-proxy's configuration for the second VM: a
// kubeconfig for user system:kube-proxy (ClusterRole system:node-proxier, as
// on a kubeadm cluster), its Node's name, the pod range for masquerading, the
// same sync periods as the agent's, metrics and health on loopback, and
// conntrack sysctls left alone.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
hostnameOverride: %[2]s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: %[3]s
clusterCIDR: 10.244.0.0/16,fd00:244::/32
detectLocalMode: ClusterCIDR
oomScoreAdj: 0
iptables:
  minSyncPeriod: %[4]s
  syncPeriod: %[5]s
  localhostNodePorts: false
nftables:
  minSyncPeriod: %[4]s
  syncPeriod: %[5]s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

func (e *env) startKubeProxy(p peerSpec, pinCPU string) (*peer, error) {
	dir, err := e.dir(p.ID)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "kube-proxy.yaml")
	data := fmt.Sprintf(kubeProxyConfig, e.tb.KubeProxyKubeconfig, e.kpHost.Name, p.Mode, e.minSync, e.syncEvery)
	if err := os.WriteFile(conf, []byte(data), 0o644); err != nil {
		return nil, err
	}
	argv := []string{"env", "XTABLES_LOCKFILE=" + filepath.Join(dir, "xtables.lock")}
	if pinCPU != "" {
		argv = append(argv, "taskset", "-c", pinCPU)
	}
	argv = append(argv, e.kpBin, "--config", conf)
	start := time.Now()
	proc, err := e.tb.StartProcess(fmt.Sprintf("kube-proxy-%02d-%s", e.runs, p.Mode), e.kpHost.Netns, argv...)
	if err != nil {
		return nil, err
	}
	return &peer{
		spec: p, netns: e.kpHost.Netns, pid: proc.PID(), started: start, logPath: proc.LogPath(),
		metricsURL: "http://127.0.0.1:10249/metrics",
		progMetric: "kubeproxy_network_programming_duration_seconds",
		syncMetric: "kubeproxy_sync_proxy_rules_duration_seconds", syncMatch: []string{`ip_family="IPv4"`},
		nftTable: map[string]string{"nftables": "kube-proxy"}[p.Mode],
		stop:     func() { proc.Stop(10 * time.Second) },
		exited:   proc.Exited,
	}, nil
}

// logTail returns the end of the peer's log.
func (p *peer) logTail(lines int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

var (
	agentSyncedRE = regexp.MustCompile(`^time=(\S+) .*msg="informers synced"`)
	kpSyncedRE    = regexp.MustCompile(`^[IWE](\d{4} \d{2}:\d{2}:\d{2}\.\d{6}) .*Caches are synced.*(service config|endpoint slice config)`)
)

// informersSynced returns when the peer's log says its Service and
// EndpointSlice caches were filled: the start of its first full sync.
func (p *peer) informersSynced() (time.Time, bool) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	var last time.Time
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		l := sc.Text()
		if p.spec.Agent {
			if m := agentSyncedRE.FindStringSubmatch(l); m != nil {
				if t, err := time.Parse(time.RFC3339Nano, m[1]); err == nil && t.After(p.started.Add(-time.Second)) {
					return t, true
				}
			}
			continue
		}
		if m := kpSyncedRE.FindStringSubmatch(l); m != nil {
			t, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
			if err != nil {
				continue
			}
			now := time.Now()
			t = t.AddDate(now.Year(), 0, 0)
			if t.After(last) {
				last = t
			}
			n++
		}
	}
	return last, n >= 2
}

// saveHeap writes the agent's heap profile to its directory as
// heap-<name>.pb.gz; nothing for kube-proxy or without -profile.
func (e *env) saveHeap(ctx context.Context, pr *peer, name string) (string, error) {
	return e.saveProfile(ctx, pr, "heap?gc=1", "heap-"+name)
}

// saveStartCPU profiles the agent's CPU for its first seconds, the full
// sync included, into cpu-start.pb.gz; it waits for the status socket.
func (e *env) saveStartCPU(ctx context.Context, pr *peer) (string, error) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); sleepCtx(ctx, 10*time.Millisecond) {
		if _, err := os.Stat(pr.statusSocket); err == nil {
			break
		}
	}
	return e.saveProfile(ctx, pr, "profile?seconds=8", "cpu-start")
}

// saveProfile fetches /debug/pprof/<query> from the agent's status socket
// into <file>.pb.gz in its directory.
func (e *env) saveProfile(ctx context.Context, pr *peer, query, file string) (string, error) {
	if !e.profile || pr.agent == nil {
		return "", nil
	}
	client := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", pr.statusSocket)
		}},
		Timeout: 30 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/debug/pprof/"+query, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("profile %s: %s", query, resp.Status)
	}
	path := filepath.Join(pr.dir, file+".pb.gz")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return "", err
	}
	return path, f.Close()
}
