package testbed

import (
	"context"
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/deploy"
)

// ApplyMemberPolicy creates the ValidatingAdmissionPolicy and binding of
// deploy/member-policy.yaml (the opt-in for hosts with identities of their
// own).
func (t *Testbed) ApplyMemberPolicy(ctx context.Context) error {
	var vap *admissionv1.ValidatingAdmissionPolicy
	var binding *admissionv1.ValidatingAdmissionPolicyBinding
	for i, doc := range docSeparator.Split(string(deploy.MemberPolicy), -1) {
		if isBlankYAML(doc) {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return fmt.Errorf("apply member policy: document %d: %w", i, err)
		}
		var err error
		switch tm.Kind {
		case "ValidatingAdmissionPolicy":
			vap = new(admissionv1.ValidatingAdmissionPolicy)
			err = yaml.UnmarshalStrict([]byte(doc), vap)
		case "ValidatingAdmissionPolicyBinding":
			binding = new(admissionv1.ValidatingAdmissionPolicyBinding)
			err = yaml.UnmarshalStrict([]byte(doc), binding)
		default:
			err = fmt.Errorf("unexpected kind %q", tm.Kind)
		}
		if err != nil {
			return fmt.Errorf("apply member policy: document %d: %w", i, err)
		}
	}
	if vap == nil || binding == nil {
		return fmt.Errorf("apply member policy: want a ValidatingAdmissionPolicy and its binding in deploy/member-policy.yaml")
	}
	ar := t.Client.AdmissionregistrationV1()
	if _, err := ar.ValidatingAdmissionPolicies().Create(ctx, vap, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("apply member policy: %w", err)
	}
	if _, err := ar.ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("apply member policy: %w", err)
	}
	// The policy's type-checking status is written by
	// kube-controller-manager's validatingadmissionpolicy-status
	// controller, which the sandbox does not run; the API server enforces
	// the policy once its informer has it (about a second).
	return nil
}
