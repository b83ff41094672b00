package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
)

// Connection counters (nftables). Every Service port has one named counter
// object per cluster IP of the family, and the map service-counters sends
// each VIP . proto . port to its counter:
//
//	services        jump count-services, then the service-ips vmap
//	count-services  counter name VIP . proto . port map @service-counters
//
// The NAT chains see only the first packet of a connection, so a counter
// counts the connections opened to its Service port (refused ones too).
// Its bytes are those first packets' only, and not reported.
//
// The counters are objects of their own, not elements: a full write adds
// them again (which keeps their values) and refills the map, and an
// incremental write adds and deletes only the counters of the Service ports
// added or removed. A counter is therefore reset only when its Service port
// or cluster IP goes away and comes back, and when the table is created
// again (the agent's start, or a write after a failed one).

const (
	nftCountServices   = "count-services"
	nftServiceCounters = "service-counters"
)

// counterName returns the name of the counter of the Service port named
// name (servicePortName) for proto and cluster IP ip: "svc-" and 16 base32
// characters of a hash, as nft names allow neither ':' nor quotes.
func counterName(name, proto string, ip netip.Addr) string {
	sum := sha256.Sum256([]byte(name + "\x00" + proto + "\x00" + ip.String()))
	return "svc-" + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:10]))
}

// withCounters adds the counting chain, its jump from services and the
// counter map to the fixed chains and sets.
func (m *nftModel) withCounters(chains []NFTChain, sets []NFTSet) ([]NFTChain, []NFTSet) {
	for i := range chains {
		if chains[i].Name == nftServices {
			chains[i].Rules = append([]string{"jump " + nftCountServices}, chains[i].Rules...)
		}
	}
	chains = append(chains, NFTChain{Name: nftCountServices, Rules: []string{"counter name " + m.key + " map @" + nftServiceCounters}})
	sets = append(sets, NFTSet{Name: nftServiceCounters, Map: true, Decl: "type " + m.addrType + " . inet_proto . inet_service : counter;"})
	return chains, sets
}

// counterElement is the service-counters element of a Service port (name
// as servicePortName) and cluster IP.
func counterElement(ip netip.Addr, proto string, port int32, name string) NFTElement {
	return NFTElement{Key: svcKey(ip, proto, port), Value: counterName(name, proto, ip), Comment: name}
}

// counterNames returns the counters the model's Service ports use, sorted.
func (m *nftModel) counterNames() []string {
	var out []string
	for _, g := range m.groups {
		for _, e := range g.elements[nftServiceCounters] {
			out = append(out, e.Value)
		}
	}
	slices.Sort(out)
	return out
}

// addCounters adds the counters of the service-counters elements els, before
// the elements that refer to them. Adding a counter that exists keeps its
// value.
func (s *nftScript) addCounters(els []NFTElement) {
	for _, e := range els {
		s.cmd("add", "counter", e.Value, "")
	}
}

// deleteCounters deletes the counters of the service-counters elements del
// that no element of add still uses, after their elements are gone.
func (s *nftScript) deleteCounters(del, add []NFTElement) {
	kept := make(map[string]bool, len(add))
	for _, e := range add {
		kept[e.Value] = true
	}
	for _, e := range del {
		if !kept[e.Value] {
			s.cmd("delete", "counter", e.Value, "")
		}
	}
}

// staleCounters returns the counters of prev that next does not use.
func staleCounters(prev, next []string) []string {
	want := make(map[string]bool, len(next))
	for _, c := range next {
		want[c] = true
	}
	var out []string
	for _, c := range prev {
		if !want[c] {
			out = append(out, c)
		}
	}
	return out
}

// ServicePortCounter is the connection count of one Service port, summed
// over its cluster IPs and families, since its counters were created.
type ServicePortCounter struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// Port is the Service port's name, empty for an unnamed one.
	Port     string `json:"port"`
	Protocol string `json:"protocol"`
	// Connections counts the connections opened to the Service port from
	// this host (refused ones too).
	Connections uint64 `json:"connections"`
}

