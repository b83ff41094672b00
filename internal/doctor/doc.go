// Package doctor runs the checks an expert would run on a host that
// bridge-agent joins to a cluster, and explains the path to one cluster
// destination.
//
// Every check ends in a verdict (ok, warn, fail, skip), what it found, and,
// when not ok, the fix in one line. The checks read the configuration, the
// running agent's status (when it runs: fewer checks otherwise, each saying
// why it was skipped), the live API server with the agent's own credentials
// (authentication, RBAC through SelfSubjectAccessReview, token expiry, clock
// skew), the kernel (the proxy backend's feature probe, routes as the kernel
// picks them with a netlink route get, policy rules and foreign routes that
// shadow the agent's) and the host's real resolver (the C library through
// getent, and resolvectl where systemd-resolved runs).
//
// The judgments are pure functions of what was read, table-tested; the
// kernel's routing sits behind a small interface (Kernel) so that tests can
// give it other answers.
package doctor
