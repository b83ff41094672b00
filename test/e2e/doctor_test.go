package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/doctor"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// runDoctor runs `bridge-agent doctor -o json --config cfgPath` in the VM
// and returns its report and exit status.
func runDoctor(ctx context.Context, t *testing.T, a *testbed.Agent, cfgPath string) (*doctor.Report, int) {
	t.Helper()
	cmd := tb.Command(tb.VMNetns, a.Binary, "doctor", "-o", "json", "--config", cfgPath)
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	var rep doctor.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("doctor -o json: %v:\n%s", err, out)
	}
	return &rep, code
}

// wantFailure checks that the doctor failed, with a failed check whose
// name, detail and fix contain the given texts.
func wantFailure(t *testing.T, rep *doctor.Report, code int, name, detail, fix string) {
	t.Helper()
	if code != 1 || rep.OK() {
		t.Errorf("doctor: exit %d, ok %v; want exit 1", code, rep.OK())
	}
	for _, c := range rep.Failed() {
		if strings.Contains(c.Name, name) && strings.Contains(c.Detail, detail) && strings.Contains(c.Fix, fix) {
			if strings.Contains(c.Fix, "\n") {
				t.Errorf("fix of %q is not one line: %q", c.Name, c.Fix)
			}
			return
		}
	}
	var got strings.Builder
	rep.WriteText(&got)
	t.Errorf("no failed check named %q with detail %q and fix %q; the report:\n%s", name, detail, fix, got.String())
}

