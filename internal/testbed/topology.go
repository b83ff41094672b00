package testbed

import (
	"context"
	"fmt"
	"strconv"
)

// Address plan. The LAN joins the control plane, the VM, the nodes and the
// upstream DNS server through a bridge in the lan namespace.
const (
	lanIPv4Prefix = "10.250.0."
	lanIPv6Prefix = "fd00:250::"

	cpIPv4       = lanIPv4Prefix + "2"
	cpIPv6       = lanIPv6Prefix + "2"
	vmIPv4       = lanIPv4Prefix + "10"
	vmIPv6       = lanIPv6Prefix + "10"
	upstreamIPv4 = lanIPv4Prefix + "53"
	upstreamIPv6 = lanIPv6Prefix + "53"

	serviceCIDRv4  = "10.96.0.0/16"
	serviceCIDRv6  = "fd00:96::/112"
	apiServiceIPv4 = "10.96.0.1"
	apiServiceIPv6 = "fd00:96::1"
	kubeDNSIPv4    = "10.96.0.10"
	kubeDNSIPv6    = "fd00:96::10"
	clusterDomain  = "cluster.local"

	apiServerPort = 6443

	// lanIf is the LAN interface in every member namespace; podIf the
	// interface in every pod namespace; nodeBridge the pods' bridge in a
	// node namespace.
	lanIf      = "eth0"
	podIf      = "eth0"
	nodeBridge = "cbr0"
	lanBridge  = "br0"

	// maxNodes keeps node LAN addresses (.21 and up) below the upstream
	// DNS server's (.53).
	maxNodes = 30
)

func nodeName(n int) string  { return "node-" + strconv.Itoa(n) }
func nodeIPv4(n int) string  { return lanIPv4Prefix + strconv.Itoa(20+n) }
func nodeIPv6(n int) string  { return lanIPv6Prefix + strconv.Itoa(20+n) }
func podCIDRv4(n int) string { return fmt.Sprintf("10.244.%d.0/24", n) }
func podCIDRv6(n int) string { return fmt.Sprintf("fd00:244:%d::/64", n) }
func podGWv4(n int) string   { return fmt.Sprintf("10.244.%d.1", n) }
func podGWv6(n int) string   { return fmt.Sprintf("fd00:244:%d::1", n) }
func podIPv4(n, host int) string {
	return fmt.Sprintf("10.244.%d.%d", n, host)
}
func podIPv6(n, host int) string {
	return fmt.Sprintf("fd00:244:%d::%d", n, host)
}

func zoneOf(n int) string {
	if n%2 == 1 {
		return "zone-a"
	}
	return "zone-b"
}

func (t *Testbed) nsName(suffix string) string { return t.Prefix + "-" + suffix }

// newNode describes node n of this testbed.
func (t *Testbed) newNode(n int) Node {
	return Node{
		Name:     nodeName(n),
		Number:   n,
		Netns:    t.nsName("n" + strconv.Itoa(n)),
		IPv4:     nodeIPv4(n),
		IPv6:     nodeIPv6(n),
		PodCIDRs: []string{podCIDRv4(n), podCIDRv6(n)},
		Zone:     zoneOf(n),
	}
}

// podRoutes returns ip commands that route node's pod CIDRs via its LAN IPs.
func podRoutes(verb string, node Node) []string {
	return []string{
		fmt.Sprintf("route %s %s via %s dev %s", verb, node.PodCIDRs[0], node.IPv4, lanIf),
		fmt.Sprintf("route %s %s via %s dev %s", verb, node.PodCIDRs[1], node.IPv6, lanIf),
	}
}

// lanMember creates netns ns and plugs it into the LAN bridge with the given
// addresses; extra ip commands then run inside ns.
func (t *Testbed) lanMember(ctx context.Context, ns, port, v4, v6 string, extra []string) error {
	if err := addNetns(ctx, ns); err != nil {
		return err
	}
	err := ipBatch(ctx, t.LANNetns, []string{
		fmt.Sprintf("link add %s type veth peer name %s netns %s", port, lanIf, ns),
		fmt.Sprintf("link set dev %s master %s", port, lanBridge),
		fmt.Sprintf("link set dev %s up", port),
	})
	if err != nil {
		return fmt.Errorf("plug %s into lan: %w", ns, err)
	}
	cmds := []string{
		fmt.Sprintf("addr add %s/24 dev %s", v4, lanIf),
		fmt.Sprintf("addr add %s/64 dev %s nodad", v6, lanIf),
		fmt.Sprintf("link set dev %s up", lanIf),
	}
	if err := ipBatch(ctx, ns, append(cmds, extra...)); err != nil {
		return fmt.Errorf("configure %s: %w", ns, err)
	}
	return nil
}

