package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/streams"
)

func TestAuthDiscoveryAndPublicEndpoints(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)

	resp, body := send(t, "GET", base+"/.well-known/smart-configuration", nil, "Accept", "text/html")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("smart-configuration: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var sc map[string]any
	if err := json.Unmarshal(body, &sc); err != nil {
		t.Fatal(err)
	}
	if sc["token_endpoint"] != base+"/auth/token" || sc["authorization_endpoint"] != base+"/auth/authorize" {
		t.Errorf("endpoints: %v %v", sc["token_endpoint"], sc["authorization_endpoint"])
	}
	has := func(field string, want ...string) {
		list, _ := sc[field].([]any)
		for _, w := range want {
			found := false
			for _, v := range list {
				found = found || v == w
			}
			if !found {
				t.Errorf("%s %v lacks %q", field, list, w)
			}
		}
	}
	has("token_endpoint_auth_methods_supported", "private_key_jwt")
	has("token_endpoint_auth_signing_alg_values_supported", "RS384", "ES384")
	has("grant_types_supported", "client_credentials", "authorization_code")
	has("capabilities", "client-confidential-asymmetric", "permission-v1", "permission-v2")
	has("scopes_supported", "system/*.rs", "system/*.read")
	has("code_challenge_methods_supported", "S256")
	has("response_types_supported", "code")
	if strings.Contains(string(body), `"plain"`) {
		t.Errorf("code_challenge_methods_supported must not hold plain: %s", body)
	}

	resp, body = send(t, "GET", base+"/metadata", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"SMART-on-FHIR"`) || !strings.Contains(string(body), base+"/auth/token") {
		t.Errorf("metadata without a token: %d, security %v", resp.StatusCode, strings.Contains(string(body), "SMART-on-FHIR"))
	}

	// Everything else needs a token.
	for _, r := range []struct{ method, path string }{
		{"GET", "/$export"}, {"POST", "/$export"}, {"GET", "/Patient/$export"}, {"GET", "/Group/g1/$export"},
		{"GET", "/jobs/abc"}, {"DELETE", "/jobs/abc"}, {"GET", "/files/abc/Patient.000.ndjson"},
		{"GET", "/Patient/p1"}, {"GET", "/Group?name=x"}, {"PUT", "/Patient/p1"}, {"DELETE", "/Patient/p1"}, {"POST", "/Patient"},
		{"POST", "/$ingest"},
	} {
		resp, body := send(t, r.method, base+r.path, nil, "Accept", "application/fhir+json")
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") ||
			!strings.Contains(string(body), `"OperationOutcome"`) || strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
			t.Errorf("%s %s without a token: %d %q %s", r.method, r.path, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
	}
	resp, _ = send(t, "GET", base+"/$export", nil, "Authorization", "Bearer not.a.token")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("bad token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

func TestAuthAdminEndpoint(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "adm", "ES384", 0)
	body := `{"jwks":` + string(jwks(c.jwk(t, c.kid))) + `,"scope":"system/*.rs"}`
	for _, tc := range []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"no credential", "PUT", "/admin/clients/adm", "", body, 401},
		{"wrong credential", "PUT", "/admin/clients/adm", "wrong-token-wrong-token", body, 401},
		{"not json", "PUT", "/admin/clients/adm", testAdminToken, "{", 400},
		{"no keys", "PUT", "/admin/clients/adm", testAdminToken, `{"scope":"system/*.rs"}`, 400},
		{"both url and jwks", "PUT", "/admin/clients/adm", testAdminToken, `{"jwks_uri":"https://example.org/jwks","jwks":{"keys":[]},"scope":"system/*.rs"}`, 400},
		{"plain http jwks url", "PUT", "/admin/clients/adm", testAdminToken, `{"jwks_uri":"http://example.org/jwks","scope":"system/*.rs"}`, 400},
		{"unknown scope", "PUT", "/admin/clients/adm", testAdminToken, `{"jwks_uri":"https://example.org/jwks","scope":"patient/*.rs"}`, 400},
		{"private key", "PUT", "/admin/clients/adm", testAdminToken, `{"jwks":{"keys":[{"kty":"EC","kid":"k","crv":"P-384","x":"a","y":"b","d":"c"}]},"scope":"system/*.rs"}`, 400},
		{"bad id", "PUT", "/admin/clients/a.b", testAdminToken, body, 400},
		{"good", "PUT", "/admin/clients/adm", testAdminToken, body, 200},
		{"read", "GET", "/admin/clients/adm", testAdminToken, "", 200},
		{"list", "GET", "/admin/clients", testAdminToken, "", 200},
		{"remove", "DELETE", "/admin/clients/adm", testAdminToken, "", 204},
		{"gone", "GET", "/admin/clients/adm", testAdminToken, "", 404},
		{"remove again", "DELETE", "/admin/clients/adm", testAdminToken, "", 404},
		{"rotate", "POST", "/admin/keys/rotate", testAdminToken, "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := []string{"Content-Type", "application/json"}
			if tc.token != "" {
				h = append(h, "Authorization", "Bearer "+tc.token)
			}
			resp, b := send(t, tc.method, base+tc.path, strings.NewReader(tc.body), h...)
			if resp.StatusCode != tc.want {
				t.Errorf("%d %s, want %d", resp.StatusCode, b, tc.want)
			}
		})
	}
}

func TestAuthTokenGoodAssertions(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	rs := newTestClient(t, "rs-client", "RS384", 0)
	register(t, base, auth.Client{ID: rs.id, JWKS: jwks(rs.jwk(t, rs.kid)), Scope: "system/*.rs"})
	es := newTestClient(t, "es-client", "ES384", 0)
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks(es.jwk(t, es.kid)))
	}))
	t.Cleanup(keys.Close)
	register(t, base, auth.Client{ID: es.id, JWKSURI: keys.URL + "/jwks.json", Scope: "system/*.read"})

	for _, c := range []testClient{rs, es} {
		t.Run(c.alg, func(t *testing.T) {
			resp, tr := requestToken(t, base, tokenForm(c.assertion(t, base+"/auth/token", nil), "system/*.read"))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%d %+v", resp.StatusCode, tr)
			}
			if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Pragma") != "no-cache" {
				t.Errorf("Cache-Control %q, Pragma %q", resp.Header.Get("Cache-Control"), resp.Header.Get("Pragma"))
			}
			if tr.AccessToken == "" || !strings.EqualFold(tr.TokenType, "bearer") || tr.ExpiresIn == nil || *tr.ExpiresIn > 300 || *tr.ExpiresIn < 1 ||
				tr.Scope != "system/*.read" || tr.Refresh != "" {
				t.Errorf("token response %+v", tr)
			}
			resp, body := kickoffWith(t, base, tr.AccessToken, "?_type=Patient")
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("kick-off with the token: %d %s", resp.StatusCode, body)
			}
		})
	}
}

func TestAuthTokenRefusesBadAssertions(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	aud := base + "/auth/token"
	rs := newTestClient(t, "rs", "RS384", 0)
	es := newTestClient(t, "es", "ES384", 0)
	other := newTestClient(t, "es", "ES384", 0) // another key under es's kid
	register(t, base, auth.Client{ID: es.id, Scope: "system/*.rs", JWKS: jwks(es.jwk(t, es.kid))})
	// rs publishes its RSA key, an EC key under "ec-only", and two RSA keys
	// under "twice" (a registered inline set may not repeat a kid; a
	// published one may).
	rsSet := jwks(rs.jwk(t, rs.kid), es.jwk(t, "ec-only"), rs.jwk(t, "twice"), newTestClient(t, "x", "RS384", 1).jwk(t, "twice"))
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		if r.URL.Path == "/rs" {
			_, _ = w.Write(rsSet)
			return
		}
		_, _ = w.Write(jwks(es.jwk(t, es.kid)))
	}))
	t.Cleanup(keys.Close)
	byURL := es
	byURL.id = "es-url"
	register(t, base, auth.Client{ID: byURL.id, Scope: "system/*.rs", JWKSURI: keys.URL + "/jwks"})
	register(t, base, auth.Client{ID: rs.id, Scope: "system/*.rs", JWKSURI: keys.URL + "/rs"})

	type adjust = func(h map[string]any, c jwt.MapClaims)
	for _, tc := range []struct {
		name   string
		client testClient
		adjust adjust
		form   func(f map[string][]string)
		code   string
		status int
		says   string
	}{
		{name: "wrong iss", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["iss"] = "rs" }, says: "differ"},
		{name: "wrong sub", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["sub"] = "rs" }, says: "differ"},
		{name: "unknown client", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["iss"], c["sub"] = "nobody", "nobody" }, says: "not registered"},
		{name: "no iss", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { delete(c, "iss") }, says: "iss"},
		{name: "wrong aud", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["aud"] = base + "/token" }, says: "aud"},
		{name: "exp missing", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { delete(c, "exp") }, says: "no exp"},
		{name: "exp too far", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["exp"] = time.Now().Add(10 * time.Minute).Unix() }, says: "ahead"},
		{name: "exp past", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["exp"] = time.Now().Add(-5 * time.Minute).Unix() }, says: "expired"},
		{name: "exp not a number", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["exp"] = "soon" }, says: "not a JWT"},
		{name: "nbf in future", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { c["nbf"] = time.Now().Add(3 * time.Minute).Unix() }, says: "nbf"},
		{name: "no jti", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { delete(c, "jti") }, says: "jti"},
		{name: "bad signature", client: other, says: "signature"},
		{name: "wrong alg", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { h["alg"] = "ES256" }, says: "alg"},
		{name: "alg none", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { h["alg"] = "none" }, says: "alg"},
		{name: "typ not JWT", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { h["typ"] = "at+jwt" }, says: "typ"},
		{name: "no kid", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { delete(h, "kid") }, says: "kid"},
		{name: "unknown kid", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { h["kid"] = "nope" }, says: "no key"},
		{name: "two keys with one kid", client: rs, adjust: func(h map[string]any, c jwt.MapClaims) { h["kid"] = "twice" }, says: "exactly one"},
		{name: "kty does not fit alg", client: rs, adjust: func(h map[string]any, c jwt.MapClaims) { h["kid"] = "ec-only" }, says: "kty RSA"},
		{name: "jku with inline jwks", client: es, adjust: func(h map[string]any, c jwt.MapClaims) { h["jku"] = keys.URL + "/jwks" }, says: "jku"},
		{name: "jku mismatch", client: byURL, adjust: func(h map[string]any, c jwt.MapClaims) { h["jku"] = keys.URL + "/other" }, says: "jku"},
		{name: "not a jwt", client: es, form: func(f map[string][]string) { f["client_assertion"] = []string{"abc"} }, says: "not a JWT"},
		{name: "wrong assertion type", client: es, form: func(f map[string][]string) { f["client_assertion_type"] = []string{"urn:x"} }, says: "client_assertion_type"},
		{name: "wrong grant type", client: es, form: func(f map[string][]string) { f["grant_type"] = []string{"password"} }, code: auth.CodeUnsupportedGrantType, says: "grant_type"},
		{name: "no grant type", client: es, form: func(f map[string][]string) { delete(f, "grant_type") }, code: auth.CodeInvalidRequest, says: "grant_type"},
		{name: "no scope", client: es, form: func(f map[string][]string) { delete(f, "scope") }, code: auth.CodeInvalidRequest, says: "scope"},
		{name: "no assertion", client: es, form: func(f map[string][]string) { delete(f, "client_assertion") }, code: auth.CodeInvalidRequest, says: "client_assertion"},
		{name: "repeated parameter", client: es, form: func(f map[string][]string) { f["scope"] = []string{"system/*.rs", "system/*.rs"} }, code: auth.CodeInvalidRequest, says: "more than once"},
		{name: "scope not granted", client: es, form: func(f map[string][]string) { f["scope"] = []string{"system/*.cud patient/*.rs"} }, code: auth.CodeInvalidScope, says: "none of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := tokenForm(tc.client.assertion(t, aud, tc.adjust), "system/*.rs")
			if tc.form != nil {
				tc.form(form)
			}
			resp, tr := requestToken(t, base, form)
			code := tc.code
			if code == "" {
				code = auth.CodeInvalidClient
			}
			if resp.StatusCode != http.StatusBadRequest || tr.Error != code || !strings.Contains(tr.Description, tc.says) || tr.AccessToken != "" {
				t.Errorf("%d %s %q, want 400 %s naming %q", resp.StatusCode, tr.Error, tr.Description, code, tc.says)
			}
			if resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("an error has Cache-Control %q", resp.Header.Get("Cache-Control"))
			}
		})
	}
	t.Run("good jku", func(t *testing.T) {
		a := byURL.assertion(t, aud, func(h map[string]any, c jwt.MapClaims) { h["jku"] = keys.URL + "/jwks" })
		if resp, tr := requestToken(t, base, tokenForm(a, "system/*.rs")); resp.StatusCode != http.StatusOK {
			t.Errorf("%d %+v", resp.StatusCode, tr)
		}
	})
	t.Run("form content type", func(t *testing.T) {
		resp, body := send(t, "POST", aud, strings.NewReader(`{"grant_type":"client_credentials"}`), "Content-Type", "application/json")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid_request") {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
	})
}

func TestAuthReplayRefusedAcrossReplicas(t *testing.T) {
	bus := newAuthBus(t)
	baseA, _ := bus.startAPI(t)
	baseB, _ := bus.startAPI(t, func(c *Config) { c.BaseURL = baseA }) // one public base behind a balancer
	c := newTestClient(t, "replay", "ES384", 0)
	register(t, baseA, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/*.rs"})
	form := tokenForm(c.assertion(t, baseA+"/auth/token", nil), "system/*.rs")
	if resp, tr := requestToken(t, baseA, form); resp.StatusCode != http.StatusOK {
		t.Fatalf("first use on replica A: %d %+v", resp.StatusCode, tr)
	}
	for _, base := range []string{baseB, baseA} {
		resp, tr := requestToken(t, base, form)
		if resp.StatusCode != http.StatusBadRequest || tr.Error != auth.CodeInvalidClient || !strings.Contains(tr.Description, "already used") {
			t.Errorf("replay on %s: %d %+v", base, resp.StatusCode, tr)
		}
	}
	// A token from replica A works on replica B: they share the keyring.
	tr := c.token(t, baseA, "system/*.rs")
	if resp, body := kickoffWith(t, baseB, tr.AccessToken, "?_type=Patient"); resp.StatusCode != http.StatusAccepted {
		t.Errorf("replica B refuses replica A's token: %d %s", resp.StatusCode, body)
	}
}

func TestAuthJWKSURLCachedAsCacheControlAllows(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "cached", "ES384", 0)
	var (
		mu      sync.Mutex
		set     = jwks(c.jwk(t, c.kid))
		control = "max-age=120"
		fetches atomic.Int32
	)
	keys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("Accept") != "application/json" {
			t.Errorf("JWKS fetched with Accept %q", r.Header.Get("Accept"))
		}
		w.Header().Set("Cache-Control", control)
		_, _ = w.Write(set)
	}))
	t.Cleanup(keys.Close)
	register(t, base, auth.Client{ID: c.id, JWKSURI: keys.URL + "/.well-known/jwks.json", Scope: "system/*.rs"})

	c.token(t, base, "system/*.rs")
	c.token(t, base, "system/*.rs")
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches for two tokens within max-age, want 1", n)
	}
	// The client rotates to a new key and stops allowing caching.
	next := newTestClient(t, "cached", "ES384", 0)
	next.kid = "cached-key-2"
	mu.Lock()
	set, control = jwks(next.jwk(t, next.kid)), "no-store"
	mu.Unlock()
	next.token(t, base, "system/*.rs") // unknown kid in the cached set: fetched again
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d fetches after the key change, want 2", n)
	}
	next.token(t, base, "system/*.rs")
	next.token(t, base, "system/*.rs")
	if n := fetches.Load(); n != 4 {
		t.Errorf("%d fetches with no-store, want one per token request (4)", n)
	}
	// The old key is gone from the set: refused, after a fresh fetch.
	resp, tr := requestToken(t, base, tokenForm(c.assertion(t, base+"/auth/token", nil), "system/*.rs"))
	if resp.StatusCode != http.StatusBadRequest || tr.Error != auth.CodeInvalidClient {
		t.Errorf("removed key: %d %+v", resp.StatusCode, tr)
	}
	if n := fetches.Load(); n != 5 {
		t.Errorf("%d fetches, want 5", n)
	}
}

func TestAuthRevokedClientRefusedAtOnce(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "revoked", "ES384", 0)
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/*.rs"})
	tr := c.token(t, base, "system/*.rs")
	if resp, body := send(t, "DELETE", base+"/admin/clients/"+c.id, nil, "Authorization", "Bearer "+testAdminToken); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("remove: %d %s", resp.StatusCode, body)
	}
	if resp, tr := requestToken(t, base, tokenForm(c.assertion(t, base+"/auth/token", nil), "system/*.rs")); resp.StatusCode != http.StatusBadRequest || tr.Error != auth.CodeInvalidClient {
		t.Errorf("token for a removed client: %d %+v", resp.StatusCode, tr)
	}
	resp, _ := kickoffWith(t, base, tr.AccessToken, "")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("a removed client's token: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	// Narrowing a client's scopes narrows its outstanding tokens too.
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/*.rs"})
	tr = c.token(t, base, "system/*.rs")
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/Patient.rs"})
	if resp, body := kickoffWith(t, base, tr.AccessToken, "?_type=Observation"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a narrowed client's token: %d %s", resp.StatusCode, body)
	}
}

func TestAuthScopeNarrowing(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "narrow", "ES384", 0)
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/Patient.rs system/Observation.rs system/Encounter.read"})
	for _, tc := range []struct{ requested, granted string }{
		{"system/*.read", "system/Patient.read system/Observation.read system/Encounter.read"},
		{"system/*.rs", "system/Patient.rs system/Observation.rs system/Encounter.rs"},
		{"system/*.cruds", "system/Patient.rs system/Observation.rs system/Encounter.rs"},
		{"system/*.r", "system/Patient.r system/Observation.r system/Encounter.r"},
		{"system/Observation.read", "system/Observation.read"},
		{"system/Observation.rs system/Condition.rs launch openid", "system/Observation.rs"},
		{"system/Patient.*", "system/Patient.read"},
	} {
		t.Run(tc.requested, func(t *testing.T) {
			if got := c.token(t, base, tc.requested).Scope; got != tc.granted {
				t.Errorf("granted %q, want %q", got, tc.granted)
			}
		})
	}
	for _, requested := range []string{"system/Condition.rs", "system/*.cud", "patient/*.read", "system/*.dus", "system/Observation.rs?category=laboratory"} {
		t.Run("refused "+requested, func(t *testing.T) {
			resp, tr := requestToken(t, base, tokenForm(c.assertion(t, base+"/auth/token", nil), requested))
			if resp.StatusCode != http.StatusBadRequest || tr.Error != auth.CodeInvalidScope {
				t.Errorf("%d %+v, want 400 invalid_scope", resp.StatusCode, tr)
			}
		})
	}
}

func TestAuthExpiredAccessTokenIs401(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "expiry", "ES384", 0)
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/*.rs"})
	tr := c.token(t, base, "system/*.rs")
	resp, body := kickoffWith(t, base, tr.AccessToken, "?_type=Patient")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("fresh token: %d %s", resp.StatusCode, body)
	}
	status := resp.Header.Get("Content-Location")
	bus.offset.Store(int64(*tr.ExpiresIn+1) * int64(time.Second))
	for _, u := range []string{base + "/$export?_type=Observation", status} {
		resp, body := send(t, "GET", u, nil, "Authorization", "Bearer "+tr.AccessToken)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) ||
			!strings.Contains(string(body), "expired") {
			t.Errorf("%s with an expired token: %d %q %s", u, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
	}
}

func TestAuthJobsBelongToTheClientThatStartedThem(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	a := newTestClient(t, "owner", "ES384", 0)
	b := newTestClient(t, "stranger", "ES384", 0)
	register(t, base, auth.Client{ID: a.id, JWKS: jwks(a.jwk(t, a.kid)), Scope: "system/*.rs"})
	register(t, base, auth.Client{ID: b.id, JWKS: jwks(b.jwk(t, b.kid)), Scope: "system/*.rs"})
	resp, body := kickoffWith(t, base, a.token(t, base, "system/*.rs").AccessToken, "?_type=Patient")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, body)
	}
	status := resp.Header.Get("Content-Location")
	id := status[strings.LastIndex(status, "/")+1:]
	job, _, err := streamsJobs(t, bus).Get(t.Context(), id)
	if err != nil || job.ClientID != a.id {
		t.Fatalf("job %s client %q (%v), want %q", id, job.ClientID, err, a.id)
	}
	other := b.token(t, base, "system/*.rs").AccessToken
	for _, r := range []struct{ method, url string }{{"GET", status}, {"GET", base + "/files/" + id + "/Patient.000.ndjson"}, {"DELETE", status}} {
		resp, body := send(t, r.method, r.url, nil, "Authorization", "Bearer "+other)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s by another client: %d %s", r.method, r.url, resp.StatusCode, body)
		}
	}
	// A later token of the owner works; one whose scopes no longer cover
	// the job's types does not.
	if resp, body := send(t, "GET", status, nil, "Authorization", "Bearer "+a.token(t, base, "system/*.rs").AccessToken); resp.StatusCode != http.StatusAccepted {
		t.Errorf("the owner's new token: %d %s", resp.StatusCode, body)
	}
	if resp, body := send(t, "GET", status, nil, "Authorization", "Bearer "+a.token(t, base, "system/Observation.rs").AccessToken); resp.StatusCode != http.StatusForbidden {
		t.Errorf("the owner's token without Patient: %d %s", resp.StatusCode, body)
	}
	if resp, body := send(t, "DELETE", status, nil, "Authorization", "Bearer "+a.token(t, base, "system/*.read").AccessToken); resp.StatusCode != http.StatusAccepted {
		t.Errorf("the owner's DELETE: %d %s", resp.StatusCode, body)
	}
}

func streamsJobs(t *testing.T, bus *authBus) streams.Jobs {
	j, err := streams.OpenJobs(t.Context(), bus.js)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestAuthKickoffTypesFollowScopes(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t)
	c := newTestClient(t, "typed", "ES384", 0)
	// Condition's r and the wildcard s add up to export; Encounter has s only.
	register(t, base, auth.Client{ID: c.id, JWKS: jwks(c.jwk(t, c.kid)), Scope: "system/Patient.rs system/Observation.read system/Organization.rs system/Condition.r system/*.s"})
	tok := c.token(t, base, "system/*.rs system/*.read system/Condition.r").AccessToken

	resp, body := kickoffWith(t, base, tok, "?_type=Patient,Condition,Encounter,Device")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "exporting Device, Encounter;") {
		t.Errorf("types outside the scopes: %d %s", resp.StatusCode, body)
	}
	resp, body = kickoffWith(t, base, tok, "?_type=Patient&includeAssociatedData=LatestProvenanceResources")
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "Provenance") {
		t.Errorf("includeAssociatedData without Provenance in the scopes: %d %s", resp.StatusCode, body)
	}
	// FHIR reads and writes need their permission on the type (before any
	// export starts: a kick-off puts a mark on the stream, which reads wait
	// for, and this bus runs no ingester).
	for _, r := range []struct {
		method, path string
		want         int
	}{{"GET", "/Condition/c1", 404}, {"GET", "/Encounter/e1", 403}, {"PUT", "/Patient/p1", 403}, {"DELETE", "/Patient/p1", 403}, {"POST", "/Patient", 403}, {"POST", "/$ingest", 403}} {
		resp, body := send(t, r.method, base+r.path, strings.NewReader(`{"resourceType":"Patient","id":"p1"}`),
			"Authorization", "Bearer "+tok, "Content-Type", "application/fhir+json")
		if resp.StatusCode != r.want {
			t.Errorf("%s %s: %d %s, want %d", r.method, r.path, resp.StatusCode, body, r.want)
		}
	}
	jobTypes := func(resp *http.Response) []string {
		loc := resp.Header.Get("Content-Location")
		job, _, err := streamsJobs(t, bus).Get(t.Context(), loc[strings.LastIndex(loc, "/")+1:])
		if err != nil {
			t.Fatal(err)
		}
		return job.Types
	}
	resp, body = kickoffWith(t, base, tok, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off without _type: %d %s", resp.StatusCode, body)
	}
	if got := strings.Join(jobTypes(resp), ","); got != "Condition,Observation,Organization,Patient" {
		t.Errorf("system export without _type holds %s, want the granted types", got)
	}
	resp, body = send(t, "GET", base+"/Patient/$export", nil, "Authorization", "Bearer "+tok, "Prefer", "respond-async")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("patient kick-off without _type: %d %s", resp.StatusCode, body)
	}
	if got := strings.Join(jobTypes(resp), ","); got != "Condition,Observation,Patient" {
		t.Errorf("patient export without _type holds %s, want the granted compartment types", got)
	}
	// The operator credential loads data, but starts no export.
	if resp, body := kickoffWith(t, base, testAdminToken, ""); resp.StatusCode != http.StatusForbidden {
		t.Errorf("kick-off with the operator credential: %d %s", resp.StatusCode, body)
	}
}
