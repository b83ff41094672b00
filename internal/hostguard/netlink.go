package hostguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// FromNetlink builds Facts from the host's addresses and routes as netlink
// lists them, and the host's resolvers. Loopback (scope host) and IPv6
// link-local addresses count as the host's own but say nothing about
// which next hops are on-link, so they are left out of Connected. Every
// default route, of any table, names a gateway (each next hop of a
// multipath one).
func FromNetlink(addrs []netlink.Addr, routes []netlink.Route, resolvers []netip.Addr) *Facts {
	f := &Facts{Resolvers: append([]netip.Addr(nil), resolvers...)}
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		f.Local = append(f.Local, ip)
		if a.Scope == unix.RT_SCOPE_HOST || ip.IsLoopback() || (ip.Is6() && ip.IsLinkLocalUnicast()) {
			continue
		}
		subnet := a.IPNet
		if a.Peer != nil {
			subnet = a.Peer // point-to-point: the peer's prefix is on-link
		}
		if p, ok := PrefixFrom(subnet); ok {
			f.Connected = append(f.Connected, p)
		}
	}
	for i := range routes {
		r := &routes[i]
		if !isDefault(r) {
			continue
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			f.Gateways = append(f.Gateways, gw)
		}
		for _, nh := range r.MultiPath {
			if gw, ok := netip.AddrFromSlice(nh.Gw); ok {
				f.Gateways = append(f.Gateways, gw)
			}
		}
	}
	f.Normalize()
	return f
}

