package daemon_test

// The convergence test under churn: a real API server (the testbed's
// control plane), the agent's real informers, tracker, publishing runner
// and workers, and consumers that model what they hold. The test writes
// thousands of random changes as EndpointSlices of Services without a
// selector (so it alone controls the endpoints), Services and Nodes, in
// bursts of concurrent writes and quiet gaps. After every quiet gap it
// computes from the objects it wrote, on its own, what each consumer must
// hold, and fails when a consumer still differs minSyncPeriod plus a small
// bound after the last write: a change that waits for the periodic pass
// (syncPeriod is ten minutes here) is a lost wake-up.
//
//	BRIDGE_AGENT_CHURN_CHANGES  number of writes (default 3000; make stress: 100000)
//	BRIDGE_AGENT_CHURN_SEED     seed of the random changes (default: the time; logged)
//	BRIDGE_AGENT_CHURN_BOUND    allowed lag beyond minSyncPeriod (default 2s; a lost wake-up waits for syncPeriod, 10 minutes)
//	BRIDGE_AGENT_CHURN_KERNEL   0: leave out the real nftables backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/dnsstub"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

const (
	churnNS      = "churn"
	churnMinSync = 10 * time.Millisecond
)

func envInt(t *testing.T, name string, def int64) int64 {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: want an integer: %v", name, v, err)
	}
	return n
}

