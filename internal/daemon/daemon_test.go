package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
)

// recordingConsumer models a consumer: it keeps the last snapshot it was
// given and fails while failing is set.
type recordingConsumer struct {
	mu      sync.Mutex
	last    *cluster.Snapshot
	calls   int
	failing atomic.Bool
}

func (c *recordingConsumer) Name() string { return "test" }

func (c *recordingConsumer) Sync(_ context.Context, s *cluster.Snapshot) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.failing.Load() {
		return errors.New("kernel said no")
	}
	c.last = s
	return nil
}

func (c *recordingConsumer) lastSnapshot() *cluster.Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func newTestDaemon(t *testing.T, cons Consumer, objs ...any) (*Daemon, *fake.Clientset, func()) {
	t.Helper()
	return newTestDaemonWith(t, []Consumer{cons})
}

func newTestDaemonWith(t *testing.T, consumers []Consumer) (*Daemon, *fake.Clientset, func()) {
	t.Helper()
	return newTestDaemonOpts(t, consumers, nil)
}

// newTestDaemonOpts starts a daemon on a fake clientset with the test
// defaults, changed by tweak (nil: none), and returns it, its client and
// its stop function.
func newTestDaemonOpts(t *testing.T, consumers []Consumer, tweak func(*Options)) (*Daemon, *fake.Clientset, func()) {
	t.Helper()
	cfg := config.Default()
	cfg.HostRoot = t.TempDir()
	cfg.HealthzBindAddress, cfg.MetricsBindAddress = "", ""
	cfg.Proxy.MinSyncPeriod.Duration = 10 * time.Millisecond
	client := fake.NewClientset()
	o := Options{
		Config: cfg, Client: client, APIHost: "fake", Version: "test",
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Consumers: consumers,
	}
	if tweak != nil {
		tweak(&o)
	}
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.Run(ctx) }()
	return d, client, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

func TestDaemonReadinessAndConsumers(t *testing.T) {
	cons := &recordingConsumer{}
	cons.failing.Store(true)
	d, client, stop := newTestDaemon(t, cons)
	defer stop()

	ctx := context.Background()
	_, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}, Ports: []v1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// While the consumer fails: not ready, the error shows in status and readyz.
	waitUntil(t, 5*time.Second, func() bool { return d.Status().LastSync.Error != "" })
	rec := httptest.NewRecorder()
	d.serveReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "kernel said no") {
		t.Errorf("readyz while failing: %d %q", rec.Code, rec.Body.String())
	}
	if st := d.Status(); st.Ready || st.Consumers[0].LastError == "" {
		t.Errorf("status while failing: %+v", st)
	}

	// Once it succeeds (retried by the runner): ready, snapshot delivered.
	cons.failing.Store(false)
	waitUntil(t, 5*time.Second, func() bool { return d.Status().Ready })
	rec = httptest.NewRecorder()
	d.serveReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 {
		t.Errorf("readyz when ready: %d %q", rec.Code, rec.Body.String())
	}
	snap := cons.lastSnapshot()
	if snap == nil || snap.Services[cluster.ServiceKey{Namespace: "shop", Name: "orders"}] == nil {
		t.Fatalf("consumer did not get the service: %+v", snap)
	}
	st := d.Status()
	if len(st.Snapshot.Services) != 1 || st.Snapshot.Services[0].Name != "orders" {
		t.Errorf("status services: %+v", st.Snapshot.Services)
	}

	// A delete flows through too.
	if err := client.CoreV1().Services("shop").Delete(ctx, "orders", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, func() bool {
		s := cons.lastSnapshot()
		return s != nil && len(s.Services) == 0
	})
	rec = httptest.NewRecorder()
	d.serveHealthz(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 200 {
		t.Errorf("healthz: %d", rec.Code)
	}
}

// blockingConsumer blocks in Sync until released, and records every
// snapshot it was given.
type blockingConsumer struct {
	name    string
	release chan struct{}
	mu      sync.Mutex
	seen    []*cluster.Snapshot
}

func (c *blockingConsumer) Name() string { return c.name }

func (c *blockingConsumer) Sync(ctx context.Context, s *cluster.Snapshot) error {
	c.mu.Lock()
	c.seen = append(c.seen, s)
	c.mu.Unlock()
	select {
	case <-c.release:
	case <-ctx.Done():
	}
	return nil
}

