package hostdns

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// recordName and backupName are the files this package keeps in the state
// directory.
const (
	recordName = "hostdns.json"
	backupName = "resolv.conf.orig"
)

// record is what Apply changed on the host, kept in the state directory so
// that Cleanup (possibly another process, after a restart) can undo exactly
// that. It is written before each change it describes, so a crash leaves at
// worst a record of something not yet done, which undoing tolerates.
type record struct {
	Version int `json:"version"`
	// Stub is the stub address the host was last pointed at.
	Stub netip.AddrPort `json:"stub,omitzero"`
	// DropIn is set while a systemd-resolved drop-in of an older version
	// may exist.
	DropIn *dropInRecord `json:"dropIn,omitempty"`
	// Link is set while the link for systemd-resolved may exist.
	Link *linkRecord `json:"link,omitempty"`
	// ResolvConf is set while /etc/resolv.conf may be our file.
	ResolvConf *resolvConfRecord `json:"resolvConf,omitempty"`
}

type dropInRecord struct {
	// Path is the drop-in's host path.
	Path string `json:"path"`
	// CreatedDirs are host directories created for it, outermost first;
	// cleanup removes them when they are empty.
	CreatedDirs []string `json:"createdDirs,omitempty"`
	// ReloadPending was set by older versions between writing the drop-in
	// and reloading resolved; read and ignored.
	ReloadPending bool `json:"reloadPending,omitempty"`
}

type linkRecord struct {
	// Name is the link's name.
	Name string `json:"name"`
}

type resolvConfRecord struct {
	// Path is the managed file's host path.
	Path string `json:"path"`
	// Original is the file found there before bridge-agent replaced it.
	Original original `json:"original"`
}

// original describes the host's own /etc/resolv.conf. Its content (for a
// symlink: the content of the link's target at backup time) is in the state
// directory's resolv.conf.orig.
type original struct {
	// Missing: there was no file; cleanup removes ours.
	Missing bool `json:"missing,omitempty"`
	// Symlink is the link target as written, when the original was a
	// symlink; cleanup recreates the link.
	Symlink string `json:"symlink,omitempty"`
	// Perm, UID and GID are a regular file's permission bits and owner.
	Perm uint32 `json:"perm,omitempty"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
}

const recordVersion = 1

func (r *record) empty() bool {
	return r.DropIn == nil && r.ResolvConf == nil && r.Link == nil
}

// store reads and writes the record in one state directory.
type store struct {
	dir  string
	last []byte // the record's bytes as last read or written
}

func (s *store) path() string       { return filepath.Join(s.dir, recordName) }
func (s *store) backupPath() string { return filepath.Join(s.dir, backupName) }

// load returns the record, or an empty one when there is none.
func (s *store) load() (*record, error) {
	data, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return &record{Version: recordVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("read record %s: %w", s.path(), err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("read record %s: version %d, want %d", s.path(), r.Version, recordVersion)
	}
	s.last = data
	return &r, nil
}

// save writes the record atomically when it changed, and removes the file
// when the record says nothing is left to undo.
func (s *store) save(r *record) error {
	if r.empty() {
		if err := os.Remove(s.path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove record: %w", err)
		}
		s.last = nil
		return nil
	}
	r.Version = recordVersion
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	data = append(data, '\n')
	if bytes.Equal(data, s.last) {
		return nil
	}
	if err := mkdirAllMode(s.dir, 0o700); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := writeFileAtomic(s.path(), data, 0o600, -1, -1); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	s.last = data
	return nil
}
