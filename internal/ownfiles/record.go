package ownfiles

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
	"github.com/bridge-agent/bridge-agent/internal/config"
)

// RecordName is the record's file name in the state directory.
const RecordName = "owned.json"

const recordVersion = 1

// Record is what the agent made on its host: host paths (without the host
// root).
type Record struct {
	Version int `json:"version"`
	// Dirs are the directories made for the agent: by itself, or by
	// systemd for its unit. Cleanup removes them when they are empty.
	Dirs []string `json:"dirs,omitempty"`
	// Files are the files the agent writes. Cleanup removes them.
	Files []string `json:"files,omitempty"`
}

// Options name what the agent keeps on one host root.
type Options struct {
	// HostRoot prefixes every path.
	HostRoot string
	// StateDir holds the record (a host path CheckOwnPath accepts).
	StateDir string
	// Dirs are the agent's directories besides StateDir (the status
	// socket's), host paths.
	Dirs []string
	// Files are every file the agent writes, host paths inside StateDir or
	// Dirs (the lock, the status socket, the state files).
	Files []string
	// Created are directories made for the agent before Prepare (the
	// lock's, see Lock.Created).
	Created []string
	// SystemdDirs are directories systemd made for the agent's unit, as
	// in $STATE_DIRECTORY and $RUNTIME_DIRECTORY; only those equal to one
	// of the agent's directories count, and only with the host root "/".
	SystemdDirs []string
}

// SystemdDirs returns the directories systemd made for the running unit
// (StateDirectory=, RuntimeDirectory=): $STATE_DIRECTORY and
// $RUNTIME_DIRECTORY, colon-separated lists.
func SystemdDirs() []string {
	var out []string
	for _, v := range []string{"STATE_DIRECTORY", "RUNTIME_DIRECTORY"} {
		for _, p := range strings.Split(os.Getenv(v), ":") {
			if p != "" {
				out = append(out, filepath.Clean(p))
			}
		}
	}
	return out
}

// Prepare checks and creates the agent's directories (see Dir) and writes
// the record before the agent writes anything else: the directories it
// created and the files it will write, merged with the record of earlier
// runs.
func Prepare(o Options) error {
	stateDir, created, err := Dir(o.HostRoot, o.StateDir, true)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	rec, _, err := loadRecord(stateDir)
	if err != nil {
		return err
	}
	add := func(list *[]string, ps ...string) {
		for _, p := range ps {
			if !slices.Contains(*list, p) {
				*list = append(*list, p)
			}
		}
	}
	add(&rec.Dirs, o.Created...)
	add(&rec.Dirs, created...)
	for _, d := range o.Dirs {
		_, c, err := Dir(o.HostRoot, d, true)
		if err != nil {
			return err
		}
		add(&rec.Dirs, c...)
	}
	if filepath.Clean(o.HostRoot) == "/" {
		for _, d := range o.SystemdDirs {
			if d == o.StateDir || slices.Contains(o.Dirs, d) {
				add(&rec.Dirs, d)
			}
		}
	}
	for _, f := range o.Files {
		if _, err := config.CheckOwnPath(f, false); err != nil {
			return fmt.Errorf("record %s: %w", f, err)
		}
	}
	add(&rec.Files, o.Files...)
	sortDirs(rec.Dirs)
	return saveRecord(stateDir, rec)
}

// saveRecord writes rec atomically in the state directory at host path
// dir.
func saveRecord(dir string, rec *Record) error {
	rec.Version = recordVersion
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, RecordName), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	return nil
}

// loadRecord reads the record in the state directory at host path dir; an
// empty one, and found false, when there is none.
func loadRecord(dir string) (rec *Record, found bool, err error) {
	data, err := os.ReadFile(filepath.Join(dir, RecordName))
	if errors.Is(err, fs.ErrNotExist) {
		return &Record{Version: recordVersion}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read record: %w", err)
	}
	rec = &Record{}
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, false, fmt.Errorf("read record %s: %w", RecordName, err)
	}
	if rec.Version != recordVersion {
		return nil, false, fmt.Errorf("read record %s: version %d, want %d", RecordName, rec.Version, recordVersion)
	}
	return rec, true, nil
}

// sortDirs puts outer directories before the ones inside them.
func sortDirs(ds []string) {
	slices.SortStableFunc(ds, func(a, b string) int { return strings.Count(a, "/") - strings.Count(b, "/") })
}
