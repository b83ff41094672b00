package main

// The fleet section: what one joined host costs the API server, beside a
// kube-proxy host, in the same sandbox and the same run. Agents run on
// hosts of their own (network namespaces on the sandbox LAN), one per
// routes mode, plus the one elected agent that publishes the shared node
// route table; kube-proxy runs on the kube-proxy host. Each host's
// received bytes are read from its interface counters (everything on its
// eth0 is its API server traffic plus a little ARP/ND), while the cluster
// is idle, while Node objects of realistic size get status heartbeats,
// while an EndpointSlice changes, and across one restart.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/deploy"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// fleetOpts size the fleet section.
type fleetOpts struct {
	nodes      int           // simulated Nodes with heartbeats
	beatEvery  time.Duration // each Node's heartbeat period
	phase      time.Duration // length of each measured phase
	sliceRate  float64       // EndpointSlice changes per second
	fleetHosts int           // hosts the extrapolation is for
	sim        int           // simulated agents (informers only) on one more host
}

// fleetHost is one host of the section: an agent in one routes mode, or
// kube-proxy.
type fleetHost struct {
	ID    string // short, also the namespace suffix
	Label string
	host  testbed.Host
	agent *testbed.Agent
	kp    *peer
}

// fleetPhase is one measured phase: bytes received per host per second,
// snapshots made (consumer syncs caused) per agent, API server watch
// bytes by kind.
type fleetPhase struct {
	Name      string
	Took      time.Duration
	RxPerSec  map[string]float64
	Snapshots map[string]int64
	// Events the agent got and found unchanged / changed, by host.
	Unchanged map[string]float64
	Changed   map[string]float64
	WatchSent map[string]float64 // apiserver_watch_events_sizes_sum delta by kind, bytes/s
	Writes    float64            // publisher's table writes
	Err       string
}

// fleetRestart is what one restart cost a host.
type fleetRestart struct {
	Host  string
	Bytes int64
	Took  time.Duration
	Err   string
}

// fleetRun is the section's result.
type fleetRun struct {
	Opts        fleetOpts
	NodeBytes   int // size of one simulated Node (JSON)
	Hosts       []*fleetHost
	Phases      []*fleetPhase
	Restarts    []*fleetRestart
	WatchList   string // the API server's WatchList feature gate
	TableBytes  int
	TableSource string
	Err         string
	// The simulated agents: how many, how many read the table, their host.
	SimN     int
	SimTable int
	SimErr   string
	simHost  *fleetHost
	simStop  func()
}

const fleetSimID = "fsim"

const fleetKP = "kp"

// fleetSection runs the section; a failure is recorded, not returned.
func (b *bench) fleetSection(ctx context.Context, o fleetOpts) *fleetRun {
	r := &fleetRun{Opts: o}
	if err := b.fleetRun(ctx, r); err != nil {
		r.Err = err.Error()
		b.log.Error("fleet section", "err", err)
	}
	return r
}