func (c *blockingConsumer) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// TestSlowConsumerDoesNotHoldOthers: every consumer syncs in a loop of its
// own, so while one is stuck in a sync (a large DNS zone being built), the
// others still get every new snapshot; the agent is ready only once all of
// them have synced.
func TestSlowConsumerDoesNotHoldOthers(t *testing.T) {
	slow := &blockingConsumer{name: "slow", release: make(chan struct{})}
	fast := &recordingConsumer{}
	d, client, stop := newTestDaemonWith(t, []Consumer{slow, fast})
	defer stop()
	ctx := context.Background()
	has := func(name string) func() bool {
		return func() bool {
			s := fast.lastSnapshot()
			return s != nil && s.Services[cluster.ServiceKey{Namespace: "shop", Name: name}] != nil
		}
	}
	for _, name := range []string{"orders", "billing"} {
		_, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}, Ports: []v1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 5*time.Second, has(name))
	}
	if n := slow.calls(); n != 1 {
		t.Errorf("the slow consumer, stuck in its first sync, was called %d times", n)
	}
	if st := d.Status(); st.Ready {
		t.Errorf("ready while a consumer has not synced: %+v", st)
	}
	close(slow.release)
	waitUntil(t, 5*time.Second, func() bool { return d.Status().Ready })
	// The slow consumer catches up with the newest snapshot, skipping
	// those published while it was busy.
	waitUntil(t, 5*time.Second, func() bool {
		slow.mu.Lock()
		defer slow.mu.Unlock()
		last := slow.seen[len(slow.seen)-1]
		return last.Services[cluster.ServiceKey{Namespace: "shop", Name: "billing"}] != nil
	})
}

// TestSDNotify: under systemd (NOTIFY_SOCKET set) the agent says READY=1
// after the first full sync and STOPPING=1 on shutdown.
func TestSDNotify(t *testing.T) {
	sock := t.TempDir() + "/notify.sock"
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	_, _, stop := newTestDaemon(t, &recordingConsumer{})
	seen := map[string]bool{}
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 1024)
		for !seen[want] {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %s: %v (seen %v)", want, err, seen)
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				seen[l] = true
			}
		}
	}
	read("READY=1")
	read("WATCHDOG=1")
	stop()
	read("STOPPING=1")
}

// summarizingConsumer adds a Summary to a recordingConsumer.
type summarizingConsumer struct{ *recordingConsumer }

func (summarizingConsumer) Summary() string { return "proxy test" }

// notifyListener listens on a notify socket in a temp dir, sets
// NOTIFY_SOCKET to it, and returns a function that reads the next
// datagram's lines (failing the test after timeout).
func notifyListener(t *testing.T) func(timeout time.Duration) []string {
	t.Helper()
	sock := t.TempDir() + "/notify.sock"
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	return func(timeout time.Duration) []string {
		t.Helper()
		buf := make([]byte, 1024)
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("reading the notify socket: %v", err)
		}
		return strings.Split(string(buf[:n]), "\n")
	}
}

// TestSDNotifyStatus: STATUS= says what the agent waits for while the API
// server is down, READY=1 comes after ReadyTimeout without a sync, and
// STATUS= follows the state: ready with counts and the consumers' summary,
// then a sync error.
func TestSDNotifyStatus(t *testing.T) {
	read := notifyListener(t)
	var down atomic.Bool
	down.Store(true)
	cons := &recordingConsumer{}
	const readyTimeout = 300 * time.Millisecond
	start := time.Now()
	_, client, stop := newTestDaemonOpts(t, []Consumer{summarizingConsumer{cons}}, func(o *Options) {
		o.ReadyTimeout = readyTimeout
		o.RestoreAfter = -1
		fc := o.Client.(*fake.Clientset)
		if err := fc.Tracker().Add(&v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
			Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"}, Ports: []v1.ServicePort{{Port: 80}}},
		}); err != nil {
			t.Fatal(err)
		}
		fc.PrependReactor("*", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
			if down.Load() {
				return true, nil, errors.New("dial tcp 10.0.0.1:6443: connection refused")
			}
			return false, nil, nil
		})
	})
	defer stop()

	// next reads datagrams until one has a line starting with prefix and
	// returns that line, and whether READY=1 came before or with it.
	ready := false
	next := func(prefix string) string {
		t.Helper()
		var seen []string
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			for _, l := range read(time.Until(deadline)) {
				seen = append(seen, l)
				if l == "READY=1" {
					if ready {
						t.Errorf("READY=1 sent twice")
					}
					ready = true
					if e := time.Since(start); e < readyTimeout {
						t.Errorf("READY=1 after %s, before ReadyTimeout %s without a sync", e, readyTimeout)
					}
				}
				if strings.HasPrefix(l, prefix) {
					return l
				}
			}
		}
		t.Fatalf("no %q in %q", prefix, seen)
		return ""
	}
	// First "listing ...", then the probe's error.
	if l := next("STATUS=waiting for the API server: "); l != "STATUS=waiting for the API server: listing Services and EndpointSlices (and Nodes, for routes.mode nodes)" {
		t.Errorf("first status = %q", l)
	}
	next("STATUS=waiting for the API server: dial tcp 10.0.0.1:6443: connection refused")
	next("READY=1")
	down.Store(false)
	if l := next("STATUS=ready: "); l != "STATUS=ready: 1 services, 0 endpoints; proxy test" {
		t.Errorf("ready status = %q", l)
	}
	cons.failing.Store(true)
	if _, err := client.CoreV1().Services("shop").Create(context.Background(), &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "billing"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.21", ClusterIPs: []string{"10.96.0.21"}, Ports: []v1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if l := next("STATUS=sync error: "); l != "STATUS=sync error: test: kernel said no" {
		t.Errorf("sync error status = %q", l)
	}
}

