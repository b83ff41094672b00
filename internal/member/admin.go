package member

import (
	"context"
	"errors"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ReadOnlyClusterRole is deploy/rbac.yaml's ClusterRole every host is bound to.
const ReadOnlyClusterRole = "bridge-agent"

// PolicyName names the ValidatingAdmissionPolicy and its binding in
// deploy/member-policy.yaml.
const PolicyName = "bridge-agent-host-restriction"

// DefaultBootstrapTTL is the lifetime of a join bundle's token.
const DefaultBootstrapTTL = time.Hour

// minTokenTTL is the shortest token the TokenRequest API issues.
const minTokenTTL = 10 * time.Minute

// AddOptions say which host to add and how its bundle reaches the cluster.
type AddOptions struct {
	Host string
	// Server is the API server's URL as the host reaches it.
	Server string
	// CA is the PEM bundle of the API server's CA.
	CA []byte
	// TokenTTL is the lifetime of the bundle's token (default
	// DefaultBootstrapTTL, at least 10m).
	TokenTTL time.Duration
}

// AddHost creates (or brings up to date) host's ServiceAccount, its Role
// and bindings, and returns a join bundle with a new token. Adding a host
// that exists issues a new bundle for it: the way back for a host whose
// token expired while it was off. It refuses when deploy/rbac.yaml or
// deploy/member-policy.yaml is not applied: without the policy a host's
// right to create Leases would not be limited to its own.
func AddHost(ctx context.Context, cs kubernetes.Interface, o AddOptions) (*Bundle, error) {
	if err := CheckHostName(o.Host); err != nil {
		return nil, fmt.Errorf("add host: %w", err)
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = DefaultBootstrapTTL
	}
	if o.TokenTTL < minTokenTTL || o.TokenTTL%time.Second != 0 {
		return nil, fmt.Errorf("add host: token lifetime %s: want whole seconds, at least %s (the TokenRequest API's minimum)", o.TokenTTL, minTokenTTL)
	}
	if o.Server == "" || len(o.CA) == 0 {
		return nil, errors.New("add host: the bundle needs the API server's URL and CA (from the kubeconfig or --server and --ca-file)")
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, ReadOnlyClusterRole, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("add host: ClusterRole %s not found: apply deploy/rbac.yaml (/usr/share/bridge-agent/rbac.yaml) first", ReadOnlyClusterRole)
		}
		return nil, fmt.Errorf("add host: %w", err)
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, PolicyName, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("add host: ValidatingAdmissionPolicyBinding %s not found: apply deploy/member-policy.yaml (/usr/share/bridge-agent/member-policy.yaml) first; it keeps each host to its own Lease and tokens", PolicyName)
		}
		return nil, fmt.Errorf("add host: %w", err)
	}
	name := ObjectName(o.Host)
	labels := map[string]string{HostLabel: o.Host}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: labels}}
	_, err := cs.CoreV1().ServiceAccounts(Namespace).Create(ctx, sa, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := cs.CoreV1().ServiceAccounts(Namespace).Get(ctx, name, metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("add host: %w", gerr)
		}
		if cur.Labels[HostLabel] != o.Host {
			return nil, fmt.Errorf("add host: ServiceAccount %s/%s exists and is not labelled %s=%s: not a host's, left alone", Namespace, name, HostLabel, o.Host)
		}
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("add host: create ServiceAccount: %w", err)
	}
	if err := applyRBAC(ctx, cs, o.Host); err != nil {
		return nil, fmt.Errorf("add host: %w", err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(o.TokenTTL / time.Second))},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("add host: token for %s/%s: %w", Namespace, name, err)
	}
	return &Bundle{
		APIVersion:               BundleAPIVersion,
		Kind:                     BundleKind,
		Host:                     o.Host,
		Namespace:                Namespace,
		Server:                   o.Server,
		CertificateAuthorityData: o.CA,
		Token:                    tr.Status.Token,
		Expires:                  tr.Status.ExpirationTimestamp.UTC(),
	}, nil
}

