package hostdns

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestResolvedDropIn(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2", "10.0.0.3")
	fake := newFakeResolved(h.root)
	o := h.options(ModeAuto, fake)
	o.Domains = []string{"cluster.local", "svc", "~Default.svc.cluster.local.", "svc"}
	res := h.apply(o)

	want := dedent(`
		# Managed by bridge-agent; removed by ` + "`bridge-agent cleanup`" + `.
		[Resolve]
		DNS=127.0.0.77
		Domains=~cluster.local ~svc ~default.svc.cluster.local
		`)
	if diff := cmp.Diff(want, h.read(dropInPath)); diff != "" {
		t.Errorf("drop-in (-want +got):\n%s", diff)
	}
	if fake.active != want || fake.reloads != 1 {
		t.Errorf("resolved reloaded %d times with %q, want once with the drop-in", fake.reloads, fake.active)
	}
	wantRes := &Result{
		Mode:      ModeResolved,
		Reason:    "/etc/resolv.conf is a symlink to /run/systemd/resolve/stub-resolv.conf and systemd-resolved is running",
		Files:     []string{dropInPath},
		Upstreams: addrPorts("10.0.0.2:53", "10.0.0.3:53"),
	}
	if diff := cmp.Diff(wantRes, res, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	// /etc/resolv.conf is not touched in this mode.
	if got := h.tree(); !strings.Contains(got, "etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf\n") {
		t.Errorf("/etc/resolv.conf changed:\n%s", got)
	}
}

func TestRenderDropIn(t *testing.T) {
	tests := []struct {
		stub string
		want string
	}{
		{"127.0.0.77:53", "DNS=127.0.0.77\n"},
		{"127.0.0.77:5353", "DNS=127.0.0.77:5353\n"},
		{"[::1]:53", "DNS=::1\n"},
		{"[fd00::77]:5353", "DNS=[fd00::77]:5353\n"},
	}
	for _, tt := range tests {
		got := string(renderDropIn(netip.MustParseAddrPort(tt.stub), []string{"cluster.local"}))
		want := Marker + "\n[Resolve]\n" + tt.want + "Domains=~cluster.local\n"
		if got != want {
			t.Errorf("stub %s: got\n%s\nwant\n%s", tt.stub, got, want)
		}
	}
}

// TestResolvedReloads checks that resolved is reloaded exactly when the
// drop-in changes, and again after a failed reload.
func TestResolvedReloads(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	fake := newFakeResolved(h.root)
	o := h.options(ModeResolved, fake)

	// want is "current" (resolved runs the drop-in on disk), "stale"
	// (resolved runs an older drop-in) or "none".
	step := func(name string, do func(), wantReloads int, want string) {
		t.Helper()
		do()
		if fake.reloads != wantReloads {
			t.Errorf("%s: %d reloads, want %d", name, fake.reloads, wantReloads)
		}
		got := "none"
		if fake.active != "" {
			got = "stale"
			if h.exists(dropInPath) && fake.active == h.read(dropInPath) {
				got = "current"
			}
		}
		if got != want {
			t.Errorf("%s: resolved's configuration is %s (%q), want %s", name, got, fake.active, want)
		}
	}
	step("first apply", func() { h.apply(o) }, 1, "current")
	step("same apply", func() { h.apply(o) }, 1, "current")
	step("same apply again", func() { h.apply(o) }, 1, "current")
	o.Domains = append(o.Domains, "default.svc.cluster.local")
	step("new domain", func() { h.apply(o) }, 2, "current")
	o.Stub = netip.MustParseAddrPort("127.0.0.78:53")
	fake.err = errors.New("resolved is busy")
	step("failed reload", func() {
		if _, err := Apply(context.Background(), o); err == nil || !strings.Contains(err.Error(), "resolved is busy") {
			t.Errorf("Apply with a failing reload: err %v", err)
		}
	}, 2, "stale")
	step("retry after a failed reload", func() { h.apply(o) }, 3, "current")
	if !strings.Contains(fake.active, "DNS=127.0.0.78\n") {
		t.Errorf("resolved's configuration after the retry: %q", fake.active)
	}
	step("unchanged after the retry", func() { h.apply(o) }, 3, "current")
	fake.err = errors.New("resolved is busy")
	step("failed reload on cleanup", func() {
		if err := Cleanup(context.Background(), h.root, h.state, fake); err == nil {
			t.Error("Cleanup with a failing reload: no error")
		}
	}, 3, "stale")
	step("cleanup retries the reload", func() { h.cleanup(fake) }, 4, "none")
	step("cleanup again", func() { h.cleanup(fake) }, 4, "none")
}

func TestResolvedForeignDropIn(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	foreign := "[Resolve]\nDNS=9.9.9.9\n"
	h.file(dropInPath, foreign, 0o644)
	fake := newFakeResolved(h.root)
	if _, err := Apply(context.Background(), h.options(ModeResolved, fake)); err == nil {
		t.Fatal("Apply over someone else's file at the drop-in's path: no error")
	}
	h.cleanup(fake)
	if got := h.read(dropInPath); got != foreign || fake.reloads != 0 {
		t.Errorf("someone else's drop-in changed to %q, %d reloads", got, fake.reloads)
	}
}

func TestResolvedNotes(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	h.file("/etc/systemd/resolved.conf", "[Resolve]\nDNS=1.1.1.1 9.9.9.9\n", 0o644)
	res := h.apply(h.options(ModeResolved, newFakeResolved(h.root)))
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "1.1.1.1 9.9.9.9 in /etc/systemd/resolved.conf") {
		t.Errorf("notes %q, want one about the other global servers", res.Notes)
	}
}

func TestResolvedNeedsDomains(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	o := h.options(ModeResolved, newFakeResolved(h.root))
	o.Domains = nil
	if _, err := Apply(context.Background(), o); err == nil {
		t.Error("Apply without routing domains: no error")
	}
	o.Domains = []string{"cluster.local", "."}
	if _, err := Apply(context.Background(), o); err == nil {
		t.Error("Apply with the root domain: no error")
	}
	if h.exists(dropInPath) {
		t.Error("drop-in written despite the error")
	}
}
