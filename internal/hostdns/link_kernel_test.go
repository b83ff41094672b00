package hostdns

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs f on a thread in a network namespace of its own, which
// goes away with the thread.
func inNewNetns(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		h, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer h.Close()
		f(t)
	}()
	<-done
}

// TestLinkKernel: the link netlinkLinker makes is what systemd-resolved
// needs (up, with carrier, the address of scope global) and a socket bound
// to that link, as resolved binds its socket for a link's server
// (SO_BINDTOIFINDEX), reaches a server listening on the link's address and
// gets its reply. Repeated ensures change nothing; remove deletes only a
// link with our alias.
func TestLinkKernel(t *testing.T) {
	inNewNetns(t, func(t *testing.T) {
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		spec := defaultLinkSpec()
		var l netlinkLinker
		idx, changed, err := l.ensure(spec)
		if err != nil || !changed {
			t.Fatalf("ensure: %d %v %v", idx, changed, err)
		}
		if _, changed, err := l.ensure(spec); err != nil || changed {
			t.Errorf("second ensure: changed %v, %v", changed, err)
		}
		link, err := netlink.LinkByIndex(idx)
		if err != nil {
			t.Fatal(err)
		}
		a := link.Attrs()
		if a.Alias != linkAlias || a.RawFlags&syscall.IFF_UP == 0 || a.RawFlags&iffLowerUp == 0 || a.RawFlags&syscall.IFF_LOOPBACK != 0 {
			t.Errorf("link %s: alias %q flags %#x; want ours, UP and LOWER_UP", a.Name, a.Alias, a.RawFlags)
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "169.254.255.77/32" || addrs[0].Scope != int(netlink.SCOPE_UNIVERSE) {
			t.Errorf("addresses %v, want only 169.254.255.77/32 scope global", addrs)
		}

		// The stub's side: a socket on the link's address.
		srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(LinkAddr, 0)))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		go func() {
			buf := make([]byte, 64)
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err == nil {
				// The source resolved's query has: the stub's client check
				// must accept it.
				srv.WriteToUDPAddrPort(append([]byte(from.Addr().String()+" "), buf[:n]...), from)
			}
		}()
		// resolved's side: a socket bound to the link.
		c, err := net.ListenUDP("udp", &net.UDPAddr{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, _ := c.SyscallConn()
		var serr error
		rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 62 /* SO_BINDTOIFINDEX */, idx)
		})
		if serr != nil {
			t.Fatalf("SO_BINDTOIFINDEX: %v", serr)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.WriteToUDPAddrPort([]byte("query"), netip.MustParseAddrPort(srv.LocalAddr().String())); err != nil {
			t.Fatalf("send from a socket bound to the link: %v", err)
		}
		buf := make([]byte, 64)
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "169.254.255.77 query" {
			t.Errorf("reply to the socket bound to the link: %q %v; want it, from the link's own address", buf[:n], err)
		}

		// Someone else's link of that name is never removed.
		if ok, err := l.remove(spec); !ok || err != nil {
			t.Fatalf("remove: %v %v", ok, err)
		}
		if _, err := netlink.LinkByName(linkPeer); err == nil {
			t.Error("the peer outlived the link")
		}
		if ok, err := l.remove(spec); ok || err != nil {
			t.Errorf("second remove: %v %v", ok, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = spec.Name
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "other-p"}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.remove(spec); err == nil {
			t.Error("removed a link that is not ours")
		}
		if _, _, err := l.ensure(spec); err == nil {
			t.Error("took over a link that is not ours")
		}
		if _, err := netlink.LinkByName(spec.Name); err != nil {
			t.Errorf("someone else's link is gone: %v", err)
		}
	})
}

const iffLowerUp = 0x10000 // IFF_LOWER_UP, linux/if.h: the link has carrier
