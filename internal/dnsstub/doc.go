// Package dnsstub is the agent's DNS stub: a small DNS server on a local
// address that answers Kubernetes DNS names on the host from the agent's
// cluster snapshot and forwards everything else.
//
// # Contract
//
// The zone follows the Kubernetes DNS specification (kubernetes/dns
// docs/specification.md), with CoreDNS's kubernetes plugin as the reference
// where the specification is silent:
//
//   - <svc>.<ns>.svc.<domain> A/AAAA: a Service's ClusterIPs; for a headless
//     Service the addresses of its ready endpoints (all of them with
//     publishNotReadyAddresses), and NXDOMAIN when it has none.
//   - <ep>.<svc>.<ns>.svc.<domain> A/AAAA for the endpoints of a headless
//     Service, <ep> being the endpoint's hostname or, as CoreDNS does, its
//     address with dots (or colons) turned into dashes.
//   - _<port>._<proto>.<svc>.<ns>.svc.<domain> SRV for named ports (and the
//     Service name itself for all ports, as CoreDNS does); targets are the
//     Service name (ClusterIP) or the endpoint names (headless), and the
//     additional section carries the targets' addresses. Ports sharing a
//     number on two protocols (kube-dns's 53/UDP and 53/TCP) make one SRV
//     record at the Service name: no RRset holds a record twice (RFC 2181
//     section 5), in any section.
//   - ExternalName Services are a CNAME, followed (bounded, loop-safe) by the
//     target's records when we can answer or forward them.
//   - PTR for ClusterIPs and endpoint addresses; dns-version.<domain> TXT
//     "1.1.0"; SOA and NS at the apex.
//
// Names are matched case-insensitively and answers echo the asker's
// spelling. A name that exists with no data of the asked type is NODATA
// (NOERROR, empty answer, SOA in authority); an unknown name under
// svc.<domain> is NXDOMAIN with the SOA. Parents that exist (the domain,
// svc.<domain>, a namespace with at least one Service, _proto labels) are
// NODATA. Before the first Sync every name the stub would answer gets
// SERVFAIL, never NXDOMAIN.
//
// Short forms: <svc>.<ns>.svc. is answered as if the cluster domain
// followed, and <svc>.<ns>. for the namespaces in Options.NamespaceDomains;
// the answer's owner names are the names asked.
//
// Everything else under the cluster domain (pod records, kinds of names the
// stub does not serve) is forwarded to kube-dns (the kube-system/kube-dns
// Service's ready endpoints, else its ClusterIP); all other names go to the
// host's upstream resolvers, in order with failover. Forwarded answers are
// cached (bounded LRU, TTL-respecting, positive and negative) and served
// stale (RFC 8767) when every upstream fails. Answers from the zone are not
// cached: over UDP the stub keeps their packed form, per question as
// asked, only until the next zone swaps in (fastpath.go).
//
// The stub refuses queries from sources other than loopback and its own
// listen address, and answers malformed queries with FORMERR (or not at
// all) instead of failing. Forwarding is bounded (limiter.go): identical
// questions in flight are sent once (flight.go), the questions waiting on
// upstreams are capped in all and shared fairly among clients (a source
// address and the domain asked), and over a limit a question gets a stale
// answer or REFUSED at once; answers from the zone are never limited. A
// query of ours that loops back is answered SERVFAIL, and its name and
// type skip that upstream for a while (loop.go).
//
// Memory is bounded whatever the load: the UDP queries served outside the
// fast path at once (slowpath.go; over the bound REFUSED at once), the
// queries waiting for one upstream question (flight.go), the forward cache
// and the packed zone replies in bytes as well as entries, and each
// upstream exchange's reply buffer. Under a flood of distinct names and
// clients the process grows by less than 32 MiB over its idle size
// (TestMemoryBoundedUnderLoad).
package dnsstub