func TestChurnConvergence(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the churn test starts the sandbox control plane in network namespaces")
	}
	changes := int(envInt(t, "BRIDGE_AGENT_CHURN_CHANGES", 3000))
	seed := envInt(t, "BRIDGE_AGENT_CHURN_SEED", time.Now().UnixNano())
	bound := 2 * time.Second
	if v := os.Getenv("BRIDGE_AGENT_CHURN_BOUND"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("BRIDGE_AGENT_CHURN_BOUND=%q: %v", v, err)
		}
		bound = d
	}
	t.Logf("churn: %d changes, seed %d (BRIDGE_AGENT_CHURN_SEED to replay), bound minSyncPeriod %v + %v", changes, seed, churnMinSync, bound)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tb, err := testbed.Start(ctx, testbed.Options{Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := tb.Stop(); err != nil {
			t.Errorf("stop testbed: %v", err)
		}
	}()
	if _, err := tb.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: churnNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The agent, in this process, at debug level into a file shown on failure.
	dir := t.TempDir()
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cfg := config.Default()
	cfg.HostRoot = dir
	cfg.HealthzBindAddress, cfg.MetricsBindAddress = "", ""
	cfg.Proxy.MinSyncPeriod.Duration = churnMinSync
	cfg.Proxy.SyncPeriod.Duration = 10 * time.Minute
	stub, err := dnsstub.New(dnsstub.Options{Listen: netip.MustParseAddrPort("127.0.0.1:53"), ClusterDomain: tb.ClusterDomain, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	consumers := []*recorded{
		{Consumer: &proxyModel{}, jitter: rand.New(rand.NewPCG(uint64(seed), 2))},
		{Consumer: stub},
		{Consumer: &routesModel{}, jitter: rand.New(rand.NewPCG(uint64(seed), 3))},
	}
	// The real nftables backend too, in a network namespace of its own,
	// unless BRIDGE_AGENT_CHURN_KERNEL=0.
	var kernel *kernelProxy
	if os.Getenv("BRIDGE_AGENT_CHURN_KERNEL") != "0" {
		nftLog := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug})).With("consumer", "proxy-kernel")
		p, k, ok := startKernelProxy(t, ctx, nftLog)
		if !ok {
			t.Skip("no nft or ip command: install nftables and iproute2, or set BRIDGE_AGENT_CHURN_KERNEL=0")
		}
		kernel = k
		consumers = append(consumers, &recorded{Consumer: p, name: "proxy-kernel"})
	}
	var cs []daemon.Consumer
	for _, c := range consumers {
		cs = append(cs, c)
	}
	d, err := daemon.New(daemon.Options{
		Config: cfg, Client: tb.Client, APIHost: tb.APIServerURL, Version: "churn",
		Logger:    slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Consumers: cs,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopAgent := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	defer func() {
		stopAgent()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !d.Status().Ready {
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 30s; log:\n%s", tailFile(logPath, 30))
		}
		time.Sleep(10 * time.Millisecond)
	}

	if kernel != nil {
		all, err := tb.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kernel.others = map[string]bool{}
		for _, s := range all.Items {
			for _, ip := range s.Spec.ClusterIPs {
				kernel.others[ip] = true
			}
		}
	}
	w := newWorld(tb.Client, rng)
	w.tcpOnly = kernel != nil
	checks := []struct {
		c    *recorded
		name string
		have func() map[string]string
		want func() map[string]string
	}{
		{consumers[0], "proxy", consumers[0].Consumer.(*proxyModel).state, w.proxyState},
		{consumers[1], "dns", func() map[string]string { return dnsState(stub, w.dnsNames()) }, w.dnsState},
		{consumers[2], "routes", consumers[2].Consumer.(*routesModel).state, w.routesState},
	}
	if kernel != nil {
		checks = append(checks, struct {
			c    *recorded
			name string
			have func() map[string]string
			want func() map[string]string
		}{consumers[3], "kernel", func() map[string]string {
			st, err := kernel.state()
			if err != nil {
				return map[string]string{"error": err.Error()}
			}
			return st
		}, func() map[string]string { return withoutNames(w.proxyState()) }})
	}
	worst := map[string]time.Duration{}
	var gaps int
	start := time.Now()
	nextGap := 10 + rng.IntN(100)
	for w.writes < changes {
		if err := w.burst(ctx); err != nil {
			t.Fatal(err)
		}
		// Between bursts: none, sub-millisecond, a few sync periods, or
		// a quiet gap with a check.
		switch r := rng.IntN(10); {
		case r < 4:
		case r < 6:
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
		case r < 9:
			time.Sleep(time.Duration(rng.IntN(int(5 * churnMinSync))))
		}
		if w.writes < nextGap && w.writes < changes {
			continue
		}
		nextGap = w.writes + 10 + rng.IntN(100)
		gaps++
		quiet := time.Now() // every write so far is acknowledged
		limit := quiet.Add(churnMinSync + bound)
		for _, ck := range checks {
			want := ck.want()
			for {
				at := ck.c.lastSync()
				have := ck.have()
				if diff := cmp.Diff(want, have); diff == "" {
					lag := max(at.Sub(quiet), 0)
					worst[ck.name] = max(worst[ck.name], lag)
					break
				} else if time.Now().After(limit) {
					t.Fatalf("after %d writes (gap %d), %s still differs from the cluster %v after the last write (minSyncPeriod %v + bound %v) (-want +have):\n%s\nagent log:\n%s",
						w.writes, gaps, ck.name, time.Since(quiet).Round(time.Millisecond), churnMinSync, bound, diff, tailFile(logPath, 40))
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		w.forgetGone()
		if rng.IntN(4) == 0 { // an idle host: the next change finds the runner idle
			time.Sleep(time.Duration(rng.IntN(int(20 * churnMinSync))))
		}
	}
	// Every sync says which change it carried arrived first, and when.
	if b, err := os.ReadFile(logPath); err != nil {
		t.Error(err)
	} else if !regexp.MustCompile(`msg="consumer synced" consumer=proxy .*oldestChange="EndpointSlice churn/s\d+-\d+" received=\S+ lag=\S+ oldestTrigger=`).Match(b) {
		t.Errorf("no debug line naming the oldest change of a proxy sync in the agent's log; its tail:\n%s", tailFile(logPath, 10))
	}
	t.Logf("churn: %d writes (%d Services, %d slices, %d Nodes at the end) in %v, %d quiet gaps checked; worst lag after the last write: proxy %v, dns %v, routes %v, kernel (nftables) %v",
		w.writes, len(w.services), w.sliceCount(), len(w.nodes), time.Since(start).Round(time.Second), gaps,
		worst["proxy"], worst["dns"], worst["routes"], worst["kernel"])
}

// recorded wraps a consumer and remembers when its last successful sync
// ended. With jitter, each sync first waits up to two milliseconds (the
// workers then skip snapshots) and one in fifty fails without calling the
// consumer (the worker retries it after a backoff).
type recorded struct {
	daemon.Consumer
	name   string     // instead of the consumer's own
	jitter *rand.Rand // nil: no delay, no failure

	mu   sync.Mutex
	last time.Time
}

func (r *recorded) Name() string {
	if r.name != "" {
		return r.name
	}
	return r.Consumer.Name()
}

func (r *recorded) Sync(ctx context.Context, snap *cluster.Snapshot) error {
	if r.jitter != nil {
		r.mu.Lock()
		d := time.Duration(r.jitter.IntN(2000)) * time.Microsecond
		fail := r.jitter.IntN(50) == 0
		r.mu.Unlock()
		time.Sleep(d)
		if fail {
			return errors.New("injected failure")
		}
	}
	err := r.Consumer.Sync(ctx, snap)
	if err == nil {
		r.mu.Lock()
		r.last = time.Now()
		r.mu.Unlock()
	}
	return err
}

func (r *recorded) lastSync() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// proxyModel models the proxy: it holds the snapshot of its last sync,
// and its state is what the renderers program for each Service port of
// the test's namespace: the endpoints proxy.SelectEndpoints picks, or a
// reject.
type proxyModel struct {
	mu   sync.Mutex
	snap *cluster.Snapshot
}

func (p *proxyModel) Name() string { return "proxy" }

func (p *proxyModel) Sync(_ context.Context, snap *cluster.Snapshot) error {
	p.mu.Lock()
	p.snap = snap
	p.mu.Unlock()
	return nil
}

func (p *proxyModel) state() map[string]string {
	p.mu.Lock()
	snap := p.snap
	p.mu.Unlock()
	out := map[string]string{}
	if snap == nil {
		return out
	}
	for key, svc := range snap.Services {
		if key.Namespace != churnNS || svc.Headless || !svc.Proxied {
			continue
		}
		for _, ip := range svc.ClusterIPs {
			fam := proxy.IPv4
			if ip.Is6() {
				fam = proxy.IPv6
			}
			for _, port := range svc.Ports {
				var eps []string
				for _, ep := range proxy.SelectEndpoints(svc, port, fam, "").Endpoints {
					eps = append(eps, ep.AddrPort().String())
				}
				out[servicePortKey(key.Name, ip.String(), port.Port, port.Protocol)] = joinOrReject(eps)
			}
		}
	}
	return out
}

func servicePortKey(svc, ip string, port int32, proto string) string {
	return fmt.Sprintf("%s %s/%s", svc, net.JoinHostPort(ip, strconv.Itoa(int(port))), proto)
}

func joinOrReject(eps []string) string {
	if len(eps) == 0 {
		return "reject"
	}
	slices.Sort(eps)
	return strings.Join(eps, " ")
}

// routesModel models the routes consumer: the pod CIDRs and addresses of
// the Nodes of its last sync (the test's own Nodes, named churn-*).
type routesModel struct {
	mu   sync.Mutex
	snap *cluster.Snapshot
}

func (r *routesModel) Name() string { return "routes" }

func (r *routesModel) Sync(_ context.Context, snap *cluster.Snapshot) error {
	r.mu.Lock()
	r.snap = snap
	r.mu.Unlock()
	return nil
}

func (r *routesModel) state() map[string]string {
	r.mu.Lock()
	snap := r.snap
	r.mu.Unlock()
	out := map[string]string{}
	if snap == nil {
		return out
	}
	for name, n := range snap.Nodes {
		if !strings.HasPrefix(name, "churn-") {
			continue
		}
		out[name] = fmt.Sprint(n.PodCIDRs, n.InternalIPs)
	}
	return out
}

// dnsState asks the stub's zone for the A records of names, through its
// query handler (no socket).
func dnsState(s *dnsstub.Server, names []string) map[string]string {
	out := map[string]string{}
	for _, name := range names {
		req := new(dns.Msg)
		req.SetQuestion(name, dns.TypeA)
		w := &answerRecorder{}
		s.ServeDNS(w, req)
		var as []string
		if w.msg != nil {
			for _, rr := range w.msg.Answer {
				if a, ok := rr.(*dns.A); ok {
					as = append(as, a.A.String())
				}
			}
		}
		if len(as) > 0 {
			slices.Sort(as)
			out[name] = strings.Join(as, " ")
		}
	}
	return out
}

// answerRecorder is a dns.ResponseWriter keeping the reply, for a client
// on the loopback.
type answerRecorder struct{ msg *dns.Msg }

func (r *answerRecorder) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (r *answerRecorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (r *answerRecorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }
func (r *answerRecorder) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	r.msg = m
	return len(b), nil
}
func (r *answerRecorder) Close() error        { return nil }
func (r *answerRecorder) TsigStatus() error   { return nil }
func (r *answerRecorder) TsigTimersOnly(bool) {}
func (r *answerRecorder) Hijack()             {}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(len(all)-lines, 0):], "\n")
}

// The test's own record of what it wrote: the truth the consumers are
// compared with.

const (
	condReady = iota
	condNotReady
	condTerminatingServing
	condTerminating
	condCount
)

type tEndpoint struct {
	addr string
	cond int
}

type tPort struct {
	name  string
	port  int32
	proto v1.Protocol
}

type tSlice struct {
	obj *discovery.EndpointSlice // as last written
	eps []tEndpoint
}

type tService struct {
	name     string
	headless bool
	ip       string // allocated by the API server
	obj      *v1.Service
	ports    []tPort
	slices   map[string]*tSlice
	next     int // for slice names
}

type tNode struct {
	obj  *v1.Node
	cidr string
	ip   string
}

type world struct {
	client kubernetes.Interface
	rng    *rand.Rand

	mu       sync.Mutex // guards everything below during a burst
	writes   int
	services map[string]*tService
	nodes    map[string]*tNode
	nextSvc  int
	nextNode int
	nextAddr int
	tcpOnly  bool     // no UDP ports (see kernelProxy.state)
	gone     []string // Services deleted since the last check
}

func newWorld(c kubernetes.Interface, rng *rand.Rand) *world {
	return &world{client: c, rng: rng, services: map[string]*tService{}, nodes: map[string]*tNode{}}
}

func (w *world) sliceCount() int {
	n := 0
	for _, s := range w.services {
		n += len(s.slices)
	}
	return n
}

// burst runs up to 8 operations concurrently, each on objects no other
// holds: one per existing Service, plus Service creations and Node
// changes.
func (w *world) burst(ctx context.Context) error {
	w.mu.Lock()
	n := 1 + w.rng.IntN(8)
	names := make([]string, 0, len(w.services))
	for name := range w.services {
		names = append(names, name)
	}
	sort.Strings(names)
	w.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	type job struct {
		svc  *tService
		kind int // 0 on svc, 1 create, 2 node
		seed uint64
	}
	var jobs []job
	nodeJob := false
	for i := 0; i < n; i++ {
		r := w.rng.IntN(100)
		switch {
		case len(w.services) < 8 || (r < 6 && len(w.services) < 60):
			jobs = append(jobs, job{kind: 1, seed: w.rng.Uint64()})
		case r < 12 && !nodeJob:
			nodeJob = true
			jobs = append(jobs, job{kind: 2, seed: w.rng.Uint64()})
		case len(names) > 0:
			s := w.services[names[0]]
			names = names[1:]
			jobs = append(jobs, job{svc: s, seed: w.rng.Uint64()})
		}
	}
	w.mu.Unlock()
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(j.seed, 7))
			switch j.kind {
			case 0:
				errs[i] = w.changeService(ctx, rng, j.svc)
			case 1:
				errs[i] = w.createService(ctx, rng)
			case 2:
				errs[i] = w.changeNodes(ctx, rng)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (w *world) counted(err error) error {
	if err == nil {
		w.mu.Lock()
		w.writes++
		w.mu.Unlock()
	}
	return err
}

func (w *world) newAddr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextAddr++
	return fmt.Sprintf("10.%d.%d.%d", 100+w.nextAddr/65536%100, w.nextAddr/256%256, w.nextAddr%256)
}

func (w *world) newEndpoints(rng *rand.Rand, n int) []tEndpoint {
	out := make([]tEndpoint, n)
	for i := range out {
		out[i] = tEndpoint{addr: w.newAddr(), cond: rng.IntN(condCount)}
	}
	return out
}

func (w *world) createService(ctx context.Context, rng *rand.Rand) error {
	w.mu.Lock()
	w.nextSvc++
	name := fmt.Sprintf("s%d", w.nextSvc)
	w.mu.Unlock()
	s := &tService{name: name, headless: rng.IntN(5) == 0, slices: map[string]*tSlice{}}
	for i := range 1 + rng.IntN(2) {
		p := tPort{name: fmt.Sprintf("p%d", i), port: int32(80 + rng.IntN(8000)), proto: v1.ProtocolTCP}
		if rng.IntN(3) == 0 && !w.tcpOnly {
			p.proto = v1.ProtocolUDP
		}
		s.ports = append(s.ports, p)
	}
	obj := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: churnNS, Name: name}, Spec: v1.ServiceSpec{Ports: s.servicePorts()}}
	if s.headless {
		obj.Spec.ClusterIP = v1.ClusterIPNone
	}
	// Half the time the endpoints come first: the tracker holds slices of
	// a Service it does not know yet.
	first := rng.IntN(2) == 0
	if first {
		if err := w.writeSlice(ctx, s, s.newSliceName(), w.newEndpoints(rng, 1+rng.IntN(4))); err != nil {
			return err
		}
	}
	created, err := w.client.CoreV1().Services(churnNS).Create(ctx, obj, metav1.CreateOptions{})
	if err := w.counted(err); err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	s.obj = created
	if !s.headless {
		s.ip = created.Spec.ClusterIP
	}
	if !first {
		if err := w.writeSlice(ctx, s, s.newSliceName(), w.newEndpoints(rng, 1+rng.IntN(4))); err != nil {
			return err
		}
	}
	w.mu.Lock()
	w.services[name] = s
	w.mu.Unlock()
	return nil
}

