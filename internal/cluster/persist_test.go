package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func savedTestSnapshot() *Snapshot {
	tr := NewTracker(TrackerOptions{})
	tr.UpdateService(svc("shop", "orders", func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.20", "fd00:96::20"}
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	}))
	tr.UpdateService(svc("shop", "db", func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
	}))
	tr.UpdateService(svc("shop", "ext", func(s *v1.Service) {
		s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ServiceTypeExternalName, "www.example.test", "", nil
	}))
	es := slice("shop", "orders-1", "orders", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080)},
		ep{addr: "10.244.1.5", node: "n1"}, ep{addr: "10.244.2.5", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true), node: "n2"})
	tr.UpdateSlice(es)
	db := slice("shop", "db-1", "db", discovery.AddressTypeIPv4, nil, ep{addr: "10.244.1.9"})
	db.Endpoints[0].Hostname = ptr.To("db-0")
	tr.UpdateSlice(db)
	tr.UpdateNode(node("n1", "10.250.0.21", "10.244.1.0/24"))
	return tr.Snapshot()
}

func TestSnapshotSaveLoad(t *testing.T) {
	snap := savedTestSnapshot()
	path := filepath.Join(t.TempDir(), "state", "snapshot.json")
	saved := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	if err := SaveSnapshot(path, snap, saved); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Restored.Equal(saved) {
		t.Errorf("Restored = %v, want %v", got.Restored, saved)
	}
	if got.Version != snap.Version || !got.Time.Equal(snap.Time) {
		t.Errorf("version/time = %d/%v, want %d/%v", got.Version, got.Time, snap.Version, snap.Time)
	}
	opts := cmp.Options{
		cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	}
	if diff := cmp.Diff(snap.SortedServices(), got.SortedServices(), opts,
		cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".TriggerTime" }, cmp.Ignore())); diff != "" {
		t.Errorf("services (-saved +loaded):\n%s", diff)
	}
	if diff := cmp.Diff(snap.SortedNodes(), got.SortedNodes(), opts); diff != "" {
		t.Errorf("nodes (-saved +loaded):\n%s", diff)
	}
	if len(got.Changed) != len(snap.Services) {
		t.Errorf("Changed lists %d services, want all %d", len(got.Changed), len(snap.Services))
	}
	// Saving again replaces the file and leaves no temporary behind.
	if err := SaveSnapshot(path, snap, saved.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries after two saves, want 1", len(entries))
	}
}

// TestSnapshotLoadFormat1: a file written whole by the first format (the
// checksum before the data) still loads, after an upgrade.
func TestSnapshotLoadFormat1(t *testing.T) {
	snap := savedTestSnapshot()
	d := snapshotData{Version: snap.Version, Time: snap.Time, Services: snap.SortedServices(), Nodes: snap.SortedNodes()}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	old := struct {
		Format  int             `json:"format"`
		SavedAt time.Time       `json:"savedAt"`
		SHA256  string          `json:"sha256"`
		Data    json.RawMessage `json:"data"`
	}{1, time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC), sha256Hex(data), data}
	b, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snapshot.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Services) != len(snap.Services) || len(got.Nodes) != len(snap.Nodes) || got.Version != snap.Version {
		t.Errorf("format 1: %d services, %d nodes, version %d; want %d, %d, %d",
			len(got.Services), len(got.Nodes), got.Version, len(snap.Services), len(snap.Nodes), snap.Version)
	}
}

func TestSnapshotLoadRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadSnapshot(filepath.Join(dir, "none.json")); !errors.Is(err, ErrNoSavedSnapshot) {
		t.Errorf("missing file: err %v, want ErrNoSavedSnapshot", err)
	}
	path := filepath.Join(dir, "snapshot.json")
	if err := SaveSnapshot(path, savedTestSnapshot(), time.Now()); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(path)
	var f savedSnapshot
	if err := json.Unmarshal(good, &f); err != nil {
		t.Fatal(err)
	}
	reencode := func(mut func(*savedSnapshot)) string {
		c := f
		mut(&c)
		b, _ := json.Marshal(c)
		return string(b)
	}
	for name, tc := range map[string]struct{ content, want string }{
		"flipped byte in data": {strings.Replace(string(good), "orders", "ordert", 1), "checksum mismatch"},
		"truncated":            {string(good[:len(good)/2]), "unexpected end"},
		"other format":         {reencode(func(s *savedSnapshot) { s.Format = 3 }), "format 3"},
		"empty":                {"", "unexpected end"},
		"null service": {reencode(func(s *savedSnapshot) {
			s.Data = json.RawMessage(`{"version":1,"time":"2026-11-25T00:00:00Z","services":[null],"nodes":[]}`)
			sum := sha256Hex(s.Data)
			s.SHA256 = sum
		}), "null service"},
		// What the API server never gives is refused, re-sealed or not.
		"quote in a service name":       {sealed(`{"namespace":"shop","name":"we\"b","type":"ClusterIP","proxied":true,"ports":[]}`, ""), `service shop/we"b: name`},
		"newline in a port name":        {sealed(`{"namespace":"shop","name":"web","type":"ClusterIP","proxied":true,"ports":[{"name":"a\nb","port":80,"protocol":"TCP","endpoints":[]}]}`, ""), "port name"},
		"unknown protocol":              {sealed(`{"namespace":"shop","name":"web","type":"ClusterIP","proxied":true,"ports":[{"port":80,"protocol":"ICMP","endpoints":[]}]}`, ""), `protocol "ICMP"`},
		"zoned endpoint address":        {sealed(`{"namespace":"shop","name":"web","type":"ClusterIP","proxied":true,"ports":[{"port":80,"protocol":"TCP","endpoints":[{"addr":"fe80::1%eth0","port":80,"ready":true,"serving":true,"terminating":false}]}]}`, ""), "not a usable unicast address"},
		"bad external name":             {sealed(`{"namespace":"shop","name":"ext","type":"ExternalName","externalName":"a b","proxied":true,"ports":[]}`, ""), "externalName"},
		"pod CIDR with host bits":       {sealed("", `{"name":"n1","podCIDRs":["10.244.1.5/24"]}`), "not a network prefix"},
		"endpoint hostname not a label": {sealed(`{"namespace":"shop","name":"db","type":"ClusterIP","headless":true,"proxied":true,"ports":[],"endpoints":[{"addr":"10.244.1.9","port":0,"ready":true,"serving":true,"terminating":false,"hostname":"db.0"}]}`, ""), "hostname"},
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadSnapshot(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// sealed is a saved snapshot file, checksum right, holding the one
// Service and Node given as JSON (either may be empty).
func sealed(service, node string) string {
	var svcs, nodes []json.RawMessage
	if service != "" {
		svcs = append(svcs, json.RawMessage(service))
	}
	if node != "" {
		nodes = append(nodes, json.RawMessage(node))
	}
	data, _ := json.Marshal(snapshotData{Time: time.Unix(0, 0).UTC()})
	var d map[string]any
	_ = json.Unmarshal(data, &d)
	d["services"], d["nodes"] = svcs, nodes
	data, _ = json.Marshal(d)
	b, _ := json.Marshal(savedSnapshot{Format: snapshotFormat, Data: data, SHA256: sha256Hex(data)})
	return string(b)
}

func node(name, ip, cidr string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip}}},
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
