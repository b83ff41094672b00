package hostdns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
)

// Reloader makes systemd-resolved read its configuration files again,
// without restarting it. It is used only to drop the global drop-in older
// versions of bridge-agent wrote; the per-link wiring needs no reload.
type Reloader interface {
	// ReloadResolved reloads resolved, or returns ErrNoReload when this
	// resolved cannot reload without a restart.
	ReloadResolved(ctx context.Context) error
}

// ErrNoReload says systemd-resolved cannot reload its configuration
// without a restart (its unit has no ExecReload=, before systemd v251).
var ErrNoReload = errors.New("systemd-resolved cannot reload its configuration without a restart")

// defaultReloader is systemctl on the real host, and a no-op that logs when
// the host root is elsewhere (an image being prepared, a test): resolved
// there is not the one systemctl talks to.
func defaultReloader(root string, log *slog.Logger) Reloader {
	if filepath.Clean(root) == "/" {
		return systemctlReloader{}
	}
	return noopReloader{root: root, log: log}
}

// systemctlReloader runs `systemctl reload systemd-resolved.service` when
// systemd says the unit can reload (CanReload=yes), and never restarts it:
// a restart flushes the host's DNS cache and drops what other programs set
// per link, which is not a guest's to do.
type systemctlReloader struct{}

func (systemctlReloader) ReloadResolved(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "systemctl", "show", "-P", "CanReload", "systemd-resolved.service").CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl show -P CanReload systemd-resolved.service: %w: %s", err, bytes.TrimSpace(out))
	}
	if strings.TrimSpace(string(out)) != "yes" {
		return ErrNoReload
	}
	out, err = exec.CommandContext(ctx, "systemctl", "reload", "systemd-resolved.service").CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl reload systemd-resolved.service: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

type noopReloader struct {
	root string
	log  *slog.Logger
}

func (n noopReloader) ReloadResolved(context.Context) error {
	n.log.Info("not reloading systemd-resolved: the host root is not /", "hostRoot", n.root)
	return nil
}
