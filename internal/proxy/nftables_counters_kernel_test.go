package proxy

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// listCounters lists with the wrapped runner.
func (r *recordingRunner) listCounters(ctx context.Context, fam Family) ([]byte, error) {
	return r.nftRunner.(nftCounterLister).listCounters(ctx, fam)
}

// podLink gives ns the endpoint address 10.244.1.5 on a veth, and a route
// for the cluster IPs 172.30.0.0/16 through it.
func podLink(t *testing.T, ns string) {
	t.Helper()
	inNetns(t, ns, "ip", "link", "add", "pods", "type", "veth", "peer", "name", "podsp")
	inNetns(t, ns, "ip", "link", "set", "podsp", "up")
	inNetns(t, ns, "ip", "link", "set", "pods", "up")
	inNetns(t, ns, "ip", "addr", "add", "10.244.1.5/32", "dev", "pods")
	inNetns(t, ns, "ip", "route", "add", "172.30.0.0/16", "dev", "pods")
}

// connectInNetns opens n TCP connections to dst from inside ns, each
// answered by a listener at endpoint (an address of the namespace), and
// one to refused, a Service port without endpoints.
func connectInNetns(t *testing.T, ns, dst, endpoint, refused string, n int) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread enters the namespace and dies with it
		errc <- func() error {
			h, err := netns.GetFromName(ns)
			if err != nil {
				return err
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", endpoint)
			if err != nil {
				return err
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			for range n {
				c, err := net.DialTimeout("tcp", dst, 5*time.Second)
				if err != nil {
					return fmt.Errorf("connect to %s: %w", dst, err)
				}
				c.Close()
			}
			if _, err := net.DialTimeout("tcp", refused, 5*time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
				return fmt.Errorf("connect to %s (no endpoints): %v, want connection refused", refused, err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// The kernel counts each connection once on its Service port's counter,
// refused ones too; the counts survive incremental writes, the periodic
// full write and changes of the Service's endpoints; cleanup removes them
// with the table.
func TestNFTablesCountersKernel(t *testing.T) {
	ctx := context.Background()
	p, ns, x, _, clockp := newKernelNFTables(t, NFTablesOptions{Masquerade: true, FullSyncPeriod: time.Hour})
	clock := *clockp
	p.now = func() time.Time { return clock }
	if err := p.Sync(ctx, snapshot(testServices()...)); err != nil {
		t.Fatal(err)
	}
	podLink(t, ns)

	count := func(step string, https, empty uint64) {
		t.Helper()
		got, err := p.ServiceCounters(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		var seen int
		for _, c := range got {
			var want uint64
			switch {
			case c.Namespace == "ns1" && c.Service == "web" && c.Port == "https":
				want, seen = https, seen+1
			case c.Namespace == "ns3" && c.Service == "empty" && c.Port == "http":
				want, seen = empty, seen+1
			}
			if c.Connections != want {
				t.Errorf("%s: %s/%s:%s/%s counted %d connections, want %d", step, c.Namespace, c.Service, c.Port, c.Protocol, c.Connections, want)
			}
		}
		if seen != 2 {
			t.Errorf("%s: the counters of ns1/web:https and ns3/empty:http are missing: %+v", step, got)
		}
	}
	count("before any connection", 0, 0)
	connectInNetns(t, ns, "172.30.0.10:443", "10.244.1.5:8443", "172.30.0.80:80", 3)
	count("3 connections", 3, 1)

	// An incremental write changing web's endpoints, then the periodic
	// full write: the counts stay.
	svcs := testServices()
	svcs[0].Ports[0] = svcPort("http", 80, "TCP", ready("10.244.1.9", 8080))
	s2 := snapshot(svcs...)
	s2.Version = 2
	if err := p.Sync(ctx, s2); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(2 * time.Hour)
	if err := p.Sync(ctx, s2); err != nil {
		t.Fatal(err)
	}
	connectInNetns(t, ns, "172.30.0.10:443", "10.244.1.5:8443", "172.30.0.80:80", 2)
	count("after incremental and full writes, 2 more", 5, 2)

	if err := cleanupNFTables(ctx, x); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(inNetns(t, ns, "nft", "list", "counters")); strings.Contains(got, "counter") {
		t.Errorf("counters left after cleanup:\n%s", got)
	}
}
