package atomicfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "f")
	if err := WriteFile(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "two" {
		t.Fatalf("content %q, %v", got, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("%d entries in the directory, want 1 (no temporary left)", len(entries))
	}
	if err := WriteFile(filepath.Join(path, "below-a-file"), nil, 0o600); err == nil {
		t.Error("writing below a regular file succeeded")
	}
}

// label is the test's SELinux context, as the kernel stores it.
var label = []byte("system_u:object_r:net_conf_t:s0\x00")

// TestKeepsSELinuxLabel: a replaced file keeps the security.selinux
// attribute of the file it replaces. Without SELinux in the kernel, root can
// still store the attribute on ext4 or tmpfs as plain data, which is what
// this checks; that an enforcing kernel accepts the relabel is not proven
// here.
func TestKeepsSELinuxLabel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: setting security.* attributes needs CAP_SYS_ADMIN (root)")
	}
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(path, selinuxXattr, label, 0); err != nil {
		t.Skipf("skipping: this filesystem does not store %s: %v", selinuxXattr, err)
	}
	if err := WriteFile(path, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := xattr(t, path, selinuxXattr); !bytes.Equal(got, label) {
		t.Errorf("label after the replacement %q, want %q", got, label)
	}
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Errorf("content %q", got)
	}
}

// TestCopyXattr covers the copy on attributes any user may set: a value
// longer than the first buffer, a file without the attribute, no file.
func TestCopyXattr(t *testing.T) {
	const name = "user.bridge-agent-test"
	dir := t.TempDir()
	probe := filepath.Join(dir, "probe")
	if err := os.WriteFile(probe, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(probe, name, []byte("x"), 0); err != nil {
		t.Skipf("skipping: %s does not store user.* attributes: %v", dir, err)
	}
	long := bytes.Repeat([]byte("l"), 1000)
	for _, tc := range []struct {
		name  string
		value []byte // nil: the file has no attribute
		exist bool
	}{
		{"short", label, true},
		{"longer than the first buffer", long, true},
		{"no attribute", nil, true},
		{"no file", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "target")
			os.Remove(path)
			if tc.exist {
				if err := os.WriteFile(path, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if tc.value != nil {
					if err := unix.Setxattr(path, name, tc.value, 0); err != nil {
						t.Fatal(err)
					}
				}
			}
			f, err := os.CreateTemp(dir, "tmp")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := copyXattr(f, path, name); err != nil {
				t.Fatal(err)
			}
			if got := xattr(t, f.Name(), name); !bytes.Equal(got, tc.value) {
				t.Errorf("copied %q, want %q", got, tc.value)
			}
		})
	}
}

// xattr returns the attribute name of path, nil when it has none.
func xattr(t *testing.T, path, name string) []byte {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(path, name, buf)
	if errors.Is(err, unix.ENODATA) {
		return nil
	}
	if err != nil {
		t.Fatalf("read %s of %s: %v", name, path, err)
	}
	return buf[:n]
}
