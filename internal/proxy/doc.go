// Package proxy implements ClusterIP Services on this host with kube-proxy's
// semantics.
//
// # Contract
//
// Two backends share the snapshot, SelectEndpoints and the metrics: iptables
// (below) and nftables (see "nftables layout"); only rendering and applying
// differ.
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
//	    -j BRIDGE-CNT-<hash>
//	    [-j BRIDGE-MARK-MASQ when masquerading]
//	    [-m recent --rcheck per endpoint, for sessionAffinity: ClientIP]
//	    -m statistic --probability 1/(n-i) ─► BRIDGE-SEP-<hash>, last rule unconditional
//	BRIDGE-SEP-<hash>      one per endpoint of a Service port
//	    -s ENDPOINT ─► BRIDGE-MARK-MASQ (hairpin)
//	    [-m recent --set] -j DNAT --to-destination ENDPOINT
//	BRIDGE-CNT-<hash>      one per Service port: counts its connections
//	    -m comment --comment "NAME PROTO" -j RETURN
//	    declared only when missing, so that rewrites keep the count
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
// Syncs are full or partial, as kube-proxy's. A full sync (the first, the
// first after a failed write, one every FullSyncPeriod (an hour), and one
// when the check every CheckPeriod finds a jump missing) checks the jumps,
// lists the chains of both tables with iptables-save, renders every chain
// and restores them all, which repairs chains or jumps someone else removed.
// In between, a sync is partial: it checks and lists nothing, since the
// chains of ours that exist are those the last write left, and finds the
// changed Services by comparing the *Service pointers of the new snapshot
// with those of the last one written (Services are immutable and an
// unchanged Service keeps its pointer, whatever snapshots were skipped). Its
// payloads declare and rewrite only BRIDGE-SERVICES in both tables (it lists
// every Service port) and the chains of the Services added or updated, and
// delete the chains that the Services updated or removed no longer need; the
// chains of unchanged Services are not mentioned, so the restore leaves them
// as they are. A partial restore that refers to a chain someone removed
// fails without changing anything, and the next sync is full.
//
// Rejected traffic uses plain REJECT, that is icmp-port-unreachable
// (icmp6-port-unreachable for IPv6) for every protocol, as kube-proxy does;
// a TCP client sees "connection refused" either way.
//
// # nftables layout
//
// With proxy.mode nftables, the same selection is rendered by RenderNFTables
// into one private table per family, "ip bridge-agent" and "ip6
// bridge-agent" (NFTablesTable), where Services and endpoints are only
// elements of maps, so the number of chains does not grow with the number
// of Services. PROTO is tcp, udp or sctp and R and I are indexes: the maps,
// sets and chains named with them exist once per protocol and index in use.
//
//	map service-ips            VIP . proto . port : goto pick-N-PROTO | goto affinity-C-N-T-PROTO
//	map endpoints-R-PROTO      VIP . port : endpoint . port     (the R-th endpoint, or the one at position R)
//	set affinity-clients-I-PROTO  client . VIP . port, dynamic, with timeouts (clients recorded at position I)
//	set affinity-held-I-PROTO  VIP . port                       (position I has an endpoint)
//	map affinity-slots-R-PROTO VIP . port : goto affinity-tT-I-PROTO  (R < N: the R-th occupied position I)
//	set no-endpoints           VIP . proto . port               (rejected)
//	map service-counters       VIP . proto . port : counter     (connections, see below)
//	set hairpin                endpoint . endpoint              (masqueraded)
//
//	nat-output      type nat hook output priority -100 (dstnat)     ─► services
//	nat-prerouting  type nat hook prerouting priority -100 (dstnat) ─► services
//	services        jump count-services
//	                VIP . proto . port vmap @service-ips
//	count-services  counter name VIP . proto . port map @service-counters
//	pick-N-PROTO    [─► mark-for-masquerade]
//	                numgen random mod N vmap { 0 : goto endpoint-0-PROTO, ..., N-1 : goto endpoint-(N-1)-PROTO }
//	endpoint-R-PROTO
//	                dnat addr . port to VIP . PROTO port map @endpoints-R-PROTO
//	affinity-C-N-T-PROTO
//	                [─► mark-for-masquerade]
//	                for I < C: client . VIP . PROTO port @affinity-clients-I-PROTO
//	                           VIP . PROTO port @affinity-held-I-PROTO ─► affinity-tT-I-PROTO
//	                numgen random mod N vmap { R : goto affinity-slot-R-PROTO, ... }
//	affinity-slot-R-PROTO
//	                VIP . PROTO port vmap @affinity-slots-R-PROTO
//	affinity-tT-I-PROTO
//	                update @affinity-clients-I-PROTO { client . VIP . PROTO port timeout Ts }
//	                dnat addr . port to VIP . PROTO port map @endpoints-I-PROTO
//	nat-postrouting type nat hook postrouting priority 100 (srcnat):
//	                masquerade (fully-random) marked packets, clearing the mark;
//	                masquerade DNATed packets whose source is their endpoint
//	filter-output, filter-forward  type filter hook ... priority 0 (filter):
//	                ct state new VIP . proto . port @no-endpoints reject
//
// The layout is what Linux 5.10 and later and nft 0.9.8 (Debian 11) and
// later accept, proven in booted Debian guests:
//   - Kernels before 6.4 ("netfilter: nf_tables: relax set/map validation
//     checks") reject a map used as a plain set ("KEY @map jump X": Invalid
//     argument). So the masquerade mark is set in the chains service-ips
//     sends to, rather than by a lookup of service-ips in services, and an
//     affinity position's occupancy has its own set (affinity-held) rather
//     than a lookup of the endpoints map.
//   - nft 0.9.8 cannot put a numgen (or a constant) into a concatenation
//     ("can not use variable sized data types (integer) in concat
//     expressions"), and it cannot declare a map whose concatenated key and
//     data differ in shape. So numgen stands alone as the key of an
//     anonymous verdict map that picks the index R, each index has its own
//     chain and map keyed by VIP . port only, and the maps are declared by
//     type, not typeof. nft 0.9.8 parses only the "dnat ip addr . port to"
//     form of a DNAT to a concatenated address and port; later versions
//     parse it too and list it as "dnat ip to".
//
// numgen's modulus is a constant of its rule, so there is one chain per
// protocol and distinct endpoint count (pick-N-PROTO), and for
// sessionAffinity: ClientIP one per protocol and distinct number of
// positions C, endpoint count N and timeout T, plus one per protocol,
// timeout and position; the per-index chains, maps and sets go up to the
// largest endpoint count (or number of positions) of the protocol. All are
// shared by every Service port, independent of the number of Services, and
// exist only while some Service port needs them: a change of endpoint
// counts adds or deletes them in the same transaction as the elements.
//
// Why per protocol: service-ips, no-endpoints and hairpin are read with
// "meta l4proto . th dport", which holds for every protocol and tests none.
// The per-index maps and sets are read with the protocol's own port field
// ("tcp dport"), for which nft adds the implicit test "meta l4proto tcp" to
// the rule: each protocol has its own chains, whose rules name only their
// own protocol's field, which service-ips only sends there anyway. The
// kernel tests check the rules' bytecode (nft --debug=netlink) for this.
//
// Session affinity records the client at the endpoint's position. Without
// affinity, the endpoints of a Service port are numbered 0..N-1 in order.
// With it, positions are stable: an endpoint keeps its position for as long
// as it stays, a new endpoint takes the first free position (or the next
// one), and positions are renumbered only when more than half of them would
// be free. A recorded client therefore stays on its endpoint while that
// endpoint exists, as with the iptables backend; a record for a free
// position is ignored (the @affinity-held check) and the client is spread
// like a new one. The random pick goes through affinity-slots-R-PROTO, which
// lists the N occupied positions of the Service port, so that free
// positions never get traffic. Positions are state of the backend (kept
// across syncs and periodic rewrites, not across restarts, which start with
// a new table).
//
// Connections by Service port: every Service port has a named counter
// object per cluster IP of the family ("svc-" and a hash of its name,
// protocol and IP), which count-services increments; NAT chains see only a
// connection's first packet, so it counts connections, refused ones too.
// Counters are objects, not elements: flushing and refilling the map in a
// full write keeps them, an incremental write adds and deletes only those
// of Service ports added or removed, so a count resets only when its
// Service port or cluster IP goes and comes back, or the table is created
// again. ServiceCounters reads them ("nft -j list counters") for
// bridge_agent_service_connections_total and the status; proven with real
// connections in Linux 5.10 and 6.1 guests (TestNFTablesCountersKernel).
//
// The start-up probe (NFTablesSupported, and with it proxy.mode auto) runs
// this layout itself: a small cluster in both families rendered by
// RenderNFTables and an incremental transaction that deletes chains and
// maps, written into the table "bridge-agent-check" with nft --check, which
// the kernel evaluates and aborts. Its error, when there is one, is the
// reason proxy.mode auto gives for using iptables.
//
// Other firewalls coexist by priority: our DNAT runs at dstnat (-100), so a
// filter chain at priority 0 sees Service traffic already rewritten to the
// endpoint; the reject runs at filter (0) on output and forward, and the
// masquerade at srcnat (100). Base chains accept by default, so nothing of
// ours drops traffic that is not for a Service port without endpoints.
//
// The first sync (and the first after a failed transaction) deletes and
// recreates the table in one transaction. Later syncs are incremental: the
// backend keeps the desired table as one group of elements per Service, with
// reference counts for what Services share (hairpin elements, pick and
// affinity chains), and the snapshot it was rendered from. It compares the
// new snapshot's *Service pointers with that one's (Services are immutable
// and an unchanged Service keeps its pointer, so this finds every change
// even when snapshots were skipped, at a few milliseconds for 50,000
// Services), re-renders only the changed Services, and sends only the
// difference of their groups and of the shared chains. Every CheckPeriod
// (proxy.syncPeriod) the skeleton of the tables is listed ("nft -j -t list
// ruleset": chains, rules and sets without their elements, milliseconds at
// any size) and compared with what was written: a deleted or flushed table,
// a chain missing or holding a different number of rules, a missing set
// makes that sync a full write. Every FullSyncPeriod (an hour) the whole
// table is rendered again, and the chains and sets (the dynamic ones
// excepted) are flushed and refilled in one transaction, which also repairs deleted elements while
// keeping the affinity records. A full write at 10k Services takes about a
// second, and changes wait for it; doing it hourly rather than every
// syncPeriod keeps that out of the change latency. A full write costs
// about the same whether the table is recreated or flushed in place: nearly
// all of it is nft parsing the elements (around 6 µs and 1.6 KiB of nft
// memory per element), so an agent restart recreates the table.
// CleanupNFTables deletes the two tables and nothing else; CleanupIPTables
// removes only the iptables chains: switching modes, run both.
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