func (s *tService) newSliceName() string {
	s.next++
	return fmt.Sprintf("%s-%d", s.name, s.next)
}

func (s *tService) servicePorts() []v1.ServicePort {
	var out []v1.ServicePort
	for _, p := range s.ports {
		out = append(out, v1.ServicePort{Name: p.name, Port: p.port, Protocol: p.proto})
	}
	return out
}

// writeSlice creates or updates slice name of s with eps and the
// Service's current ports (target port = port + 10000).
func (w *world) writeSlice(ctx context.Context, s *tService, name string, eps []tEndpoint) error {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: churnNS, Name: name, Labels: map[string]string{
			discovery.LabelServiceName: s.name, discovery.LabelManagedBy: "churn-test",
		}, Annotations: map[string]string{
			v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano),
		}},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range s.ports {
		es.Ports = append(es.Ports, discovery.EndpointPort{Name: ptr.To(p.name), Port: ptr.To(p.port + 10000), Protocol: ptr.To(p.proto)})
	}
	for _, e := range eps {
		c := discovery.EndpointConditions{Ready: ptr.To(e.cond == condReady), Serving: ptr.To(e.cond == condReady || e.cond == condTerminatingServing),
			Terminating: ptr.To(e.cond == condTerminatingServing || e.cond == condTerminating)}
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{e.addr}, Conditions: c})
	}
	var got *discovery.EndpointSlice
	var err error
	if old := s.slices[name]; old != nil {
		es.ResourceVersion = old.obj.ResourceVersion
		got, err = w.client.DiscoveryV1().EndpointSlices(churnNS).Update(ctx, es, metav1.UpdateOptions{})
	} else {
		got, err = w.client.DiscoveryV1().EndpointSlices(churnNS).Create(ctx, es, metav1.CreateOptions{})
	}
	if err := w.counted(err); err != nil {
		return fmt.Errorf("write endpointslice %s: %w", name, err)
	}
	s.slices[name] = &tSlice{obj: got, eps: eps}
	return nil
}

