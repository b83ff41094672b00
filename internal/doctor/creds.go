package doctor

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/bridge-agent/bridge-agent/internal/member"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Access is one verb on one resource the agent needs.
type Access struct {
	Group, Resource, Verb string
	// Optional access only degrades status (the Service ranges), so its
	// absence is a warning.
	Optional bool
}

func (a Access) String() string {
	r := a.Resource
	if a.Group != "" {
		r += "." + a.Group
	}
	return a.Verb + " " + r
}

// RequiredAccess is what deploy/rbac.yaml grants and the agent uses.
var RequiredAccess = func() []Access {
	var out []Access
	for _, r := range []struct {
		group, resource string
		optional        bool
	}{
		{"", "services", false},
		{"", "nodes", false},
		{"discovery.k8s.io", "endpointslices", false},
		{"networking.k8s.io", "servicecidrs", true},
	} {
		for _, v := range []string{"get", "list", "watch"} {
			out = append(out, Access{Group: r.group, Resource: r.resource, Verb: v, Optional: r.optional})
		}
	}
	return out
}()

// Fixes shared by the credential checks.
const (
	fixToken = "mint a new token on the cluster ((umask 077; kubectl -n bridge-agent create token bridge-agent --duration=8760h > token)) and write the kubeconfig again: bridge-agent kubeconfig --server URL --token-file token --ca-file ca.crt -o /etc/bridge-agent/kubeconfig"
	fixCA    = "write the kubeconfig again with the cluster's CA certificate (a kubeadm control plane has it in /etc/kubernetes/pki/ca.crt): bridge-agent kubeconfig --server URL --token-file token --ca-file ca.crt -o /etc/bridge-agent/kubeconfig"
	fixRBAC  = "on the cluster, as its admin: kubectl apply -f /usr/share/bridge-agent/rbac.yaml (deploy/rbac.yaml), which binds the read-only ClusterRole bridge-agent to ServiceAccount bridge-agent/bridge-agent; a token of another identity needs the same binding"
	fixClock = "set this host's clock: enable time synchronisation (timedatectl set-ntp true, or chrony/ntpd)"
)

// TokenExpiry reads the exp claim of a JWT bearer token (without checking
// its signature: only the API server can). ok is false when the token is
// not a JWT or carries no exp (a static or bootstrap token).
func TokenExpiry(token string) (exp time.Time, ok bool) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	f, err := claims.Exp.Float64()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// Credential is what the credentials are and when they expire.
type Credential struct {
	// Kind is "token", "client certificate" or "other" (an exec plugin...).
	Kind string
	// Expiry is the token's exp claim or the certificate's NotAfter; zero
	// when unknown.
	Expiry time.Time
	// Problem says why the credential could not be read.
	Problem string
	// Host is set for a host's own identity (ServiceAccount
	// bridge-agent-HOST), whose token the agent renews; IssuedAt is then
	// the token's iat claim.
	Host     string
	IssuedAt time.Time
}

// ReadCredential finds the credential in rc and its expiry.
func ReadCredential(rc *rest.Config) Credential {
	switch {
	case rc.BearerToken != "" || rc.BearerTokenFile != "":
		tok := rc.BearerToken
		if tok == "" {
			b, err := os.ReadFile(rc.BearerTokenFile)
			if err != nil {
				return Credential{Kind: "token", Problem: fmt.Sprintf("read token file: %v", err)}
			}
			tok = string(b)
		}
		c := Credential{Kind: "token"}
		if exp, ok := TokenExpiry(tok); ok {
			c.Expiry = exp
		}
		if claims, err := member.ParseToken(tok); err == nil && claims.Host() != "" {
			c.Host, c.IssuedAt = claims.Host(), claims.IssuedAt
		}
		return c
	case len(rc.CertData) > 0 || rc.CertFile != "":
		data := rc.CertData
		if len(data) == 0 {
			b, err := os.ReadFile(rc.CertFile)
			if err != nil {
				return Credential{Kind: "client certificate", Problem: fmt.Sprintf("read client certificate: %v", err)}
			}
			data = b
		}
		c := Credential{Kind: "client certificate"}
		if b, _ := pem.Decode(data); b != nil {
			if cert, err := x509.ParseCertificate(b.Bytes); err == nil {
				c.Expiry = cert.NotAfter
			}
		}
		return c
	}
	return Credential{Kind: "other"}
}

