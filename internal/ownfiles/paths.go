package ownfiles

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/bridge-agent/bridge-agent/internal/config"
)

// Dir checks the directory p (a host path, without the host root; p is the
// agent's own directory or lies inside one, see config.CheckOwnPath) on the
// host and returns where it is. With create, missing directories are made:
// the standard prefix (/var/lib, /run) with mode 0755, the agent's own ones
// with mode 0700, and created lists the latter (host paths, outermost
// first). Without create, a missing directory is an error that wraps
// fs.ErrNotExist.
func Dir(hostRoot, p string, create bool) (path string, created []string, err error) {
	own, err := config.CheckOwnPath(p, true)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	root, err := filepath.EvalSymlinks(hostRoot)
	if err != nil {
		return "", nil, fmt.Errorf("host root: %w", err)
	}
	prefix := filepath.Dir(own)
	hp := filepath.Join(root, prefix)
	if create {
		if err := os.MkdirAll(hp, 0o755); err != nil {
			return "", nil, fmt.Errorf("%s: %w", prefix, err)
		}
	}
	cur, err := filepath.EvalSymlinks(hp)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", p, err)
	}
	if !within(root, cur) {
		return "", nil, fmt.Errorf("%s: %s resolves to %s, outside the host root %s", p, prefix, cur, root)
	}
	name := prefix
	for _, c := range strings.Split(strings.TrimPrefix(p, prefix+"/"), "/") {
		cur, name = filepath.Join(cur, c), name+"/"+c
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) && create {
			if err := os.Mkdir(cur, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return "", created, fmt.Errorf("%s: %w", name, err)
			} else if err == nil {
				if err := os.Chmod(cur, 0o700); err != nil {
					return "", created, fmt.Errorf("%s: %w", name, err)
				}
				created = append(created, name)
			}
			fi, err = os.Lstat(cur)
		}
		if err != nil {
			return "", created, fmt.Errorf("%s: %w", name, err)
		}
		if err := checkOwnDir(name, fi); err != nil {
			return "", created, err
		}
	}
	return cur, created, nil
}

// checkOwnDir refuses what must never be one of the agent's directories: a
// symbolic link (it could point anywhere: /etc, /), something not a
// directory, a directory someone else owns or may write to.
func checkOwnDir(name string, fi fs.FileInfo) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link; the agent's own directories must be real directories (remove the link or change the configuration)", name)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", name)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s is writable by group or others (mode %04o); the agent's directories are its own: chmod go-w %s", name, fi.Mode().Perm(), name)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to the agent's user (uid %d)", name, st.Uid, os.Geteuid())
	}
	return nil
}

// within reports whether p is root or inside it (both clean and absolute).
func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
