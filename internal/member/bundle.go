package member

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// BundleKind and BundleAPIVersion identify a join bundle.
const (
	BundleKind       = "JoinBundle"
	BundleAPIVersion = "bridge-agent.io/v1alpha1"
)

// Bundle is the one file `bridge-agent host add` writes and `bridge-agent
// join` reads: everything a host needs to join, its bootstrap token
// included. It is a secret until the token expires.
type Bundle struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Host is the host's name; its ServiceAccount is bridge-agent-<Host>.
	Host      string `json:"host"`
	Namespace string `json:"namespace"`
	// Server is the API server's URL as the host reaches it.
	Server string `json:"server"`
	// CertificateAuthorityData is the PEM bundle of the API server's CA.
	CertificateAuthorityData []byte `json:"certificateAuthorityData"`
	// Token is a short-lived token of the host's ServiceAccount; join
	// exchanges it for one of the configured lifetime.
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// Marshal returns the bundle as a YAML document.
func (b *Bundle) Marshal() ([]byte, error) {
	data, err := yaml.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode join bundle: %w", err)
	}
	return append([]byte("# bridge-agent join bundle: a secret until it expires. On the host: bridge-agent join FILE\n"), data...), nil
}

// ParseBundle reads a join bundle and checks that it is complete.
func ParseBundle(data []byte) (*Bundle, error) {
	var b Bundle
	if err := yaml.UnmarshalStrict(data, &b); err != nil {
		return nil, fmt.Errorf("read join bundle: %w", err)
	}
	if b.Kind != BundleKind || b.APIVersion != BundleAPIVersion {
		return nil, fmt.Errorf("read join bundle: kind %q apiVersion %q, want %s %s (made by `bridge-agent host add`)", b.Kind, b.APIVersion, BundleKind, BundleAPIVersion)
	}
	var errs []error
	if err := CheckHostName(b.Host); err != nil {
		errs = append(errs, err)
	}
	if b.Namespace != Namespace {
		errs = append(errs, fmt.Errorf("namespace %q, want %s", b.Namespace, Namespace))
	}
	if u, err := url.Parse(b.Server); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("server %q: want an https:// URL", b.Server))
	}
	if len(b.CertificateAuthorityData) == 0 {
		errs = append(errs, errors.New("certificateAuthorityData is empty"))
	}
	if b.Token == "" {
		errs = append(errs, errors.New("token is empty"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("read join bundle: %w", errors.Join(errs...))
	}
	return &b, nil
}

// ReadBundle reads the join bundle at path.
func ReadBundle(path string) (*Bundle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read join bundle: %w", err)
	}
	return ParseBundle(data)
}
