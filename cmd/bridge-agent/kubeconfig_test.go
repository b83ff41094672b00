package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/member"
)

// testCA writes a self-signed CA certificate and returns its path and PEM.
func testCA(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	path := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(path, p, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, p
}

func TestKubeconfigFromTokenAndCA(t *testing.T) {
	dir := t.TempDir()
	caPath, caPEM := testCA(t, dir)
	tokenPath := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenPath, []byte("abc.def.ghi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"kubeconfig", "--server", "https://10.0.0.2:6443", "--token-file", tokenPath, "--ca-file", caPath}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, stdout.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	// The agent reads it as it reads any kubeconfig.
	rc, err := cluster.RESTConfig(cluster.ClientOptions{Kubeconfig: kc})
	if err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	if rc.Host != "https://10.0.0.2:6443" || rc.BearerToken != "abc.def.ghi" || !bytes.Equal(rc.CAData, caPEM) {
		t.Errorf("got host %q token %q CA %d bytes\n%s", rc.Host, rc.BearerToken, len(rc.CAData), stdout.String())
	}

	// -o writes the same, readable by root only.
	out := filepath.Join(dir, "written")
	stdout.Reset()
	if code := realMain([]string{"kubeconfig", "--server", "https://10.0.0.2:6443", "--token-file", tokenPath, "--ca-file", caPath, "-o", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("-o: exit %d: %s", code, stderr.String())
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("-o: mode %v, want 0600", fi.Mode().Perm())
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, mustReadFile(t, kc)) {
		t.Errorf("-o wrote something else:\n%s", got)
	}
}

func TestKubeconfigRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	caPath, _ := testCA(t, dir)
	good := filepath.Join(dir, "token")
	twoTokens := filepath.Join(dir, "two")
	notPEM := filepath.Join(dir, "notpem")
	for p, s := range map[string]string{good: "tok\n", twoTokens: "a b\n", notPEM: "hello\n"} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, tc := range map[string]struct {
		args []string
		code int
		msg  string
	}{
		"http server":      {[]string{"--server", "http://h:6443", "--token-file", good, "--ca-file", caPath}, 1, "want https://"},
		"server path":      {[]string{"--server", "https://h:6443/x", "--token-file", good, "--ca-file", caPath}, 1, "want https://"},
		"token with space": {[]string{"--server", "https://h", "--token-file", twoTokens, "--ca-file", caPath}, 1, "one token"},
		"missing token":    {[]string{"--server", "https://h", "--token-file", filepath.Join(dir, "nope"), "--ca-file", caPath}, 1, "--token-file"},
		"CA not PEM":       {[]string{"--server", "https://h", "--token-file", good, "--ca-file", notPEM}, 1, "not PEM"},
		"missing flags":    {[]string{"--server", "https://h"}, 2, "required"},
	} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := realMain(append([]string{"kubeconfig"}, tc.args...), &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.msg) || stdout.Len() != 0 {
				t.Errorf("exit %d (want %d), stdout %q, stderr %q (want %q)", code, tc.code, stdout.String(), stderr.String(), tc.msg)
			}
		})
	}
}

func TestKubeconfigCheck(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	cfg := filepath.Join(dir, "config.yaml")
	doc := "apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nkubeconfig: " + kc + "\n"
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func() (int, string) {
		var stdout, stderr bytes.Buffer
		code := realMain([]string{"kubeconfig", "--check", "--config", cfg}, &stdout, &stderr)
		return code, stderr.String()
	}
	if code, msg := check(); code != 1 || !strings.Contains(msg, kc) {
		t.Errorf("without the kubeconfig: exit %d, %q; want 1 naming %s", code, msg, kc)
	}
	caPath, _ := testCA(t, dir)
	tokenPath := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenPath, []byte("tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	// Port 1 of the loopback address: nothing listens, the connection is
	// refused at once.
	if code := realMain([]string{"kubeconfig", "--server", "https://127.0.0.1:1", "--token-file", tokenPath, "--ca-file", caPath, "-o", kc}, &stdout, &stderr); code != 0 {
		t.Fatal(stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	if code := realMain([]string{"kubeconfig", "--check", "--offline", "--config", cfg}, &stdout, &stderr); code != 0 {
		t.Errorf("--offline with the kubeconfig: exit %d: %s", code, stderr.String())
	}
	// Without --offline the API server is asked, and cannot be reached.
	if code, msg := check(); code != 1 || !strings.Contains(msg, "connection refused") || !strings.Contains(msg, "fix: ") {
		t.Errorf("with the kubeconfig but no API server: exit %d, %q; want 1, connection refused, and a fix", code, msg)
	}
	// An invalid configuration is not "configured" either.
	if err := os.WriteFile(cfg, []byte(doc+"dns:\n  listenAddress: 0.0.0.0:53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, msg := check(); code != 1 || !strings.Contains(msg, "dns.listenAddress") {
		t.Errorf("invalid config: exit %d, %q", code, msg)
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An expired token of a host's own identity fails the check with what to run.
func TestCheckCredentialsExpiredHostToken(t *testing.T) {
	dir := t.TempDir()
	payload := base64.RawURLEncoding.EncodeToString([]byte(`{"iat":1700000000,"exp":1700000600,"kubernetes.io":{"namespace":"bridge-agent","serviceaccount":{"name":"bridge-agent-vm7"}}}`))
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("e30."+payload+".c2ln"), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(dir, "kubeconfig")
	data, err := member.Kubeconfig("vm7", "https://10.0.0.2:6443", []byte("-----BEGIN CERTIFICATE-----\n"), tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kc, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nkubeconfig: "+kc+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = checkCredentials(cfg)
	if err == nil || !strings.Contains(err.Error(), "credentials of host vm7 expired at 2023-11-14T22:23:20Z") || !strings.Contains(err.Error(), "bridge-agent host add vm7") {
		t.Errorf("check with an expired host token: %v", err)
	}
}
