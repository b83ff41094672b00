package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// kernelWatch follows one namespace's netfilter ruleset through the
// nf_tables netlink notifications (what `nft monitor` reads), which the
// kernel sends for every committed rule and set element: nftables ones and
// iptables-nft ones alike. It timestamps the first new rule or element
// that carries each awaited address, as the 4 bytes the kernel stores.
// Reading raw notifications keeps up with transactions of 100k elements,
// which `nft monitor` (formatting each event) does not; a dump of such a
// ruleset takes seconds. A notification is sent when its transaction
// commits, so its arrival is when the rule is in the kernel.
type kernelWatch struct {
	netns string
	log   *slog.Logger
	tb    *testbed.Testbed

	mu      sync.Mutex
	waiters map[netip.Addr]chan time.Time
	fd      int
	lost    atomic.Int64 // receive buffer overruns (events lost)
	msgs    atomic.Int64
	stopped atomic.Bool
	done    chan struct{}
}

// nf_tables netlink constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const (
	nfnlSubsysNFTables = 10
	nftMsgNewRule      = 6
	nftMsgNewSetElem   = 12
	nfnlgrpNFTables    = 7
	nlmsgHdrLen        = 16
	nfgenHdrLen        = 4
)

func startWatch(tb *testbed.Testbed, netns string, log *slog.Logger) (*kernelWatch, error) {
	w := &kernelWatch{netns: netns, log: log, tb: tb, waiters: map[netip.Addr]chan time.Time{}, done: make(chan struct{})}
	// The socket belongs to the namespace of the thread that creates it.
	err := tb.InNetns(netns, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		// A full sync of 100k elements sends 100k notifications at once.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 512<<20); err != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<20)
		}
		tv := unix.Timeval{Usec: 200000}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (nfnlgrpNFTables - 1)}); err != nil {
			unix.Close(fd)
			return err
		}
		w.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("watch nf_tables in %s: %w", netns, err)
	}
	go w.read()
	return w, nil
}

func (w *kernelWatch) read() {
	defer close(w.done)
	defer unix.Close(w.fd)
	buf := make([]byte, 8<<20)
	for !w.stopped.Load() {
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		now := time.Now()
		if err != nil {
			switch {
			case errors.Is(err, unix.ENOBUFS):
				w.lost.Add(1)
				w.log.Warn("nf_tables notifications lost (receive buffer full)", "netns", w.netns)
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			default:
				w.log.Error("watch nf_tables", "netns", w.netns, "err", err)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		for off := 0; off+nlmsgHdrLen <= n; {
			l := int(binary.NativeEndian.Uint32(buf[off:]))
			if l < nlmsgHdrLen || off+l > n {
				break
			}
			typ := binary.NativeEndian.Uint16(buf[off+4:])
			if typ>>8 == nfnlSubsysNFTables {
				if m := typ & 0xff; m == nftMsgNewRule || m == nftMsgNewSetElem {
					w.msgs.Add(1)
					w.scan(buf[off+nlmsgHdrLen+nfgenHdrLen:off+l], now)
				}
			}
			off += (l + 3) &^ 3
		}
	}
}

// scan looks for every awaited address in one notification's attributes.
func (w *kernelWatch) scan(p []byte, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.waiters) == 0 {
		return
	}
	for i := 0; i+4 <= len(p); i++ {
		a := netip.AddrFrom4([4]byte(p[i : i+4]))
		if ch, ok := w.waiters[a]; ok {
			ch <- now
			delete(w.waiters, a)
		}
	}
}

func (w *kernelWatch) stop() {
	if w.stopped.Swap(true) {
		return
	}
	<-w.done
}

// Expect returns a channel that receives the time the address is first
// added to the ruleset from now on.
func (w *kernelWatch) Expect(a netip.Addr) <-chan time.Time {
	ch := make(chan time.Time, 1)
	w.mu.Lock()
	w.waiters[a] = ch
	w.mu.Unlock()
	return ch
}

// Forget drops a wait that will not be served.
func (w *kernelWatch) Forget(a netip.Addr) {
	w.mu.Lock()
	delete(w.waiters, a)
	w.mu.Unlock()
}

// forEachIPv4 calls fn for every dotted-quad IPv4 address in s.
func forEachIPv4(s string, fn func(netip.Addr)) {
	isAddrByte := func(c byte) bool { return c == '.' || (c >= '0' && c <= '9') }
	for i := 0; i < len(s); {
		if !isAddrByte(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isAddrByte(s[j]) {
			j++
		}
		if j-i >= 7 && strings.Count(s[i:j], ".") == 3 {
			if a, err := netip.ParseAddr(s[i:j]); err == nil {
				fn(a)
			}
		}
		i = j
	}
}

// ruleCounts describes what a peer programmed in its namespace.
type ruleCounts struct {
	Rules     int // iptables rules (nat and filter) or nftables rules of the peer's table
	Elements  int // set and map elements (nftables)
	Chains    int
	BenchEPs  int // distinct loaded endpoint addresses present
	DumpBytes int
	DumpTime  time.Duration
}

// countRules dumps the ruleset of netns once. nftables peers: their table
// (family ip) as JSON; iptables peers: iptables-save of nat and filter.
func countRules(ctx context.Context, tb *testbed.Testbed, netns string, nftTable string) (ruleCounts, error) {
	var rc ruleCounts
	start := time.Now()
	var text []byte
	if nftTable != "" {
		out, err := tb.Exec(ctx, netns, "nft", "-j", "list", "table", "ip", nftTable)
		if err != nil {
			return rc, err
		}
		text = out
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal(out, &doc); err != nil {
			return rc, fmt.Errorf("parse nft json: %w", err)
		}
		for _, o := range doc.Nftables {
			for k, v := range o {
				switch k {
				case "rule":
					rc.Rules++
				case "chain":
					rc.Chains++
				case "set", "map":
					var s struct {
						Elem []json.RawMessage `json:"elem"`
					}
					_ = json.Unmarshal(v, &s)
					rc.Elements += len(s.Elem)
				}
			}
		}
	} else {
		for _, table := range []string{"nat", "filter"} {
			out, err := tb.Exec(ctx, netns, "iptables-save", "-t", table)
			if err != nil {
				return rc, err
			}
			text = append(text, out...)
			for _, l := range strings.Split(string(out), "\n") {
				switch {
				case strings.HasPrefix(l, "-A "):
					rc.Rules++
				case strings.HasPrefix(l, ":"):
					rc.Chains++
				}
			}
		}
	}
	rc.DumpTime = time.Since(start)
	rc.DumpBytes = len(text)
	seen := map[netip.Addr]bool{}
	loadNet := netip.MustParsePrefix("10.128.0.0/9")
	changeNet := netip.MustParsePrefix("10.64.0.0/10")
	forEachIPv4(string(text), func(a netip.Addr) {
		if loadNet.Contains(a) || changeNet.Contains(a) {
			seen[a] = true
		}
	})
	rc.BenchEPs = len(seen)
	return rc, nil
}

// hasAddr reports whether a appears in netns's ruleset (a fallback when the
// monitor lost events).
func hasAddr(ctx context.Context, tb *testbed.Testbed, netns string, a netip.Addr) bool {
	out, err := tb.Exec(ctx, netns, "nft", "list", "ruleset")
	if err != nil {
		return false
	}
	found := false
	forEachIPv4(string(out), func(x netip.Addr) {
		if x == a {
			found = true
		}
	})
	return found
}
