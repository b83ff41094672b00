package member

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
)

// TokenFileName is the name of the host's token file, next to its kubeconfig.
const TokenFileName = "token"

// JoinOptions say where Join installs the host's credentials.
type JoinOptions struct {
	Bundle *Bundle
	// Kubeconfig is the kubeconfig file to write; the token goes next to
	// it, in TokenFileName.
	Kubeconfig string
	// TokenLifetime is the lifetime of the token Join exchanges the
	// bundle's for (the configuration's member.tokenLifetime).
	TokenLifetime time.Duration
	// UserAgent names the client.
	UserAgent string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Joined is what Join installed.
type Joined struct {
	Host        string
	Username    string
	Kubeconfig  string
	TokenFile   string
	TokenExpiry time.Time
}

// Join checks a bundle against the API server and installs the host's
// credentials: it asks who the token is (SelfSubjectReview) and whether it
// may read Services and request its own tokens (SelfSubjectAccessReview),
// exchanges the bundle's token for one of TokenLifetime, then writes the
// token file and a kubeconfig reading it, both mode 0600, each replaced
// atomically. Nothing is written unless every check passed.
func Join(ctx context.Context, o JoinOptions) (*Joined, error) {
	b := o.Bundle
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if !b.Expires.IsZero() && !now().Before(b.Expires) {
		return nil, fmt.Errorf("join: the bundle's token expired at %s: on the cluster run `bridge-agent host add %s` again and copy the new bundle here",
			b.Expires.UTC().Format(time.RFC3339), b.Host)
	}
	rc := &rest.Config{
		Host:            b.Server,
		BearerToken:     b.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: b.CertificateAuthorityData},
		UserAgent:       o.UserAgent,
		Timeout:         30 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("join: client: %w", err)
	}
	want := Username(b.Host)
	ssr, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("join: check the bundle with %s: %w", b.Server, explainAPIError(err, b.Host))
	}
	if got := ssr.Status.UserInfo.Username; got != want {
		return nil, fmt.Errorf("join: the bundle's token is %q, want %q: not this host's bundle", got, want)
	}
	if err := checkAccess(ctx, cs, b.Host); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	token, claims, err := requestToken(ctx, cs, b.Host, o.TokenLifetime)
	if err != nil {
		return nil, fmt.Errorf("join: %w", explainAPIError(err, b.Host))
	}
	tokenPath := filepath.Join(filepath.Dir(o.Kubeconfig), TokenFileName)
	kc, err := Kubeconfig(b.Host, b.Server, b.CertificateAuthorityData, tokenPath)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.Kubeconfig), 0o755); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := atomicfile.WriteFile(tokenPath, []byte(token), 0o600); err != nil {
		return nil, fmt.Errorf("join: write token: %w", err)
	}
	if err := atomicfile.WriteFile(o.Kubeconfig, kc, 0o600); err != nil {
		return nil, fmt.Errorf("join: write kubeconfig: %w", err)
	}
	return &Joined{Host: b.Host, Username: want, Kubeconfig: o.Kubeconfig, TokenFile: tokenPath, TokenExpiry: claims.Expiry}, nil
}

// checkAccess asks the API server whether host's credentials may do what
// the agent does: read Services, EndpointSlices and Nodes, renew its token
// and its Lease.
func checkAccess(ctx context.Context, cs kubernetes.Interface, host string) error {
	name := ObjectName(host)
	for _, ra := range []authorizationv1.ResourceAttributes{
		{Verb: "list", Resource: "services"},
		{Verb: "watch", Group: "discovery.k8s.io", Resource: "endpointslices"},
		{Verb: "list", Resource: "nodes"},
		{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: Namespace, Name: name},
		{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: Namespace, Name: name},
	} {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("check access: %w", err)
		}
		if !r.Status.Allowed {
			what := strings.TrimSpace(strings.Join([]string{ra.Verb, ra.Group, ra.Resource, ra.Subresource, ra.Name}, " "))
			return fmt.Errorf("check access: host %s may not %s (%s): apply deploy/rbac.yaml and run `bridge-agent host add %s` again on the cluster",
				host, strings.Join(strings.Fields(what), " "), r.Status.Reason, host)
		}
	}
	return nil
}

// requestToken asks the TokenRequest API for a token of host's
// ServiceAccount that lives for lifetime.
func requestToken(ctx context.Context, cs kubernetes.Interface, host string, lifetime time.Duration) (string, *Claims, error) {
	tr, err := cs.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, ObjectName(host), &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(lifetime / time.Second))},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("request token: %w", err)
	}
	c, err := ParseToken(tr.Status.Token)
	if err != nil {
		return "", nil, fmt.Errorf("request token: %w", err)
	}
	if c.Host() != host {
		return "", nil, fmt.Errorf("request token: got a token of %s/%s, want host %s", c.Namespace, c.ServiceAccount, host)
	}
	return tr.Status.Token, c, nil
}

// ErrUnauthorized is wrapped by errors the API server answered with 401.
var ErrUnauthorized = errors.New("unauthorized")

// explainAPIError says what to do about an error of a host's request.
func explainAPIError(err error, host string) error {
	if apierrors.IsUnauthorized(err) {
		return fmt.Errorf("%w: the API server does not accept this host's token (the host was removed with `bridge-agent host remove %s`, or its token expired): on the cluster run `bridge-agent host add %s`, then `bridge-agent join BUNDLE` here: %v",
			ErrUnauthorized, host, host, err)
	}
	return err
}

// Kubeconfig returns a kubeconfig for host whose user reads its token from
// tokenFile (client-go reads it again at least every minute).
func Kubeconfig(host, server string, ca []byte, tokenFile string) ([]byte, error) {
	kc := clientcmdapi.NewConfig()
	name := ObjectName(host)
	kc.Clusters["cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{TokenFile: tokenFile}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: name}
	kc.CurrentContext = name
	data, err := clientcmd.Write(*kc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return data, nil
}