// nftCounterLister lists the counters of the agent's table of a family.
type nftCounterLister interface {
	listCounters(ctx context.Context, fam Family) ([]byte, error)
}

// listCounters runs "nft -j list counters table FAMILY bridge-agent". It
// does not go through run, whose peak RSS and times are those of the last
// transaction.
func (x *execNFT) listCounters(ctx context.Context, fam Family) ([]byte, error) {
	word, _ := nftFamily(fam)
	argv := append(slices.Clone(x.argv), "-j", "list", "counters", "table", word, NFTablesTable)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, &NFTError{Err: err, Stderr: strings.TrimSpace(string(ee.Stderr))}
		}
		return nil, err
	}
	return out, nil
}

// ServiceCounters returns the connections counted for every Service port of
// the tables' last writes, read from the kernel's counters.
func (p *NFTables) ServiceCounters(ctx context.Context) ([]ServicePortCounter, error) {
	lister, ok := p.nft.(nftCounterLister)
	if !ok {
		return nil, errors.New("read nftables counters: the nft runner cannot list")
	}
	p.mu.Lock()
	els := map[Family][]NFTElement{}
	for fam, m := range p.counted {
		for _, g := range m.groups {
			els[fam] = append(els[fam], g.elements[nftServiceCounters]...)
		}
	}
	p.mu.Unlock()
	sums := map[ServicePortCounter]uint64{}
	for fam, e := range els {
		doc, err := lister.listCounters(ctx, fam)
		if err != nil {
			return nil, fmt.Errorf("read nftables counters of %s: %w", fam, err)
		}
		packets, err := parseNFTCounters(doc)
		if err != nil {
			return nil, fmt.Errorf("read nftables counters of %s: %w", fam, err)
		}
		addCounts(sums, e, packets)
	}
	return sortedCounters(sums), nil
}

// parseNFTCounters reads "nft -j list counters table FAMILY bridge-agent":
// packets by counter name.
func parseNFTCounters(doc []byte) (map[string]uint64, error) {
	var d struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("parse nft counters: %w", err)
	}
	out := map[string]uint64{}
	for _, item := range d.Nftables {
		raw, ok := item["counter"]
		if !ok {
			continue
		}
		var c struct {
			Name    string `json:"name"`
			Table   string `json:"table"`
			Packets uint64 `json:"packets"`
		}
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("parse nft counters: %w", err)
		}
		if c.Table == NFTablesTable {
			out[c.Name] = c.Packets
		}
	}
	return out, nil
}

// splitServicePortName undoes servicePortName: namespace, name and port
// name ("" for an unnamed port).
func splitServicePortName(s string) (ns, name, port string) {
	ns, rest, _ := strings.Cut(s, "/")
	name, port, _ = strings.Cut(rest, ":")
	return ns, name, port
}

// addCounts adds packets of the counters named by els (service-counters
// elements) to sums, keyed by Service port and protocol.
func addCounts(sums map[ServicePortCounter]uint64, els []NFTElement, packets map[string]uint64) {
	for _, e := range els {
		n, ok := packets[e.Value]
		if !ok {
			continue
		}
		proto := strings.SplitN(e.Key, " . ", 3)[1]
		ns, svc, port := splitServicePortName(e.Comment)
		sums[ServicePortCounter{Namespace: ns, Service: svc, Port: port, Protocol: strings.ToUpper(proto)}] += n
	}
}

// sortedCounters returns sums as a list sorted by namespace, Service, port
// and protocol.
func sortedCounters(sums map[ServicePortCounter]uint64) []ServicePortCounter {
	out := make([]ServicePortCounter, 0, len(sums))
	for k, n := range sums {
		k.Connections = n
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b ServicePortCounter) int {
		return strings.Compare(a.Namespace+"/"+a.Service+":"+a.Port+"/"+a.Protocol, b.Namespace+"/"+b.Service+":"+b.Port+"/"+b.Protocol)
	})
	return out
}
