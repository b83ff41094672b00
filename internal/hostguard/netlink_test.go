package hostguard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// testNetns creates a network namespace for the test and deletes it at the
// end; it skips when the test cannot (not root, no ip).
func testNetns(t *testing.T) (string, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: no ip command (iproute2)")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "bagd-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

func ipIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// TestWatcherFollowsKernel: in a namespace of its own, the Watcher picks up
// a new address and a new default route from netlink notifications (the
// periodic read is an hour away), ignores other routes, and the removal of
// the address.
func TestWatcherFollowsKernel(t *testing.T) {
	ns, h := testNetns(t)
	ipIn(t, ns, "link", "set", "lo", "up")
	ipIn(t, ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ipIn(t, ns, "link", "set", "d0", "up")
	ipIn(t, ns, "link", "set", "d1", "up")
	w, err := NewWatcher(WatcherOptions{Netns: &h, Every: time.Hour, Settle: 50 * time.Millisecond,
		Resolvers: func() []netip.Addr { return addrs("10.77.0.53") }})
	if err != nil {
		t.Fatal(err)
	}
	if f := w.Facts(); !slices.Contains(f.Local, netip.MustParseAddr("127.0.0.1")) || len(f.Connected) != 0 || len(f.Gateways) != 0 ||
		!slices.Equal(f.Resolvers, addrs("10.77.0.53")) {
		t.Fatalf("first facts: %+v", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 16)
	go w.Run(ctx, func() { changed <- struct{}{} })
	time.Sleep(100 * time.Millisecond) // subscribed
	wait := func(what string, cond func(*Facts) bool) {
		t.Helper()
		deadline := time.After(3 * time.Second)
		for !cond(w.Facts()) {
			select {
			case <-changed:
			case <-deadline:
				t.Fatalf("%s: not seen within 3s: %+v", what, w.Facts())
			}
		}
	}
	ipIn(t, ns, "addr", "add", "10.77.0.5/24", "dev", "d0")
	wait("new address", func(f *Facts) bool {
		return slices.Contains(f.Local, netip.MustParseAddr("10.77.0.5")) && slices.Equal(f.Connected, prefixes("10.77.0.0/24"))
	})
	ipIn(t, ns, "route", "add", "default", "via", "10.77.0.1")
	wait("new default route", func(f *Facts) bool { return slices.Equal(f.Gateways, addrs("10.77.0.1")) })
	for len(changed) > 0 {
		<-changed
	}
	version := w.Version()
	ipIn(t, ns, "route", "add", "10.88.0.0/16", "via", "10.77.0.9")
	time.Sleep(500 * time.Millisecond)
	if w.Version() != version {
		t.Errorf("a route that is no default route changed the facts: %+v", w.Facts())
	}
	ipIn(t, ns, "addr", "del", "10.77.0.5/24", "dev", "d0")
	wait("address gone", func(f *Facts) bool {
		return !slices.Contains(f.Local, netip.MustParseAddr("10.77.0.5")) && len(f.Connected) == 0 && len(f.Gateways) == 0
	})
}