func (b *bench) fleetRun(ctx context.Context, r *fleetRun) error {
	e, tb := b.env, b.env.tb
	cfg := *tb.AdminConfig
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		return err
	}
	r.WatchList = apiFeature(ctx, client, "WatchList")
	if err := tb.ApplyManifest(ctx, deploy.NodeRoutesWriter); err != nil {
		return err
	}
	// The Nodes first: every agent starts into a cluster of this size.
	b.log.Info("fleet: creating Nodes", "nodes", r.Opts.nodes)
	for i := range r.Opts.nodes {
		n := fleetNode(i)
		if i == 0 {
			raw, _ := json.Marshal(n)
			r.NodeBytes = len(raw)
		}
		created, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node: %w", err)
		}
		created.Status = n.Status
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node status: %w", err)
		}
	}
	defer func() {
		for i := range r.Opts.nodes {
			_ = client.CoreV1().Nodes().Delete(context.Background(), fleetNodeName(i), metav1.DeleteOptions{})
		}
	}()
	if err := fleetService(ctx, client); err != nil {
		return err
	}

	// Hosts: kube-proxy, and one agent per routes mode, plus the publisher.
	specs := []struct {
		id, label string
		mutate    func(*config.Config)
	}{
		{"fpub", "bridge-agent, nodes mode, elected publisher of the node table (one per fleet)", func(c *config.Config) {
			c.Routes.NodeRoutes.Publish = true
		}},
		{"fshr", "bridge-agent, nodes mode (shared node table, the default)", nil},
		{"fwat", "bridge-agent, nodes mode, nodeRoutes.source: watch (every Node)", func(c *config.Config) {
			c.Routes.NodeRoutes.Source = config.NodeRoutesWatch
		}},
		{"fgw", "bridge-agent, gateway mode", func(c *config.Config) {
			c.Routes.Mode = config.RoutesGateway
			c.Routes.CIDRs = []string{"10.244.0.0/16"}
			c.Routes.Gateways = []string{tb.Nodes[0].IPv4}
		}},
		{"fnone", "bridge-agent, routes mode none", func(c *config.Config) {
			c.Routes.Mode = config.RoutesNone
		}},
	}
	kpHost := &fleetHost{ID: fleetKP, Label: "kube-proxy (nftables)", host: e.kpHost}
	r.Hosts = append(r.Hosts, kpHost)
	for _, s := range specs {
		h, err := tb.AddHost(ctx, s.id, testbed.HostOptions{})
		if err != nil {
			return err
		}
		dir, err := e.dir("fleet-" + s.id)
		if err != nil {
			return err
		}
		c := tb.AgentConfig(dir)
		c.Proxy.Mode = "nftables"
		c.DNS.Mode = config.DNSNone
		c.Proxy.MinSyncPeriod = metav1.Duration{Duration: e.minSync}
		c.Proxy.SyncPeriod = metav1.Duration{Duration: e.syncEvery}
		if s.mutate != nil {
			s.mutate(c)
		}
		a, err := tb.NewAgent(e.agentBin, dir, c)
		if err != nil {
			return err
		}
		a.Netns = h.Netns
		a.Env = []string{"XTABLES_LOCKFILE=" + filepath.Join(dir, "xtables.lock")}
		fh := &fleetHost{ID: s.id, Label: s.label, host: h, agent: a}
		r.Hosts = append(r.Hosts, fh)
		if s.id == "fpub" {
			// The publisher first, so that the others find its table.
			if err := a.Start(); err != nil {
				return err
			}
			if _, err := a.WaitStatus(ctx, time.Minute, func(st *daemon.Status) bool {
				return st.NodeRoutes != nil && st.NodeRoutes.Writes > 0
			}); err != nil {
				return fmt.Errorf("publisher: %w\n%s", err, a.Log())
			}
		}
	}
	defer func() {
		for _, h := range r.Hosts {
			if h.agent != nil {
				_ = h.agent.Stop()
				_, _ = h.agent.Run(context.Background(), "cleanup")
			}
			if h.kp != nil {
				h.kp.stop()
			}
		}
	}()
	for _, h := range r.Hosts[2:] {
		if err := h.agent.Start(); err != nil {
			return err
		}
	}
	var err2 error
	if kpHost.kp, err2 = e.startPeer(peerSpec{"kp-nft", "kube-proxy nftables", false, "nftables"}, ""); err2 != nil {
		return err2
	}
	for _, h := range r.Hosts {
		if err := b.fleetWaitSynced(ctx, h, time.Minute); err != nil {
			return err
		}
	}
	if st, err := r.host("fshr").agent.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool {
		return st.NodeRoutes != nil && st.NodeRoutes.Source == "table"
	}); err == nil {
		r.TableSource = st.NodeRoutes.Source
	} else {
		r.TableSource = "not in use: " + err.Error()
	}
	if cm, err := client.CoreV1().ConfigMaps("bridge-agent").Get(ctx, "bridge-agent-node-routes", metav1.GetOptions{}); err == nil {
		for _, v := range cm.Data {
			r.TableBytes += len(v)
		}
	}
	if r.Opts.sim > 0 {
		if err := b.fleetStartSim(ctx, r); err != nil {
			r.SimErr = err.Error()
			b.log.Error("fleet simulation", "err", err)
		} else {
			defer r.simStop()
		}
	}
	sleepCtx(ctx, 5*time.Second)

	// The phases.
	r.Phases = append(r.Phases, b.fleetPhase(ctx, client, r, "idle", func(context.Context) {}))
	r.Phases = append(r.Phases, b.fleetPhase(ctx, client, r, fmt.Sprintf("Node heartbeats (%d Nodes every %s)", r.Opts.nodes, r.Opts.beatEvery),
		func(ctx context.Context) { fleetHeartbeats(ctx, client, r.Opts) }))
	r.Phases = append(r.Phases, b.fleetPhase(ctx, client, r, fmt.Sprintf("EndpointSlice churn (%.0f/s)", r.Opts.sliceRate),
		func(ctx context.Context) { fleetSliceChurn(ctx, client, r.Opts.sliceRate) }))

	// One restart of each.
	for _, h := range r.Hosts {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.Restarts = append(r.Restarts, b.fleetRestart(ctx, h))
	}
	return ctx.Err()
}