// expiryCheck judges a credential's expiry at now; pure.
func expiryCheck(c Credential, now time.Time) Check {
	ch := Check{Name: "credential expiry"}
	switch {
	case c.Problem != "":
		ch.Verdict, ch.Detail, ch.Fix = Fail, c.Problem, fixToken
	case c.Host != "" && !c.Expiry.IsZero():
		return hostExpiryCheck(c, now)
	case c.Expiry.IsZero():
		ch.Verdict, ch.Detail = OK, fmt.Sprintf("the %s carries no expiry this host can read (only the API server knows whether it is still valid)", c.Kind)
	case !c.Expiry.After(now):
		ch.Verdict = Fail
		ch.Detail = fmt.Sprintf("the %s expired at %s (%s ago)", c.Kind, c.Expiry.UTC().Format(time.RFC3339), now.Sub(c.Expiry).Round(time.Second))
		ch.Fix = fixToken
	case c.Expiry.Sub(now) < 7*24*time.Hour:
		ch.Verdict = Warn
		ch.Detail = fmt.Sprintf("the %s expires at %s, in %s", c.Kind, c.Expiry.UTC().Format(time.RFC3339), c.Expiry.Sub(now).Round(time.Second))
		ch.Fix = "renew it before then: " + fixToken
	default:
		ch.Verdict = OK
		ch.Detail = fmt.Sprintf("the %s expires at %s, in %s", c.Kind, c.Expiry.UTC().Format(time.RFC3339), c.Expiry.Sub(now).Round(time.Hour))
	}
	return ch
}

// hostExpiryCheck judges the token of a host's own identity, which the
// running agent renews at member.tokenRenewPercent (80% at most) of its
// lifetime: a short lifetime is normal, a token in its last fifth means
// the renewal is not happening.
func hostExpiryCheck(c Credential, now time.Time) Check {
	ch := Check{Name: "credential expiry"}
	left := c.Expiry.Sub(now)
	switch {
	case left <= 0:
		ch.Verdict = Fail
		ch.Detail = fmt.Sprintf("the token of host %s expired at %s (%s ago); an expired token cannot renew itself", c.Host, c.Expiry.UTC().Format(time.RFC3339), (-left).Round(time.Second))
		ch.Fix = fmt.Sprintf("on the cluster, as its admin: bridge-agent host add %s; copy %s.join.yaml here and run: bridge-agent join %s.join.yaml", c.Host, c.Host, c.Host)
	case !c.IssuedAt.IsZero() && left < c.Expiry.Sub(c.IssuedAt)/5:
		ch.Verdict = Warn
		ch.Detail = fmt.Sprintf("the token of host %s expires at %s, in %s, and has not been renewed (the agent renews it by 80%% of its lifetime)", c.Host, c.Expiry.UTC().Format(time.RFC3339), left.Round(time.Second))
		ch.Fix = "start the agent (systemctl start bridge-agent) and see bridge-agent status for the renewal error"
	default:
		ch.Verdict = OK
		ch.Detail = fmt.Sprintf("the token of host %s expires at %s, in %s; the agent renews it", c.Host, c.Expiry.UTC().Format(time.RFC3339), left.Round(time.Second))
	}
	return ch
}

