package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// Node is a node of the sandbox cluster: a network namespace on the LAN
// whose pods live in namespaces behind its bridge.
type Node struct {
	Name     string   // Node object name, node-<Number>
	Number   int      // 1-based node number
	Netns    string   // network namespace name
	IPv4     string   // LAN address (InternalIP)
	IPv6     string   // LAN address (InternalIP)
	PodCIDRs []string // IPv4 then IPv6 pod CIDR
	Zone     string   // topology.kubernetes.io/zone label
}

// Port is a container port of a test pod; the pod serves it in-process.
type Port struct {
	Name     string // port name, may be empty
	Port     int32
	Protocol string // "TCP" (default) or "UDP"
}

// PodSpec describes a test pod for CreatePod.
type PodSpec struct {
	Namespace string // default "default"; created if missing
	Name      string
	Node      int // number of the node that runs the pod; 0 means 1
	Labels    map[string]string
	Ports     []Port
	Ready     bool // initial Ready condition
	// Hostname and Subdomain are the pod's spec.hostname and
	// spec.subdomain: with a headless Service named Subdomain, its
	// endpoint carries Hostname and DNS answers hostname.subdomain.ns.svc.
	Hostname, Subdomain string
}

// Pod is a running test pod.
type Pod struct {
	Namespace string
	Name      string
	Node      string // node name
	Netns     string // network namespace name
	IPv4      string
	IPv6      string
}

// podState is the testbed's local view of a pod it plays kubelet for.
type podState struct {
	pod     Pod
	node    int
	host    int         // host number in the node's pod CIDRs
	closers []io.Closer // in-process servers
	procs   []*proc     // processes running in the pod namespace
}

func podKey(ns, name string) string { return ns + "/" + name }

// registerNode creates the Node object for nd and reports it Ready.
func (t *Testbed) registerNode(ctx context.Context, nd Node) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: nd.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname":      nd.Name,
				"kubernetes.io/os":            "linux",
				"topology.kubernetes.io/zone": nd.Zone,
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: nd.PodCIDRs[0], PodCIDRs: nd.PodCIDRs},
	}
	if err := t.createReadyNode(ctx, obj, nd.IPv4, nd.IPv6, "110"); err != nil {
		return fmt.Errorf("register node %s: %w", nd.Name, err)
	}
	return nil
}

// createReadyNode creates obj and reports it Ready with the given
// InternalIPs and pod capacity, as a kubelet would.
func (t *Testbed) createReadyNode(ctx context.Context, obj *corev1.Node, ipv4, ipv6, pods string) error {
	created, err := t.Client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: ipv4},
			{Type: corev1.NodeInternalIP, Address: ipv6},
			{Type: corev1.NodeHostName, Address: obj.Name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "testbed node is ready", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Capacity:    corev1.ResourceList{corev1.ResourcePods: resource.MustParse(pods)},
		Allocatable: corev1.ResourceList{corev1.ResourcePods: resource.MustParse(pods)},
	}
	if _, err := t.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// node returns the node with number n.
func (t *Testbed) node(n int) (Node, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, nd := range t.Nodes {
		if nd.Number == n {
			return nd, true
		}
	}
	return Node{}, false
}

// AddNode adds a node with the next free number: its namespace on the LAN,
// pod routes between it and the other nodes, the control plane and the
// upstream DNS namespace, and its Node object. It must not run concurrently
// with code that reads t.Nodes.
func (t *Testbed) AddNode(ctx context.Context) (Node, error) {
	t.mu.Lock()
	// Node numbers (and so LAN addresses) are not reused: a new node on a
	// just-freed address would meet neighbour entries for the old one.
	n := t.lastNode + 1
	for _, nd := range t.Nodes {
		n = max(n, nd.Number+1)
	}
	t.lastNode = n
	peers := slices.Clone(t.Nodes)
	t.mu.Unlock()
	if n > maxNodes {
		return Node{}, fmt.Errorf("add node: at most %d nodes", maxNodes)
	}
	nd := t.newNode(n)
	if err := t.nodeNetwork(ctx, nd, peers); err != nil {
		_ = deleteNetns(ctx, nd.Netns)
		return Node{}, fmt.Errorf("add node: %w", err)
	}
	for _, ns := range t.podRouteHolders(peers) {
		if err := ipBatch(ctx, ns, podRoutes("add", nd)); err != nil {
			return Node{}, fmt.Errorf("add node: routes in %s: %w", ns, err)
		}
	}
	t.mu.Lock()
	t.Nodes = append(t.Nodes, nd)
	t.mu.Unlock()
	if err := t.registerNode(ctx, nd); err != nil {
		return Node{}, fmt.Errorf("add node: %w", err)
	}
	return nd, nil
}

