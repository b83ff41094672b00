package ownfiles

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestLockOnePerHostRoot: a second lock on the same host root fails with
// the holder's PID; after release it succeeds; another host root is
// independent.
func TestLockOnePerHostRoot(t *testing.T) {
	root := t.TempDir()
	first, err := Acquire(root)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/run/bridge-agent"}, first.Created); diff != "" {
		t.Errorf("created (-want +got):\n%s", diff)
	}
	fi, err := os.Stat(filepath.Join(root, "run/bridge-agent/lock"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v, mode %v; want 0600", err, fi.Mode())
	}
	if fi, err := os.Stat(filepath.Join(root, "run/bridge-agent")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("lock directory: %v; want mode 0700", err)
	}

	_, err = Acquire(root)
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second Acquire = %v, want a HeldError", err)
	}
	if held.PID != os.Getpid() {
		t.Errorf("holder PID %d, want %d", held.PID, os.Getpid())
	}
	for _, want := range []string{"pid " + strconv.Itoa(os.Getpid()), "/run/bridge-agent/lock", "systemctl stop bridge-agent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}

	other, err := Acquire(t.TempDir())
	if err != nil {
		t.Errorf("another host root: %v", err)
	}
	other.Release()

	first.Release()
	again, err := Acquire(root)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	if len(again.Created) != 0 {
		t.Errorf("created %v, want nothing (the directory exists)", again.Created)
	}
	again.Release()
}

// TestLockFileRemovedWhileHeld: a holder that removes the lock file (as
// cleanup does) does not let two others in.
func TestLockFileRemovedWhileHeld(t *testing.T) {
	root := t.TempDir()
	a, err := Acquire(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "run/bridge-agent/lock")); err != nil {
		t.Fatal(err)
	}
	b, err := Acquire(root) // a new file: a holds an unlinked one
	if err != nil {
		t.Fatal(err)
	}
	a.Release()
	if _, err := Acquire(root); err == nil {
		t.Error("a third lock while b holds the file")
	}
	b.Release()
}

func TestLockRefusesSymlink(t *testing.T) {
	root := t.TempDir()
	mkdir(t, root, "run/bridge-agent")
	if err := os.Symlink(filepath.Join(root, "elsewhere"), filepath.Join(root, "run/bridge-agent/lock")); err != nil {
		t.Fatal(err)
	}
	if l, err := Acquire(root); err == nil {
		l.Release()
		t.Fatal("Acquire followed a symlink")
	}
	if _, err := os.Lstat(filepath.Join(root, "elsewhere")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the link's target was created: %v", err)
	}
}

// TestDirUseTimeChecks: what the configuration check cannot see, on the
// host: symbolic links out of the agent's directories, prefixes that leave
// the host root, directories others may write.
func TestDirUseTimeChecks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
		path  string
		want  string // "" ok
	}{
		{"fresh", func(*testing.T, string) {}, "/var/lib/bridge-agent", ""},
		{"nested", func(*testing.T, string) {}, "/var/lib/bridge-agent/a/b", ""},
		{"own dir is a symlink to /etc", func(t *testing.T, root string) {
			mkdir(t, root, "etc")
			mkdir(t, root, "var/lib")
			symlink(t, filepath.Join(root, "etc"), filepath.Join(root, "var/lib/bridge-agent"))
		}, "/var/lib/bridge-agent", "symbolic link"},
		{"own dir is a relative symlink", func(t *testing.T, root string) {
			mkdir(t, root, "var/lib/x")
			symlink(t, "x", filepath.Join(root, "var/lib/bridge-agent"))
		}, "/var/lib/bridge-agent", "symbolic link"},
		{"inner dir is a symlink", func(t *testing.T, root string) {
			mkdir(t, root, "var/lib/bridge-agent")
			symlink(t, "/", filepath.Join(root, "var/lib/bridge-agent/state"))
		}, "/var/lib/bridge-agent/state", "symbolic link"},
		{"prefix leaves the host root", func(t *testing.T, root string) {
			mkdir(t, root, "var")
			symlink(t, t.TempDir(), filepath.Join(root, "var/lib"))
		}, "/var/lib/bridge-agent", "outside the host root"},
		{"prefix is a symlink inside the host root", func(t *testing.T, root string) {
			mkdir(t, root, "data/lib")
			mkdir(t, root, "var")
			symlink(t, "../data/lib", filepath.Join(root, "var/lib"))
		}, "/var/lib/bridge-agent", ""},
		{"world-writable", func(t *testing.T, root string) {
			mkdir(t, root, "run/bridge-agent")
			if err := os.Chmod(filepath.Join(root, "run/bridge-agent"), 0o777); err != nil {
				t.Fatal(err)
			}
		}, "/run/bridge-agent", "writable by group or others"},
		{"a file", func(t *testing.T, root string) {
			mkdir(t, root, "run")
			write(t, filepath.Join(root, "run/bridge-agent"), "x")
		}, "/run/bridge-agent", "not a directory"},
		{"not ours", func(*testing.T, string) {}, "/etc", "directory of the agent's own"},
		{"escape", func(*testing.T, string) {}, "/var/lib/bridge-agent/../../../etc", "canonical"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(t, root)
			p, _, err := Dir(root, tc.path, true)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if real, _ := filepath.EvalSymlinks(root); !within(real, p) {
					t.Errorf("Dir = %s, outside %s", p, root)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Dir = %s, %v; want an error with %q", p, err, tc.want)
			}
		})
	}
}

