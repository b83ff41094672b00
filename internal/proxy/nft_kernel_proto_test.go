package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// nftProtoService is a Service of TestNFTablesKernelProtocols: its endpoints
// are the first count[phase] of four, each a real listener in the namespace.
type nftProtoService struct {
	name     string
	proto    string // "tcp", "udp", "sctp"
	port     int32
	count    []int // by phase
	affinity bool
	// probe: traffic is sent to it (no SCTP sockets in the test).
	probe bool
	vip   string
	eps   [4]string
}

// TestNFTablesKernelProtocols sends real TCP and UDP traffic to Services with
// one, two and three endpoints and with session affinity, in a namespace,
// after each kind of transaction: the first full load, an incremental sync
// that changes endpoint counts (new pick and affinity chains written while
// the maps exist), the periodic full refill (every rule written again into
// existing maps) and another incremental sync. Every connection must reach
// one of its Service's current endpoints, a client with affinity must stay on
// its endpoint, and no rule of ours may carry a protocol test (an implicit
// dependency nft adds for a protocol's header field) other than its chain's
// own protocol.
func TestNFTablesKernelProtocols(t *testing.T) {
	for _, fam := range []Family{IPv4, IPv6} {
		t.Run(fam.String(), func(t *testing.T) { testNFTProtocols(t, fam) })
	}
}

