package hostdns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
)

// Mode is how the host's resolver is wired to the stub.
type Mode string

const (
	// ModeAuto detects the mode from the host (see Detect).
	ModeAuto Mode = "auto"
	// ModeResolved sets per-link DNS settings in systemd-resolved, on a
	// link of the agent's own, routing the cluster's domains to the stub.
	ModeResolved Mode = "systemd-resolved"
	// ModeResolvConf replaces /etc/resolv.conf with one naming the stub.
	ModeResolvConf Mode = "resolv.conf"
	// ModeNone leaves the host's resolver alone.
	ModeNone Mode = "none"
)

// Options says what Apply should do.
type Options struct {
	// Mode is auto (the default when empty), systemd-resolved, resolv.conf
	// or none.
	Mode Mode
	// HostRoot prefixes every host path; "/" in production.
	HostRoot string
	// StateDir is where the record of what Apply changed and the backup of
	// the original /etc/resolv.conf live: an absolute path, already under
	// HostRoot when it should be.
	StateDir string
	// Stub is the stub's address.
	Stub netip.AddrPort
	// Domains are the routing domains sent to the stub in systemd-resolved
	// mode: "cluster.local", "svc" and any per-namespace domains. A leading
	// "~" and a trailing "." are accepted and dropped.
	Domains []string
	// Reloader reloads systemd-resolved after removing the drop-in of an
	// older version, where resolved can reload without a restart. Nil
	// means systemctl when HostRoot is "/", and only a logged note
	// otherwise.
	Reloader Reloader
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// Seams for tests: the link (defaultLinkSpec), how it is made
	// (netlink), and how resolved is reached (the system bus under
	// HostRoot).
	linkSpec linkSpec
	links    linker
	connect  func(ctx context.Context, root string) (resolvedAPI, error)
}

// withDefaults fills the seams.
func (o Options) withDefaults() Options {
	if o.linkSpec.Name == "" {
		o.linkSpec = defaultLinkSpec()
	}
	if o.links == nil {
		o.links = netlinkLinker{}
	}
	if o.connect == nil {
		o.connect = connectResolved
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Reloader == nil {
		o.Reloader = defaultReloader(o.HostRoot, o.Logger)
	}
	return o
}

// Result is what Apply did and found, for `bridge-agent status`.
type Result struct {
	// Mode is the concrete mode applied (auto resolved).
	Mode Mode `json:"mode"`
	// Reason says why this mode: what detection saw, or "configured".
	Reason string `json:"reason"`
	// Files are the host paths bridge-agent now manages.
	Files []string `json:"files,omitempty"`
	// Link is the link whose systemd-resolved settings bridge-agent
	// manages, in systemd-resolved mode: name, index and the stub's
	// address on it.
	Link string `json:"link,omitempty"`
	// Check is the last check that a cluster name resolves through the
	// host's resolver to what the stub answers (see Verify); set by the
	// caller.
	Check *Check `json:"check,omitempty"`
	// Upstreams are the host's original resolvers, for the stub to forward
	// names outside the cluster to.
	Upstreams []netip.AddrPort `json:"upstreams"`
	// Notes are things the user should know: another program owning
	// /etc/resolv.conf, a replaced file, a caveat of the host's setup.
	Notes []string `json:"notes,omitempty"`
}

// ErrStubPort is returned (wrapped) in resolv.conf mode when the stub does
// not listen on port 53: resolv.conf cannot name a port.
var ErrStubPort = errors.New("resolv.conf cannot name a port, so the stub must listen on port 53")

func errPortNot53(stub netip.AddrPort) error {
	return fmt.Errorf("stub %s: %w", stub, ErrStubPort)
}

// backend is one way of wiring the host's resolver to the stub. apply makes
// the host match and records what it changed before changing it; undo
// reverts what the record says, and tolerates finding it already undone.
type backend interface {
	apply(ctx context.Context, e *env) error
	undo(ctx context.Context, e *env) error
}

var (
	_ backend = resolvedBackend{}
	_ backend = directBackend{}
)

// env is the state one Apply or Cleanup works with.
type env struct {
	root     string
	stub     netip.AddrPort
	domains  []string
	reloader Reloader
	log      *slog.Logger
	linkSpec linkSpec
	links    linker
	connect  func(ctx context.Context, root string) (resolvedAPI, error)
	st       *store
	rec      *record
	files    []string
	link     string
	notes    []string
}

func newEnv(o Options, st *store, rec *record) *env {
	return &env{root: o.HostRoot, stub: o.Stub, domains: o.Domains, reloader: o.Reloader, log: o.Logger,
		linkSpec: o.linkSpec, links: o.links, connect: o.connect, st: st, rec: rec}
}

func (e *env) save() error { return e.st.save(e.rec) }

func (e *env) note(s string) {
	e.notes = append(e.notes, s)
	e.log.Warn("host dns: " + s)
}

// validate checks the options that do not depend on the mode and
// normalises Domains, reporting every bad field at once.
func (o *Options) validate() error {
	var errs []error
	switch o.Mode {
	case "", ModeAuto, ModeResolved, ModeResolvConf, ModeNone:
	default:
		errs = append(errs, fmt.Errorf("mode %q: want auto, systemd-resolved, resolv.conf or none", o.Mode))
	}
	if o.HostRoot == "" || !filepath.IsAbs(o.HostRoot) {
		errs = append(errs, fmt.Errorf("host root %q: must be an absolute path", o.HostRoot))
	}
	if !filepath.IsAbs(o.StateDir) {
		errs = append(errs, fmt.Errorf("state dir %q: must be an absolute path", o.StateDir))
	}
	if !o.Stub.IsValid() || o.Stub.Port() == 0 {
		errs = append(errs, fmt.Errorf("stub %q: must be ip:port", o.Stub))
	} else if a := o.Stub.Addr(); a.Is4In6() || a.Zone() != "" || isResolvedStub(a) {
		errs = append(errs, fmt.Errorf("stub %s: must not be systemd-resolved's own address, an IPv4-mapped or a scoped address", o.Stub))
	}
	domains, err := normaliseDomains(o.Domains)
	if err != nil {
		errs = append(errs, err)
	}
	o.Domains = domains
	return errors.Join(errs...)
}

// normaliseDomains lowercases, drops a leading "~" and a trailing ".",
// removes duplicates (keeping the first) and rejects what is not a domain
// name, including the root: "~." would send every name to the stub.
func normaliseDomains(in []string) ([]string, error) {
	var out []string
	var errs []error
	for _, d := range in {
		n := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(d), "~"), "."))
		if !validDomain(n) {
			errs = append(errs, fmt.Errorf("domain %q: not a domain name", d))
			continue
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, errors.Join(errs...)
}