// isDefault reports whether a listed route is a default route (no
// destination, or a /0 one).
func isDefault(r *netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// PrefixFrom converts a net.IPNet, IPv4-mapped ones to IPv4, masked.
func PrefixFrom(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	if ip.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(ip, ones).Masked(), true
}

// Reader is what Read needs of netlink; *netlink.Handle is one.
type Reader interface {
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
}

var _ Reader = (*netlink.Handle)(nil)

// Read lists the host's addresses and routes (every table) and builds its
// Facts with the given resolvers.
func Read(h Reader, resolvers []netip.Addr) (*Facts, error) {
	addrs, err := ListAddrs(h)
	if err != nil {
		return nil, fmt.Errorf("host guard: %w", err)
	}
	routes, err := ListRoutes(h)
	if err != nil {
		return nil, fmt.Errorf("host guard: %w", err)
	}
	return FromNetlink(addrs, routes, resolvers), nil
}

// dumpAttempts bounds the retries of a netlink dump the kernel interrupted.
const dumpAttempts = 5

// ListAddrs lists every address of both families, retrying a dump the
// kernel interrupted (an address changed while it was read; seen on 5.10
// while other programs add and remove addresses).
func ListAddrs(h Reader) ([]netlink.Addr, error) {
	return retryDump("list addresses", func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
}

// ListRoutes lists every route of both families in every table, retrying
// a dump the kernel interrupted (the table changed while it was read).
func ListRoutes(h Reader) ([]netlink.Route, error) {
	return retryDump("list routes", func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
}

// retryDump runs list until it returns something other than
// netlink.ErrDumpInterrupted, at most dumpAttempts times.
func retryDump[T any](op string, list func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpAttempts {
		var out []T
		if out, err = list(); err == nil {
			return out, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("%s: %w", op, err)
}

// WatcherOptions configure a Watcher.
type WatcherOptions struct {
	// Netns is the network namespace to watch; nil: the agent's own.
	Netns *netns.NsHandle
	// Reader lists addresses and routes; nil: a netlink handle in Netns.
	Reader Reader
	// Resolvers returns the host's resolvers; nil: none.
	Resolvers func() []netip.Addr
	// Every is the period of a full re-read whatever the kernel announced
	// (resolvers live in files, and a notification can be lost).
	Every time.Duration
	// Settle coalesces a burst of notifications into one read (default
	// 200ms).
	Settle time.Duration
	Logger *slog.Logger
}

// Watcher keeps the host's Facts current. It reads them once when made,
// again shortly after the kernel announces an address change or a change
// of a default route (netlink notifications, coalesced), and every
// WatcherOptions.Every.
type Watcher struct {
	o       WatcherOptions
	log     *slog.Logger
	cur     atomic.Pointer[Facts]
	version atomic.Uint64
	mu      sync.Mutex
	updated time.Time
}

// NewWatcher reads the host's Facts once and returns a Watcher holding
// them; Run keeps them current.
func NewWatcher(o WatcherOptions) (*Watcher, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Settle <= 0 {
		o.Settle = 200 * time.Millisecond
	}
	if o.Every <= 0 {
		o.Every = 30 * time.Second
	}
	if o.Reader == nil {
		var h *netlink.Handle
		var err error
		if o.Netns != nil {
			h, err = netlink.NewHandleAt(*o.Netns, unix.NETLINK_ROUTE)
		} else {
			h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		}
		if err != nil {
			return nil, fmt.Errorf("host guard: open netlink: %w", err)
		}
		if err := h.SetSocketTimeout(10 * time.Second); err != nil {
			h.Close()
			return nil, fmt.Errorf("host guard: netlink timeout: %w", err)
		}
		o.Reader = h
	}
	w := &Watcher{o: o, log: o.Logger}
	if _, err := w.refresh(); err != nil {
		return nil, err
	}
	return w, nil
}

// Facts returns the current Facts. The pointer changes exactly when the
// facts do, so it serves as their version.
func (w *Watcher) Facts() *Facts { return w.cur.Load() }

// Version counts the changes of the Facts (1 after the first read).
func (w *Watcher) Version() uint64 { return w.version.Load() }

// Updated is when the Facts last changed.
func (w *Watcher) Updated() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.updated
}

// refresh reads the Facts and stores them when they differ; it reports
// whether they did.
func (w *Watcher) refresh() (bool, error) {
	var res []netip.Addr
	if w.o.Resolvers != nil {
		res = w.o.Resolvers()
	}
	f, err := Read(w.o.Reader, res)
	if err != nil {
		return false, err
	}
	if old := w.cur.Load(); old.Equal(f) {
		return false, nil
	}
	w.cur.Store(f)
	w.version.Add(1)
	w.mu.Lock()
	w.updated = time.Now()
	w.mu.Unlock()
	w.log.Info("host guard: this host's addresses, gateways or resolvers", "facts", f.String(), "version", w.version.Load())
	return true, nil
}

// Run keeps the Facts current until ctx ends, calling onChange after each
// change.
func (w *Watcher) Run(ctx context.Context, onChange func()) {
	sub := w.subscribe()
	defer func() { sub.close() }()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	tick := time.NewTicker(w.o.Every)
	defer tick.Stop()
	pending := false
	poke := func() {
		if !pending {
			pending = true
			settle.Reset(w.o.Settle)
		}
	}
	read := func() {
		changed, err := w.refresh()
		if err != nil {
			w.log.Warn("host guard: cannot read this host's addresses and routes; keeping the last ones", "err", err)
			return
		}
		if changed && onChange != nil {
			onChange()
		}
	}
	var resubscribe <-chan time.Time
	lost := func() {
		sub.close()
		sub = subscription{}
		resubscribe = time.After(time.Second)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-sub.addrs:
			if !ok {
				lost()
				continue
			}
			poke()
		case u, ok := <-sub.routes:
			if !ok {
				lost()
				continue
			}
			if isDefault(&u.Route) {
				poke()
			}
		case <-resubscribe:
			resubscribe = nil
			sub = w.subscribe()
			poke() // what changed while nobody listened
		case <-settle.C:
			pending = false
			read()
		case <-tick.C:
			read()
		}
	}
}

// subscription is one pair of netlink notification channels.
type subscription struct {
	addrs  chan netlink.AddrUpdate
	routes chan netlink.RouteUpdate
	done   chan struct{}
}

func (s subscription) close() {
	if s.done != nil {
		close(s.done)
	}
}

// subscribe opens the address and route notifications. A channel that
// cannot be had stays nil (the periodic read still runs); Run subscribes
// again when a channel closes (a lost or failed socket).
func (w *Watcher) subscribe() subscription {
	s := subscription{
		addrs:  make(chan netlink.AddrUpdate, 64),
		routes: make(chan netlink.RouteUpdate, 256),
		done:   make(chan struct{}),
	}
	onErr := func(err error) { w.log.Debug("host guard: netlink notification error", "err", err) }
	if err := netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{ErrorCallback: onErr, Namespace: w.o.Netns}); err != nil {
		w.log.Warn("host guard: cannot watch address changes; reading them every period only", "err", err)
		s.addrs = nil
	}
	if err := netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{ErrorCallback: onErr, Namespace: w.o.Netns}); err != nil {
		w.log.Warn("host guard: cannot watch route changes; reading them every period only", "err", err)
		s.routes = nil
	}
	return s
}