func testNFTProtocols(t *testing.T, fam Family) {
	ns := nftNetns(t)
	ctx := context.Background()
	x := netnsNFT(ns)
	if ok, reason := nftSupported(ctx, x); !ok {
		t.Fatalf("nftables not supported: %s", reason)
	}

	svcs := []*nftProtoService{
		{name: "tcp-1", proto: "tcp", port: 80, count: []int{1, 4, 4, 1}, probe: true},
		{name: "tcp-2", proto: "tcp", port: 80, count: []int{2, 1, 1, 2}, probe: true},
		{name: "tcp-3", proto: "tcp", port: 80, count: []int{3, 2, 2, 3}, probe: true},
		{name: "udp-1", proto: "udp", port: 53, count: []int{1, 3, 3, 1}, probe: true},
		{name: "udp-2", proto: "udp", port: 53, count: []int{2, 4, 4, 2}, probe: true},
		{name: "udp-3", proto: "udp", port: 53, count: []int{3, 1, 1, 3}, probe: true},
		{name: "sticky-tcp", proto: "tcp", port: 80, count: []int{2, 3, 3, 3}, affinity: true, probe: true},
		{name: "sticky-udp", proto: "udp", port: 53, count: []int{2, 3, 3, 3}, affinity: true, probe: true},
		{name: "sctp", proto: "sctp", port: 9999, count: []int{1, 2, 2, 1}},
	}
	const (
		tcpTarget = 8080
		udpTarget = 5353
	)
	client := "10.0.0.1"
	route := []string{"ip", "route", "add", "172.30.0.0/16", "dev", "pods", "src", client}
	addrArgs := func(a string) []string { return []string{"ip", "addr", "add", a + "/32", "dev", "pods"} }
	for i, s := range svcs {
		if fam == IPv6 {
			s.vip = fmt.Sprintf("fd00:30::1:%d", i+1)
			for j := range s.eps {
				s.eps[j] = fmt.Sprintf("fd00:244::%d:%d", i+1, j+1)
			}
		} else {
			s.vip = fmt.Sprintf("172.30.1.%d", i+1)
			for j := range s.eps {
				s.eps[j] = fmt.Sprintf("10.244.%d.%d", i+1, j+1)
			}
		}
	}
	if fam == IPv6 {
		client = "fd00:1::1"
		route = []string{"ip", "-6", "route", "add", "fd00:30::/64", "dev", "pods", "src", client}
		addrArgs = func(a string) []string {
			return []string{"ip", "-6", "addr", "add", a + "/128", "dev", "pods", "nodad"}
		}
	}
	inNetns(t, ns, "ip", "link", "add", "pods", "type", "veth", "peer", "name", "podsp")
	inNetns(t, ns, "ip", "link", "set", "podsp", "up")
	inNetns(t, ns, "ip", "link", "set", "pods", "up")
	inNetns(t, ns, addrArgs(client)...)
	for _, s := range svcs {
		for _, ep := range s.eps {
			inNetns(t, ns, addrArgs(ep)...)
		}
	}
	inNetns(t, ns, route...)

	// One listener per endpoint, answering with its address.
	var closers []func()
	t.Cleanup(func() {
		for _, c := range closers {
			c()
		}
	})
	err := inNetnsThread(ns, func() error {
		for _, s := range svcs {
			if !s.probe {
				continue
			}
			for _, ep := range s.eps {
				switch s.proto {
				case "tcp":
					ln, err := net.Listen("tcp", net.JoinHostPort(ep, strconv.Itoa(tcpTarget)))
					if err != nil {
						return err
					}
					closers = append(closers, func() { ln.Close() })
					go func() {
						for {
							c, err := ln.Accept()
							if err != nil {
								return
							}
							c.Write([]byte(ep))
							c.Close()
						}
					}()
				case "udp":
					pc, err := net.ListenPacket("udp", net.JoinHostPort(ep, strconv.Itoa(udpTarget)))
					if err != nil {
						return err
					}
					closers = append(closers, func() { pc.Close() })
					go func() {
						buf := make([]byte, 64)
						for {
							_, from, err := pc.ReadFrom(buf)
							if err != nil {
								return
							}
							pc.WriteTo([]byte(ep), from)
						}
					}()
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listeners: %v", err)
	}

	snapFor := func(phase int) *cluster.Snapshot {
		snap := &cluster.Snapshot{Version: uint64(phase + 1), Services: map[cluster.ServiceKey]*cluster.Service{}}
		for _, s := range svcs {
			target := int32(tcpTarget)
			if s.proto == "udp" {
				target = udpTarget
			}
			var eps []cluster.Endpoint
			for _, ep := range s.eps[:s.count[phase]] {
				eps = append(eps, ready(ep, target))
			}
			slices.SortFunc(eps, compareEndpoints)
			svc := service("proto", s.name, []string{s.vip}, svcPort("p", s.port, strings.ToUpper(s.proto), eps...))
			if s.affinity {
				svc.SessionAffinityTimeout = time.Hour
			}
			snap.Services[svc.ServiceKey] = svc
		}
		return snap
	}

	rec := &recordingRunner{nftRunner: x}
	p := newNFTables(NFTablesOptions{Families: []Family{fam}, Masquerade: true, FullSyncPeriod: time.Hour}, rec, nil)
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }

	pinned := map[string]string{} // sticky Service → its client's endpoint
	// Every probe has its own source port: a reused one could find the
	// conntrack entry of an earlier probe, with its old endpoint (the
	// backend's conntrack cleanup does not run here).
	srcPort := 20000
	phases := []struct {
		name string
		// kind checks the transaction the sync sent.
		kind func(script string) error
	}{
		{"first full load", func(s string) error {
			if !strings.Contains(s, "delete table") {
				return errors.New("not a recreation of the table")
			}
			return nil
		}},
		{"incremental sync changing endpoint counts", func(s string) error {
			if strings.Contains(s, "flush map") || strings.Contains(s, "flush set") {
				return errors.New("not incremental")
			}
			if !strings.Contains(s, "add chain") || !strings.Contains(s, "add rule") {
				return errors.New("no new chain written while the maps exist")
			}
			return nil
		}},
		{"periodic full refill", func(s string) error {
			if strings.Contains(s, "delete table") || !strings.Contains(s, "flush chain") || !strings.Contains(s, "add rule") {
				return errors.New("not a refill in place")
			}
			return nil
		}},
		{"incremental sync back", func(s string) error {
			if strings.Contains(s, "flush map") || strings.Contains(s, "flush set") {
				return errors.New("not incremental")
			}
			return nil
		}},
	}
	for phase, ph := range phases {
		if phase == 2 {
			clock = clock.Add(2 * time.Hour)
		}
		snap := snapFor(phase)
		if phase == 2 {
			snap = snapFor(1) // the same content: only the refill rewrites
			snap.Version = 3
		}
		n := len(rec.scripts)
		if err := p.Sync(ctx, snap); err != nil {
			t.Fatalf("%s: %v", ph.name, err)
		}
		if len(rec.scripts) != n+1 {
			t.Fatalf("%s: %d transactions, want 1", ph.name, len(rec.scripts)-n)
		}
		if err := ph.kind(string(rec.scripts[n])); err != nil {
			t.Fatalf("%s: %v:\n%s", ph.name, err, rec.scripts[n])
		}
		checkNFTProtocolDeps(t, ns, fam, ph.name)

		err := inNetnsThread(ns, func() error {
			var errs []error
			for _, s := range svcs {
				if !s.probe {
					continue
				}
				want := s.eps[:s.count[phase]]
				if phase == 2 {
					want = s.eps[:s.count[1]]
				}
				for try := range 6 {
					srcPort++
					got, err := nftProbe(s.proto, client, srcPort, s.vip, int(s.port))
					if err != nil {
						errs = append(errs, fmt.Errorf("%s (%s %s:%d) try %d: %w", s.name, s.proto, s.vip, s.port, try, err))
						break
					}
					if !slices.Contains(want, got) {
						errs = append(errs, fmt.Errorf("%s: reached %s, want one of %v", s.name, got, want))
						break
					}
					if s.affinity {
						if pinned[s.name] == "" {
							pinned[s.name] = got
						}
						if got != pinned[s.name] {
							errs = append(errs, fmt.Errorf("%s: client with affinity moved from %s to %s", s.name, pinned[s.name], got))
							break
						}
					}
				}
			}
			return errors.Join(errs...)
		})
		if err != nil {
			t.Errorf("after the %s:\n%v", ph.name, err)
		}
	}
}

// nftProbe opens a connection from src:srcPort to a Service (TCP: connect
// and read; UDP: send a datagram and read the answer) and returns what the
// endpoint answered: its address.
func nftProbe(proto, src string, srcPort int, vip string, port int) (string, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	if proto == "tcp" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src), Port: srcPort}
	} else {
		d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src), Port: srcPort}
	}
	c, err := d.Dial(proto, net.JoinHostPort(vip, strconv.Itoa(port)))
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if proto == "udp" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("no answer: %w", err)
	}
	return string(buf[:n]), nil
}

