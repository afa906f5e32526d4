package api

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/chstore"
	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

const testAdminToken = "test-admin-token-0123456789"

// authBus is one test's NATS and ClickHouse, shared by the API replicas
// it starts.
type authBus struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	store *chstore.Store
	// offset shifts every replica's clock (expired-token tests).
	offset atomic.Int64
}

func newAuthBus(t *testing.T) *authBus {
	t.Helper()
	nc, js := testenv.JetStream(t, testenv.NATS(t))
	sc := streams.DefaultConfig()
	sc.Memory = true
	if err := streams.Ensure(t.Context(), js, sc); err != nil {
		t.Fatal(err)
	}
	return &authBus{nc: nc, js: js, store: testenv.Store(t)}
}

func (b *authBus) now() time.Time { return time.Now().Add(time.Duration(b.offset.Load())) }

// startAPI starts an API replica with auth on, serving on loopback, and
// returns its base URL.
func (b *authBus) startAPI(t *testing.T, adjust ...func(*Config)) (string, *Server) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen, cfg.Auth, cfg.AdminToken, cfg.PollRate, cfg.PollBurst = "127.0.0.1:0", true, testAdminToken, 0, 0
	for _, f := range adjust {
		f(&cfg)
	}
	srv, err := New(t.Context(), cfg, Deps{NC: b.nc, JS: b.js, Store: b.store, Log: testenv.Logger(t),
		Tracer: tracenoop.NewTracerProvider(), Meter: metricnoop.NewMeterProvider(), Now: b.now})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api stopped with: %v", err)
		}
	})
	scheme := "http"
	if cfg.TLSCertFile != "" {
		scheme = "https"
	}
	return scheme + "://" + ln.Addr().String(), srv
}

// testClient is a client's key pair and what it registers.
type testClient struct {
	id  string
	kid string
	alg string
	key crypto.Signer
}

var (
	rsaOnce sync.Once
	rsaKeys [2]*rsa.PrivateKey
)

// newTestClient makes a client with a fresh ES384 key, or an RS384 one
// (RSA keys are generated once per test binary: they are slow to make).
func newTestClient(t testing.TB, id, alg string, n int) testClient {
	t.Helper()
	c := testClient{id: id, kid: id + "-key", alg: alg}
	switch alg {
	case "RS384":
		rsaOnce.Do(func() {
			for i := range rsaKeys {
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					panic(err)
				}
				rsaKeys[i] = k
			}
		})
		c.key = rsaKeys[n%2]
	default:
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		c.key = k
	}
	return c
}

// jwk is the public JWK of the client's key under kid.
func (c testClient) jwk(t testing.TB, kid string) json.RawMessage {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(c.key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(c.alg)}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(j.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jwks(keys ...json.RawMessage) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"keys": keys})
	return b
}

// register stores the client through the admin endpoint.
func register(t testing.TB, base string, c auth.Client) {
	t.Helper()
	body, _ := json.Marshal(c)
	resp, b := send(t, "PUT", base+"/admin/clients/"+c.ID, strings.NewReader(string(body)), "Authorization", "Bearer "+testAdminToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("register %s: %d %s", c.ID, resp.StatusCode, b)
	}
}

// assertion builds a signed client assertion; adjust may change its
// header and claims before signing.
func (c testClient) assertion(t testing.TB, aud string, adjust func(h map[string]any, cl jwt.MapClaims)) string {
	t.Helper()
	now := time.Now()
	claims := jwt.MapClaims{"iss": c.id, "sub": c.id, "aud": aud, "exp": now.Add(4 * time.Minute).Unix(), "jti": randomID()}
	method := jwt.GetSigningMethod(c.alg)
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = c.kid
	if adjust != nil {
		adjust(tok.Header, claims)
	}
	// A changed alg header is signed with the key's own method anyway.
	s, err := tok.SignedString(c.key)
	if err != nil {
		t.Fatalf("sign assertion: %v", err)
	}
	return s
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hexOf(b)
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, x := range b {
		out = append(out, digits[x>>4], digits[x&15])
	}
	return string(out)
}

// tokenResponse is the token endpoint's answer, success or error.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   *int   `json:"expires_in"`
	Scope       string `json:"scope"`
	Refresh     string `json:"refresh_token"`
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

// requestToken posts a token request as a Backend Services client does.
func requestToken(t testing.TB, base string, form url.Values) (*http.Response, tokenResponse) {
	t.Helper()
	resp, body := send(t, "POST", base+"/auth/token", strings.NewReader(form.Encode()), "Content-Type", "application/x-www-form-urlencoded")
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		t.Fatalf("token response is not JSON: %v\n%s", err, body)
	}
	return resp, tr
}

func tokenForm(assertion, scope string) url.Values {
	return url.Values{
		"grant_type": {"client_credentials"}, "scope": {scope},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion},
	}
}

// token gets an access token for c, failing the test otherwise.
func (c testClient) token(t testing.TB, base, scope string) tokenResponse {
	t.Helper()
	resp, tr := requestToken(t, base, tokenForm(c.assertion(t, base+"/auth/token", nil), scope))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token for %s: %d %+v", c.id, resp.StatusCode, tr)
	}
	return tr
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func send(t testing.TB, method, u string, body io.Reader, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// kickoffWith starts a system export with the token and returns the
// response.
func kickoffWith(t testing.TB, base, token, query string) (*http.Response, []byte) {
	t.Helper()
	h := []string{"Accept", "application/fhir+json", "Prefer", "respond-async"}
	if token != "" {
		h = append(h, "Authorization", "Bearer "+token)
	}
	return send(t, "GET", base+"/$export"+query, nil, h...)
}
