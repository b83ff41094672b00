package member

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// Namespace holds every host's ServiceAccount and Lease: the namespace of
// deploy/rbac.yaml, which deploy/member-policy.yaml names.
const Namespace = "bridge-agent"

// NamePrefix starts the name of every host's ServiceAccount, Role, bindings
// and Lease.
const NamePrefix = "bridge-agent-"

// HostLabel labels a host's objects with its name.
const HostLabel = "bridge-agent.io/host"

// hostRE is a DNS label short enough that bridge-agent-NAME is one too.
var hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$`)

// CheckHostName reports whether name can name a host.
func CheckHostName(name string) error {
	if !hostRE.MatchString(name) {
		return fmt.Errorf("host name %q: want 1 to 50 lower-case letters, digits and '-', starting and ending with a letter or digit", name)
	}
	if strings.HasPrefix(name, reservedHostPrefix) {
		return fmt.Errorf("host name %q: names starting with %q are reserved (bridge-agent-%s* are the shared node route table's ConfigMap, Lease and Roles)", name, reservedHostPrefix, reservedHostPrefix)
	}
	return nil
}

// reservedHostPrefix starts the names of objects the agents share
// (bridge-agent-node-routes, -reader, -writer): a host named so would get
// their names for its ServiceAccount, Role and Lease.
const reservedHostPrefix = "node-routes"

// ObjectName is the name of host's ServiceAccount, Role, bindings and Lease.
func ObjectName(host string) string { return NamePrefix + host }

// Username is the name the API server knows host's credentials by.
func Username(host string) string {
	return "system:serviceaccount:" + Namespace + ":" + ObjectName(host)
}

// Claims are what the agent reads of a ServiceAccount token. They are not
// verified here: the API server verifies every request; the agent only
// needs to know whose token it holds and when it expires.
type Claims struct {
	Namespace      string
	ServiceAccount string
	IssuedAt       time.Time
	Expiry         time.Time
}

// Host is the host name of a token of ServiceAccount bridge-agent-NAME in
// the agent's namespace, "" for any other token (such as the shared
// read-only ServiceAccount bridge-agent).
func (c *Claims) Host() string {
	if c.Namespace != Namespace || !strings.HasPrefix(c.ServiceAccount, NamePrefix) {
		return ""
	}
	h := strings.TrimPrefix(c.ServiceAccount, NamePrefix)
	if CheckHostName(h) != nil {
		return ""
	}
	return h
}

// Lifetime is the token's whole validity.
func (c *Claims) Lifetime() time.Duration { return c.Expiry.Sub(c.IssuedAt) }

// RenewAt is when a token is due for renewal: after percent of its lifetime.
func (c *Claims) RenewAt(percent int) time.Time {
	return c.IssuedAt.Add(c.Lifetime() * time.Duration(percent) / 100)
}

// ErrNotServiceAccountToken is returned by ParseToken for a token that is not
// a ServiceAccount JWT (a static token, an OIDC token).
var ErrNotServiceAccountToken = errors.New("not a ServiceAccount token")

// ParseToken reads the claims of a ServiceAccount JWT, without verifying it.
func ParseToken(token string) (*Claims, error) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return nil, ErrNotServiceAccountToken
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrNotServiceAccountToken, err)
	}
	var p struct {
		Exp int64 `json:"exp"`
		Iat int64 `json:"iat"`
		K8s struct {
			Namespace      string `json:"namespace"`
			ServiceAccount struct {
				Name string `json:"name"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrNotServiceAccountToken, err)
	}
	if p.K8s.Namespace == "" || p.K8s.ServiceAccount.Name == "" || p.Exp == 0 {
		return nil, ErrNotServiceAccountToken
	}
	c := &Claims{
		Namespace:      p.K8s.Namespace,
		ServiceAccount: p.K8s.ServiceAccount.Name,
		IssuedAt:       time.Unix(p.Iat, 0),
		Expiry:         time.Unix(p.Exp, 0),
	}
	if p.Iat == 0 || !c.IssuedAt.Before(c.Expiry) {
		return nil, fmt.Errorf("%w: no valid iat before exp", ErrNotServiceAccountToken)
	}
	return c, nil
}

// ReadToken reads and parses the token file at path.
func ReadToken(path string) (*Claims, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	c, err := ParseToken(string(b))
	if err != nil {
		return nil, fmt.Errorf("read token %s: %w", path, err)
	}
	return c, nil
}

// ExpiredError says that a host's token expired: the agent cannot renew it
// (the API server refuses an expired token) and says what to run.
type ExpiredError struct {
	Host   string
	Expiry time.Time
	Now    time.Time
}

func (e *ExpiredError) Error() string {
	return fmt.Sprintf("the credentials of host %s expired at %s (%s ago), so the agent cannot renew them: "+
		"on the cluster, as its admin, run `bridge-agent host add %s` (a new join bundle for the same host), "+
		"copy the bundle to this host and run `bridge-agent join BUNDLE`, then start the agent",
		e.Host, e.Expiry.UTC().Format(time.RFC3339), e.Now.Sub(e.Expiry).Round(time.Second), e.Host)
}

// CheckNotExpired returns an *ExpiredError when c, a host's token, expired.
func CheckNotExpired(c *Claims, now time.Time) error {
	if !now.Before(c.Expiry) {
		return &ExpiredError{Host: c.Host(), Expiry: c.Expiry, Now: now}
	}
	return nil
}
