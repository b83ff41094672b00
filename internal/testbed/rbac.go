package testbed

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
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
		default:
			return nil, fmt.Errorf("decode manifest document %d: unsupported kind %q", i, tm.GroupVersionKind())
		}
		if err != nil {
			return nil, fmt.Errorf("decode manifest document %d: %w", i, err)
		}
	}
	return &objs, nil
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
	check := func(kind, name string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply rbac: create %s %s: %w", kind, name, err)
		}
		return nil
	}
	opts := metav1.CreateOptions{}
	core, rbac := t.Client.CoreV1(), t.Client.RbacV1()
	for _, o := range objs.namespaces {
		_, err := core.Namespaces().Create(ctx, o, opts)
		if err := check("Namespace", o.Name, err); err != nil {
			return err
		}
	}
	for _, o := range objs.serviceAccounts {
		_, err := core.ServiceAccounts(o.Namespace).Create(ctx, o, opts)
		if err := check("ServiceAccount", o.Name, err); err != nil {
			return err
		}
	}
	for _, o := range objs.clusterRoles {
		_, err := rbac.ClusterRoles().Create(ctx, o, opts)
		if err := check("ClusterRole", o.Name, err); err != nil {
			return err
		}
	}
	for _, o := range objs.clusterRoleBindings {
		_, err := rbac.ClusterRoleBindings().Create(ctx, o, opts)
		if err := check("ClusterRoleBinding", o.Name, err); err != nil {
			return err
		}
	}

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