// altConfig writes a copy of the agent's configuration that uses another
// kubeconfig, and returns its path.
func altConfig(t *testing.T, a *testbed.Agent, kubeconfig string) string {
	t.Helper()
	c := *a.Config
	c.Kubeconfig = kubeconfig
	data, err := yaml.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// otherCA returns a CA certificate that signed nothing of the cluster's.
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "some other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// checkKubeconfig runs `bridge-agent kubeconfig --check` in the VM and
// returns its output.
func checkKubeconfig(ctx context.Context, a *testbed.Agent, cfgPath string) (string, error) {
	out, err := tb.Command(tb.VMNetns, a.Binary, "kubeconfig", "--check", "--config", cfgPath).CombinedOutput()
	return string(out), err
}

// agentToken returns the token of the testbed's agent kubeconfig.
func agentToken(t *testing.T) string {
	t.Helper()
	tok, _ := agentCredentials(t)
	return tok
}

// TestDoctor breaks a working VM one way at a time; each breakage makes
// `bridge-agent doctor` fail with the check and the one-line fix for it,
// and the healthy VM passes. `bridge-agent explain` prints the whole path
// to a Service.
func TestDoctor(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "demo"
	serviceRoutes(ctx, t)
	sel := map[string]string{"app": "doctor-web"}
	pod := createPod(ctx, t, httpPod(ns, "web-1", 1, sel))
	svc := createService(ctx, t, ns, "web", v1.ProtocolTCP, 80, "http", sel)
	a := newAgent(t, true, func(c *config.Config) { c.DNS.HostResolver = "resolv.conf" })
	if _, err := a.WaitStatus(ctx, 30*time.Second, func(st *daemon.Status) bool {
		return st.Ready && len(endpointsOf(st, ns, "web")) > 0
	}); err != nil {
		t.Fatal(err)
	}
	// The VM's programs read the resolv.conf the agent manages.
	if err := tb.SetVMResolvConf(filepath.Join(a.HostRoot, "etc", "resolv.conf")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tb.SetVMResolvConf("") })

	t.Run("a healthy VM passes", func(t *testing.T) {
		rep, code := runDoctor(ctx, t, a, a.ConfigPath)
		var text strings.Builder
		rep.WriteText(&text)
		if code != 0 || !rep.OK() {
			t.Fatalf("doctor on a healthy VM: exit %d:\n%s", code, text.String())
		}
		for _, want := range []string{"[ok  ] RBAC", "[ok  ] clock", "[ok  ] proxy backend", "[ok  ] route to Service range " + tb.ServiceCIDRs[0],
			"[ok  ] route to pod range", "[ok  ] routes to endpoints", "[ok  ] foreign routes and rules", "[ok  ] host resolver (getent ahosts kubernetes.default.svc.cluster.local)"} {
			if !strings.Contains(text.String(), want) {
				t.Errorf("doctor on a healthy VM: no %q in:\n%s", want, text.String())
			}
		}
		t.Logf("doctor:\n%s", text.String())
	})

	t.Run("explain prints the whole path", func(t *testing.T) {
		out, err := a.Run(ctx, "explain", "web.demo.svc")
		if err != nil {
			t.Fatal(err)
		}
		s := string(out)
		for _, want := range []string{
			"stub " + a.Config.DNS.ListenAddress + " (bridge-agent",
			"web.demo.svc. -> " + svc.Spec.ClusterIPs[0],
			"host resolver (getent ahosts web.demo.svc): ",
			"Service demo/web (ClusterIP)",
			"rule: nftables",
			pod.IPv4 + ":8080 [ready,serving] on ",
			"gets traffic (ready)",
			"route: via " + tb.Nodes[0].IPv4 + " dev eth0",
			"probe: TCP connected in ",
			`said "web-1"`,
			"through the ClusterIP: TCP connected",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("explain: no %q in:\n%s", want, s)
			}
		}
		// The connection counters of the port, from the agent's /metrics
		// (their exact counting is TestServiceConnectionCounters').
		if !strings.Contains(s, "traffic from this host:\n    bridge_agent_service_connections_total protocol=TCP ") {
			t.Errorf("explain: no connection counter of the port in:\n%s", s)
		}
		t.Logf("explain:\n%s", s)
	})

	t.Run("no route to the Service range", func(t *testing.T) {
		for _, c := range tb.ServiceCIDRs {
			vmExec(ctx, t, "ip", "route", "del", c)
		}
		rep, code := runDoctor(ctx, t, a, a.ConfigPath)
		status, err := a.Run(ctx, "status")
		serviceRoutes(ctx, t)
		wantFailure(t, rep, code, "route to Service range "+tb.ServiceCIDRs[0], "no route", "ip route add "+tb.ServiceCIDRs[0])
		if err != nil || !strings.Contains(string(status), "! route to Service range "+tb.ServiceCIDRs[0]+": the kernel has no route") {
			t.Errorf("status does not tell of the missing route: %v\n%s", err, status)
		}
	})

	t.Run("an endpoint in an unrouted range", func(t *testing.T) {
		const lost = "10.99.0.5"
		s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "lost", Namespace: ns},
			Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}}}
		if _, err := tb.Client.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = tb.Client.CoreV1().Services(ns).Delete(context.Background(), "lost", metav1.DeleteOptions{})
		})
		ready := true
		eps := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "lost-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "lost"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{lost}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			Ports:       []discoveryv1.EndpointPort{{Name: new("http"), Port: new(int32(8080)), Protocol: new(v1.ProtocolTCP)}},
		}
		if _, err := tb.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, eps, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = tb.Client.DiscoveryV1().EndpointSlices(ns).Delete(context.Background(), "lost-1", metav1.DeleteOptions{})
		})
		if _, err := a.WaitStatus(ctx, 20*time.Second, func(st *daemon.Status) bool { return len(endpointsOf(st, ns, "lost")) == 1 }); err != nil {
			t.Fatal(err)
		}
		rep, code := runDoctor(ctx, t, a, a.ConfigPath)
		wantFailure(t, rep, code, "routes to endpoints", lost+" (demo/lost)", "routes.mode gateway")
		if status, err := a.Run(ctx, "status"); err != nil || !strings.Contains(string(status), "! routes to endpoints: 1 of ") || !strings.Contains(string(status), lost+" (demo/lost)") {
			t.Errorf("status does not tell of the unrouted endpoint: %v\n%s", err, status)
		}
	})

	t.Run("wrong CA", func(t *testing.T) {
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := tb.WriteKubeconfig(kc, "", agentToken(t), otherCA(t)); err != nil {
			t.Fatal(err)
		}
		cfg := altConfig(t, a, kc)
		rep, code := runDoctor(ctx, t, a, cfg)
		wantFailure(t, rep, code, "API server", "wrong CA", "--ca-file")
		out, err := checkKubeconfig(ctx, a, cfg)
		if err == nil || !strings.Contains(out, "wrong CA") || !strings.Contains(out, "fix: write the kubeconfig again") {
			t.Errorf("kubeconfig --check with the wrong CA: %v:\n%s", err, out)
		}
	})

	t.Run("wrong server", func(t *testing.T) {
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		// The control plane's address, a port where nothing listens.
		server := strings.Replace(tb.APIServerURL, ":6443", ":6444", 1)
		if err := tb.WriteKubeconfig(kc, server, agentToken(t), nil); err != nil {
			t.Fatal(err)
		}
		out, err := checkKubeconfig(ctx, a, altConfig(t, a, kc))
		if err == nil || !strings.Contains(out, "connection refused") || !strings.Contains(out, "fix: set the kubeconfig's server:") {
			t.Errorf("kubeconfig --check with a wrong server: %v:\n%s", err, out)
		}
	})

	t.Run("garbage token", func(t *testing.T) {
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := tb.WriteKubeconfig(kc, "", "not-a-token", nil); err != nil {
			t.Fatal(err)
		}
		rep, code := runDoctor(ctx, t, a, altConfig(t, a, kc))
		wantFailure(t, rep, code, "API server", "401 Unauthorized", "create token")
	})

	t.Run("token without RBAC", func(t *testing.T) {
		tok, err := tb.ServiceAccountToken(ctx, "bridge-agent", "norbac")
		if err != nil {
			t.Fatal(err)
		}
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := tb.WriteKubeconfig(kc, "", tok, nil); err != nil {
			t.Fatal(err)
		}
		cfg := altConfig(t, a, kc)
		rep, code := runDoctor(ctx, t, a, cfg)
		wantFailure(t, rep, code, "RBAC", "may not get services, list services, watch services", "kubectl apply -f /usr/share/bridge-agent/rbac.yaml")
		out, err := checkKubeconfig(ctx, a, cfg)
		if err == nil || !strings.Contains(out, "may not get services") || !strings.Contains(out, "fix: on the cluster") {
			t.Errorf("kubeconfig --check without RBAC: %v:\n%s", err, out)
		}
	})

	t.Run("expired token", func(t *testing.T) {
		tok, err := tb.ExpiredServiceAccountToken(ctx, "bridge-agent", "bridge-agent")
		if err != nil {
			t.Fatal(err)
		}
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := tb.WriteKubeconfig(kc, "", tok, nil); err != nil {
			t.Fatal(err)
		}
		rep, code := runDoctor(ctx, t, a, altConfig(t, a, kc))
		wantFailure(t, rep, code, "credential expiry", "the token expired at", "create token")
		// The API server itself says no to it: the expiry is real.
		wantFailure(t, rep, code, "API server", "401 Unauthorized): it has expired", "create token")
	})

	t.Run("resolver not wired", func(t *testing.T) {
		// The VM's resolv.conf names only its site's resolver, as before
		// the agent wired it.
		path := filepath.Join(t.TempDir(), "resolv.conf")
		if err := os.WriteFile(path, []byte(testbed.HostResolvConf), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := tb.SetVMResolvConf(path); err != nil {
			t.Fatal(err)
		}
		rep, code := runDoctor(ctx, t, a, a.ConfigPath)
		if err := tb.SetVMResolvConf(filepath.Join(a.HostRoot, "etc", "resolv.conf")); err != nil {
			t.Fatal(err)
		}
		wantFailure(t, rep, code, "host resolver", "does not resolve through the host's resolver", "check that /etc/resolv.conf names 127.")
	})

	t.Run("without the agent, fewer checks, saying so", func(t *testing.T) {
		if err := a.Stop(); err != nil {
			t.Fatal(err)
		}
		rep, _ := runDoctor(ctx, t, a, a.ConfigPath)
		if !strings.HasPrefix(rep.Agent, "not running") {
			t.Errorf("agent: %q", rep.Agent)
		}
		var skipped, rbac bool
		for _, c := range rep.Checks {
			skipped = skipped || c.Verdict == doctor.Skip && strings.Contains(c.Detail, "the agent does not run")
			rbac = rbac || c.Name == "RBAC" && c.Verdict == doctor.OK
		}
		if !skipped || !rbac {
			var text strings.Builder
			rep.WriteText(&text)
			t.Errorf("without the agent: want the live checks skipped and the others run:\n%s", text.String())
		}
	})
}