func (w *world) deleteSlice(ctx context.Context, s *tService, name string) error {
	err := w.client.DiscoveryV1().EndpointSlices(churnNS).Delete(ctx, name, metav1.DeleteOptions{})
	if err := w.counted(err); err != nil {
		return fmt.Errorf("delete endpointslice %s: %w", name, err)
	}
	delete(s.slices, name)
	return nil
}

// changeService makes one random change to s and its slices.
func (w *world) changeService(ctx context.Context, rng *rand.Rand, s *tService) error {
	names := make([]string, 0, len(s.slices))
	for n := range s.slices {
		names = append(names, n)
	}
	sort.Strings(names)
	pick := func() (string, *tSlice) {
		if len(names) == 0 {
			return "", nil
		}
		n := names[rng.IntN(len(names))]
		return n, s.slices[n]
	}
	name, sl := pick()
	r := rng.IntN(100)
	switch {
	case sl == nil || r < 8: // a new slice
		return w.writeSlice(ctx, s, s.newSliceName(), w.newEndpoints(rng, 1+rng.IntN(3)))
	case r < 50 && len(sl.eps) > 0: // flip an endpoint's condition
		eps := slices.Clone(sl.eps)
		i := rng.IntN(len(eps))
		eps[i].cond = (eps[i].cond + 1 + rng.IntN(condCount-1)) % condCount
		return w.writeSlice(ctx, s, name, eps)
	case r < 60: // add an endpoint
		return w.writeSlice(ctx, s, name, append(slices.Clone(sl.eps), w.newEndpoints(rng, 1)...))
	case r < 70 && len(sl.eps) > 0: // remove one
		eps := slices.Clone(sl.eps)
		i := rng.IntN(len(eps))
		return w.writeSlice(ctx, s, name, slices.Delete(eps, i, i+1))
	case r < 76 && len(sl.eps) >= 2: // split: half moves to a new slice
		half := len(sl.eps) / 2
		moved, kept := slices.Clone(sl.eps[:half]), slices.Clone(sl.eps[half:])
		if err := w.writeSlice(ctx, s, s.newSliceName(), moved); err != nil {
			return err
		}
		return w.writeSlice(ctx, s, name, kept)
	case r < 82 && len(names) >= 2: // merge two slices
		other := names[0]
		if other == name {
			other = names[1]
		}
		if err := w.writeSlice(ctx, s, name, append(slices.Clone(sl.eps), s.slices[other].eps...)); err != nil {
			return err
		}
		return w.deleteSlice(ctx, s, other)
	case r < 86: // delete a slice
		return w.deleteSlice(ctx, s, name)
	case r < 94: // change the Service's ports, then the slices'
		ports := slices.Clone(s.ports)
		switch i := rng.IntN(len(ports)); {
		case len(ports) > 1 && rng.IntN(3) == 0:
			ports = slices.Delete(ports, i, i+1)
		case rng.IntN(2) == 0:
			ports = append(ports, tPort{name: fmt.Sprintf("p%d", rng.IntN(1000)+10), port: int32(80 + rng.IntN(8000)), proto: v1.ProtocolTCP})
		default:
			ports[i].port = int32(80 + rng.IntN(8000))
		}
		if hasDuplicatePort(ports) {
			return nil
		}
		obj := s.obj.DeepCopy()
		old := s.ports
		s.ports = ports
		obj.Spec.Ports = s.servicePorts()
		got, err := w.client.CoreV1().Services(churnNS).Update(ctx, obj, metav1.UpdateOptions{})
		if err := w.counted(err); err != nil {
			s.ports = old
			return fmt.Errorf("update service %s: %w", s.name, err)
		}
		s.obj = got
		for _, n := range names {
			if err := w.writeSlice(ctx, s, n, s.slices[n].eps); err != nil {
				return err
			}
		}
		return nil
	default: // delete the Service (its slices first or after)
		w.mu.Lock()
		delete(w.services, s.name)
		w.gone = append(w.gone, s.name)
		w.mu.Unlock()
		slicesFirst := rng.IntN(2) == 0
		if slicesFirst {
			for _, n := range names {
				if err := w.deleteSlice(ctx, s, n); err != nil {
					return err
				}
			}
		}
		err := w.client.CoreV1().Services(churnNS).Delete(ctx, s.name, metav1.DeleteOptions{})
		if err := w.counted(err); err != nil {
			return fmt.Errorf("delete service %s: %w", s.name, err)
		}
		if !slicesFirst {
			for _, n := range names {
				if err := w.deleteSlice(ctx, s, n); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

func hasDuplicatePort(ports []tPort) bool {
	seen := map[string]bool{}
	for _, p := range ports {
		k := fmt.Sprint(p.port, p.proto)
		if seen[k] || seen[p.name] {
			return true
		}
		seen[k], seen[p.name] = true, true
	}
	return false
}

// changeNodes adds, readdresses or deletes one of the test's Nodes.
func (w *world) changeNodes(ctx context.Context, rng *rand.Rand) error {
	w.mu.Lock()
	var names []string
	for n := range w.nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	w.mu.Unlock()
	nodes := w.client.CoreV1().Nodes()
	switch r := rng.IntN(10); {
	case len(names) < 3 || r < 3:
		w.mu.Lock()
		w.nextNode++
		i := w.nextNode
		w.mu.Unlock()
		n := &tNode{cidr: fmt.Sprintf("10.%d.%d.0/24", 200+i/256%50, i%256), ip: w.newAddr()}
		name := fmt.Sprintf("churn-%d", i)
		obj, err := nodes.Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDR: n.cidr, PodCIDRs: []string{n.cidr}}}, metav1.CreateOptions{})
		if err := w.counted(err); err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		obj.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.ip}}
		obj, err = nodes.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err := w.counted(err); err != nil {
			return fmt.Errorf("address node %s: %w", name, err)
		}
		n.obj = obj
		w.mu.Lock()
		w.nodes[name] = n
		w.mu.Unlock()
		return nil
	case r < 7:
		w.mu.Lock()
		n := w.nodes[names[rng.IntN(len(names))]]
		w.mu.Unlock()
		obj := n.obj.DeepCopy()
		ip := w.newAddr()
		obj.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip}}
		obj, err := nodes.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		if err := w.counted(err); err != nil {
			return fmt.Errorf("address node %s: %w", n.obj.Name, err)
		}
		w.mu.Lock()
		n.obj, n.ip = obj, ip
		w.mu.Unlock()
		return nil
	default:
		name := names[rng.IntN(len(names))]
		err := nodes.Delete(ctx, name, metav1.DeleteOptions{})
		if err := w.counted(err); err != nil {
			return fmt.Errorf("delete node %s: %w", name, err)
		}
		w.mu.Lock()
		delete(w.nodes, name)
		w.mu.Unlock()
		return nil
	}
}

