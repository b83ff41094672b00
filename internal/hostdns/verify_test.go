package hostdns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestJudge(t *testing.T) {
	stub := netip.MustParseAddrPort("127.0.0.77:53")
	const name = "kubernetes.default.svc.cluster.local"
	tests := []struct {
		name    string
		mode    Mode
		stub    []netip.Addr
		stubErr error
		host    []netip.Addr
		hostErr error
		ok      bool
		want    string // in Problem or Skipped
	}{
		{"same", ModeResolved, addrs("10.96.0.1"), nil, addrs("10.96.0.1"), nil, true, ""},
		{"dual stack, host sees v4 only", ModeResolved, addrs("10.96.0.1", "fd00:96::1"), nil, addrs("10.96.0.1"), nil, true, ""},
		{"not found on the host, resolved", ModeResolved, addrs("10.96.0.1"), nil, nil, nil, false, "resolvectl status bagent-dns` shows DNS server 169.254.255.77:53"},
		{"not found on the host, resolv.conf", ModeResolvConf, addrs("10.96.0.1"), nil, nil, nil, false, "/etc/resolv.conf names 127.0.0.77"},
		{"getent failed", ModeResolved, addrs("10.96.0.1"), nil, nil, errors.New("getent: signal: killed"), false, "(getent: signal: killed)"},
		{"another answer", ModeResolved, addrs("10.96.0.1"), nil, addrs("192.0.2.1"), nil, false, "another resolver answers"},
		{"stub down", ModeResolved, nil, errors.New("timeout"), nil, nil, false, "the stub did not answer"},
		{"no such Service", ModeResolved, nil, nil, nil, nil, false, "no such Service"},
	}
	for _, tt := range tests {
		c := judge(name, tt.mode, stub, tt.stub, tt.stubErr, tt.host, tt.hostErr)
		if c.OK != tt.ok || !strings.Contains(c.Problem+c.Skipped, tt.want) || (tt.ok && c.Problem+c.Skipped != "") {
			t.Errorf("%s: %+v, want ok %v and %q", tt.name, c, tt.ok, tt.want)
		}
	}
}

func TestVerifySkips(t *testing.T) {
	called := false
	o := VerifyOptions{HostRoot: t.TempDir(), Mode: ModeResolved, Stub: netip.MustParseAddrPort("127.0.0.77:53"), Name: "kubernetes.default.svc.cluster.local.",
		askStub: func(context.Context, netip.AddrPort, string) ([]netip.Addr, error) { called = true; return nil, nil },
		getent:  func(context.Context, string) ([]netip.Addr, error) { called = true; return nil, nil }}
	if c := Verify(context.Background(), o); c.OK || !strings.Contains(c.Skipped, "host root is not /") || called {
		t.Errorf("another root: %+v (called %v)", c, called)
	}
	o.HostRoot, o.Mode = "/", ModeNone
	if c := Verify(context.Background(), o); c.OK || !strings.Contains(c.Skipped, "mode none") || called {
		t.Errorf("mode none: %+v (called %v)", c, called)
	}
	o.Mode = ModeResolved
	o.askStub = func(_ context.Context, _ netip.AddrPort, n string) ([]netip.Addr, error) {
		return addrs("10.96.0.1"), nil
	}
	o.getent = func(_ context.Context, n string) ([]netip.Addr, error) {
		if n != "kubernetes.default.svc.cluster.local" {
			t.Errorf("getent asked for %q", n)
		}
		return addrs("10.96.0.1"), nil
	}
	if c := Verify(context.Background(), o); !c.OK || c.At.IsZero() {
		t.Errorf("wired: %+v", c)
	}
	o.getent = func(context.Context, string) ([]netip.Addr, error) {
		return nil, fmt.Errorf("getent ahosts: %w", exec.ErrNotFound)
	}
	if c := Verify(context.Background(), o); c.OK || c.Problem != "" || !strings.Contains(c.Skipped, "getent is not installed") {
		t.Errorf("without getent: %+v", c)
	}
}

func TestParseAhosts(t *testing.T) {
	out := "10.96.0.1       STREAM kubernetes.default.svc.cluster.local\n10.96.0.1       DGRAM  \n10.96.0.1       RAW    \nfd00:96::1      STREAM \n"
	if diff := cmp.Diff(addrs("10.96.0.1", "fd00:96::1"), parseAhosts([]byte(out)), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
