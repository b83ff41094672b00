// Package deploy holds the cluster-side manifests that bridge-agent needs,
// embedded so that tools and tests apply exactly the files shipped to admins.
package deploy

import _ "embed"

// RBAC is the content of rbac.yaml: the bridge-agent Namespace, ServiceAccount,
// read-only ClusterRole (services, nodes, endpointslices, servicecidrs) and its binding.
//
//go:embed rbac.yaml
var RBAC []byte

// MemberPolicy is the content of member-policy.yaml: the
// ValidatingAdmissionPolicy and its binding that let a host's own
// credentials write only its own Lease and request only its own tokens.
//
//go:embed member-policy.yaml
var MemberPolicy []byte

// NodeRoutesWriter is the content of node-routes-writer.yaml: the optional
// write access, scoped by name, to the shared node route table's ConfigMap
// and Lease, for the agents that publish it.
//
//go:embed node-routes-writer.yaml
var NodeRoutesWriter []byte
