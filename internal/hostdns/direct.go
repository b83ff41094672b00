package hostdns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// directBackend points the C library's resolver at the stub by replacing
// /etc/resolv.conf with a file of ours naming the stub as the only
// nameserver. The host's own file is backed up into the state directory the
// first time, with whether it was a symlink and to where, and restored by
// cleanup exactly. resolv.conf cannot name a port, so the stub must listen
// on port 53.
//
// A program that owns /etc/resolv.conf (a DHCP client, NetworkManager,
// resolvconf) may write over our file. Each apply notices (our marker is
// gone), keeps the new file as the new original and writes ours again.
type directBackend struct{}

func (directBackend) apply(_ context.Context, e *env) error {
	if e.stub.Port() != 53 {
		return errPortNot53(e.stub)
	}
	p := hostPath(e.root, resolvConfPath)
	cur, err := statFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", resolvConfPath, err)
	}
	switch {
	case cur.managed() && e.rec.ResolvConf == nil:
		return fmt.Errorf("%s is bridge-agent's but the record of the original is missing from %s; restore the host's file by hand", resolvConfPath, e.st.dir)
	case cur.managed():
		// Ours, and the original is backed up: never back up our own file.
	default:
		if e.rec.ResolvConf != nil {
			same, err := e.sameAsOriginal(cur)
			if err != nil {
				return err
			}
			if !same {
				e.note(resolvConfPath + " was replaced by someone else since bridge-agent wrote it; the new file is now the original that cleanup restores")
			}
		}
		if err := e.backup(cur); err != nil {
			return err
		}
	}

	content, err := e.originalContent()
	if err != nil {
		return err
	}
	orig := e.rec.ResolvConf.Original
	perm, uid, gid := fs.FileMode(0o644), -1, -1
	if !orig.Missing && orig.Symlink == "" {
		perm, uid, gid = fs.FileMode(orig.Perm), orig.UID, orig.GID
	}
	want := renderResolvConf(e.stub.Addr(), parseResolvConf(content).Keep, onHost(e.root, e.st.backupPath()))
	if !cur.managed() || !bytes.Equal(cur.Content, want) || cur.Perm != perm {
		if err := writeFileAtomic(p, want, perm, uid, gid); err != nil {
			return fmt.Errorf("write %s: %w", resolvConfPath, err)
		}
		e.log.Info("wrote resolv.conf", "path", resolvConfPath, "stub", e.stub.Addr())
	}
	e.files = append(e.files, resolvConfPath)
	return nil
}

// backup records the host's current /etc/resolv.conf as the original: its
// content (through a symlink, when it has one) in the state directory, the
// rest in the record.
func (e *env) backup(cur fileState) error {
	o := original{Missing: !cur.Exists, Symlink: cur.Symlink, UID: -1, GID: -1}
	var content []byte
	switch {
	case !cur.Exists:
	case cur.Symlink != "":
		// The target's content now, for when the target disappears later.
		c, err := readHostFile(e.root, resolvConfPath)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("back up %s: %w", resolvConfPath, err)
		}
		content = c
	default:
		content = cur.Content
		o.Perm, o.UID, o.GID = uint32(cur.Perm), cur.UID, cur.GID
	}
	if err := mkdirAllMode(e.st.dir, 0o700); err != nil {
		return fmt.Errorf("back up %s: %w", resolvConfPath, err)
	}
	if err := writeFileAtomic(e.st.backupPath(), content, 0o600, -1, -1); err != nil {
		return fmt.Errorf("back up %s: %w", resolvConfPath, err)
	}
	e.rec.ResolvConf = &resolvConfRecord{Path: resolvConfPath, Original: o}
	e.log.Info("backed up resolv.conf", "path", resolvConfPath, "backup", e.st.backupPath(), "symlink", o.Symlink, "missing", o.Missing)
	return e.save()
}

// sameAsOriginal reports whether cur is the recorded original, as when an
// earlier apply stopped between backing up and writing.
func (e *env) sameAsOriginal(cur fileState) (bool, error) {
	o := e.rec.ResolvConf.Original
	switch {
	case o.Missing || !cur.Exists:
		return o.Missing == !cur.Exists, nil
	case o.Symlink != "" || cur.Symlink != "":
		return o.Symlink == cur.Symlink, nil
	}
	b, err := os.ReadFile(e.st.backupPath())
	if err != nil {
		return false, fmt.Errorf("read backup: %w", err)
	}
	return bytes.Equal(b, cur.Content) && uint32(cur.Perm) == o.Perm, nil
}

// originalContent is the recorded original's content: for a symlink, its
// target's content now when the target is still there (its owner keeps it
// current), else the backup.
func (e *env) originalContent() ([]byte, error) {
	return originalContent(e.root, e.st, e.rec)
}

func originalContent(root string, st *store, rec *record) ([]byte, error) {
	o := rec.ResolvConf.Original
	if o.Missing {
		return nil, nil
	}
	if o.Symlink != "" {
		if c, err := readHostFile(root, linkTarget(resolvConfPath, o.Symlink)); err == nil {
			return c, nil
		}
	}
	b, err := os.ReadFile(st.backupPath())
	if err != nil {
		return nil, fmt.Errorf("read backup of %s: %w", resolvConfPath, err)
	}
	return b, nil
}

// undo puts the original /etc/resolv.conf back, if the file there is still
// ours, and forgets the backup. A file someone wrote over ours is theirs and
// stays.
func (directBackend) undo(_ context.Context, e *env) error {
	p := hostPath(e.root, resolvConfPath)
	cur, err := statFile(p)
	if err != nil {
		return fmt.Errorf("read %s: %w", resolvConfPath, err)
	}
	if e.rec.ResolvConf == nil {
		if cur.managed() {
			return fmt.Errorf("%s is bridge-agent's but the record of the original is missing from %s; restore the host's file by hand", resolvConfPath, e.st.dir)
		}
		return nil
	}
	o := e.rec.ResolvConf.Original
	switch {
	case !cur.managed():
		e.note(resolvConfPath + " was replaced by someone else since bridge-agent wrote it; left as it is")
	case o.Missing:
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", resolvConfPath, err)
		}
	case o.Symlink != "":
		if err := symlinkAtomic(o.Symlink, p); err != nil {
			return fmt.Errorf("restore %s: %w", resolvConfPath, err)
		}
	default:
		content, err := os.ReadFile(e.st.backupPath())
		if err != nil {
			return fmt.Errorf("restore %s: read backup: %w", resolvConfPath, err)
		}
		if err := writeFileAtomic(p, content, fs.FileMode(o.Perm), o.UID, o.GID); err != nil {
			return fmt.Errorf("restore %s: %w", resolvConfPath, err)
		}
	}
	if cur.managed() {
		e.log.Info("restored resolv.conf", "path", resolvConfPath, "symlink", o.Symlink, "missing", o.Missing)
	}
	e.rec.ResolvConf = nil
	if err := e.save(); err != nil {
		return err
	}
	if err := os.Remove(e.st.backupPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove backup: %w", err)
	}
	return nil
}

// onHost names a path under the host root as the host sees it.
func onHost(root, p string) string {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return p
	}
	return "/" + rel
}
