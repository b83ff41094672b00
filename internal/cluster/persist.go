package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
)

// snapshotFormat is the version of the saved snapshot's layout. A file of
// another format is refused, never half-read.
const snapshotFormat = 1

// savedSnapshot is the file SaveSnapshot writes: the data and, beside it,
// the SHA-256 of exactly those bytes.
type savedSnapshot struct {
	Format  int             `json:"format"`
	SavedAt time.Time       `json:"savedAt"`
	SHA256  string          `json:"sha256"`
	Data    json.RawMessage `json:"data"`
}

type snapshotData struct {
	Version      uint64     `json:"version"`
	Time         time.Time  `json:"time"`
	Services     []*Service `json:"services"`
	Nodes        []*Node    `json:"nodes"`
	ServiceCIDRs []string   `json:"serviceCIDRs,omitempty"`
}

// SaveSnapshot writes snap to path as the last snapshot known good: a temporary
// file in the same directory, synced, then renamed over path, so a crash
// leaves either the old file or the new one, never a torn one. The file is
// readable by root only; it holds no secret, but names every Service.
func SaveSnapshot(path string, snap *Snapshot, now time.Time) error {
	d := snapshotData{
		Version:  snap.Version,
		Time:     snap.Time,
		Services: snap.SortedServices(),
		Nodes:    snap.SortedNodes(),
	}
	for _, p := range snap.ServiceCIDRs {
		d.ServiceCIDRs = append(d.ServiceCIDRs, p.String())
	}
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	sum := sha256.Sum256(data)
	out, err := json.Marshal(savedSnapshot{Format: snapshotFormat, SavedAt: now.UTC(), SHA256: hex.EncodeToString(sum[:]), Data: data})
	if err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if err := atomicfile.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	return nil
}

// ErrNoSavedSnapshot is returned by LoadSnapshot when there is no file.
var ErrNoSavedSnapshot = errors.New("no saved snapshot")

// LoadSnapshot reads a snapshot written by SaveSnapshot. A missing file is
// ErrNoSavedSnapshot; a file that fails its checksum, has another format or
// does not parse is an error that says so. The result has Restored set to
// the time it was saved and lists every Service as changed.
func LoadSnapshot(path string) (*Snapshot, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoSavedSnapshot
	}
	if err != nil {
		return nil, fmt.Errorf("load snapshot: %w", err)
	}
	var f savedSnapshot
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", path, err)
	}
	if f.Format != snapshotFormat {
		return nil, fmt.Errorf("load snapshot %s: format %d, want %d", path, f.Format, snapshotFormat)
	}
	sum := sha256.Sum256(f.Data)
	if hex.EncodeToString(sum[:]) != f.SHA256 {
		return nil, fmt.Errorf("load snapshot %s: checksum mismatch (file damaged)", path)
	}
	var d snapshotData
	dec := json.NewDecoder(bytes.NewReader(f.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("load snapshot %s: %w", path, err)
	}
	snap := &Snapshot{
		Version:  d.Version,
		Time:     d.Time,
		Services: make(map[ServiceKey]*Service, len(d.Services)),
		Nodes:    make(map[string]*Node, len(d.Nodes)),
		Restored: f.SavedAt,
	}
	for _, s := range d.Services {
		if s == nil {
			return nil, fmt.Errorf("load snapshot %s: null service", path)
		}
		for _, p := range s.Ports {
			if p == nil {
				return nil, fmt.Errorf("load snapshot %s: null port in %s", path, s.ServiceKey)
			}
		}
		snap.Services[s.ServiceKey] = s
		snap.Changed = append(snap.Changed, s.ServiceKey)
	}
	for _, n := range d.Nodes {
		if n == nil {
			return nil, fmt.Errorf("load snapshot %s: null node", path)
		}
		snap.Nodes[n.Name] = n
	}
	for _, c := range d.ServiceCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("load snapshot %s: %w", path, err)
		}
		snap.ServiceCIDRs = append(snap.ServiceCIDRs, p)
	}
	slices.SortFunc(snap.ServiceCIDRs, comparePrefixes)
	return snap, nil
}
