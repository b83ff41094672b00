package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/member"
	"github.com/bridge-agent/bridge-agent/internal/testbed"
)

// admin runs a bridge-agent admin command (host, hosts) with the sandbox's
// admin kubeconfig, from the VM namespace (which reaches the API server).
func admin(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{agentBin}, args...)
	argv = append(argv, "--kubeconfig", tb.AdminKubeconfig)
	cmd := tb.Command(tb.VMNetns, argv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("bridge-agent %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

// hostClient is a client of the sandbox acting with a host's token.
func hostClient(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	rc := rest.CopyConfig(tb.AdminConfig)
	rc.BearerToken, rc.BearerTokenFile = token, ""
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// poll calls cond every interval until it holds or timeout passes.
func poll(t *testing.T, timeout, interval time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// watchReady polls the agent's /readyz every 250 ms in the background and
// records every answer that is not 200.
func watchReady(ctx context.Context, a *testbed.Agent) *ruleWatch {
	url := "http://" + a.Config.HealthzBindAddress + "/readyz"
	return watchSamples(250*time.Millisecond, func() error {
		code, body, err := httpGet(ctx, url)
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %q", code, body)
		}
		return err
	})
}

// TestHostIdentity follows README's "Install on a VM" with a host identity:
// `host add` on the cluster writes a bundle, `join` installs it (mode 0600,
// checked against the API server), the agent runs on its own
// ServiceAccount. Its token, 10 minutes (the TokenRequest minimum), is
// renewed every minute (member.tokenRenewPercent 10) and the test runs past
// the expiry of the token join installed: the agent stays ready and its
// rules in place throughout (sampled), and its Lease is still renewed after
// that token expired, which only a renewed token read from the file can
// do. Meanwhile the admission policy and RBAC refuse, with the real API
// server, host A writing host B's Lease (and any other), a Service or an
// EndpointSlice (even with RBAC granted by mistake) and reading Secrets.
// `hosts` shows the host alive with its facts, EXPIRED once the agent is
// stopped for the Lease's duration; `host remove` makes the running agent
// report unauthorized with its rules untouched; an agent started with a
// token that expired says so and what to run, exit status 78.
func TestHostIdentity(t *testing.T) {
	requireTestbed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	serviceRoutes(ctx, t)
	const ns = "member"
	sel := map[string]string{"app": "member"}
	createPod(ctx, t, httpPod(ns, "member-1", 1, sel))
	svc := createService(ctx, t, ns, "web", v1.ProtocolTCP, 80, "http", sel)
	addr := net.JoinHostPort(svc.Spec.ClusterIPs[0], "80")

	// Without the opt-in policy, host add refuses.
	dir := t.TempDir()
	bundle := filepath.Join(dir, "vm1.join.yaml")
	if out, err := admin(ctx, "host", "add", "vm1", "-o", bundle); err == nil || !strings.Contains(out, "member-policy.yaml") {
		t.Fatalf("host add without the policy: %v, want a refusal naming deploy/member-policy.yaml: %s", err, out)
	}
	if err := tb.ApplyMemberPolicy(ctx); err != nil {
		t.Fatal(err)
	}
	out, err := admin(ctx, "host", "add", "vm1", "--token-ttl", "10m", "-o", bundle)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host add: %s", out)
	t.Cleanup(func() { _, _ = admin(context.Background(), "host", "remove", "vm1") })
	if fi, err := os.Stat(bundle); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bundle: %v, mode %v, want 0600", err, fi.Mode())
	}
	b, err := member.ReadBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	bundleClaims, err := member.ParseToken(b.Token)
	if err != nil {
		t.Fatal(err)
	}
	if bundleClaims.Lifetime() != 10*time.Minute || bundleClaims.Host() != "vm1" {
		t.Fatalf("bundle token: lifetime %s of %s/%s, want 10m of bridge-agent/bridge-agent-vm1", bundleClaims.Lifetime(), bundleClaims.Namespace, bundleClaims.ServiceAccount)
	}

	// The VM: a configuration whose kubeconfig does not exist yet.
	a := newAgent(t, false, func(c *config.Config) {
		c.Kubeconfig = filepath.Join(c.HostRoot, "etc", "bridge-agent", "kubeconfig")
		c.Member.RenewInterval.Duration = time.Second
		c.Member.LeaseDuration.Duration = 4 * time.Second
		c.Member.TokenLifetime.Duration = config.MinTokenLifetime
		c.Member.TokenRenewPercent = 10
	})
	out2, err := a.Run(ctx, "join", bundle)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("join: %s", out2)
	tokenPath := filepath.Join(filepath.Dir(a.Config.Kubeconfig), member.TokenFileName)
	for _, f := range []string{a.Config.Kubeconfig, tokenPath} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, want mode 0600", f, err)
		}
	}
	joined, err := member.ReadToken(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if joined.Host() != "vm1" || joined.Lifetime() != config.MinTokenLifetime {
		t.Fatalf("joined token: host %q lifetime %s", joined.Host(), joined.Lifetime())
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := a.WaitReady(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Member == nil || st.Member.Host != "vm1" || st.Member.ServiceAccount != "bridge-agent/bridge-agent-vm1" {
		t.Fatalf("status member: %+v, want host vm1", st.Member)
	}
	waitFor(t, 20*time.Second, "the Service through the agent", func() error { _, err := askTCP(ctx, addr); return err })
	rules := watchRules(ctx)
	ready := watchReady(ctx, a)

	// The Lease carries the facts.
	leases := tb.Client.CoordinationV1().Leases(member.Namespace)
	var lease *coordinationv1.Lease
	poll(t, 30*time.Second, 500*time.Millisecond, "the host's Lease with its facts", func() error {
		l, err := leases.Get(ctx, "bridge-agent-vm1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		an := l.Annotations
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "vm1" || an[member.AnnotationReady] != "true" ||
			an[member.AnnotationBackend] == "" || an[member.AnnotationBackend] == "none" || an[member.AnnotationRules] == "0" ||
			an[member.AnnotationServices] == "0" || an[member.AnnotationVersion] == "" || an[member.AnnotationTokenExpiry] == "" ||
			*l.Spec.LeaseDurationSeconds != 4 {
			return fmt.Errorf("lease %s: holder %v, duration %v, annotations %v", l.Name, l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, an)
		}
		lease = l
		return nil
	})
	t.Logf("lease annotations: %v", lease.Annotations)
	hostsOut, err := admin(ctx, "hosts")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hosts:\n%s", hostsOut)
	if !hostLine(hostsOut, "vm1", "alive", "true", lease.Annotations[member.AnnotationBackend]) {
		t.Fatalf("hosts: no line for vm1 alive, ready, %s:\n%s", lease.Annotations[member.AnnotationBackend], hostsOut)
	}

	checkHostRestrictions(ctx, t, a, tokenPath)

	// Renewal: every minute; run past the joined token's expiry.
	poll(t, 3*time.Minute, time.Second, "the first token renewal", func() error {
		st, err := a.Status(ctx)
		if err != nil {
			return err
		}
		if st.Member.Renewals < 1 {
			return fmt.Errorf("renewals %d, next %s, error %q", st.Member.Renewals, st.Member.NextRenewal, st.Member.RenewError)
		}
		return nil
	})
	renewed, err := member.ReadToken(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(tokenPath); fi.Mode().Perm() != 0o600 || !renewed.IssuedAt.After(joined.IssuedAt) {
		t.Fatalf("renewed token: mode %v, issued %s, joined token issued %s", fi.Mode(), renewed.IssuedAt, joined.IssuedAt)
	}
	past := joined.Expiry.Add(5 * time.Second)
	t.Logf("token renewed at %s; waiting until %s, past the expiry of the joined token", renewed.IssuedAt.Format(time.TimeOnly), past.Format(time.TimeOnly))
	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(time.Until(past)):
	}
	poll(t, 15*time.Second, 500*time.Millisecond, "a Lease renewal after the joined token expired", func() error {
		l, err := leases.Get(ctx, "bridge-agent-vm1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !l.Spec.RenewTime.After(joined.Expiry) {
			return fmt.Errorf("renewed %s, joined token expired %s", l.Spec.RenewTime.Time, joined.Expiry)
		}
		return nil
	})
	st, err = a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Member.Renewals < 8 || st.Member.RenewError != "" || st.Member.LeaseError != "" || !st.Member.TokenExpiry.After(time.Now()) {
		t.Fatalf("after the joined token expired: ready %v, member %+v", st.Ready, st.Member)
	}
	_, metrics, err := httpGet(ctx, "http://"+a.Config.MetricsBindAddress+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("bridge_agent_credential_expiry_timestamp_seconds %g", float64(st.Member.TokenExpiry.Unix())); !strings.Contains(metrics, want) {
		t.Errorf("metrics: want %q", want)
	}
	samples, gaps := ready.finish()
	if len(gaps) > 0 || samples < 100 {
		t.Errorf("readiness through %d renewals: %d samples, not ready at %v", st.Member.Renewals, samples, gaps)
	}
	samples, gaps = rules.finish()
	if len(gaps) > 0 || samples < 100 {
		t.Errorf("rules through %d renewals: %d samples, missing at %v", st.Member.Renewals, samples, gaps)
	}
	t.Logf("%d renewals; ready and rules in place throughout (%d samples)", st.Member.Renewals, samples)

	// Stopped: EXPIRED once the Lease's 4 s passed.
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	poll(t, 15*time.Second, 500*time.Millisecond, "hosts marking vm1 EXPIRED", func() error {
		out, err := admin(ctx, "hosts")
		if err != nil {
			return err
		}
		if !hostLine(out, "vm1", "EXPIRED") {
			return fmt.Errorf("hosts:\n%s", out)
		}
		hostsOut = out
		return nil
	})
	if since := time.Since(stopped); since < 3*time.Second {
		t.Errorf("vm1 marked expired %s after the agent stopped, before the Lease's 4 s", since)
	}
	t.Logf("hosts after the stop:\n%s", hostsOut)

	// Started again, then removed on the cluster: unauthorized, rules kept.
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rules = watchRules(ctx)
	if out, err := admin(ctx, "host", "remove", "vm1"); err != nil || !strings.Contains(out, "ServiceAccount bridge-agent-vm1") {
		t.Fatalf("host remove: %v: %s", err, out)
	}
	st, err = a.WaitStatus(ctx, 30*time.Second, func(s *daemon.Status) bool { return s.Member != nil && s.Member.Unauthorized })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Member.LeaseError, "Unauthorized") || !strings.Contains(st.Member.LeaseError, "bridge-agent host add vm1") {
		t.Errorf("lease error after host remove: %q", st.Member.LeaseError)
	}
	text, err := a.Run(ctx, "status")
	if err != nil || !strings.Contains(string(text), "UNAUTHORIZED") {
		t.Errorf("status after host remove: %v:\n%s", err, text)
	}
	time.Sleep(5 * time.Second)
	if _, err := askTCP(ctx, addr); err != nil {
		t.Errorf("the Service after host remove: %v", err)
	}
	samples, gaps = rules.finish()
	if len(gaps) > 0 || a.Exited() {
		t.Errorf("rules after host remove: %d samples, missing at %v; agent exited %v", samples, gaps, a.Exited())
	}

	// A token that expired while the agent was off: the bundle's, long expired.
	if !time.Now().After(b.Expires) {
		t.Fatalf("the bundle's token has not expired yet (%s)", b.Expires)
	}
	offDir := t.TempDir()
	offToken := filepath.Join(offDir, "token")
	writeFile(t, offToken, []byte(b.Token), 0o600)
	kc, err := member.Kubeconfig("vm1", b.Server, b.CertificateAuthorityData, offToken)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(offDir, "kubeconfig"), kc, 0o600)
	off := tb.Command(tb.VMNetns, agentBin, "run", "--config", a.ConfigPath, "--kubeconfig", filepath.Join(offDir, "kubeconfig"))
	offOut, err := off.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 78 || !strings.Contains(string(offOut), "credentials of host vm1 expired at") ||
		!strings.Contains(string(offOut), "bridge-agent host add vm1") {
		t.Errorf("agent with an expired token: %v, want exit status 78 saying so and what to run:\n%s", err, offOut)
	}
	t.Logf("agent with an expired token: %s", offOut)
}

// hostLine reports whether the hosts table has a line for host with every
// one of fields as a column.
func hostLine(table, host string, fields ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		cols := strings.Fields(line)
		if len(cols) == 0 || cols[0] != host {
			continue
		}
		ok := true
		for _, f := range fields {
			found := false
			for _, c := range cols {
				found = found || c == f
			}
			ok = ok && found
		}
		if ok {
			return true
		}
	}
	return false
}

// checkHostRestrictions: host vm1's own token, against the real API
// server, may not write host B's Lease or any Lease but its own, request
// host B's tokens, write a Service or an EndpointSlice (also when RBAC
// grants it by mistake: the admission policy refuses), or read Secrets.
func checkHostRestrictions(ctx context.Context, t *testing.T, a *testbed.Agent, tokenPath string) {
	t.Helper()
	tok, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	hostA := hostClient(t, string(tok))
	bundleB := filepath.Join(t.TempDir(), "b.join.yaml")
	if _, err := admin(ctx, "host", "add", "hostb", "--token-ttl", "10m", "-o", bundleB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin(context.Background(), "host", "remove", "hostb") })
	bb, err := member.ReadBundle(bundleB)
	if err != nil {
		t.Fatal(err)
	}
	// Host B writes its own Lease: allowed.
	hostB := hostClient(t, bb.Token)
	leaseB := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "bridge-agent-hostb", Namespace: member.Namespace,
		Labels: map[string]string{member.HostLabel: "hostb"}}, Spec: coordinationv1.LeaseSpec{HolderIdentity: new("hostb")}}
	if _, err := hostB.CoordinationV1().Leases(member.Namespace).Create(ctx, leaseB, metav1.CreateOptions{}); err != nil {
		t.Fatalf("host B creating its own Lease: %v", err)
	}
	leasesA := hostA.CoordinationV1().Leases(member.Namespace)
	policyRefusal := "bridge-agent host credentials bridge-agent-vm1 may write only Lease bridge-agent/bridge-agent-vm1"
	expect := func(what string, err error, contains string) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("host A %s: allowed, want refused", what)
		case !apierrors.IsForbidden(err):
			t.Errorf("host A %s: %v, want Forbidden", what, err)
		case !strings.Contains(err.Error(), contains):
			t.Errorf("host A %s: %v, want %q in the error", what, err, contains)
		default:
			t.Logf("host A %s: refused: %v", what, err)
		}
	}
	// Host B's Lease, by update (RBAC: by name) and by delete.
	_, err = leasesA.Get(ctx, "bridge-agent-hostb", metav1.GetOptions{})
	expect("reading host B's Lease", err, `cannot get resource "leases"`)
	got, err := tb.Client.CoordinationV1().Leases(member.Namespace).Get(ctx, "bridge-agent-hostb", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.HolderIdentity = new("vm1")
	_, err = leasesA.Update(ctx, got, metav1.UpdateOptions{})
	expect("updating host B's Lease", err, `cannot update resource "leases"`)
	err = leasesA.Delete(ctx, "bridge-agent-hostb", metav1.DeleteOptions{})
	expect("deleting host B's Lease", err, `cannot delete resource "leases"`)
	// A Lease of a host that has none yet, and any other Lease: only the
	// admission policy can refuse a create.
	for _, name := range []string{"bridge-agent-hostc", "kube-scheduler"} {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: member.Namespace}}
		_, err = leasesA.Create(ctx, l, metav1.CreateOptions{})
		expect("creating Lease "+name, err, policyRefusal)
	}
	// Host B's tokens.
	_, err = hostA.CoreV1().ServiceAccounts(member.Namespace).CreateToken(ctx, "bridge-agent-hostb", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))}}, metav1.CreateOptions{})
	expect("requesting host B's token", err, `cannot create resource "serviceaccounts/token"`)
	// Services and EndpointSlices: RBAC refuses...
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "evil", Namespace: "member"},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80}}}}
	_, err = hostA.CoreV1().Services("member").Create(ctx, svc, metav1.CreateOptions{})
	expect("creating a Service", err, `cannot create resource "services"`)
	eps := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "evil", Namespace: "member",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.99"}}}}
	_, err = hostA.DiscoveryV1().EndpointSlices("member").Create(ctx, eps, metav1.CreateOptions{})
	expect("creating an EndpointSlice", err, `cannot create resource "endpointslices"`)
	// ...and when RBAC lets the host write them by mistake, the policy does.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "too-much", Namespace: "member"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"create", "update", "delete"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"create", "update", "delete"}},
	}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "too-much", Namespace: "member"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "too-much"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "bridge-agent-vm1", Namespace: member.Namespace}}}
	if _, err := tb.Client.RbacV1().Roles("member").Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Client.RbacV1().RoleBindings("member").Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = tb.Client.RbacV1().RoleBindings("member").Delete(context.Background(), "too-much", metav1.DeleteOptions{})
		_ = tb.Client.RbacV1().Roles("member").Delete(context.Background(), "too-much", metav1.DeleteOptions{})
	}()
	poll(t, 10*time.Second, 200*time.Millisecond, "RBAC granting host A services create", func() error {
		_, err := hostA.CoreV1().Services("member").Create(ctx, svc, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil && strings.Contains(err.Error(), "cannot create resource") {
			return err
		}
		return nil
	})
	_, err = hostA.CoreV1().Services("member").Create(ctx, svc, metav1.CreateOptions{})
	expect("creating a Service with RBAC granted", err, policyRefusal)
	_, err = hostA.DiscoveryV1().EndpointSlices("member").Create(ctx, eps, metav1.CreateOptions{})
	expect("creating an EndpointSlice with RBAC granted", err, policyRefusal)
	err = hostA.CoreV1().Services("member").Delete(ctx, "web", metav1.DeleteOptions{})
	expect("deleting a Service with RBAC granted", err, policyRefusal)
	// Secrets: not readable.
	_, err = hostA.CoreV1().Secrets("member").List(ctx, metav1.ListOptions{})
	expect("listing Secrets", err, `cannot list resource "secrets"`)
	_, err = hostA.CoreV1().Secrets(member.Namespace).Get(ctx, "anything", metav1.GetOptions{})
	expect("reading a Secret", err, `cannot get resource "secrets"`)
}
