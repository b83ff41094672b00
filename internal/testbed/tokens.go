package testbed

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CAPEM returns the cluster CA's certificate, PEM.
func (t *Testbed) CAPEM() []byte { return append([]byte(nil), t.pki.caPEM...) }

// WriteKubeconfig writes a token kubeconfig for the testbed's API server to
// path; caPEM nil means the cluster's own CA, server "" its URL.
func (t *Testbed) WriteKubeconfig(path, server, token string, caPEM []byte) error {
	if caPEM == nil {
		caPEM = t.pki.caPEM
	}
	if server == "" {
		server = t.APIServerURL
	}
	return writeKubeconfig(path, server, caPEM, "user", token)
}

// ServiceAccountToken creates ServiceAccount namespace/name (and the
// namespace) unless they exist, and returns a token for it from the
// TokenRequest API. It binds no role: the token authenticates and may do
// nothing else.
func (t *Testbed) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	if err := t.ensureNamespace(ctx, namespace); err != nil {
		return "", fmt.Errorf("service account token: %w", err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := t.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("service account token: %w", err)
	}
	tr, err := t.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("service account token for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// ExpiredServiceAccountToken returns a token of ServiceAccount
// namespace/name signed with the API server's own service account signing
// key, as the TokenRequest API would, but whose validity ended an hour ago.
// (The TokenRequest API cannot mint one that expires soon: its minimum is
// ten minutes.) The API server rejects it as expired.
func (t *Testbed) ExpiredServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	sa, err := t.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("expired token: %w", err)
	}
	keyPEM, err := os.ReadFile(t.pki.saKey)
	if err != nil {
		return "", fmt.Errorf("expired token: %w", err)
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return "", errors.New("expired token: signing key is not PEM")
	}
	key, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	if err != nil {
		return "", fmt.Errorf("expired token: %w", err)
	}
	now := time.Now()
	issuer := "https://kubernetes.default.svc." + clusterDomain
	claims := map[string]any{
		"iss": issuer,
		"aud": []string{issuer},
		"sub": "system:serviceaccount:" + namespace + ":" + name,
		"iat": now.Add(-2 * time.Hour).Unix(),
		"nbf": now.Add(-2 * time.Hour).Unix(),
		"exp": now.Add(-time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]string{"name": name, "uid": string(sa.UID)},
		},
	}
	return signRS256(key, claims)
}

// signRS256 makes a compact JWS of claims, as kube-apiserver's token
// generator does.
func signRS256(key *rsa.PrivateKey, claims any) (string, error) {
	enc := base64.RawURLEncoding
	head, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT"})
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := enc.EncodeToString(head) + "." + enc.EncodeToString(body)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + enc.EncodeToString(sig), nil
}
