package hostdns

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
)

// Host paths, always joined onto the host root before use.
const (
	resolvConfPath = "/etc/resolv.conf"
	// dropInPath is where older versions wrote a global drop-in for
	// systemd-resolved; now only removed.
	dropInPath         = "/etc/systemd/resolved.conf.d/bridge-agent.conf"
	resolvedRunDir     = "/run/systemd/resolve"
	resolvedUplinkPath = resolvedRunDir + "/resolv.conf"
)

// Marker is the first line of every file bridge-agent writes on the host.
// Cleanup removes or replaces only files that start with it.
const Marker = "# Managed by bridge-agent; removed by `bridge-agent cleanup`."

// hasMarker reports whether content is a file of ours.
func hasMarker(content []byte) bool {
	first, _, _ := bytes.Cut(content, []byte("\n"))
	return string(bytes.TrimRight(first, " \t\r")) == Marker
}

// hostPath joins a host path onto the host root.
func hostPath(root, p string) string {
	return filepath.Join(root, p)
}

// fileState is what one host path looks like, without following a final
// symlink.
type fileState struct {
	Exists  bool
	Symlink string // the link's target as written, when the path is a symlink
	Content []byte // a regular file's content
	Perm    fs.FileMode
	UID     int
	GID     int
}

// managed reports whether the path is a regular file of ours.
func (f fileState) managed() bool {
	return f.Exists && f.Symlink == "" && hasMarker(f.Content)
}

func statFile(p string) (fileState, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fileState{}, nil
	}
	if err != nil {
		return fileState{}, err
	}
	st := fileState{Exists: true, Perm: fi.Mode().Perm(), UID: -1, GID: -1}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.UID, st.GID = int(sys.Uid), int(sys.Gid)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		st.Symlink, err = os.Readlink(p)
		return st, err
	case fi.Mode().IsRegular():
		st.Content, err = os.ReadFile(p)
		return st, err
	default:
		return st, fmt.Errorf("%s is neither a regular file nor a symlink", p)
	}
}

// linkTarget turns a symlink's target, as written in the link at host path
// p, into an absolute, clean host path. /var/run is a symlink to /run on
// every current distribution; normalising it lets callers match prefixes.
func linkTarget(p, target string) string {
	if !path.IsAbs(target) {
		target = path.Join(path.Dir(p), target)
	}
	target = path.Clean(target)
	if rest, ok := strings.CutPrefix(target, "/var/run/"); ok {
		target = "/run/" + rest
	}
	return target
}

// readHostFile reads the file at host path p, following symlinks in its
// last component inside root: an absolute target such as
// /run/systemd/resolve/stub-resolv.conf names a file under root, not on the
// machine running the code. It returns fs.ErrNotExist for a missing file or
// a dangling link.
func readHostFile(root, p string) ([]byte, error) {
	for range 40 {
		full := hostPath(root, p)
		fi, err := os.Lstat(full)
		if err != nil {
			return nil, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return os.ReadFile(full)
		}
		t, err := os.Readlink(full)
		if err != nil {
			return nil, err
		}
		p = linkTarget(p, t)
	}
	return nil, fmt.Errorf("read %s: too many levels of symbolic links", p)
}

// writeFileAtomic replaces the file at p with data: a temporary file in the
// same directory, synced, then renamed over p, so readers see the old file
// or the new one and never a partial one. A symlink at p is replaced, not
// written through. uid and gid are applied when not negative.
func writeFileAtomic(p string, data []byte, perm fs.FileMode, uid, gid int) error {
	dir := filepath.Dir(p)
	f, err := os.CreateTemp(dir, ".bridge-agent-*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if uid >= 0 && gid >= 0 {
		if err := f.Chown(uid, gid); err != nil && !errors.Is(err, fs.ErrPermission) {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := atomicfile.KeepLabel(f, p); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		// A container runtime may bind-mount /etc/resolv.conf; a bind-mount
		// target cannot be renamed over (EBUSY), only written in place.
		if errors.Is(err, syscall.EBUSY) {
			os.Remove(tmp)
			done = true
			return writeInPlace(p, data, perm)
		}
		return err
	}
	done = true
	syncDir(dir)
	return nil
}

func writeInPlace(p string, data []byte, perm fs.FileMode) error {
	if err := os.WriteFile(p, data, perm); err != nil {
		return err
	}
	return os.Chmod(p, perm)
}

// symlinkAtomic makes p a symlink to target, replacing whatever is at p in
// one rename.
func symlinkAtomic(target, p string) error {
	tmp := filepath.Join(filepath.Dir(p), ".bridge-agent-link.tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(p))
	return nil
}

// syncDir makes a rename in dir durable; failing to is not worth an error.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// mkdirAllMode is os.MkdirAll with the directories it creates given
// exactly perm, whatever the process's umask: under the unit's UMask=0077
// a plain MkdirAll(0o755) makes drwx------, unreadable to services that do
// not run as root. Existing directories are left as they are.
func mkdirAllMode(dir string, perm fs.FileMode) error {
	var created []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, d := range created {
		if err := os.Chmod(d, perm); err != nil {
			return err
		}
	}
	return nil
}
