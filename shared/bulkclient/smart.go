package bulkclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// BackendServices gets access tokens as a SMART Backend Services client
// (Bulk Data v2 §8): it signs a client assertion (RS384 or ES384) and
// exchanges it at the server's token endpoint. Token caches the access
// token until shortly before it expires; set it as Client.Token.
type BackendServices struct {
	// HTTP sends the requests; nil is a client with a 30-second timeout.
	HTTP *http.Client
	// BaseURL is the FHIR base; the token endpoint is discovered at
	// BaseURL/.well-known/smart-configuration unless TokenURL is set.
	BaseURL  string
	TokenURL string
	ClientID string
	// Key signs the assertions, KeyID names it (the kid of the registered
	// JWK; empty is the key's RFC 7638 thumbprint, as flatfhir clients
	// keygen names keys) and Alg is RS384 or ES384 (see ReadPrivateKey).
	Key   crypto.Signer
	KeyID string
	Alg   string
	// Scope is the scope requested, e.g. "system/*.rs".
	Scope string

	mu      sync.Mutex
	token   string
	expires time.Time
}

// TokenResponse is the token endpoint's answer.
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
}

// Token returns a valid access token, fetching a new one when the cached
// one expires within a minute.
func (b *BackendServices) Token(ctx context.Context) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.token != "" && time.Until(b.expires) > time.Minute {
		return b.token, nil
	}
	tr, _, err := b.Request(ctx)
	if err != nil {
		return "", err
	}
	b.token, b.expires = tr.AccessToken, time.Now().Add(time.Duration(tr.ExpiresIn)*time.Second)
	return b.token, nil
}

// Request asks for a new access token and returns it with the raw answer.
func (b *BackendServices) Request(ctx context.Context) (TokenResponse, []byte, error) {
	hc := b.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	endpoint := b.TokenURL
	if endpoint == "" {
		var err error
		if endpoint, err = discoverTokenEndpoint(ctx, hc, strings.TrimRight(b.BaseURL, "/")); err != nil {
			return TokenResponse{}, nil, err
		}
	}
	method := jwt.GetSigningMethod(b.Alg)
	if method == nil || (b.Alg != "RS384" && b.Alg != "ES384") {
		return TokenResponse{}, nil, fmt.Errorf("assertion algorithm %q is not RS384 or ES384", b.Alg)
	}
	var jti [16]byte
	_, _ = rand.Read(jti[:]) // crypto/rand.Read never fails
	now := time.Now()
	tok := jwt.NewWithClaims(method, jwt.RegisteredClaims{
		Issuer: b.ClientID, Subject: b.ClientID, Audience: jwt.ClaimStrings{endpoint}, ID: hex.EncodeToString(jti[:]),
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(4 * time.Minute)),
	})
	kid := b.KeyID
	if kid == "" {
		var err error
		if kid, err = Thumbprint(b.Key.Public()); err != nil {
			return TokenResponse{}, nil, err
		}
	}
	tok.Header["kid"] = kid
	assertion, err := tok.SignedString(b.Key)
	if err != nil {
		return TokenResponse{}, nil, fmt.Errorf("sign assertion: %w", err)
	}
	form := url.Values{
		"grant_type": {"client_credentials"}, "scope": {b.Scope},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return TokenResponse{}, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return TokenResponse{}, nil, fmt.Errorf("token request: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return TokenResponse{}, nil, fmt.Errorf("token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return TokenResponse{}, body, fmt.Errorf("token request refused (%d): %s", resp.StatusCode, body)
	}
	var tr TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil || tr.AccessToken == "" || tr.ExpiresIn <= 0 {
		return TokenResponse{}, body, fmt.Errorf("token response without access_token and expires_in: %s", body)
	}
	return tr, body, nil
}

func discoverTokenEndpoint(ctx context.Context, hc *http.Client, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/.well-known/smart-configuration", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	defer resp.Body.Close()
	var sc struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&sc) != nil || sc.TokenEndpoint == "" {
		return "", fmt.Errorf("discovery at %s/.well-known/smart-configuration failed (HTTP %d); does the server require authorization?", base, resp.StatusCode)
	}
	return sc.TokenEndpoint, nil
}

// ReadPrivateKey reads a PEM private key (PKCS#8, SEC 1 or PKCS#1) and the
// assertion algorithm it signs with: ES384 for an EC P-384 key, RS384 for
// an RSA key.
func ReadPrivateKey(path string) (crypto.Signer, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("read key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, "", fmt.Errorf("%s holds no PEM block", path)
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, "", fmt.Errorf("parse key %s: %w", path, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P384() {
			return nil, "", errors.New("an EC key must be on P-384 (ES384)")
		}
		return k, "ES384", nil
	case *rsa.PrivateKey:
		return k, "RS384", nil
	}
	return nil, "", fmt.Errorf("key %s is not EC P-384 or RSA", path)
}
