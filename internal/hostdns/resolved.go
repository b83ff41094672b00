package hostdns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// resolvedBackend wires systemd-resolved to the stub per link, over D-Bus,
// as a VPN does for its own interface (tailscale, Telepresence): on a link
// of the agent's own, LinkName, with the address LinkAddr (see link.go for
// why that link and address), it sets through org.freedesktop.resolve1:
//
//	SetLinkDNS           LinkAddr (the stub also listens there; ip:port
//	                     through SetLinkDNSEx, v246, when not port 53)
//	SetLinkDomains       ~cluster.local ~svc ~<namespace>...  (routing-only)
//	SetLinkDefaultRoute  false
//	SetLinkLLMNR, SetLinkMulticastDNS, SetLinkDNSSEC, SetLinkDNSOverTLS  no
//
// resolved then sends names under the cluster's domains, and only those, to
// the stub; the host's own links keep their servers for everything else,
// and nothing is added to a search list. A routing domain beats mDNS for
// .local names: resolved picks the scope whose matching domain has the
// most labels, and mDNS claims .local with one label's weight, so
// ~cluster.local (two) wins and cluster.local names are asked of the stub
// even with MulticastDNS=yes.
//
// resolved is never restarted or reloaded for this: per-link settings take
// effect at once. They live only as long as resolved's process and the
// link (resolved keeps them across its own restart in
// /run/systemd/resolve/netif/, but a crash or a deleted link loses them),
// so every Apply, which the agent runs every sync period, reads them back
// and sets what differs, and writes nothing when they match (resolved logs
// every set). Undo reverts the link (RevertLink) and deletes it.
//
// Older bridge-agent versions wired resolved with a global drop-in,
// /etc/systemd/resolved.conf.d/bridge-agent.conf, and restarted resolved.
// Apply and undo remove such a drop-in (only with our marker) and ask
// resolved to reload its configuration only where it supports a reload;
// otherwise they say what the admin may do (see removeLegacyDropIn).
type resolvedBackend struct{}

func (resolvedBackend) apply(ctx context.Context, e *env) error {
	if err := removeLegacyDropIn(ctx, e); err != nil {
		return err
	}
	spec := e.linkSpec
	if e.rec.Link == nil {
		e.rec.Link = &linkRecord{Name: spec.Name}
		if err := e.save(); err != nil {
			return err
		}
	}
	idx, changed, err := e.links.ensure(spec)
	if err != nil {
		return fmt.Errorf("set up link %s for systemd-resolved: %w", spec.Name, err)
	}
	if changed {
		e.log.Info("set up the link for systemd-resolved", "link", spec.Name, "index", idx, "addr", spec.Addr)
	}
	api, err := e.connect(ctx, e.root)
	if err != nil {
		return fmt.Errorf("systemd-resolved: %w; is dbus running? (or set dns.hostResolver to resolv.conf or none)", err)
	}
	defer api.close()
	cur, err := waitSettings(ctx, api, idx)
	if err != nil {
		return fmt.Errorf("systemd-resolved: read the settings of link %s: %w", spec.Name, err)
	}
	want := wantSettings(netip.AddrPortFrom(spec.Addr, e.stub.Port()), e.domains)
	steps := planSettings(cur, want)
	var done []string
	for _, s := range steps {
		if err := api.set(ctx, idx, s); err != nil {
			if errors.Is(err, errUnsupported) && s.Kind != stepDNS && s.Kind != stepDomains {
				e.note(fmt.Sprintf("systemd-resolved has no SetLink%s (an older version): %s left as it is", s.Kind, strings.ToLower(string(s.Kind))))
				continue
			}
			return fmt.Errorf("systemd-resolved: %w", err)
		}
		done = append(done, s.String())
	}
	if len(done) > 0 {
		e.log.Info("set systemd-resolved's settings of the link", "link", spec.Name, "index", idx, "calls", done)
	}
	e.link = fmt.Sprintf("%s (index %d, %s)", spec.Name, idx, netip.AddrPortFrom(spec.Addr, e.stub.Port()))
	return nil
}

// undo reverts the link's settings in resolved, deletes the link, and
// removes a drop-in an older version left. A link of our name without our
// alias is left alone, with a note.
func (resolvedBackend) undo(ctx context.Context, e *env) error {
	if err := removeLegacyDropIn(ctx, e); err != nil {
		return err
	}
	spec := e.linkSpec
	idx, ok, err := e.links.lookup(spec)
	var notOurs errNotOurs
	switch {
	case errors.As(err, &notOurs):
		e.note(notOurs.Error() + "; left in place")
	case err != nil:
		return err
	case ok:
		// Best effort: deleting the link drops its settings in resolved
		// anyway; RevertLink only makes it immediate and explicit.
		if api, err := e.connect(ctx, e.root); err == nil {
			if err := api.revert(ctx, idx); err != nil {
				e.log.Warn("host dns: revert the link in systemd-resolved", "link", spec.Name, "err", err)
			}
			api.close()
		}
		if _, err := e.links.remove(spec); err != nil {
			return fmt.Errorf("remove link %s: %w", spec.Name, err)
		}
		e.log.Info("removed the link for systemd-resolved", "link", spec.Name)
	}
	if e.rec.Link != nil {
		e.rec.Link = nil
		return e.save()
	}
	return nil
}

// removeLegacyDropIn removes the global drop-in an older version wrote
// (only if it carries our marker), and the directories made for it when
// empty. It never restarts resolved: it reloads it where resolved supports
// a reload (systemctl's CanReload), and otherwise notes that resolved
// keeps the old global server in memory until it restarts on its own, and
// what the admin can do about it.
func removeLegacyDropIn(ctx context.Context, e *env) error {
	p := hostPath(e.root, dropInPath)
	cur, err := statFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", dropInPath, err)
	}
	if !cur.managed() && e.rec.DropIn == nil {
		// None, or someone else's file of that name: not ours to touch.
		return nil
	}
	if cur.managed() {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", dropInPath, err)
		}
		e.log.Info("removed the systemd-resolved drop-in of an older bridge-agent", "path", dropInPath)
	}
	if e.rec.DropIn != nil {
		for i := len(e.rec.DropIn.CreatedDirs) - 1; i >= 0; i-- {
			// Only when empty: someone else may have put a drop-in there since.
			os.Remove(hostPath(e.root, e.rec.DropIn.CreatedDirs[i]))
		}
		e.rec.DropIn = nil
		if err := e.save(); err != nil {
			return err
		}
	}
	if !cur.managed() {
		return nil
	}
	switch err := e.reloader.ReloadResolved(ctx); {
	case err == nil:
	case errors.Is(err, ErrNoReload):
		e.note("removed " + dropInPath + ", written by an older bridge-agent; this systemd-resolved cannot reload its configuration without a restart, which bridge-agent never does, so it keeps that file's global DNS server until it next restarts. Harmless while the agent runs; to drop it now run `systemctl restart systemd-resolved` (this flushes resolved's cache)")
	default:
		e.note("removed " + dropInPath + ", written by an older bridge-agent, but reloading systemd-resolved failed (" + err.Error() + "); it keeps that file's global DNS server until it reloads or restarts")
	}
	return nil
}

// dropInServers returns the addresses a drop-in of an older version names,
// if it is still there and ours: resolved lists them among its servers
// until it reloads or restarts, and they are the stub, never an upstream.
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
