// Package member makes every host a member of the cluster with an identity
// of its own, the way kubelet is for a Node:
//
//   - identity: host NAME is ServiceAccount bridge-agent-NAME in namespace
//     bridge-agent, bound to the read-only ClusterRole of deploy/rbac.yaml
//     and to a Role of its own that lets it request tokens for that one
//     ServiceAccount and renew that one Lease (resourceNames). AddHost
//     makes them and a one-file join Bundle; RemoveHost deletes them, and
//     with the ServiceAccount every token it had goes invalid.
//   - joining: Join checks a bundle against the API server (who am I, may I
//     read Services) and installs the host's credentials, mode 0600: a
//     kubeconfig whose user reads its token from a file, and that file.
//   - rotation: the running agent renews its token through the TokenRequest
//     API after a share of its lifetime (Agent), writing the token file
//     atomically; client-go reads the file again at least every minute, so
//     every client moves to the new token with no restart and no gap.
//   - heartbeat: the agent renews a coordination.k8s.io Lease
//     bridge-agent-NAME whose annotations carry the host's facts; ListHosts
//     reads them for `bridge-agent hosts`.
//
// Create rights cannot be limited by name in RBAC: a host may create Leases
// in the namespace, and the ValidatingAdmissionPolicy of
// deploy/member-policy.yaml lets a host's credentials write only its own
// Lease and request only its own tokens, as NodeRestriction does for
// kubelets. Nothing here runs on the data path: a failed renewal is logged,
// counted and shown, and never touches rules, routes or DNS.
package member