// TestStatusLineFollowsOutage: after the first sync, an API server outage
// shows in systemd's one-line STATUS= (what `systemctl status` prints), with
// since when and why, while the agent serves the last rules; when the API
// server returns, the line says ready again.
func TestStatusLineFollowsOutage(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var mu sync.Mutex
	var statuses []string
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				if s, ok := strings.CutPrefix(l, "STATUS="); ok {
					mu.Lock()
					statuses = append(statuses, s)
					mu.Unlock()
				}
			}
		}
	}()
	waitStatusLine := func(what, prefix string, after int) int {
		t.Helper()
		var at int
		waitFor(t, 60*time.Second, what, func() error {
			mu.Lock()
			defer mu.Unlock()
			for i := after; i < len(statuses); i++ {
				if strings.HasPrefix(statuses[i], prefix) {
					at = i
					return nil
				}
			}
			return fmt.Errorf("STATUS= lines so far: %q", statuses)
		})
		return at
	}
	a := newAgent(t, false, nil, "NOTIFY_SOCKET="+sock)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	i := waitStatusLine("ready", "ready: ", 0)
	if err := tb.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = tb.StartAPIServer(context.Background())
		}
	})
	i = waitStatusLine("the outage in STATUS=", "API server unreachable since ", i)
	mu.Lock()
	line := statuses[i]
	mu.Unlock()
	if !strings.Contains(line, "serving the last rules") || !strings.Contains(line, "connection refused") {
		t.Errorf("STATUS= during the outage: %q", line)
	}
	rep, _ := runDoctor(ctx, t, a, a.ConfigPath)
	var agentCheck *doctor.Check
	for k := range rep.Checks {
		if rep.Checks[k].Name == "agent" {
			agentCheck = &rep.Checks[k]
		}
	}
	if agentCheck == nil || agentCheck.Verdict != doctor.Warn || !strings.Contains(agentCheck.Detail, "unreachable since") {
		t.Errorf("doctor's agent check during the outage: %+v", agentCheck)
	}
	if err := tb.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	waitStatusLine("ready again in STATUS=", "ready: ", i)
	if out, err := a.Run(ctx, "status"); err != nil || strings.Contains(string(out), "last error") {
		t.Errorf("status after the API server returned still shows an error: %v\n%s", err, out)
	}
	t.Logf("STATUS= lines: %q", statuses)
}
