package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
)

// snapshotFormat is the version of the saved snapshot's layout; files of
// format 1 (the same fields, written whole) are read too. A file of another
// format is refused, never half-read.
const snapshotFormat = 2

// savedSnapshot is the file SaveSnapshot writes: the data and, beside it,
// the SHA-256 of exactly those bytes. Format 2 writes the checksum after
// the data, so that the data can be streamed to the file.
type savedSnapshot struct {
	Format  int             `json:"format"`
	SavedAt time.Time       `json:"savedAt"`
	Data    json.RawMessage `json:"data"`
	SHA256  string          `json:"sha256"`
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
// readable by root only; it holds no secret, but names every Service. The
// data is encoded one Service at a time into the file: at 10k Services the
// file is some 15 MB, which is never held in memory.
func SaveSnapshot(path string, snap *Snapshot, now time.Time) error {
	err := atomicfile.Write(path, 0o600, func(w io.Writer) error {
		head, err := json.Marshal(savedSnapshot{Format: snapshotFormat, SavedAt: now.UTC()})
		if err != nil {
			return err
		}
		// Everything up to "data": of the envelope, then the data, then
		// the checksum.
		i := bytes.Index(head, []byte(`"data":`))
		if i < 0 {
			return errors.New("envelope without data")
		}
		if _, err := w.Write(head[:i+len(`"data":`)]); err != nil {
			return err
		}
		h := sha256.New()
		if err := writeSnapshotData(io.MultiWriter(w, h), snap); err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, `,"sha256":%q}`+"\n", hex.EncodeToString(h.Sum(nil)))
		return err
	})
	if err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	return nil
}

// writeSnapshotData writes snapshotData for snap as JSON, one element of
// the lists at a time.
func writeSnapshotData(w io.Writer, snap *Snapshot) error {
	var cidrs []string
	for _, p := range snap.ServiceCIDRs {
		cidrs = append(cidrs, p.String())
	}
	head, err := json.Marshal(struct {
		Version uint64    `json:"version"`
		Time    time.Time `json:"time"`
	}{snap.Version, snap.Time})
	if err != nil {
		return err
	}
	if _, err := w.Write(head[:len(head)-1]); err != nil { // without the closing brace
		return err
	}
	list := func(name string, n int, item func(i int) any) error {
		if _, err := io.WriteString(w, `,"`+name+`":[`); err != nil {
			return err
		}
		for i := range n {
			b, err := json.Marshal(item(i))
			if err != nil {
				return err
			}
			if i > 0 {
				b = append([]byte{','}, b...)
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		_, err := io.WriteString(w, "]")
		return err
	}
	svcs, nodes := snap.SortedServices(), snap.SortedNodes()
	if err := list("services", len(svcs), func(i int) any { return svcs[i] }); err != nil {
		return err
	}
	if err := list("nodes", len(nodes), func(i int) any { return nodes[i] }); err != nil {
		return err
	}
	if len(cidrs) > 0 {
		if err := list("serviceCIDRs", len(cidrs), func(i int) any { return cidrs[i] }); err != nil {
			return err
		}
	}
	_, err = io.WriteString(w, "}")
	return err
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
	if f.Format != snapshotFormat && f.Format != 1 {
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
		if err := checkSavedService(s); err != nil {
			return nil, fmt.Errorf("load snapshot %s: service %s: %w", path, s.ServiceKey, err)
		}
		snap.Services[s.ServiceKey] = s
		snap.Changed = append(snap.Changed, s.ServiceKey)
	}
	for _, n := range d.Nodes {
		if n == nil {
			return nil, fmt.Errorf("load snapshot %s: null node", path)
		}
		if err := checkSavedNode(n); err != nil {
			return nil, fmt.Errorf("load snapshot %s: node %q: %w", path, n.Name, err)
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

// checkSavedService refuses what the API server would never have given:
// the names, protocols, ports and addresses of a saved Service end up in
// rule comments, rule text and DNS names, so a damaged or edited file must
// not smuggle a quote, a newline or a malformed address into them.
func checkSavedService(s *Service) error {
	if msgs := validation.IsDNS1123Label(s.Namespace); len(msgs) > 0 {
		return fmt.Errorf("namespace %q: %s", s.Namespace, msgs[0])
	}
	if msgs := validation.IsDNS1123Label(s.Name); len(msgs) > 0 {
		return fmt.Errorf("name %q: %s", s.Name, msgs[0])
	}
	if s.ExternalName != "" {
		if msgs := validation.IsDNS1123Subdomain(strings.TrimSuffix(s.ExternalName, ".")); len(msgs) > 0 {
			return fmt.Errorf("externalName %q: %s", s.ExternalName, msgs[0])
		}
	}
	for _, a := range s.ClusterIPs {
		if err := checkSavedAddr(a); err != nil {
			return fmt.Errorf("cluster IP: %w", err)
		}
	}
	for _, p := range s.Ports {
		if p.Name != "" {
			if msgs := validation.IsDNS1123Label(p.Name); len(msgs) > 0 {
				return fmt.Errorf("port name %q: %s", p.Name, msgs[0])
			}
		}
		if !slices.Contains([]string{"TCP", "UDP", "SCTP"}, p.Protocol) {
			return fmt.Errorf("port %d: protocol %q, want TCP, UDP or SCTP", p.Port, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("port %d out of range", p.Port)
		}
		if err := checkSavedEndpoints(p.Endpoints); err != nil {
			return fmt.Errorf("port %d: %w", p.Port, err)
		}
	}
	return checkSavedEndpoints(s.Endpoints)
}

func checkSavedEndpoints(eps []Endpoint) error {
	for _, e := range eps {
		if err := checkSavedAddr(e.Addr); err != nil {
			return fmt.Errorf("endpoint: %w", err)
		}
		if e.Port < 0 || e.Port > 65535 {
			return fmt.Errorf("endpoint %s: port %d out of range", e.Addr, e.Port)
		}
		if e.Hostname != "" {
			if msgs := validation.IsDNS1123Label(e.Hostname); len(msgs) > 0 {
				return fmt.Errorf("endpoint %s: hostname %q: %s", e.Addr, e.Hostname, msgs[0])
			}
		}
	}
	return nil
}

// checkSavedAddr refuses addresses no Service or endpoint has: invalid,
// unspecified, with an IPv6 zone, or IPv4-mapped IPv6.
func checkSavedAddr(a netip.Addr) error {
	if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6() {
		return fmt.Errorf("address %q is not a usable unicast address", a)
	}
	return nil
}

func checkSavedNode(n *Node) error {
	if msgs := validation.IsDNS1123Subdomain(n.Name); len(msgs) > 0 {
		return fmt.Errorf("name: %s", msgs[0])
	}
	for _, a := range n.InternalIPs {
		if err := checkSavedAddr(a); err != nil {
			return fmt.Errorf("internal IP: %w", err)
		}
	}
	for _, p := range n.PodCIDRs {
		if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return fmt.Errorf("pod CIDR %q is not a network prefix", p)
		}
	}
	return nil
}