// podRouteHolders returns the namespaces that route to every node's pods.
func (t *Testbed) podRouteHolders(nodes []Node) []string {
	nss := []string{t.CPNetns, t.UpstreamNetns}
	for _, nd := range nodes {
		nss = append(nss, nd.Netns)
	}
	return nss
}

// DeleteNode deletes node n: its pods (objects and namespaces), the routes
// to its pod CIDRs, its namespace and its Node object. It must not run
// concurrently with code that reads t.Nodes.
func (t *Testbed) DeleteNode(ctx context.Context, n int) error {
	nd, ok := t.node(n)
	if !ok {
		return fmt.Errorf("delete node %d: no such node", n)
	}
	t.mu.Lock()
	var pods []Pod
	for _, ps := range t.pods {
		if ps.node == n {
			pods = append(pods, ps.pod)
		}
	}
	t.mu.Unlock()
	var errs []error
	for _, p := range pods {
		if err := t.DeletePod(ctx, p.Namespace, p.Name); err != nil {
			errs = append(errs, err)
		}
	}
	t.mu.Lock()
	t.Nodes = slices.DeleteFunc(t.Nodes, func(x Node) bool { return x.Number == n })
	others := slices.Clone(t.Nodes)
	t.mu.Unlock()
	for _, ns := range t.podRouteHolders(others) {
		if err := ipBatch(ctx, ns, podRoutes("del", nd)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteNetns(ctx, nd.Netns); err != nil {
		errs = append(errs, err)
	}
	err := t.Client.CoreV1().Nodes().Delete(ctx, nd.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete node %s: %w", nd.Name, err)
	}
	return nil
}

// ensureNamespace creates namespace ns if it does not exist.
func (t *Testbed) ensureNamespace(ctx context.Context, ns string) error {
	if _, err := t.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
		return nil
	}
	_, err := t.Client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}

// CreatePod plays kubelet for a new pod: it creates the Kubernetes
// namespace if missing, the Pod object bound to the node, the pod's network
// namespace with an IPv4 and an IPv6 address from the node's pod CIDRs, and
// in-process servers inside it on each port. A TCP server writes the line
// "<pod name>\n" to each connection and closes it; a UDP server answers each
// datagram with "<pod name>". Last it reports the pod Running with its IPs
// and the requested readiness, from which the EndpointSlice controller
// derives endpoints.
func (t *Testbed) CreatePod(ctx context.Context, spec PodSpec) (Pod, error) {
	return t.createPod(ctx, spec, true)
}

func (t *Testbed) createPod(ctx context.Context, spec PodSpec, servers bool) (_ Pod, err error) {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.Node == 0 {
		spec.Node = 1
	}
	if spec.Name == "" {
		return Pod{}, errors.New("create pod: empty name")
	}
	key := podKey(spec.Namespace, spec.Name)
	nd, ok := t.node(spec.Node)
	if !ok {
		return Pod{}, fmt.Errorf("create pod %s: no node %d", key, spec.Node)
	}
	ps, err := t.reservePod(spec, nd)
	if err != nil {
		return Pod{}, fmt.Errorf("create pod %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			t.releasePod(context.WithoutCancel(ctx), key, true)
		}
	}()
	if err := t.ensureNamespace(ctx, spec.Namespace); err != nil {
		return Pod{}, fmt.Errorf("create pod %s: %w", key, err)
	}
	obj, err := t.Client.CoreV1().Pods(spec.Namespace).Create(ctx, podObject(spec, nd), metav1.CreateOptions{})
	if err != nil {
		return Pod{}, fmt.Errorf("create pod %s: %w", key, err)
	}
	hostIf := "vp" + strings.TrimPrefix(ps.pod.Netns, t.Prefix+"-p")
	if err := podNetwork(ctx, nd, ps.pod.Netns, hostIf, ps.pod.IPv4, ps.pod.IPv6); err != nil {
		return Pod{}, fmt.Errorf("create pod %s: %w", key, err)
	}
	if servers {
		for _, p := range spec.Ports {
			c, err := servePort(ps.pod.Netns, p, spec.Name)
			if err != nil {
				return Pod{}, fmt.Errorf("create pod %s: %w", key, err)
			}
			t.mu.Lock()
			ps.closers = append(ps.closers, c)
			t.mu.Unlock()
		}
	}
	setPodStatus(obj, nd, ps.pod, spec.Ready)
	if _, err := t.Client.CoreV1().Pods(spec.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return Pod{}, fmt.Errorf("create pod %s: status: %w", key, err)
	}
	t.log.Debug("pod created", "pod", key, "node", nd.Name, "ipv4", ps.pod.IPv4, "ipv6", ps.pod.IPv6)
	return ps.pod, nil
}

// reservePod allocates the pod's network namespace name and addresses.
func (t *Testbed) reservePod(spec PodSpec, nd Node) (*podState, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := podKey(spec.Namespace, spec.Name)
	if _, ok := t.pods[key]; ok {
		return nil, errors.New("pod already exists")
	}
	used := map[int]bool{}
	for _, ps := range t.pods {
		if ps.node == nd.Number {
			used[ps.host] = true
		}
	}
	// Addresses are not reused at once (as most IPAM plugins do): a new pod
	// on a just-freed address would meet neighbour and conntrack entries of
	// the old one.
	if t.nextHost == nil {
		t.nextHost = map[int]int{}
	}
	host := 0
	for i, h := 0, t.nextHost[nd.Number]; i < 253; i++ {
		if h++; h < 2 || h > 254 {
			h = 2
		}
		if !used[h] {
			host = h
			break
		}
	}
	if host == 0 {
		return nil, fmt.Errorf("node %s has no free pod address", nd.Name)
	}
	t.nextHost[nd.Number] = host
	t.nextPod++
	ps := &podState{
		pod: Pod{
			Namespace: spec.Namespace,
			Name:      spec.Name,
			Node:      nd.Name,
			Netns:     t.nsName("p" + strconv.Itoa(t.nextPod)),
			IPv4:      podIPv4(nd.Number, host),
			IPv6:      podIPv6(nd.Number, host),
		},
		node: nd.Number,
		host: host,
	}
	t.pods[key] = ps
	return ps, nil
}

// releasePod stops the pod's servers and processes, deletes its network
// namespace and forgets it.
func (t *Testbed) releasePod(ctx context.Context, key string, deleteObject bool) error {
	t.mu.Lock()
	ps, ok := t.pods[key]
	delete(t.pods, key)
	t.mu.Unlock()
	if !ok {
		return nil
	}
	var errs []error
	if deleteObject {
		err := t.Client.CoreV1().Pods(ps.pod.Namespace).Delete(ctx, ps.pod.Name,
			metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	for _, p := range ps.procs {
		p.stop(5 * time.Second)
	}
	for _, c := range ps.closers {
		_ = c.Close()
	}
	if err := deleteNetns(ctx, ps.pod.Netns); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SetPodReady sets the Ready and ContainersReady conditions of a pod.
func (t *Testbed) SetPodReady(ctx context.Context, namespace, name string, ready bool) error {
	key := podKey(namespace, name)
	t.mu.Lock()
	ps, ok := t.pods[key]
	t.mu.Unlock()
	if !ok {
		return fmt.Errorf("set pod ready %s: no such pod", key)
	}
	nd, _ := t.node(ps.node)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj, err := t.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		setPodStatus(obj, nd, ps.pod, ready)
		_, err = t.Client.CoreV1().Pods(namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("set pod ready %s: %w", key, err)
	}
	return nil
}

// DeletePod deletes the Pod object with grace period 0, stops the pod's
// servers and removes its network namespace.
func (t *Testbed) DeletePod(ctx context.Context, namespace, name string) error {
	key := podKey(namespace, name)
	t.mu.Lock()
	_, ok := t.pods[key]
	t.mu.Unlock()
	if !ok {
		return fmt.Errorf("delete pod %s: no such pod", key)
	}
	if err := t.releasePod(ctx, key, true); err != nil {
		return fmt.Errorf("delete pod %s: %w", key, err)
	}
	return nil
}

// podObject returns the Pod object for spec, bound to node nd.
func podObject(spec PodSpec, nd Node) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, p := range spec.Ports {
		ports = append(ports, corev1.ContainerPort{
			Name: p.Name, ContainerPort: p.Port, Protocol: protocol(p.Protocol),
		})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName: nd.Name,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "bridge-agent.test/testbed-server:latest",
				Ports: ports,
			}},
			TerminationGracePeriodSeconds: new(int64),
			Hostname:                      spec.Hostname,
			Subdomain:                     spec.Subdomain,
		},
	}
}

