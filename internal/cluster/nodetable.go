package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
)

// The shared node route table is what routes.mode nodes needs of every
// Node (name, pod CIDRs, InternalIPs, zone), in one ConfigMap that one
// elected agent writes and every other agent watches. A kubelet rewrites
// its Node's status every few seconds to minutes; the table changes only
// when a route does, so a thousand agents receive a few hundred bytes per
// route change instead of every heartbeat of every Node in full.
//
// The table is untrusted input like the Nodes it comes from: decoding
// drops what does not parse, exactly as the conversion of a Node does, and
// the routes consumer puts every entry through the same checks as a Node's
// (see internal/routes).

// NodeTableKey is the ConfigMap key holding the table.
const NodeTableKey = "nodes.json"

// nodeTableFormat is the table's format version; a reader refuses others.
const nodeTableFormat = 1

// maxTableNodes bounds the entries a reader accepts (a ConfigMap holds at
// most 1 MiB; this is well above what fits).
const maxTableNodes = 20000

// nodeTable is the ConfigMap's content.
type nodeTable struct {
	// Format is nodeTableFormat.
	Format int `json:"format"`
	// Publisher is the identity (in the Lease) of the agent that wrote it.
	Publisher string `json:"publisher"`
	// Generation counts the table's changes.
	Generation uint64      `json:"generation"`
	Nodes      []tableNode `json:"nodes"`
}

// tableNode is one Node of the table.
type tableNode struct {
	Name        string   `json:"name"`
	PodCIDRs    []string `json:"podCIDRs,omitempty"`
	InternalIPs []string `json:"internalIPs,omitempty"`
	Zone        string   `json:"zone,omitempty"`
}

// encodeNodeTable renders nodes (sorted by name) as the table's content.
func encodeNodeTable(publisher string, generation uint64, nodes []*Node) (string, error) {
	t := nodeTable{Format: nodeTableFormat, Publisher: publisher, Generation: generation, Nodes: make([]tableNode, 0, len(nodes))}
	for _, n := range nodes {
		e := tableNode{Name: n.Name, Zone: n.Zone}
		for _, c := range n.PodCIDRs {
			e.PodCIDRs = append(e.PodCIDRs, c.String())
		}
		for _, a := range n.InternalIPs {
			e.InternalIPs = append(e.InternalIPs, a.String())
		}
		t.Nodes = append(t.Nodes, e)
	}
	b, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode node route table: %w", err)
	}
	return string(b), nil
}

// decodeNodeTable parses the table's content. Entries are converted as a
// Node is (an address or CIDR that does not parse is dropped); an entry
// without a name or with a name seen before is dropped whole.
func decodeNodeTable(data string) (*nodeTable, []*Node, error) {
	var t nodeTable
	dec := json.NewDecoder(strings.NewReader(data))
	if err := dec.Decode(&t); err != nil {
		return nil, nil, fmt.Errorf("decode node route table: %w", err)
	}
	if t.Format != nodeTableFormat {
		return nil, nil, fmt.Errorf("decode node route table: format %d, want %d", t.Format, nodeTableFormat)
	}
	if t.Publisher == "" {
		return nil, nil, fmt.Errorf("decode node route table: no publisher")
	}
	if len(t.Nodes) > maxTableNodes {
		return nil, nil, fmt.Errorf("decode node route table: %d nodes, at most %d", len(t.Nodes), maxTableNodes)
	}
	seen := map[string]bool{}
	var out []*Node
	for _, e := range t.Nodes {
		if e.Name == "" || seen[e.Name] {
			continue
		}
		seen[e.Name] = true
		out = append(out, nodeFromStrings(e.Name, e.Zone, e.InternalIPs, e.PodCIDRs))
	}
	sortNodes(out)
	return &t, out, nil
}

// nodeFromStrings converts a Node's name, zone, InternalIPs and pod CIDRs
// as found in a Node or the table; what does not parse is dropped.
func nodeFromStrings(name, zone string, ips, cidrs []string) *Node {
	out := &Node{Name: name, Zone: zone}
	for _, a := range ips {
		if ip, err := netip.ParseAddr(a); err == nil {
			out.InternalIPs = append(out.InternalIPs, ip.Unmap())
		}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out.PodCIDRs = append(out.PodCIDRs, p.Masked())
		}
	}
	return out
}

// sameNodes reports whether two sorted node lists are equal.
func sameNodes(a, b []*Node) bool {
	return slices.EqualFunc(a, b, func(x, y *Node) bool { return reflect.DeepEqual(x, y) })
}