func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Apply makes the host's resolver send the cluster's names to the stub in
// the given mode, undoing first whatever an earlier run did in another mode
// (with mode none, that is all it does). It is idempotent: a host already
// as wanted is not written to, and systemd-resolved is reloaded only when
// the drop-in changed (or a previous reload failed). Call it again any time,
// for example on every sync, to notice a replaced /etc/resolv.conf.
func Apply(ctx context.Context, o Options) (*Result, error) {
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("apply host dns: %w", err)
	}
	o = o.withDefaults()
	st := &store{dir: o.StateDir}
	rec, err := st.load()
	if err != nil {
		return nil, fmt.Errorf("apply host dns: %w", err)
	}
	res := &Result{Mode: o.Mode, Reason: "configured"}
	var notes []string
	if o.Mode == "" || o.Mode == ModeAuto {
		d, err := detectRecorded(o.HostRoot, st, rec)
		if err != nil {
			return nil, fmt.Errorf("apply host dns: %w", err)
		}
		res.Mode, res.Reason, notes = d.Mode, d.Reason, d.Notes
	}
	switch {
	case res.Mode == ModeResolvConf && o.Stub.Port() != 53:
		return nil, fmt.Errorf("apply host dns: %w", errPortNot53(o.Stub))
	case res.Mode == ModeResolved && len(o.Domains) == 0:
		return nil, fmt.Errorf("apply host dns: systemd-resolved mode needs at least one routing domain")
	}

	e := newEnv(o, st, rec)
	e.notes = notes

	var want backend
	var others []backend
	switch res.Mode {
	case ModeResolved:
		want, others = resolvedBackend{}, []backend{directBackend{}}
	case ModeResolvConf:
		want, others = directBackend{}, []backend{resolvedBackend{}}
	default:
		others = []backend{resolvedBackend{}, directBackend{}}
	}
	for _, b := range others {
		if err := b.undo(ctx, e); err != nil {
			return nil, fmt.Errorf("apply host dns: undo an earlier run's changes: %w", err)
		}
	}
	if want != nil {
		rec.Stub = o.Stub
		if err := want.apply(ctx, e); err != nil {
			return nil, fmt.Errorf("apply host dns: %w", err)
		}
	}

	ups, err := upstreams(o.HostRoot, res.Mode, st, rec, o.linkSpec.Addr)
	if err != nil {
		return nil, fmt.Errorf("apply host dns: %w", err)
	}
	ups = slices.DeleteFunc(ups, func(a netip.AddrPort) bool { return a.Addr() == o.Stub.Addr() })
	if len(ups) == 0 {
		e.note("no upstream resolvers found on the host: the stub can answer only the cluster's names")
	}
	res.Files, res.Link, res.Upstreams, res.Notes = e.files, e.link, ups, e.notes
	return res, nil
}

// Cleanup undoes what Apply did, as recorded in stateDir: it reverts and
// deletes the link for systemd-resolved (never restarting resolved), or
// puts the original /etc/resolv.conf back exactly (a symlink to the same
// target, or the same content, mode and owner), and removes a drop-in an
// older version left; then it deletes the record and the backup. It
// removes only what carries our mark (the link's alias, the files'
// marker), is a no-op when nothing was done, and safe to run twice. A nil
// Reloader means the default one (see Options). The link is looked for in
// the calling process's network namespace, whatever root is.
func Cleanup(ctx context.Context, root, stateDir string, r Reloader) error {
	return cleanup(ctx, Options{HostRoot: root, StateDir: stateDir, Reloader: r})
}