func testOptions(root string) Options {
	return Options{
		HostRoot: root,
		StateDir: "/var/lib/bridge-agent",
		Dirs:     []string{"/run/bridge-agent"},
		Files: []string{"/var/lib/bridge-agent/snapshot.json", "/var/lib/bridge-agent/hostdns.json",
			"/run/bridge-agent/status.sock", "/run/bridge-agent/lock"},
	}
}

// TestCleanupRemovesOnlyOurs: the agent's files and directories go; a
// file someone planted in the state directory stays, with its directory,
// and the report says so.
func TestCleanupRemovesOnlyOurs(t *testing.T) {
	root := t.TempDir()
	mkdir(t, root, "var/lib")
	o := testOptions(root)
	lock, err := Acquire(root)
	if err != nil {
		t.Fatal(err)
	}
	o.Created = lock.Created
	if err := Prepare(o); err != nil {
		t.Fatal(err)
	}
	lock.Release()
	write(t, filepath.Join(root, "var/lib/bridge-agent/snapshot.json"), "{}")
	write(t, filepath.Join(root, "var/lib/bridge-agent/.snapshot.json.12345"), "torn")
	write(t, filepath.Join(root, "var/lib/bridge-agent/planted.txt"), "not the agent's")
	ln, err := net.Listen("unix", filepath.Join(root, "run/bridge-agent/status.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	lock, err = Acquire(root)
	if err != nil {
		t.Fatal(err)
	}
	co := CleanupOptions{Options: o}
	co.Created = lock.Created
	rep, err := Cleanup(co)
	lock.Release()
	if err != nil {
		t.Fatal(err)
	}
	wantRemoved := []string{"/var/lib/bridge-agent/snapshot.json", "/run/bridge-agent/status.sock", "/run/bridge-agent/lock",
		"/var/lib/bridge-agent/.snapshot.json.12345", "/run/bridge-agent"}
	if diff := cmp.Diff(sorted(wantRemoved), sorted(rep.Removed)); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	if len(rep.Left) != 2 || rep.Left[0].Path != "/var/lib/bridge-agent" || !strings.Contains(rep.Left[0].Why, "planted.txt") ||
		rep.Left[1].Path != "/var/lib/bridge-agent/owned.json" {
		t.Errorf("left = %+v, want the state directory, naming planted.txt, and the record of it", rep.Left)
	}
	if b, err := os.ReadFile(filepath.Join(root, "var/lib/bridge-agent/planted.txt")); err != nil || string(b) != "not the agent's" {
		t.Errorf("planted file: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "run/bridge-agent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime directory: %v, want removed", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "var/lib")); err != nil {
		t.Errorf("/var/lib must stay: %v", err)
	}

	// A second cleanup leaves it again; once the planted file is gone, the
	// next one removes the directory: the record still knows it is ours.
	rep, err = Cleanup(CleanupOptions{Options: o})
	if err != nil || len(rep.Left) != 2 || len(rep.Removed) != 0 {
		t.Errorf("second cleanup: %+v, %v", rep, err)
	}
	os.Remove(filepath.Join(root, "var/lib/bridge-agent/planted.txt"))
	rep, err = Cleanup(CleanupOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/var/lib/bridge-agent/owned.json", "/var/lib/bridge-agent"}, rep.Removed); diff != "" || len(rep.Left) != 0 {
		t.Errorf("third cleanup: removed (-want +got):\n%s\nleft %+v", diff, rep.Left)
	}
	if _, err := os.Lstat(filepath.Join(root, "var/lib/bridge-agent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory after the third cleanup: %v", err)
	}
}

// TestCleanupAllGone: with nothing planted, nothing is left.
func TestCleanupAllGone(t *testing.T) {
	root := t.TempDir()
	o := testOptions(root)
	if err := Prepare(o); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "var/lib/bridge-agent/hostdns.json"), "{}")
	rep, err := Cleanup(CleanupOptions{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Left) != 0 {
		t.Errorf("left: %+v", rep.Left)
	}
	for _, p := range []string{"var/lib/bridge-agent", "run/bridge-agent"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want removed", p, err)
		}
	}
}

// TestCleanupWithoutRecord: a state directory of a version that kept no
// record: the files the agent knows by name go, unknown ones and the
// directory stay, reported.
func TestCleanupWithoutRecord(t *testing.T) {
	root := t.TempDir()
	mkdir(t, root, "var/lib/bridge-agent")
	for _, f := range []string{"snapshot.json", "hostdns.json", "notes.txt"} {
		write(t, filepath.Join(root, "var/lib/bridge-agent", f), "x")
	}
	rep, err := Cleanup(CleanupOptions{Options: testOptions(root)})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sorted([]string{"/var/lib/bridge-agent/snapshot.json", "/var/lib/bridge-agent/hostdns.json"}), sorted(rep.Removed)); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	if len(rep.Left) != 1 || !strings.Contains(rep.Left[0].Why, "notes.txt") || !strings.Contains(rep.Left[0].Why, "did not create") {
		t.Errorf("left = %+v", rep.Left)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/bridge-agent/notes.txt")); err != nil {
		t.Error(err)
	}
}

