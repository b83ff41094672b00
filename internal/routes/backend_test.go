package routes

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// backend is a host to run the reconciler against: the fake, or a real
// kernel in a private network namespace.
type backend struct {
	name string
	h    netlinkHandle
	// addLink adds an interface with addresses.
	addLink func(t *testing.T, name string, cidrs ...string)
	// addRoute adds someone else's route.
	addRoute func(t *testing.T, r *netlink.Route)
	// dump is every route but the kernel's own, as text.
	dump func(t *testing.T) string
	// writes counts route writes (fake only; -1 for the kernel).
	writes func() int
}

// forEachBackend runs fn on the fake, and on the kernel when the test
// may create network namespaces.
func forEachBackend(t *testing.T, fn func(t *testing.T, b *backend)) {
	t.Run("fake", func(t *testing.T) {
		f := newFakeNetlink()
		fn(t, &backend{
			name: "fake",
			h:    f,
			addLink: func(t *testing.T, name string, cidrs ...string) {
				f.addLink(name, cidrs...)
			},
			addRoute: func(t *testing.T, r *netlink.Route) {
				nr, err := f.check(r)
				if err != nil {
					t.Fatalf("fake: add %s: %v", describe(r, nil), err)
				}
				f.routes = append(f.routes, nr)
			},
			dump:   func(t *testing.T) string { return dumpRoutes(t, f) },
			writes: func() int { return f.writes },
		})
	})
	t.Run("kernel", func(t *testing.T) {
		n := newTestNetns(t)
		fn(t, &backend{
			name:    "kernel",
			h:       n.h,
			addLink: n.addLink,
			addRoute: func(t *testing.T, r *netlink.Route) {
				if err := n.h.RouteAdd(r); err != nil {
					t.Fatalf("kernel: add %s: %v", describe(r, nil), err)
				}
			},
			dump:   func(t *testing.T) string { return dumpRoutes(t, n.h) },
			writes: func() int { return -1 },
		})
	})
}

var netnsSeq atomic.Int32

// testNetns is a private network namespace for one test, with a netlink
// handle into it. Nothing is done in the caller's own namespace.
type testNetns struct {
	name string
	h    *netlink.Handle
}

// newTestNetns creates a network namespace (`ip netns add`) that the test
// removes when it ends, or skips the test when it may not.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a private network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("iproute2's ip is needed to create a network namespace (hack/install-deps.sh installs it)")
	}
	name := fmt.Sprintf("bart-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create a network namespace (needs root, CAP_NET_ADMIN and CAP_SYS_ADMIN): %v: %s", err, out)
	}
	n := &testNetns{name: name}
	t.Cleanup(func() {
		if n.h != nil {
			n.h.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer ns.Close()
	if n.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE); err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs `ip -n <netns> args...`.
func (n *testNetns) ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addLink adds a veth pair, both ends inside the namespace, and gives the
// named end the addresses (without duplicate address detection, so IPv6
// addresses are usable at once).
func (n *testNetns) addLink(t *testing.T, name string, cidrs ...string) {
	t.Helper()
	peer := name + "p"
	n.ip(t, "link", "add", name, "type", "veth", "peer", "name", peer)
	for _, c := range cidrs {
		args := []string{"addr", "add", c, "dev", name}
		if strings.Contains(c, ":") {
			args = append(args, "nodad")
		}
		n.ip(t, args...)
	}
	n.ip(t, "link", "set", peer, "up")
	n.ip(t, "link", "set", name, "up")
}

// foreignRoute builds someone else's route: dst via gw (or onto no
// gateway when gw is empty) with protocol proto.
func foreignRoute(dst, gw string, proto, table int) *netlink.Route {
	p := netip.MustParsePrefix(dst)
	r := &netlink.Route{Dst: ipNet(p), Protocol: netlink.RouteProtocol(proto), Table: table}
	if gw != "" {
		r.Gw = net.IP(netip.MustParseAddr(gw).AsSlice())
	} else {
		r.Type = unix.RTN_BLACKHOLE
	}
	return r
}
