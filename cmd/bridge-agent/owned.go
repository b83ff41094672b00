package main

import (
	"path/filepath"
	"slices"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/hostdns"
	"github.com/bridge-agent/bridge-agent/internal/ownfiles"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
)

// ownOptions lists what the agent keeps on the host with cfg: its
// directories (state, status socket's, lock's) and every file it writes in
// them. The paths passed config.Validate or config.ValidatePaths.
func ownOptions(cfg *config.Config) ownfiles.Options {
	var dirs []string
	for _, d := range []string{filepath.Dir(cfg.StatusSocket), filepath.Dir(config.LockPath)} {
		if d != cfg.StateDir && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	files := []string{cfg.StatusSocket, config.LockPath, proxy.CreatedTablesFile(cfg.StateDir)}
	for _, name := range append([]string{daemon.SnapshotFile}, hostdns.StateFiles()...) {
		files = append(files, cfg.StateDir+"/"+name)
	}
	return ownfiles.Options{
		HostRoot:    cfg.HostRoot,
		StateDir:    cfg.StateDir,
		Dirs:        dirs,
		Files:       files,
		SystemdDirs: ownfiles.SystemdDirs(),
	}
}
