package ownfiles

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/config"
)

// Lock is the held lock of one agent (or cleanup) on a host root.
type Lock struct {
	f    *os.File
	path string
	// Created lists the directories made to hold the lock (host paths).
	Created []string
}

// HeldError says that another process holds the lock.
type HeldError struct {
	// Path is the lock file's host path.
	Path string
	// PID is the holder's process id as it wrote it (0: not known).
	PID int
}

func (e *HeldError) Error() string {
	who := "another bridge-agent"
	if e.PID > 0 {
		who = fmt.Sprintf("bridge-agent (pid %d)", e.PID)
	}
	return fmt.Sprintf("%s is running on this host and holds %s; one agent per host: stop it first (systemctl stop bridge-agent)", who, e.Path)
}

// Acquire takes the host root's lock, config.LockPath, without waiting: a
// *HeldError when another process holds it. The file is made with mode
// 0600 in a directory of mode 0700 and holds the holder's PID.
func Acquire(hostRoot string) (*Lock, error) {
	dir, created, err := Dir(hostRoot, filepath.Dir(config.LockPath), true)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	p := filepath.Join(dir, filepath.Base(config.LockPath))
	// A holder that removes the file (cleanup) leaves a waiter locking an
	// unlinked inode; such a lock is retried on the new file.
	for range 10 {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", config.LockPath, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			pid := readPID(f)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &HeldError{Path: config.LockPath, PID: pid}
			}
			return nil, fmt.Errorf("lock %s: %w", config.LockPath, err)
		}
		same, err := sameFile(f, p)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", config.LockPath, err)
		}
		if !same {
			f.Close()
			continue
		}
		if err := writePID(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", config.LockPath, err)
		}
		return &Lock{f: f, path: p, Created: created}, nil
	}
	return nil, fmt.Errorf("lock %s: the file keeps being replaced", config.LockPath)
}

// Release gives the lock up; the file stays for the next holder.
func (l *Lock) Release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// sameFile reports whether the open f is still the regular file at p.
func sameFile(f *os.File, p string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, err
	}
	if a.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, errors.New("not a regular file")
	}
	if err := unix.Lstat(p, &b); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

func writePID(f *os.File) error {
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

func readPID(f *os.File) int {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 32))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
