// Command demo starts the sandbox cluster (internal/testbed), loads a small
// demo application into it, starts bridge-agent in the sandbox's VM network
// namespace and prints what to try. It runs until interrupted (or for
// -for DURATION), then tears everything down. `make demo` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	agentBin := flag.String("agent", "", "bridge-agent binary (default: build it)")
	nodes := flag.Int("nodes", 2, "number of sandbox nodes")
	runFor := flag.Duration("for", 0, "stop after this long (default: until interrupted)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: the sandbox is made of network namespaces")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	dir, err := os.MkdirTemp("", "bridge-agent-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if *agentBin == "" {
		log.Info("building bridge-agent")
		if *agentBin, err = testbed.BuildAgent(ctx, dir); err != nil {
			return err
		}
	}
	if *agentBin, err = filepath.Abs(*agentBin); err != nil {
		return err
	}
	if err := testbed.CleanupStale(); err != nil {
		log.Warn("cleaning up an earlier run", "err", err)
	}
	tb, err := testbed.Start(ctx, testbed.Options{Nodes: *nodes, Log: log})
	if err != nil {
		return err
	}
	defer func() {
		if err := tb.Stop(); err != nil {
			log.Error("stop sandbox", "err", err)
		}
	}()
	if err := loadDemoApp(ctx, tb); err != nil {
		return err
	}

	agentDir := filepath.Join(dir, "agent")
	if err := os.MkdirAll(agentDir, 0o755); err != nil {
		return err
	}
	agent, err := tb.NewAgent(*agentBin, agentDir, nil)
	if err != nil {
		return err
	}
	if err := agent.Start(); err != nil {
		return err
	}
	defer agent.Stop()
	if _, err := agent.WaitReady(ctx, time.Minute); err != nil {
		return err
	}
	// A real host reaches the Service range through its default route
	// (the kernel routes a packet before NAT rewrites it); the sandbox VM
	// has none, so the demo gives the Service ranges one.
	n := tb.Nodes[0]
	for _, c := range tb.ServiceCIDRs {
		via := n.IPv4
		if strings.Contains(c, ":") {
			via = n.IPv6
		}
		if out, err := tb.Exec(ctx, tb.VMNetns, "ip", "route", "replace", c, "via", via); err != nil {
			return fmt.Errorf("route to %s: %w: %s", c, err, out)
		}
	}
	// Programs started in the VM with `ip netns exec` read the resolv.conf
	// the agent manages in its host root, as a real VM's read /etc/resolv.conf.
	if err := tb.SetVMResolvConf(filepath.Join(agent.HostRoot, "etc", "resolv.conf")); err != nil {
		return err
	}
	web, err := tb.Client.CoreV1().Services("demo").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		return err
	}
	status, err := agent.Run(ctx, "status")
	if err != nil {
		return err
	}
	fmt.Printf(`
bridge-agent is running in the sandbox's VM network namespace and is ready.

%s
Try (as root, in another terminal):
  ip netns exec %[2]s curl -s --http0.9 http://web.demo.svc/    # demo/web by name: the answering pod's name
  ip netns exec %[2]s curl -s --http0.9 http://%[11]s/          # the same by ClusterIP
  ip netns exec %[2]s curl -s --http0.9 http://[%[12]s]/        # the same over IPv6
  ip netns exec %[2]s dig +short web.demo.svc.cluster.local     # the agent's DNS stub (%[13]s)
  ip netns exec %[2]s dig +short SRV _http._tcp.web.demo.svc
  ip netns exec %[2]s dig +short www.example.test               # forwarded to the VM's own resolver
  ip netns exec %[2]s cat /etc/resolv.conf                      # as the agent wired it
  ip netns exec %[2]s nft list table ip bridge-agent            # the agent's rules (nftables backend)
  ip netns exec %[2]s ip route show proto 98                    # the agent's routes
  ip netns exec %[2]s %[3]s status --config %[4]s
  ip netns exec %[2]s %[3]s status --config %[4]s -o json
  ip netns exec %[2]s curl -s http://%[5]s/readyz
  ip netns exec %[2]s curl -s http://%[6]s/metrics | grep ^bridge_agent
  tail -f %[7]s

The cluster: API server %[8]s, admin kubeconfig %[9]s
(the agent uses the least-privilege one: %[10]s).
Press Ctrl-C to stop and remove everything.
`, status, tb.VMNetns, *agentBin, agent.ConfigPath, agent.Config.HealthzBindAddress, agent.Config.MetricsBindAddress,
		agent.LogPath(), tb.APIServerURL, tb.AdminKubeconfig, tb.AgentKubeconfig,
		web.Spec.ClusterIPs[0], web.Spec.ClusterIPs[len(web.Spec.ClusterIPs)-1], agent.Config.DNS.ListenAddress)

	if *runFor > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(*runFor):
		}
	} else {
		<-ctx.Done()
	}
	fmt.Println("stopping")
	return nil
}

// loadDemoApp creates namespace demo with Service web (two pods on
// different nodes, dual-stack) and Service echo (UDP).
func loadDemoApp(ctx context.Context, tb *testbed.Testbed) error {
	const ns = "demo"
	for _, s := range []struct {
		name  string
		port  v1.ServicePort
		ports []testbed.Port
	}{
		{"web", v1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: v1.ProtocolTCP},
			[]testbed.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}},
		{"echo", v1.ServicePort{Name: "echo", Port: 7, TargetPort: intstr.FromInt32(7007), Protocol: v1.ProtocolUDP},
			[]testbed.Port{{Name: "echo", Port: 7007, Protocol: "UDP"}}},
	} {
		labels := map[string]string{"app": s.name}
		for i := 1; i <= 2; i++ {
			spec := testbed.PodSpec{Namespace: ns, Name: fmt.Sprintf("%s-%d", s.name, i), Node: min(i, len(tb.Nodes)), Labels: labels, Ports: s.ports, Ready: true}
			if _, err := tb.CreatePod(ctx, spec); err != nil {
				return err
			}
		}
		_, err := tb.Client.CoreV1().Services(ns).Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name},
			Spec: v1.ServiceSpec{
				Selector:       labels,
				IPFamilyPolicy: ptr.To(v1.IPFamilyPolicyPreferDualStack),
				Ports:          []v1.ServicePort{s.port},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create service %s/%s: %w", ns, s.name, err)
		}
	}
	return nil
}