func protocol(p string) corev1.Protocol {
	if strings.EqualFold(p, "UDP") {
		return corev1.ProtocolUDP
	}
	return corev1.ProtocolTCP
}

// setPodStatus fills obj's status as kubelet would for a running pod.
func setPodStatus(obj *corev1.Pod, nd Node, p Pod, ready bool) {
	now := metav1.Now()
	st := &obj.Status
	st.Phase = corev1.PodRunning
	st.HostIP = nd.IPv4
	st.HostIPs = []corev1.HostIP{{IP: nd.IPv4}, {IP: nd.IPv6}}
	st.PodIP = p.IPv4
	st.PodIPs = []corev1.PodIP{{IP: p.IPv4}, {IP: p.IPv6}}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	readyStatus := corev1.ConditionFalse
	if ready {
		readyStatus = corev1.ConditionTrue
	}
	setCondition(st, corev1.PodScheduled, corev1.ConditionTrue, now)
	setCondition(st, corev1.PodInitialized, corev1.ConditionTrue, now)
	setCondition(st, corev1.ContainersReady, readyStatus, now)
	setCondition(st, corev1.PodReady, readyStatus, now)
	started := true
	startedAt := now
	if len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].State.Running != nil {
		startedAt = st.ContainerStatuses[0].State.Running.StartedAt
	}
	st.ContainerStatuses = []corev1.ContainerStatus{{
		Name:        "app",
		Ready:       ready,
		Started:     &started,
		State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}},
		Image:       obj.Spec.Containers[0].Image,
		ImageID:     obj.Spec.Containers[0].Image,
		ContainerID: "testbed://" + p.Netns,
	}}
}

