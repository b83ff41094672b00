// Package proxy implements ClusterIP Services on this host with kube-proxy's
// semantics.
//
// # Contract
//
// The package has a pure core and a thin edge. The core turns a
// cluster.Snapshot into the desired rules as data: SelectEndpoints decides
// which endpoints of a Service port get traffic (shared by every backend), and
// RenderIPTables renders the whole desired state of one IP family as two
// iptables-restore payloads, nat and filter. The core reads no kernel state
// and runs no command; all it knows of the host is what the caller passes in
// RenderInput, including the chain names the backend found with
// iptables-save. It is tested with golden files and a packet tracer.
//
// The backend is the edge: it keeps the jumps listed by IPTablesJumps in the
// built-in chains, feeds each payload to "iptables-restore --noflush" (or
// ip6tables-restore) as one atomic write per table and family, and reports
// failures to its caller. It never decides what the cluster wants.
//
// # Chain layout
//
// Every chain carries the prefix BRIDGE- (ChainPrefix), in both families:
//
//	nat OUTPUT, PREROUTING ─► BRIDGE-SERVICES
//	    one rule per cluster IP and port: -d IP -p PROTO --dport PORT ─► BRIDGE-SVC-<hash>
//	BRIDGE-SVC-<hash>      one per Service port and protocol
//	    [-j BRIDGE-MARK-MASQ when masquerading]
//	    [-m recent --rcheck per endpoint, for sessionAffinity: ClientIP]
//	    -m statistic --probability 1/(n-i) ─► BRIDGE-SEP-<hash>, last rule unconditional
//	BRIDGE-SEP-<hash>      one per endpoint of a Service port
//	    -s ENDPOINT ─► BRIDGE-MARK-MASQ (hairpin)
//	    [-m recent --set] -j DNAT --to-destination ENDPOINT
//	BRIDGE-MARK-MASQ       sets the masquerade mark (default 0x4000)
//	nat POSTROUTING ─► BRIDGE-POSTROUTING
//	    masquerades marked packets (--random-fully) and clears the mark
//	filter OUTPUT, FORWARD (new connections) ─► BRIDGE-SERVICES
//	    -d IP -p PROTO --dport PORT -j REJECT for Service ports without usable endpoints
//
// The hash is the first 16 base32 characters of the SHA-256 of
// "namespace/name:port", the lower-case protocol and, for BRIDGE-SEP, the
// endpoint's ip:port: names are stable across restarts and syncs, so a
// restore rewrites chains in place. Chains and rules are written in a fixed
// order (Services by namespace and name, ports in Service order, endpoints by
// address and port), so equal snapshots give equal bytes.
//
// The fixed chains (BRIDGE-SERVICES in both tables, BRIDGE-POSTROUTING and
// BRIDGE-MARK-MASQ) are declared by every payload, even when empty, so they
// always exist after a sync: the backend can install its jumps once and use
// their presence as a canary for someone flushing the tables. Per-Service
// chains (BRIDGE-SVC-, BRIDGE-SEP-) that the backend found but the snapshot no
// longer needs are flushed and deleted by the payload (-X). Nothing else is
// touched, so the payloads coexist with docker, firewalld or kube-proxy rules;
// other chains with our prefix are removed only by cleanup.
//
// Rejected traffic uses plain REJECT, that is icmp-port-unreachable
// (icmp6-port-unreachable for IPv6) for every protocol, as kube-proxy does;
// a TCP client sees "connection refused" either way.
//
// # Endpoint selection
//
// Ready endpoints get traffic. When none is ready, serving and terminating
// endpoints get it instead, so that connections keep working during a rolling
// update; endpoints that are not serving never do. A Service port left with
// no endpoint is rejected in the filter table rather than left to time out.
//
// This host is not a node and has no zone unless one is configured (Zone).
// Topology hints narrow the endpoints only for a configured zone, and only
// when every ready endpoint carries zone hints and at least one is hinted for
// that zone; otherwise all endpoints are used, as kube-proxy does for a node
// whose zone gets no hint.
//
// # internalTrafficPolicy: Local
//
// kube-proxy sends traffic of a Service with internalTrafficPolicy: Local
// only to endpoints on the client's own node, and drops it when there are
// none. This host runs no Pods, so it never has local endpoints: followed
// literally, the policy would make such Services unreachable from here. The
// agent instead treats Local as Cluster and proxies to all endpoints.
// SelectEndpoints flags each such Service (Selection.LocalPolicyIgnored) and
// RenderStats lists them, so that the caller can log a warning.
//
// # Not handled
//
// Only cluster IPs are captured: NodePorts, external IPs and load-balancer
// IPs of a Service are the cluster's business, not this host's. Headless and
// ExternalName Services, and Services labelled for another proxy, get no
// rule.
package proxy