// fleetStartSim starts r.Opts.sim simulated agents on a host of their own.
func (b *bench) fleetStartSim(ctx context.Context, r *fleetRun) error {
	h, err := b.env.tb.AddHost(ctx, fleetSimID, testbed.HostOptions{})
	if err != nil {
		return err
	}
	b.log.Info("fleet: starting simulated agents", "agents", r.Opts.sim)
	sim, err := startFleetSim(ctx, b.env.tb, h.Netns, r.Opts.sim, b.log)
	if err != nil {
		return err
	}
	sleepCtx(ctx, 2*time.Second) // each has read the Lease and chosen its source
	r.simHost = &fleetHost{ID: fleetSimID, Label: fmt.Sprintf("%d simulated agents (nodes mode, shared table; informers only), per agent", r.Opts.sim), host: h}
	r.SimN, r.SimTable = sim.n, sim.tableSources()
	r.simStop = sim.stop
	return nil
}

func (r *fleetRun) host(id string) *fleetHost {
	for _, h := range r.Hosts {
		if h.ID == id {
			return h
		}
	}
	return nil
}

// fleetWaitSynced waits for a host's informers to have listed.
func (b *bench) fleetWaitSynced(ctx context.Context, h *fleetHost, timeout time.Duration) error {
	if h.agent != nil {
		_, err := h.agent.WaitReady(ctx, timeout)
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", h.ID, err, h.agent.Log())
		}
		return nil
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); sleepCtx(ctx, 100*time.Millisecond) {
		if _, ok := h.kp.informersSynced(); ok {
			return nil
		}
	}
	return fmt.Errorf("%s: kube-proxy not synced within %s:\n%s", h.ID, timeout, h.kp.logTail(20))
}

// rxBytes reads the bytes received on a host's eth0.
func (b *bench) rxBytes(ctx context.Context, h *fleetHost) (int64, error) {
	out, err := b.env.tb.Exec(ctx, h.host.Netns, "cat", "/sys/class/net/eth0/statistics/rx_bytes")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
}

// fleetPhase measures every host while load runs for the phase's length.
func (b *bench) fleetPhase(ctx context.Context, client kubernetes.Interface, r *fleetRun, name string, load func(context.Context)) *fleetPhase {
	b.log.Info("fleet phase", "phase", name, "length", r.Opts.phase)
	ph := &fleetPhase{Name: name, RxPerSec: map[string]float64{}, Snapshots: map[string]int64{},
		Unchanged: map[string]float64{}, Changed: map[string]float64{}, WatchSent: map[string]float64{}}
	type mark struct {
		rx                 int64
		snap               uint64
		unchanged, changed float64
	}
	read := func() (map[string]mark, map[string]float64, float64) {
		out := map[string]mark{}
		writes := 0.0
		for _, h := range r.Hosts {
			var m mark
			m.rx, _ = b.rxBytes(ctx, h)
			if h.agent != nil {
				if st, err := h.agent.Status(ctx); err == nil {
					m.snap = st.Snapshot.Version
					if st.NodeRoutes != nil && h.ID == "fpub" {
						writes = float64(st.NodeRoutes.Writes)
					}
				}
				if body, err := agentMetrics(ctx, b.env.tb, h); err == nil {
					m.unchanged = metricSum(body, `bridge_agent_cluster_events_total{changed="false",kind="Node"}`)
					m.changed = metricSum(body, `bridge_agent_cluster_events_total{changed="true",kind="Node"}`)
				}
			}
			out[h.ID] = m
		}
		if r.simHost != nil {
			rx, _ := b.rxBytes(ctx, r.simHost)
			out[fleetSimID] = mark{rx: rx}
		}
		return out, apiWatchBytes(ctx, client), writes
	}
	before, wBefore, writesBefore := read()
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, r.Opts.phase)
	var wg sync.WaitGroup
	wg.Go(func() { load(lctx) })
	<-lctx.Done()
	cancel()
	wg.Wait()
	sleepCtx(ctx, time.Second) // the last events reach every host
	after, wAfter, writesAfter := read()
	ph.Took = time.Since(start)
	secs := ph.Took.Seconds()
	for _, h := range r.Hosts {
		a, bf := after[h.ID], before[h.ID]
		ph.RxPerSec[h.ID] = float64(a.rx-bf.rx) / secs
		if h.agent != nil {
			ph.Snapshots[h.ID] = int64(a.snap) - int64(bf.snap)
			ph.Unchanged[h.ID] = a.unchanged - bf.unchanged
			ph.Changed[h.ID] = a.changed - bf.changed
		}
	}
	if r.simHost != nil {
		ph.RxPerSec[fleetSimID] = float64(after[fleetSimID].rx-before[fleetSimID].rx) / secs
	}
	for k, v := range wAfter {
		ph.WatchSent[k] = (v - wBefore[k]) / secs
	}
	ph.Writes = writesAfter - writesBefore
	return ph
}