// ClassifyAPIError turns a failed request to the API server into a check
// with the fix: a certificate the CA does not sign, a certificate for
// another name, a rejected token, an unreachable server. expired says
// whether the token is known to have expired.
func ClassifyAPIError(host string, err error, expired bool) Check {
	ch := Check{Name: "API server " + host, Verdict: Fail}
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var opErr *net.OpError
	switch {
	case errors.As(err, &unknownCA) || strings.Contains(err.Error(), "certificate signed by unknown authority"):
		ch.Detail = fmt.Sprintf("the API server's certificate is not signed by the CA in this host's kubeconfig (wrong CA): %v", err)
		ch.Fix = fixCA
	case errors.As(err, &hostErr):
		ch.Detail = fmt.Sprintf("the API server's certificate is not valid for %s (wrong server address for this certificate): %v", host, err)
		ch.Fix = "set the kubeconfig's server: to a name or address the API server's certificate lists (" + strings.Join(certNames(hostErr.Certificate), ", ") + ")"
	case errors.As(err, &invalid):
		ch.Detail = fmt.Sprintf("the API server's certificate is expired or not yet valid by this host's clock: %v", err)
		ch.Fix = "check this host's clock first (" + fixClock + "), then the API server's certificate"
	case apierrors.IsUnauthorized(err):
		if expired {
			ch.Detail = "the API server rejected the token (401 Unauthorized): it has expired"
		} else {
			ch.Detail = "the API server rejected the token (401 Unauthorized): it is malformed, revoked, of another cluster, or its ServiceAccount was deleted"
		}
		ch.Fix = fixToken
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		ch.Detail = fmt.Sprintf("the server at %s speaks plain HTTP, not the API server's HTTPS: %v", host, err)
		ch.Fix = "set the kubeconfig's server: to the API server's https:// URL (kubectl cluster-info on the cluster shows it)"
	case errors.Is(err, syscall.ECONNREFUSED):
		ch.Detail = fmt.Sprintf("nothing listens at %s (connection refused: wrong server address or port, or the API server is down): %v", host, err)
		ch.Fix = "set the kubeconfig's server: to the API server's URL (kubectl cluster-info on the cluster shows it) and check it runs"
	case errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH):
		ch.Detail = fmt.Sprintf("this host has no route to the API server at %s: %v", host, err)
		ch.Fix = "give this host a route to the API server's address (ip route get shows what the kernel picks), or use an address it reaches"
	case errors.As(err, &opErr) || errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		ch.Detail = fmt.Sprintf("cannot reach the API server at %s: %v", host, err)
		ch.Fix = "check the kubeconfig's server: address, this host's route to it and any firewall in between (the API server's port, usually 6443)"
	case apierrors.IsForbidden(err):
		ch.Detail = fmt.Sprintf("the API server refused the request: %v", err)
		ch.Fix = fixRBAC
	default:
		ch.Detail = fmt.Sprintf("request to the API server failed: %v", err)
		ch.Fix = "check the kubeconfig's server:, the CA and the token (bridge-agent kubeconfig writes all three)"
	}
	return ch
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func certNames(c *x509.Certificate) []string {
	if c == nil {
		return []string{"see the certificate"}
	}
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = []string{c.Subject.CommonName}
	}
	return names
}

// skewCheck judges the difference between this host's clock and the API
// server's Date header; pure. The header has a resolution of one second.
func skewCheck(local, server time.Time) Check {
	ch := Check{Name: "clock"}
	skew := local.Sub(server).Round(time.Second)
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	ahead := "ahead of"
	if skew < 0 {
		ahead = "behind"
	}
	switch {
	case abs >= time.Minute:
		ch.Verdict = Fail
		ch.Detail = fmt.Sprintf("this host's clock is %s %s the API server's: tokens and certificates may look expired or not yet valid", abs, ahead)
		ch.Fix = fixClock
	case abs > 5*time.Second:
		ch.Verdict = Warn
		ch.Detail = fmt.Sprintf("this host's clock is %s %s the API server's", abs, ahead)
		ch.Fix = fixClock
	default:
		ch.Verdict = OK
		ch.Detail = fmt.Sprintf("within %s of the API server's (Date header)", max(abs, time.Second))
	}
	return ch
}

// dateRecorder records the Date header of the API server's last answer
// and this host's time when it arrived.
type dateRecorder struct {
	rt http.RoundTripper

	mu            sync.Mutex
	server, local time.Time
}

