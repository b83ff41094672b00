package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// The data-path target: one pod serving TCP behind one ClusterIP Service,
// so that ClusterIP and pod IP reach the very same server.
const (
	dpNamespace = "bench-dp"
	dpService   = "target"
	dpPort      = 9090
)

type dpTarget struct {
	clusterIP string // ip:port
	podIP     string // ip:port
}

func setupDatapath(ctx context.Context, tb *testbed.Testbed) (*dpTarget, error) {
	labels := map[string]string{"app": dpService}
	pod, err := tb.CreatePod(ctx, testbed.PodSpec{
		Namespace: dpNamespace, Name: dpService + "-0", Node: 1, Labels: labels, Ready: true,
		Ports: []testbed.Port{{Name: "tcp", Port: dpPort, Protocol: "TCP"}},
	})
	if err != nil {
		return nil, fmt.Errorf("data path target: %w", err)
	}
	svc, err := tb.Client.CoreV1().Services(dpNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: dpService},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromString("tcp"), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("data path target: %w", err)
	}
	return &dpTarget{
		clusterIP: net.JoinHostPort(svc.Spec.ClusterIP, "80"),
		podIP:     net.JoinHostPort(pod.IPv4, fmt.Sprint(dpPort)),
	}, nil
}

// connStats summarises connects to one address.
type connStats struct {
	N, Errors int
	P50, P99  time.Duration
	PerSec    float64 // with dpWorkers connecting at once
	Samples   []time.Duration
}

// dpRun compares ClusterIP and pod IP through one peer's rules.
type dpRun struct {
	Services          int
	ClusterIP, Direct connStats
}

const dpWorkers = 4

// datapath measures connects from the peer's namespace: first one at a
// time, alternating ClusterIP and pod IP, for latency; then dpWorkers
// connecting in parallel for connections per second, alternating halves.
func (b *bench) datapath(ctx context.Context, pr *peer) (*dpRun, error) {
	if b.dp == nil {
		return nil, nil
	}
	d := &dpRun{Services: b.load.Count() + b.baseServices}
	targets := []string{b.dp.clusterIP, b.dp.podIP}
	stats := []*connStats{&d.ClusterIP, &d.Direct}
	// Warm up: ARP/ND entries, the first connection's route lookups.
	for _, t := range targets {
		for range 20 {
			if _, err := b.connectOnce(pr.netns, t); err != nil {
				return d, fmt.Errorf("connect %s from %s: %w", t, pr.netns, err)
			}
		}
	}
	n := b.connects
	err := b.env.tb.InNetns(pr.netns, func() error {
		for i := range 2 * n {
			k := i % 2
			lat, err := dialRead(ctx, targets[k])
			stats[k].N++
			if err != nil {
				stats[k].Errors++
				continue
			}
			stats[k].Samples = append(stats[k].Samples, lat)
		}
		return nil
	})
	if err != nil {
		return d, err
	}
	for _, s := range stats {
		slices.Sort(s.Samples)
		s.P50, s.P99 = pct(s.Samples, 0.5), pct(s.Samples, 0.99)
	}
	for round := range 2 {
		for k, t := range targets {
			_ = round
			rate, errs := b.connectRate(ctx, pr.netns, t, n)
			stats[k].PerSec += rate / 2
			stats[k].Errors += errs
		}
	}
	return d, nil
}

func (b *bench) connectOnce(netns, target string) (time.Duration, error) {
	var lat time.Duration
	err := b.env.tb.InNetns(netns, func() error {
		var err error
		lat, err = dialRead(context.Background(), target)
		return err
	})
	return lat, err
}

// dialRead connects to target, reads the server's line to its end and
// closes; it returns the connect (handshake) time. It must run on a thread
// inside the right namespace.
func dialRead(ctx context.Context, target string) (time.Duration, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	start := time.Now()
	c, err := d.DialContext(ctx, "tcp4", target)
	if err != nil {
		return 0, err
	}
	lat := time.Since(start)
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, err = io.Copy(io.Discard, c)
	c.Close()
	return lat, err
}

// connectRate makes n connects with dpWorkers workers and returns connects
// per second and the number of failures.
func (b *bench) connectRate(ctx context.Context, netns, target string, n int) (float64, int) {
	var mu sync.Mutex
	errs, done := 0, 0
	var wg sync.WaitGroup
	start := time.Now()
	per := max(n/dpWorkers, 1)
	for range dpWorkers {
		wg.Go(func() {
			_ = b.env.tb.InNetns(netns, func() error {
				for range per {
					_, err := dialRead(ctx, target)
					mu.Lock()
					done++
					if err != nil {
						errs++
					}
					mu.Unlock()
				}
				return nil
			})
		})
	}
	wg.Wait()
	el := time.Since(start)
	return float64(done-errs) / el.Seconds(), errs
}