// hostRole is what a host may do beyond reading: request tokens for its own
// ServiceAccount and renew its own Lease (by name), and create Leases, which
// RBAC cannot limit by name; deploy/member-policy.yaml limits that to its own.
func hostRole(host string) *rbacv1.Role {
	name := ObjectName(host)
	return &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: map[string]string{HostLabel: host}},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}, ResourceNames: []string{name}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "update", "patch"}, ResourceNames: []string{name}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		},
	}
}

func hostSubjects(host string) []rbacv1.Subject {
	return []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ObjectName(host), Namespace: Namespace}}
}

// applyRBAC creates or updates host's Role, RoleBinding and
// ClusterRoleBinding (to the read-only ClusterRole).
func applyRBAC(ctx context.Context, cs kubernetes.Interface, host string) error {
	name := ObjectName(host)
	labels := map[string]string{HostLabel: host}
	rb := cs.RbacV1()
	role := hostRole(host)
	if _, err := rb.Roles(Namespace).Create(ctx, role, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		cur, err := rb.Roles(Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Rules, cur.Labels = role.Rules, labels
		if _, err := rb.Roles(Namespace).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update Role %s: %w", name, err)
		}
	} else if err != nil {
		return fmt.Errorf("create Role %s: %w", name, err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   hostSubjects(host),
	}
	if _, err := rb.RoleBindings(Namespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create RoleBinding %s: %w", name, err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: ReadOnlyClusterRole},
		Subjects:   hostSubjects(host),
	}
	if _, err := rb.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRoleBinding %s: %w", name, err)
	}
	return nil
}

// RemoveHost revokes host: it deletes its ServiceAccount (every token of it
// stops working at once), its Role, bindings and Lease. Objects of that name
// without the host's label are left alone. It returns what it deleted.
func RemoveHost(ctx context.Context, cs kubernetes.Interface, host string) ([]string, error) {
	if err := CheckHostName(host); err != nil {
		return nil, fmt.Errorf("remove host: %w", err)
	}
	name := ObjectName(host)
	var deleted []string
	del := func(kind string, get func() (metav1.Object, error), remove func() error) error {
		obj, err := get()
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("remove host: %s %s: %w", kind, name, err)
		}
		if obj.GetLabels()[HostLabel] != host {
			return nil
		}
		if err := remove(); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("remove host: delete %s %s: %w", kind, name, err)
		}
		deleted = append(deleted, kind+" "+name)
		return nil
	}
	core, rb, co := cs.CoreV1(), cs.RbacV1(), cs.CoordinationV1()
	opts := metav1.DeleteOptions{}
	get := metav1.GetOptions{}
	// The ServiceAccount first: that revokes the host's tokens.
	steps := []error{
		del("ServiceAccount", func() (metav1.Object, error) { return core.ServiceAccounts(Namespace).Get(ctx, name, get) },
			func() error { return core.ServiceAccounts(Namespace).Delete(ctx, name, opts) }),
		del("RoleBinding", func() (metav1.Object, error) { return rb.RoleBindings(Namespace).Get(ctx, name, get) },
			func() error { return rb.RoleBindings(Namespace).Delete(ctx, name, opts) }),
		del("Role", func() (metav1.Object, error) { return rb.Roles(Namespace).Get(ctx, name, get) },
			func() error { return rb.Roles(Namespace).Delete(ctx, name, opts) }),
		del("ClusterRoleBinding", func() (metav1.Object, error) { return rb.ClusterRoleBindings().Get(ctx, name, get) },
			func() error { return rb.ClusterRoleBindings().Delete(ctx, name, opts) }),
		del("Lease", func() (metav1.Object, error) { return co.Leases(Namespace).Get(ctx, name, get) },
			func() error { return co.Leases(Namespace).Delete(ctx, name, opts) }),
	}
	if err := errors.Join(steps...); err != nil {
		return deleted, err
	}
	if len(deleted) == 0 {
		return nil, fmt.Errorf("remove host: no host %s (no ServiceAccount, Role, binding or Lease %s/%s labelled %s=%s)", host, Namespace, name, HostLabel, host)
	}
	return deleted, nil
}
