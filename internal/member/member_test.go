package member

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/deploy"
)

// jwt makes an unsigned ServiceAccount token with the given claims.
func jwt(ns, sa string, iat, exp time.Time) string {
	payload, _ := json.Marshal(map[string]any{
		"iat": iat.Unix(), "exp": exp.Unix(), "sub": "system:serviceaccount:" + ns + ":" + sa,
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]any{"name": sa, "uid": "u"}},
	})
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(payload) + "." + enc([]byte("sig"))
}

func TestParseToken(t *testing.T) {
	iat := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name, token, host string
		err               error
	}{
		{"host", jwt("bridge-agent", "bridge-agent-vm1", iat, iat.Add(time.Hour)), "vm1", nil},
		{"shared account", jwt("bridge-agent", "bridge-agent", iat, iat.Add(time.Hour)), "", nil},
		{"other namespace", jwt("default", "bridge-agent-vm1", iat, iat.Add(time.Hour)), "", nil},
		{"bad host name", jwt("bridge-agent", "bridge-agent-VM_1", iat, iat.Add(time.Hour)), "", nil},
		{"static token", "abcdef0123456789", "", ErrNotServiceAccountToken},
		{"exp before iat", jwt("bridge-agent", "bridge-agent-vm1", iat, iat.Add(-time.Hour)), "", ErrNotServiceAccountToken},
		{"garbage payload", "a.!!!.c", "", ErrNotServiceAccountToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseToken(tc.token + "\n")
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if c.Host() != tc.host {
				t.Errorf("host %q, want %q", c.Host(), tc.host)
			}
			if c.Lifetime() != time.Hour || !c.IssuedAt.Equal(iat) {
				t.Errorf("lifetime %s issued %s", c.Lifetime(), c.IssuedAt)
			}
		})
	}
}

