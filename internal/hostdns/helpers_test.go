package hostdns

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeResolved stands in for the host's systemd-resolved and its links:
// per-link settings set over "D-Bus" (resolvedAPI), the links the agent
// creates (linker), and reloads of the configuration files (Reloader). It
// models state, not calls: a restart of resolved or a deleted link loses
// the link's settings, as in the real one.
type fakeResolved struct {
	root       string
	reloads    int
	reloadable bool   // resolved can reload without a restart (v251+)
	active     string // the legacy drop-in's content at the last reload or start; "" when absent
	calls      int    // SetLink* and RevertLink calls
	connectErr error  // returned by the next connect, then cleared
	links      map[string]*fakeLink
	held       map[int]linkSettings // by ifindex: what resolved holds
	nextIndex  int
}

type fakeLink struct {
	index int
	alias string
	addr  netip.Addr
	up    bool
}

var (
	_ Reloader    = &fakeResolved{}
	_ resolvedAPI = &fakeResolved{}
	_ linker      = &fakeResolved{}
)

func newFakeResolved(root string) *fakeResolved {
	f := &fakeResolved{root: root, reloadable: true, links: map[string]*fakeLink{}, held: map[int]linkSettings{}, nextIndex: 10}
	f.active = f.dropIn()
	return f
}

func (f *fakeResolved) dropIn() string {
	data, err := os.ReadFile(filepath.Join(f.root, dropInPath))
	if err != nil {
		return ""
	}
	return string(data)
}

func (f *fakeResolved) ReloadResolved(context.Context) error {
	if !f.reloadable {
		return ErrNoReload
	}
	f.reloads++
	f.active = f.dropIn()
	return nil
}

// restart is resolved restarting: files read again, per-link settings of
// the links it no longer knows lost (the real one keeps them in /run for
// unmanaged links, but not across a crash or a reboot; the fake forgets).
func (f *fakeResolved) restart() {
	f.active = f.dropIn()
	f.held = map[int]linkSettings{}
}

func (f *fakeResolved) connect(context.Context, string) (resolvedAPI, error) {
	if err := f.connectErr; err != nil {
		f.connectErr = nil
		return nil, err
	}
	return f, nil
}

func (f *fakeResolved) close() {}

func (f *fakeResolved) linkByIndex(idx int) *fakeLink {
	for _, l := range f.links {
		if l.index == idx {
			return l
		}
	}
	return nil
}

// defaults are resolved's settings of an unmanaged link nobody set.
func (f *fakeResolved) defaults() linkSettings {
	return linkSettings{LLMNR: "yes", MulticastDNS: "no", DNSSEC: "allow-downgrade", DNSOverTLS: "no"}
}

func (f *fakeResolved) settings(_ context.Context, idx int) (linkSettings, error) {
	if f.linkByIndex(idx) == nil {
		return linkSettings{}, errNoLink
	}
	s, ok := f.held[idx]
	if !ok {
		s = f.defaults()
	}
	return s, nil
}

func (f *fakeResolved) set(_ context.Context, idx int, st step) error {
	if f.linkByIndex(idx) == nil {
		return errNoLink
	}
	f.calls++
	s, _ := f.settings(context.Background(), idx)
	switch st.Kind {
	case stepDNS:
		s.Servers = slices.Clone(st.Servers)
	case stepDomains:
		s.Domains = slices.Clone(st.Domains)
	case stepDefaultRoute:
		b := false
		s.DefaultRoute = &b
	case stepLLMNR:
		s.LLMNR = st.Value
	case stepMulticastDNS:
		s.MulticastDNS = st.Value
	case stepDNSSEC:
		s.DNSSEC = st.Value
	case stepDNSOverTLS:
		s.DNSOverTLS = st.Value
	}
	f.held[idx] = s
	return nil
}

func (f *fakeResolved) revert(_ context.Context, idx int) error {
	f.calls++
	delete(f.held, idx)
	return nil
}

func (f *fakeResolved) ensure(spec linkSpec) (int, bool, error) {
	l, ok := f.links[spec.Name]
	if ok && l.alias != spec.Alias {
		return 0, false, errNotOurs{spec.Name, l.alias}
	}
	if ok && l.up && l.addr == spec.Addr {
		return l.index, false, nil
	}
	if !ok {
		f.nextIndex++
		l = &fakeLink{index: f.nextIndex, alias: spec.Alias}
		f.links[spec.Name] = l
	}
	l.addr, l.up = spec.Addr, true
	return l.index, true, nil
}

func (f *fakeResolved) lookup(spec linkSpec) (int, bool, error) {
	l, ok := f.links[spec.Name]
	switch {
	case !ok:
		return 0, false, nil
	case l.alias != spec.Alias:
		return 0, false, errNotOurs{spec.Name, l.alias}
	}
	return l.index, true, nil
}

func (f *fakeResolved) remove(spec linkSpec) (bool, error) {
	_, ok, err := f.lookup(spec)
	if err != nil || !ok {
		return false, err
	}
	f.deleteLink(spec.Name)
	return true, nil
}

