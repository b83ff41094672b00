package proxy

import (
	"bytes"
	"net/netip"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// nftProbeTable is the table the start-up probe writes into; the probe
// runs with nft --check, so it is never committed.
const nftProbeTable = NFTablesTable + "-check"

// nftProbeScript returns the start-up probe: the agent's real layout,
// rendered by the same code as the table itself for a small cluster in
// both families (every protocol, a Service port with session affinity, one
// without endpoints), followed by an incremental transaction that removes
// endpoints, chains and maps, all written into nftProbeTable. Whatever the
// layout needs of nft and of the kernel, the probe needs too: a kernel or
// an nft that would reject a sync rejects the probe.
func nftProbeScript() []byte {
	var out bytes.Buffer
	for _, fam := range []Family{IPv4, IPv6} {
		in := NFTRenderInput{Family: fam, Masquerade: true}
		in.Snapshot = nftProbeSnapshot(fam, 3)
		first, _, err := RenderNFTables(in)
		if err != nil {
			panic(err) // the input is constant and valid
		}
		in.Snapshot = nftProbeSnapshot(fam, 1)
		second, _, err := RenderNFTables(in)
		if err != nil {
			panic(err)
		}
		full, _ := nftFullScript(first, nil, true)
		diff, _ := nftDiffScript(first, second)
		out.Write(renameNFTTable(full, nftProbeTable))
		out.Write(renameNFTTable(diff, nftProbeTable))
	}
	return out.Bytes()
}

// nftProbeSnapshot is the cluster of the probe: per protocol one Service
// port with n endpoints; for TCP also one with session affinity and n
// endpoints, and one without endpoints.
func nftProbeSnapshot(fam Family, n int) *cluster.Snapshot {
	addr := func(a, b byte) netip.Addr {
		if fam == IPv6 {
			return netip.AddrFrom16([16]byte{0: 0xfd, 15: b, 14: a})
		}
		return netip.AddrFrom4([4]byte{10, 0, a, b})
	}
	snap := &cluster.Snapshot{Services: map[cluster.ServiceKey]*cluster.Service{}}
	add := func(name string, vip byte, proto string, eps int, affinity time.Duration) {
		port := &cluster.Port{Name: "p", Port: 80, Protocol: proto}
		for i := range eps {
			port.Endpoints = append(port.Endpoints, cluster.Endpoint{Addr: addr(1, byte(i+1)), Port: 8080, Ready: true, Serving: true})
		}
		k := cluster.ServiceKey{Namespace: "probe", Name: name}
		snap.Services[k] = &cluster.Service{
			ServiceKey: k, Type: cluster.TypeClusterIP, ClusterIPs: []netip.Addr{addr(0, vip)},
			Proxied: true, SessionAffinityTimeout: affinity, Ports: []*cluster.Port{port},
		}
	}
	add("tcp", 1, "TCP", n, 0)
	add("udp", 2, "UDP", n, 0)
	add("sctp", 3, "SCTP", n, 0)
	add("affinity", 4, "TCP", n, 10*time.Second)
	add("empty", 5, "TCP", 0, 0)
	return snap
}

// renameNFTTable rewrites the table name of every command of script (the
// fourth word of each line) to table.
func renameNFTTable(script []byte, table string) []byte {
	var out bytes.Buffer
	for line := range bytes.Lines(script) {
		f := bytes.SplitN(line, []byte(" "), 5)
		if len(f) >= 4 && string(bytes.TrimSuffix(f[3], []byte("\n"))) == NFTablesTable {
			f[3] = append([]byte(table), f[3][len(NFTablesTable):]...)
			line = bytes.Join(f, []byte(" "))
		}
		out.Write(line)
	}
	return out.Bytes()
}