// fleetRestart restarts a host's agent (or kube-proxy) and counts the bytes
// it received until its informers had listed again, plus a second.
func (b *bench) fleetRestart(ctx context.Context, h *fleetHost) *fleetRestart {
	res := &fleetRestart{Host: h.ID}
	if h.agent != nil {
		_ = h.agent.Stop()
	} else {
		h.kp.stop()
	}
	sleepCtx(ctx, 2*time.Second) // the old connection's goodbye is not the restart's cost
	rx0, err := b.rxBytes(ctx, h)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	start := time.Now()
	if h.agent != nil {
		err = h.agent.Start()
	} else {
		h.kp, err = b.env.startPeer(peerSpec{"kp-nft", "kube-proxy nftables", false, "nftables"}, "")
	}
	if err == nil {
		err = b.fleetWaitSynced(ctx, h, time.Minute)
	}
	if err != nil {
		res.Err = err.Error()
		return res
	}
	res.Took = time.Since(start)
	sleepCtx(ctx, time.Second)
	rx1, _ := b.rxBytes(ctx, h)
	res.Bytes = rx1 - rx0
	return res
}

// agentMetrics reads an agent's /metrics inside its host.
func agentMetrics(ctx context.Context, tb *testbed.Testbed, h *fleetHost) (string, error) {
	return metricsText(ctx, tb, h.host.Netns, "http://"+h.agent.Config.MetricsBindAddress+"/metrics")
}

// metricSum adds up the series of a /metrics text that start with series
// (a name, or a name and its labels).
func metricSum(body, series string) float64 {
	var sum float64
	for _, l := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(l, series)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// apiMetrics returns the API server's /metrics text.
func apiMetrics(ctx context.Context, client kubernetes.Interface) string {
	body, err := client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return ""
	}
	return string(body)
}

// apiWatchBytes sums apiserver_watch_events_sizes_sum by kind: the bytes
// of watch events the API server sent, to every watcher.
func apiWatchBytes(ctx context.Context, client kubernetes.Interface) map[string]float64 {
	out := map[string]float64{}
	for _, l := range strings.Split(apiMetrics(ctx, client), "\n") {
		rest, ok := strings.CutPrefix(l, "apiserver_watch_events_sizes_sum{")
		if !ok {
			continue
		}
		kind := labelValue(rest, "kind")
		if kind == "" {
			kind = labelValue(rest, "resource")
		}
		f := strings.Fields(l)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			out[kind] += v
		}
	}
	return out
}

// apiFeature reports the API server's kubernetes_feature_enabled for name.
func apiFeature(ctx context.Context, client kubernetes.Interface, name string) string {
	for _, l := range strings.Split(apiMetrics(ctx, client), "\n") {
		if strings.HasPrefix(l, "kubernetes_feature_enabled{") && labelValue(l, "name") == name {
			f := strings.Fields(l)
			stage := labelValue(l, "stage")
			if f[len(f)-1] == "1" {
				return "enabled (" + strings.ToLower(stage) + ")"
			}
			return "disabled (" + strings.ToLower(stage) + ")"
		}
	}
	return "unknown (not in the API server's metrics)"
}