func TestStatusLine(t *testing.T) {
	tr := cluster.NewTracker(cluster.TrackerOptions{})
	tr.UpdateService(&v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	})
	live := tr.Snapshot()
	saved := *live
	saved.Restored = time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		syncErr, apiErr string
		done            *cluster.Snapshot
		consumers       []string
		want            string
	}{
		{"", "", nil, nil, "waiting for the API server: listing Services and EndpointSlices (and Nodes, for routes.mode nodes)"},
		{"", "x509: certificate signed by unknown authority", nil, nil, "waiting for the API server: x509: certificate signed by unknown authority"},
		{"", "connection refused", &saved, nil, "serving the saved snapshot of 2026-12-04T20:00:00Z (API server unreachable: connection refused)"},
		{"", "", live, []string{"proxy nftables"}, "ready: 1 services, 0 endpoints; proxy nftables"},
		{"", "", live, nil, "ready: 1 services, 0 endpoints"},
		{"proxy: nft: exit 1", "", live, nil, "sync error: proxy: nft: exit 1"},
		{"", "Get \"https://10.0.0.1:6443/api/v1/services\": dial tcp 10.0.0.1:6443: connect: connection refused", live, []string{"proxy nftables"},
			"API server unreachable since 12:03:04: Get \"https://10.0.0.1:6443/api/v1/services\": dial tcp 10.0.0.1:6443: connect: connection refused; serving the last rules (1 services, 0 endpoints)"},
	} {
		if got := statusLine(c.syncErr, c.apiErr, time.Date(2026, 12, 4, 12, 3, 4, 0, time.UTC), c.done, c.consumers); got != c.want {
			t.Errorf("statusLine(%q, %q, ...) = %q, want %q", c.syncErr, c.apiErr, got, c.want)
		}
	}
	if got := oneLine("a\nb:\tc  d"); got != "a; b: c d" {
		t.Errorf("oneLine = %q", got)
	}
}

// TestSavedSnapshot: an agent that cannot list the cluster at start serves
// the snapshot a previous run saved, says it is degraded, and replaces it
// with the live one (and saves that) once the API server answers.
func TestSavedSnapshot(t *testing.T) {
	cfg := config.Default()
	cfg.HostRoot = t.TempDir()
	cfg.HealthzBindAddress, cfg.MetricsBindAddress = "", ""
	cfg.Proxy.MinSyncPeriod.Duration = 10 * time.Millisecond

	// A previous run's snapshot: one Service the live cluster no longer has.
	prev := cluster.NewTracker(cluster.TrackerOptions{})
	prev.UpdateService(&v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.20", Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	})
	path := cfg.HostPath(cfg.StateDir) + "/" + SnapshotFile
	savedAt := time.Now().Add(-time.Hour)
	if err := cluster.SaveSnapshot(path, prev.Snapshot(), savedAt); err != nil {
		t.Fatal(err)
	}

	client := fake.NewClientset(&v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "live"},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.21", Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	})
	var down atomic.Bool
	down.Store(true)
	client.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	cons := &recordingConsumer{}
	d, err := New(Options{
		Config: cfg, Client: client, APIHost: "fake", Version: "test",
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Consumers:    []Consumer{cons},
		RestoreAfter: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.Run(ctx) }()

	waitUntil(t, 5*time.Second, func() bool {
		s := cons.lastSnapshot()
		return s != nil && !s.Restored.IsZero()
	})
	if s := cons.lastSnapshot(); s.Services[cluster.ServiceKey{Namespace: "shop", Name: "orders"}] == nil {
		t.Errorf("served snapshot lacks shop/orders: %v", s.Services)
	}
	st := d.Status()
	if !st.Degraded || !st.Ready || !st.Snapshot.Restored.Equal(savedAt.UTC().Truncate(0)) && st.Snapshot.Restored.Sub(savedAt).Abs() > time.Millisecond {
		t.Errorf("status while serving the saved snapshot: degraded %v ready %v restored %v (saved %v)", st.Degraded, st.Ready, st.Snapshot.Restored, savedAt)
	}
	rec := httptest.NewRecorder()
	d.serveReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 || !strings.HasPrefix(rec.Body.String(), "degraded: serving the last snapshot known good, saved 1h0m0s ago") {
		t.Errorf("readyz: %d %q", rec.Code, rec.Body.String())
	}

	down.Store(false)
	waitUntil(t, 30*time.Second, func() bool {
		s := cons.lastSnapshot()
		return s != nil && s.Restored.IsZero()
	})
	live := cons.lastSnapshot()
	if live.Services[cluster.ServiceKey{Namespace: "shop", Name: "live"}] == nil || live.Services[cluster.ServiceKey{Namespace: "shop", Name: "orders"}] != nil {
		t.Errorf("live snapshot: %v", live.Services)
	}
	if st := d.Status(); st.Degraded {
		t.Error("still degraded on the live snapshot")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, err := cluster.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Services[cluster.ServiceKey{Namespace: "shop", Name: "live"}] == nil {
		t.Errorf("the live snapshot was not saved: %v", got.Services)
	}
}