// inNetnsThread runs fn on an OS thread inside the namespace; the thread
// is never used again. Sockets keep their namespace after the thread ends.
func inNetnsThread(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

var (
	nftDebugChain  = regexp.MustCompile(`^ip6? ` + regexp.QuoteMeta(NFTablesTable) + ` ([^@ ][^ ]*) [0-9]+`)
	nftDebugL4Load = regexp.MustCompile(`^\s*\[ meta load l4proto => reg ([0-9]+) \]`)
	nftDebugCmpEq  = regexp.MustCompile(`^\s*\[ cmp eq reg ([0-9]+) 0x([0-9a-f]+) \]`)
)

// checkNFTProtocolDeps lists every chain of our table with its bytecode
// (nft --debug=netlink) and checks that the only protocol tests (a meta
// l4proto load compared for equality) are for the protocol the chain is
// for: its name's suffix (-tcp, -udp, -sctp); chains without one may have
// none.
func checkNFTProtocolDeps(t *testing.T, ns string, fam Family, when string) {
	t.Helper()
	famWord, _ := nftFamily(fam)
	var chains []string
	for _, line := range strings.Split(inNetns(t, ns, "nft", "list", "chains", famWord), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "chain "); ok {
			chains = append(chains, strings.TrimSuffix(name, " {"))
		}
	}
	if len(chains) < 7 {
		t.Fatalf("%s: chains %v", when, chains)
	}
	protoNum := map[string]uint64{"tcp": 6, "udp": 17, "sctp": 132}
	checked := 0
	for _, chain := range chains {
		want := int64(-1)
		for name, num := range protoNum {
			if strings.HasSuffix(chain, "-"+name) {
				want = int64(num)
			}
		}
		// Not fatal, so that the traffic checks still run.
		o, err := exec.Command("ip", "netns", "exec", ns, "nft", "--debug=netlink", "list", "chain", famWord, NFTablesTable, chain).CombinedOutput()
		out := string(o)
		if err != nil {
			t.Errorf("after the %s: nft --debug=netlink list chain %s: %v: %.300s", when, chain, err, out)
			continue
		}
		cur, l4reg := "", ""
		for _, line := range strings.Split(out, "\n") {
			if m := nftDebugChain.FindStringSubmatch(line); m != nil {
				cur, l4reg = m[1], ""
				continue
			}
			if cur != chain {
				continue
			}
			if m := nftDebugL4Load.FindStringSubmatch(line); m != nil {
				l4reg = m[1]
				continue
			}
			if m := nftDebugCmpEq.FindStringSubmatch(line); m != nil && m[1] == l4reg {
				checked++
				v, _ := strconv.ParseUint(m[2], 16, 32)
				if int64(v) != want {
					t.Errorf("after the %s: chain %s tests l4proto == %d (want only %d):\n%s", when, chain, v, want, out)
				}
			}
			if strings.Contains(line, "]") && !nftDebugL4Load.MatchString(line) {
				l4reg = ""
			}
		}
	}
	t.Logf("after the %s: %d chains, %d protocol tests, all for their chain's protocol", when, len(chains), checked)
}
