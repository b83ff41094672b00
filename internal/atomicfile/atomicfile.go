// Package atomicfile replaces files so that a crash at any moment leaves
// either the old content or the new one, never a torn file, and the
// replacement keeps the SELinux label of the file it replaces.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// selinuxXattr holds a file's SELinux context.
const selinuxXattr = "security.selinux"

// KeepLabel gives f, a temporary file about to be renamed over path, the
// SELinux context of the file at path (its security.selinux extended
// attribute, read without following a symlink at path). A rename keeps the
// inode's label, and a file created in /etc gets the directory's default
// (etc_t) rather than what the policy gives the file's name (net_conf_t for
// /etc/resolv.conf), so without this every confined program that may
// write the original, and restorecon, would see the wrong label. Nothing
// is done when path does not exist or has no label (no SELinux, or a
// filesystem without extended attributes).
func KeepLabel(f *os.File, path string) error {
	return copyXattr(f, path, selinuxXattr)
}

// copyXattr sets the extended attribute name of path, when it has one, on f.
func copyXattr(f *os.File, path, name string) error {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := unix.Lgetxattr(path, name, nil)
			if err != nil {
				return fmt.Errorf("keep label of %s: %w", path, err)
			}
			buf = make([]byte, size)
			continue
		}
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
			return nil // nothing to keep
		case err != nil:
			return fmt.Errorf("keep label of %s: %w", path, err)
		}
		if err := unix.Fsetxattr(int(f.Fd()), name, buf[:n], 0); err != nil {
			return fmt.Errorf("keep label of %s: set %s on %s: %w", path, name, f.Name(), err)
		}
		return nil
	}
}

// WriteFile replaces path with data and mode perm: it writes a temporary
// file in the same directory (created with mode 0700 if missing), syncs it,
// gives it path's SELinux label (KeepLabel), renames it over path and syncs
// the directory. The permissions are set
// before any data is written, so a secret is never readable by others.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write is WriteFile with the content streamed by write, through a buffer,
// so that a large file is never held in memory whole. An error from write
// leaves path as it was.
func Write(path string, perm os.FileMode, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	if err := write(bw); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := KeepLabel(f, path); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
