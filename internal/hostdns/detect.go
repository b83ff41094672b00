package hostdns

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// facts is what detection looks at, gathered from files under the host
// root. decide turns it into a mode without touching the file system, so
// the decision is table-tested on its own.
type facts struct {
	// Exists: /etc/resolv.conf exists (a file, or a symlink, even dangling).
	Exists bool
	// Symlink is the link's target as an absolute, clean host path, when
	// /etc/resolv.conf is a symlink.
	Symlink string
	// Ours: /etc/resolv.conf is a regular file carrying our marker.
	Ours bool
	// Nameservers and Comments are read from the file, through the symlink.
	Nameservers []netip.Addr
	Comments    []string
	// ResolvedRunning: /run/systemd/resolve exists, which systemd-resolved
	// creates when it starts.
	ResolvedRunning bool
}

// decision is a detected mode, why, and what the user should know.
type decision struct {
	Mode   Mode
	Reason string
	Notes  []string
}

// managers are the programs known to own /etc/resolv.conf when it is a
// symlink into their directory.
var managers = []struct{ prefix, name string }{
	{"/run/resolvconf/", "resolvconf"},
	{"/etc/resolvconf/run/", "resolvconf"},
	{"/run/NetworkManager/", "NetworkManager"},
	{"/run/connman/", "ConnMan"},
	{"/run/netconfig/", "netconfig"},
}

// signatures are the words generators put into the header comment of a
// resolv.conf they write as a regular file.
var signatures = []struct{ word, name string }{
	{"networkmanager", "NetworkManager"},
	{"resolvconf", "resolvconf"},
	{"netconfig", "netconfig"},
	{"connman", "ConnMan"},
	{"dhcpcd", "dhcpcd"},
}

// decide picks the backend for mode auto. systemd-resolved when
// /etc/resolv.conf points into /run/systemd/resolve/ or names only
// resolved's listeners, and resolved is running; resolv.conf otherwise,
// with a note when another program owns that file.
func decide(f facts) decision {
	const rc = resolvConfPath
	switch {
	case !f.Exists:
		return decision{Mode: ModeResolvConf, Reason: rc + " does not exist"}
	case f.Ours:
		return decision{Mode: ModeResolvConf, Reason: rc + " is bridge-agent's own, from an earlier run in resolv.conf mode"}
	}

	intoResolved := strings.HasPrefix(f.Symlink, resolvedRunDir+"/")
	if intoResolved || onlyResolvedStubs(f.Nameservers) {
		what := rc + " names only systemd-resolved's stub"
		if intoResolved {
			what = rc + " is a symlink to " + f.Symlink
		}
		if !f.ResolvedRunning {
			return decision{
				Mode:   ModeResolvConf,
				Reason: what + " but systemd-resolved is not running (no " + resolvedRunDir + ")",
				Notes:  []string{"systemd-resolved is set up but not running, so bridge-agent manages " + rc + " directly; once resolved runs, the next apply switches to it"},
			}
		}
		d := decision{Mode: ModeResolved, Reason: what + " and systemd-resolved is running"}
		if f.Symlink == resolvedUplinkPath {
			d.Notes = append(d.Notes, rc+" lists systemd-resolved's upstream servers rather than its stub, so programs query those servers directly; the stub is among them, as resolved's global server")
		}
		return d
	}

	d := decision{Mode: ModeResolvConf}
	owner := ""
	if f.Symlink != "" {
		d.Reason = rc + " is a symlink to " + f.Symlink + ", not systemd-resolved's"
		owner = "the owner of " + f.Symlink
		for _, m := range managers {
			if strings.HasPrefix(f.Symlink, m.prefix) {
				owner = m.name
				break
			}
		}
	} else {
		d.Reason = rc + " is a regular file not naming systemd-resolved"
		comments := strings.ToLower(strings.Join(f.Comments, "\n"))
		for _, s := range signatures {
			if strings.Contains(comments, s.word) {
				owner = s.name
				break
			}
		}
	}
	if owner != "" {
		d.Notes = append(d.Notes, rc+" is managed by "+owner+", which may overwrite it; each apply notices a replaced file, keeps it as the new original and points it at the stub again")
	}
	return d
}

// gatherFacts reads what decide needs from the files under root.
func gatherFacts(root string) (facts, error) {
	var f facts
	st, err := statFile(hostPath(root, resolvConfPath))
	if err != nil {
		return f, fmt.Errorf("read %s: %w", resolvConfPath, err)
	}
	f.Exists = st.Exists
	if st.Symlink != "" {
		f.Symlink = linkTarget(resolvConfPath, st.Symlink)
	}
	f.Ours = st.managed()
	content, err := readHostFile(root, resolvConfPath)
	switch {
	case err == nil:
		rc := parseResolvConf(content)
		f.Nameservers, f.Comments = rc.Nameservers, rc.Comments
	case errors.Is(err, fs.ErrNotExist):
		// Missing, or a dangling symlink: no nameservers.
	default:
		return f, fmt.Errorf("read %s: %w", resolvConfPath, err)
	}
	fi, err := os.Stat(hostPath(root, resolvedRunDir))
	switch {
	case err == nil:
		f.ResolvedRunning = fi.IsDir()
	case !errors.Is(err, fs.ErrNotExist):
		return f, fmt.Errorf("stat %s: %w", resolvedRunDir, err)
	}
	return f, nil
}

func detect(root string) (decision, error) {
	f, err := gatherFacts(root)
	if err != nil {
		return decision{}, fmt.Errorf("detect host dns: %w", err)
	}
	return decide(f), nil
}

// detectRecorded is detect for Apply and Upstreams, which have the record:
// while /etc/resolv.conf is our file, it decides over the recorded original
// instead, so that auto picks what it would pick on the untouched host and
// a repeated Apply reports the same reason and notes as the first.
func detectRecorded(root string, st *store, rec *record) (decision, error) {
	f, err := gatherFacts(root)
	if err != nil {
		return decision{}, fmt.Errorf("detect host dns: %w", err)
	}
	if f.Ours && rec.ResolvConf != nil {
		if f, err = originalFacts(root, st, rec, f.ResolvedRunning); err != nil {
			return decision{}, fmt.Errorf("detect host dns: %w", err)
		}
	}
	return decide(f), nil
}

// originalFacts are the facts of the recorded original /etc/resolv.conf.
func originalFacts(root string, st *store, rec *record, resolvedRunning bool) (facts, error) {
	o := rec.ResolvConf.Original
	f := facts{Exists: !o.Missing, ResolvedRunning: resolvedRunning}
	if o.Symlink != "" {
		f.Symlink = linkTarget(resolvConfPath, o.Symlink)
	}
	content, err := originalContent(root, st, rec)
	if err != nil {
		return f, err
	}
	rc := parseResolvConf(content)
	f.Nameservers, f.Comments = rc.Nameservers, rc.Comments
	return f, nil
}

// Detect picks the concrete mode that auto means on the host under root,
// with the reason, from the files there alone: /etc/resolv.conf (whether a
// symlink, and where to, and what it names) and whether
// /run/systemd/resolve exists. A /etc/resolv.conf of ours means resolv.conf
// mode here; Apply and Upstreams, which read the record, decide over the
// host's original file instead.
func Detect(root string) (Mode, string, error) {
	d, err := detect(root)
	if err != nil {
		return "", "", err
	}
	return d.Mode, d.Reason, nil
}
