package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// OwnPrefixes are the host directories under which the agent keeps its own
// files, each in a directory of its own named OwnDirName or
// OwnDirName-<suffix> (e.g. /var/lib/bridge-agent, /run/bridge-agent): a
// directory no other program uses, so that removing what is in it can
// never touch someone else's files. The prefixes themselves, /, /etc and
// every other place are refused.
var OwnPrefixes = []string{"/var/lib", "/run"}

// OwnDirName is the name of the agent's own directories under OwnPrefixes.
const OwnDirName = "bridge-agent"

// LockPath is the host path (inside HostRoot) of the lock that lets one
// agent run per host root at a time.
const LockPath = "/run/bridge-agent/lock"

// CheckOwnPath checks a host path the agent writes or removes (before
// HostRoot is prefixed): absolute, in canonical form (no "..", ".", "//" or
// trailing "/"), and inside one of the agent's own directories, e.g.
// /var/lib/bridge-agent or /run/bridge-agent/status.sock. With dirOK the
// path may be that directory itself (a state directory); otherwise it must
// lie inside it (a file). It returns the own directory.
func CheckOwnPath(p string, dirOK bool) (ownDir string, err error) {
	if !filepath.IsAbs(p) {
		return "", errors.New("must be an absolute path (it is taken inside hostRoot)")
	}
	if filepath.Clean(p) != p {
		return "", fmt.Errorf("must be a canonical path without \"..\", \".\" or doubled or trailing slashes (this one names %s)", filepath.Clean(p))
	}
	for _, prefix := range OwnPrefixes {
		rest, ok := strings.CutPrefix(p, prefix+"/")
		if !ok {
			continue
		}
		first, inside, _ := strings.Cut(rest, "/")
		if first != OwnDirName && !strings.HasPrefix(first, OwnDirName+"-") {
			break
		}
		ownDir = prefix + "/" + first
		if inside == "" && !dirOK {
			return "", fmt.Errorf("must be a file inside a directory of the agent's own, e.g. %s/status.sock", ownDir)
		}
		return ownDir, nil
	}
	return "", fmt.Errorf("must be inside a directory of the agent's own: %s", ownDirsHelp())
}

func ownDirsHelp() string {
	var parts []string
	for _, p := range OwnPrefixes {
		parts = append(parts, p+"/"+OwnDirName+"[-NAME]")
	}
	return strings.Join(parts, " or ") + " (never " + strings.Join(OwnPrefixes, ", ") + ", / or /etc themselves)"
}

// validatePaths checks hostRoot, stateDir and statusSocket.
func (c *Config) validatePaths(bad func(field string, value any, reason string)) {
	if !filepath.IsAbs(c.HostRoot) || filepath.Clean(c.HostRoot) != c.HostRoot {
		bad("hostRoot", quote(c.HostRoot), "must be an absolute canonical path (no \"..\", \".\" or trailing slash)")
	}
	if _, err := CheckOwnPath(c.StateDir, true); err != nil {
		bad("stateDir", quote(c.StateDir), err.Error())
	}
	if _, err := CheckOwnPath(c.StatusSocket, false); err != nil {
		bad("statusSocket", quote(c.StatusSocket), err.Error())
	}
}

// ValidatePaths checks only the fields that name host paths (hostRoot,
// stateDir, statusSocket), for commands such as cleanup that must work
// with a configuration whose other fields a newer version would refuse.
func (c *Config) ValidatePaths() error {
	var errs ValidationError
	c.validatePaths(func(field string, value any, reason string) {
		errs = append(errs, &FieldError{Field: field, Value: value, Reason: reason})
	})
	if len(errs) > 0 {
		return errs
	}
	return nil
}
