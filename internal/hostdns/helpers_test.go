package hostdns

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeResolved stands in for systemd-resolved: a reload makes it take the
// drop-in under its host root as its active configuration, as the real one
// reads its files on reload.
type fakeResolved struct {
	root    string
	reloads int
	active  string // the drop-in's content at the last reload; "" when absent
	err     error  // returned by the next reload, then cleared
}

var _ Reloader = &fakeResolved{}

func newFakeResolved(root string) *fakeResolved { return &fakeResolved{root: root} }

func (f *fakeResolved) ReloadResolved(context.Context) error {
	if err := f.err; err != nil {
		f.err = nil
		return err
	}
	f.reloads++
	data, err := os.ReadFile(filepath.Join(f.root, dropInPath))
	if err != nil {
		f.active = ""
	} else {
		f.active = string(data)
	}
	return nil
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
	}
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
	if err := Cleanup(context.Background(), h.root, h.state, r); err != nil {
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
