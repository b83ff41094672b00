package hostdns

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
)

// Reloader makes systemd-resolved read its configuration again.
type Reloader interface {
	ReloadResolved(ctx context.Context) error
}

// defaultReloader is systemctl on the real host, and a no-op that logs when
// the host root is elsewhere (an image being prepared, a test): resolved
// there is not the one systemctl talks to.
func defaultReloader(root string, log *slog.Logger) Reloader {
	if filepath.Clean(root) == "/" {
		return systemctlReloader{}
	}
	return noopReloader{root: root, log: log}
}

// systemctlReloader runs `systemctl try-reload-or-restart
// systemd-resolved.service`: a reload where resolved supports it, a restart
// otherwise, and nothing when resolved is not running.
type systemctlReloader struct{}

func (systemctlReloader) ReloadResolved(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "systemctl", "try-reload-or-restart", "systemd-resolved.service").CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl try-reload-or-restart systemd-resolved.service: %w: %s", err, bytes.TrimSpace(out))
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