// labelValue returns a Prometheus label's value in a series line.
func labelValue(line, label string) string {
	i := strings.Index(line, label+`="`)
	if i < 0 {
		return ""
	}
	rest := line[i+len(label)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}

func fleetNodeName(i int) string { return fmt.Sprintf("fleet-node-%04d", i) }

// fleetNode is a Node as a kubelet of a real cluster reports it, some 8 KB
// in JSON: labels, annotations, capacity, conditions, images.
func fleetNode(i int) *v1.Node {
	name := fleetNodeName(i)
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
			"node.kubernetes.io/instance-type": "m5.2xlarge", "topology.kubernetes.io/region": "eu-west-1",
			"topology.kubernetes.io/zone": fmt.Sprintf("eu-west-1%c", 'a'+i%3), "node-role.kubernetes.io/worker": "",
		}, Annotations: map[string]string{
			"node.alpha.kubernetes.io/ttl":                           "0",
			"volumes.kubernetes.io/controller-managed-attach-detach": "true",
			"csi.volume.kubernetes.io/nodeid":                        fmt.Sprintf(`{"ebs.csi.aws.com":"i-0%s","efs.csi.aws.com":"i-0%s"}`, hexOf(name, 15), hexOf(name, 15)),
		}},
		Spec: v1.NodeSpec{PodCIDR: fmt.Sprintf("10.245.%d.%d/26", i/4, (i%4)*64), ProviderID: "aws:///eu-west-1a/i-0" + hexOf(name, 15)},
	}
	n.Spec.PodCIDRs = []string{n.Spec.PodCIDR}
	qty := func(s string) resource.Quantity { return resource.MustParse(s) }
	n.Status = v1.NodeStatus{
		Capacity:    v1.ResourceList{"cpu": qty("8"), "memory": qty("32211948Ki"), "pods": qty("110"), "ephemeral-storage": qty("104845292Ki"), "hugepages-2Mi": qty("0")},
		Allocatable: v1.ResourceList{"cpu": qty("7910m"), "memory": qty("31195116Ki"), "pods": qty("110"), "ephemeral-storage": qty("95551679124"), "hugepages-2Mi": qty("0")},
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: fmt.Sprintf("192.168.%d.%d", 100+i/250, 1+i%250)},
			{Type: v1.NodeHostName, Address: name}, {Type: v1.NodeInternalDNS, Address: name + ".eu-west-1.compute.internal"},
		},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: 10250}},
		NodeInfo: v1.NodeSystemInfo{MachineID: "ec2" + hexOf(name+"m", 29), SystemUUID: "ec2" + hexOf(name+"u", 29), BootID: hexOf(name+"b", 32),
			KernelVersion: "6.1.0-28-cloud-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24",
			KubeletVersion: "v1.37.2", KubeProxyVersion: "", OperatingSystem: "linux", Architecture: "amd64"},
	}
	for j := range 28 {
		n.Status.Images = append(n.Status.Images, v1.ContainerImage{Names: []string{
			fmt.Sprintf("registry.example.com/team-%02d/service-%02d@sha256:%s", j%7, j, hexOf(fmt.Sprint(name, j), 64)),
			fmt.Sprintf("registry.example.com/team-%02d/service-%02d:v1.%d.%d", j%7, j, j, i%10),
		}, SizeBytes: int64(50_000_000 + j*1_000_003)})
	}
	n.Status.Conditions = fleetConditions(time.Now())
	return n
}

// hexOf returns n hex digits derived from s: IDs and digests that look
// like real ones, which compress as badly (a list of Nodes is gzipped).
func hexOf(s string, n int) string {
	var out string
	for i := 0; len(out) < n; i++ {
		sum := sha256.Sum256([]byte(fmt.Sprint(s, i)))
		out += hex.EncodeToString(sum[:])
	}
	return out[:n]
}