// What the consumers must hold, computed from the objects written.

// endpointsOf returns, for a port of s, every endpoint of its slices with
// a port of that name and protocol, as "ip:port" → condition, an address
// in two slices counting once, ready if either copy is.
func (s *tService) endpointsOf(p tPort) map[string]int {
	out := map[string]int{}
	for _, sl := range s.slices {
		for _, sp := range sl.obj.Ports {
			if *sp.Name != p.name || *sp.Protocol != p.proto {
				continue
			}
			for _, e := range sl.eps {
				k := net.JoinHostPort(e.addr, strconv.Itoa(int(*sp.Port)))
				if c, ok := out[k]; !ok || (e.cond == condReady && c != condReady) {
					out[k] = e.cond
				}
			}
		}
	}
	return out
}

// proxyState: per Service port, the ready endpoints, else the serving
// terminating ones, else a reject.
func (w *world) proxyState() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]string{}
	for _, s := range w.services {
		if s.headless {
			continue
		}
		for _, p := range s.ports {
			eps := s.endpointsOf(p)
			var ready, terminating []string
			for k, c := range eps {
				switch c {
				case condReady:
					ready = append(ready, k)
				case condTerminatingServing:
					terminating = append(terminating, k)
				}
			}
			if len(ready) == 0 {
				ready = terminating
			}
			out[servicePortKey(s.name, s.ip, p.port, string(p.proto))] = joinOrReject(ready)
		}
	}
	return out
}

