// Package routes makes the cluster's pod networks reachable from this host:
// after the proxy has turned a Service address into a pod IP, the host must
// have a route to that pod IP.
//
// # Contract
//
// The package is split in two. The pure part turns a cluster.Snapshot, the
// configuration and what the host looks like (hostguard.Facts: its connected
// subnets, its own addresses, default gateways and resolvers) into the desired routes as data, with the reason for every
// route that cannot be had:
//
//   - Desired computes the routes of the configured mode:
//     nodes (default): every Node's spec.podCIDRs, each via that Node's
//     InternalIP of the same family, when that IP is on a subnet this host is
//     directly connected to. A Node without pod CIDRs, without an InternalIP
//     of a family, off-link, using this host's own address, or claiming a pod
//     CIDR that overlaps another Node's gets no route and a Problem instead.
//     Before that, every pod CIDR and next hop passes the host guard
//     (internal/hostguard): a CIDR overlapping a special range or this
//     host's networks, or holding its addresses, gateways or resolvers, one
//     broader than Spec.MinPrefixLen4/6 (default /16 and /48) or outside
//     Spec.AllowedCIDRs (default: the private ranges), and a next hop that
//     is special or this host itself, are refused with the guard's reason.
//     Refused CIDRs take no part in the overlap check, so a hostile broad
//     claim cannot knock out a legitimate Node's route. Gateway mode's
//     configured CIDRs and gateways get the same host checks.
//     gateway: the configured CIDRs via the configured gateways (several of a
//     family make one equal-cost multipath route) or straight onto a device.
//     none: no routes.
//   - Refuse drops every desired route that someone else's route in the same
//     table equals or lies inside (a static route, a VPN route, a connected
//     subnet, a blackhole): such a range is theirs, and replacing or
//     shadowing it is not ours to do. A broader foreign route (a summary such
//     as 10.0.0.0/8 towards a corporate router) is no conflict: our more
//     specific route takes precedence without changing it. Default routes
//     never conflict.
//
// The reconciler, the thin edge, reads the kernel only to learn the host's
// addresses and which routes exist; it never reads it to decide what the
// cluster wants.
//
// # Ownership
//
// Every route the agent installs carries one route protocol number
// (routes.protocol, default 98 = 0x62, unused by the kernel and by iproute2's
// rt_protos; `ip route show proto 98` lists them). Each sync lists the routes
// with that protocol in every table and both families, adds what is
// missing, replaces what differs (an atomic netlink replace, so a route
// moving to another gateway never disappears) and deletes what is no longer
// wanted, including routes of ours left in a table the configuration no
// longer names. Routes with any other protocol are never changed. A
// route that is already as desired is not touched, so a restarted agent
// leaves routes in place: start-up never flushes, and an unchanged sync
// writes nothing.
//
// Deletes name the protocol, which the kernel matches, so a delete can never
// remove someone else's route with the same destination. New routes are
// added with NLM_F_EXCL, so a foreign route that appears between listing and
// adding makes the add fail instead of being replaced.
//
// The kernel is not watched: a route someone else adds or removes, an
// address that changes, or a route of ours someone deletes is noticed at the
// next sync, which every cluster change and the periodic resync
// (proxy.syncPeriod) bring. With mode none, routes of ours from an earlier
// run are removed like any other unwanted route.
//
// Cleanup (bridge-agent cleanup) removes every route with the agent's
// protocol in every table, IPv4 and IPv6, and nothing else.
//
// # Reporting
//
// Problems (a route that cannot be had, and why) are not sync errors: the
// other routes are installed and the agent stays ready. They show in
// `bridge-agent status` (the routes consumer's details), in
// bridge_agent_routes_problems{reason} and bridge_agent_routes_conflicts,
// and in the log once when they appear and once when they go away. Kernel
// errors fail the sync, which the daemon retries with backoff and counts
// in bridge_agent_routes_sync_errors_total.
package routes