// deleteLink is the link going away, by us or by anyone: resolved forgets
// its settings.
func (f *fakeResolved) deleteLink(name string) {
	if l, ok := f.links[name]; ok {
		delete(f.held, l.index)
		delete(f.links, name)
	}
}

// Dump is the fake's state as text: links, then each link's settings.
func (f *fakeResolved) Dump() string {
	var b strings.Builder
	names := slices.Sorted(maps.Keys(f.links))
	for _, n := range names {
		l := f.links[n]
		fmt.Fprintf(&b, "link %s index %d addr %s up %v alias %q\n", n, l.index, l.addr, l.up, l.alias)
		if s, ok := f.held[l.index]; ok {
			b.WriteString(s.String())
		}
	}
	if f.active != "" {
		b.WriteString("global drop-in active\n")
	}
	return b.String()
}

// host builds a host root in a temporary directory.
type host struct {
	t     *testing.T
	root  string
	state string
}

func newHost(t *testing.T) *host {
	t.Helper()
	root := t.TempDir()
	h := &host{t: t, root: root, state: filepath.Join(root, "var/lib/bridge-agent")}
	h.dir("/etc")
	h.dir("/var/lib/bridge-agent")
	return h
}

func (h *host) path(p string) string { return filepath.Join(h.root, p) }

func (h *host) dir(p string) {
	h.t.Helper()
	if err := os.MkdirAll(h.path(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) file(p, content string, perm fs.FileMode) {
	h.t.Helper()
	h.dir(filepath.Dir(p))
	if err := os.WriteFile(h.path(p), []byte(content), perm); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Chmod(h.path(p), perm); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) symlink(p, target string) {
	h.t.Helper()
	h.dir(filepath.Dir(p))
	os.Remove(h.path(p))
	if err := os.Symlink(target, h.path(p)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) read(p string) string {
	h.t.Helper()
	data, err := os.ReadFile(h.path(p))
	if err != nil {
		h.t.Fatal(err)
	}
	return string(data)
}

func (h *host) exists(p string) bool {
	_, err := os.Lstat(h.path(p))
	return err == nil
}

// resolved makes the host look like one running systemd-resolved with the
// usual stub symlink and the given uplink servers.
func (h *host) resolved(uplinks ...string) {
	h.file("/run/systemd/resolve/stub-resolv.conf", "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n", 0o644)
	var b strings.Builder
	b.WriteString("# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n")
	for _, u := range uplinks {
		b.WriteString("nameserver " + u + "\n")
	}
	b.WriteString("search corp.example\n")
	h.file("/run/systemd/resolve/resolv.conf", b.String(), 0o644)
	h.symlink("/etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf")
	h.file("/etc/systemd/resolved.conf", "[Resolve]\n#DNS=\n", 0o644)
}

// options are the usual Apply options for this host.
func (h *host) options(mode Mode, r Reloader) Options {
	return Options{
		Mode:     mode,
		HostRoot: h.root,
		StateDir: h.state,
		Stub:     netip.MustParseAddrPort("127.0.0.77:53"),
		Domains:  []string{"cluster.local", "svc"},
		Reloader: r,
		Logger:   slog.New(slog.DiscardHandler),
	}.withFake(r)
}

// withFake points the link and D-Bus seams at r when it is the fake.
func (o Options) withFake(r Reloader) Options {
	if f, ok := r.(*fakeResolved); ok {
		o.links, o.connect = f, f.connect
		o.linkSpec = defaultLinkSpec()
	}
	return o
}

func (h *host) apply(o Options) *Result {
	h.t.Helper()
	res, err := Apply(context.Background(), o)
	if err != nil {
		h.t.Fatalf("Apply: %v", err)
	}
	return res
}

func (h *host) cleanup(r Reloader) {
	h.t.Helper()
	if err := cleanup(context.Background(), Options{HostRoot: h.root, StateDir: h.state, Reloader: r, Logger: slog.New(slog.DiscardHandler)}.withFake(r)); err != nil {
		h.t.Fatalf("Cleanup: %v", err)
	}
}

// tree lists every file under the host root with its type, permission bits
// and content or link target, one per line in lexical order.
func (h *host) tree() string {
	h.t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(h.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(h.root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s -> %s\n", rel, t)
		case d.IsDir():
			fmt.Fprintf(&b, "%s/ %v\n", rel, fi.Mode().Perm())
		default:
			c, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s %v %q\n", rel, fi.Mode().Perm(), c)
		}
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return b.String()
}

// dedent removes the common leading tabs of an inline expected text and a
// leading newline.
func dedent(s string) string {
	s = strings.TrimPrefix(s, "\n")
	lines := strings.Split(s, "\n")
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, "\t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	for i, l := range lines {
		if len(l) >= indent && indent > 0 {
			lines[i] = l[indent:]
		}
	}
	return strings.Join(lines, "\n")
}

func addrPorts(ss ...string) []netip.AddrPort {
	out := []netip.AddrPort{}
	for _, s := range ss {
		out = append(out, netip.MustParseAddrPort(s))
	}
	return out
}