func (w *world) dnsName(svc string) string {
	return svc + "." + churnNS + ".svc.cluster.local."
}

// dnsNames are the names of the Services that exist and of those deleted
// since the last check (forgetGone).
func (w *world) dnsNames() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.services)+len(w.gone))
	for name := range w.services {
		out = append(out, w.dnsName(name))
	}
	for _, name := range w.gone {
		out = append(out, w.dnsName(name))
	}
	return out
}

func (w *world) forgetGone() {
	w.mu.Lock()
	w.gone = nil
	w.mu.Unlock()
}

// dnsState: a Service's A records are its cluster IP, or for a headless
// one the addresses of its ready endpoints.
func (w *world) dnsState() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]string{}
	for _, s := range w.services {
		if !s.headless {
			out[w.dnsName(s.name)] = s.ip
			continue
		}
		seen := map[string]bool{}
		var as []string
		for _, sl := range s.slices {
			for _, e := range sl.eps {
				if e.cond == condReady && !seen[e.addr] {
					seen[e.addr] = true
					as = append(as, e.addr)
				}
			}
		}
		if len(as) > 0 {
			slices.Sort(as)
			out[w.dnsName(s.name)] = strings.Join(as, " ")
		}
	}
	return out
}

// routesState: each of the test's Nodes with its pod CIDR and address.
func (w *world) routesState() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]string{}
	for name, n := range w.nodes {
		out[name] = fmt.Sprint([]netip.Prefix{netip.MustParsePrefix(n.cidr)}, []netip.Addr{netip.MustParseAddr(n.ip)})
	}
	return out
}

// The proxy's backends take the trigger times the daemon hands them.
var (
	_ daemon.ProgrammingObserver = (*proxy.NFTables)(nil)
	_ daemon.ProgrammingObserver = (*proxy.IPTables)(nil)
)