// setupNetwork builds the LAN, the control plane, VM, upstream and node
// namespaces.
func (t *Testbed) setupNetwork(ctx context.Context, nodes int) error {
	if err := addNetns(ctx, t.LANNetns); err != nil {
		return fmt.Errorf("setup network: %w", err)
	}
	err := ipBatch(ctx, t.LANNetns, []string{
		fmt.Sprintf("link add %s type bridge mcast_snooping 0", lanBridge),
		fmt.Sprintf("link set dev %s up", lanBridge),
	})
	if err != nil {
		return fmt.Errorf("setup network: lan bridge: %w", err)
	}
	for n := 1; n <= nodes; n++ {
		t.Nodes = append(t.Nodes, t.newNode(n))
	}
	var toPods []string
	for _, nd := range t.Nodes {
		toPods = append(toPods, podRoutes("add", nd)...)
	}
	if err := t.lanMember(ctx, t.CPNetns, "v-cp", cpIPv4, cpIPv6, toPods); err != nil {
		return fmt.Errorf("setup network: %w", err)
	}
	if err := t.lanMember(ctx, t.UpstreamNetns, "v-up", upstreamIPv4, upstreamIPv6, toPods); err != nil {
		return fmt.Errorf("setup network: %w", err)
	}
	// The VM gets only its LAN address: routes to pods and services are
	// what bridge-agent installs.
	if err := t.lanMember(ctx, t.VMNetns, "v-vm", vmIPv4, vmIPv6, nil); err != nil {
		return fmt.Errorf("setup network: %w", err)
	}
	for _, nd := range t.Nodes {
		if err := t.nodeNetwork(ctx, nd, t.Nodes); err != nil {
			return fmt.Errorf("setup network: %w", err)
		}
	}
	return nil
}

// nodeNetwork creates node nd's namespace: its LAN address, the pod bridge
// with the node's gateway addresses, forwarding, and routes to the pod CIDRs
// of the other nodes in peers.
func (t *Testbed) nodeNetwork(ctx context.Context, nd Node, peers []Node) error {
	cmds := []string{
		fmt.Sprintf("link add %s type bridge mcast_snooping 0", nodeBridge),
		fmt.Sprintf("addr add %s/24 dev %s", podGWv4(nd.Number), nodeBridge),
		fmt.Sprintf("addr add %s/64 dev %s nodad", podGWv6(nd.Number), nodeBridge),
		fmt.Sprintf("link set dev %s up", nodeBridge),
	}
	for _, p := range peers {
		if p.Number != nd.Number {
			cmds = append(cmds, podRoutes("add", p)...)
		}
	}
	if err := t.lanMember(ctx, nd.Netns, "v-n"+strconv.Itoa(nd.Number), nd.IPv4, nd.IPv6, cmds); err != nil {
		return fmt.Errorf("node %s: %w", nd.Name, err)
	}
	if err := sysctl(nd.Netns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return fmt.Errorf("node %s: %w", nd.Name, err)
	}
	return nil
}

// podNetwork creates pod namespace ns on node nd with the given addresses
// and default routes via the node.
func podNetwork(ctx context.Context, nd Node, ns, hostIf, v4, v6 string) error {
	if err := addNetns(ctx, ns); err != nil {
		return err
	}
	err := ipBatch(ctx, nd.Netns, []string{
		fmt.Sprintf("link add %s type veth peer name %s netns %s", hostIf, podIf, ns),
		fmt.Sprintf("link set dev %s master %s", hostIf, nodeBridge),
		fmt.Sprintf("link set dev %s up", hostIf),
	})
	if err != nil {
		return fmt.Errorf("plug pod into %s: %w", nd.Name, err)
	}
	err = ipBatch(ctx, ns, []string{
		fmt.Sprintf("addr add %s/24 dev %s", v4, podIf),
		fmt.Sprintf("addr add %s/64 dev %s nodad", v6, podIf),
		fmt.Sprintf("link set dev %s up", podIf),
		fmt.Sprintf("route add default via %s dev %s", podGWv4(nd.Number), podIf),
		fmt.Sprintf("route add ::/0 via %s dev %s", podGWv6(nd.Number), podIf),
	})
	if err != nil {
		return fmt.Errorf("configure pod netns %s: %w", ns, err)
	}
	return nil
}
