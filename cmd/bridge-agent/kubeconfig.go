package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/doctor"
	"github.com/bridge-agent/bridge-agent/internal/version"
)

const kubeconfigUsage = `usage: bridge-agent kubeconfig --server URL --token-file FILE --ca-file FILE [-o FILE]
       bridge-agent kubeconfig --check [--offline] [--config FILE]

The first form prints a kubeconfig for this host: the API server URL, the
cluster's CA certificate and the ServiceAccount token (deploy/rbac.yaml's
bridge-agent/bridge-agent), both embedded. With -o it writes the file,
mode 0600, replacing it atomically:

  bridge-agent kubeconfig --server https://10.0.0.2:6443 \
    --token-file token --ca-file ca.crt -o /etc/bridge-agent/kubeconfig

The second form says whether the configuration (default
/etc/bridge-agent/config.yaml) is valid and its credentials work: it
contacts the API server and checks the CA, the server's address, the
token (and its expiry) and the RBAC the agent needs, as bridge-agent
doctor does; exit status 0 if all pass, 1 with the reason and the fix if
not. With --offline it only checks that the credentials exist and load
(the package starts the service only then).

Flags:
`

// kubeconfigCmd writes a kubeconfig from a token and a CA, or checks the
// credentials a configuration names.
func kubeconfigCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge-agent kubeconfig", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), kubeconfigUsage)
		fs.PrintDefaults()
	}
	server := fs.String("server", "", "API server URL, https://host:port, reachable from this host")
	tokenFile := fs.String("token-file", "", "file holding the ServiceAccount's bearer token")
	caFile := fs.String("ca-file", "", "PEM file with the cluster's CA certificate(s)")
	out := fs.String("o", "", "write to this file (mode 0600) instead of standard output")
	check := fs.Bool("check", false, "check the credentials the configuration names against the API server instead")
	offline := fs.Bool("offline", false, "with --check: only check that the credentials exist and load, without contacting the API server")
	configPath := fs.String("config", "", "configuration file for --check (default /etc/bridge-agent/config.yaml)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bridge-agent kubeconfig: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *check {
		rc, err := checkCredentials(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
			return 1
		}
		if *offline {
			fmt.Fprintln(stdout, "configuration valid; credentials load")
			return 0
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		failed := false
		for _, c := range doctor.CredentialChecks(ctx, rc, time.Now()) {
			w := stdout
			if c.Verdict == doctor.Fail {
				w, failed = stderr, true
			}
			fmt.Fprintf(w, "[%s] %s: %s\n", c.Verdict, c.Name, c.Detail)
			if c.Fix != "" {
				fmt.Fprintf(w, "       fix: %s\n", c.Fix)
			}
		}
		if failed {
			return 1
		}
		return 0
	}
	if *server == "" || *tokenFile == "" || *caFile == "" {
		fmt.Fprint(stderr, "bridge-agent kubeconfig: --server, --token-file and --ca-file are required\n\n")
		fs.Usage()
		return 2
	}
	data, err := makeKubeconfig(*server, *tokenFile, *caFile)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: kubeconfig: %v\n", err)
		return 1
	}
	if *out == "" {
		_, _ = stdout.Write(data)
		return 0
	}
	if err := atomicfile.WriteFile(*out, data, 0o600); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: kubeconfig: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s\n", *out)
	return 0
}

// The kubeconfig document, as much of it as a single token user needs.
type kubeconfigFile struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

type namedCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server                   string `json:"server"`
		CertificateAuthorityData []byte `json:"certificate-authority-data"`
	} `json:"cluster"`
}

type namedUser struct {
	Name string `json:"name"`
	User struct {
		Token string `json:"token"`
	} `json:"user"`
}

type namedContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	} `json:"context"`
}

// makeKubeconfig builds a kubeconfig for server with the token and CA
// certificates of the given files embedded.
func makeKubeconfig(server, tokenFile, caFile string) ([]byte, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("--server: want https://host[:port], got %q", server)
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	token := strings.TrimSpace(string(tok))
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return nil, fmt.Errorf("--token-file %s: want one token on one line", tokenFile)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	if err := checkPEMCertificates(ca); err != nil {
		return nil, fmt.Errorf("--ca-file %s: %w", caFile, err)
	}
	const name = "bridge-agent"
	var k kubeconfigFile
	k.APIVersion, k.Kind, k.CurrentContext = "v1", "Config", name
	var c namedCluster
	c.Name = name
	c.Cluster.Server = strings.TrimSuffix(server, "/")
	c.Cluster.CertificateAuthorityData = ca
	var usr namedUser
	usr.Name = name
	usr.User.Token = token
	var ctx namedContext
	ctx.Name = name
	ctx.Context.Cluster, ctx.Context.User = name, name
	k.Clusters, k.Users, k.Contexts = []namedCluster{c}, []namedUser{usr}, []namedContext{ctx}
	body, err := yaml.Marshal(k)
	if err != nil {
		return nil, err
	}
	head := fmt.Sprintf("# bridge-agent's credentials for %s, made by `bridge-agent kubeconfig` (%s).\n# Keep it readable by root only.\n", c.Cluster.Server, version.Version)
	return append([]byte(head), body...), nil
}

// checkPEMCertificates accepts data holding at least one PEM certificate and
// nothing but certificates.
func checkPEMCertificates(data []byte) error {
	n := 0
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return errors.New("not PEM (want the CA certificate, -----BEGIN CERTIFICATE-----)")
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a %s, want only certificates", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return err
		}
		n++
		rest = bytes.TrimSpace(rest)
	}
	if n == 0 {
		return errors.New("empty")
	}
	return nil
}

// checkCredentials loads and validates the configuration at path (default
// location when empty) and loads the credentials it names, without
// contacting the API server; a host's own token must not have expired.
func checkCredentials(path string) (*rest.Config, error) {
	args := []string{}
	if path != "" {
		args = append(args, "--config", path)
	}
	cfg, err := newConfigFlags("kubeconfig", io.Discard).load(args)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rc, err := cluster.RESTConfig(cluster.ClientOptions{
		Kubeconfig: cfg.Kubeconfig,
		URL:        cfg.APIServer.URL,
		TokenFile:  cfg.APIServer.TokenFile,
		CAFile:     cfg.APIServer.CAFile,
	})
	if err != nil {
		return nil, err
	}
	if rc.Host == "" {
		return nil, fmt.Errorf("kubeconfig %s names no API server", cfg.Kubeconfig)
	}
	// A host's own token that expired cannot be renewed: say so now.
	if _, err := hostIdentity(rc); err != nil {
		return nil, err
	}
	return rc, nil
}