// TestCleanupDistrustsRecord: a record naming paths outside the agent's
// directories, or a planted symlink under a name of ours, removes nothing
// of the host's.
func TestCleanupDistrustsRecord(t *testing.T) {
	root := t.TempDir()
	mkdir(t, root, "var/lib/bridge-agent")
	mkdir(t, root, "etc")
	write(t, filepath.Join(root, "etc/passwd"), "root:x:0:0")
	write(t, filepath.Join(root, "var/lib/bridge-agent", RecordName),
		`{"version":1,"dirs":["/etc","/var/lib"],"files":["/etc/passwd","/var/lib/bridge-agent/../../../etc/passwd"]}`)
	symlink(t, filepath.Join(root, "etc/passwd"), filepath.Join(root, "var/lib/bridge-agent/snapshot.json"))
	rep, err := Cleanup(CleanupOptions{Options: testOptions(root)})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/passwd")); err != nil || string(b) != "root:x:0:0" {
		t.Fatalf("/etc/passwd: %q, %v", b, err)
	}
	var left []string
	for _, l := range rep.Left {
		left = append(left, l.Path)
	}
	for _, want := range []string{"/etc/passwd", "/var/lib/bridge-agent/../../../etc/passwd", "/etc", "/var/lib", "/var/lib/bridge-agent/snapshot.json"} {
		if !slices.Contains(left, want) {
			t.Errorf("left %v lacks %s", left, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "etc")); err != nil {
		t.Error(err)
	}
}

// TestCleanupRefusesSymlinkedStateDir: a state directory that is a link
// (to /etc) is an error, and nothing behind it is touched.
func TestCleanupRefusesSymlinkedStateDir(t *testing.T) {
	root := t.TempDir()
	mkdir(t, root, "etc")
	mkdir(t, root, "var/lib")
	write(t, filepath.Join(root, "etc/snapshot.json"), "host file")
	symlink(t, filepath.Join(root, "etc"), filepath.Join(root, "var/lib/bridge-agent"))
	_, err := Cleanup(CleanupOptions{Options: testOptions(root)})
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("Cleanup = %v, want the link refused", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/snapshot.json")); err != nil {
		t.Errorf("a file behind the link was removed: %v", err)
	}
}

// TestPrepareSystemdDirs: a directory systemd made for the unit counts as
// made for the agent (host root / only).
func TestPrepareSystemdDirs(t *testing.T) {
	root := t.TempDir()
	mkdir(t, root, "var/lib/bridge-agent")
	o := testOptions(root)
	o.SystemdDirs = []string{"/var/lib/bridge-agent"}
	if err := Prepare(o); err != nil {
		t.Fatal(err)
	}
	d, _, _ := Dir(root, o.StateDir, false)
	rec, found, err := loadRecord(d)
	if err != nil || !found {
		t.Fatal(found, err)
	}
	if slices.Contains(rec.Dirs, "/var/lib/bridge-agent") {
		t.Errorf("dirs %v: a systemd directory counted under a host root that is not /", rec.Dirs)
	}
	if !slices.Contains(rec.Dirs, "/run/bridge-agent") {
		t.Errorf("dirs %v lack /run/bridge-agent, created by Prepare", rec.Dirs)
	}
}

func mkdir(t *testing.T, root, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