func cleanup(ctx context.Context, o Options) error {
	o = o.withDefaults()
	st := &store{dir: o.StateDir}
	rec, err := st.load()
	if err != nil {
		return fmt.Errorf("clean up host dns: %w", err)
	}
	e := newEnv(o, st, rec)
	var errs []error
	for _, b := range []backend{resolvedBackend{}, directBackend{}} {
		if err := b.undo(ctx, e); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up host dns: %w", err)
	}
	return nil
}

// Upstreams returns the host's original upstream resolvers, port 53, in the
// host's order and without duplicates: never the stub, never
// systemd-resolved's 127.0.0.53 or 127.0.0.54 (resolved may send names back
// to the stub, a loop).
//
//   - systemd-resolved: the servers in /run/systemd/resolve/resolv.conf,
//     the uplink servers resolved knows.
//   - resolv.conf: the nameservers of the original file as backed up (for a
//     symlinked original, its target's current content while it exists), or
//     of /etc/resolv.conf itself before Apply replaced it.
//   - none: the nameservers of /etc/resolv.conf.
//
// When the file read names only resolved's listeners (resolved is running
// but another mode was chosen), resolved's uplink servers are used instead.
// Mode auto is detected first.
func Upstreams(root string, mode Mode, stateDir string) ([]netip.AddrPort, error) {
	st := &store{dir: stateDir}
	rec, err := st.load()
	if err != nil {
		return nil, fmt.Errorf("host dns upstreams: %w", err)
	}
	if mode == "" || mode == ModeAuto {
		d, err := detectRecorded(root, st, rec)
		if err != nil {
			return nil, fmt.Errorf("host dns upstreams: %w", err)
		}
		mode = d.Mode
	}
	ups, err := upstreams(root, mode, st, rec, LinkAddr)
	if err != nil {
		return nil, fmt.Errorf("host dns upstreams: %w", err)
	}
	return ups, nil
}

func upstreams(root string, mode Mode, st *store, rec *record, link netip.Addr) ([]netip.AddrPort, error) {
	// resolved lists our link's server among its uplinks.
	ours := append(dropInServers(root), link)
	if rec.Stub.IsValid() {
		ours = append(ours, rec.Stub.Addr())
	}
	live, err := readHostFile(root, resolvConfPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", resolvConfPath, err)
	}
	if hasMarker(live) {
		ours = append(ours, parseResolvConf(live).Nameservers...)
	}

	var addrs []netip.Addr
	switch mode {
	case ModeResolved:
		addrs, err = resolvedUplinks(root)
		if err != nil {
			return nil, err
		}
	case ModeResolvConf:
		switch {
		case rec.ResolvConf != nil:
			c, err := originalContent(root, st, rec)
			if err != nil {
				return nil, err
			}
			addrs = parseResolvConf(c).Nameservers
		case hasMarker(live):
			return nil, fmt.Errorf("%s is bridge-agent's but the record of the original is missing from %s", resolvConfPath, st.dir)
		default:
			addrs = parseResolvConf(live).Nameservers
		}
	case ModeNone:
		addrs = parseResolvConf(live).Nameservers
	default:
		return nil, fmt.Errorf("mode %q: want systemd-resolved, resolv.conf or none", mode)
	}
	if mode != ModeResolved && onlyResolvedStubs(addrs) {
		if addrs, err = resolvedUplinks(root); err != nil {
			return nil, err
		}
	}

	out := []netip.AddrPort{}
	for _, a := range addrs {
		if isResolvedStub(a) || slices.Contains(ours, a) {
			continue
		}
		ap := netip.AddrPortFrom(a, 53)
		if !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	return out, nil
}

// resolvedUplinks reads the servers systemd-resolved writes into
// /run/systemd/resolve/resolv.conf: its global servers, then each link's.
func resolvedUplinks(root string) ([]netip.Addr, error) {
	c, err := readHostFile(root, resolvedUplinkPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", resolvedUplinkPath, err)
	}
	return parseResolvConf(c).Nameservers, nil
}

// StubAddrs returns the addresses, beyond Options.Stub, that the stub must
// listen on for the mode Apply will use: LinkAddr in systemd-resolved mode
// (auto detected as Apply detects it), none otherwise. Call it before
// starting the stub; a host that switches to systemd-resolved later needs
// an agent restart for the stub to listen there (Verify reports it).
func StubAddrs(o Options) ([]netip.Addr, error) {
	mode := o.Mode
	if mode == "" || mode == ModeAuto {
		st := &store{dir: o.StateDir}
		rec, err := st.load()
		if err != nil {
			return nil, fmt.Errorf("host dns: %w", err)
		}
		d, err := detectRecorded(o.HostRoot, st, rec)
		if err != nil {
			return nil, fmt.Errorf("host dns: %w", err)
		}
		mode = d.Mode
	}
	if mode == ModeResolved {
		return []netip.Addr{LinkAddr}, nil
	}
	return nil, nil
}
