package hostdns

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// wantLink is the fake's dump once the agent's link is wired with the
// usual options (stub port 53, cluster.local and svc).
var wantLink = dedent(`
	link bagent-dns index 11 addr 169.254.255.77 up true alias "bridge-agent: cluster DNS for systemd-resolved"
	dns: 169.254.255.77:53
	domains: cluster.local svc
	default-route: false
	llmnr: no mdns: no dnssec: no dot: no
	`)

// wired reports whether the fake holds the agent's link wired as wantLink,
// whatever its index (a link made again gets a new one).
func wired(f *fakeResolved) bool {
	return regexp.MustCompile(`index \d+`).ReplaceAllString(f.Dump(), "index 11") == wantLink
}

func TestResolvedLink(t *testing.T) {
	h := newHost(t)
	// resolved lists every link's servers in its resolv.conf, ours too.
	h.resolved("10.0.0.2", "169.254.255.77", "10.0.0.3")
	before := h.tree()
	fake := newFakeResolved(h.root)
	o := h.options(ModeAuto, fake)
	o.Domains = []string{"cluster.local", "svc", "~Default.svc.cluster.local.", "svc"}
	res := h.apply(o)

	want := strings.Replace(wantLink, "domains: cluster.local svc\n", "domains: cluster.local svc default.svc.cluster.local\n", 1)
	if diff := cmp.Diff(want, fake.Dump()); diff != "" {
		t.Errorf("resolved and links (-want +got):\n%s", diff)
	}
	wantRes := &Result{
		Mode:      ModeResolved,
		Reason:    "/etc/resolv.conf is a symlink to /run/systemd/resolve/stub-resolv.conf and systemd-resolved is running",
		Link:      "bagent-dns (index 11, 169.254.255.77:53)",
		Upstreams: addrPorts("10.0.0.2:53", "10.0.0.3:53"),
	}
	if diff := cmp.Diff(wantRes, res, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	// No file on the host changes in this mode; only the record is new.
	if diff := cmp.Diff(before, dropRecord(h.tree())); diff != "" {
		t.Errorf("host files changed (-before +after):\n%s", diff)
	}
	if fake.reloads != 0 {
		t.Errorf("resolved reloaded %d times", fake.reloads)
	}
	h.cleanup(fake)
	if got := fake.Dump(); got != "" {
		t.Errorf("after cleanup:\n%s", got)
	}
	if diff := cmp.Diff(before, h.tree()); diff != "" {
		t.Errorf("host after cleanup (-before +after):\n%s", diff)
	}
}

// dropRecord removes the state directory's record from a tree listing.
func dropRecord(tree string) string {
	var out []string
	for _, l := range strings.SplitAfter(tree, "\n") {
		if !strings.HasPrefix(l, "var/lib/bridge-agent/hostdns.json ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

func TestPlanSettings(t *testing.T) {
	stub := netip.MustParseAddrPort("169.254.255.77:53")
	want := wantSettings(stub, []string{"cluster.local", "svc"})
	tr := true
	tests := []struct {
		name string
		cur  linkSettings
		want []string
	}{
		{"fresh link", linkSettings{LLMNR: "yes", MulticastDNS: "no", DNSSEC: "allow-downgrade", DNSOverTLS: "no"}, []string{
			"SetLinkDNS [169.254.255.77:53]", "SetLinkDomains ~cluster.local ~svc", "SetLinkDefaultRoute false",
			"SetLinkLLMNR no", "SetLinkDNSSEC no",
		}},
		{"as wanted", want, nil},
		{"servers cleared by someone", func() linkSettings { s := want; s.Servers = nil; return s }(), []string{"SetLinkDNS [169.254.255.77:53]"}},
		{"a domain more", func() linkSettings { s := want; s.Domains = []string{"cluster.local", "svc", "corp"}; return s }(), []string{"SetLinkDomains ~cluster.local ~svc"}},
		{"search domain instead of routing", func() linkSettings { s := want; s.Domains = []string{"+cluster.local", "svc"}; return s }(), []string{"SetLinkDomains ~cluster.local ~svc"}},
		{"default route on", func() linkSettings { s := want; s.DefaultRoute = &tr; return s }(), []string{"SetLinkDefaultRoute false"}},
		{"resolved without DefaultRoute", func() linkSettings { s := want; s.DefaultRoute = nil; return s }(), []string{"SetLinkDefaultRoute false"}},
		{"mDNS turned on", func() linkSettings { s := want; s.MulticastDNS = "yes"; return s }(), []string{"SetLinkMulticastDNS no"}},
		{"DoT opportunistic", func() linkSettings { s := want; s.DNSOverTLS = "opportunistic"; return s }(), []string{"SetLinkDNSOverTLS no"}},
	}
	for _, tt := range tests {
		var got []string
		for _, s := range planSettings(tt.cur, want) {
			got = append(got, s.String())
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
	port := wantSettings(netip.MustParseAddrPort("169.254.255.77:5353"), []string{"cluster.local"})
	if got := planSettings(port, port); len(got) != 0 {
		t.Errorf("same settings with a port: %v", got)
	}
}

// TestResolvedStates replays, in random orders, what happens to a host
// while the agent runs (resolved restarting, the link deleted, another
// program rewriting the link's settings, the configuration's domains
// changing), with an Apply after each, as the periodic check does. After
// every Apply the link and its settings are as wanted; an Apply with
// nothing to repair makes no call; resolved is never reloaded (and the
// backend has no way to restart it); cleanup leaves nothing.
func TestResolvedStates(t *testing.T) {
	type event struct {
		name string
		do   func(f *fakeResolved, o *Options)
		// calls is whether the Apply after it must set anything.
		calls bool
	}
	events := []event{
		{"nothing", func(*fakeResolved, *Options) {}, false},
		{"resolved restarts", func(f *fakeResolved, _ *Options) { f.restart() }, true},
		{"link deleted", func(f *fakeResolved, _ *Options) { f.deleteLink(LinkName) }, true},
		{"servers cleared", func(f *fakeResolved, _ *Options) {
			s := f.held[f.links[LinkName].index]
			s.Servers = nil
			f.held[f.links[LinkName].index] = s
		}, true},
		{"mDNS turned on", func(f *fakeResolved, _ *Options) {
			s := f.held[f.links[LinkName].index]
			s.MulticastDNS = "yes"
			f.held[f.links[LinkName].index] = s
		}, true},
		{"namespace domain added", func(_ *fakeResolved, o *Options) {
			o.Domains = append(o.Domains[:2:2], "shop")
		}, true},
		{"namespace domain removed", func(_ *fakeResolved, o *Options) {
			o.Domains = o.Domains[:2:2]
		}, true},
	}
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 7))
		h := newHost(t)
		h.resolved("10.0.0.2")
		before := h.tree()
		fake := newFakeResolved(h.root)
		o := h.options(ModeResolved, fake)
		h.apply(o)
		for i := range 12 {
			ev := events[rng.IntN(len(events))]
			prev := append([]string(nil), o.Domains...)
			ev.do(fake, &o)
			calls := fake.calls
			h.apply(o)
			idx := fake.links[LinkName].index
			want := wantSettings(netip.AddrPortFrom(LinkAddr, 53), o.Domains)
			if diff := cmp.Diff(want.String(), fake.held[idx].String()); diff != "" {
				t.Errorf("seed %d, step %d (%s): settings (-want +got):\n%s", seed, i, ev.name, diff)
			}
			made := fake.calls > calls
			if ev.name == "namespace domain added" || ev.name == "namespace domain removed" {
				ev.calls = strings.Join(prev, " ") != strings.Join(o.Domains, " ")
			}
			if made != ev.calls {
				t.Errorf("seed %d, step %d (%s): made calls %v, want %v", seed, i, ev.name, made, ev.calls)
			}
			if fake.reloads != 0 {
				t.Errorf("seed %d, step %d: resolved reloaded", seed, i)
			}
		}
		h.cleanup(fake)
		if got := fake.Dump(); got != "" {
			t.Errorf("seed %d: after cleanup:\n%s", seed, got)
		}
		if diff := cmp.Diff(before, h.tree()); diff != "" {
			t.Errorf("seed %d: host after cleanup (-before +after):\n%s", seed, diff)
		}
	}
}

// TestResolvedLegacyDropIn: a drop-in an older version left is removed
// (with its record), resolved reloaded where it can reload, and otherwise
// left running with a note that says what the admin can do; someone
// else's file at that path is never touched.
func TestResolvedLegacyDropIn(t *testing.T) {
	legacy := Marker + "\n[Resolve]\nDNS=127.0.0.77\nDomains=~cluster.local ~svc\n"
	for _, reloadable := range []bool{true, false} {
		h := newHost(t)
		h.resolved("10.0.0.2", "127.0.0.77")
		before := h.tree()
		h.dir("/etc/systemd/resolved.conf.d")
		h.file(dropInPath, legacy, 0o644)
		h.file("/var/lib/bridge-agent/hostdns.json", `{"version":1,"stub":"127.0.0.77:53","dropIn":{"path":"`+dropInPath+`","createdDirs":["/etc/systemd/resolved.conf.d"]}}`, 0o600)
		fake := newFakeResolved(h.root)
		fake.reloadable = reloadable
		res := h.apply(h.options(ModeAuto, fake))
		if h.exists(dropInPath) || h.exists("/etc/systemd/resolved.conf.d") {
			t.Errorf("reloadable %v: the legacy drop-in or its directory is still there:\n%s", reloadable, h.tree())
		}
		if diff := cmp.Diff(wantLink, fake.Dump()); reloadable && diff != "" {
			t.Errorf("reloadable: resolved (-want +got):\n%s", diff)
		}
		noted := len(res.Notes) == 1 && strings.Contains(res.Notes[0], "systemctl restart systemd-resolved")
		if reloadable != (fake.reloads == 1) || noted == reloadable {
			t.Errorf("reloadable %v: %d reloads, notes %q", reloadable, fake.reloads, res.Notes)
		}
		if !slicesEqual(res.Upstreams, addrPorts("10.0.0.2:53")) {
			t.Errorf("reloadable %v: upstreams %v include the old global stub", reloadable, res.Upstreams)
		}
		h.cleanup(fake)
		if diff := cmp.Diff(before, h.tree()); diff != "" {
			t.Errorf("reloadable %v: host after cleanup (-before +after):\n%s", reloadable, diff)
		}
	}

	h := newHost(t)
	h.resolved("10.0.0.2")
	foreign := "[Resolve]\nDNS=9.9.9.9\n"
	h.file(dropInPath, foreign, 0o644)
	fake := newFakeResolved(h.root)
	h.apply(h.options(ModeResolved, fake))
	h.cleanup(fake)
	if got := h.read(dropInPath); got != foreign || fake.reloads != 0 {
		t.Errorf("someone else's drop-in changed to %q, %d reloads", got, fake.reloads)
	}
}

// TestResolvedForeignLink: a link with our name that is not ours (no
// alias) is neither used, changed nor deleted.
func TestResolvedForeignLink(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	fake := newFakeResolved(h.root)
	fake.links[LinkName] = &fakeLink{index: 3, alias: "someone's"}
	_, err := Apply(context.Background(), h.options(ModeResolved, fake))
	var notOurs errNotOurs
	if !errors.As(err, &notOurs) || !strings.Contains(err.Error(), "rename or remove it") {
		t.Errorf("Apply over someone else's link: %v", err)
	}
	h.cleanup(fake)
	if l := fake.links[LinkName]; l == nil || l.alias != "someone's" || fake.calls != 0 {
		t.Errorf("someone else's link changed: %+v, %d calls", l, fake.calls)
	}
}

// TestResolvedBusDown: without D-Bus the Apply fails and says what to do;
// the link made already is recorded, and cleanup removes it.
func TestResolvedBusDown(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	before := h.tree()
	fake := newFakeResolved(h.root)
	fake.connectErr = errors.New("connection refused")
	_, err := Apply(context.Background(), h.options(ModeResolved, fake))
	if err == nil || !strings.Contains(err.Error(), "is dbus running") {
		t.Errorf("Apply without the bus: %v", err)
	}
	h.cleanup(fake)
	if got := fake.Dump(); got != "" {
		t.Errorf("after cleanup:\n%s", got)
	}
	if diff := cmp.Diff(before, h.tree()); diff != "" {
		t.Errorf("host after cleanup (-before +after):\n%s", diff)
	}
}

func TestResolvedNeedsDomains(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	fake := newFakeResolved(h.root)
	o := h.options(ModeResolved, fake)
	o.Domains = nil
	if _, err := Apply(context.Background(), o); err == nil {
		t.Error("Apply without routing domains: no error")
	}
	o.Domains = []string{"cluster.local", "."}
	if _, err := Apply(context.Background(), o); err == nil {
		t.Error("Apply with the root domain: no error")
	}
	if fake.Dump() != "" {
		t.Errorf("link made despite the error:\n%s", fake.Dump())
	}
}

func TestStubAddrs(t *testing.T) {
	h := newHost(t)
	h.resolved("10.0.0.2")
	fake := newFakeResolved(h.root)
	for _, tt := range []struct {
		mode Mode
		want int
	}{{ModeAuto, 1}, {ModeResolved, 1}, {ModeResolvConf, 0}, {ModeNone, 0}} {
		got, err := StubAddrs(h.options(tt.mode, fake))
		if err != nil || len(got) != tt.want || (tt.want == 1 && got[0] != LinkAddr) {
			t.Errorf("%s on a resolved host: %v %v", tt.mode, got, err)
		}
	}
	h2 := newHost(t)
	h2.file("/etc/resolv.conf", "nameserver 10.0.0.2\n", 0o644)
	if got, err := StubAddrs(h2.options(ModeAuto, fake)); err != nil || len(got) != 0 {
		t.Errorf("auto on a resolv.conf host: %v %v", got, err)
	}
}
