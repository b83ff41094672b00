package hostdns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// resolvedBackend wires systemd-resolved to the stub with one global
// drop-in, /etc/systemd/resolved.conf.d/bridge-agent.conf:
//
//	[Resolve]
//	DNS=127.0.0.77
//	Domains=~cluster.local ~svc
//
// DNS= names the stub (as ip:port when the port is not 53, which resolved
// reads since v246) and Domains= lists the cluster's domains as routing-only
// domains (the ~ prefix): resolved sends names under them to the stub and
// does not add them to any search list.
//
// Why a global drop-in and not per-link settings over D-Bus, as a VPN does
// for its own interface: resolved keeps DNS settings per link, but it does
// not manage the loopback link, and the stub, listening on a loopback
// address, has no link of its own to attach servers and domains to. The
// global section is the only place where such a server can be named, and a
// file is also what survives a restart of resolved or of the host without
// the agent having to be running to re-push it.
//
// Caveat: resolved treats its global servers as a default route, so a name
// matching none of the routing domains of any link may be sent to the stub
// as well as to the links' servers (resolved takes the first good answer).
// The stub forwards such names to the host's upstreams, the servers resolved
// itself uses, so they still resolve; they only pass through the stub. This
// is also why the stub's upstreams must never be 127.0.0.53: resolved would
// send part of them back to the stub.
type resolvedBackend struct{}

// renderDropIn is the drop-in's content.
func renderDropIn(stub netip.AddrPort, domains []string) []byte {
	server := stub.Addr().String()
	if stub.Port() != 53 {
		server = stub.String()
	}
	routes := make([]string, len(domains))
	for i, d := range domains {
		routes[i] = "~" + d
	}
	var b strings.Builder
	b.WriteString(Marker + "\n")
	b.WriteString("[Resolve]\n")
	b.WriteString("DNS=" + server + "\n")
	b.WriteString("Domains=" + strings.Join(routes, " ") + "\n")
	return []byte(b.String())
}

func (resolvedBackend) apply(ctx context.Context, e *env) error {
	p := hostPath(e.root, dropInPath)
	want := renderDropIn(e.stub, e.domains)
	cur, err := statFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", dropInPath, err)
	}
	if cur.Exists && !cur.managed() {
		return fmt.Errorf("%s exists and is not bridge-agent's (no marker line); move it away to let bridge-agent write its drop-in", dropInPath)
	}
	if e.rec.DropIn == nil {
		e.rec.DropIn = &dropInRecord{Path: dropInPath}
	}
	if !cur.Exists || !bytes.Equal(cur.Content, want) || cur.Perm != 0o644 {
		dirs, err := missingDirs(e.root, dropInDir)
		if err != nil {
			return fmt.Errorf("create %s: %w", dropInDir, err)
		}
		e.rec.DropIn.CreatedDirs = append(e.rec.DropIn.CreatedDirs, dirs...)
		e.rec.DropIn.ReloadPending = true
		if err := e.save(); err != nil {
			return err
		}
		if err := os.MkdirAll(hostPath(e.root, dropInDir), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dropInDir, err)
		}
		if err := writeFileAtomic(p, want, 0o644, -1, -1); err != nil {
			return fmt.Errorf("write %s: %w", dropInPath, err)
		}
		e.log.Info("wrote systemd-resolved drop-in", "path", dropInPath, "stub", e.stub, "domains", e.domains)
	}
	if err := e.save(); err != nil {
		return err
	}
	if e.rec.DropIn.ReloadPending {
		if err := e.reloader.ReloadResolved(ctx); err != nil {
			return fmt.Errorf("reload systemd-resolved: %w", err)
		}
		e.rec.DropIn.ReloadPending = false
		if err := e.save(); err != nil {
			return err
		}
	}
	e.files = append(e.files, dropInPath)
	if _, err := os.Stat(hostPath(e.root, resolvedRunDir)); err != nil {
		e.note("systemd-resolved does not appear to be running (no " + resolvedRunDir + "): the drop-in takes effect when it starts")
	}
	if others := otherGlobalServers(e.root); len(others) > 0 {
		e.note("systemd-resolved has other global DNS servers (" + strings.Join(others, "; ") + "); resolved uses one global server at a time, so names under the cluster's domains may go to those servers instead of the stub")
	}
	return nil
}

// undo removes our drop-in, the directories made for it when empty, and
// reloads resolved. A drop-in carrying our marker is removed even without a
// record of it; a file without the marker is never removed.
func (resolvedBackend) undo(ctx context.Context, e *env) error {
	p := hostPath(e.root, dropInPath)
	cur, err := statFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", dropInPath, err)
	}
	if e.rec.DropIn == nil {
		if !cur.managed() {
			return nil
		}
		e.rec.DropIn = &dropInRecord{Path: dropInPath}
	}
	rec := e.rec.DropIn
	if cur.managed() {
		rec.ReloadPending = true
		if err := e.save(); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", dropInPath, err)
		}
		e.log.Info("removed systemd-resolved drop-in", "path", dropInPath)
	} else if cur.Exists {
		e.note(dropInPath + " was replaced by a file that is not bridge-agent's; left in place")
	}
	for i := len(rec.CreatedDirs) - 1; i >= 0; i-- {
		// Only when empty: someone else may have put a drop-in there since.
		os.Remove(hostPath(e.root, rec.CreatedDirs[i]))
	}
	if rec.ReloadPending {
		if err := e.reloader.ReloadResolved(ctx); err != nil {
			return fmt.Errorf("reload systemd-resolved: %w", err)
		}
	}
	e.rec.DropIn = nil
	return e.save()
}

// otherGlobalServers lists the non-empty DNS= settings of resolved's own
// configuration files other than our drop-in, as "servers (file)". Good
// enough to warn; it does not model every reset an empty DNS= makes.
func otherGlobalServers(root string) []string {
	files := []string{"/etc/systemd/resolved.conf"}
	for _, dir := range []string{"/etc/systemd/resolved.conf.d", "/run/systemd/resolved.conf.d", "/usr/local/lib/systemd/resolved.conf.d", "/usr/lib/systemd/resolved.conf.d"} {
		matches, _ := filepath.Glob(filepath.Join(hostPath(root, dir), "*.conf"))
		for _, m := range matches {
			files = append(files, filepath.Join(dir, filepath.Base(m)))
		}
	}
	var out []string
	for _, f := range files {
		if f == dropInPath {
			continue
		}
		data, err := os.ReadFile(hostPath(root, f))
		if err != nil {
			continue
		}
		section := ""
		for line := range strings.Lines(string(data)) {
			line = strings.TrimSpace(line)
			if strings.HasPrefix(line, "[") {
				section = line
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if ok && section == "[Resolve]" && strings.TrimSpace(k) == "DNS" && strings.TrimSpace(v) != "" {
				out = append(out, strings.TrimSpace(v)+" in "+f)
			}
		}
	}
	return slices.Compact(out)
}

// dropInServers returns the addresses our drop-in names, if it is ours.
func dropInServers(root string) []netip.Addr {
	data, err := os.ReadFile(hostPath(root, dropInPath))
	if err != nil || !hasMarker(data) {
		return nil
	}
	var out []netip.Addr
	for line := range strings.Lines(string(data)) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "DNS=")
		if !ok {
			continue
		}
		for _, s := range strings.Fields(v) {
			if ap, err := netip.ParseAddrPort(s); err == nil {
				out = append(out, ap.Addr())
			} else if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, a)
			}
		}
	}
	return out
}