func TestRenewAtAndExpiry(t *testing.T) {
	iat := time.Unix(1_800_000_000, 0)
	c, err := ParseToken(jwt("bridge-agent", "bridge-agent-vm1", iat, iat.Add(24*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.RenewAt(80), iat.Add(19*time.Hour+12*time.Minute); !got.Equal(want) {
		t.Errorf("RenewAt(80) %s, want %s", got, want)
	}
	if got, want := c.RenewAt(10), iat.Add(144*time.Minute); !got.Equal(want) {
		t.Errorf("RenewAt(10) %s, want %s", got, want)
	}
	if err := CheckNotExpired(c, iat.Add(23*time.Hour)); err != nil {
		t.Errorf("before expiry: %v", err)
	}
	err = CheckNotExpired(c, iat.Add(24*time.Hour+21*24*time.Hour))
	var ee *ExpiredError
	if !errors.As(err, &ee) {
		t.Fatalf("after expiry: %v, want *ExpiredError", err)
	}
	for _, want := range []string{"host vm1 expired at 2027-01-16T08:00:00Z", "504h0m0s ago", "bridge-agent host add vm1", "bridge-agent join BUNDLE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}

func TestCheckHostName(t *testing.T) {
	for name, ok := range map[string]bool{
		"vm1": true, "db-01": true, "a": true, strings.Repeat("a", 50): true,
		"": false, "-a": false, "a-": false, "VM1": false, "a.b": false, "a_b": false, strings.Repeat("a", 51): false,
		// The shared node route table's objects are bridge-agent-node-routes*.
		"node-routes": false, "node-routes-writer": false, "node-routes-reader": false, "nodes": true,
	} {
		if err := CheckHostName(name); (err == nil) != ok {
			t.Errorf("CheckHostName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}

func TestBundleRoundTrip(t *testing.T) {
	b := &Bundle{APIVersion: BundleAPIVersion, Kind: BundleKind, Host: "vm1", Namespace: Namespace,
		Server: "https://10.0.0.2:6443", CertificateAuthorityData: []byte("-----BEGIN CERTIFICATE-----\n"),
		Token: "a.b.c", Expires: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseBundle(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	bad := *b
	bad.Host, bad.Server, bad.Token = "VM", "http://x", ""
	data, _ = bad.Marshal()
	_, err = ParseBundle(data)
	for _, want := range []string{`host name "VM"`, `server "http://x"`, "token is empty"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad bundle: %v, want %q", err, want)
		}
	}
	if _, err := ParseBundle([]byte("kind: Other\n")); err == nil || !strings.Contains(err.Error(), "bridge-agent host add") {
		t.Errorf("other kind: %v", err)
	}
}

// newFakeCluster is a fake clientset with deploy/rbac.yaml's ClusterRole and
// the member policy binding, which issues tokens of the ServiceAccount asked.
func newFakeCluster(objs ...runtime.Object) *fake.Clientset {
	objs = append(objs,
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: ReadOnlyClusterRole}},
		&admissionv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: PolicyName}})
	cs := fake.NewClientset(objs...)
	cs.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		ca := a.(k8stesting.CreateActionImpl)
		tr := ca.GetObject().(*authenticationv1.TokenRequest)
		now := time.Now().Truncate(time.Second)
		exp := now.Add(time.Duration(*tr.Spec.ExpirationSeconds) * time.Second)
		tr.Status = authenticationv1.TokenRequestStatus{Token: jwt(a.GetNamespace(), ca.Name, now, exp), ExpirationTimestamp: metav1.NewTime(exp)}
		return true, tr, nil
	})
	return cs
}

func TestAddAndRemoveHost(t *testing.T) {
	ctx := context.Background()
	cs := newFakeCluster()
	b, err := AddHost(ctx, cs, AddOptions{Host: "vm1", Server: "https://10.0.0.2:6443", CA: []byte("ca"), TokenTTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseToken(b.Token)
	if err != nil || c.Host() != "vm1" || c.Lifetime() != 10*time.Minute {
		t.Fatalf("bundle token: %+v %v", c, err)
	}
	role, err := cs.RbacV1().Roles(Namespace).Get(ctx, "bridge-agent-vm1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Every right but create is limited to the host's own objects by name.
	for _, r := range role.Rules {
		if !(len(r.Verbs) == 1 && r.Verbs[0] == "create" && r.Resources[0] == "leases") &&
			!cmp.Equal(r.ResourceNames, []string{"bridge-agent-vm1"}) {
			t.Errorf("rule %+v not limited to bridge-agent-vm1", r)
		}
	}
	crb, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, "bridge-agent-vm1", metav1.GetOptions{})
	if err != nil || crb.RoleRef.Name != ReadOnlyClusterRole || crb.Subjects[0].Name != "bridge-agent-vm1" {
		t.Fatalf("cluster role binding: %+v %v", crb, err)
	}
	// Again: a new bundle for the same host.
	if _, err := AddHost(ctx, cs, AddOptions{Host: "vm1", Server: "https://x", CA: []byte("ca")}); err != nil {
		t.Fatalf("second add: %v", err)
	}
	deleted, err := RemoveHost(ctx, cs, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ServiceAccount bridge-agent-vm1", "RoleBinding bridge-agent-vm1", "Role bridge-agent-vm1", "ClusterRoleBinding bridge-agent-vm1"}
	if diff := cmp.Diff(want, deleted); diff != "" {
		t.Errorf("deleted (-want +got):\n%s", diff)
	}
	if _, err := RemoveHost(ctx, cs, "vm1"); err == nil || !strings.Contains(err.Error(), "no host vm1") {
		t.Errorf("second remove: %v", err)
	}
}

func TestAddHostRefusals(t *testing.T) {
	ctx := context.Background()
	o := AddOptions{Host: "vm1", Server: "https://x", CA: []byte("ca")}
	if _, err := AddHost(ctx, fake.NewClientset(), o); err == nil || !strings.Contains(err.Error(), "deploy/rbac.yaml") {
		t.Errorf("without rbac.yaml: %v", err)
	}
	cs := fake.NewClientset(&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: ReadOnlyClusterRole}})
	if _, err := AddHost(ctx, cs, o); err == nil || !strings.Contains(err.Error(), "deploy/member-policy.yaml") {
		t.Errorf("without the policy: %v", err)
	}
	o.TokenTTL = time.Minute
	if _, err := AddHost(ctx, newFakeCluster(), o); err == nil || !strings.Contains(err.Error(), "at least 10m") {
		t.Errorf("one-minute token: %v", err)
	}
	// A ServiceAccount of that name that is not a host's is left alone.
	o.TokenTTL = 0
	cs = newFakeCluster()
	_, _ = cs.CoreV1().ServiceAccounts(Namespace).Create(ctx, &corev1ServiceAccount, metav1.CreateOptions{})
	if _, err := AddHost(ctx, cs, o); err == nil || !strings.Contains(err.Error(), "not a host's") {
		t.Errorf("foreign ServiceAccount: %v", err)
	}
	if _, err := RemoveHost(ctx, cs, "vm1"); err == nil {
		t.Errorf("removing a foreign ServiceAccount: no error")
	}
	if _, err := cs.CoreV1().ServiceAccounts(Namespace).Get(ctx, "bridge-agent-vm1", metav1.GetOptions{}); err != nil {
		t.Errorf("foreign ServiceAccount gone: %v", err)
	}
}

func TestListAndWriteHosts(t *testing.T) {
	now := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	lease := func(host string, renewed time.Time, f Facts) *coordinationv1.Lease {
		l := &coordinationv1.Lease{}
		setLease(l, host, 40*time.Second, renewed, f)
		return l
	}
	cs := newFakeCluster(
		lease("alive", now.Add(-5*time.Second), Facts{Version: "0.2.0", Backend: "nftables", Services: 12, Rules: 80, Routes: 2, Ready: true, TokenExpiry: now.Add(20 * time.Hour)}),
		lease("gone", now.Add(-41*time.Second), Facts{Version: "0.1.0", Backend: "iptables", LastError: "proxy: iptables-restore: exit status 1", TokenExpiry: now.Add(-time.Hour)}),
		lease("orphan", now, Facts{Version: "0.2.0"}),
	)
	ctx := context.Background()
	for _, h := range []string{"alive", "gone", "new"} {
		if _, err := AddHost(ctx, cs, AddOptions{Host: h, Server: "https://x", CA: []byte("ca")}); err != nil {
			t.Fatal(err)
		}
	}
	hosts, err := ListHosts(ctx, cs, now)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteHosts(&buf, hosts, now); err != nil {
		t.Fatal(err)
	}
	want := `NAME    STATE       VERSION  LAST HEARTBEAT  READY  BACKEND   SERVICES  RULES  ROUTES  TOKEN EXPIRES    LAST ERROR
alive   alive       0.2.0    5s ago          true   nftables  12        80     2       in 20h           -
gone    EXPIRED     0.1.0    41s ago         false  iptables  0         0      0       EXPIRED 60m ago  proxy: iptables-restore: exit status 1
new     not joined  -        -               -      -         -         -      -       -                -
orphan  removed     0.2.0    0s ago          false  -         0         0      0       -                -
`
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("hosts table (-want +got):\n%s", diff)
	}
}

func TestSetLeaseKeepsAcquireTime(t *testing.T) {
	t0 := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &coordinationv1.Lease{}
	setLease(l, "vm1", 40*time.Second, t0, Facts{Ready: true})
	setLease(l, "vm1", 40*time.Second, t0.Add(10*time.Second), Facts{})
	if !l.Spec.AcquireTime.Time.Equal(t0) || !l.Spec.RenewTime.Time.Equal(t0.Add(10*time.Second)) || *l.Spec.LeaseDurationSeconds != 40 || *l.Spec.HolderIdentity != "vm1" {
		t.Errorf("lease spec %+v", l.Spec)
	}
	if l.Annotations[AnnotationReady] != "false" || l.Labels[HostLabel] != "vm1" {
		t.Errorf("lease metadata %+v", l.ObjectMeta)
	}
	long := strings.Repeat("x", 5000)
	setLease(l, "vm1", 40*time.Second, t0, Facts{LastError: long})
	if n := len(l.Annotations[AnnotationLastError]); n != maxErrorLen+3 {
		t.Errorf("last error annotation of %d bytes", n)
	}
}

// TestAgentRenewsTokenAndLease runs the agent against a fake cluster: a token
// due for renewal is replaced (file mode 0600) and the Lease created, then
// renewed with the facts.
func TestAgentRenewsTokenAndLease(t *testing.T) {
	cs := newFakeCluster()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	issued := time.Now().Add(-50 * time.Minute).Truncate(time.Second)
	old := jwt(Namespace, "bridge-agent-vm1", issued, issued.Add(time.Hour))
	if err := os.WriteFile(tokenFile, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	a := NewAgent(Options{
		Client: cs, Host: "vm1", TokenFile: tokenFile, TokenLifetime: 24 * time.Hour, RenewPercent: 80,
		RenewInterval: 20 * time.Millisecond, LeaseDuration: 2 * time.Second,
		Facts:  func() Facts { return Facts{Version: "v", Backend: "nftables", Services: 3, Ready: true} },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := a.MemberStatus()
		l, err := cs.CoordinationV1().Leases(Namespace).Get(ctx, "bridge-agent-vm1", metav1.GetOptions{})
		if st.Renewals == 1 && err == nil && l.Spec.RenewTime.After(st.LastRenewal) {
			if l.Annotations[AnnotationServices] != "3" || l.Annotations[AnnotationTokenExpiry] != st.TokenExpiry.UTC().Format(time.RFC3339) {
				t.Errorf("lease annotations %v", l.Annotations)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no renewal and heartbeat: status %+v, lease %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := ReadToken(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(tokenFile); c.Lifetime() != 24*time.Hour || fi.Mode().Perm() != 0o600 {
		t.Errorf("renewed token: lifetime %s, mode %v", c.Lifetime(), fi.Mode())
	}
	if st := a.MemberStatus(); !st.NextRenewal.Equal(c.RenewAt(80)) || st.RenewError != "" {
		t.Errorf("status after renewal %+v", st)
	}
	var buf bytes.Buffer
	a.MemberStatus().WriteText(&buf, time.Now())
	if !strings.Contains(buf.String(), "Host:        vm1 (ServiceAccount bridge-agent/bridge-agent-vm1)") || strings.Contains(buf.String(), "UNAUTHORIZED") {
		t.Errorf("status text:\n%s", buf.String())
	}
}

// TestMemberPolicyManifest: deploy/member-policy.yaml names the policy
// AddHost checks for, binds it with Deny, and matches only host credentials
// of the namespace hosts live in.
func TestMemberPolicyManifest(t *testing.T) {
	docs := strings.Split(string(deploy.MemberPolicy), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%d documents, want 2", len(docs))
	}
	var p admissionv1.ValidatingAdmissionPolicy
	var b admissionv1.ValidatingAdmissionPolicyBinding
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &p); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &b); err != nil {
		t.Fatal(err)
	}
	if p.Name != PolicyName || b.Name != PolicyName || b.Spec.PolicyName != PolicyName ||
		!cmp.Equal(b.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("names %s %s %s, actions %v", p.Name, b.Name, b.Spec.PolicyName, b.Spec.ValidationActions)
	}
	if want := fmt.Sprintf("'system:serviceaccount:%s:%s'", Namespace, NamePrefix); !strings.Contains(p.Spec.MatchConditions[0].Expression, want) {
		t.Errorf("match condition %q does not name %s", p.Spec.MatchConditions[0].Expression, want)
	}
}

var corev1ServiceAccount = corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bridge-agent-vm1", Namespace: Namespace}}
