// Package hostguard keeps the cluster from taking over the host. The agent
// applies what the API server says to a machine that is not part of the
// cluster; whoever can write a Node, a Service or a ServiceCIDR (a cluster
// admin, a leaked node credential, a buggy controller) must not be able to
// redirect this machine's own traffic. Every consumer asks this package
// before it programs anything derived from API objects.
//
// # Contract
//
// Facts is what the guard knows of this host: its own addresses, the
// subnets it is connected to, its default gateways (every table) and its
// upstream DNS resolvers (never the agent's stub). The checks are pure
// functions of Facts and the special ranges (Special: "this network" and
// the unspecified addresses, loopback, link-local with the cloud metadata
// addresses 169.254.169.254 and fd00:ec2::254 and those of Alibaba Cloud
// and Azure, multicast, the limited broadcast address, IPv4-compatible and
// IPv4-mapped IPv6, the NAT64 prefixes). Each returns nil or a Refusal
// with a Reason and a sentence:
//
//   - CheckAddr, for a ClusterIP: refused when special, one of the host's
//     addresses, gateways or resolvers, or in a subnet it is connected to.
//     An IPv4-mapped address is refused as such, never taken for the IPv4
//     address it maps.
//   - CheckPrefix, for a route's destination and a Service range: refused
//     when it overlaps a special range or a connected subnet (equal,
//     inside or containing), or contains a host address, gateway or
//     resolver. Disjoint and adjacent ranges pass.
//   - CheckNexthop, for a route's next hop: refused when special
//     (link-local ones pass for routes onto a named device) or the host
//     itself. OnLink says whether it is on a connected subnet.
//
// Without Facts (nil) only the special ranges apply.
//
// # Where the checks run
//
// Routes (internal/routes) check every Node's pod CIDR and next hop, and
// the configured gateway-mode routes, in Desired; the routes consumer
// builds its Facts from the addresses and routes it lists on every sync
// (FromNetlink), so they are never older than its own view of the kernel.
//
// ClusterIPs are checked once, centrally, by Filter, which the daemon runs
// between the cluster view and the consumers: every snapshot published to
// the proxy, the conntrack cleanup and the DNS stub is a guarded one, so no
// consumer can forget the check and DNS never answers with a ClusterIP that
// has no rules. A ClusterIP passes when it lies in one of the Service
// ranges (the cluster's ServiceCIDR objects, else serviceCIDRs of the
// configuration) that the guard itself accepts, and CheckAddr passes it. A
// Service range that CheckPrefix refuses is dropped, and so is every
// ClusterIP only it holds. When no Service range is known at all, the
// guard alone decides, and Status says so. A Service keeps its other
// ClusterIPs when one is refused; a Service left with none is left out of
// the snapshot (no rules, no DNS name). External and LoadBalancer IPs are
// not programmed by the proxy, so there is nothing else to check.
//
// Incremental consumers find changes by the pointer of each *cluster.Service
// (internal/proxy changedServices, internal/dnsstub changedKeys). Filter
// keeps that working: an unrefused Service is handed on as the same
// pointer; a refused one gets one filtered copy, kept as long as the input
// pointer and the verdict stay the same; the same input snapshot and Facts
// give the same output snapshot. A successor snapshot with the same Facts
// and Service ranges is filtered in proportion to its Changed list; after a
// change of Facts or ranges every Service is checked again and Changed is
// the set of keys whose output pointer changed.
//
// # Freshness
//
// Watcher reads the Facts when the agent starts (a host that cannot be
// read does not start), then again 200 ms after netlink announces an
// address change or a change of a default route (AddrSubscribe and
// RouteSubscribe, coalesced; other route changes are ignored, so a busy
// routing table costs nothing), and every proxy.syncPeriod whatever was
// announced: resolvers live in files, which netlink does not watch, and a
// notification can be lost. A change of the Facts pokes the daemon, which
// publishes a newly guarded snapshot to every consumer.
//
// # Reporting
//
// Refusals are not errors: everything else is programmed and the agent
// stays ready. Each shows in `bridge-agent status` (text and -o json: the
// routes consumer's problems; the guard's refused Service ranges and
// ClusterIPs with their reasons), in bridge_agent_routes_problems{reason}
// and bridge_agent_guard_refused{kind,reason}, and in the log once when it
// appears or changes and once when it goes away (at most ten lines each
// per snapshot, then one line with the count).
package hostguard