func setCondition(st *corev1.PodStatus, typ corev1.PodConditionType, status corev1.ConditionStatus, now metav1.Time) {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			if st.Conditions[i].Status != status {
				st.Conditions[i].Status = status
				st.Conditions[i].LastTransitionTime = now
			}
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: typ, Status: status, LastTransitionTime: now})
}

// servePort starts the in-process server for port p inside pod netns ns.
func servePort(ns string, p Port, podName string) (io.Closer, error) {
	addr := ":" + strconv.Itoa(int(p.Port))
	if protocol(p.Protocol) == corev1.ProtocolUDP {
		pc, err := listenPacketIn(ns, "udp", addr)
		if err != nil {
			return nil, err
		}
		go serveUDP(pc, podName)
		return pc, nil
	}
	l, err := listenIn(ns, "tcp", addr)
	if err != nil {
		return nil, err
	}
	go serveTCP(l, podName)
	return l, nil
}

// serveTCP writes "<name>\n" to each connection, then closes it after the
// client has closed its side (or after a few seconds), so that the reply is
// never lost to a reset.
func serveTCP(l net.Listener, name string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, name+"\n"); err != nil {
				return
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}

// serveUDP answers each datagram with name.
func serveUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 64<<10)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = pc.WriteTo([]byte(name), addr)
	}
}