func fleetConditions(now time.Time) []v1.NodeCondition {
	t := metav1.NewTime(now.Truncate(time.Second))
	c := func(typ v1.NodeConditionType, st v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		return v1.NodeCondition{Type: typ, Status: st, Reason: reason, Message: msg, LastHeartbeatTime: t, LastTransitionTime: metav1.NewTime(time.Unix(1764000000, 0))}
	}
	return []v1.NodeCondition{
		c(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
		c(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
		c(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
		c(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"),
	}
}

// fleetHeartbeats updates every Node's status once per beatEvery, spread
// evenly, until ctx ends: each update rewrites the heartbeat times only.
func fleetHeartbeats(ctx context.Context, client kubernetes.Interface, o fleetOpts) {
	every := o.beatEvery / time.Duration(o.nodes)
	t := time.NewTicker(every)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		name := fleetNodeName(i % o.nodes)
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		n.Status.Conditions = fleetConditions(time.Now())
		_, _ = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	}
}

const fleetNS = "fleet"

// fleetService makes the Service and EndpointSlice the slice churn changes.
func fleetService(ctx context.Context, client kubernetes.Interface) error {
	_, _ = client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fleetNS}}, metav1.CreateOptions{})
	_, err := client.CoreV1().Services(fleetNS).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "churn"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("fleet service: %w", err)
	}
	_, err = client.DiscoveryV1().EndpointSlices(fleetNS).Create(ctx, fleetSlice(0), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("fleet slice: %w", err)
	}
	return nil
}

// fleetSlice is the churned slice's n-th version: 10 endpoints, one of
// which moves at each change.
func fleetSlice(n int) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "churn-1", Namespace: fleetNS, Labels: map[string]string{
			discovery.LabelServiceName: "churn", discovery.LabelManagedBy: managedBy}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for j := range 10 {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.244.%d.%d", 1+j%2, 10+(n+j)%200)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(fmt.Sprintf("node-%d", 1+j%2)),
		})
	}
	return es
}

// fleetSliceChurn rewrites the slice rate times a second until ctx ends.
func fleetSliceChurn(ctx context.Context, client kubernetes.Interface, rate float64) {
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, err := client.DiscoveryV1().EndpointSlices(fleetNS).Get(ctx, "churn-1", metav1.GetOptions{})
		if err != nil {
			continue
		}
		next := fleetSlice(n)
		next.ResourceVersion = cur.ResourceVersion
		_, _ = client.DiscoveryV1().EndpointSlices(fleetNS).Update(ctx, next, metav1.UpdateOptions{})
	}
}

