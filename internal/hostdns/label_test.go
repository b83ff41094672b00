package hostdns

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestResolvConfKeepsSELinuxLabel: the managed resolv.conf, and the
// original that cleanup puts back, carry the original's SELinux context
// rather than that of a new file in /etc. Without SELinux in the kernel,
// root can still store security.selinux on ext4 or tmpfs as plain data,
// which is what this checks; an enforcing kernel's relabel check is not
// exercised here.
func TestResolvConfKeepsSELinuxLabel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: setting security.* attributes needs CAP_SYS_ADMIN (root)")
	}
	const name = "security.selinux"
	label := []byte("system_u:object_r:net_conf_t:s0\x00")
	h := newHost(t)
	h.file("/etc/resolv.conf", "nameserver 10.0.0.2\n", 0o644)
	if err := unix.Setxattr(h.path("/etc/resolv.conf"), name, label, 0); err != nil {
		t.Skipf("skipping: this filesystem does not store %s: %v", name, err)
	}
	check := func(when string) {
		t.Helper()
		buf := make([]byte, 256)
		n, err := unix.Lgetxattr(h.path("/etc/resolv.conf"), name, buf)
		if err != nil || string(buf[:n]) != string(label) {
			t.Errorf("%s: resolv.conf label %q (%v), want %q", when, buf[:max(n, 0)], err, label)
		}
	}
	fake := newFakeResolved(h.root)
	res := h.apply(h.options(ModeResolvConf, fake))
	if res.Mode != ModeResolvConf {
		t.Fatalf("mode %v, want resolv.conf", res.Mode)
	}
	check("managed")
	h.cleanup(fake)
	if got := h.read("/etc/resolv.conf"); got != "nameserver 10.0.0.2\n" {
		t.Fatalf("after cleanup: %q", got)
	}
	check("restored")
}