func (d *dateRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := d.rt.RoundTrip(r)
	if err == nil {
		if t, perr := http.ParseTime(resp.Header.Get("Date")); perr == nil {
			d.mu.Lock()
			d.server, d.local = t, time.Now()
			d.mu.Unlock()
		}
	}
	return resp, err
}

func (d *dateRecorder) last() (server, local time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.server, d.local
}

// CredentialChecks checks the credentials of rc against the live API
// server: their expiry, that the API server's certificate verifies and the
// token authenticates (SelfSubjectReview), the clock against the API
// server's, and that the identity may do everything in RequiredAccess
// (SelfSubjectAccessReview each). Checks that depend on a failed one are
// skipped, saying so.
func CredentialChecks(ctx context.Context, rc *rest.Config, now time.Time) []Check {
	cred := ReadCredential(rc)
	exp := expiryCheck(cred, now)
	out := []Check{exp}
	expired := exp.Verdict == Fail && !cred.Expiry.IsZero()

	rec := &dateRecorder{}
	c := rest.CopyConfig(rc)
	c.Timeout = 10 * time.Second
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper { rec.rt = rt; return rec })
	client, err := kubernetes.NewForConfig(c)
	if err != nil {
		return append(out, Check{Name: "API server " + rc.Host, Verdict: Fail, Detail: fmt.Sprintf("client: %v", err), Fix: "check the kubeconfig's server: URL"})
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	auth := Check{Name: "API server " + rc.Host}
	ssr, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// Before Kubernetes 1.28: the access reviews below authenticate too.
		auth.Verdict, auth.Detail = OK, "reached (SelfSubjectReview unavailable before Kubernetes 1.28)"
	case err != nil:
		auth = ClassifyAPIError(rc.Host, err, expired)
	default:
		u := ssr.Status.UserInfo
		auth.Verdict = OK
		auth.Detail = fmt.Sprintf("certificate verified; authenticated as %s (groups %s)", u.Username, strings.Join(u.Groups, ", "))
	}
	out = append(out, auth)
	if server, local := rec.last(); !server.IsZero() {
		out = append(out, skewCheck(local, server))
	} else {
		out = append(out, Check{Name: "clock", Verdict: Skip, Detail: "the API server gave no answer with a Date header"})
	}
	if auth.Verdict != OK {
		return append(out, Check{Name: "RBAC", Verdict: Skip, Detail: "needs an authenticated connection to the API server (see above)"})
	}
	return append(out, rbacCheck(ctx, client, RequiredAccess))
}

// rbacCheck asks the API server, with one SelfSubjectAccessReview per
// access, whether the credentials' identity may do each.
func rbacCheck(ctx context.Context, client kubernetes.Interface, need []Access) Check {
	ch := Check{Name: "RBAC"}
	var denied, optional []string
	for _, a := range need {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: a.Group, Resource: a.Resource, Verb: a.Verb,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			c := ClassifyAPIError("", err, false)
			ch.Verdict, ch.Detail, ch.Fix = Fail, "SelfSubjectAccessReview for "+a.String()+": "+c.Detail, c.Fix
			return ch
		}
		if !r.Status.Allowed {
			if a.Optional {
				optional = append(optional, a.String())
			} else {
				denied = append(denied, a.String())
			}
		}
	}
	switch {
	case len(denied) > 0:
		ch.Verdict = Fail
		ch.Detail = "the credentials' identity may not " + strings.Join(denied, ", ") + " (SelfSubjectAccessReview): the agent cannot watch the cluster"
		ch.Fix = fixRBAC
	case len(optional) > 0:
		ch.Verdict = Warn
		ch.Detail = "the credentials' identity may not " + strings.Join(optional, ", ") + ": status cannot show the cluster's Service ranges"
		ch.Fix = fixRBAC
	default:
		ch.Verdict = OK
		ch.Detail = fmt.Sprintf("allowed all %d accesses the agent needs (get, list, watch of services, nodes, endpointslices, servicecidrs)", len(need))
	}
	return ch
}