// writeFleetReport writes bench/results/<date>[-quick]-fleet.md.
func (b *bench) writeFleetReport(dir string, r *fleetRun) (string, error) {
	name := b.started.Format("2006-01-02")
	if b.quick {
		name += "-quick"
	}
	var w strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&w, format, a...) }
	p("# bridge-agent fleet cost, %s\n\n", b.started.Format("2006-01-02 15:04 MST"))
	p("What one joined host costs the API server, beside a kube-proxy host, measured in the same sandbox and run (hack/bench, section fleet). ")
	p("Each host is a network namespace on the sandbox LAN; its received bytes are read from its eth0 counters (API server traffic, TLS included, plus a little ARP/ND). ")
	p("Every agent runs proxy.mode nftables and routes in the mode named; kube-proxy runs in nftables mode with its own Node.\n\n")
	p("- Machine: %s × %d, kernel %s, kube-apiserver and kube-proxy %s, load %s → %s\n", b.facts.CPU, b.facts.CPUs, b.facts.Kernel, b.facts.Kubernetes, b.facts.LoadStart, loadAvg())
	p("- Simulated Nodes: %d, each %d bytes of JSON (labels, annotations, capacity, 4 conditions, 28 images), status heartbeat every %s: %.0f updates/s\n",
		r.Opts.nodes, r.NodeBytes, r.Opts.beatEvery, float64(r.Opts.nodes)/r.Opts.beatEvery.Seconds())
	p("- Phase length: %s; EndpointSlice churn: one 10-endpoint slice rewritten %.0f times a second\n", r.Opts.phase, r.Opts.sliceRate)
	p("- Shared node route table: %d bytes for %d Nodes; the default agent's node source: %s\n", r.TableBytes, r.Opts.nodes+3, r.TableSource)
	p("- API server WatchList (streaming lists) feature: %s; client-go v0.37 (the agent and kube-proxy) has WatchListClient on by default\n", r.WatchList)
	switch {
	case r.SimErr != "":
		p("- Simulated agents: failed: %s\n", r.SimErr)
	case r.SimN > 0:
		p("- Simulated agents: %d in one process on one more host, each with the agent's own watch code (internal/cluster) on a connection of its own, no consumers; %d of them read the node table\n", r.SimN, r.SimTable)
	}
	p("\n")
	if r.Err != "" {
		p("**The section failed:** %s\n\n", r.Err)
	}
	if len(r.Phases) > 0 {
		p("## Received by each host (bytes/s)\n\n| host |")
		for _, ph := range r.Phases {
			p(" %s |", ph.Name)
		}
		p("\n|---|")
		for range r.Phases {
			p("---:|")
		}
		p("\n")
		for _, h := range r.Hosts {
			p("| %s |", h.Label)
			for _, ph := range r.Phases {
				ratio := ""
				if kp := ph.RxPerSec[fleetKP]; h.ID != fleetKP && kp > 0 {
					ratio = fmt.Sprintf(" (%.2f×)", ph.RxPerSec[h.ID]/kp)
				}
				p(" %.0f%s |", ph.RxPerSec[h.ID], ratio)
			}
			p("\n")
		}
		if r.simHost != nil {
			p("| %s |", r.simHost.Label)
			for _, ph := range r.Phases {
				per := ph.RxPerSec[fleetSimID] / float64(r.SimN)
				ratio := ""
				if kp := ph.RxPerSec[fleetKP]; kp > 0 {
					ratio = fmt.Sprintf(" (%.2f×)", per/kp)
				}
				p(" %.0f%s |", per, ratio)
			}
			p("\n| the %d simulated agents' host, all together |", r.SimN)
			for _, ph := range r.Phases {
				p(" %.0f |", ph.RxPerSec[fleetSimID])
			}
			p("\n")
		}
		p("\n(×: the host's bytes ÷ the kube-proxy host's, same phase.)\n\n")
		p("## Node events and consumer syncs per agent\n\nSnapshots made = syncs the consumers ran for a change (periodic resyncs excluded); Node events as the agent counted them (bridge_agent_cluster_events_total).\n\n")
		p("| phase | host | snapshots made | Node events, unchanged | Node events, changed |\n|---|---|---:|---:|---:|\n")
		for _, ph := range r.Phases {
			for _, h := range r.Hosts {
				if h.agent == nil {
					continue
				}
				p("| %s | %s | %d | %.0f | %.0f |\n", ph.Name, h.ID, ph.Snapshots[h.ID], ph.Unchanged[h.ID], ph.Changed[h.ID])
			}
		}
		p("\n## The API server's watch events (all watchers, bytes/s, apiserver_watch_events_sizes)\n\n| phase | by kind |\n|---|---|\n")
		for _, ph := range r.Phases {
			kinds := slices.SortedFunc(maps.Keys(ph.WatchSent), func(a, b string) int { return cmp.Compare(ph.WatchSent[b], ph.WatchSent[a]) })
			var parts []string
			for _, k := range kinds {
				if v := ph.WatchSent[k]; v >= 10 {
					parts = append(parts, fmt.Sprintf("%s %.0f", k, v))
				}
			}
			p("| %s | %s (kinds under 10 B/s left out); node table writes: %.0f |\n", ph.Name, strings.Join(parts, ", "), ph.Writes)
		}
	}
	if len(r.Restarts) > 0 {
		p("\n## One restart (bytes received from start to listed, plus 1 s)\n\n")
		p("Streaming lists as the API server and client-go have them on; fwat is what every agent cost before the node table (it lists every Node in full).\n\n")
		p("| host | bytes | listed after |\n|---|---:|---:|\n")
		for _, rs := range r.Restarts {
			if rs.Err != "" {
				p("| %s | failed: %s | |\n", rs.Host, rs.Err)
				continue
			}
			p("| %s | %d | %s |\n", rs.Host, rs.Bytes, rs.Took.Round(time.Millisecond))
		}
	}
	p("\n## Targets\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range r.targets() {
		p("| %s | %s | %s |\n", t[0], t[1], t[2])
	}
	p("\n## Fleet of %d hosts (extrapolated, not measured)\n\n", r.Opts.fleetHosts)
	p("The API server's egress to the hosts is the per-host figure times the number of hosts; one agent (the publisher) receives every Node event, as one kube-controller-manager does.\n\n")
	if ph := r.phase("Node heartbeats"); ph != nil {
		p("| host kind | per host, Node heartbeats | %d hosts |\n|---|---:|---:|\n", r.Opts.fleetHosts)
		for _, h := range r.Hosts {
			if h.ID == "fpub" {
				continue
			}
			p("| %s | %.0f B/s | %.0f kB/s |\n", h.Label, ph.RxPerSec[h.ID], ph.RxPerSec[h.ID]*float64(r.Opts.fleetHosts)/1e3)
		}
	}
	if ph := r.phase("Node heartbeats"); ph != nil && r.SimN > 0 {
		p("\nMeasured, not extrapolated: %d simulated agents received %.1f kB/s together (%.0f B/s each) under the same heartbeats.\n",
			r.SimN, ph.RxPerSec[fleetSimID]/1e3, ph.RxPerSec[fleetSimID]/float64(r.SimN))
	}
	if len(r.Restarts) > 0 {
		p("\nA restart of all %d hosts at once (extrapolated):", r.Opts.fleetHosts)
		for _, rs := range r.Restarts {
			if rs.Err == "" && rs.Host != "fpub" {
				p(" %s %.1f MB;", rs.Host, float64(rs.Bytes)*float64(r.Opts.fleetHosts)/1e6)
			}
		}
		p("\n")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name+"-fleet.md")
	return path, os.WriteFile(path, []byte(w.String()), 0o644)
}

