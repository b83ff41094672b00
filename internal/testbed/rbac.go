package testbed

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/deploy"
)

// agentTokenSeconds is the lifetime of the agent's token.
const agentTokenSeconds = 24 * 60 * 60

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// rbacObjects holds the typed objects of deploy/rbac.yaml.
type rbacObjects struct {
	namespaces          []*corev1.Namespace
	serviceAccounts     []*corev1.ServiceAccount
	clusterRoles        []*rbacv1.ClusterRole
	clusterRoleBindings []*rbacv1.ClusterRoleBinding
	roles               []*rbacv1.Role
	roleBindings        []*rbacv1.RoleBinding
	configMaps          []*corev1.ConfigMap
	leases              []*coordinationv1.Lease
}

// decodeRBAC parses a multi-document YAML manifest into typed objects.
func decodeRBAC(data []byte) (*rbacObjects, error) {
	var objs rbacObjects
	for i, doc := range docSeparator.Split(string(data), -1) {
		if isBlankYAML(doc) {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("decode manifest document %d: %w", i, err)
		}
		var err error
		switch tm.GroupVersionKind().String() {
		case "/v1, Kind=Namespace":
			o := new(corev1.Namespace)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.namespaces = append(objs.namespaces, o)
		case "/v1, Kind=ServiceAccount":
			o := new(corev1.ServiceAccount)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.serviceAccounts = append(objs.serviceAccounts, o)
		case "rbac.authorization.k8s.io/v1, Kind=ClusterRole":
			o := new(rbacv1.ClusterRole)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.clusterRoles = append(objs.clusterRoles, o)
		case "rbac.authorization.k8s.io/v1, Kind=ClusterRoleBinding":
			o := new(rbacv1.ClusterRoleBinding)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.clusterRoleBindings = append(objs.clusterRoleBindings, o)
		case "rbac.authorization.k8s.io/v1, Kind=Role":
			o := new(rbacv1.Role)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.roles = append(objs.roles, o)
		case "rbac.authorization.k8s.io/v1, Kind=RoleBinding":
			o := new(rbacv1.RoleBinding)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.roleBindings = append(objs.roleBindings, o)
		case "/v1, Kind=ConfigMap":
			o := new(corev1.ConfigMap)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.configMaps = append(objs.configMaps, o)
		case "coordination.k8s.io/v1, Kind=Lease":
			o := new(coordinationv1.Lease)
			err = yaml.UnmarshalStrict([]byte(doc), o)
			objs.leases = append(objs.leases, o)
		default:
			return nil, fmt.Errorf("decode manifest document %d: unsupported kind %q", i, tm.GroupVersionKind())
		}
		if err != nil {
			return nil, fmt.Errorf("decode manifest document %d: %w", i, err)
		}
	}
	return &objs, nil
}

// ApplyManifest creates the objects of a manifest shipped in deploy/ (such
// as deploy.NodeRoutesWriter); objects that exist already are left as
// they are.
func (t *Testbed) ApplyManifest(ctx context.Context, data []byte) error {
	objs, err := decodeRBAC(data)
	if err != nil {
		return fmt.Errorf("apply manifest: %w", err)
	}
	if err := t.createObjects(ctx, objs); err != nil {
		return fmt.Errorf("apply manifest: %w", err)
	}
	return nil
}

// createObjects creates objs, namespaces first; existing ones are kept.
func (t *Testbed) createObjects(ctx context.Context, objs *rbacObjects) error {
	check := func(kind, name string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", kind, name, err)
		}
		return nil
	}
	opts := metav1.CreateOptions{}
	core, rbac := t.Client.CoreV1(), t.Client.RbacV1()
	var errs []error
	for _, o := range objs.namespaces {
		_, err := core.Namespaces().Create(ctx, o, opts)
		errs = append(errs, check("Namespace", o.Name, err))
	}
	for _, o := range objs.serviceAccounts {
		_, err := core.ServiceAccounts(o.Namespace).Create(ctx, o, opts)
		errs = append(errs, check("ServiceAccount", o.Name, err))
	}
	for _, o := range objs.clusterRoles {
		_, err := rbac.ClusterRoles().Create(ctx, o, opts)
		errs = append(errs, check("ClusterRole", o.Name, err))
	}
	for _, o := range objs.clusterRoleBindings {
		_, err := rbac.ClusterRoleBindings().Create(ctx, o, opts)
		errs = append(errs, check("ClusterRoleBinding", o.Name, err))
	}
	for _, o := range objs.roles {
		_, err := rbac.Roles(o.Namespace).Create(ctx, o, opts)
		errs = append(errs, check("Role", o.Name, err))
	}
	for _, o := range objs.roleBindings {
		_, err := rbac.RoleBindings(o.Namespace).Create(ctx, o, opts)
		errs = append(errs, check("RoleBinding", o.Name, err))
	}
	for _, o := range objs.configMaps {
		_, err := core.ConfigMaps(o.Namespace).Create(ctx, o, opts)
		errs = append(errs, check("ConfigMap", o.Name, err))
	}
	for _, o := range objs.leases {
		_, err := t.Client.CoordinationV1().Leases(o.Namespace).Create(ctx, o, opts)
		errs = append(errs, check("Lease", o.Name, err))
	}
	return errors.Join(errs...)
}

func isBlankYAML(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

// applyRBAC creates the objects of deploy/rbac.yaml, then requests a token
// for its ServiceAccount and writes the agent's kubeconfig with it.
func (t *Testbed) applyRBAC(ctx context.Context) error {
	objs, err := decodeRBAC(deploy.RBAC)
	if err != nil {
		return fmt.Errorf("apply rbac: %w", err)
	}
	if len(objs.serviceAccounts) != 1 {
		return fmt.Errorf("apply rbac: want exactly one ServiceAccount, found %d", len(objs.serviceAccounts))
	}
	if err := t.createObjects(ctx, objs); err != nil {
		return fmt.Errorf("apply rbac: %w", err)
	}
	core := t.Client.CoreV1()
	opts := metav1.CreateOptions{}
	sa := objs.serviceAccounts[0]
	tr, err := core.ServiceAccounts(sa.Namespace).CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(agentTokenSeconds))},
	}, opts)
	if err != nil {
		return fmt.Errorf("apply rbac: token for %s/%s: %w", sa.Namespace, sa.Name, err)
	}
	user := "system:serviceaccount:" + sa.Namespace + ":" + sa.Name
	if err := writeKubeconfig(t.AgentKubeconfig, t.APIServerURL, t.pki.caPEM, user, tr.Status.Token); err != nil {
		return fmt.Errorf("apply rbac: %w", err)
	}
	return nil
}
