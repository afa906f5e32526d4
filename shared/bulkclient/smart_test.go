package bulkclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// TestBulkClientBackendServicesToken: the assertion is what §8 asks (iss =
// sub = client, aud = the discovered token endpoint, a jti, kid and
// ES384), and Token caches the access token it got.
func TestBulkClientBackendServicesToken(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(t.TempDir(), "client.key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	var tokens atomic.Int32
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/smart-configuration":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"token_endpoint":%q}`, srv.URL+"/auth/token")
		case "/auth/token":
			tokens.Add(1)
			if err := r.ParseForm(); err != nil || r.Form.Get("grant_type") != "client_credentials" || r.Form.Get("scope") != "system/*.rs" ||
				r.Form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
				http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
				return
			}
			claims := jwt.RegisteredClaims{}
			tok, err := jwt.ParseWithClaims(r.Form.Get("client_assertion"), &claims, func(tok *jwt.Token) (any, error) { return &key.PublicKey, nil },
				jwt.WithValidMethods([]string{"ES384"}), jwt.WithAudience(srv.URL+"/auth/token"), jwt.WithIssuer("demo"))
			if err != nil || claims.Subject != "demo" || claims.ID == "" || tok.Header["kid"] != "kid-1" {
				http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(TokenResponse{AccessToken: "at-1", TokenType: "bearer", ExpiresIn: 300, Scope: "system/*.rs"})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	signer, alg, err := ReadPrivateKey(keyFile)
	if err != nil || alg != "ES384" {
		t.Fatalf("read key: %s, %v", alg, err)
	}
	bs := &BackendServices{BaseURL: srv.URL, ClientID: "demo", Key: signer, KeyID: "kid-1", Alg: alg, Scope: "system/*.rs"}
	for range 3 {
		tok, err := bs.Token(t.Context())
		if err != nil || tok != "at-1" {
			t.Fatalf("token %q, %v", tok, err)
		}
	}
	if n := tokens.Load(); n != 1 {
		t.Errorf("%d token requests for three Token calls, want 1 (cached)", n)
	}
	bad := &BackendServices{BaseURL: srv.URL, ClientID: "someone-else", Key: signer, KeyID: "kid-1", Alg: alg, Scope: "system/*.rs"}
	if _, err := bad.Token(t.Context()); err == nil {
		t.Error("a refused assertion gave a token")
	}
}
