package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/api/auth"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flatfhir test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

func TestAuthTLSServesOnlyTLS12AndLater(t *testing.T) {
	bus := newAuthBus(t)
	certFile, keyFile, pool := selfSigned(t)
	base, _ := bus.startAPI(t, func(c *Config) { c.TLSCertFile, c.TLSKeyFile = certFile, keyFile })
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("base %s", base)
	}
	get := func(minV, maxV uint16) (*http.Response, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: minV, MaxVersion: maxV}}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get(base + "/.well-known/smart-configuration")
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		resp, err := get(v, v)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("TLS %x: %v", v, err)
		}
	}
	if _, err := get(tls.VersionTLS10, tls.VersionTLS11); err == nil {
		t.Error("a TLS 1.1 client was served")
	}
	// The discovery document names the https token endpoint.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	httpClient := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := httpClient.Get(base + "/metadata")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("metadata over TLS: %d", resp.StatusCode)
	}
}

func TestAuthSigningKeyRotation(t *testing.T) {
	bus := newAuthBus(t)
	baseA, _ := bus.startAPI(t)
	baseB, _ := bus.startAPI(t, func(c *Config) { c.BaseURL = baseA })
	c := newTestClient(t, "rotor", "ES384", 0)
	register(t, baseA, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/*.rs"})
	before := c.token(t, baseA, "system/*.rs").AccessToken
	rotate := func(query string) {
		resp, body := send(t, "POST", baseA+"/admin/keys/rotate"+query, nil, "Authorization", "Bearer "+testAdminToken)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rotate: %d %s", resp.StatusCode, body)
		}
	}
	rotate("")
	after := c.token(t, baseA, "system/*.rs").AccessToken
	for i, tok := range []string{before, after} {
		if resp, body := kickoffWith(t, baseB, tok, "?_type=Patient&_since=202"+string(rune('0'+i))+"-01-01T00:00:00Z"); resp.StatusCode != http.StatusAccepted {
			t.Errorf("after rotation, replica B: %d %s", resp.StatusCode, body)
		}
	}
	rotate("?revoke=true")
	for _, tok := range []string{before, after} {
		if resp, _ := kickoffWith(t, baseB, tok, "?_type=Observation"); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("a token of a revoked key: %d", resp.StatusCode)
		}
	}
}