func (r *fleetRun) phase(prefix string) *fleetPhase {
	for _, ph := range r.Phases {
		if strings.HasPrefix(ph.Name, prefix) {
			return ph
		}
	}
	return nil
}

// targets judges the targets: under Node heartbeats every agent
// host (the publisher aside: one per fleet) within 2× a kube-proxy host;
// under EndpointSlice churn within 1.2×; no snapshot from a heartbeat.
func (r *fleetRun) targets() [][3]string {
	var out [][3]string
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "not met"
	}
	ratioTarget := func(ph *fleetPhase, limit float64, what string) {
		if ph == nil {
			return
		}
		kp := ph.RxPerSec[fleetKP]
		for _, h := range r.Hosts {
			if h.agent == nil || h.ID == "fpub" || kp <= 0 {
				continue
			}
			ratio := ph.RxPerSec[h.ID] / kp
			v := verdict(ratio <= limit)
			if h.ID == "fwat" && ratio > limit {
				// Not a routes mode: the explicit opt-out, and the cost of
				// the fallback while no agent publishes the table.
				v += " (source: watch, the opt-out and the fallback without a publisher)"
			}
			out = append(out, [3]string{fmt.Sprintf("%s: %s ≤ %.1f× kube-proxy", what, h.ID, limit),
				fmt.Sprintf("%.0f vs %.0f B/s (%.2f×)", ph.RxPerSec[h.ID], kp, ratio), v})
		}
		if r.simHost != nil && r.SimN > 0 && kp > 0 {
			per := ph.RxPerSec[fleetSimID] / float64(r.SimN)
			out = append(out, [3]string{fmt.Sprintf("%s: each of %d simulated agents ≤ %.1f× kube-proxy", what, r.SimN, limit),
				fmt.Sprintf("%.0f vs %.0f B/s (%.2f×)", per, kp, per/kp), verdict(per/kp <= limit)})
		}
	}
	ratioTarget(r.phase("Node heartbeats"), 2, "Node heartbeats")
	ratioTarget(r.phase("EndpointSlice churn"), 1.2, "EndpointSlice churn")
	if ph := r.phase("Node heartbeats"); ph != nil {
		for _, h := range r.Hosts {
			if h.agent == nil {
				continue
			}
			out = append(out, [3]string{"no sync from a Node heartbeat: " + h.ID,
				fmt.Sprintf("%d snapshots, %.0f unchanged Node events", ph.Snapshots[h.ID], ph.Unchanged[h.ID]), verdict(ph.Snapshots[h.ID] == 0)})
		}
	}
	return out
}
