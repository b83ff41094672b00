package ownfiles

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/config"
)

// CleanupOptions say what Cleanup removes.
type CleanupOptions struct {
	Options
	// Keep are files to leave, host paths, with the reason (another
	// cleanup failed and still needs them); the record and their
	// directories stay too.
	Keep map[string]string
}

// Left is something Cleanup did not remove, and why.
type Left struct {
	Path string
	Why  string
}

// Report is what Cleanup did: host paths (without the host root).
type Report struct {
	Removed []string
	Left    []Left
}

// Cleanup removes what the agent made: the files of the record and the
// files of o.Files (the ones the agent knows by name, for a state
// directory of a version that kept no record), the temporary files of
// those names, the record, then the recorded directories, each only when
// empty. A symbolic link or a directory where a file of ours should be is
// left; so is every file the agent did not make and every directory it did
// not create. The report lists both. Paths failing the use-time checks of
// Dir are errors, and nothing in them is touched.
func Cleanup(o CleanupOptions) (*Report, error) {
	rep := &Report{}
	var errs []error
	rec := &Record{}
	stateDir, _, err := Dir(o.HostRoot, o.StateDir, false)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		stateDir = ""
	case err != nil:
		return rep, fmt.Errorf("state directory: %w", err)
	default:
		if rec, _, err = loadRecord(stateDir); err != nil {
			return rep, err
		}
	}
	files := slices.Clone(rec.Files)
	for _, f := range o.Files {
		if !slices.Contains(files, f) {
			files = append(files, f)
		}
	}
	dirs := map[string]string{} // host path -> path on this machine
	for _, f := range files {
		if why, ok := o.Keep[f]; ok {
			rep.Left = append(rep.Left, Left{f, why})
			continue
		}
		if _, err := config.CheckOwnPath(f, false); err != nil {
			rep.Left = append(rep.Left, Left{f, "not in a directory of the agent's own: " + err.Error()})
			continue
		}
		d, ok := dirs[filepath.Dir(f)]
		if !ok {
			var err error
			d, _, err = Dir(o.HostRoot, filepath.Dir(f), false)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			dirs[filepath.Dir(f)] = d
		}
		removeOurs(rep, &errs, f, filepath.Join(d, filepath.Base(f)))
	}
	// Temporary files of an interrupted write, by the names of ours.
	for hostDir, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if isTemp(e.Name(), files, hostDir) {
				removeOurs(rep, &errs, hostDir+"/"+e.Name(), filepath.Join(d, e.Name()))
			}
		}
	}
	if stateDir != "" && len(o.Keep) == 0 && len(errs) == 0 {
		removeOurs(rep, &errs, o.StateDir+"/"+RecordName, filepath.Join(stateDir, RecordName))
	}
	// Recorded directories, inner ones first, only when empty.
	recDirs := slices.Clone(rec.Dirs)
	for _, c := range o.Created {
		if !slices.Contains(recDirs, c) {
			recDirs = append(recDirs, c)
		}
	}
	sortDirs(recDirs)
	slices.Reverse(recDirs)
	var leftDirs []string
	for _, hd := range recDirs {
		if _, err := config.CheckOwnPath(hd, true); err != nil {
			rep.Left = append(rep.Left, Left{hd, "not a directory of the agent's own: " + err.Error()})
			continue
		}
		d, _, err := Dir(o.HostRoot, hd, false)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if names := entryNames(d); len(names) > 0 {
			rep.Left = append(rep.Left, Left{hd, "holds what bridge-agent did not make or could not remove: " + strings.Join(names, ", ")})
			leftDirs = append(leftDirs, hd)
			continue
		}
		if err := os.Remove(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", hd, err))
			continue
		}
		rep.Removed = append(rep.Removed, hd)
	}
	// A later cleanup, once the rest is gone, still knows these are ours.
	if len(leftDirs) > 0 && stateDir != "" && slices.Contains(leftDirs, o.StateDir) && len(o.Keep) == 0 {
		slices.Reverse(leftDirs)
		if err := saveRecord(stateDir, &Record{Dirs: leftDirs}); err != nil {
			errs = append(errs, err)
		} else {
			rep.Removed = slices.DeleteFunc(rep.Removed, func(p string) bool { return p == o.StateDir+"/"+RecordName })
			rep.Left = append(rep.Left, Left{o.StateDir + "/" + RecordName, "records the directories left above, so that a later cleanup removes them once they are empty"})
		}
	}
	// The agent's directories that it did not create: say what is left.
	for _, hd := range append([]string{o.StateDir}, o.Dirs...) {
		if slices.Contains(recDirs, hd) || slices.ContainsFunc(rep.Left, func(l Left) bool { return l.Path == hd }) {
			continue
		}
		d, _, err := Dir(o.HostRoot, hd, false)
		if err != nil {
			continue
		}
		why := "bridge-agent did not create it (no record says so)"
		if names := entryNames(d); len(names) > 0 {
			why += "; it holds " + strings.Join(names, ", ")
		}
		rep.Left = append(rep.Left, Left{hd, why})
	}
	return rep, errors.Join(errs...)
}

// removeOurs removes the regular file or socket at p (host path hp),
// leaving anything else.
func removeOurs(rep *Report, errs *[]error, hp, p string) {
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return
	case err != nil:
		*errs = append(*errs, err)
		return
	case fi.Mode()&fs.ModeSymlink != 0:
		rep.Left = append(rep.Left, Left{hp, "a symbolic link, which bridge-agent never makes"})
		return
	case !fi.Mode().IsRegular() && fi.Mode()&fs.ModeSocket == 0:
		rep.Left = append(rep.Left, Left{hp, "not a file or socket, so not one bridge-agent made"})
		return
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		*errs = append(*errs, fmt.Errorf("remove %s: %w", hp, err))
		return
	}
	rep.Removed = append(rep.Removed, hp)
}

// isTemp reports whether name, in the directory hostDir, is a temporary
// file of one of the agent's atomic writes: ".NAME.*" for a file NAME of
// ours there, or ".bridge-agent-*.tmp".
func isTemp(name string, files []string, hostDir string) bool {
	if strings.HasPrefix(name, ".bridge-agent-") && strings.HasSuffix(name, ".tmp") {
		return true
	}
	for _, f := range append(slices.Clone(files), hostDir+"/"+RecordName) {
		if filepath.Dir(f) == hostDir && strings.HasPrefix(name, "."+filepath.Base(f)+".") {
			return true
		}
	}
	return false
}

func entryNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}
